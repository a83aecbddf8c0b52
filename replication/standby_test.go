package replication_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-dev/meridian/internal/latency"
	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/replication"
)

// waitLong bounds every poll for replication to catch up on a loaded machine.
const waitLong = 30 * time.Second

// pair is a real primary and its streaming hot standby, with a superuser pool on each.
type pair struct {
	primary, standby         *localsrv.Postgres
	primaryPool, standbyPool *pgxpool.Pool
}

func newPair(t *testing.T) pair {
	t.Helper()
	p := testenv.Postgres(t)
	s := testenv.Standby(t, p)
	pr := pair{primary: p, standby: s,
		primaryPool: testenv.NewPool(t, p.DSN("postgres")), standbyPool: testenv.NewPool(t, s.DSN("postgres"))}
	if err := p.Exec(t.Context(), `CREATE TABLE IF NOT EXISTS w (i int)`); err != nil {
		t.Fatalf("create table: %v", err)
	}
	return pr
}

// write commits a row on the primary and returns the LSN a consistency token would carry.
func (pr pair) write(t *testing.T) replication.LSN {
	t.Helper()
	ctx := t.Context()
	if _, err := pr.primaryPool.Exec(ctx, `INSERT INTO w VALUES (1)`); err != nil {
		t.Fatalf("insert: %v", err)
	}
	lsn, err := replication.CurrentLSN(ctx, pr.primaryPool)
	if err != nil {
		t.Fatalf("CurrentLSN: %v", err)
	}
	return lsn
}

// waitReplayed polls the standby until it has replayed lsn.
func (pr pair) waitReplayed(t *testing.T, lsn replication.LSN) replication.StandbyStatus {
	t.Helper()
	var st replication.StandbyStatus
	testenv.WaitFor(t, waitLong, func() error {
		var err error
		if st, err = replication.ReadStandbyStatus(t.Context(), pr.standbyPool); err != nil {
			return err
		}
		if st.Replayed < lsn {
			return fmt.Errorf("replayed %v, want %v", st.Replayed, lsn)
		}
		return nil
	})
	return st
}

// pauseReplay stops the standby applying WAL (it keeps receiving it) until resumeReplay.
func (pr pair) pauseReplay(t *testing.T) {
	t.Helper()
	if _, err := pr.standbyPool.Exec(t.Context(), `SELECT pg_wal_replay_pause()`); err != nil {
		t.Fatalf("pause replay: %v", err)
	}
}

func (pr pair) resumeReplay(t *testing.T) {
	t.Helper()
	if _, err := pr.standbyPool.Exec(t.Context(), `SELECT pg_wal_replay_resume()`); err != nil {
		t.Fatalf("resume replay: %v", err)
	}
}

func TestPositions(t *testing.T) {
	pr := newPair(t)
	ctx := t.Context()

	t.Run("CurrentLSN", func(t *testing.T) {
		l1, err := replication.CurrentLSN(ctx, pr.primaryPool)
		if err != nil {
			t.Fatal(err)
		}
		l2 := pr.write(t)
		if l2 <= l1 {
			t.Fatalf("CurrentLSN after a write = %v, not after %v", l2, l1)
		}
		pr.waitReplayed(t, l2) // a standby's replay reaches the token LSN
		if _, err := replication.CurrentLSN(ctx, pr.standbyPool); err == nil {
			t.Fatal("CurrentLSN on a standby succeeded; Postgres refuses it during recovery")
		}
	})

	t.Run("not a standby", func(t *testing.T) {
		if _, err := replication.ReadStandbyStatus(ctx, pr.primaryPool); !errors.Is(err, replication.ErrNotStandby) {
			t.Fatalf("ReadStandbyStatus on the primary: err = %v, want ErrNotStandby", err)
		}
	})

	t.Run("positions advance", func(t *testing.T) {
		before := pr.waitReplayed(t, pr.write(t))
		lsn := pr.write(t)
		if lsn <= before.Replayed {
			t.Fatalf("write LSN %v not after the standby's earlier replay %v", lsn, before.Replayed)
		}
		st := pr.waitReplayed(t, lsn)
		if st.Received < lsn {
			t.Fatalf("received %v before replayed %v", st.Received, st.Replayed)
		}
	})

	t.Run("lag while replay is paused", func(t *testing.T) {
		pr.waitReplayed(t, pr.write(t)) // a transaction replayed, so a replay timestamp exists
		pr.pauseReplay(t)
		var last replication.LSN
		testenv.WaitFor(t, waitLong, func() error {
			last = pr.write(t)
			st, err := replication.ReadStandbyStatus(ctx, pr.standbyPool)
			if err != nil {
				return err
			}
			if st.Received <= st.Replayed || st.Lag <= 0 {
				return fmt.Errorf("paused standby: %+v, want received past replayed and lag > 0", st)
			}
			return nil
		})
		pr.resumeReplay(t)
		pr.waitReplayed(t, last)
		testenv.WaitFor(t, waitLong, func() error {
			st, err := replication.ReadStandbyStatus(ctx, pr.standbyPool)
			if err != nil {
				return err
			}
			if st.Lag != 0 {
				return fmt.Errorf("caught-up standby: %+v, want lag 0", st)
			}
			return nil
		})
	})
}

// clock is a settable clock for TrackerConfig.Now.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *clock) Now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *clock) Add(d time.Duration) { c.ns.Add(int64(d)) }

// counting is a real querier that counts the queries sent through it.
type counting struct {
	q replication.Querier
	n atomic.Int64
}

func (c *counting) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c.n.Add(1)
	return c.q.QueryRow(ctx, sql, args...)
}

var _ replication.Querier = (*counting)(nil)

// waitFresh polls the shards' status, one tracker interval (1 s) of clk per poll, until the
// tracker has proven standby fresh (staleness within the default bound) against primary for
// every shard at once.
func waitFresh(t *testing.T, clk *clock, tr *replication.Tracker, standby, primary replication.Querier, shards ...string) {
	t.Helper()
	testenv.WaitFor(t, waitLong, func() error {
		clk.Add(time.Second)
		for _, sh := range shards {
			if st, _ := tr.Status(t.Context(), sh, standby, primary); st.Staleness > replication.DefaultMaxStaleness {
				return fmt.Errorf("standby of %s not proven fresh: %+v", sh, st)
			}
		}
		return nil
	})
}

func TestTracker(t *testing.T) {
	pr := newPair(t)
	ctx := t.Context()
	const iv = time.Second

	t.Run("refresh at most once per interval", func(t *testing.T) {
		clk := newClock()
		tr := replication.NewTracker(replication.TrackerConfig{Interval: iv, Now: clk.Now})
		q := &counting{q: pr.standbyPool}
		if _, ok := tr.Status(ctx, "s1", q, pr.primaryPool); !ok {
			t.Fatal("standby unhealthy after a good check")
		}
		tr.Status(ctx, "s1", q, pr.primaryPool)
		clk.Add(iv / 2)
		tr.Status(ctx, "s1", q, pr.primaryPool)
		if n := q.n.Load(); n != 1 {
			t.Fatalf("%d status queries within one interval, want 1", n)
		}
		clk.Add(iv / 2)
		tr.Status(ctx, "s1", q, pr.primaryPool)
		if n := q.n.Load(); n != 2 {
			t.Fatalf("%d status queries after an interval, want 2", n)
		}
	})

	t.Run("replay never goes back", func(t *testing.T) {
		clk := newClock()
		tr := replication.NewTracker(replication.TrackerConfig{Interval: iv, Now: clk.Now})
		far := replication.LSN(1 << 62)
		tr.Record("s1", pr.standbyPool, replication.StandbyStatus{Replayed: far}, nil)
		clk.Add(iv)
		st, ok := tr.Status(ctx, "s1", pr.standbyPool, nil)
		if !ok || st.Replayed != far || st.Received == 0 || st.Received >= far {
			t.Fatalf("Status after a real check = %+v, %v; want healthy, replayed kept at %v, received refreshed", st, ok, far)
		}
	})

	t.Run("lag grows while replay is paused", func(t *testing.T) {
		clk := newClock()
		tr := replication.NewTracker(replication.TrackerConfig{Interval: iv, Now: clk.Now})
		pr.waitReplayed(t, pr.write(t))
		waitFresh(t, clk, tr, pr.standbyPool, pr.primaryPool, "s1", "s2x")
		pr.pauseReplay(t)
		defer pr.resumeReplay(t)
		testenv.WaitFor(t, waitLong, func() error {
			clk.Add(iv)
			pr.write(t)
			tr.Status(ctx, "s1", pr.standbyPool, pr.primaryPool)
			if lag := tr.Lag(); lag <= replication.DefaultMaxStaleness || lag == replication.StalenessUnknown {
				return fmt.Errorf("Lag() = %v with replay paused, want past the bound and known", lag)
			}
			return nil
		})
	})

	t.Run("stale status is unhealthy", func(t *testing.T) {
		clk := newClock()
		tr := replication.NewTracker(replication.TrackerConfig{Interval: iv, Now: clk.Now})
		tr.Record("s1", pr.standbyPool, replication.StandbyStatus{Lag: time.Minute}, nil)
		clk.Add(4 * iv)
		if lag := tr.Lag(); lag != replication.StalenessUnknown { // healthy, never proven fresh
			t.Fatalf("Lag() with a status 4 intervals old = %v, want StalenessUnknown", lag)
		}
		clk.Add(time.Nanosecond)
		if lag := tr.Lag(); lag != 0 {
			t.Fatalf("Lag() with a status over 4 intervals old = %v, want 0 (unhealthy)", lag)
		}
	})

	t.Run("WaitReplayed", func(t *testing.T) {
		tr := replication.NewTracker(replication.TrackerConfig{Interval: time.Hour})
		pr.pauseReplay(t)
		lsn := pr.write(t)
		if tr.WaitReplayed(ctx, "s1", pr.standbyPool, lsn, 50*time.Millisecond) {
			t.Fatal("WaitReplayed true while replay is paused")
		}
		if st, ok := tr.Status(ctx, "s1", pr.standbyPool, nil); !ok || st.Replayed >= lsn {
			t.Fatalf("after a timed-out wait: %+v, healthy %v; want healthy, not replayed", st, ok)
		}
		pr.resumeReplay(t)
		if !tr.WaitReplayed(ctx, "s1", pr.standbyPool, lsn, waitLong) {
			t.Fatal("WaitReplayed false after replay resumed")
		}
		if st, _ := tr.Status(ctx, "s1", pr.standbyPool, nil); st.Replayed < lsn {
			t.Fatalf("Status after WaitReplayed: replayed %v, want >= %v", st.Replayed, lsn)
		}
	})

	t.Run("Choose", func(t *testing.T) {
		// A status that never refreshes by itself once the clock stops, so only Choose's wait can
		// see the replay; first proven fresh against the primary.
		clk := newClock()
		tr := replication.NewTracker(replication.TrackerConfig{Interval: iv, Now: clk.Now})
		pr.waitReplayed(t, pr.write(t))
		waitFresh(t, clk, tr, pr.standbyPool, pr.primaryPool, "s1", "s2x")
		pr.pauseReplay(t)
		tok := &replication.Token{Shard: "s1", LSN: pr.write(t)}
		noWait := replication.Policy{ReplayWait: -1}
		short := replication.Policy{ReplayWait: 20 * time.Millisecond}
		long := replication.Policy{ReplayWait: waitLong}
		check := func(name string, got replication.Decision, src replication.Source, why replication.Reason) {
			t.Helper()
			if got.Source != src || got.Reason != why {
				t.Errorf("%s: %+v, want %v/%s", name, got, src, why)
			}
		}
		check("strong", noWait.Choose(ctx, tr, "s1", replication.ReadRequest{Strong: true}, pr.standbyPool, pr.primaryPool),
			replication.SourcePrimary, replication.ReasonStrong)
		check("no standby", noWait.Choose(ctx, tr, "s1", replication.ReadRequest{Token: tok}, nil, pr.primaryPool),
			replication.SourcePrimary, replication.ReasonPrimaryLocal)
		check("no token", noWait.Choose(ctx, tr, "s1", replication.ReadRequest{}, pr.standbyPool, pr.primaryPool),
			replication.SourceReplica, replication.ReasonFresh)
		check("other shard's token", noWait.Choose(ctx, tr, "s2x", replication.ReadRequest{Token: tok}, pr.standbyPool, pr.primaryPool),
			replication.SourceReplica, replication.ReasonTokenOtherShard)
		check("paused, no wait", noWait.Choose(ctx, tr, "s1", replication.ReadRequest{Token: tok}, pr.standbyPool, pr.primaryPool),
			replication.SourcePrimary, replication.ReasonTokenNotReplayed)
		check("paused, short wait", short.Choose(ctx, tr, "s1", replication.ReadRequest{Token: tok}, pr.standbyPool, pr.primaryPool),
			replication.SourcePrimary, replication.ReasonTokenNotReplayed)
		pr.resumeReplay(t)
		d := long.Choose(ctx, tr, "s1", replication.ReadRequest{Token: tok}, pr.standbyPool, pr.primaryPool)
		check("resumed, waited", d, replication.SourceReplica, replication.ReasonTokenReplayed)
		if d.MinLSN != tok.LSN {
			t.Errorf("MinLSN = %v, want the token's %v", d.MinLSN, tok.LSN)
		}
	})
}

func TestTrackerFailures(t *testing.T) {
	p := testenv.Postgres(t)
	s := testenv.Standby(t, p)
	ctx := t.Context()
	const iv = time.Second

	// The standby is reached through a proxy that can cut it off and restore it.
	m := latency.New()
	t.Cleanup(func() { _ = m.Close() })
	addr, err := m.Add("standby", "127.0.0.1:0", s.Addr(), 0, "standby")
	if err != nil {
		t.Fatal(err)
	}
	pool := testenv.NewPool(t, fmt.Sprintf("postgres://%s@%s/postgres?sslmode=disable", localsrv.Superuser, addr))

	clk := newClock()
	tr := replication.NewTracker(replication.TrackerConfig{Interval: iv, Failures: 3, Now: clk.Now})
	healthy := func() bool {
		clk.Add(iv) // every call is due for a check
		_, ok := tr.Status(ctx, "s1", pool, nil)
		return ok
	}

	t.Run("unhealthy after 3 failures", func(t *testing.T) {
		if !healthy() {
			t.Fatal("unhealthy after a good check")
		}
		m.Partition("standby")
		for i := 1; i <= 2; i++ {
			if !healthy() {
				t.Fatalf("unhealthy after %d failures, want 3", i)
			}
		}
		if healthy() {
			t.Fatal("healthy after 3 failures")
		}
	})

	t.Run("recovers", func(t *testing.T) {
		if err := m.Heal("standby"); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, waitLong, func() error { // refreshed in the background now
			if !healthy() {
				return errors.New("still unhealthy after the standby came back")
			}
			return nil
		})
	})

	t.Run("closed pool, then a new one", func(t *testing.T) {
		closed := testenv.NewPool(t, s.DSN("postgres"))
		closed.Close()
		for i := 0; i < 3; i++ {
			clk.Add(iv)
			tr.Status(ctx, "s2", closed, nil)
		}
		clk.Add(iv)
		if _, ok := tr.Status(ctx, "s2", closed, nil); ok {
			t.Fatal("closed pool healthy")
		}
		if _, ok := tr.Status(ctx, "s2", pool, nil); !ok {
			t.Fatal("a new pool for the shard did not start afresh")
		}
	})

	t.Run("read failures count", func(t *testing.T) {
		clk.Add(iv)
		if _, ok := tr.Status(ctx, "s3", pool, nil); !ok {
			t.Fatal("unhealthy after a good check")
		}
		for i := 0; i < 3; i++ {
			tr.Record("s3", pool, replication.StandbyStatus{}, errors.New("connection reset"))
		}
		if _, ok := tr.Status(ctx, "s3", pool, nil); ok { // no check is due: the clock did not move
			t.Fatal("healthy after 3 recorded read failures")
		}
	})
}

// TestProvenStaleness: a standby's staleness is proven against its primary's WAL position, so a
// standby that receives nothing — its WAL stream cut off, or its primary unreachable for samples
// — grows stale past the bound and loses default reads, though on its own it looks current.
func TestProvenStaleness(t *testing.T) {
	p := testenv.Postgres(t)
	ctx := t.Context()
	const iv = time.Second
	m := latency.New()
	t.Cleanup(func() { _ = m.Close() })
	// The standby streams its WAL through a proxy (region "wal"); the tracker samples the
	// primary through another (region "primary"). Each can be cut alone.
	walAddr, err := m.Add("wal", "127.0.0.1:0", p.Addr(), 0, "wal")
	if err != nil {
		t.Fatal(err)
	}
	primAddr, err := m.Add("primary", "127.0.0.1:0", p.Addr(), 0, "primary")
	if err != nil {
		t.Fatal(err)
	}
	s := testenv.StandbyWith(t, p, localsrv.PostgresOptions{PrimaryAddr: walAddr})
	pr := pair{primary: p, standby: s,
		primaryPool: testenv.NewPool(t, p.DSN("postgres")), standbyPool: testenv.NewPool(t, s.DSN("postgres"))}
	if err := p.Exec(ctx, `CREATE TABLE IF NOT EXISTS w (i int)`); err != nil {
		t.Fatal(err)
	}
	sampled := testenv.NewPool(t, fmt.Sprintf("postgres://%s@%s/postgres?sslmode=disable", localsrv.Superuser, primAddr))

	clk := newClock()
	tr := replication.NewTracker(replication.TrackerConfig{Interval: iv, Now: clk.Now})
	noWait := replication.Policy{ReplayWait: -1}
	choose := func() replication.Decision {
		return noWait.Choose(ctx, tr, "s1", replication.ReadRequest{}, pr.standbyPool, sampled)
	}
	// waitChoice polls, one interval of clk per poll and committing on the primary each time
	// when write is set, until a default read goes to src for why.
	waitChoice := func(t *testing.T, write bool, src replication.Source, why replication.Reason) replication.StandbyStatus {
		t.Helper()
		var st replication.StandbyStatus
		testenv.WaitFor(t, waitLong, func() error {
			clk.Add(iv)
			if write {
				pr.write(t)
			}
			d := choose()
			st, _ = tr.Status(ctx, "s1", pr.standbyPool, sampled)
			if d.Source != src || d.Reason != why {
				return fmt.Errorf("default read: %+v (status %+v), want %v/%s", d, st, src, why)
			}
			return nil
		})
		return st
	}

	t.Run("never sampled", func(t *testing.T) {
		tr := replication.NewTracker(replication.TrackerConfig{Interval: iv})
		st, ok := tr.Status(ctx, "s1", pr.standbyPool, nil)
		if !ok || st.Staleness != replication.StalenessUnknown {
			t.Fatalf("status without a primary: %+v, healthy %v; want healthy, staleness unknown", st, ok)
		}
		d := noWait.Choose(ctx, tr, "s1", replication.ReadRequest{}, pr.standbyPool, nil)
		if d.Source != replication.SourcePrimary || d.Reason != replication.ReasonTooStale {
			t.Fatalf("default read: %+v, want primary/too-stale", d)
		}
	})

	t.Run("idle primary, streaming standby: fresh", func(t *testing.T) {
		pr.waitReplayed(t, pr.write(t))
		waitChoice(t, false, replication.SourceReplica, replication.ReasonFresh)
		clk.Add(time.Minute) // a long idle spell, nothing sampled: fresh again once a new sample is replayed
		if st := waitChoice(t, false, replication.SourceReplica, replication.ReasonFresh); st.Staleness > 2*iv {
			t.Fatalf("idle standby's staleness %v, want at most two sample intervals", st.Staleness)
		}
	})

	t.Run("WAL stream cut off", func(t *testing.T) {
		m.Partition("wal")
		defer func() { _ = m.Heal("wal") }()
		st := waitChoice(t, true, replication.SourcePrimary, replication.ReasonTooStale)
		if st.Staleness == replication.StalenessUnknown {
			t.Errorf("cut-off standby's staleness unknown; want proven by the samples before the cut")
		}
		t.Logf("cut-off standby: %+v (Lag is the standby's own replay-timestamp measure)", st)
		if lag := tr.Lag(); lag <= replication.DefaultMaxStaleness {
			t.Errorf("Lag() = %v, want past the bound", lag)
		}
		if err := m.Heal("wal"); err != nil {
			t.Fatal(err)
		}
		waitChoice(t, true, replication.SourceReplica, replication.ReasonFresh)
	})

	t.Run("primary unreachable for samples", func(t *testing.T) {
		waitChoice(t, false, replication.SourceReplica, replication.ReasonFresh)
		m.Partition("primary")
		defer func() { _ = m.Heal("primary") }()
		st := waitChoice(t, false, replication.SourcePrimary, replication.ReasonTooStale)
		if st.Staleness <= replication.DefaultMaxStaleness {
			t.Errorf("staleness %v, want past the bound", st.Staleness)
		}
		if err := m.Heal("primary"); err != nil {
			t.Fatal(err)
		}
		waitChoice(t, false, replication.SourceReplica, replication.ReasonFresh)
	})

	t.Run("a new primary pool drops the samples", func(t *testing.T) {
		waitChoice(t, false, replication.SourceReplica, replication.ReasonFresh)
		other := testenv.NewPool(t, fmt.Sprintf("postgres://%s@%s/postgres?sslmode=disable", localsrv.Superuser, primAddr))
		m.Partition("primary")
		defer func() { _ = m.Heal("primary") }()
		clk.Add(iv)
		if st, _ := tr.Status(ctx, "s1", pr.standbyPool, other); st.Staleness != replication.StalenessUnknown {
			t.Fatalf("staleness against an unreachable new primary pool: %v, want unknown", st.Staleness)
		}
	})
}

// TestKeepWarm: a shard not asked about for longer than the staleness bound (its reads all
// answered by a cache) is still proven fresh at its next read, because the tracker goes on
// sampling its primary in the background for KeepWarm. Without that (or once KeepWarm ran out)
// the read goes to the primary as too stale, though the standby is current: the sample it
// starts crosses a round trip (here 100 ms, as to another region) and lands after the read's
// own standby check, so the read sees only the old samples.
func TestKeepWarm(t *testing.T) {
	pr := newPair(t)
	ctx := t.Context()
	const (
		// Not shorter: a standby is unhealthy after 4 intervals without a good status, and
		// under -race on a loaded 2-core machine one status check through the 100 ms proxy
		// took over 200 ms (the default case then read "unhealthy", not the fresh it tests).
		iv    = 150 * time.Millisecond
		rtt   = 100 * time.Millisecond
		bound = time.Second
		idle  = 3 * bound
	)
	m := latency.New()
	t.Cleanup(func() { _ = m.Close() })
	primAddr, err := m.Add("primary", "127.0.0.1:0", pr.primary.Addr(), rtt, "primary")
	if err != nil {
		t.Fatal(err)
	}
	remote := testenv.NewPool(t, fmt.Sprintf("postgres://%s@%s/postgres?sslmode=disable", localsrv.Superuser, primAddr))
	policy := replication.Policy{MaxStaleness: bound, ReplayWait: -1}
	pr.waitReplayed(t, pr.write(t))
	for _, tc := range []struct {
		name     string
		keepWarm time.Duration
		src      replication.Source
		why      replication.Reason
	}{
		{"default", 0, replication.SourceReplica, replication.ReasonFresh},
		{"ran out", 4 * iv, replication.SourcePrimary, replication.ReasonTooStale},
		{"off", -1, replication.SourcePrimary, replication.ReasonTooStale},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := replication.NewTracker(replication.TrackerConfig{Interval: iv, KeepWarm: tc.keepWarm})
			choose := func() replication.Decision {
				return policy.Choose(ctx, tr, "s1", replication.ReadRequest{}, pr.standbyPool, remote)
			}
			testenv.WaitFor(t, waitLong, func() error {
				if d := choose(); d.Reason != replication.ReasonFresh {
					return fmt.Errorf("default read: %+v, want replica/fresh", d)
				}
				return nil
			})
			time.Sleep(idle) // no read asks the tracker: a cache answers them all
			if d := choose(); d.Source != tc.src || d.Reason != tc.why {
				t.Fatalf("first read after %v without one: %+v, want %v/%s", idle, d, tc.src, tc.why)
			}
		})
	}
}
