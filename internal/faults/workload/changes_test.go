package workload

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/faults/check"
	"github.com/meridian-dev/meridian/internal/faults/history"
	"github.com/meridian-dev/meridian/internal/sim"
)

// feed is a fake `/v1/changes`: the tenant's events 1..len(events); every connection gets
// at most per events after its Last-Event-ID and then ends cleanly, except that every third
// connection is cut in the middle of an event, and after the last event the stream stays open
// with heartbeats. skip, if set, is a sequence it never sends (a gap).
type feed struct {
	events []string // data JSON of seq i+1
	per    int
	skip   int64

	mu    sync.Mutex
	asked []string // Last-Event-ID of every connection
}

func (f *feed) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.asked = append(f.asked, r.Header.Get("Last-Event-ID"))
	n := len(f.asked)
	f.mu.Unlock()
	after, err := strconv.ParseInt(r.Header.Get("Last-Event-ID"), 10, 64)
	if err != nil || r.Header.Get("Authorization") == "" || r.URL.Path != "/v1/changes" {
		http.Error(rw, "bad request", http.StatusBadRequest)
		return
	}
	rw.Header().Set("Content-Type", "text/event-stream")
	rw.WriteHeader(http.StatusOK)
	fl := rw.(http.Flusher)
	_, _ = fmt.Fprint(rw, ": heartbeat\n\n")
	fl.Flush()
	sent := 0
	for seq := after + 1; seq <= int64(len(f.events)); seq++ {
		if seq == f.skip {
			continue
		}
		if sent == f.per {
			return // a clean end: the client resumes
		}
		data := f.events[seq-1]
		if n%3 == 0 && sent == 1 {
			// Cut in the middle of an event, with its id already sent.
			_, _ = fmt.Fprintf(rw, "id: %d\ndata: %s", seq, data[:len(data)/2])
			fl.Flush()
			c, _, _ := rw.(http.Hijacker).Hijack()
			c.Close()
			return
		}
		// The data split over two lines, as a server may.
		half := strings.Index(data, `"id"`)
		_, _ = fmt.Fprintf(rw, "id: %d\r\ndata: %s\r\ndata: %s\r\n\r\n", seq, data[:half], data[half:])
		fl.Flush()
		sent++
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-time.After(20 * time.Millisecond):
			_, _ = fmt.Fprint(rw, ": heartbeat\n\n")
			fl.Flush()
		}
	}
}

// fakeRun is a workload over routers at the given URLs (one region each) with one tenant
// whose acknowledged writes are the given ones (recorded as ok Writes).
func fakeRun(t *testing.T, urls map[string]string, writes []history.Op, cfg Config) *Workload {
	t.Helper()
	rec, err := NewRecorder(nil, history.Header{})
	if err != nil {
		t.Fatal(err)
	}
	cf := &sim.ClusterFile{Regions: map[string]sim.RegionEndpoints{}}
	for r, u := range urls {
		cf.Regions[r] = sim.RegionEndpoints{Router: u}
	}
	cfg.Cluster, cfg.RunID, cfg.Recorder, cfg.Clock = cf, "t", rec, NewClock()
	cfg.ProcsPerRegion, cfg.TenantsPerRegion = 1, 1
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.tenants = []Tenant{{ID: "acme", Home: w.regions[0], token: "tok"}}
	for _, o := range writes {
		o.ID = rec.ID()
		rec.Add(o)
	}
	return w
}

func writesOf(n int) ([]history.Op, []string) {
	var ops []history.Op
	var data []string
	for i := 1; i <= n; i++ {
		rec := fmt.Sprintf("r0-%d", i%3)
		v := int64((i + 2) / 3)
		at := time.Duration(i) // ns: before the readers start, on the run clock
		ops = append(ops, history.Op{Tenant: "acme", Kind: history.Write, Coll: RegColl, Rec: rec, Value: "x",
			Version: v, Outcome: history.OK, Invoke: at, Complete: at + 1, Status: 200})
		data = append(data, fmt.Sprintf(`{"collection":%q,"id":%q,"op":"upsert","version":%d}`, RegColl, rec, v))
	}
	return ops, data
}

// TestChangesReaderResumes runs one reader per region against fake feeds that end streams
// cleanly every few events and cut every third one mid-event: each reader starts from
// Last-Event-ID 0, resumes after the last whole event it recorded, records every event once,
// in order, and its op is ok, due when FinishChanges began, and accepted by the checker.
func TestChangesReaderResumes(t *testing.T) {
	writes, data := writesOf(20)
	feeds := map[string]*feed{}
	urls := map[string]string{}
	for _, r := range []string{"eu", "us"} {
		f := &feed{events: data, per: 3}
		srv := httptest.NewServer(f)
		t.Cleanup(srv.Close)
		feeds[r], urls[r] = f, srv.URL
	}
	w := fakeRun(t, urls, writes, Config{ChangesTenants: 1})
	ctx := context.Background()
	w.StartChanges(ctx)
	if len(w.readers) != 2 {
		t.Fatalf("%d readers, want one per region", len(w.readers))
	}
	begin := w.cfg.Clock.Now()
	st := w.FinishChanges(ctx, 10*time.Second)
	if st.Readers != 2 || st.CaughtUp != 2 || st.Events != 40 || st.CleanEnds < 2 {
		t.Fatalf("stats %+v", st)
	}
	var readers []history.Op
	for _, o := range w.cfg.Recorder.Ops() {
		if o.Kind == history.Changes {
			readers = append(readers, o)
		}
	}
	if len(readers) != 2 {
		t.Fatalf("%d Changes ops, want 2", len(readers))
	}
	for _, o := range readers {
		if o.Outcome != history.OK || o.From != 0 || o.Due < begin || o.Due > o.Complete || len(o.Events) != 20 {
			t.Errorf("reader op %s due %v, begin %v: %+v", o, o.Due, begin, o)
		}
		for i, e := range o.Events {
			if e.Seq != int64(i+1) {
				t.Fatalf("reader %s: event %d has seq %d", o.Region, i, e.Seq)
			}
		}
	}
	for r, f := range feeds {
		f.mu.Lock()
		asked := slices.Clone(f.asked)
		f.mu.Unlock()
		if len(asked) < 7 || asked[0] != "0" {
			t.Errorf("%s: Last-Event-IDs %v: want 0 first and a reconnect every 3 events", r, asked)
		}
		// Every resume is after the last whole event: never backwards, and a cut event
		// (its id already sent) is asked for again.
		for i := 1; i < len(asked); i++ {
			a, _ := strconv.Atoi(asked[i-1])
			b, _ := strconv.Atoi(asked[i])
			if b < a || b > a+3 {
				t.Errorf("%s: resumed after %d, then after %d: %v", r, a, b, asked)
			}
		}
	}
	h := history.History{Ops: w.cfg.Recorder.Ops()}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	if v := check.ChangeStreams(h); !v.OK() || v.Checked != 40 {
		t.Errorf("checker: %s", v)
	}
}

// TestChangesReaderGapIsCaught: a feed that never sends one sequence gives an ok op (it
// served) in which the checker finds the gap and the missing write; the reader waited for it
// until its patience ran out.
func TestChangesReaderGapIsCaught(t *testing.T) {
	writes, data := writesOf(8)
	srv := httptest.NewServer(&feed{events: data, per: 100, skip: 5})
	defer srv.Close()
	w := fakeRun(t, map[string]string{"eu": srv.URL}, writes, Config{ChangesTenants: 1})
	w.StartChanges(context.Background())
	start := time.Now()
	st := w.FinishChanges(context.Background(), 500*time.Millisecond)
	if st.CaughtUp != 0 || time.Since(start) < 500*time.Millisecond {
		t.Fatalf("caught up without seq 5: %+v after %v", st, time.Since(start))
	}
	h := history.History{Ops: w.cfg.Recorder.Ops()}
	v := check.ChangeStreams(h)
	kinds := map[string]int{}
	for _, x := range v.Violations {
		kinds[x.Kind]++
	}
	if kinds[check.ChangesGap] != 1 || kinds[check.ChangesMissing] != 1 {
		t.Errorf("want one gap and one missing write, got %s", v)
	}
}

// TestChangesUnavailable: a feed that is not there is recorded, not skipped: 503
// changes-unavailable (and no answer at all) make an unknown op, 404 a failed one, each with
// the status and problem of its last attempt; and a silent connection is dropped and made
// again after ChangesIdle.
func TestChangesUnavailable(t *testing.T) {
	var silent sync.WaitGroup
	connects := map[string]int{}
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		mu.Lock()
		connects[r.Host]++
		mu.Unlock()
		switch {
		case strings.HasPrefix(r.Host, "unavailable"):
			rw.Header().Set("Content-Type", "application/problem+json")
			rw.WriteHeader(http.StatusServiceUnavailable)
			_, _ = rw.Write([]byte(`{"type":"https://meridian.dev/problems/changes-unavailable","status":503}`))
		case strings.HasPrefix(r.Host, "silent"):
			silent.Add(1)
			defer silent.Done()
			rw.Header().Set("Content-Type", "text/event-stream")
			rw.WriteHeader(http.StatusOK)
			rw.(http.Flusher).Flush()
			<-r.Context().Done()
		default:
			http.NotFound(rw, r)
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	writes, _ := writesOf(2)
	w := fakeRun(t, map[string]string{"a": srv.URL, "b": srv.URL, "c": srv.URL, "d": "http://127.0.0.1:1"}, writes,
		Config{ChangesTenants: 1, ChangesIdle: 150 * time.Millisecond})
	// Route by Host: the same server answers three ways.
	tr := w.stream.Transport.(*http.Transport).Clone()
	tr.Proxy = nil
	w.stream.Transport = hostRewriter{tr, addr}
	w.cfg.Cluster.Regions["a"] = sim.RegionEndpoints{Router: "http://unavailable.test"}
	w.cfg.Cluster.Regions["b"] = sim.RegionEndpoints{Router: "http://notfound.test"}
	w.cfg.Cluster.Regions["c"] = sim.RegionEndpoints{Router: "http://silent.test"}
	w.StartChanges(context.Background())
	time.Sleep(600 * time.Millisecond)
	w.FinishChanges(context.Background(), 10*time.Millisecond)
	silent.Wait()
	got := map[string]history.Op{}
	for _, o := range w.cfg.Recorder.Ops() {
		if o.Kind == history.Changes {
			got[o.Region] = o
		}
	}
	if o := got["a"]; o.Outcome != history.Unknown || o.Status != 503 || o.Problem != "changes-unavailable" {
		t.Errorf("503 changes-unavailable recorded as %s (%+v)", o, o)
	}
	if o := got["b"]; o.Outcome != history.Fail || o.Status != 404 {
		t.Errorf("404 recorded as %s", o)
	}
	// A silent 200 stream served: ok (its missing writes are the checker's finding).
	if o := got["c"]; o.Outcome != history.OK {
		t.Errorf("silent stream recorded as %s", o)
	}
	if o := got["d"]; o.Outcome != history.Unknown || o.Status != 0 || o.Error == "" {
		t.Errorf("no answer recorded as %s (%q)", o, o.Error)
	}
	mu.Lock()
	n := connects["silent.test"]
	mu.Unlock()
	if n < 2 {
		t.Errorf("a silent connection was not made again after ChangesIdle: %d connects (%v)", n, connects)
	}
	if v := check.ChangeStreams(history.History{Ops: w.cfg.Recorder.Ops()}); v.OK() {
		t.Errorf("the checker accepted a served stream that missed every write: %s", v)
	}
}

// hostRewriter sends every request to addr, keeping its Host.
type hostRewriter struct {
	tr   *http.Transport
	addr string
}

func (h hostRewriter) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.URL.Host, ".test") {
		r = r.Clone(r.Context())
		r.Host = r.URL.Host
		r.URL.Host = h.addr
	}
	return h.tr.RoundTrip(r)
}
