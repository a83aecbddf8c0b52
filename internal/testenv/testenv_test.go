package testenv_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/testenv"
)

// childrenOf lists the pids whose parent is pid, read from /proc.
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var kids []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// stat is "pid (comm) state ppid ..."; comm may hold spaces, so cut at the last ')'.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			kids = append(kids, n)
		}
	}
	return kids
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

func TestPostgresStartQueryStop(t *testing.T) {
	start := time.Now()
	p := testenv.Postgres(t)
	t.Logf("postgres cluster started in %v on %s", time.Since(start), p.Addr())

	ctx := t.Context()
	conn, err := p.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	var sum int
	var user string
	if err := conn.QueryRow(ctx, "SELECT $1::int + 40, current_user", 2).Scan(&sum, &user); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if sum != 42 || user != localsrv.Superuser {
		t.Fatalf("got %d as %q, want 42 as %q", sum, user, localsrv.Superuser)
	}
	if err := p.CreateDatabase(ctx, "shard_1"); err != nil {
		t.Fatal(err)
	}
	pool := testenv.NewPool(t, p.DSN("shard_1"))
	var db string
	if err := pool.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil || db != "shard_1" {
		t.Fatalf("current_database = %q, %v", db, err)
	}
	pool.Close()
	if err := p.CreateDatabase(ctx, "bad; DROP"); !errors.Is(err, localsrv.ErrInvalidName) {
		t.Fatalf("CreateDatabase(bad name) = %v, want ErrInvalidName", err)
	}

	pid := p.Pid()
	kids := childrenOf(t, pid)
	if len(kids) == 0 {
		t.Fatalf("postmaster %d has no children; is it really postgres?", pid)
	}
	dir := p.Dir()
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	select {
	case <-p.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	for _, k := range append(kids, pid) {
		if alive(k) {
			t.Errorf("process %d still alive after Stop", k)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("instance dir %s still there after Stop (err=%v)", dir, err)
	}
	if _, err := pgx.Connect(ctx, p.DSN("postgres")); err == nil {
		t.Error("connect succeeded after Stop")
	}
}

func TestPostgresRunsUnprivilegedWhenRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Log("not root: postgres runs as the current user")
	}
	p := testenv.Postgres(t)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			if want := strconv.Itoa(os.Geteuid()); os.Geteuid() != 0 && f[1] != want {
				t.Fatalf("postgres uid %s, want %s", f[1], want)
			}
			if os.Geteuid() == 0 && f[1] == "0" {
				t.Fatal("postgres runs as root")
			}
			return
		}
	}
	t.Fatal("no Uid line in /proc status")
}

func TestStandbyReplaysWrites(t *testing.T) {
	ctx := t.Context()
	primary := testenv.Postgres(t)
	standby := testenv.Standby(t, primary)

	if err := primary.Exec(ctx, "CREATE TABLE t (id int PRIMARY KEY, v text)"); err != nil {
		t.Fatal(err)
	}
	if err := primary.Exec(ctx, "INSERT INTO t VALUES (1, 'replicated')"); err != nil {
		t.Fatal(err)
	}
	lsn, err := primary.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := standby.WaitReplayed(wctx, lsn); err != nil {
		t.Fatal(err)
	}
	conn, err := standby.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SELECT v FROM t WHERE id = 1").Scan(&v); err != nil || v != "replicated" {
		t.Fatalf("standby read %q, %v; want \"replicated\"", v, err)
	}
	_, err = conn.Exec(ctx, "INSERT INTO t VALUES (2, 'nope')")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" { // read_only_sql_transaction
		t.Fatalf("write on standby: %v, want SQLSTATE 25006", err)
	}

	for _, c := range []struct {
		name string
		p    *localsrv.Postgres
		want bool
	}{{"primary", primary, false}, {"standby", standby, true}} {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.p.IsStandby(ctx)
			if err != nil || got != c.want {
				t.Fatalf("IsStandby = %v, %v; want %v", got, err, c.want)
			}
			if c.p.Standby() != c.want {
				t.Fatalf("Standby() = %v, want %v", c.p.Standby(), c.want)
			}
		})
	}
	if err := primary.WaitReplayed(ctx, lsn); !errors.Is(err, localsrv.ErrNotStandby) {
		t.Fatalf("WaitReplayed on primary = %v, want ErrNotStandby", err)
	}
	// A position far ahead is never reached: WaitReplayed must honour ctx.
	short, cancel2 := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel2()
	if err := standby.WaitReplayed(short, "FF/0"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitReplayed(future) = %v, want deadline exceeded", err)
	}
}

func TestParallelClusters(t *testing.T) {
	const n = 3
	var mu sync.Mutex
	addrs := map[string]bool{}
	dirs := map[string]bool{}
	for i := range n {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			p := testenv.Postgres(t)
			if err := p.Exec(t.Context(), "SELECT 1"); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if addrs[p.Addr()] || dirs[p.Dir()] {
				t.Errorf("cluster %s in %s shares an address or dir with another", p.Addr(), p.Dir())
			}
			addrs[p.Addr()], dirs[p.Dir()] = true, true
		})
	}
}

func TestRedisStopRestart(t *testing.T) {
	ctx := t.Context()
	r := testenv.Redis(t)
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	pid, port, dir := r.Pid(), r.Port(), r.Dir()
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING succeeded after Stop")
	}
	if alive(pid) {
		t.Fatalf("redis-server %d alive after Stop", pid)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("redis dir %s still there after Stop (err=%v)", dir, err)
	}
	if err := r.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := r.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if r.Port() != port {
		t.Fatalf("Restart moved port %d -> %d", port, r.Port())
	}
	testenv.WaitFor(t, 5*time.Second, func() error { return c.Ping(ctx).Err() })
	if got, err := c.Get(ctx, "k").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("after restart GET k = %q, %v; want empty (no persistence)", got, err)
	}
	pid2 := r.Pid()
	if pid2 == 0 || pid2 == pid {
		t.Fatalf("restarted pid %d (old %d)", pid2, pid)
	}
	// Restart of a running server replaces the process and keeps its directory.
	dir2 := r.Dir()
	if err := r.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if alive(pid2) {
		t.Fatalf("old redis-server %d alive after Restart", pid2)
	}
	pid3, dir3 := r.Pid(), r.Dir()
	if dir3 != dir2 {
		t.Fatalf("Restart of a running server moved its dir %s -> %s", dir2, dir3)
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if alive(pid3) {
		t.Fatalf("redis-server %d alive after final Stop", pid3)
	}
	if _, err := os.Stat(dir3); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("redis dir %s left behind", dir3)
	}
}

func TestNATSJetStream(t *testing.T) {
	s := testenv.NATS(t)
	if !s.JetStreamEnabled() {
		t.Fatal("JetStream off")
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "EV", Subjects: []string{"ev.>"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "ev.1", []byte("x"), jetstream.WithMsgID("1")); err != nil {
		t.Fatal(err)
	}
	ack, err := js.Publish(ctx, "ev.1", []byte("x"), jetstream.WithMsgID("1"))
	if err != nil || !ack.Duplicate {
		t.Fatalf("second publish with same id: %+v, %v; want duplicate", ack, err)
	}
	info, err := st.Info(ctx)
	if err != nil || info.State.Msgs != 1 {
		t.Fatalf("stream has %v msgs (%v), want 1", info, err)
	}
}

func TestNATSGatewaysCrossRegion(t *testing.T) {
	regions := []string{"us-east", "us-west", "eu-west"}
	servers := testenv.NATSGateways(t, regions...)
	if len(servers) != len(regions) {
		t.Fatalf("%d servers, want %d", len(servers), len(regions))
	}
	conns := map[string]*nats.Conn{}
	for _, r := range regions {
		s := servers[r]
		if s.Name() != r || s.ClusterName() != r {
			t.Errorf("server for %s is named %q in cluster %q", r, s.Name(), s.ClusterName())
		}
		if !s.JetStreamEnabled() {
			t.Errorf("%s: JetStream off", r)
		}
		if n := s.NumOutboundGateways(); n != len(regions)-1 {
			t.Errorf("%s: %d outbound gateways, want %d", r, n, len(regions)-1)
		}
		nc, err := nats.Connect(s.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		conns[r] = nc
	}
	for _, from := range regions {
		for _, to := range regions {
			if from == to {
				continue
			}
			t.Run(from+"->"+to, func(t *testing.T) {
				subj := "x." + from + "." + to
				sub, err := conns[to].SubscribeSync(subj)
				if err != nil {
					t.Fatal(err)
				}
				defer sub.Unsubscribe()
				if err := conns[to].Flush(); err != nil {
					t.Fatal(err)
				}
				// Interest crosses the gateway asynchronously: publish until one arrives.
				testenv.WaitFor(t, 10*time.Second, func() error {
					if err := conns[from].Publish(subj, []byte(from)); err != nil {
						return err
					}
					m, err := sub.NextMsg(100 * time.Millisecond)
					if err != nil {
						return err
					}
					if string(m.Data) != from {
						return fmt.Errorf("got %q", m.Data)
					}
					return nil
				})
			})
		}
	}
	// JetStream works across the mesh: a stream created from one region is usable from another.
	ctx := t.Context()
	js, err := jetstream.New(conns["us-east"])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CHANGES", Subjects: []string{"changes.>"}}); err != nil {
		t.Fatal(err)
	}
	jsW, err := jetstream.New(conns["eu-west"])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jsW.Publish(ctx, "changes.t1", []byte("e1")); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "CHANGES")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.GetMsg(ctx, 1)
	if err != nil || string(msg.Data) != "e1" {
		t.Fatalf("stream msg 1 = %v, %v; want e1", msg, err)
	}
}

// fakeTB records Fatalf instead of stopping the test, to check WaitFor's failure path.
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
}

func TestWaitFor(t *testing.T) {
	calls := 0
	testenv.WaitFor(t, time.Second, func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if calls != 3 {
		t.Fatalf("WaitFor called f %d times, want 3", calls)
	}
	f := &fakeTB{TB: t}
	testenv.WaitFor(f, 50*time.Millisecond, func() error { return errors.New("never") })
	if !strings.Contains(f.failed, "never") {
		t.Fatalf("WaitFor failure message %q does not carry f's error", f.failed)
	}
}

func BenchmarkStartPostgres(b *testing.B) {
	ctx := context.Background()
	// Warm the template outside the timer: it is built once per machine.
	p, err := localsrv.StartPostgres(ctx, localsrv.PostgresOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Stop(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		p, err := localsrv.StartPostgres(ctx, localsrv.PostgresOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := p.Stop(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

func TestPostgresStartFailureShowsLog(t *testing.T) {
	_, err := localsrv.StartPostgres(t.Context(), localsrv.PostgresOptions{
		Settings: map[string]string{"shared_buffers": "lots"},
	})
	if err == nil {
		t.Fatal("started with an invalid setting")
	}
	if !errors.Is(err, localsrv.ErrExited) || !strings.Contains(err.Error(), "shared_buffers") {
		t.Fatalf("error lacks ErrExited or the log tail naming the setting: %v", err)
	}
}

// TestPostgresKeepAndReuse is the launcher's path: a cluster in a chosen directory survives
// Stop with Keep and starts again from the same data.
func TestPostgresKeepAndReuse(t *testing.T) {
	base, err := os.MkdirTemp("", "meridian-keep-test-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil { // nobody must traverse it
		t.Fatal(err)
	}
	dir := filepath.Join(base, "us-east")
	ctx := t.Context()
	p, err := localsrv.StartPostgres(ctx, localsrv.PostgresOptions{Dir: dir, Keep: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Exec(ctx, "CREATE TABLE kept (id int)"); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "PG_VERSION")); err != nil {
		t.Fatalf("kept data dir gone: %v", err)
	}
	p2, err := localsrv.StartPostgres(ctx, localsrv.PostgresOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.Exec(ctx, "INSERT INTO kept VALUES (1)"); err != nil {
		t.Fatalf("table from the first run missing: %v", err)
	}
	if err := p2.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dir %s left after Stop without Keep (err=%v)", dir, err)
	}
}
