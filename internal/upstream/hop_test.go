package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// countingServer is an httptest server that counts the connections it accepted.
func countingServer(t *testing.T, h http.Handler) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func get(t *testing.T, tr http.RoundTripper, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestHopReusesOneConnectionSequentially(t *testing.T) {
	srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			fmt.Fprintf(w, "hello %s %s", r.URL.Path, r.Host)
		}
	}))
	tr := &HopTransport{}
	for i := range 50 {
		code, body := get(t, tr, fmt.Sprintf("%s/r%d", srv.URL, i))
		if code != 200 || body != fmt.Sprintf("hello /r%d %s", i, srv.Listener.Addr()) {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
		if code, _ := get(t, tr, srv.URL+"/empty"); code != 204 {
			t.Fatalf("204: %d", code)
		}
		req, _ := http.NewRequest("HEAD", srv.URL+"/h", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("HEAD: %v %v", resp, err)
		}
		resp.Body.Close() // closing an empty body keeps the connection
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 150 sequential requests, want 1", n)
	}
}

func TestHopConcurrentRequestsAndBodies(t *testing.T) {
	srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Got", r.Header.Get("X-Send"))
		fmt.Fprintf(w, "%s:%s", r.Method, b)
	}))
	tr := &HopTransport{}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 25 {
				want := fmt.Sprintf("g%d-i%d-%s", g, i, strings.Repeat("x", i*100))
				req, _ := http.NewRequest("POST", srv.URL+"/echo", strings.NewReader(want))
				req.Header.Set("X-Send", want[:6])
				resp, err := tr.RoundTrip(req)
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != "POST:"+want || resp.Header.Get("X-Got") != want[:6] {
					t.Errorf("got %.40q, header %q", b, resp.Header.Get("X-Got"))
					return
				}
			}
		})
	}
	wg.Wait()
	if n := conns.Load(); n > 16 {
		t.Fatalf("%d connections for 16 concurrent clients, want ≤ 16", n)
	}
}

// flakyServer answers the first request of every connection and, on a connection's second
// request, reads it and closes the connection without answering: a keep-alive connection
// closed under the client at the worst moment.
type flakyServer struct {
	ln       net.Listener
	requests atomic.Int64
	methods  sync.Map // method -> *atomic.Int64
}

func newFlakyServer(t *testing.T) *flakyServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyServer{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return f
}

func (f *flakyServer) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for n := 0; ; n++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		f.requests.Add(1)
		v, _ := f.methods.LoadOrStore(req.Method, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
		if n == 1 {
			return // read, never answered
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

func (f *flakyServer) url() string { return "http://" + f.ln.Addr().String() }

func TestHopReplaysOnlySafeRequestsOnAClosedConnection(t *testing.T) {
	cases := []struct {
		name     string
		method   string
		key      bool
		replayed bool
	}{
		{"GET", "GET", false, true},
		{"POST without key", "POST", false, false},
		{"POST with Idempotency-Key", "POST", true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFlakyServer(t)
			tr := &HopTransport{}
			send := func() (*http.Response, error) {
				req, _ := http.NewRequest(c.method, f.url()+"/x", strings.NewReader("body"))
				req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("body")), nil }
				if c.key {
					req.Header.Set("Idempotency-Key", "k1")
				}
				return tr.RoundTrip(req)
			}
			resp, err := send() // new connection: answered
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			resp, err = send() // reused: the server reads it and hangs up
			if c.replayed {
				if err != nil {
					t.Fatalf("safe request not replayed: %v", err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != "ok" || f.requests.Load() != 3 {
					t.Fatalf("body %q, server saw %d requests, want 3", b, f.requests.Load())
				}
				return
			}
			if err == nil {
				resp.Body.Close()
				t.Fatal("a POST without Idempotency-Key was replayed after the upstream may have run it")
			}
			if got := f.requests.Load(); got != 2 {
				t.Fatalf("server saw %d requests, want 2 (no replay)", got)
			}
		})
	}
}

func TestHopSkipsIdleConnectionsThePeerClosed(t *testing.T) {
	srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	tr := &HopTransport{}
	get(t, tr, srv.URL)
	srv.CloseClientConnections() // the idle connection gets a FIN
	testenv.WaitFor(t, 5*time.Second, func() error {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		if peerOpen(tr.idle[srv.Listener.Addr().String()][0].conn) {
			return errors.New("idle connection still looks open")
		}
		return nil
	})
	// A POST without Idempotency-Key is never replayed, so it succeeds only if the closed
	// connection was skipped before sending.
	req, _ := http.NewRequest("POST", srv.URL, strings.NewReader("x"))
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("POST after the peer closed the idle connection: %v", err)
	}
	resp.Body.Close()
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2 (the closed one skipped)", n)
	}
}

func TestHopResponseHeaderTimeoutIsNotReplayed(t *testing.T) {
	var slow atomic.Int64
	srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			slow.Add(1)
			<-r.Context().Done() // answers never; ends when the client closes the connection
			return
		}
		io.WriteString(w, "ok")
	}))
	tr := &HopTransport{ResponseHeaderTimeout: 50 * time.Millisecond}
	get(t, tr, srv.URL+"/fast") // the slow request goes out on a reused connection
	req, _ := http.NewRequest("GET", srv.URL+"/slow", nil)
	_, err := tr.RoundTrip(req)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("err %v, want a timeout", err)
	}
	// A replay would have gone out on a new connection before RoundTrip returned, and the
	// server accepts (and counts) connections in the order they were made: once the next
	// request, on a new connection, is answered, a replay's connection has been counted.
	if code, _ := get(t, tr, srv.URL+"/fast"); code != 200 {
		t.Fatalf("after a timeout: %d", code)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2: the timed-out request was sent again", n)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if slow.Load() == 0 {
			return errors.New("the slow request has not reached the handler")
		}
		return nil
	})
	if n := slow.Load(); n != 1 {
		t.Fatalf("slow request sent %d times, want 1", n)
	}
}

func TestHopStreamsAndHonoursCancel(t *testing.T) {
	next := make(chan struct{})
	srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "data: two\n\n")
	}))
	tr := &HopTransport{}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/events", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := resp.Body.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "one") {
		t.Fatalf("first event before the second was written: %q %v", buf[:n], err)
	}
	readErr := make(chan error, 1)
	go func() { _, err := io.ReadAll(resp.Body); readErr <- err }()
	cancel()
	select {
	case err := <-readErr:
		if err == nil {
			t.Fatal("read after cancel ended without error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancel did not unblock the body read")
	}
	resp.Body.Close()
	close(next)
	get(t, tr, srv.URL+"/plain")
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2: a cancelled exchange's connection must not be reused", n)
	}
}

func TestHopDoesNotReuseAfterEarlyCloseOrConnectionClose(t *testing.T) {
	srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		io.WriteString(w, strings.Repeat("y", 100<<10))
	}))
	tr := &HopTransport{}
	req, _ := http.NewRequest("GET", srv.URL+"/big", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Read(make([]byte, 10))
	resp.Body.Close() // 100 KiB unread
	get(t, tr, srv.URL+"/close")
	get(t, tr, srv.URL+"/big")
	if n := conns.Load(); n != 3 {
		t.Fatalf("%d connections, want 3", n)
	}
}

func TestHopErrors(t *testing.T) {
	tr := &HopTransport{}
	req, _ := http.NewRequest("GET", "https://127.0.0.1:1/", nil)
	if _, err := tr.RoundTrip(req); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("https: %v", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	req, _ = http.NewRequest("GET", "http://"+addr+"/", nil)
	_, err := tr.RoundTrip(req)
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" {
		t.Fatalf("closed port: %v, want a dial *net.OpError (the router retries those for any method)", err)
	}
}

// TestHopUnsendable: a request the transport cannot send as it is fails with ErrUnsendable and
// nothing of it reaches the upstream.
func TestHopUnsendable(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer srv.Close()
	tr := &HopTransport{}
	for name, mod := range map[string]func(*http.Request){
		"expect":       func(r *http.Request) { r.Header.Set("Expect", "100-continue") },
		"control byte": func(r *http.Request) { r.URL.Opaque = "/a\x01" },
	} {
		req, _ := http.NewRequest("POST", srv.URL+"/x", strings.NewReader("body"))
		mod(req)
		if _, err := tr.RoundTrip(req); !errors.Is(err, ErrUnsendable) {
			t.Errorf("%s: err %v, want ErrUnsendable", name, err)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the upstream saw %d requests", n)
	}
}
