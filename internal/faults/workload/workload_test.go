package workload

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/faults/check"
	"github.com/meridian-dev/meridian/internal/faults/history"
	"github.com/meridian-dev/meridian/internal/sim"
)

func testWorkload(t *testing.T) *Workload {
	t.Helper()
	rec, err := NewRecorder(nil, history.Header{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{Cluster: &sim.ClusterFile{}, RunID: "t", Recorder: rec, Clock: NewClock()})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestOutcomeOfAnswers checks how an answer, or its absence, becomes an outcome: a
// connection never made is Fail for a PUT (nothing was sent) but Unknown for what net/http
// may retry, one cut after the request was sent is Unknown, and answers go through history.Classify with the problem type's slug.
func TestOutcomeOfAnswers(t *testing.T) {
	w := testWorkload(t)
	ctx := context.Background()

	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()

	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/cut":
			// The request arrived; the connection dies before an answer.
			c, _, _ := rw.(http.Hijacker).Hijack()
			c.Close()
		case "/fenced":
			rw.Header().Set("Content-Type", "application/problem+json")
			rw.WriteHeader(http.StatusServiceUnavailable)
			_, _ = rw.Write([]byte(`{"type":"https://meridian.dev/problems/tenant-fenced","status":503}`))
		case "/unavailable":
			rw.Header().Set("Content-Type", "application/problem+json")
			rw.WriteHeader(http.StatusServiceUnavailable)
			_, _ = rw.Write([]byte(`{"type":"https://meridian.dev/problems/service-unavailable","status":503}`))
		case "/conflict":
			rw.WriteHeader(http.StatusPreconditionFailed)
		default:
			_, _ = rw.Write([]byte(`{"id":"a","version":3,"data":{"v":"x"}}`))
		}
	}))
	defer srv.Close()

	for _, c := range []struct {
		method  string
		hdr     map[string]string
		url     string
		want    history.Outcome
		status  int
		problem string
	}{
		{http.MethodPut, nil, closed + "/x", history.Fail, 0, ""},
		// net/http may have sent it on a connection that broke before this dial.
		{http.MethodPost, map[string]string{"Idempotency-Key": "k"}, closed + "/x", history.Unknown, 0, ""},
		{http.MethodGet, nil, closed + "/x", history.Unknown, 0, ""},
		{http.MethodPut, nil, srv.URL + "/cut", history.Unknown, 0, ""},
		{http.MethodPut, nil, srv.URL + "/fenced", history.Fail, 503, "tenant-fenced"},
		{http.MethodPut, nil, srv.URL + "/unavailable", history.Unknown, 503, "service-unavailable"},
		{http.MethodPut, nil, srv.URL + "/conflict", history.Fail, 412, ""},
		{http.MethodPut, nil, srv.URL + "/ok", history.OK, 200, ""},
	} {
		a := w.do(ctx, c.method, c.url, "tok", []byte(`{}`), c.hdr)
		var o history.Op
		w.finish(&o, a)
		if o.Outcome != c.want || o.Status != c.status || o.Problem != c.problem {
			t.Errorf("%s: outcome %s status %d problem %q (err %v), want %s %d %q", c.url, o.Outcome, o.Status, o.Problem, a.err, c.want, c.status, c.problem)
		}
		if o.Outcome != history.OK && o.Status == 0 && o.Error == "" {
			t.Errorf("%s: no answer and no error text", c.url)
		}
	}
}

// TestDueAndCachedReads: an acknowledged PUT or create is due InvalidationBound after its
// acknowledgement; a plain read answered `X-Read-Source: cache` is a CachedRead, any other a
// PlainRead, and a strong read stays strong whatever it says. A cache that answers the old
// version after the write's invalidation was due is then caught by check.CachedReads, and
// one that answers it before is not.
func TestDueAndCachedReads(t *testing.T) {
	var mu sync.Mutex
	version, cached, useCache := int64(2), int64(2), true
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.Method == http.MethodPut:
			version++
			_, _ = fmt.Fprintf(rw, `{"id":"k","version":%d,"data":{"v":"x"}}`, version)
		case r.Method == http.MethodPost:
			rw.WriteHeader(http.StatusCreated)
			_, _ = rw.Write([]byte(`{"id":"n1","version":1,"data":{"v":"e"}}`))
		case !useCache || r.Header.Get("Prefer") != "":
			rw.Header().Set("X-Read-Source", "primary")
			_, _ = fmt.Fprintf(rw, `{"id":"k","version":%d,"data":{"v":"x"}}`, version)
		default:
			rw.Header().Set("X-Read-Source", "cache")
			_, _ = fmt.Fprintf(rw, `{"id":"k","version":%d,"data":{"v":"x"}}`, cached)
		}
	}))
	defer srv.Close()
	rec, _ := NewRecorder(nil, history.Header{})
	bound := 50 * time.Millisecond
	w, err := New(Config{Cluster: &sim.ClusterFile{Regions: map[string]sim.RegionEndpoints{"eu": {Router: srv.URL}}},
		RunID: "t", Recorder: rec, Clock: NewClock(), InvalidationBound: bound})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tn := Tenant{ID: "acme", Home: "eu", token: "tok"}

	wr, _ := w.write(ctx, 1, "eu", tn, "k", "x", 0)
	if wr.Outcome != history.OK || wr.Due != wr.Complete+bound {
		t.Fatalf("write %s: due %v, want completion %v + %v", wr, wr.Due, wr.Complete, bound)
	}
	cr := w.create(ctx, 1, "eu", tn, "e", nil)
	if cr.Outcome != history.OK || cr.Due != cr.Complete+bound {
		t.Fatalf("create %s: due %v, want completion %v + %v", cr, cr.Due, cr.Complete, bound)
	}
	// Before the invalidation is due, the old version from the cache is allowed.
	early := w.read(ctx, 1, "eu", tn, "k", history.PlainRead, nil)
	if early.Kind != history.CachedRead || early.Version != 2 {
		t.Fatalf("cache answer recorded as %s", early)
	}
	if s := w.read(ctx, 1, "eu", tn, "k", history.StrongRead, nil); s.Kind != history.StrongRead {
		t.Fatalf("strong read recorded as %s", s)
	}
	if v := check.CachedReads(history.History{Ops: rec.Ops()}); !v.OK() || v.Checked != 1 {
		t.Fatalf("a cached read before the due time was judged: %s", v)
	}
	time.Sleep(bound + 10*time.Millisecond)
	late := w.read(ctx, 1, "eu", tn, "k", history.PlainRead, nil)
	if late.Kind != history.CachedRead {
		t.Fatalf("cache answer recorded as %s", late)
	}
	v := check.CachedReads(history.History{Ops: rec.Ops()})
	if len(v.Violations) != 1 || v.Violations[0].Ops[1].ID != late.ID || v.Violations[0].Ops[0].ID != wr.ID {
		t.Fatalf("a cached read of v2 after v3's invalidation was due was not caught: %s", v)
	}
	// A read the database answered stays a plain read.
	mu.Lock()
	useCache = false
	mu.Unlock()
	if p := w.read(ctx, 1, "eu", tn, "k", history.PlainRead, nil); p.Kind != history.PlainRead || p.Version != 3 {
		t.Fatalf("a database answer recorded as %s", p)
	}
}
