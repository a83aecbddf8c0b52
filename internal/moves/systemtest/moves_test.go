package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// movedTenant creates tenant, seeds n records and answers its placement and the regions of
// the move: from (its home), to (the next region) and third.
func movedTenant(t *testing.T, ctx context.Context, e *env, tenant string) (ti tenantInfo, to, third string) {
	t.Helper()
	ti = e.createTenant(t, ctx, tenant)
	if ti.Epoch != 1 || ti.Moving {
		t.Fatalf("new tenant %s: %+v, want epoch 1, not moving", tenant, ti)
	}
	to, third = e.others(ti.HomeRegion)
	return ti, to, third
}

// runMove runs the workload on a seeded tenant, moves it to region to's first shard while it
// runs (requested through the third region's router), and calls onPhase on every phase the
// watcher sees; it answers the finished move.
func runMove(t *testing.T, ctx context.Context, e *env, w *workload, ti tenantInfo, to, third string, writeRate float64,
	watch *moveWatch, every time.Duration, onPhase func(string)) move {
	t.Helper()
	wctx, stop := context.WithCancel(ctx)
	wait := w.run(wctx, writeRate, 10)
	stopped := false
	defer func() {
		if !stopped {
			stop()
			wait()
		}
	}()
	time.Sleep(2 * time.Second) // the workload runs (and fills caches) before the move
	toShard := to + "-1"
	id := e.requestMove(t, ctx, e.router(third), w.tenant, toShard)
	t0 := time.Now()
	m, err := e.watchMove(ctx, watch, e.router(ti.HomeRegion), id, every, onPhase)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	time.Sleep(2 * time.Second) // and keeps running against the new home
	stop()
	wait()
	stopped = true
	watch.mu.Lock()
	phases := slices.Clone(watch.phases)
	watch.mu.Unlock()
	t.Logf("move %s of %s %s → %s: %s in %v, phases seen %v, rows %d/%d, repairs %d, pause %d ms",
		m.ID, w.tenant, m.FromShard, m.ToShard, m.Phase, took.Round(time.Millisecond), phases, m.RowsCopied, m.RowsTotal, m.Repairs, m.PauseMS)
	if m.FromShard != ti.Shard || m.ToShard != toShard {
		t.Errorf("move %s: from %s to %s, want %s to %s", m.ID, m.FromShard, m.ToShard, ti.Shard, toShard)
	}
	return m
}

// TestMoveUnderLoad moves a tenant with loadRecords records across regions while writers
// (creates with Idempotency-Key, PUT If-Match, DELETE If-Match) and readers run through every
// region's router, then checks: no client error, every acknowledged write's final state, no
// resurrection or regression, the map, the change streams of every region, the move's figures,
// no rows left on the source, and the third region's cache.
func TestMoveUnderLoad(t *testing.T) {
	e := cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const tenant = "mvload"
	defer e.dumpLogs(t, tenant)
	ti, to, third := movedTenant(t, ctx, e, tenant)
	watch := &moveWatch{}
	w := newWorkload(e, t, tenant, ti.HomeRegion, 4, watch.phase)
	w.seed(t, ctx, ti.Shard, loadRecords)
	m := runMove(t, ctx, e, w, ti, to, third, 50, watch, 50*time.Millisecond, nil)
	defer e.dumpLogs(t, m.ID)
	w.checkFinal(t, ctx, m, to, third)
}

// idemAck is one acknowledged create with an Idempotency-Key.
type idemAck struct {
	key, body, id, phase string
	status               int
}

// TestMoveIdempotencyAcrossCutover: creates with an Idempotency-Key acknowledged before and
// during the move (up to the cutover) are retried after it with the same key and body, through
// every router: each answers its first response (same status, same record id, replayed) and
// nothing new is created; the same key with another body is refused (422).
func TestMoveIdempotencyAcrossCutover(t *testing.T) {
	e := cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const tenant = "mvidem"
	defer e.dumpLogs(t, tenant)
	ti, to, third := movedTenant(t, ctx, e, tenant)
	tok := e.token(t, tenant)
	watch := &moveWatch{}

	var mu sync.Mutex
	var acks []idemAck
	var errs []string
	n := 0
	create := func(region string) {
		n++
		key := fmt.Sprintf("idem-%04d", n)
		body := fmt.Sprintf(`{"data":{"n":%d}}`, n)
		ph := watch.phase()
		r := e.do(ctx, http.MethodPost, e.router(region)+"/v1/collections/idem/records", tok, body, "Idempotency-Key", key)
		a, err := parseRecord(r.body)
		mu.Lock()
		defer mu.Unlock()
		if r.status != http.StatusCreated || err != nil || a.ID == "" {
			errs = append(errs, fmt.Sprintf("POST key %s via %s [phase %s]: %v", key, region, ph, r))
			return
		}
		acks = append(acks, idemAck{key: key, body: body, id: a.ID, status: r.status, phase: ph})
	}
	for i := 0; i < 15; i++ {
		create(e.regions[i%len(e.regions)])
	}

	// Keep creating until the watcher sees the cutover: the last of these are acknowledged
	// just before it (and some are held by the routers through it).
	toShard := to + "-1"
	id := e.requestMove(t, ctx, e.router(third), tenant, toShard)
	defer e.dumpLogs(t, id)
	creating := make(chan struct{})
	go func() {
		defer close(creating)
		for i := 0; ; i++ {
			switch watch.phase() {
			case "cutover", "cleanup", "done", "failed", "cancelled":
				return
			}
			create(e.regions[i%len(e.regions)])
			time.Sleep(30 * time.Millisecond)
		}
	}()
	m, err := e.watchMove(ctx, watch, e.router(ti.HomeRegion), id, 20*time.Millisecond, nil)
	<-creating
	if err != nil {
		t.Fatal(err)
	}
	if m.Phase != "done" {
		t.Fatalf("move %s ended %s (error %q)", m.ID, m.Phase, m.Error)
	}
	for _, s := range errs {
		t.Error(s)
	}
	byPhase := map[string]int{}
	for _, a := range acks {
		byPhase[a.phase]++
	}
	t.Logf("move %s: %d creates acknowledged before the retries, by the phase seen when sent: %v; last one sent in phase %q",
		m.ID, len(acks), byPhase, acks[len(acks)-1].phase)
	if byPhase["verify"] == 0 {
		t.Errorf("no create was sent during verify (just before the cutover): the test did not exercise the case")
	}

	// The retries, each through another router than the first attempt.
	for i, a := range acks {
		region := e.regions[(i+1)%len(e.regions)]
		r := e.do(ctx, http.MethodPost, e.router(region)+"/v1/collections/idem/records", tok, a.body, "Idempotency-Key", a.key)
		got, err := parseRecord(r.body)
		if r.status != a.status || err != nil || got.ID != a.id || r.header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("retry of key %s (first answered %d id %s, sent in phase %s) via %s: %v (Idempotent-Replayed %q), want the first response",
				a.key, a.status, a.id, a.phase, region, r, r.header.Get("Idempotent-Replayed"))
		}
		if sr := r.header.Get("X-Served-Region"); r.status < 300 && sr != to {
			t.Errorf("retry of key %s answered by region %q, want the new home %s", a.key, sr, to)
		}
	}
	// The same key with another body is another request: refused, nothing written.
	r := e.do(ctx, http.MethodPost, e.router(to)+"/v1/collections/idem/records", tok, `{"data":{"n":-1}}`, "Idempotency-Key", acks[0].key)
	if r.status != http.StatusUnprocessableEntity {
		t.Errorf("key %s with another body after the move: %v, want 422", acks[0].key, r)
	}

	// Nothing new: exactly the acknowledged records exist, on the target only.
	rs := e.do(ctx, http.MethodGet, e.router(to)+"/v1/collections/idem/records?limit=200", tok, "", "Prefer", "consistency=strong")
	var page struct {
		Items []apiRecord `json:"items"`
	}
	if rs.status != http.StatusOK || json.Unmarshal(rs.body, &page) != nil {
		t.Fatalf("list idem: %v", rs)
	}
	want := map[string]bool{}
	for _, a := range acks {
		want[a.id] = true
	}
	var extra []string
	for _, it := range page.Items {
		if !want[it.ID] {
			extra = append(extra, it.ID)
		}
	}
	if len(page.Items) != len(acks) || len(extra) > 0 {
		t.Errorf("collection idem after the retries: %d records (%d not acknowledged: %v), want the %d acknowledged",
			len(page.Items), len(extra), extra, len(acks))
	}
	dst := e.rowsOn(t, ctx, toShard, tenant)
	if dst.Records != int64(len(acks)) || dst.ChangeSeq != int64(len(acks)) {
		t.Errorf("target %s: %+v, want %d records and change_seq %d (the retries wrote nothing)", toShard, dst, len(acks), len(acks))
	}
	if src := e.rowsOn(t, ctx, ti.Shard, tenant); src != (tenantRows{}) {
		t.Errorf("source %s still has rows of %s: %+v", ti.Shard, tenant, src)
	}
}

// TestMoveControllerKilled SIGKILLs the move controller while a move under load is in a given
// phase, restarts it, and checks that the move completes and TestMoveUnderLoad's checks hold.
// Backfill is always caught (the copy is rate-limited); verify is not rate-limited and may be
// over before the watcher sees it, which is logged, not failed.
func TestMoveControllerKilled(t *testing.T) {
	e := cluster(t)
	n := max(600, rowsPerSecond*3/2) // a backfill of about 1.5 s
	for _, phase := range []string{"backfill", "verify", "cleanup"} {
		t.Run(phase, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			tenant := "mvkill-" + phase
			defer e.dumpLogs(t, tenant)
			ti, to, third := movedTenant(t, ctx, e, tenant)
			watch := &moveWatch{}
			w := newWorkload(e, t, tenant, ti.HomeRegion, 2, watch.phase)
			w.seed(t, ctx, ti.Shard, n)
			killed := false
			m := runMove(t, ctx, e, w, ti, to, third, 20, watch, 5*time.Millisecond, func(p string) {
				if p != phase || killed {
					return
				}
				killed = true
				if err := e.c.Kill("rebalancer"); err != nil {
					t.Errorf("Kill rebalancer: %v", err)
					return
				}
				for _, p := range e.c.Processes() {
					if p.Name == "rebalancer" && p.Running {
						t.Errorf("rebalancer still running after Kill")
					}
				}
				time.Sleep(500 * time.Millisecond)
				if err := e.c.Restart(ctx, "rebalancer"); err != nil {
					t.Errorf("Restart rebalancer: %v", err)
				}
				t.Logf("controller killed in %s and restarted", phase)
			})
			defer e.dumpLogs(t, m.ID)
			if !killed {
				watch.mu.Lock()
				seen := strings.Join(watch.phases, " → ")
				watch.mu.Unlock()
				if phase == "verify" {
					t.Logf("the watcher never saw phase verify (seen: %s): the controller was not killed in it", seen)
				} else {
					t.Errorf("the watcher never saw phase %s (seen: %s): the controller was not killed", phase, seen)
				}
			}
			w.checkFinal(t, ctx, m, to, third)
		})
	}
}
