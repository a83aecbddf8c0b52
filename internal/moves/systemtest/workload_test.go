package systemtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const coll = "items"

// record is the model of one record: the state its last acknowledged write left. Each record
// is owned by one writer, which alone writes it, so the model is exact: a write whose outcome
// is unknown (a transport error) is retried and then resolved by a strong read of the record.
type record struct {
	id      string
	version int64
	tok     string // data.tok of the last acknowledged write
	deleted bool
	acked   []int64 // every acknowledged (or resolved) version, in order
}

// workload writes and reads one tenant through every region's router.
type workload struct {
	e      *env
	tenant string
	token  string
	home   string // the tenant's home region at the start (seeding goes there)
	phase  func() string

	// tolerate makes some failures retried unknown outcomes (recorded in tolerated) instead
	// of client errors, for the tests that kill a process (see send).
	tolerate tolerance
	// pauseUnmeasured allows pause_ms 0: the controller was killed between fence and cleanup.
	pauseUnmeasured bool

	mu        sync.Mutex
	errs      []string
	tolerated []string
	writers   []*writer
	all       []*record // every record, seeded or created (appended under mu)

	// slow lists the reads the database did not answer within the API node's statement
	// timeout (slowRead); they are bounded by checkErrors, not failed one by one.
	slow []string

	writes, reads, cacheReads, retries, slowReads atomic.Int64
	moveRate                                      float64 // acknowledged writes/s during the move (runMove)
}

type writer struct {
	w      *workload
	n      int
	region string
	rng    *rand.Rand
	live   []*record
	seq    int
}

func newWorkload(e *env, t *testing.T, tenant, home string, writersPerRegion int, phase func() string) *workload {
	w := &workload{e: e, tenant: tenant, token: e.token(t, tenant), home: home, phase: phase, tolerate: tolerateNone}
	for i := 0; i < writersPerRegion*len(e.regions); i++ {
		w.writers = append(w.writers, &writer{w: w, n: i, region: e.regions[i%len(e.regions)], rng: rand.New(rand.NewPCG(uint64(i), 7))})
	}
	return w
}

// note appends to list, under w.mu, the line format and args make, stamped with the time and
// the move's phase.
func (w *workload) note(list *[]string, format string, args ...any) {
	ph := ""
	if w.phase != nil {
		ph = w.phase()
	}
	line := fmt.Sprintf("%s [phase %s] %s", time.Now().Format("15:04:05.000"), ph, fmt.Sprintf(format, args...))
	w.mu.Lock()
	defer w.mu.Unlock()
	*list = append(*list, line)
}

func (w *workload) fail(format string, args ...any) { w.note(&w.errs, format, args...) }

func (w *workload) url(region, id string) string {
	u := w.e.router(region) + "/v1/collections/" + coll + "/records"
	if id != "" {
		u += "/" + id
	}
	return u
}

// send retries a request after transport errors (same headers and body: an unknown outcome)
// for up to a minute; unknown reports whether any attempt's outcome was unknown. A transport
// error is a client error (and retried), unless w.tolerate says otherwise; answers w.tolerate
// names are retried as a client would (after Retry-After, if given) and counted in
// w.tolerated instead of failing.
func (w *workload) send(ctx context.Context, method, url, body string, hdr ...string) (r resp, unknown bool) {
	deadline := time.Now().Add(time.Minute)
	for {
		r = w.e.do(ctx, method, url, w.token, body, hdr...)
		tolerated := w.tolerate.allows(r)
		if (r.err == nil && !tolerated) || ctx.Err() != nil || time.Now().After(deadline) {
			return r, unknown
		}
		unknown = true
		w.retries.Add(1)
		pause := 200 * time.Millisecond
		if s, err := strconv.Atoi(r.header.Get("Retry-After")); err == nil && s > 0 {
			pause = time.Duration(s) * time.Second
		}
		if tolerated {
			w.noteTolerated("%s %s: %v (retrying in %v)", method, url, r, pause)
		} else {
			w.fail("%s %s: transport error (retrying): %v", method, url, r.err)
		}
		time.Sleep(pause)
	}
}

// tolerance is which failures a workload retries as a client would instead of failing.
type tolerance int

const (
	// tolerateNone: every failure is a client error (transport errors are still retried).
	tolerateNone tolerance = iota
	// tolerateFenced: 503 with Retry-After, what a router answers a write it held through a
	// cutover longer than its hold time (docs/moves.md: a controller killed under the fence).
	tolerateFenced
	// tolerateUnavailable: also transport errors and 502, 503, 504 (an API node killed).
	tolerateUnavailable
)

func (tl tolerance) allows(r resp) bool {
	switch tl {
	case tolerateFenced:
		return r.status == http.StatusServiceUnavailable && r.header.Get("Retry-After") != ""
	case tolerateUnavailable:
		return r.err != nil || r.status == http.StatusBadGateway || r.status == http.StatusServiceUnavailable || r.status == http.StatusGatewayTimeout
	}
	return false
}

// slowRead: a 504 of the API node's own, the database not answering a read within its
// statement timeout (3 s under test, see TestMain). A CI run saw three of 803 reads so answered
// at once, in two regions, while the controller's statement on a primary hit the same timeout
// (a stall of the shared 2-CPU host, not of a move: the tenant's move was only requested). A
// read has no outcome to lose, so these are bounded, not failed one by one: checkErrors fails
// when more than maxSlowReads are.
func slowRead(r resp) bool {
	return r.err == nil && r.status == http.StatusGatewayTimeout && bytes.Contains(r.body, []byte("database did not answer in time"))
}

// maxSlowReads is how many slow reads (slowRead) a workload of reads reads may have: 1 %, and
// at least 5. A move that kept a tenant's reads waiting would pass it (the readers sample each
// region about twice a second for the whole move).
func maxSlowReads(reads int64) int64 { return max(5, reads/100) }

// noteSlow records a slow read (see slowRead).
func (w *workload) noteSlow(format string, args ...any) { w.note(&w.slow, format, args...) }

// noteTolerated records an unavailability the test allows (see send).
func (w *workload) noteTolerated(format string, args ...any) { w.note(&w.tolerated, format, args...) }

type apiRecord struct {
	ID      string `json:"id"`
	Version int64  `json:"version"`
	Data    struct {
		Tok string `json:"tok"`
	} `json:"data"`
}

func parseRecord(b []byte) (apiRecord, error) {
	var a apiRecord
	err := json.Unmarshal(b, &a)
	return a, err
}

// seed writes n records (ids s-0000000..., version 1) of the fresh tenant straight into its
// shard as the Postgres superuser, in one transaction, with their outbox rows (seq 1..n,
// unsent, so the shard's relay publishes them like any write) and the tenant's change_seq:
// the state n acknowledged creates leave, in a second instead of minutes (a tenant's writes
// are serialised by its row lock; the 200,000 records through the API would take an
// hour under -race). The records are spread over the writers.
func (w *workload) seed(t *testing.T, ctx context.Context, shard string, n int) {
	t.Helper()
	t0 := time.Now()
	conn, err := pgx.Connect(ctx, w.e.shardDSN(t, shard))
	if err != nil {
		t.Fatalf("connect to %s: %v", shard, err)
	}
	defer conn.Close(context.Background())
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var seq int64
		if err := tx.QueryRow(ctx, `SELECT change_seq FROM tenants WHERE tenant_id = $1 FOR UPDATE`, w.tenant).Scan(&seq); err != nil {
			return fmt.Errorf("tenant row: %w", err)
		}
		if seq != 0 {
			return fmt.Errorf("tenant %s has change_seq %d, want a fresh tenant", w.tenant, seq)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO records (tenant_id, collection, id, version, data)
			SELECT $1, $2, 's-' || lpad(g::text, 7, '0'), 1, jsonb_build_object('tok', 'seed-' || g, 'pad', lpad(g::text, 32, '0'))
			FROM generate_series(0, $3 - 1) g`, w.tenant, coll, n); err != nil {
			return fmt.Errorf("records: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version, lsn)
			SELECT $1, g + 1, $2, 's-' || lpad(g::text, 7, '0'), 'create', 1, pg_current_wal_insert_lsn()
			FROM generate_series(0, $3 - 1) g`, w.tenant, coll, n); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
		_, err := tx.Exec(ctx, `UPDATE tenants SET change_seq = $2, updated_at = now() WHERE tenant_id = $1`, w.tenant, n)
		return err
	})
	if err != nil {
		t.Fatalf("seeding %s on %s: %v", w.tenant, shard, err)
	}
	// Let the shard's relay publish the seeded changes before the workload starts.
	relayWait := 2*time.Minute + time.Duration(n)*time.Millisecond
	for deadline := time.Now().Add(relayWait); ; {
		var unsent int64
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE tenant_id = $1 AND sent_at IS NULL`, w.tenant).Scan(&unsent); err != nil {
			t.Fatal(err)
		}
		if unsent == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the relay of %s left %d seeded changes unsent for %v", shard, unsent, relayWait)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := 0; i < n; i++ {
		r := &record{id: fmt.Sprintf("s-%07d", i), version: 1, tok: "seed-" + strconv.Itoa(i), acked: []int64{1}}
		w.all = append(w.all, r)
		wr := w.writers[i%len(w.writers)]
		wr.live = append(wr.live, r)
	}
	t.Logf("seeded %d records of %s on %s in %v", n, w.tenant, shard, time.Since(t0).Round(time.Millisecond))
}

// run starts the writers (writeRate writes/s in all) and one reader per region
// (readRate reads/s each) until ctx ends; wait returns when all have stopped.
func (w *workload) run(ctx context.Context, writeRate, readRate float64) (wait func()) {
	var wg sync.WaitGroup
	// Each writer keeps to a schedule (one write every `every`, the writers' starts spread over
	// one interval) and catches up after a slow write instead of dropping the writes it missed
	// (a ticker drops them): a cutover's held writes would otherwise take their whole pause out
	// of the offered load — coordinated omission — and the acknowledged rate would measure the
	// writers' patience rather than the system.
	// The readers' ids, taken before the writers start (they append to w.all).
	ids := make([]string, 0, len(w.all))
	for _, r := range w.all {
		ids = append(ids, r.id)
	}
	every := time.Duration(float64(len(w.writers)) / writeRate * float64(time.Second))
	began := time.Now()
	for i, wr := range w.writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := began.Add(every * time.Duration(i) / time.Duration(len(w.writers)))
			for {
				t := time.NewTimer(time.Until(next))
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
				wr.step(context.WithoutCancel(ctx)) // a started write always finishes
				next = next.Add(every)
			}
		}()
	}
	for i, region := range w.e.regions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 99))
			tick := time.NewTicker(time.Duration(float64(time.Second) / readRate))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				id := ids[rng.IntN(len(ids))]
				r, _ := w.send(context.WithoutCancel(ctx), http.MethodGet, w.url(region, id), "")
				w.reads.Add(1)
				switch {
				case r.err != nil:
					w.fail("GET %s via %s: %v", id, region, r.err)
				case r.status == http.StatusOK:
					if r.header.Get("X-Read-Source") == "cache" {
						w.cacheReads.Add(1)
					}
				case r.status == http.StatusNotFound: // deleted by a writer
				case slowRead(r):
					w.slowReads.Add(1)
					w.noteSlow("GET %s via %s: %v", id, region, r)
				default:
					w.fail("GET %s via %s: %v", id, region, r)
				}
			}
		}()
	}
	return wg.Wait
}

func etag(v int64) string { return `"` + strconv.FormatInt(v, 10) + `"` }

// step makes one write: a create (POST with an Idempotency-Key), an update (PUT If-Match) or
// a delete (DELETE If-Match) of one of the writer's live records.
func (wr *writer) step(ctx context.Context) {
	w := wr.w
	wr.seq++
	tok := fmt.Sprintf("w%d-%d", wr.n, wr.seq)
	x := wr.rng.Float64()
	switch {
	case x < 0.3 || len(wr.live) < 5:
		key := "key-" + w.tenant + "-" + tok
		r, _ := w.send(ctx, http.MethodPost, w.url(wr.region, ""), fmt.Sprintf(`{"data":{"tok":%q}}`, tok), "Idempotency-Key", key)
		a, err := parseRecord(r.body)
		if r.status != http.StatusCreated || err != nil || a.ID == "" || a.Version != 1 || a.Data.Tok != tok {
			w.fail("POST (key %s) via %s: %v", key, wr.region, r)
			return
		}
		rec := &record{id: a.ID, version: 1, tok: tok, acked: []int64{1}}
		wr.live = append(wr.live, rec)
		w.mu.Lock()
		w.all = append(w.all, rec)
		w.mu.Unlock()
		w.writes.Add(1)
	case x < 0.85:
		i := wr.rng.IntN(len(wr.live))
		rec := wr.live[i]
		r, unknown := w.send(ctx, http.MethodPut, w.url(wr.region, rec.id), fmt.Sprintf(`{"data":{"tok":%q}}`, tok), "If-Match", etag(rec.version))
		switch {
		case r.status == http.StatusOK:
			a, err := parseRecord(r.body)
			if err != nil || a.Version != rec.version+1 || a.Data.Tok != tok {
				w.fail("PUT %s (If-Match %d) via %s: answered %v, want version %d", rec.id, rec.version, wr.region, r, rec.version+1)
				return
			}
			rec.version, rec.tok = a.Version, tok
			rec.acked = append(rec.acked, a.Version)
			w.writes.Add(1)
		case r.status == http.StatusPreconditionFailed && unknown:
			wr.resolve(ctx, rec, tok, false)
		default:
			w.fail("PUT %s (If-Match %d) via %s: %v", rec.id, rec.version, wr.region, r)
		}
	default:
		i := wr.rng.IntN(len(wr.live))
		rec := wr.live[i]
		r, unknown := w.send(ctx, http.MethodDelete, w.url(wr.region, rec.id), "", "If-Match", etag(rec.version))
		switch {
		case r.status == http.StatusNoContent || r.status == http.StatusOK:
			rec.version++
			rec.deleted, rec.tok = true, ""
			rec.acked = append(rec.acked, rec.version)
			wr.live = append(wr.live[:i], wr.live[i+1:]...)
			w.writes.Add(1)
		case (r.status == http.StatusPreconditionFailed || r.status == http.StatusNotFound) && unknown:
			if wr.resolve(ctx, rec, "", true) {
				wr.live = append(wr.live[:i], wr.live[i+1:]...)
			}
		default:
			w.fail("DELETE %s (If-Match %d) via %s: %v", rec.id, rec.version, wr.region, r)
		}
	}
}

// resolve learns, by a strong read, whether a write of rec whose outcome was unknown (and
// whose retry was refused as a repeat) applied; it answers whether rec is now deleted.
func (wr *writer) resolve(ctx context.Context, rec *record, tok string, del bool) bool {
	w := wr.w
	r, _ := w.send(ctx, http.MethodGet, w.url(wr.region, rec.id), "", "Prefer", "consistency=strong")
	switch {
	case r.status == http.StatusNotFound && del:
		rec.version++
		rec.deleted, rec.tok = true, ""
		rec.acked = append(rec.acked, rec.version)
		return true
	case r.status == http.StatusOK:
		a, err := parseRecord(r.body)
		switch {
		case err != nil:
		case a.Version == rec.version && a.Data.Tok == rec.tok:
			return false // not applied
		case !del && a.Version == rec.version+1 && a.Data.Tok == tok:
			rec.version, rec.tok = a.Version, tok
			rec.acked = append(rec.acked, a.Version)
			return false
		}
	}
	w.fail("resolving an unknown write of %s (model version %d tok %q, delete %v): %v", rec.id, rec.version, rec.tok, del, r)
	return false
}

func (w *workload) errors() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.errs...)
}

// event is one /v1/changes event.
type event struct {
	Seq        int64
	Collection string `json:"collection"`
	ID         string `json:"id"`
	Op         string `json:"op"`
	Version    int64  `json:"version"`
}

// changes reads the tenant's change stream through router from Last-Event-ID 0 until the
// event upTo, resuming with Last-Event-ID whenever the stream ends.
func (e *env) changes(ctx context.Context, router, token string, upTo int64) ([]event, error) {
	// 90 s, and a millisecond per event more for the size (200,000 records).
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second+time.Duration(upTo)*time.Millisecond)
	defer cancel()
	client := &http.Client{Transport: e.client.Transport} // no timeout: a stream
	var evs []event
	last := int64(0)
	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil || attempt > 2000+int(upTo/100) {
			return evs, fmt.Errorf("stream through %s: at event %d of %d after %d connections: %v", router, last, upTo, attempt, ctx.Err())
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, router+"/v1/changes", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Accept", "text/event-stream")
		req.Header.Set("Last-Event-ID", strconv.FormatInt(last, 10))
		res, err := client.Do(req)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if res.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			return evs, fmt.Errorf("GET /v1/changes through %s (Last-Event-ID %d): %d %s", router, last, res.StatusCode, b)
		}
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var id, data string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id:"):
				id = strings.TrimSpace(line[3:])
			case strings.HasPrefix(line, "data:"):
				data = strings.TrimSpace(line[5:])
			case line == "" && id != "":
				var ev event
				seq, err1 := strconv.ParseInt(id, 10, 64)
				err2 := json.Unmarshal([]byte(data), &ev)
				if err := errors.Join(err1, err2); err != nil {
					res.Body.Close()
					return evs, fmt.Errorf("event id %q data %q: %v", id, data, err)
				}
				ev.Seq = seq
				evs = append(evs, ev)
				last = seq
				id, data = "", ""
				if seq >= upTo {
					res.Body.Close()
					return evs, nil
				}
			}
		}
		res.Body.Close()
	}
}

// checkFinal checks the tenant after its move to toShard (in region to) from fromShard and
// the workload's end: errors, final state, change streams, rows, map, caches in every region.
func (w *workload) checkFinal(t *testing.T, ctx context.Context, m move, to, third string) {
	t.Helper()
	w.checkErrors(t)
	// The move's figures.
	if m.Phase != "done" {
		t.Fatalf("move %s ended %s (error %q)", m.ID, m.Phase, m.Error)
	}
	if m.RowsTotal == 0 || m.RowsCopied != m.RowsTotal {
		t.Errorf("move %s: rows_copied %d, rows_total %d: want equal and > 0", m.ID, m.RowsCopied, m.RowsTotal)
	}
	switch {
	case m.PauseMS <= 0 && w.pauseUnmeasured:
		t.Logf("move %s: pause_ms %d: the controller was restarted between the fence and cleanup, so it did not measure it (docs/moves.md)", m.ID, m.PauseMS)
	case m.PauseMS <= 0:
		t.Errorf("move %s: pause_ms %d, want > 0", m.ID, m.PauseMS)
	}
	w.checkServed(t, ctx, served{region: to, shard: m.ToShard, epoch: 2, rowEpoch: 2, clean: m.FromShard})
}

// checkErrors fails the test on any client error of the workload and logs its figures.
func (w *workload) checkErrors(t *testing.T) {
	t.Helper()
	if errs := w.errors(); len(errs) > 0 {
		if len(errs) > 30 {
			errs = append(errs[:30], fmt.Sprintf("... and %d more", len(errs)-30))
		}
		t.Errorf("%d client errors:\n%s", len(w.errors()), strings.Join(errs, "\n"))
	}
	w.mu.Lock()
	tol := append([]string(nil), w.tolerated...)
	slow := append([]string(nil), w.slow...)
	w.mu.Unlock()
	if n, limit := int64(len(slow)), maxSlowReads(w.reads.Load()); n > limit {
		t.Errorf("%d of %d reads answered 504 by a database that did not answer in time, more than %d:\n%s", n, w.reads.Load(), limit, strings.Join(slow[:min(30, len(slow))], "\n"))
	} else if n > 0 {
		t.Logf("%d of %d reads answered 504 by a database that did not answer in time (at most %d allowed):\n%s", n, w.reads.Load(), limit, strings.Join(slow, "\n"))
	}
	if len(tol) > 0 {
		t.Logf("%d tolerated unavailabilities (retried as unknown outcomes), the first: %s", len(tol), strings.Join(tol[:min(5, len(tol))], "\n"))
	}
	t.Logf("workload: %d acknowledged writes after the seeding, %d reads (%d from a cache), %d retries of unknown outcomes",
		w.writes.Load(), w.reads.Load(), w.cacheReads.Load(), w.retries.Load())
}

// served is where a tenant must be served from at the end of a test: region's shard, with
// write epoch epoch, and no row of the tenant left on shard clean.
type served struct {
	region, shard string
	epoch         uint64 // in the map
	rowEpoch      int64  // the shard's tenant row's write_epoch
	clean         string
}

// checkServed checks, against the workload's model, that the tenant is served as want says:
// the map, every record's final state (strong reads through the home's router), the rows of
// both shards (superuser), the change stream of every region, and cached reads in every region.
func (w *workload) checkServed(t *testing.T, ctx context.Context, want served) {
	t.Helper()
	e := w.e
	to := want.region

	// The map.
	ti := e.tenant(t, ctx, w.tenant)
	if ti.Shard != want.shard || ti.HomeRegion != to || ti.Epoch != want.epoch || ti.Moving {
		t.Errorf("map entry of %s: %+v, want shard %s, home %s, epoch %d, not moving", w.tenant, ti, want.shard, to, want.epoch)
	}

	// The admin tenants list: under its shard, not under the cleaned one, never pins only.
	e.checkListed(t, ctx, w.tenant, want.shard, want.clean)

	// Every record's final state, strongly read through the new home's router.
	byID := map[string]*record{}
	live := 0
	for _, r := range w.all {
		byID[r.id] = r
		if !r.deleted {
			live++
		}
	}
	got := map[string]apiRecord{}
	next := w.url(to, "") + "?limit=200"
	for next != "" {
		r := e.do(ctx, http.MethodGet, next, w.token, "", "Prefer", "consistency=strong")
		if r.status != http.StatusOK {
			t.Fatalf("strong list through %s: %v", to, r)
		}
		if src := r.header.Get("X-Read-Source"); src != "primary" {
			t.Errorf("strong list through %s answered from %q", to, src)
		}
		if sr := r.header.Get("X-Served-Region"); sr != to {
			t.Errorf("strong list through %s served by region %q", to, sr)
		}
		var page struct {
			Items []apiRecord `json:"items"`
		}
		if err := json.Unmarshal(r.body, &page); err != nil {
			t.Fatalf("list page: %v", err)
		}
		for _, a := range page.Items {
			got[a.ID] = a
		}
		next = nextLink(r.header.Get("Link"), e.router(to))
	}
	lost, resurrected, regressed, wrong, unknown := 0, 0, 0, 0, 0
	for _, r := range w.all {
		a, ok := got[r.id]
		switch {
		case r.deleted && ok:
			resurrected++
			if resurrected <= 10 {
				t.Errorf("record %s was deleted at version %d but reads as version %d tok %q", r.id, r.version, a.Version, a.Data.Tok)
			}
		case r.deleted:
		case !ok:
			lost++
			if lost <= 10 {
				t.Errorf("record %s (last acknowledged version %d tok %q) is missing", r.id, r.version, r.tok)
			}
		case a.Version < r.version:
			regressed++
			if regressed <= 10 {
				t.Errorf("record %s reads version %d tok %q, last acknowledged version %d tok %q", r.id, a.Version, a.Data.Tok, r.version, r.tok)
			}
		case a.Version != r.version || a.Data.Tok != r.tok:
			wrong++
			if wrong <= 10 {
				t.Errorf("record %s reads version %d tok %q, last acknowledged version %d tok %q", r.id, a.Version, a.Data.Tok, r.version, r.tok)
			}
		}
	}
	for id := range got {
		if byID[id] == nil {
			unknown++
			if unknown <= 10 {
				t.Errorf("record %s exists but no write of it was acknowledged", id)
			}
		}
	}
	t.Logf("final state through %s (strong): %d live records read, %d in the model (%d records in all): lost %d, resurrected %d, regressed %d, other data %d, unknown %d",
		to, len(got), live, len(w.all), lost, resurrected, regressed, wrong, unknown)

	// Rows on both shards (superuser).
	if src := e.rowsOn(t, ctx, want.clean, w.tenant); src != (tenantRows{}) {
		t.Errorf("shard %s still has rows of %s: %+v", want.clean, w.tenant, src)
	}
	dst := e.rowsOn(t, ctx, want.shard, w.tenant)
	if dst.Tenants != 1 || dst.Status != "active" || dst.Fenced || dst.Epoch != want.rowEpoch || dst.LiveRecords != int64(live) {
		t.Errorf("shard %s: %+v, want the tenant active, unfenced, write epoch %d, %d live records", want.shard, dst, want.rowEpoch, live)
	}
	if dst.MaxOutboxSeq != dst.ChangeSeq {
		t.Errorf("shard %s: outbox ends at seq %d, change_seq %d", want.shard, dst.MaxOutboxSeq, dst.ChangeSeq)
	}

	// The change stream of every region: 1..change_seq, each once, in order, with every
	// acknowledged write and no version going back.
	for _, region := range e.regions {
		evs, err := e.changes(ctx, e.router(region), w.token, dst.ChangeSeq)
		if err != nil {
			t.Errorf("changes through %s: %v", region, err)
		}
		bad := 0
		for i, ev := range evs {
			if ev.Seq != int64(i)+1 {
				bad++
				if bad <= 5 {
					t.Errorf("changes through %s: event %d has id %d (previous %d): gap or repeat", region, i+1, ev.Seq, evs[max(i-1, 0)].Seq)
				}
			}
		}
		seen := map[string][]int64{}
		for _, ev := range evs {
			if ev.Collection != coll || byID[ev.ID] == nil {
				t.Errorf("changes through %s: event %d of an unknown record %s/%s", region, ev.Seq, ev.Collection, ev.ID)
				continue
			}
			vs := seen[ev.ID]
			if len(vs) > 0 && ev.Version <= vs[len(vs)-1] {
				t.Errorf("changes through %s: event %d of %s has version %d after %d", region, ev.Seq, ev.ID, ev.Version, vs[len(vs)-1])
			}
			seen[ev.ID] = append(vs, ev.Version)
		}
		missing := 0
		for _, r := range w.all {
			for _, v := range r.acked {
				if !containsVersion(seen[r.id], v) {
					missing++
					if missing <= 5 {
						t.Errorf("changes through %s: no event of %s version %d (acknowledged)", region, r.id, v)
					}
				}
			}
		}
		if int64(len(evs)) != dst.ChangeSeq || bad > 0 || missing > 0 {
			t.Errorf("changes through %s: %d events, want %d (change_seq on %s); %d out of sequence, %d acknowledged writes without an event",
				region, len(evs), dst.ChangeSeq, want.shard, bad, missing)
		} else {
			t.Logf("changes through %s: 1..%d without gap or repeat, every acknowledged write present", region, dst.ChangeSeq)
		}
	}

	// Cached reads in every region show the final data (in parallel: each takes up to 20 s).
	var wg sync.WaitGroup
	for _, region := range e.regions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.checkCache(t, ctx, region, want.shard)
		}()
	}
	wg.Wait()
}

func containsVersion(vs []int64, v int64) bool {
	for _, x := range vs {
		if x == v {
			return true
		}
	}
	return false
}

// nextLink is the rel="next" target of a Link header, absolute.
func nextLink(link, base string) string {
	for _, part := range strings.Split(link, ",") {
		part = strings.TrimSpace(part)
		if !strings.Contains(part, `rel="next"`) {
			continue
		}
		i, j := strings.Index(part, "<"), strings.Index(part, ">")
		if i < 0 || j < i {
			continue
		}
		u := part[i+1 : j]
		if strings.HasPrefix(u, "/") {
			u = base + u
		}
		return u
	}
	return ""
}

// checkCache reads records last written during the move through region's router (default
// reads, all at once, 20 s in all) until each is answered from the cache with its final state;
// a cache answer with any other state is an error at once. When some read never hits the
// cache, a control tenant that never moved, on the same shard, tells whether the region caches
// that shard at all (the cache is off while the shard's relay heartbeats arrive later than 1 s,
// which a loaded machine can cause); if it does, the missed records are read again for 15 s,
// so that a region that stopped caching for a while during the first window (and caches
// again now) does not pass for a tenant-specific fault. Only a moved tenant left uncached
// while the control is cached is an error; it names the region's cache counters.
func (w *workload) checkCache(t *testing.T, ctx context.Context, region, shard string) {
	t.Helper()
	var sample []*record
	for i := len(w.all) - 1; i >= 0 && len(sample) < 20; i-- {
		if r := w.all[i]; !r.deleted && len(r.acked) > 1 {
			sample = append(sample, r)
		}
	}
	before := w.e.cacheCounters(ctx, region)
	missed := w.readCached(t, ctx, region, sample, 20*time.Second)
	t.Logf("cache in %s: %d of %d sampled records answered from the cache with their final state", region, len(sample)-len(missed), len(sample))
	if len(missed) == 0 {
		return
	}
	t.Logf("cache in %s: during the 20 s the region's API nodes' cache counters moved by %s", region, diffCounters(before, w.e.cacheCounters(ctx, region)))
	if !w.e.controlCached(t, ctx, region, shard) {
		t.Logf("NOT CHECKED: %d records of the moved tenant never answered from %s's cache in 20 s; a control tenant on %s (never moved) was not answered from it either: the region does not cache the shard now", len(missed), region, shard)
		return
	}
	again := w.readCached(t, ctx, region, missed, 15*time.Second)
	if len(again) == 0 {
		t.Logf("cache in %s: the %d records missed at first were answered from the cache once the control tenant was", region, len(missed))
		return
	}
	var ids []string
	for _, r := range again[:min(3, len(again))] {
		ids = append(ids, r.id)
	}
	t.Errorf("%d records of the moved tenant never answered from %s's cache in 20 s + 15 s (e.g. %s), while a control tenant on %s was answered from it; the region's API nodes' cache counters moved by %s",
		len(again), region, strings.Join(ids, ", "), shard, diffCounters(before, w.e.cacheCounters(ctx, region)))
}

// readCached reads every record of sample through region until it is answered from the cache
// (with its final state, else an error at once) or the window ends; it returns the records
// never answered from the cache.
func (w *workload) readCached(t *testing.T, ctx context.Context, region string, sample []*record, window time.Duration) []*record {
	t.Helper()
	deadline := time.Now().Add(window)
	var mu sync.Mutex
	var misses []*record
	var wg sync.WaitGroup
	for _, rec := range sample {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				last := w.e.do(ctx, http.MethodGet, w.url(region, rec.id), w.token, "")
				a, _ := parseRecord(last.body)
				fromCache := last.header.Get("X-Read-Source") == "cache"
				ok := last.status == http.StatusOK && a.Version == rec.version && a.Data.Tok == rec.tok
				if fromCache && !ok {
					t.Errorf("cached read of %s through %s: %v, want version %d tok %q", rec.id, region, last, rec.version, rec.tok)
					return
				}
				if fromCache {
					return
				}
				if time.Now().After(deadline) {
					mu.Lock()
					misses = append(misses, rec)
					mu.Unlock()
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	return misses
}

// cacheCounters sums the meridian_cache_* counters (every series, by its labels) of region's
// API nodes; unreachable nodes add nothing.
func (e *env) cacheCounters(ctx context.Context, region string) map[string]float64 {
	sum := map[string]float64{}
	for _, api := range e.f.Regions[region].API {
		r := e.do(ctx, http.MethodGet, api+"/metrics", "", "", "Accept-Encoding", "identity")
		if r.status != http.StatusOK {
			continue
		}
		for _, line := range strings.Split(string(r.body), "\n") {
			if !strings.HasPrefix(line, "meridian_cache_") {
				continue
			}
			i := strings.LastIndexByte(line, ' ')
			if v, err := strconv.ParseFloat(line[i+1:], 64); i > 0 && err == nil {
				sum[line[:i]] += v
			}
		}
	}
	return sum
}

// diffCounters lists the series that moved between two cacheCounters readings.
func diffCounters(before, after map[string]float64) string {
	var out []string
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out = append(out, fmt.Sprintf("%s +%g", k, d))
		}
	}
	if len(out) == 0 {
		return "nothing"
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// controlCached creates (once per shard) a tenant on shard that never moves, writes a record
// and answers whether a read of it through region is answered from the cache within 10 s.
func (e *env) controlCached(t *testing.T, ctx context.Context, region, shard string) bool {
	t.Helper()
	home := strings.TrimSuffix(shard, shard[strings.LastIndex(shard, "-"):])
	var tenant string
	for i := 0; i < 20 && tenant == ""; i++ {
		id := fmt.Sprintf("ctl-%s-%d", shard, i)
		r := e.do(ctx, http.MethodPost, e.router(home)+"/admin/v1/tenants", e.f.AdminToken, fmt.Sprintf(`{"id":%q,"region":%q}`, id, home))
		if (r.status == http.StatusCreated || r.status == http.StatusConflict) && e.tenantShard(ctx, id) == shard {
			tenant = id
		}
	}
	if tenant == "" {
		t.Logf("no control tenant found on %s", shard)
		return false
	}
	tok := e.token(t, tenant)
	url := e.router(region) + "/v1/collections/ctl/records/r1"
	if r := e.do(ctx, http.MethodPut, e.router(home)+"/v1/collections/ctl/records/r1", tok, `{"data":{"x":1}}`); r.status >= 300 {
		t.Logf("control write: %v", r)
		return false
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r := e.do(ctx, http.MethodGet, url, tok, "")
		if r.header.Get("X-Read-Source") == "cache" {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

func (e *env) tenantShard(ctx context.Context, id string) string {
	r := e.do(ctx, http.MethodGet, e.router(e.regions[0])+"/admin/v1/tenants/"+id, e.f.AdminToken, "")
	var ti tenantInfo
	if r.status != http.StatusOK || json.Unmarshal(r.body, &ti) != nil {
		return ""
	}
	return ti.Shard
}

// checkListed checks GET /admin/v1/tenants?shard= on both shards: tenant listed once under
// shard (with it as its placement) and not under other, every shard's rows merged (not the
// map's pins alone).
func (e *env) checkListed(t *testing.T, ctx context.Context, tenant, shard, other string) {
	t.Helper()
	for _, sh := range []string{shard, other} {
		if sh == "" {
			continue
		}
		n := 0
		next := e.router(e.regions[0]) + "/admin/v1/tenants?limit=200&shard=" + sh
		for next != "" {
			r := e.do(ctx, http.MethodGet, next, e.f.AdminToken, "")
			var page struct {
				Items      []tenantInfo `json:"items"`
				PinnedOnly bool         `json:"pinned_only"`
			}
			if r.status != http.StatusOK || json.Unmarshal(r.body, &page) != nil {
				t.Errorf("tenants list of %s: %v", sh, r)
				return
			}
			if page.PinnedOnly {
				t.Errorf("tenants list of %s: pinned_only (an API node could not list its shard's rows)", sh)
			}
			for _, it := range page.Items {
				if it.ID == tenant {
					n++
					if it.Shard != shard {
						t.Errorf("tenants list of %s places %s on %s, want %s", sh, tenant, it.Shard, shard)
					}
				}
			}
			next = nextLink(r.header.Get("Link"), e.router(e.regions[0]))
		}
		if want := map[bool]int{true: 1, false: 0}[sh == shard]; n != want {
			t.Errorf("tenants list of %s names %s %d times, want %d", sh, tenant, n, want)
		}
	}
}
