//go:build unix

package router

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/meridian-dev/meridian/internal/jsonlog"
	"github.com/meridian-dev/meridian/internal/testenv"
)

// cannedRT answers every hop at once from memory, so BenchmarkProxyGET measures the router's
// own work on a proxied GET (auth, limits, map, admission, headers, metrics, log, the copy)
// without the loopback I/O of the hop.
type cannedRT struct{}

const cannedBody = `{"id":"01a208d0-b397-72eb-9637-c413048a3435","collection":"c","data":{"n":1},"version":1}`

func (cannedRT) RoundTrip(r *http.Request) (*http.Response, error) {
	h := http.Header{"Content-Type": {"application/json"}, "X-Served-Region": {"us-east"},
		"X-Read-Source": {"replica"}, "Etag": {`"1"`}, "Content-Length": {"86"}}
	return &http.Response{StatusCode: 200, Header: h, Body: io.NopCloser(strings.NewReader(cannedBody)),
		ContentLength: int64(len(cannedBody)), Request: r}, nil
}

// BenchmarkProxyGET: go test -run '^$' -bench ProxyGET -benchmem ./internal/router/
func BenchmarkProxyGET(b *testing.B) {
	rg := newRig(b, func(c *Config) {
		c.Transport = cannedRT{}
		c.Limiter = &fakeLimiter{limit: 1 << 40}
		// The request log line, formatted as cmd/router's logger does (daemon.Main's
		// jsonlog handler with "component", then run's "region").
		c.Logger = slog.New(jsonlog.NewHandler(io.Discard, nil)).With("component", "router").With("region", "us-east")
	})
	h := rg.srv.Handler()
	b.ReportAllocs()
	before := testenv.ProcessCPU()
	for b.Loop() {
		req := httptest.NewRequest("GET", "/v1/collections/c/records/x", nil)
		req.Header.Set("Authorization", "Bearer "+tokAcme)
		req.Header.Set("Accept", "application/json")
		req.Header.Set("X-Request-Id", "bench-1")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
	// The process's CPU time per request: on a shared machine ns/op is wall time and counts
	// the neighbours' load; this counts only this process's (GC included).
	b.ReportMetric(float64((testenv.ProcessCPU()-before).Microseconds())/float64(b.N), "cpu-µs/op")
}
