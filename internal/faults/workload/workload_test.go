package workload

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

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
