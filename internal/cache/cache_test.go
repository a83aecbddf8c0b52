package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/records/pgstore"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/replication"
)

// The cache wraps the real store.
var _ Reader = (*pgstore.Store)(nil)

// fakeStore is the inner Reader: records by collection/id with a version each, answering
// with a configurable source and LSN. The LSN of an answer is lsn if set, else the version
// read (so "the data is at least as new as LSN v" holds for a record at version v).
type fakeStore struct {
	mu       sync.Mutex
	versions map[string]int64 // "coll/id" → version; absent = not found
	source   records.Source
	lsn      uint64
	// lsnIsVersion makes a replica answer's LSN the version read when lsn is 0 (otherwise a
	// replica answer without lsn reports 0, unknown).
	lsnIsVersion bool
	// gate, when set, is received from after the state was read and before answering (a read
	// in flight); started gets a value when a read reaches it.
	gate    chan struct{}
	started chan struct{}
	// jitter, when set, makes each read wait up to 300 µs after reading the state.
	jitter bool
	calls  atomic.Int64
}

func newFake() *fakeStore {
	return &fakeStore{versions: map[string]int64{}, source: records.SourcePrimary}
}

func (f *fakeStore) set(coll, id string, v int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.versions[coll+"/"+id] = v
}

func (f *fakeStore) setSource(s records.Source, lsn uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.source, f.lsn = s, lsn
}

func (f *fakeStore) block() (gate, started chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gate, f.started = make(chan struct{}), make(chan struct{}, 100)
	return f.gate, f.started
}

func (f *fakeStore) unblock() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gate, f.started = nil, nil
}

func (f *fakeStore) read(ctx context.Context, ro records.ReadOptions, keys ...string) (vs []int64, info records.ReadInfo, err error) {
	f.calls.Add(1)
	if ro.Token != "" {
		if _, err := replication.DecodeToken(ro.Token); err != nil {
			return nil, records.ReadInfo{}, records.ErrBadToken
		}
	}
	f.mu.Lock()
	var top int64
	for _, k := range keys {
		v, ok := f.versions[k]
		if !ok {
			f.mu.Unlock()
			return nil, records.ReadInfo{Source: f.source}, records.ErrRecordNotFound
		}
		vs = append(vs, v)
		top = max(top, v)
	}
	info = records.ReadInfo{Source: f.source, Reason: "fake", LSN: f.lsn}
	if info.LSN == 0 && (info.Source != records.SourceReplica || f.lsnIsVersion) {
		info.LSN = uint64(top)
	}
	gate, started, jitter := f.gate, f.started, f.jitter
	f.mu.Unlock()
	if jitter {
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
	}
	if gate != nil {
		started <- struct{}{}
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, records.ReadInfo{}, ctx.Err()
		}
	}
	return vs, info, nil
}

func (f *fakeStore) Get(ctx context.Context, t records.Target, ro records.ReadOptions, coll, id string) (records.Record, records.ReadInfo, error) {
	vs, info, err := f.read(ctx, ro, coll+"/"+id)
	if err != nil {
		return records.Record{}, info, err
	}
	return records.Record{ID: id, Collection: coll, Version: vs[0], Data: json.RawMessage(`{"v":1}`)}, info, nil
}

// List answers a page of the records "a" and "b" of coll.
func (f *fakeStore) List(ctx context.Context, t records.Target, ro records.ReadOptions, coll string, q records.ListQuery) (records.Page, records.ReadInfo, error) {
	vs, info, err := f.read(ctx, ro, coll+"/a", coll+"/b")
	if err != nil {
		return records.Page{}, info, err
	}
	return records.Page{Items: []records.Record{
		{ID: "a", Collection: coll, Version: vs[0]},
		{ID: "b", Collection: coll, Version: vs[1]},
	}}, info, nil
}

func (f *fakeStore) GetMany(ctx context.Context, t records.Target, ro records.ReadOptions, coll string, ids, fields []string) ([]records.Record, records.ReadInfo, error) {
	f.calls.Add(1)
	return nil, records.ReadInfo{Source: records.SourcePrimary}, nil
}

// clock is a settable clock; the consumer's Fresh is "shard s1 and s2 heard from at asOf".
type clock struct {
	mu   sync.Mutex
	now  time.Time
	asOf time.Time
	ok   bool
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.asOf = c.asOf.Add(d)
}

func (c *clock) setFresh(asOf time.Time, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asOf, c.ok = asOf, ok
}

func (c *clock) Fresh(shard string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.asOf, c.ok
}

type env struct {
	c     *Cache
	r     Reader
	fake  *fakeStore
	clk   *clock
	rc    *redis.Client
	redis *localsrv.Redis
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := testenv.Redis(t)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	t.Cleanup(func() { _ = rc.Close() })
	return newEnvOn(t, srv, rc)
}

// newEnvOn is another API node on the same Redis: its own Cache, guard and fake store.
func newEnvOn(t *testing.T, srv *localsrv.Redis, rc *redis.Client) *env {
	t.Helper()
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := &clock{now: start, asOf: start.Add(-time.Second), ok: true}
	c, err := New(Config{
		Redis: rc, Fresh: clk.Fresh, Now: clk.Now,
		// Generous: under -race on a shared machine 50 ms would (correctly) turn some
		// lookups into bypasses and make hit/miss assertions flaky.
		Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	fake := newFake()
	return &env{c: c, r: c.Wrap(fake), fake: fake, clk: clk, rc: rc, redis: srv}
}

var (
	bg  = context.Background()
	tgt = records.Target{Tenant: "acme", Shard: "s1"}
)

func (e *env) get(t *testing.T, tg records.Target, ro records.ReadOptions, coll, id string) (records.Record, records.ReadInfo) {
	t.Helper()
	rec, info, err := e.r.Get(bg, tg, ro, coll, id)
	if err != nil {
		t.Fatalf("Get %s/%s: %v", coll, id, err)
	}
	return rec, info
}

func (e *env) list(t *testing.T, tg records.Target, coll string, q records.ListQuery) (records.Page, records.ReadInfo) {
	t.Helper()
	p, info, err := e.r.List(bg, tg, records.ReadOptions{}, coll, q)
	if err != nil {
		t.Fatalf("List %s: %v", coll, err)
	}
	return p, info
}

// wantCalls checks how many reads reached the inner store so far.
func (e *env) wantCalls(t *testing.T, n int64) {
	t.Helper()
	if got := e.fake.calls.Load(); got != n {
		t.Fatalf("inner store calls = %d, want %d", got, n)
	}
}

func (e *env) skipped(reason string) float64 {
	return testutil.ToFloat64(e.c.fillSkipped.WithLabelValues(reason))
}

func TestHitAfterMiss(t *testing.T) {
	e := newEnv(t)
	e.fake.setSource(records.SourceReplica, 0) // a standby: its LSN proves what a token needs
	e.fake.lsnIsVersion = true
	e.fake.set("books", "x", 3)

	rec, info := e.get(t, tgt, records.ReadOptions{}, "books", "x")
	if rec.Version != 3 || info.Source != records.SourceReplica {
		t.Fatalf("miss: %+v %+v", rec, info)
	}
	e.wantCalls(t, 1)
	rec2, info2 := e.get(t, tgt, records.ReadOptions{}, "books", "x")
	if rec2.Version != 3 || rec2.ID != "x" || string(rec2.Data) != `{"v":1}` {
		t.Fatalf("hit answered %+v", rec2)
	}
	if info2 != (records.ReadInfo{Source: records.SourceCache, Reason: "cache", LSN: 3}) {
		t.Fatalf("hit info %+v", info2)
	}
	e.wantCalls(t, 1)

	// Lists: the page is cached per query.
	e.fake.set("books", "a", 1)
	e.fake.set("books", "b", 2)
	q := records.ListQuery{Limit: 10}
	e.list(t, tgt, "books", q)
	p, info := e.list(t, tgt, "books", q)
	if info.Source != records.SourceCache || len(p.Items) != 2 || p.Items[1].Version != 2 {
		t.Fatalf("list hit: %+v %+v", p, info)
	}
	e.wantCalls(t, 2)
	e.list(t, tgt, "books", records.ListQuery{Limit: 10, Desc: true})
	e.wantCalls(t, 3)

	// Not-found and errors are not cached; GetMany always passes through.
	for range 2 {
		if _, _, err := e.r.Get(bg, tgt, records.ReadOptions{}, "books", "missing"); !errors.Is(err, records.ErrRecordNotFound) {
			t.Fatalf("missing record: %v", err)
		}
	}
	e.wantCalls(t, 5)
	if got := e.skipped(skipNotFound); got != 2 {
		t.Fatalf("not-found skips = %v", got)
	}
	e.r.GetMany(bg, tgt, records.ReadOptions{}, "books", []string{"x"}, nil)
	e.r.GetMany(bg, tgt, records.ReadOptions{}, "books", []string{"x"}, nil)
	e.wantCalls(t, 7)

	if got := testutil.ToFloat64(e.c.requests.WithLabelValues(kindRecord, "hit")); got != 1 {
		t.Fatalf("record hits = %v", got)
	}
	if got := testutil.ToFloat64(e.c.requests.WithLabelValues(kindRecord, "miss")); got != 3 {
		t.Fatalf("record misses = %v", got)
	}
}

// TestServeRules: an entry at version 1 (LSN 1) is cached, then the store moves to version 2
// without an event, so the answer's version says who answered.
func TestServeRules(t *testing.T) {
	tok := func(shard string, lsn uint64) string {
		return replication.Token{Shard: shard, LSN: replication.LSN(lsn)}.Encode()
	}
	cases := []struct {
		name      string
		ro        records.ReadOptions
		tg        records.Target
		fresh     func(c *clock)
		wantCache bool
		wantErr   error
	}{
		{name: "plain", wantCache: true},
		{name: "strong", ro: records.ReadOptions{Strong: true}},
		{name: "no-cache", ro: records.ReadOptions{NoCache: true}},
		{name: "no heartbeat", fresh: func(c *clock) { c.setFresh(time.Time{}, false) }},
		{name: "heartbeat too old", fresh: func(c *clock) { c.setFresh(c.Now().Add(-DefaultMaxStaleness), true) }},
		{name: "heartbeat just fresh", fresh: func(c *clock) { c.setFresh(c.Now().Add(-DefaultMaxStaleness+time.Millisecond), true) }, wantCache: true},
		{name: "token covered", ro: records.ReadOptions{Token: tok("s1", 1)}, wantCache: true},
		{name: "token newer than entry", ro: records.ReadOptions{Token: tok("s1", 2)}},
		{name: "token of another shard", ro: records.ReadOptions{Token: tok("s9", 1)}},
		{name: "bad token", ro: records.ReadOptions{Token: "nope"}, wantErr: records.ErrBadToken},
		{name: "entry of another shard (moved)", tg: records.Target{Tenant: "acme", Shard: "s2"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.fake.setSource(records.SourceReplica, 0) // a standby: its LSN proves what a token needs
			e.fake.lsnIsVersion = true
			e.fake.set("books", "x", 1)
			e.get(t, tgt, records.ReadOptions{}, "books", "x")
			e.fake.set("books", "x", 2)
			if tc.fresh != nil {
				tc.fresh(e.clk)
			}
			tg := tgt
			if tc.tg.Shard != "" {
				tg = tc.tg
			}
			rec, info, err := e.r.Get(bg, tg, tc.ro, "books", "x")
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantCache {
				if rec.Version != 1 || info.Source != records.SourceCache || info.LSN != 1 {
					t.Fatalf("want the cached v1: %+v %+v", rec, info)
				}
				e.wantCalls(t, 1)
				return
			}
			if rec.Version != 2 || info.Source != records.SourceReplica {
				t.Fatalf("want the store's v2: %+v %+v", rec, info)
			}
			e.wantCalls(t, 2)
		})
	}
}

// TestTokenMissFills: a token the entry does not cover reads the store and stores the newer
// answer, which then serves the token.
func TestTokenMissFills(t *testing.T) {
	e := newEnv(t)
	e.fake.setSource(records.SourceReplica, 0) // a standby: its LSN proves what a token needs
	e.fake.lsnIsVersion = true
	e.fake.set("books", "x", 1)
	e.get(t, tgt, records.ReadOptions{}, "books", "x")
	e.fake.set("books", "x", 5)
	ro := records.ReadOptions{Token: replication.Token{Shard: "s1", LSN: 5}.Encode()}
	if rec, info := e.get(t, tgt, ro, "books", "x"); rec.Version != 5 || info.Source != records.SourceReplica {
		t.Fatalf("token read: %+v %+v", rec, info)
	}
	if rec, info := e.get(t, tgt, ro, "books", "x"); rec.Version != 5 || info.Source != records.SourceCache || info.LSN != 5 {
		t.Fatalf("token read after fill: %+v %+v", rec, info)
	}
	e.wantCalls(t, 2)
}

func TestInvalidate(t *testing.T) {
	e := newEnv(t)
	for _, id := range []string{"x", "y", "a", "b"} {
		e.fake.set("books", id, 1)
		e.fake.set("films", id, 1)
	}
	warm := func() {
		e.get(t, tgt, records.ReadOptions{}, "books", "x")
		e.get(t, tgt, records.ReadOptions{}, "books", "y")
		e.list(t, tgt, "books", records.ListQuery{Limit: 5})
		e.list(t, tgt, "books", records.ListQuery{Limit: 5, After: "a"})
		e.list(t, tgt, "films", records.ListQuery{Limit: 5})
	}
	warm()
	e.wantCalls(t, 5)
	warm()
	e.wantCalls(t, 5)

	e.fake.set("books", "x", 2)
	if err := e.c.Invalidate(bg, "acme", "s1", "books", "x", 2); err != nil {
		t.Fatal(err)
	}
	if rec, info := e.get(t, tgt, records.ReadOptions{}, "books", "x"); rec.Version != 2 || info.Source != records.SourcePrimary {
		t.Fatalf("invalidated record: %+v %+v", rec, info)
	}
	e.wantCalls(t, 6)
	if _, info := e.get(t, tgt, records.ReadOptions{}, "books", "y"); info.Source != records.SourceCache {
		t.Fatalf("another record of the collection was dropped: %+v", info)
	}
	// Every page of the collection is dropped, other collections' are not.
	for _, q := range []records.ListQuery{{Limit: 5}, {Limit: 5, After: "a"}} {
		if _, info := e.list(t, tgt, "books", q); info.Source != records.SourcePrimary {
			t.Fatalf("page %+v of the invalidated collection: %+v", q, info)
		}
	}
	if _, info := e.list(t, tgt, "films", records.ListQuery{Limit: 5}); info.Source != records.SourceCache {
		t.Fatalf("page of another collection: %+v", info)
	}
	e.wantCalls(t, 8)
	if got := testutil.ToFloat64(e.c.invalidations); got != 1 {
		t.Fatalf("invalidations = %v", got)
	}
}

func TestResets(t *testing.T) {
	e := newEnv(t)
	other := records.Target{Tenant: "globex", Shard: "s1"}
	e.fake.set("books", "x", 1)
	e.fake.set("books", "a", 1)
	e.fake.set("books", "b", 1)
	warm := func() {
		for _, tg := range []records.Target{tgt, other} {
			e.get(t, tg, records.ReadOptions{}, "books", "x")
			e.list(t, tg, "books", records.ListQuery{Limit: 5})
		}
	}
	// source reports where each of the four reads of warm was answered.
	source := func() (srcs []records.Source) {
		for _, tg := range []records.Target{tgt, other} {
			_, info := e.get(t, tg, records.ReadOptions{}, "books", "x")
			_, linfo := e.list(t, tg, "books", records.ListQuery{Limit: 5})
			srcs = append(srcs, info.Source, linfo.Source)
		}
		return srcs
	}
	warm()
	if err := e.c.ResetTenant(bg, "acme"); err != nil {
		t.Fatal(err)
	}
	got := source()
	want := []records.Source{records.SourcePrimary, records.SourcePrimary, records.SourceCache, records.SourceCache}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after ResetTenant(acme): %v, want %v", got, want)
	}
	// A tenant never seen before can be reset too.
	if err := e.c.ResetTenant(bg, "initech"); err != nil {
		t.Fatal(err)
	}
	warm()
	if err := e.c.ResetAll(bg); err != nil {
		t.Fatal(err)
	}
	got = source()
	want = []records.Source{records.SourcePrimary, records.SourcePrimary, records.SourcePrimary, records.SourcePrimary}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after ResetAll: %v, want %v", got, want)
	}
	if got := testutil.ToFloat64(e.c.resets.WithLabelValues("tenant")); got != 2 {
		t.Fatalf("tenant resets = %v", got)
	}
	if got := testutil.ToFloat64(e.c.resets.WithLabelValues("all")); got != 1 {
		t.Fatalf("all resets = %v", got)
	}
}

// TestFillGuardInvalidateInFlight: an Invalidate lands while the miss's read is in flight, so
// what it read must not be stored.
func TestFillGuardInvalidateInFlight(t *testing.T) {
	for _, kind := range []string{kindRecord, kindList} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t)
			e.fake.set("books", "a", 1)
			e.fake.set("books", "b", 1)
			gate, started := e.fake.block()
			type answer struct {
				version int64
				err     error
			}
			done := make(chan answer, 1)
			go func() {
				if kind == kindRecord {
					rec, _, err := e.r.Get(bg, tgt, records.ReadOptions{}, "books", "a")
					done <- answer{rec.Version, err}
					return
				}
				p, _, err := e.r.List(bg, tgt, records.ReadOptions{}, "books", records.ListQuery{Limit: 5})
				if err != nil {
					done <- answer{0, err}
					return
				}
				done <- answer{p.Items[0].Version, err}
			}()
			<-started // the read has taken version 1 and not answered yet
			e.fake.set("books", "a", 2)
			if err := e.c.Invalidate(bg, "acme", "s1", "books", "a", 2); err != nil {
				t.Fatal(err)
			}
			e.fake.unblock()
			close(gate)
			if a := <-done; a.err != nil || a.version != 1 {
				t.Fatalf("the read in flight answered %+v, want version 1 (it began before the write)", a)
			}
			if got := e.skipped(skipInvalidated); got != 1 {
				t.Fatalf("skipped as invalidated = %v", got)
			}
			// Nothing was stored: the next read goes to the store and sees version 2.
			var v int64
			var info records.ReadInfo
			if kind == kindRecord {
				var rec records.Record
				rec, info = e.get(t, tgt, records.ReadOptions{}, "books", "a")
				v = rec.Version
			} else {
				var p records.Page
				p, info = e.list(t, tgt, "books", records.ListQuery{Limit: 5})
				v = p.Items[0].Version
			}
			if v != 2 || info.Source != records.SourcePrimary {
				t.Fatalf("read after the invalidation: version %d from %s", v, info.Source)
			}
		})
	}
}

// TestFillGuardLSN: a standby's answer is stored only when it has replayed past the newest
// event of the tenant; a primary's answer always.
func TestFillGuardLSN(t *testing.T) {
	e := newEnv(t)
	e.fake.set("books", "x", 1)
	if err := e.c.Invalidate(bg, "acme", "s1", "books", "x", 200); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		source records.Source
		lsn    uint64
		stored bool
		reason string
		hitLSN uint64 // the entry's LSN: what token reads it may serve
	}{
		{records.SourceReplica, 150, false, skipLSNBehind, 0},
		{records.SourceReplica, 0, false, skipLSNUnknown, 0},
		{records.SourceReplica, 200, true, "", 200},
		// The primary is current whatever LSN it reports, but its LSN (read before the read's
		// snapshot) does not prove a token's write is in the answer: stored with LSN 0.
		{records.SourcePrimary, 100, true, "", 0},
	}
	for i, st := range steps {
		id := fmt.Sprintf("r%d", i)
		e.fake.set("books", id, 1)
		e.fake.setSource(st.source, st.lsn)
		e.get(t, tgt, records.ReadOptions{}, "books", id)
		_, info := e.get(t, tgt, records.ReadOptions{}, "books", id)
		if got := info.Source == records.SourceCache; got != st.stored {
			t.Fatalf("step %d (%s at LSN %d): stored = %v, want %v", i, st.source, st.lsn, got, st.stored)
		}
		if st.stored && info.LSN != st.hitLSN {
			t.Fatalf("step %d: hit LSN %d, want %d", i, info.LSN, st.hitLSN)
		}
		// Both reads missed, and neither was stored.
		if st.reason != "" && e.skipped(st.reason) != 2 {
			t.Fatalf("step %d: %s skips = %v", i, st.reason, e.skipped(st.reason))
		}
	}

	// Another API node on the same Redis that has not applied the event yet still refuses a
	// standby answer older than it: the newest event LSN is kept in Redis too.
	n2 := newEnvOn(t, e.redis, e.rc)
	n2.fake.set("books", "z", 1)
	n2.fake.setSource(records.SourceReplica, 150)
	n2.get(t, tgt, records.ReadOptions{}, "books", "z")
	if _, info := n2.get(t, tgt, records.ReadOptions{}, "books", "z"); info.Source == records.SourceCache {
		t.Fatal("node 2 stored a standby answer older than node 1's event")
	}
	if got := n2.skipped(skipLSNBehind); got != 2 {
		t.Fatalf("node 2 lsn-behind skips = %v", got)
	}
}

// TestFillGuardAfterReset: a reset stands for unseen events, so standby answers are not
// stored until StandbyLag after it.
func TestFillGuardAfterReset(t *testing.T) {
	for _, scope := range []string{"tenant", "all"} {
		t.Run(scope, func(t *testing.T) {
			e := newEnv(t)
			e.fake.set("books", "x", 1)
			e.fake.setSource(records.SourceReplica, 500)
			var err error
			if scope == "tenant" {
				err = e.c.ResetTenant(bg, "acme")
			} else {
				err = e.c.ResetAll(bg)
			}
			if err != nil {
				t.Fatal(err)
			}
			e.get(t, tgt, records.ReadOptions{}, "books", "x")
			if _, info := e.get(t, tgt, records.ReadOptions{}, "books", "x"); info.Source == records.SourceCache {
				t.Fatal("standby answer stored right after a reset")
			}
			if got := e.skipped(skipAfterReset); got != 2 {
				t.Fatalf("after-reset skips = %v", got)
			}
			e.clk.advance(DefaultMaxStaleness)
			e.get(t, tgt, records.ReadOptions{}, "books", "x")
			if _, info := e.get(t, tgt, records.ReadOptions{}, "books", "x"); info.Source != records.SourceCache {
				t.Fatalf("standby answer StandbyLag after the reset not stored: %+v", info)
			}
		})
	}
}

func TestSingleflight(t *testing.T) {
	const n = 20
	e := newEnv(t)
	e.fake.set("books", "x", 7)
	gate, started := e.fake.block()
	var joined sync.WaitGroup
	joined.Add(n)
	e.c.flightJoined = joined.Done
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec, info, err := e.r.Get(bg, tgt, records.ReadOptions{}, "books", "x")
			if err == nil && (rec.Version != 7 || info.Source != records.SourcePrimary) {
				err = fmt.Errorf("answered %+v %+v", rec, info)
			}
			errs <- err
		}()
	}
	<-started
	joined.Wait() // all n misses are waiting on the one read
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	e.wantCalls(t, 1)
	if got := testutil.ToFloat64(e.c.requests.WithLabelValues(kindRecord, "miss")); got != n {
		t.Fatalf("misses = %v, want %d", got, n)
	}
}

// TestSingleflightCallerGone: the reader whose context started the collapsed read leaves;
// the others still get an answer.
func TestSingleflightCallerGone(t *testing.T) {
	e := newEnv(t)
	e.fake.set("books", "x", 7)
	_, started := e.fake.block()
	var joined sync.WaitGroup
	joined.Add(2)
	e.c.flightJoined = joined.Done
	ctx, cancel := context.WithCancel(bg)
	first := make(chan error, 1)
	go func() {
		_, _, err := e.r.Get(ctx, tgt, records.ReadOptions{}, "books", "x")
		first <- err
	}()
	<-started
	second := make(chan error, 1)
	go func() {
		rec, _, err := e.r.Get(bg, tgt, records.ReadOptions{}, "books", "x")
		if err == nil && rec.Version != 7 {
			err = fmt.Errorf("version %d", rec.Version)
		}
		second <- err
	}()
	joined.Wait()
	e.fake.unblock() // the retry must not block
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("first reader: %v", err)
	}
	if err := <-second; err != nil {
		t.Fatalf("second reader: %v", err)
	}
}

func TestRedisDown(t *testing.T) {
	e := newEnv(t)
	e.c.timeout, e.c.applyTimeout = 100*time.Millisecond, 100*time.Millisecond
	for _, id := range []string{"x", "a", "b"} {
		e.fake.set("books", id, 1)
	}
	e.get(t, tgt, records.ReadOptions{}, "books", "x")
	if err := e.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		rec, info := e.get(t, tgt, records.ReadOptions{}, "books", "x")
		if rec.Version != 1 || info.Source != records.SourcePrimary {
			t.Fatalf("with Redis down: %+v %+v", rec, info)
		}
		e.list(t, tgt, "books", records.ListQuery{Limit: 1})
	}
	if got := testutil.ToFloat64(e.c.errs.WithLabelValues("lookup")); got < 1 {
		t.Fatalf("lookup errors = %v", got)
	}
	if err := e.c.Invalidate(bg, "acme", "s1", "books", "x", 3); err == nil {
		t.Fatal("Invalidate with Redis down: no error")
	}
	if got := testutil.ToFloat64(e.c.requests.WithLabelValues(kindRecord, "bypass")); got != 3 {
		t.Fatalf("bypasses = %v", got)
	}
}

// TestApplierFailureTurnsCacheOff: an Invalidate that cannot reach Redis leaves the entry it
// should have deleted; the cache serves nothing until an epoch bump succeeds.
func TestApplierFailureTurnsCacheOff(t *testing.T) {
	e := newEnv(t)
	e.fake.set("books", "x", 1)
	e.get(t, tgt, records.ReadOptions{}, "books", "x")
	e.c.timeout, e.c.applyTimeout = 100*time.Millisecond, 100*time.Millisecond
	// Redis stalls every client for a while, the entry still in it.
	if err := e.rc.Do(bg, "CLIENT", "PAUSE", "1000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	e.fake.set("books", "x", 2)
	if err := e.c.Invalidate(bg, "acme", "s1", "books", "x", 2); err == nil {
		t.Fatal("Invalidate against a paused Redis: no error")
	}
	// Reads bypass (one repair attempt per second of the cache's clock), during the pause and
	// after it, until the repair succeeds.
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, info := e.get(t, tgt, records.ReadOptions{}, "books", "x")
		if rec.Version != 2 {
			t.Fatalf("stale entry served after a failed Invalidate: %+v %+v", rec, info)
		}
		if !e.c.dirty.Load() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the cache never repaired itself")
		}
		e.clk.advance(repairEvery)
	}
	// Repaired: the epoch moved, so the stale entry is unreachable; caching works again.
	e.get(t, tgt, records.ReadOptions{}, "books", "x")
	if rec, info := e.get(t, tgt, records.ReadOptions{}, "books", "x"); rec.Version != 2 || info.Source != records.SourceCache {
		t.Fatalf("after repair: %+v %+v", rec, info)
	}
}

// TestNoStaleReadAfterInvalidate: readers race a writer that bumps a record's version in the
// store and then calls Invalidate. A read that begins after an Invalidate returned must never
// answer a version older than the one that Invalidate was for, whichever of cache, collapsed
// miss or store answers it. Two nodes share the Redis, each applying every event.
func TestNoStaleReadAfterInvalidate(t *testing.T) {
	e1 := newEnv(t)
	e2 := newEnvOn(t, e1.redis, e1.rc)
	nodes := []*env{e1, e2}
	for _, n := range nodes {
		n.fake.set("books", "a", 1)
		n.fake.set("books", "b", 1)
		n.fake.jitter = true
	}
	const writes = 300
	var done atomic.Bool
	// applied[i] is the newest version node i's Invalidate returned for.
	var applied [2]atomic.Int64
	applied[0].Store(1)
	applied[1].Store(1)

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for r := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ni := r % 2
			n := nodes[ni]
			for i := 0; !done.Load(); i++ {
				floor := applied[ni].Load()
				var v int64
				var src records.Source
				if i%3 == 2 {
					p, info, err := n.r.List(bg, tgt, records.ReadOptions{}, "books", records.ListQuery{Limit: 5})
					if err != nil {
						errs <- err
						return
					}
					v, src = p.Items[0].Version, info.Source
				} else {
					rec, info, err := n.r.Get(bg, tgt, records.ReadOptions{}, "books", "a")
					if err != nil {
						errs <- err
						return
					}
					v, src = rec.Version, info.Source
				}
				if v < floor {
					errs <- fmt.Errorf("node %d read version %d from %s after Invalidate for %d returned", ni, v, src, floor)
					return
				}
			}
		}()
	}
	// The store is shared by the two nodes (one database); each node's fake answers from it.
	for v := int64(2); v <= writes; v++ {
		for _, n := range nodes {
			n.fake.set("books", "a", v)
		}
		// Every node applies the event, in its own time: node 2 lags by one event.
		if err := e1.c.Invalidate(bg, "acme", "s1", "books", "a", uint64(v)); err != nil {
			t.Fatal(err)
		}
		applied[0].Store(v)
		if v > 2 {
			if err := e2.c.Invalidate(bg, "acme", "s1", "books", "a", uint64(v-1)); err != nil {
				t.Fatal(err)
			}
			applied[1].Store(v - 1)
		}
	}
	done.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var hits float64
	for _, n := range nodes {
		hits += testutil.ToFloat64(n.c.requests.WithLabelValues(kindRecord, "hit"))
	}
	t.Logf("record hits %v, skipped as invalidated %v+%v, redis-invalidated %v+%v", hits,
		e1.skipped(skipInvalidated), e2.skipped(skipInvalidated), e1.skipped(skipRedisRace), e2.skipped(skipRedisRace))
}

// TestMovedTenant: after a move, the source shard's event LSNs neither block nor admit fills
// from the target (LSNs of two databases say nothing of each other), and the first read with
// the tenant's new write epoch drops its entries and opens the after-reset window, so no
// standby read of the target is stored before that standby has had StandbyLag to replay the
// cutover.
func TestMovedTenant(t *testing.T) {
	e := newEnv(t)
	src := records.Target{Tenant: "acme", Shard: "s1", Epoch: 1}
	dst := records.Target{Tenant: "acme", Shard: "s2", Epoch: 2}
	e.fake.set("books", "x", 1)
	e.fake.setSource(records.SourceReplica, 1000)
	e.get(t, src, records.ReadOptions{}, "books", "x")
	if _, info := e.get(t, src, records.ReadOptions{}, "books", "x"); info.Source != records.SourceCache {
		t.Fatalf("before the move: %+v", info)
	}
	// The source's WAL is far ahead of the target's.
	if err := e.c.Invalidate(bg, "acme", "s1", "books", "x", 1<<40); err != nil {
		t.Fatal(err)
	}
	// Cutover: reads now carry epoch 2 and shard s2, whose standby is at LSN 10.
	e.fake.set("books", "x", 2)
	e.fake.setSource(records.SourceReplica, 10)
	if rec, info := e.get(t, dst, records.ReadOptions{}, "books", "x"); info.Source == records.SourceCache || rec.Version != 2 {
		t.Fatalf("first read after the move: v%d from %s", rec.Version, info.Source)
	}
	if e.skipped(skipAfterReset) != 1 {
		t.Fatalf("after-reset skips = %v, want 1 (the epoch bump opens the window)", e.skipped(skipAfterReset))
	}
	e.clk.advance(DefaultMaxStaleness)
	e.get(t, dst, records.ReadOptions{}, "books", "x")
	if _, info := e.get(t, dst, records.ReadOptions{}, "books", "x"); info.Source != records.SourceCache {
		t.Fatalf("after the window: %+v (lsn-behind skips %v: the source's LSN must not count)", info, e.skipped(skipLSNBehind))
	}
	// An event of the target's own shard does count.
	if err := e.c.Invalidate(bg, "acme", "s2", "books", "x", 20); err != nil {
		t.Fatal(err)
	}
	e.get(t, dst, records.ReadOptions{}, "books", "x")
	if e.skipped(skipLSNBehind) != 1 {
		t.Fatalf("a standby read behind the target's own newest event was stored (lsn-behind skips %v)", e.skipped(skipLSNBehind))
	}
}

// TestStalledRedisBoundedByTimeout: with the cache's client options (RedisOptions), a Redis
// that stops answering costs a read Config.Timeout, not the socket's read timeout (raised to
// 10 s here so the difference cannot be mistaken): the read goes to the store.
func TestStalledRedisBoundedByTimeout(t *testing.T) {
	srv := testenv.Redis(t)
	opts := RedisOptions(srv.Addr())
	opts.ReadTimeout, opts.WriteTimeout = 10*time.Second, 10*time.Second
	rc := redis.NewClient(opts)
	t.Cleanup(func() { _ = rc.Close() })
	clk := &clock{now: time.Now(), asOf: time.Now(), ok: true}
	c, err := New(Config{Redis: rc, Fresh: clk.Fresh, Now: clk.Now, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	fake := newFake()
	r := c.Wrap(fake)
	if _, _, err := r.Get(bg, tgt, records.ReadOptions{}, "c", "a"); err != nil && !errors.Is(err, records.ErrRecordNotFound) {
		t.Fatal(err) // warm: the connection is open
	}
	if err := syscall.Kill(srv.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(srv.Pid(), syscall.SIGCONT) })
	start := time.Now()
	_, _, err = r.Get(bg, tgt, records.ReadOptions{}, "c", "a")
	took := time.Since(start)
	if err != nil && !errors.Is(err, records.ErrRecordNotFound) {
		t.Fatalf("read with Redis stalled: %v, want the store's answer", err)
	}
	if took > 3*time.Second {
		t.Fatalf("read with Redis stalled took %v: the 100 ms timeout did not bound the call (socket timeout 10 s)", took)
	}
	t.Logf("read with Redis stalled answered by the store in %v", took)
}

// TestApplyOutlastsReadTimeout: the Applier's Redis calls are bounded by ApplyTimeout, not by a
// read's Timeout. With Redis stalled for 150 ms, a read gives up on Redis after its 50 ms and goes
// to the store, while an Invalidate (the default ApplyTimeout, 200 ms) waits it out and succeeds,
// leaving the cache usable (a timeout there would have cost the region a reset). The default is
// the larger of Timeout and 200 ms.
func TestApplyOutlastsReadTimeout(t *testing.T) {
	for _, tc := range []struct{ timeout, want time.Duration }{
		{0, DefaultApplyTimeout}, {50 * time.Millisecond, DefaultApplyTimeout}, {5 * time.Second, 5 * time.Second},
	} {
		c, err := New(Config{Redis: redis.NewClient(&redis.Options{}), Fresh: (&clock{}).Fresh, Timeout: tc.timeout})
		if err != nil {
			t.Fatal(err)
		}
		if c.applyTimeout != tc.want {
			t.Errorf("Timeout %v: apply timeout %v, want %v", tc.timeout, c.applyTimeout, tc.want)
		}
	}

	srv := testenv.Redis(t)
	rc := redis.NewClient(RedisOptions(srv.Addr()))
	t.Cleanup(func() { _ = rc.Close() })
	clk := &clock{now: time.Now(), asOf: time.Now(), ok: true}
	c, err := New(Config{Redis: rc, Fresh: clk.Fresh, Now: clk.Now, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	fake := newFake()
	fake.set("c", "a", 1)
	r := c.Wrap(fake)
	if _, _, err := r.Get(bg, tgt, records.ReadOptions{}, "c", "a"); err != nil {
		t.Fatal(err) // warm: the connection is open
	}
	if err := rc.Do(bg, "CLIENT", "PAUSE", "150", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, _, err := r.Get(bg, tgt, records.ReadOptions{}, "c", "a"); err != nil {
		t.Fatalf("read with Redis paused: %v", err)
	}
	if took := time.Since(start); took > 250*time.Millisecond {
		t.Fatalf("read with Redis paused took %v: not bounded by its 50 ms", took)
	}
	if err := c.Invalidate(bg, "acme", "s1", "c", "a", 2); err != nil {
		t.Fatalf("Invalidate with Redis paused 150 ms: %v", err)
	}
	if c.dirty.Load() {
		t.Fatal("the cache is dirty after an Invalidate that succeeded")
	}
}
