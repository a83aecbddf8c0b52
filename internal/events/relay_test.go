package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/migrations"
)

const (
	relayRegion = "us-east"
	relayShard  = "us-east-1"
)

// shardDB is one migrated shard database on a real Postgres, with a superuser connection that
// plays the writers (it bypasses row-level security, so it can insert outbox rows directly).
type shardDB struct {
	pg    *localsrv.Postgres
	db    string
	owner *pgx.Conn
}

func newShardDB(t *testing.T, tenants ...string) *shardDB {
	t.Helper()
	ctx := t.Context()
	s := &shardDB{pg: testenv.Postgres(t), db: "shard_relay"}
	if err := s.pg.CreateDatabase(ctx, s.db); err != nil {
		t.Fatal(err)
	}
	if res, err := migrations.Apply(ctx, map[string]string{relayShard: s.pg.DSN(s.db)}); err != nil {
		t.Fatalf("migrations: %v %+v", err, res)
	}
	s.owner = s.conn(t)
	for _, tenant := range tenants {
		if _, err := s.owner.Exec(ctx, `INSERT INTO tenants (tenant_id) VALUES ($1)`, tenant); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// conn is a new superuser connection, closed at cleanup.
func (s *shardDB) conn(t *testing.T) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(t.Context(), s.pg.DSN(s.db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// connect is RelayConfig.Connect as cmd/api wires it: shards.Dial as meridian_worker.
func (s *shardDB) connect() func(ctx context.Context, shard string) (*pgx.Conn, error) {
	return func(ctx context.Context, shard string) (*pgx.Conn, error) {
		sh := shards.Info{ID: shard, HomeRegion: relayRegion, Database: s.db,
			Endpoints: map[string]string{relayRegion: s.pg.Addr()}}
		return shards.Dial(ctx, sh, shards.Config{User: migrations.WorkerRole, AppName: "meridian-relay"})
	}
}

// write commits one change of tenant the way pgstore's write does: lock the tenant row while
// taking the next change_seq, append the outbox row, notify the relay, commit.
func write(ctx context.Context, c *pgx.Conn, tenant string) error {
	return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
		var seq int64
		if err := tx.QueryRow(ctx, `UPDATE tenants SET change_seq = change_seq + 1 WHERE tenant_id = $1 RETURNING change_seq`, tenant).Scan(&seq); err != nil {
			return err
		}
		op := "update"
		if seq == 1 {
			op = "create"
		}
		if _, err := tx.Exec(ctx, `INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version, lsn)
			VALUES ($1, $2, 'notes', $3, $4, $2, pg_current_wal_insert_lsn())`, tenant, seq, fmt.Sprintf("n%d", seq%7), op); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT pg_notify('meridian_outbox', $1)`, relayShard)
		return err
	})
}

// outboxRows returns the outbox as the owner sees it, in id order.
func (s *shardDB) outboxRows(t *testing.T) []Event {
	t.Helper()
	rows, err := s.owner.Query(t.Context(), `SELECT id, tenant_id, seq, collection, record_id, op, version, created_at
		FROM outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Event, error) {
		e := Event{Kind: KindChange, Shard: relayShard}
		err := r.Scan(&e.OutboxID, &e.Tenant, &e.Seq, &e.Collection, &e.ID, &e.Op, &e.Version, &e.AsOf)
		return e, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// unsent counts the outbox rows not marked sent.
func (s *shardDB) unsent(t *testing.T) int {
	t.Helper()
	var n int
	if err := s.owner.QueryRow(t.Context(), `SELECT count(*) FROM outbox WHERE sent_at IS NULL`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// jsFor connects to url the way the relay needs (no reconnect buffer) and returns its JetStream.
func jsFor(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.ReconnectBufSize(-1), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func ensureStreams(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := EnsureStreams(ctx, js, relayRegion, []string{relayRegion}, StreamLimits{}); err != nil {
		t.Fatal(err)
	}
}

// streamEvents reads every message of the region's origin stream, in stream order.
func streamEvents(t *testing.T, js jetstream.JetStream) []Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, OriginStream(relayRegion))
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []Event
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("stream message %d: %v", seq, err)
		}
		e, err := Unmarshal(m.Data)
		if err != nil {
			t.Fatalf("stream message %d: %v", seq, err)
		}
		if id := m.Header.Get(jetstream.MsgIDHeader); e.Kind == KindChange && id != MsgID(e.Shard, e.OutboxID) {
			t.Fatalf("stream message %d: msg id %q, want %q", seq, id, MsgID(e.Shard, e.OutboxID))
		} else if e.Kind != KindChange && id != "" {
			t.Fatalf("stream message %d (%s): msg id %q, want none", seq, e.Kind, id)
		}
		out = append(out, e)
	}
	return out
}

// changes returns the change events of evs.
func changes(evs []Event) []Event {
	var out []Event
	for _, e := range evs {
		if e.Kind == KindChange {
			out = append(out, e)
		}
	}
	return out
}

// checkPerTenant fails unless each tenant's changes in evs are exactly seqs 1..want[tenant] in
// order: nothing lost, nothing repeated, nothing reordered.
func checkPerTenant(t *testing.T, evs []Event, want map[string]int64) {
	t.Helper()
	last := map[string]int64{}
	for i, e := range changes(evs) {
		if e.Seq != last[e.Tenant]+1 {
			t.Fatalf("change %d: tenant %s seq %d after %d (want strictly increasing with no gap or repeat)", i, e.Tenant, e.Seq, last[e.Tenant])
		}
		last[e.Tenant] = e.Seq
	}
	for tenant, n := range want {
		if last[tenant] != n {
			t.Fatalf("tenant %s: stream ends at seq %d, want %d", tenant, last[tenant], n)
		}
	}
}

// runRelay runs r until the returned stop is called (or the test ends); stop waits for Run.
func runRelay(t *testing.T, r *Relay) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run = %v, want context.Canceled", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Run did not return after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func relayConfig(s *shardDB, js jetstream.JetStream, reg prometheus.Registerer) RelayConfig {
	return RelayConfig{
		Region:     relayRegion,
		Shards:     func() []string { return []string{relayShard} },
		Connect:    s.connect(),
		JS:         js,
		Poll:       50 * time.Millisecond,
		Registerer: reg,
	}
}

func metric(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// TestRelayPublishesOutbox: rows waiting before the relay starts and rows written while it runs
// (woken by NOTIFY alone: Poll and Heartbeat are an hour) are published in outbox id order with
// their content and msg ids, every row is marked sent, and a heartbeat follows the last change
// with an AsOf and LSN covering it.
func TestRelayPublishesOutbox(t *testing.T) {
	tenants := []string{"tenant-a", "tenant-b", "tenant-c"}
	s := newShardDB(t, tenants...)
	js := jsFor(t, testenv.NATS(t).ClientURL())
	ensureStreams(t, js)
	ctx := t.Context()
	for i := range 10 {
		if err := write(ctx, s.owner, tenants[i%3]); err != nil {
			t.Fatal(err)
		}
	}
	cfg := relayConfig(s, js, prometheus.NewRegistry())
	cfg.Poll, cfg.Heartbeat = time.Hour, time.Hour
	r := NewRelay(cfg)
	runRelay(t, r)

	// waitStream waits for n changes followed by a heartbeat.
	waitStream := func(n int) []Event {
		t.Helper()
		var evs []Event
		testenv.WaitFor(t, 10*time.Second, func() error {
			evs = streamEvents(t, js)
			if c := len(changes(evs)); c != n || evs[len(evs)-1].Kind != KindHeartbeat {
				return fmt.Errorf("%d changes in the stream, then %v; want %d then a heartbeat", c, evs[len(changes(evs)):], n)
			}
			return nil
		})
		return evs
	}
	waitStream(10)
	for i := range 5 {
		if err := write(ctx, s.owner, tenants[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	evs := waitStream(15)

	rows := s.outboxRows(t)
	got := changes(evs)
	var lsn uint64
	for i, e := range got {
		if e.LSN == 0 || e.LSN < lsn {
			t.Errorf("change %d: LSN %d after %d", i, e.LSN, lsn)
		}
		lsn = e.LSN
		e.LSN = 0
		want := rows[i]
		if !e.AsOf.Equal(want.AsOf) {
			t.Errorf("change %d: AsOf %v, want the row's created_at %v", i, e.AsOf, want.AsOf)
		}
		e.AsOf, want.AsOf = time.Time{}, time.Time{}
		if e.Session == "" || e.Session != got[0].Session {
			t.Errorf("change %d: session %q, want the first change's %q", i, e.Session, got[0].Session)
		}
		e.Session = ""
		if e != want {
			t.Errorf("change %d = %+v, want %+v", i, e, want)
		}
	}
	checkPerTenant(t, evs, map[string]int64{"tenant-a": 7, "tenant-b": 5, "tenant-c": 3})
	hb := evs[len(evs)-1]
	if hb.Shard != relayShard || hb.AsOf.Before(rows[len(rows)-1].AsOf) || hb.LSN < lsn {
		t.Errorf("last heartbeat %+v: want AsOf after %v and LSN ≥ %d", hb, rows[len(rows)-1].AsOf, lsn)
	}
	// The heartbeat accounts for the session's changes: how many, up to which outbox id.
	if hb.Session != got[0].Session || hb.Count != int64(len(rows)) || hb.OutboxID != rows[len(rows)-1].OutboxID || hb.Since.IsZero() {
		t.Errorf("last heartbeat %+v: want session %q, count %d, outbox id %d, a start time", hb, got[0].Session, len(rows), rows[len(rows)-1].OutboxID)
	}
	if n := s.unsent(t); n != 0 {
		t.Errorf("%d outbox rows not marked sent", n)
	}
	if n := metric(r.m.published.WithLabelValues(relayShard)); n != 15 {
		t.Errorf("published_total = %v, want 15", n)
	}
	if n := metric(r.m.active.WithLabelValues(relayShard)); n != 1 {
		t.Errorf("active = %v, want 1", n)
	}
}

// TestRelayIdleHeartbeats: with nothing to publish, a heartbeat at least every Heartbeat, each
// AsOf later than the one before.
func TestRelayIdleHeartbeats(t *testing.T) {
	s := newShardDB(t)
	js := jsFor(t, testenv.NATS(t).ClientURL())
	ensureStreams(t, js)
	cfg := relayConfig(s, js, nil)
	cfg.Poll, cfg.Heartbeat = time.Hour, 100*time.Millisecond
	runRelay(t, NewRelay(cfg))
	start := time.Now()
	var evs []Event
	testenv.WaitFor(t, 10*time.Second, func() error {
		if evs = streamEvents(t, js); len(evs) < 10 {
			return fmt.Errorf("%d heartbeats", len(evs))
		}
		return nil
	})
	// 10 heartbeats at most 100 ms apart (plus scheduling slack) cannot take 5 s.
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("10 idle heartbeats took %v", el)
	}
	for i, e := range evs {
		if e.Kind != KindHeartbeat || (i > 0 && !e.AsOf.After(evs[i-1].AsOf)) {
			t.Fatalf("event %d = %+v after %+v; want heartbeats with increasing AsOf", i, e, evs[max(i-1, 0)])
		}
	}
}

// writers runs n goroutines committing changes of random tenants (each on its own connection)
// until stop is called; stop returns how many changes each tenant got.
func writers(t *testing.T, s *shardDB, tenants []string, n int, pause time.Duration) (stop func() map[string]int64, written *atomic.Int64) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	written = new(atomic.Int64)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	conns := make([]*pgx.Conn, n)
	for i := range conns {
		conns[i] = s.conn(t)
	}
	// Registered after the connections' cleanups, so it runs before them when a test fails.
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, c := range conns {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := write(ctx, c, tenants[rand.IntN(len(tenants))]); err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				written.Add(1)
				time.Sleep(pause)
			}
		})
	}
	return func() map[string]int64 {
		cancel()
		wg.Wait()
		select {
		case err := <-errs:
			t.Fatalf("writer: %v", err)
		default:
		}
		out := map[string]int64{}
		rows, err := s.owner.Query(t.Context(), `SELECT tenant_id, change_seq FROM tenants`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var tenant string
			var seq int64
			if err := rows.Scan(&tenant, &seq); err != nil {
				t.Fatal(err)
			}
			out[tenant] = seq
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}, written
}

// waitAllSent waits until the outbox has no unsent row.
func waitAllSent(t *testing.T, s *shardDB) {
	t.Helper()
	testenv.WaitFor(t, 30*time.Second, func() error {
		if n := s.unsent(t); n != 0 {
			return fmt.Errorf("%d rows unsent", n)
		}
		return nil
	})
}

// TestRelayOneActivePerShard: of two relays on one shard only one publishes. The active one's
// node is cut off from the database (its session killed with pg_terminate_backend, its
// reconnects refused): the other takes over. The link heals, and the relay that took over stops
// (its context cancelled): the first takes over again. Writes go on throughout, and the stream
// holds every tenant's changes exactly once, in order.
func TestRelayOneActivePerShard(t *testing.T) {
	tenants := []string{"tenant-a", "tenant-b", "tenant-c"}
	s := newShardDB(t, tenants...)
	js := jsFor(t, testenv.NATS(t).ClientURL())
	ensureStreams(t, js)

	var relays [2]*Relay
	var stops [2]func()
	var cut [2]atomic.Bool
	for i := range relays {
		cfg := relayConfig(s, js, prometheus.NewRegistry())
		connect := s.connect()
		cfg.Connect = func(ctx context.Context, shard string) (*pgx.Conn, error) {
			if cut[i].Load() {
				return nil, errors.New("cut off")
			}
			return connect(ctx, shard)
		}
		relays[i] = NewRelay(cfg)
		stops[i] = runRelay(t, relays[i])
	}
	activeOne := func() (int, error) {
		a0, a1 := metric(relays[0].m.active.WithLabelValues(relayShard)), metric(relays[1].m.active.WithLabelValues(relayShard))
		switch {
		case a0 == 1 && a1 == 0:
			return 0, nil
		case a0 == 0 && a1 == 1:
			return 1, nil
		}
		return -1, fmt.Errorf("active gauges %v and %v, want exactly one 1", a0, a1)
	}
	var first int
	testenv.WaitFor(t, 10*time.Second, func() (err error) { first, err = activeOne(); return err })
	other := 1 - first

	stopWriters, written := writers(t, s, tenants, 3, 2*time.Millisecond)
	published := func(i int) float64 { return metric(relays[i].m.published.WithLabelValues(relayShard)) }
	testenv.WaitFor(t, 10*time.Second, func() error {
		if published(first) < 50 {
			return fmt.Errorf("active relay published %v", published(first))
		}
		return nil
	})
	if n := published(other); n != 0 {
		t.Fatalf("the standby relay published %v changes while the other held the lock", n)
	}

	// Cut the active relay off: kill its session from the server side, refuse its reconnects.
	cut[first].Store(true)
	var pid uint32
	if err := s.owner.QueryRow(t.Context(), `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND classid = $1 AND objsubid = 2`, uint32(relayLockClass)).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := s.owner.Exec(t.Context(), `SELECT pg_terminate_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		if published(other) < 50 {
			return fmt.Errorf("the relay taking over published %v", published(other))
		}
		if i, err := activeOne(); err != nil || i != other {
			return fmt.Errorf("active relay %d (%v), want %d", i, err, other)
		}
		return nil
	})

	// Heal the link and stop the relay that took over: the first takes over again.
	cut[first].Store(false)
	before := published(first)
	stops[other]()
	testenv.WaitFor(t, 10*time.Second, func() error {
		if published(first) < before+50 {
			return fmt.Errorf("the first relay published %v since the second stopped", published(first)-before)
		}
		return nil
	})
	want := stopWriters()
	waitAllSent(t, s)
	evs := streamEvents(t, js)
	checkPerTenant(t, evs, want)
	t.Logf("%d writes, %d stream messages; published %v then %v", written.Load(), len(evs), published(first), published(other))
}

// TestRelayNATSRestart: the NATS server is shut down and started again (same port and store)
// while writes go on and the relay publishes. Nothing is lost, no tenant's changes are
// reordered, and what the relay re-published was dropped by deduplication: each tenant's
// changes in the stream are exactly 1..n.
func TestRelayNATSRestart(t *testing.T) {
	tenants := []string{"tenant-a", "tenant-b", "tenant-c", "tenant-d"}
	s := newShardDB(t, tenants...)
	dir := t.TempDir()
	ns, err := localsrv.StartNATS(localsrv.NATSOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var cur atomic.Pointer[server.Server]
	cur.Store(ns)
	t.Cleanup(func() { _ = localsrv.StopNATS(cur.Load()) })
	port := ns.Addr().(*net.TCPAddr).Port
	js := jsFor(t, ns.ClientURL())
	ensureStreams(t, js)

	cfg := relayConfig(s, js, prometheus.NewRegistry())
	cfg.Batch = 50 // many batches in flight across the restart
	r := NewRelay(cfg)
	runRelay(t, r)
	stopWriters, written := writers(t, s, tenants, 4, time.Millisecond)
	published := func() float64 { return metric(r.m.published.WithLabelValues(relayShard)) }
	failures := func() float64 {
		return metric(r.m.errors.WithLabelValues(relayShard, "publish")) + metric(r.m.errors.WithLabelValues(relayShard, "heartbeat"))
	}
	for round := range 2 {
		testenv.WaitFor(t, 20*time.Second, func() error {
			if published() < float64(300*(round+1)) {
				return fmt.Errorf("published %v", published())
			}
			return nil
		})
		failedBefore := failures()
		localsrv.StopNATS(cur.Load())
		downAt := written.Load()
		// Down until the writers have committed more and the relay has failed on them (a row's
		// publish or a heartbeat: an acknowledgement pending when NATS went away fails only at
		// its deadline, ackWait).
		testenv.WaitFor(t, ackWait+10*time.Second, func() error {
			if written.Load() < downAt+100 {
				return errors.New("writers stalled")
			}
			if failures() == failedBefore {
				return errors.New("the relay has not failed a publish yet")
			}
			return nil
		})
		ns, err := localsrv.StartNATS(localsrv.NATSOptions{Dir: dir, Port: port})
		if err != nil {
			t.Fatalf("restart nats: %v", err)
		}
		cur.Store(ns)
	}
	testenv.WaitFor(t, 20*time.Second, func() error {
		if published() < 1000 {
			return fmt.Errorf("published %v", published())
		}
		return nil
	})
	want := stopWriters()
	waitAllSent(t, s)
	evs := streamEvents(t, js)
	checkPerTenant(t, evs, want)
	t.Logf("%d writes, %d stream messages, %v published (re-publishes included), %v publish failures",
		written.Load(), len(evs), published(), failures())
}

// TestRelayPruneAndBacklog: with the stream missing, every publish fails: the backlog gauges
// show the waiting rows and their age, no heartbeat is sent, and pruning still deletes the sent
// rows older than Retention, never unsent ones however old. Once the stream exists the backlog
// drains and the gauges fall to zero.
func TestRelayPruneAndBacklog(t *testing.T) {
	tenants := []string{"tenant-a", "tenant-b"}
	s := newShardDB(t, tenants...)
	js := jsFor(t, testenv.NATS(t).ClientURL())
	ctx := t.Context()
	// Per tenant: 3 sent two days ago (pruned), 2 sent an hour ago (kept), 4 unsent written two
	// days ago (kept and published).
	for _, q := range []string{
		`INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version, created_at, sent_at)
		 SELECT t, g, 'notes', 'n', 'update', g, now() - interval '2 days', now() - interval '2 days'
		   FROM unnest($1::text[]) t, generate_series(1, 3) g`,
		`INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version, created_at, sent_at)
		 SELECT t, g, 'notes', 'n', 'update', g, now() - interval '1 hour', now() - interval '1 hour'
		   FROM unnest($1::text[]) t, generate_series(4, 5) g`,
		`INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version, created_at)
		 SELECT t, g, 'notes', 'n', 'update', g, now() - interval '2 days'
		   FROM unnest($1::text[]) t, generate_series(6, 9) g`,
		`UPDATE tenants SET change_seq = 9 WHERE tenant_id = ANY($1)`,
	} {
		if _, err := s.owner.Exec(ctx, q, tenants); err != nil {
			t.Fatalf("%v\n%s", err, q)
		}
	}
	cfg := relayConfig(s, js, prometheus.NewRegistry())
	cfg.PruneEvery = 50 * time.Millisecond
	r := NewRelay(cfg)
	runRelay(t, r)
	m := r.m
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := metric(m.errors.WithLabelValues(relayShard, "publish")); n < 2 {
			return fmt.Errorf("%v publish failures", n)
		}
		if n := metric(m.pruned.WithLabelValues(relayShard)); n != 6 {
			return fmt.Errorf("pruned %v, want 6", n)
		}
		return nil
	})
	if n, age := metric(m.backlogRows.WithLabelValues(relayShard)), metric(m.backlogAge.WithLabelValues(relayShard)); n != 8 || age < 47*3600 {
		t.Fatalf("backlog %v rows, %vs old; want 8 rows two days old", n, age)
	}
	var left, unsent int
	if err := s.owner.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE sent_at IS NULL) FROM outbox`).Scan(&left, &unsent); err != nil {
		t.Fatal(err)
	}
	if left != 12 || unsent != 8 {
		t.Fatalf("%d rows left, %d unsent; want 12 (the recent sent and every unsent), 8", left, unsent)
	}

	ensureStreams(t, js)
	waitAllSent(t, s)
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n, age := metric(m.backlogRows.WithLabelValues(relayShard)), metric(m.backlogAge.WithLabelValues(relayShard)); n != 0 || age != 0 {
			return fmt.Errorf("backlog %v rows, %vs old; want 0", n, age)
		}
		return nil
	})
	if n := metric(m.published.WithLabelValues(relayShard)); n != 8 {
		t.Errorf("published %v, want 8", n)
	}
	evs := streamEvents(t, js)
	if len(changes(evs)) != 8 || evs[len(evs)-1].Kind != KindHeartbeat {
		t.Fatalf("stream %+v: want the 8 unsent rows then a heartbeat", evs)
	}
	for _, e := range changes(evs) {
		if e.Seq < 6 {
			t.Errorf("change %+v was sent before; published again", e)
		}
	}
}

// TestRelayRefusesReconnectBuffer: a NATS connection that buffers publishes while reconnecting
// could reorder a tenant's changes in the stream; Run refuses it, and a config missing a
// required field.
func TestRelayRefusesReconnectBuffer(t *testing.T) {
	nc, err := nats.Connect(testenv.NATS(t).ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := RelayConfig{Region: relayRegion, Shards: func() []string { return nil },
		Connect: func(context.Context, string) (*pgx.Conn, error) { return nil, errors.New("unused") }, JS: js}
	if err := NewRelay(cfg).Run(t.Context()); !errors.Is(err, ErrReconnectBuffer) {
		t.Fatalf("Run with a reconnect buffer = %v, want ErrReconnectBuffer", err)
	}
	cfg.JS = nil
	if err := NewRelay(cfg).Run(t.Context()); !errors.Is(err, ErrRelayConfig) {
		t.Fatalf("Run without JS = %v, want ErrRelayConfig", err)
	}
}

// TestRelayDrainsBacklog: a backlog of 6,000 rows (30 batches of 200) waiting when the relay starts is published
// in order, and its draining is in the logs: a start with the backlog's size and an end with
// the rows published and the rate.
func TestRelayDrainsBacklog(t *testing.T) {
	tenants := []string{"tenant-a", "tenant-b", "tenant-c", "tenant-d"}
	s := newShardDB(t, tenants...)
	js := jsFor(t, testenv.NATS(t).ClientURL())
	ensureStreams(t, js)
	const n = 6000
	if _, err := s.owner.Exec(t.Context(), `INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version)
		SELECT t, g, 'notes', 'n' || g, 'update', g FROM generate_series(1, $1::int) g, unnest($2::text[]) t ORDER BY g, t`,
		n/len(tenants), tenants); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	cfg := relayConfig(s, js, prometheus.NewRegistry())
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	cfg.Batch = 200
	r := NewRelay(cfg)
	start := time.Now()
	runRelay(t, r)
	waitAllSent(t, s)
	t.Logf("drained %d rows in %v", n, time.Since(start))
	want := map[string]int64{}
	for _, tenant := range tenants {
		want[tenant] = n / int64(len(tenants))
	}
	checkPerTenant(t, streamEvents(t, js), want)
	testenv.WaitFor(t, 5*time.Second, func() error {
		var begun, drained bool
		for _, l := range logs.lines() {
			switch l["msg"] {
			case "relay: draining a backlog":
				begun = l["backlog_rows"] == float64(n) && l["shard"] == relayShard
			case "relay: backlog drained":
				drained = l["published"] == float64(n) && l["rows_per_second"].(float64) > 0
			}
		}
		if !begun || !drained {
			return fmt.Errorf("logs lack the backlog's start (%v) or end (%v):\n%s", begun, drained, logs.String())
		}
		return nil
	})
}

// logBuffer collects JSON log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) lines() []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}
