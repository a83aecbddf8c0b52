package shardmap

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMaxVoters is how many voters a cluster grows to before joiners become non-voters.
const DefaultMaxVoters = 3

// NodeConfig configures a map node.
type NodeConfig struct {
	// ID is the Raft server id; required and stable across restarts.
	ID string
	// DataDir holds raft.db (BoltDB log and stable store) and snapshots/; required.
	DataDir string
	// RaftAddr is the TCP bind address of the Raft transport, e.g. "127.0.0.1:7000". Port 0
	// picks a free port (see Node.RaftAddr); a restarting node must reuse its old address.
	RaftAddr string
	// HTTPAddr is the base URL where the caller serves Handler(), e.g. "http://127.0.0.1:8000";
	// required, other nodes forward to it.
	HTTPAddr string
	// Bootstrap makes this node form a new single-server cluster when its data dir is empty.
	Bootstrap bool
	// Join lists base URLs of existing members; the node asks them (any member, followers
	// forward to the leader) to add it until it is in the configuration. Empty = do not join
	// (a restarting member finds the leader through its own copy of the map).
	Join []string
	// NonVoter asks to join as a non-voter. Otherwise the node joins as a voter while the cluster
	// has fewer than MaxVoters voters, and as a non-voter after that.
	NonVoter bool
	// MaxVoters bounds the voters; 0 means DefaultMaxVoters.
	MaxVoters int
	// Token is the cluster token required on every internal endpoint; required.
	Token string
	// Logger receives node and Raft logs; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the node's metrics; nil means no metrics.
	Registerer prometheus.Registerer
	// HTTPClient forwards commands and joins; nil means a client with a 1 s dial timeout.
	HTTPClient *http.Client
	// Tune, if set, may change the Raft configuration (tests cut timings to tens of ms).
	Tune func(*raft.Config)
}

// Node is a Raft member holding the shard map. Routers embed one.
type Node struct {
	cfg   NodeConfig
	log   *slog.Logger
	httpc *http.Client

	raft  *raft.Raft
	trans *raft.NetworkTransport
	store *raftboltdb.BoltStore

	cur atomic.Pointer[Map]
	// joinMu serialises membership changes on the leader: a join counts the voters and then
	// adds one, and two joins interleaved would both see room for a voter.
	joinMu sync.Mutex
	// mu guards changed, which is closed and replaced on every publish.
	mu      sync.Mutex
	changed chan struct{}

	metrics *nodeMetrics

	ctx          context.Context
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	shutdownOnce sync.Once
	shutdownErr  error
}

type nodeMetrics struct {
	version prometheus.Gauge
	applies *prometheus.CounterVec
	watches prometheus.Counter
}

// NewNode opens (or creates) the node's data dir, starts Raft and, in the background, joins
// the cluster and registers its HTTP address.
func NewNode(cfg NodeConfig) (*Node, error) {
	switch {
	case cfg.ID == "":
		return nil, errors.New("shardmap: NodeConfig.ID is required")
	case cfg.DataDir == "":
		return nil, errors.New("shardmap: NodeConfig.DataDir is required")
	case cfg.RaftAddr == "":
		return nil, errors.New("shardmap: NodeConfig.RaftAddr is required")
	case cfg.HTTPAddr == "":
		return nil, errors.New("shardmap: NodeConfig.HTTPAddr is required")
	case cfg.Token == "":
		return nil, errors.New("shardmap: NodeConfig.Token is required")
	}
	if cfg.MaxVoters == 0 {
		cfg.MaxVoters = DefaultMaxVoters
	}
	cfg.HTTPAddr = strings.TrimRight(cfg.HTTPAddr, "/")
	n := &Node{cfg: cfg, log: cfg.Logger, httpc: cfg.HTTPClient, changed: make(chan struct{})}
	if n.log == nil {
		n.log = slog.Default()
	}
	n.log = n.log.With("component", "shardmap", "node", cfg.ID)
	if n.httpc == nil {
		n.httpc = defaultHTTPClient()
	}
	n.cur.Store(emptyMap)
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if err := n.initMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("shardmap: data dir: %w", err)
	}
	hlog := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Info, Output: &slogWriter{log: n.log}, DisableTime: true})

	store, err := raftboltdb.NewBoltStore(filepath.Join(cfg.DataDir, "raft.db"))
	if err != nil {
		return nil, fmt.Errorf("shardmap: bolt store: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hlog)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("shardmap: snapshot store: %w", err)
	}
	trans, err := raft.NewTCPTransportWithLogger(cfg.RaftAddr, nil, 3, 2*time.Second, hlog)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("shardmap: raft transport: %w", err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hlog
	if cfg.Tune != nil {
		cfg.Tune(rc)
	}
	existing, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		trans.Close()
		store.Close()
		return nil, fmt.Errorf("shardmap: raft state: %w", err)
	}
	r, err := raft.NewRaft(rc, (*fsm)(n), store, store, snaps, trans)
	if err != nil {
		trans.Close()
		store.Close()
		return nil, fmt.Errorf("shardmap: raft: %w", err)
	}
	n.raft, n.trans, n.store = r, trans, store
	if cfg.Bootstrap && !existing {
		f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			ID: rc.LocalID, Address: trans.LocalAddr(), Suffrage: raft.Voter,
		}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			n.Shutdown()
			return nil, fmt.Errorf("shardmap: bootstrap: %w", err)
		}
	}
	n.wg.Add(1)
	go n.registerLoop()
	return n, nil
}

func defaultHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = dialer(time.Second)
	tr.ResponseHeaderTimeout = 0
	tr.MaxIdleConnsPerHost = 16
	return &http.Client{Transport: tr}
}

func dialer(timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return (&net.Dialer{Timeout: timeout, KeepAlive: 15 * time.Second}).DialContext
}

func (n *Node) initMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	labels := prometheus.Labels{"node": n.cfg.ID}
	m := &nodeMetrics{
		version: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meridian_shardmap_node_version",
			Help: "Version (Raft index) of the shard map applied on this node.", ConstLabels: labels}),
		applies: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_shardmap_node_applies_total",
			Help: "Commands submitted through this node, by result.", ConstLabels: labels}, []string{"result"}),
		watches: prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_shardmap_node_watch_requests_total",
			Help: "Watch (GET /internal/v1/shardmap) requests served.", ConstLabels: labels}),
	}
	for _, c := range []prometheus.Collector{m.version, m.applies, m.watches} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("shardmap: register metrics: %w", err)
		}
	}
	n.metrics = m
	return nil
}

// RaftAddr is the address the Raft transport listens on.
func (n *Node) RaftAddr() string { return string(n.trans.LocalAddr()) }

// ID is the node's Raft server id.
func (n *Node) ID() string { return n.cfg.ID }

// Map returns the current map snapshot; never nil.
func (n *Node) Map() *Map { return n.current() }

func (n *Node) current() *Map { return n.cur.Load() }

// publish swaps in a new map and wakes long-polls. Called from the FSM goroutine only.
func (n *Node) publish(m *Map) {
	n.cur.Store(m)
	n.mu.Lock()
	close(n.changed)
	n.changed = make(chan struct{})
	n.mu.Unlock()
	if n.metrics != nil {
		n.metrics.version.Set(float64(m.Version()))
	}
}

// changedCh returns a channel closed at the next publish.
func (n *Node) changedCh() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.changed
}

// IsLeader reports whether this node is the Raft leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the Raft server id of the current leader, or "" when none is known.
func (n *Node) Leader() string {
	_, id := n.raft.LeaderWithID()
	return string(id)
}

// LeaderContact returns when this node last heard from a leader: now for the leader itself.
// Routers use it for their write lease.
func (n *Node) LeaderContact() time.Time {
	if n.IsLeader() {
		return time.Now()
	}
	return n.raft.LastContact()
}

// leaderHTTP returns the HTTP base URL of the leader, from the map's node table.
func (n *Node) leaderHTTP() string {
	_, id := n.raft.LeaderWithID()
	if id == "" {
		return ""
	}
	return n.current().st.nodes[string(id)]
}

// Apply submits a command and returns the Raft index it was applied at. On a follower it
// forwards the command to the leader over HTTP. A command that breaks a rule returns an error
// wrapping one of the sentinel errors, and the state is unchanged. While no leader is known it
// retries until ctx is done.
func (n *Node) Apply(ctx context.Context, cmd Command) (uint64, error) {
	entry, err := encodeEntry(cmd, time.Now())
	if err != nil {
		return 0, err
	}
	return n.applyEntry(ctx, entry, false)
}

// applyEntry is the one path for every command: leader → raft.Apply, follower → forward.
// forwarded says the entry already came from another node, so it must not be forwarded again.
func (n *Node) applyEntry(ctx context.Context, entry []byte, forwarded bool) (uint64, error) {
	backoff := 10 * time.Millisecond
	for {
		var idx uint64
		var err error
		if n.IsLeader() {
			idx, err = n.applyLocal(ctx, entry)
		} else if forwarded {
			err = ErrNotLeader
		} else if addr := n.leaderHTTP(); addr == "" {
			err = ErrNoLeader
		} else {
			idx, err = n.forwardApply(ctx, addr, entry)
		}
		retry := errors.Is(err, ErrNotLeader) || errors.Is(err, ErrNoLeader) || errors.Is(err, ErrUnavailable)
		if !retry || forwarded {
			n.countApply(err)
			return idx, err
		}
		select {
		case <-ctx.Done():
			n.countApply(err)
			return 0, fmt.Errorf("%w (%v)", err, ctx.Err())
		case <-n.done():
			return 0, ErrShutdown
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

func (n *Node) done() <-chan struct{} {
	if n.ctx == nil {
		return nil
	}
	return n.ctx.Done()
}

func (n *Node) countApply(err error) {
	if n.metrics == nil {
		return
	}
	res := "ok"
	if err != nil {
		res = codeOf(err)
		if res == "" {
			res = "error"
		}
	}
	n.metrics.applies.WithLabelValues(res).Inc()
}

// applyLocal does encode'd entry → raft.Apply → wait → unwrap the FSM error → index.
func (n *Node) applyLocal(ctx context.Context, entry []byte) (uint64, error) {
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	f := n.raft.Apply(entry, timeout)
	errc := make(chan error, 1)
	go func() { errc <- f.Error() }()
	select {
	case <-ctx.Done():
		return 0, fmt.Errorf("shardmap: apply: %w (outcome unknown)", ctx.Err())
	case err := <-errc:
		switch {
		case err == nil:
		case errors.Is(err, raft.ErrNotLeader):
			return 0, ErrNotLeader
		case errors.Is(err, raft.ErrRaftShutdown):
			return 0, ErrShutdown
		case errors.Is(err, raft.ErrEnqueueTimeout):
			return 0, fmt.Errorf("%w: %v", ErrNoLeader, err)
		default:
			// ErrLeadershipLost and friends: the entry may or may not commit, so no retry here.
			return 0, fmt.Errorf("shardmap: apply: %w", err)
		}
	}
	// Followers learn that an entry committed from the leader's next AppendEntries, which
	// comes with the next entry or after raft.Config.CommitTimeout (50–100 ms by default) when
	// no entry follows. A map change must reach every router at once (a cutover's held writes
	// wait for it), so a no-op entry follows at once: the barrier carries the commit index, and
	// nobody waits for the barrier itself.
	n.raft.Barrier(0)
	if res, ok := f.Response().(applyResult); ok && res.err != nil {
		return 0, res.err
	}
	return f.Index(), nil
}

// forwardApply sends an entry to the leader's apply endpoint.
func (n *Node) forwardApply(ctx context.Context, base string, entry []byte) (uint64, error) {
	return postApply(ctx, n.httpc, base, n.cfg.Token, entry, true)
}

// postApply is shared by Node forwarding and Client.Apply.
func postApply(ctx context.Context, hc *http.Client, base, token string, entry []byte, forwarded bool) (uint64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/internal/v1/shardmap/apply", bytes.NewReader(entry))
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/octet-stream")
	if forwarded {
		req.Header.Set(headerForwarded, "1")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusOK {
		var out struct {
			Index uint64 `json:"index"`
		}
		if err := json.Unmarshal(body, &out); err != nil {
			return 0, fmt.Errorf("%w: bad apply answer: %v", ErrUnavailable, err)
		}
		return out.Index, nil
	}
	return 0, errFromProblem(resp.StatusCode, body)
}

// joinRequest is the body of POST /internal/v1/join.
type joinRequest struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
	NonVoter bool   `json:"non_voter"`
}

// join adds a server to the Raft configuration (leader only; followers forward) and registers
// its HTTP address. It is idempotent, so restarting nodes simply join again.
func (n *Node) join(ctx context.Context, req joinRequest, forwarded bool) error {
	if req.ID == "" || req.RaftAddr == "" || req.HTTPAddr == "" {
		return fmt.Errorf("%w: join needs id, raft_addr and http_addr", ErrBadCommand)
	}
	if !n.IsLeader() {
		addr := n.leaderHTTP()
		if forwarded {
			return ErrNotLeader
		}
		if addr == "" {
			return ErrNoLeader
		}
		return postJoin(ctx, n.httpc, addr, n.cfg.Token, req, true)
	}
	n.joinMu.Lock()
	defer n.joinMu.Unlock()
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return fmt.Errorf("shardmap: join: %w", err)
	}
	voters, present := 0, false
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage == raft.Voter && s.ID != raft.ServerID(req.ID) {
			voters++
		}
		if s.ID == raft.ServerID(req.ID) {
			if s.Address == raft.ServerAddress(req.RaftAddr) {
				present = true
			} else if err := n.raft.RemoveServer(s.ID, 0, 5*time.Second).Error(); err != nil {
				return fmt.Errorf("shardmap: join: remove stale %s: %w", req.ID, err)
			}
		}
	}
	if !present {
		var f raft.IndexFuture
		if req.NonVoter || voters >= n.cfg.MaxVoters {
			f = n.raft.AddNonvoter(raft.ServerID(req.ID), raft.ServerAddress(req.RaftAddr), 0, 5*time.Second)
		} else {
			f = n.raft.AddVoter(raft.ServerID(req.ID), raft.ServerAddress(req.RaftAddr), 0, 5*time.Second)
		}
		if err := f.Error(); err != nil {
			if errors.Is(err, raft.ErrNotLeader) {
				return ErrNotLeader
			}
			return fmt.Errorf("shardmap: join: add %s: %w", req.ID, err)
		}
		n.log.Info("server joined", "id", req.ID, "raft_addr", req.RaftAddr, "non_voter", req.NonVoter || voters >= n.cfg.MaxVoters)
	}
	if n.current().st.nodes[req.ID] != req.HTTPAddr {
		entry, err := encodeEntry(RegisterNode{ID: req.ID, HTTPAddr: req.HTTPAddr}, time.Now())
		if err != nil {
			return err
		}
		if _, err := n.applyLocal(ctx, entry); err != nil {
			return err
		}
	}
	return nil
}

func postJoin(ctx context.Context, hc *http.Client, base, token string, jr joinRequest, forwarded bool) error {
	b, _ := json.Marshal(jr)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(base, "/")+"/internal/v1/join", bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	if forwarded {
		req.Header.Set(headerForwarded, "1")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	return errFromProblem(resp.StatusCode, body)
}

// registered reports whether this node is in the Raft configuration and its HTTP address is in
// the map.
func (n *Node) registered() bool {
	if n.current().st.nodes[n.cfg.ID] != n.cfg.HTTPAddr {
		return false
	}
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return false
	}
	for _, s := range cf.Configuration().Servers {
		if s.ID == raft.ServerID(n.cfg.ID) {
			return true
		}
	}
	return false
}

// registerLoop joins the cluster and registers the node's HTTP address, until both are done.
func (n *Node) registerLoop() {
	defer n.wg.Done()
	backoff := 20 * time.Millisecond
	for !n.registered() {
		ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
		jr := joinRequest{ID: n.cfg.ID, RaftAddr: n.RaftAddr(), HTTPAddr: n.cfg.HTTPAddr, NonVoter: n.cfg.NonVoter}
		var err error
		switch {
		case n.IsLeader():
			err = n.join(ctx, jr, false)
		default:
			targets := n.cfg.Join
			if addr := n.leaderHTTP(); addr != "" && addr != n.cfg.HTTPAddr {
				targets = append([]string{addr}, targets...)
			}
			err = ErrNoLeader
			for _, t := range targets {
				if strings.TrimRight(t, "/") == n.cfg.HTTPAddr {
					continue
				}
				if err = postJoin(ctx, n.httpc, t, n.cfg.Token, jr, false); err == nil {
					break
				}
			}
		}
		cancel()
		if err != nil {
			n.log.Debug("join pending", "err", err)
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
	n.log.Info("node registered", "http_addr", n.cfg.HTTPAddr, "raft_addr", n.RaftAddr())
}

// Shutdown stops Raft and closes the transport and the stores. It is idempotent.
func (n *Node) Shutdown() error {
	n.shutdownOnce.Do(func() {
		if n.cancel != nil {
			n.cancel()
		}
		n.shutdownErr = n.raft.Shutdown().Error()
		n.wg.Wait()
		if err := n.trans.Close(); err != nil && n.shutdownErr == nil {
			n.shutdownErr = err
		}
		if err := n.store.Close(); err != nil && n.shutdownErr == nil {
			n.shutdownErr = err
		}
	})
	return n.shutdownErr
}

// slogWriter turns hclog lines into slog records at the matching level.
type slogWriter struct{ log *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	lvl := slog.LevelInfo
	for _, l := range []struct {
		tag string
		lvl slog.Level
	}{{"[ERROR]", slog.LevelError}, {"[WARN]", slog.LevelWarn}, {"[INFO]", slog.LevelInfo}, {"[DEBUG]", slog.LevelDebug}, {"[TRACE]", slog.LevelDebug}} {
		if strings.HasPrefix(line, l.tag) {
			lvl = l.lvl
			line = strings.TrimSpace(strings.TrimPrefix(line, l.tag))
			break
		}
	}
	w.log.Log(context.Background(), lvl, line)
	return len(p), nil
}
