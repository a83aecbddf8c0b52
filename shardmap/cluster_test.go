package shardmap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meridian-dev/meridian/internal/testenv"
)

const testToken = "test-cluster-token"

type testNode struct {
	id       string
	dir      string
	raftAddr string
	httpAddr string // host:port
	node     *Node
	srv      *http.Server
	up       bool
}

func (tn *testNode) url() string { return "http://" + tn.httpAddr }

type testCluster struct {
	t     testing.TB
	nodes []*testNode
	tune  func(*raft.Config)
}

func fastRaft(c *raft.Config) {
	c.HeartbeatTimeout = 80 * time.Millisecond
	c.ElectionTimeout = 80 * time.Millisecond
	c.LeaderLeaseTimeout = 80 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.SnapshotInterval = time.Hour // tests take snapshots explicitly
	c.SnapshotThreshold = 1 << 30
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError}))
}

// newTestCluster starts size nodes on 127.0.0.1 (node 0 bootstraps, the others join through
// it) and waits until every node is a registered member.
func newTestCluster(t testing.TB, size int, tune ...func(*raft.Config)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, tune: fastRaft}
	if len(tune) > 0 {
		c.tune = func(rc *raft.Config) { fastRaft(rc); tune[0](rc) }
	}
	root := t.TempDir()
	for i := 0; i < size; i++ {
		c.nodes = append(c.nodes, &testNode{id: fmt.Sprintf("n%d", i), dir: filepath.Join(root, fmt.Sprintf("n%d", i)), raftAddr: "127.0.0.1:0", httpAddr: "127.0.0.1:0"})
	}
	t.Cleanup(func() {
		for i := range c.nodes {
			c.kill(i)
		}
	})
	for i := range c.nodes {
		c.start(i)
	}
	c.waitMembers()
	return c
}

func (c *testCluster) start(i int) {
	c.t.Helper()
	tn := c.nodes[i]
	ln, err := net.Listen("tcp", tn.httpAddr)
	if err != nil {
		c.t.Fatalf("listen %s: %v", tn.id, err)
	}
	tn.httpAddr = ln.Addr().String()
	cfg := NodeConfig{ID: tn.id, DataDir: tn.dir, RaftAddr: tn.raftAddr, HTTPAddr: tn.url(), Bootstrap: i == 0,
		Token: testToken, Logger: testLogger(c.t), Tune: c.tune}
	if i > 0 {
		cfg.Join = []string{c.nodes[0].url()}
	}
	n, err := NewNode(cfg)
	if err != nil {
		ln.Close()
		c.t.Fatalf("start %s: %v", tn.id, err)
	}
	tn.node, tn.raftAddr, tn.up = n, n.RaftAddr(), true
	tn.srv = &http.Server{Handler: n.Handler()}
	go tn.srv.Serve(ln)
}

// kill stops a node abruptly: its HTTP server and connections close, Raft shuts down.
func (c *testCluster) kill(i int) {
	tn := c.nodes[i]
	if !tn.up {
		return
	}
	tn.up = false
	tn.srv.Close()
	tn.node.Shutdown()
}

func (c *testCluster) waitMembers() {
	c.t.Helper()
	testenv.WaitFor(c.t, 10*time.Second, func() error {
		for _, tn := range c.nodes {
			if !tn.up {
				continue
			}
			if !tn.node.registered() {
				return fmt.Errorf("%s not registered", tn.id)
			}
			if got := len(tn.node.Map().Nodes()); got != len(c.nodes) {
				return fmt.Errorf("%s knows %d nodes", tn.id, got)
			}
		}
		return nil
	})
}

func (c *testCluster) leader() *testNode {
	c.t.Helper()
	var l *testNode
	testenv.WaitFor(c.t, 10*time.Second, func() error {
		for _, tn := range c.nodes {
			if tn.up && tn.node.IsLeader() {
				l = tn
				return nil
			}
		}
		return errors.New("no leader")
	})
	return l
}

func (c *testCluster) follower() *testNode {
	c.t.Helper()
	l := c.leader()
	for _, tn := range c.nodes {
		if tn.up && tn != l {
			return tn
		}
	}
	c.t.Fatal("no follower")
	return nil
}

// waitConverged waits until every running node has version >= v and identical canonical state.
func (c *testCluster) waitConverged(v uint64) []byte {
	c.t.Helper()
	var canon []byte
	testenv.WaitFor(c.t, 10*time.Second, func() error {
		canon = nil
		for _, tn := range c.nodes {
			if !tn.up {
				continue
			}
			m := tn.node.Map()
			if m.Version() < v {
				return fmt.Errorf("%s at version %d, want >= %d", tn.id, m.Version(), v)
			}
			if canon == nil {
				canon = m.Canonical()
			} else if !bytes.Equal(canon, m.Canonical()) {
				return fmt.Errorf("%s differs", tn.id)
			}
		}
		return nil
	})
	return canon
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func startClient(t testing.TB, addrs ...string) *Client {
	cl := NewClient(ClientConfig{Addrs: addrs, Token: testToken, Logger: testLogger(t), Wait: 2 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { cl.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return cl
}

func TestClusterChangeThroughFollowerVisibleEverywhere(t *testing.T) {
	c := newTestCluster(t, 3)
	f := c.follower()
	cl := startClient(t, f.url())
	ctx := ctxT(t, 10*time.Second)
	if _, err := f.node.Apply(ctx, testTopology()); err != nil {
		t.Fatal(err)
	}
	idx, err := f.node.Apply(ctx, CreateTenant{Tenant: "acme", Region: "eu-west"})
	if err != nil {
		t.Fatal(err)
	}
	c.waitConverged(idx)
	if err := cl.WaitVersion(ctx, idx); err != nil {
		t.Fatal(err)
	}
	for _, tn := range c.nodes {
		r, err := tn.node.Map().Lookup("acme")
		if err != nil || r.Shard != "eu-west-1" || !r.Pinned {
			t.Fatalf("%s: %+v %v", tn.id, r, err)
		}
	}
	if r, err := cl.Map().Lookup("acme"); err != nil || r.Shard != "eu-west-1" || r.Version < idx {
		t.Fatalf("client: %+v %v", r, err)
	}
	// A rule violation through a follower comes back typed.
	if _, err := f.node.Apply(ctx, CreateTenant{Tenant: "acme"}); !errors.Is(err, ErrTenantExists) {
		t.Fatalf("duplicate through follower: %v", err)
	}
	// And through the client.
	if _, err := cl.Apply(ctx, RequestMove{Tenant: "acme", To: "nope"}); !errors.Is(err, ErrUnknownShard) {
		t.Fatalf("client apply: %v", err)
	}
	// The follower keeps hearing from the leader: its last contact moves past this moment.
	mark := time.Now()
	testenv.WaitFor(t, 10*time.Second, func() error {
		if lc := f.node.LeaderContact(); !lc.After(mark) {
			return fmt.Errorf("follower's last leader contact %v is not after %v", lc, mark)
		}
		return nil
	})
}

func TestClusterLeaderFailoverAndRestart(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := ctxT(t, 20*time.Second)
	if _, err := c.leader().node.Apply(ctx, testTopology()); err != nil {
		t.Fatal(err)
	}
	old := c.leader()
	oldIdx := indexOf(c, old)
	c.kill(oldIdx)
	nl := c.leader()
	if nl == old {
		t.Fatal("killed leader still leader")
	}
	// Changes continue, through any survivor.
	var idx uint64
	for i, tn := range c.nodes {
		if !tn.up {
			continue
		}
		var err error
		idx, err = tn.node.Apply(ctx, CreateTenant{Tenant: fmt.Sprintf("tenant-%d", i), Region: "us-west"})
		if err != nil {
			t.Fatalf("apply via %s after failover: %v", tn.id, err)
		}
	}
	want := c.waitConverged(idx)
	// The killed node restarts from its data dir and catches up.
	c.start(oldIdx)
	got := c.waitConverged(idx)
	if !bytes.Equal(want, got) {
		t.Fatal("restarted node diverged")
	}
	if _, err := old.node.Apply(ctx, CreateTenant{Tenant: "after-restart", Region: "eu-west"}); err != nil {
		t.Fatalf("apply via restarted node: %v", err)
	}
}

func indexOf(c *testCluster, tn *testNode) int {
	for i, x := range c.nodes {
		if x == tn {
			return i
		}
	}
	return -1
}

func TestClusterSnapshotTruncateRestart(t *testing.T) {
	c := newTestCluster(t, 3, func(rc *raft.Config) { rc.TrailingLogs = 2 })
	ctx := ctxT(t, 20*time.Second)
	l := c.leader()
	if _, err := l.node.Apply(ctx, testTopology()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if _, err := l.node.Apply(ctx, CreateTenant{Tenant: fmt.Sprintf("tenant-%02d", i), Region: []string{"us-east", "eu-west"}[i%2]}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.node.Apply(ctx, RequestMove{ID: "m1", Tenant: "tenant-00", To: "us-west-1"}); err != nil {
		t.Fatal(err)
	}
	var idx uint64
	for _, ph := range []Phase{PhaseDualWrite, PhaseBackfill} {
		if idx, _ = l.node.Apply(ctx, SetMovePhase{ID: "m1", Phase: ph}); idx == 0 {
			t.Fatal("phase change failed")
		}
	}
	// Limit overrides are part of the snapshot: the restarted nodes restore them from it.
	if idx, _ = l.node.Apply(ctx, SetTenantLimits{Tenant: "tenant-03", Set: TenantLimits{RPS: 7, Concurrency: 2}}); idx == 0 {
		t.Fatal("set limits failed")
	}
	want := c.waitConverged(idx)
	for _, tn := range c.nodes {
		if err := tn.node.raft.Snapshot().Error(); err != nil {
			t.Fatalf("snapshot %s: %v", tn.id, err)
		}
		first, err := tn.node.store.FirstIndex()
		if err != nil || first <= 2 {
			t.Fatalf("%s log not truncated: first index %d (%v)", tn.id, first, err)
		}
	}
	for i := range c.nodes {
		c.kill(i)
	}
	for i := range c.nodes {
		c.start(i)
	}
	got := c.waitConverged(idx)
	if !bytes.Equal(want, got) {
		t.Fatalf("state after snapshot+restart differs:\nwant %s\ngot  %s", want, got)
	}
	for _, tn := range c.nodes {
		if l, ok := tn.node.Map().TenantLimits("tenant-03"); !ok || l != (TenantLimits{RPS: 7, Concurrency: 2}) {
			t.Fatalf("%s after restore: limits %+v %v", tn.id, l, ok)
		}
	}
	c.leader()
	if _, err := c.nodes[1].node.Apply(ctx, SetMovePhase{ID: "m1", Phase: PhaseVerify}); err != nil {
		t.Fatalf("apply after full restart: %v", err)
	}
}

// TestClientFailsOverWhenItsNodeDies kills the node a client watches and checks that the client
// moves on to the others: it sees a change made after the kill, and its last answer came after
// the kill (so from a live node). How fast it fails over is a benchmark's business, not a
// test's: the wait is generous and nothing is timed.
func TestClientFailsOverWhenItsNodeDies(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := ctxT(t, 20*time.Second)
	f := c.follower()
	var others []string
	for _, tn := range c.nodes {
		if tn != f {
			others = append(others, tn.url())
		}
	}
	cl := startClient(t, append([]string{f.url()}, others...)...)
	idx, err := f.node.Apply(ctx, testTopology())
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.WaitVersion(ctx, idx); err != nil {
		t.Fatal(err)
	}
	c.kill(indexOf(c, f))
	killed := time.Now()
	idx, err = c.leader().node.Apply(ctx, CreateTenant{Tenant: "acme", Region: "us-east"})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 15*time.Second, func() error {
		if v := cl.Map().Version(); v < idx {
			return fmt.Errorf("client at %d, want %d", v, idx)
		}
		return nil
	})
	t.Logf("client saw the change %v after its node died", time.Since(killed))
	if age, since := cl.Age(), time.Since(killed); age >= since {
		t.Fatalf("client's last answer was %v ago, before its node died %v ago", age, since)
	}
}

func TestClientServesLastKnownMapWhenAllDown(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := ctxT(t, 20*time.Second)
	cl := startClient(t, c.nodes[0].url(), c.nodes[1].url(), c.nodes[2].url())
	idx, err := c.leader().node.Apply(ctx, testTopology())
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.WaitVersion(ctx, idx); err != nil {
		t.Fatal(err)
	}
	for i := range c.nodes {
		c.kill(i)
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		if cl.Age() < 300*time.Millisecond {
			return fmt.Errorf("age %v still fresh", cl.Age())
		}
		return nil
	})
	if r, err := cl.Map().Lookup("acme"); err != nil || r.Version != idx {
		t.Fatalf("last known map not served: %+v %v", r, err)
	}
	if _, err := cl.Apply(ctxT(t, 300*time.Millisecond), CreateTenant{Tenant: "x-y-z"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("apply with every node down: %v", err)
	}
}

func TestNonVoterBeyondThree(t *testing.T) {
	c := newTestCluster(t, 4)
	cf := c.leader().node.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		t.Fatal(err)
	}
	voters, nonvoters := 0, 0
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			voters++
		} else {
			nonvoters++
		}
	}
	if voters != 3 || nonvoters != 1 {
		t.Fatalf("voters %d non-voters %d, want 3 and 1", voters, nonvoters)
	}
	idx, err := c.nodes[3].node.Apply(ctxT(t, 10*time.Second), testTopology())
	if err != nil {
		t.Fatalf("apply via non-voter: %v", err)
	}
	c.waitConverged(idx)
}

// TestFollowersLearnCommitAtOnce: a follower's copy has a committed entry without waiting for
// the leader's commit timeout (here 10 s, so only the entry that follows every apply can tell
// the follower in time): a cutover's held writes on every router wait for exactly this.
func TestFollowersLearnCommitAtOnce(t *testing.T) {
	c := newTestCluster(t, 3, func(rc *raft.Config) { rc.CommitTimeout = 10 * time.Second })
	l := c.leader()
	ctx := ctxT(t, 10*time.Second)
	if _, err := l.node.Apply(ctx, testTopology()); err != nil {
		t.Fatal(err)
	}
	for i, tenant := range []string{"acme", "globex", "initech"} {
		idx, err := l.node.Apply(ctx, CreateTenant{Tenant: tenant, Region: "eu-west"})
		if err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 2*time.Second, func() error {
			for _, tn := range c.nodes {
				if v := tn.node.Map().Version(); v < idx {
					return fmt.Errorf("apply %d: %s has version %d, want %d (the commit timeout is 10 s)", i, tn.id, v, idx)
				}
			}
			return nil
		})
	}
}
