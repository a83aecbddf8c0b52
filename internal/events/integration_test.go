package events_test

// End-to-end tests of the change-event path with every part real: a Postgres primary and its
// streaming standby (the shard, migrated, reached as meridian_app by pgstore and as
// meridian_worker by the relay), NATS JetStream, Redis, the relay, the consumer, the cache and
// the change feed, wired as cmd/api wires them (cmd/api/events.go). Issue 13's Done-when: "A
// test drops an event between JetStream and a consumer (or truncates the stream) and shows the
// gap detected, the tenant's cache generation bumped and the stream resumed from the outbox."
//
// The shard is homed in eu-west (its primary; the relay and the writes run there) and read in
// us-east (its standby; the consumer, the cache and the feed run there), so an event crosses
// from EV-eu-west into IN-us-east by sourcing, as between two regions.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/meridian-dev/meridian/internal/cache"
	"github.com/meridian-dev/meridian/internal/events"
	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/records/pgstore"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/migrations"
	"github.com/meridian-dev/meridian/replication"
)

const (
	itHome   = "eu-west" // the shard's home region: primary, writes, relay
	itLocal  = "us-east" // the reading region: standby, consumer, cache, feed
	itShard  = "s1"
	itTenant = "acme"
	itColl   = "notes"
	// itWait bounds every wait; the whole test takes a few seconds when nothing is wrong.
	itWait = 15 * time.Second
)

// staticMap is the shard map both stores read (configuration, not a service: a fixed map is
// what pgstore's own tests use too).
type staticMap struct{ sh shards.Info }

func (m staticMap) ShardInfo(id string) (shards.Info, bool) { return m.sh, id == m.sh.ID }
func (m staticMap) Shards() []shards.Info                   { return []shards.Info{m.sh} }

// world is one shard, two regions' worth of parts, all real.
type world struct {
	t       *testing.T
	primary *localsrv.Postgres
	standby *localsrv.Postgres
	sh      shards.Info
	owner   *pgx.Conn      // superuser on the primary: inspects and tampers with the outbox
	home    *pgstore.Store // eu-west: writes
	local   *pgstore.Store // us-east: reads (standby) and the consumer's outbox reader
	js      jetstream.JetStream
	rdb     *redis.Client
	cache   *cache.Cache
	reader  cache.Reader // local wrapped by the cache: what us-east's API serves reads from
	cons    *events.Consumer
	reg     *prometheus.Registry
	log     *slog.Logger

	relayStop func() // stops the running relay and waits for it; nil when none runs
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ctx := t.Context()
	w := &world{t: t, reg: prometheus.NewPedanticRegistry(),
		log: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))}

	// The shard: primary (synchronous_commit on, as in production) and standby, migrated.
	w.primary = testenv.PostgresWith(t, localsrv.PostgresOptions{Settings: map[string]string{"synchronous_commit": "on"}})
	const db = "shard_s1"
	if err := w.primary.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	if res, err := migrations.Apply(ctx, map[string]string{itShard: w.primary.DSN(db)}); err != nil {
		t.Fatalf("migrations: %v %+v", err, res)
	}
	w.standby = testenv.Standby(t, w.primary)
	w.sh = shards.Info{ID: itShard, HomeRegion: itHome, Database: db,
		Endpoints: map[string]string{itHome: w.primary.Addr(), itLocal: w.standby.Addr()}}
	owner, err := w.primary.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { owner.Close(context.Background()) })
	w.owner = owner
	w.home = openStore(t, itHome, w.sh, w.log)
	w.local = openStore(t, itLocal, w.sh, w.log)
	if created, err := w.home.CreateTenant(ctx, itTenant, itShard); err != nil || !created {
		t.Fatalf("create tenant: %v %v", created, err)
	}

	// NATS: one server carrying both regions' streams (a standalone server ignores the
	// placement; sourcing works the same). The relay needs ReconnectBufSize(-1).
	srv := testenv.NATS(t)
	nc, err := nats.Connect(srv.ClientURL(), nats.ReconnectBufSize(-1), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if w.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	all := []string{itHome, itLocal}
	for _, r := range all {
		sctx, cancel := context.WithTimeout(ctx, itWait)
		err := events.EnsureStreams(sctx, w.js, r, all, events.StreamLimits{})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}

	// Redis and the cache; the consumer drives it and answers its freshness.
	rs := testenv.Redis(t)
	w.rdb = redis.NewClient(&redis.Options{Addr: rs.Addr()})
	t.Cleanup(func() { _ = w.rdb.Close() })
	w.cache, err = cache.New(cache.Config{Redis: w.rdb, Registerer: w.reg, Logger: w.log,
		// The store's default max_staleness is 5 s; a second is enough for a standby that
		// replays at once, and keeps the fills after a reset from waiting 5 s.
		StandbyLag: time.Second,
		// Redis's 50 ms default turns a loaded test machine's slow answer into a failed
		// Applier call and a region reset (correct, but not what these tests look at).
		Timeout: time.Second,
		Fresh:   func(shard string) (time.Time, bool) { return w.cons.Fresh(shard) }})
	if err != nil {
		t.Fatal(err)
	}
	w.reader = w.cache.Wrap(w.local)
	w.cons = events.NewConsumer(events.ConsumerConfig{Region: itLocal, JS: w.js, Apply: w.cache, Outbox: w.local,
		Registerer: w.reg, Logger: w.log.With("part", "consumer"), StreamCheck: 200 * time.Millisecond})
	cctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.cons.Run(cctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("consumer Run = %v, want context.Canceled", err)
		}
	})
	w.startRelay()
	t.Cleanup(w.stopRelay)
	return w
}

func openStore(t *testing.T, region string, sh shards.Info, log *slog.Logger) *pgstore.Store {
	t.Helper()
	conns := shards.New(shards.Config{})
	t.Cleanup(conns.Close)
	s, err := pgstore.New(pgstore.Config{Region: region, Map: staticMap{sh}, Conns: conns, Logger: log.With("store", region)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startRelay runs a new relay of the home region (a new relay session), connected as
// cmd/api connects it: shards.Dial as meridian_worker.
func (w *world) startRelay() {
	r := events.NewRelay(events.RelayConfig{
		Region: itHome,
		Shards: func() []string { return []string{itShard} },
		Connect: func(ctx context.Context, shard string) (*pgx.Conn, error) {
			return shards.Dial(ctx, w.sh, shards.Config{User: migrations.WorkerRole, AppName: "meridian-relay"})
		},
		JS: w.js, Heartbeat: 100 * time.Millisecond, Poll: 50 * time.Millisecond, Logger: w.log.With("part", "relay"),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	w.relayStop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				w.t.Errorf("relay Run = %v, want context.Canceled", err)
			}
		})
	}
}

func (w *world) stopRelay() {
	if w.relayStop != nil {
		w.relayStop()
	}
}

func (w *world) target() records.Target { return records.Target{Tenant: itTenant, Shard: itShard} }

// put writes id's data through the home store and returns the write's Consistency-Token.
func (w *world) put(id string, v int) string {
	w.t.Helper()
	res, err := w.home.Write(w.t.Context(), w.target(), records.WriteOp{Op: records.Put, Collection: itColl, ID: id,
		Data: []byte(fmt.Sprintf(`{"v":%d}`, v)),
		Render: func(ch records.Change) (records.Response, error) {
			return records.Response{Status: http.StatusOK, Body: ch.Record.Data}, nil
		}})
	if err != nil {
		w.t.Fatalf("put %s: %v", id, err)
	}
	return res.Token
}

// replayed waits until the standby shows the write behind token (so a standby read is not
// merely within the staleness bound but current).
func (w *world) replayed(token string) {
	w.t.Helper()
	tok, err := replication.DecodeToken(token)
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(w.t.Context(), itWait)
	defer cancel()
	if err := w.standby.WaitReplayed(ctx, tok.LSN.String()); err != nil {
		w.t.Fatal(err)
	}
}

// get reads id through the cache, as us-east's API does.
func (w *world) get(id string) (records.Record, records.ReadInfo) {
	w.t.Helper()
	rec, info, err := w.reader.Get(w.t.Context(), w.target(), records.ReadOptions{}, itColl, id)
	if err != nil {
		w.t.Fatalf("get %s: %v", id, err)
	}
	return rec, info
}

// waitCached waits until id is answered from the cache at version.
func (w *world) waitCached(id string, version int64) {
	w.t.Helper()
	testenv.WaitFor(w.t, itWait, func() error {
		rec, info := w.get(id)
		if rec.Version != version {
			return fmt.Errorf("%s at version %d from %s, want %d", id, rec.Version, info.Source, version)
		}
		if info.Source != records.SourceCache {
			return fmt.Errorf("%s from %s (%s), not the cache yet", id, info.Source, info.Reason)
		}
		return nil
	})
}

// waitFreshAfter waits until the consumer has applied a heartbeat of the shard taken after at:
// every change committed before at has then been applied in us-east.
func (w *world) waitFreshAfter(at time.Time) {
	w.t.Helper()
	testenv.WaitFor(w.t, itWait, func() error {
		asOf, ok := w.cons.Fresh(itShard)
		if !ok || !asOf.After(at) {
			return fmt.Errorf("Fresh(%s) = %v, %v; want after %v", itShard, asOf, ok, at)
		}
		return nil
	})
}

// epoch is the region epoch in Redis (m:E).
func (w *world) epoch() int64 {
	w.t.Helper()
	return w.redisInt(w.rdb.Get(w.t.Context(), "m:E").Result())
}

// generation is the tenant's cache generation in Redis (field g of m:{tenant}:s).
func (w *world) generation() int64 {
	w.t.Helper()
	return w.redisInt(w.rdb.HGet(w.t.Context(), "m:{"+itTenant+"}:s", "g").Result())
}

func (w *world) redisInt(s string, err error) int64 {
	w.t.Helper()
	if err != nil {
		w.t.Fatalf("redis: %v", err)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		w.t.Fatalf("redis value %q: %v", s, err)
	}
	return n
}

// metric sums the registry's samples of name whose labels include want.
func (w *world) metric(name string, want map[string]string) float64 {
	w.t.Helper()
	fams, err := w.reg.Gather()
	if err != nil {
		w.t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for k, v := range want {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// follower reads a Feed and checks that it carries the tenant's outbox exactly: seq after seq,
// each event equal to the outbox row of that seq.
type follower struct {
	w    *world
	feed *events.Feed
	last int64
}

// expect receives the feed's next events up to seq upto and compares them with the outbox.
func (f *follower) expect(upto int64) {
	w := f.w
	w.t.Helper()
	from := f.last
	want, err := w.local.Changes(w.t.Context(), itTenant, itShard, from, upto)
	if err != nil {
		w.t.Fatal(err)
	}
	if int64(len(want)) != upto-from {
		w.t.Fatalf("outbox after %d up to %d holds %d rows: %+v", from, upto, len(want), want)
	}
	timeout := time.NewTimer(itWait)
	defer timeout.Stop()
	for _, we := range want {
		select {
		case e, ok := <-f.feed.C():
			if !ok {
				w.t.Fatalf("feed ended after seq %d: %v", f.last, f.feed.Err())
			}
			if e.Seq != f.last+1 {
				w.t.Fatalf("feed sent seq %d after %d (a gap or a repeat)", e.Seq, f.last)
			}
			if e.Seq != we.Seq || e.OutboxID != we.OutboxID || e.ID != we.ID || e.Op != we.Op || e.Version != we.Version || e.Collection != we.Collection {
				w.t.Fatalf("feed sent %+v, the outbox holds %+v", e, we)
			}
			f.last = e.Seq
		case <-timeout.C:
			w.t.Fatalf("feed: no seq %d within %v (last %d)", f.last+1, itWait, f.last)
		}
	}
}

// TestEndToEndGapAndTruncation drives writes from the home region's primary through the
// real relay, JetStream and the consumer into the reading region's Redis cache and change feed,
// then loses events two ways and checks the repair:
//
//   - a gap: change N+1 is acknowledged in the outbox but never reaches JetStream (marked sent
//     while the relay is down), N+2 is published by the restarted relay. The consumer counts
//     the gap, bumps the tenant's cache generation (so the record N+1 changed is not served at
//     its old version from the cache, and an untouched cached record misses), and the follower
//     receives N+1 read from the outbox, then N+2;
//   - a truncation: the fan-in stream is purged while the consumer has not read the relay's
//     latest changes (its JetStream consumer is paused meanwhile). The consumer resets the
//     region (the epoch m:E grows), stale entries are not served, and the follower gets every
//     seq exactly once.
func TestEndToEndGapAndTruncation(t *testing.T) {
	w := newWorld(t)
	ctx := t.Context()

	// 1. Writes reach the cache's invalidations; reads fill and then hit the cache.
	w.put("r1", 1)
	w.put("r2", 1)
	tok := w.put("r3", 1)
	w.replayed(tok)
	w.waitFreshAfter(time.Now())
	for _, id := range []string{"r1", "r2", "r3"} {
		w.waitCached(id, 1)
	}

	// 2. A change feed from the start: the backlog so far, from the outbox.
	feed, err := w.cons.Follow(ctx, w.target(), 0, 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(feed.Close)
	f := &follower{w: w, feed: feed}
	f.expect(3)

	t.Run("gap", func(t *testing.T) {
		outer := w.t
		w.t = t
		defer func() { w.t = outer }()
		// 3. With the relay stopped, seq 4 (r1 → v2) is committed and marked sent: JetStream never
		// gets it, as if it had lost an acknowledged message. Seq 5 (r2 → v2) stays unsent and
		// the restarted relay publishes it.
		w.stopRelay()
		w.put("r1", 2)
		tag, err := w.owner.Exec(ctx, `UPDATE outbox SET sent_at = now() WHERE tenant_id = $1 AND seq = 4 AND sent_at IS NULL`, itTenant)
		if err != nil || tag.RowsAffected() != 1 {
			t.Fatalf("marking seq 4 sent: %v, %d rows", err, tag.RowsAffected())
		}
		tok := w.put("r2", 2)
		gaps0, gen0, epoch0 := w.metric("meridian_events_gaps_total", nil), w.generation(), w.epoch()
		restarted := time.Now()
		w.startRelay()

		// 4. The gap is detected (the counter moves just before the consumer resets the tenant).
		testenv.WaitFor(t, itWait, func() error {
			if g := w.metric("meridian_events_gaps_total", nil); g != gaps0+1 {
				return fmt.Errorf("meridian_events_gaps_total = %v, want %v", g, gaps0+1)
			}
			return nil
		})
		// The follower gets seq 4 from the outbox, then 5, in order.
		f.expect(5)

		// Once the consumer is proven current again, r1 (whose invalidation JetStream never
		// carried) is not served at v1, and r3 (untouched) is not served from its old generation.
		w.replayed(tok)
		w.waitFreshAfter(restarted)
		if rec, info := w.get("r1"); rec.Version != 2 || info.Source == records.SourceCache {
			t.Errorf("r1 after the gap: version %d from %s, want version 2 from the store", rec.Version, info.Source)
		}
		if rec, info := w.get("r3"); rec.Version != 1 || info.Source == records.SourceCache {
			t.Errorf("r3 after the gap: version %d from %s, want a miss (the tenant's generation changed)", rec.Version, info.Source)
		}
		// A heartbeat after seq 5 has been applied, so the consumer is done with the gap: the
		// tenant's generation was bumped, the region's epoch was not.
		if gen := w.generation(); gen <= gen0 {
			t.Errorf("tenant generation %d after the gap, was %d: not bumped", gen, gen0)
		}
		if e := w.epoch(); e != epoch0 {
			t.Errorf("region epoch %d after a tenant's gap, was %d: a gap should reset only the tenant", e, epoch0)
		}
		if t.Failed() {
			return
		}
		// The cache works again afterwards.
		w.waitCached("r1", 2)
		w.waitCached("r2", 2)
		w.waitCached("r3", 1)
	})
	if t.Failed() {
		return
	}

	t.Run("truncation", func(t *testing.T) {
		outer := w.t
		w.t = t
		defer func() { w.t = outer }()
		// 5. Pause the consumer's JetStream consumer so the next changes wait in IN-us-east,
		// then purge the stream under it while the relay keeps publishing.
		in, err := w.js.Stream(ctx, events.FanInStream(itLocal))
		if err != nil {
			t.Fatal(err)
		}
		// Pause every consumer of the stream: the consumer's current one, and any it left
		// behind when a session ended (they linger until their inactivity threshold).
		var names []string
		lister := in.ConsumerNames(ctx)
		for n := range lister.Name() {
			names = append(names, n)
		}
		if err := lister.Err(); err != nil {
			t.Fatal(err)
		}
		if len(names) == 0 {
			t.Fatalf("no consumer on %s", events.FanInStream(itLocal))
		}
		for _, name := range names {
			if res, err := in.PauseConsumer(ctx, name, time.Now().Add(time.Minute)); err != nil || !res.Paused {
				t.Fatalf("pause %s: %+v %v", name, res, err)
			}
		}
		// Everything stored from here on waits, unread, in the stream.
		before, err := in.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		paused := before.State.LastSeq

		epoch0, resets0 := w.epoch(), w.metric("meridian_events_resets_total", map[string]string{"scope": "all"})
		sessions0 := w.metric("meridian_events_errors_total", map[string]string{"stage": "consume"})
		w.put("r3", 2)        // seq 6
		tok := w.put("r1", 3) // seq 7
		// Wait until both are in the fan-in stream, stored after the pause.
		testenv.WaitFor(t, itWait, func() error {
			info, err := in.Info(ctx)
			if err != nil {
				return err
			}
			for seq := info.State.LastSeq; seq > paused; seq-- {
				m, err := in.GetMsg(ctx, seq)
				if err != nil {
					return err
				}
				if e, err := events.Unmarshal(m.Data); err == nil && e.Kind == events.KindChange && e.Tenant == itTenant && e.Seq == 7 {
					return nil
				}
			}
			return fmt.Errorf("seq 7 not in %s after stream seq %d (last %d)", events.FanInStream(itLocal), paused, info.State.LastSeq)
		})
		purged := time.Now()
		if err := in.Purge(ctx); err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			if _, err := in.ResumeConsumer(ctx, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				t.Fatal(err)
			}
		}

		// The relay's next heartbeats reach the consumer after the hole. Once it is proven
		// current again, neither record may be served at its old version.
		w.replayed(tok)
		w.waitFreshAfter(purged)
		if rec, info := w.get("r3"); rec.Version != 2 {
			t.Errorf("r3 after the truncation: version %d from %s, want 2 (its invalidation was purged)", rec.Version, info.Source)
		}
		if rec, info := w.get("r1"); rec.Version != 3 {
			t.Errorf("r1 after the truncation: version %d from %s, want 3 (its invalidation was purged)", rec.Version, info.Source)
		}
		if e := w.epoch(); e <= epoch0 {
			t.Errorf("region epoch %d after the truncation, was %d: not bumped", e, epoch0)
		}
		if r := w.metric("meridian_events_resets_total", map[string]string{"scope": "all"}); r <= resets0 {
			t.Errorf("meridian_events_resets_total{scope=all} = %v, was %v", r, resets0)
		}

		// The hole in the stream's sequence itself ended the consumer's session (the relay's
		// heartbeat count of lost changes is a second, independent alarm that fired too; this
		// one holds where no heartbeat of the shard follows).
		if n := w.metric("meridian_events_errors_total", map[string]string{"stage": "consume"}); n <= sessions0 {
			t.Errorf("meridian_events_errors_total{stage=consume} = %v, was %v: the stream sequence jump was not noticed", n, sessions0)
		}

		// Writes go on; the follower gets 6 and 7 (from the outbox) and 8, 9 (live), once each.
		w.put("r2", 3) // seq 8
		f.expect(8)
		w.put("r2", 4) // seq 9
		f.expect(9)
		w.waitCached("r3", 2)
	})
}
