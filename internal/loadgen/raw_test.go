package loadgen

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRawTransportAnswersAsNetHTTP: the same requests through RawTransport and net/http's
// transport get the same answers (status, fields, body), over one kept-alive connection.
func TestRawTransportAnswersAsNetHTTP(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Read-Source", "cache")
		w.Header().Set("X-Echo", r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("X-A")+" "+string(body))
		switch r.URL.Path {
		case "/chunked":
			w.Write([]byte(strings.Repeat("c", 100)))
			w.(http.Flusher).Flush()
			w.Write([]byte("end"))
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Write([]byte("ok " + r.Method))
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	raw := NewRawTransport(1)
	std := NewTransport(1)
	reqs := []func() *http.Request{
		func() *http.Request {
			r, _ := http.NewRequest("GET", srv.URL+"/a?b=c", nil)
			r.Header.Set("X-A", "1")
			return r
		},
		func() *http.Request {
			r, _ := http.NewRequest("POST", srv.URL+"/p", strings.NewReader(`{"x":1}`))
			return r
		},
		func() *http.Request { r, _ := http.NewRequest("GET", srv.URL+"/chunked", nil); return r },
		func() *http.Request { r, _ := http.NewRequest("HEAD", srv.URL+"/a", nil); return r },
		func() *http.Request { r, _ := http.NewRequest("GET", srv.URL+"/empty", nil); return r },
	}
	answer := func(rt http.RoundTripper, r *http.Request) string {
		t.Helper()
		resp, err := rt.RoundTrip(r)
		if err != nil {
			t.Fatalf("%s %s: %v", r.Method, r.URL, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.Status + "|" + resp.Header.Get("X-Read-Source") + "|" + resp.Header.Get("X-Echo") + "|" +
			resp.Header.Get("Content-Length") + "|" + string(b)
	}
	for round := range 3 {
		for _, mk := range reqs {
			want, got := answer(std, mk()), answer(raw, mk())
			if want != got {
				t.Fatalf("round %d: net/http %q, raw %q", round, want, got)
			}
		}
	}
	// net/http's transport took one connection; the raw one kept one across 15 requests.
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections for both transports, want one each", n)
	}
}

// TestRawTransportRetriesAClosedIdleConnection: a kept-alive connection the server closed is
// noticed on the next request, which goes out again on a new connection; a request whose
// context ends gets the context's error and its connection is not kept.
func TestRawTransportRetriesAClosedIdleConnection(t *testing.T) {
	var slow atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slow.Load() {
			time.Sleep(300 * time.Millisecond)
		}
		w.Write([]byte("ok"))
	}))
	defer srv.Close()
	raw := NewRawTransport(1)
	get := func(ctx context.Context) (string, error) {
		r, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/", nil)
		resp, err := raw.RoundTrip(r)
		if err != nil {
			return "", err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return string(b), nil
	}
	if b, err := get(context.Background()); err != nil || b != "ok" {
		t.Fatalf("%q %v", b, err)
	}
	srv.CloseClientConnections() // the server drops the kept-alive connection
	time.Sleep(50 * time.Millisecond)
	if b, err := get(context.Background()); err != nil || b != "ok" {
		t.Fatalf("after the server closed the idle connection: %q %v", b, err)
	}
	slow.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := get(ctx); err == nil {
		t.Fatal("a request whose context ended: no error")
	}
	raw.mu.Lock()
	idle := 0
	for _, cs := range raw.idle {
		idle += len(cs)
	}
	raw.mu.Unlock()
	if idle != 0 {
		t.Fatalf("%d idle connections after a cut request, want 0", idle)
	}
	slow.Store(false)
	if b, err := get(context.Background()); err != nil || b != "ok" {
		t.Fatalf("after a cut request: %q %v", b, err)
	}
}
