package daemon

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/envflag"
)

// serveLimited runs h under NewHTTPServer(h, limits) on a loopback port until the test ends.
func serveLimited(t *testing.T, h http.Handler, limits HTTPLimits) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeHTTP(ctx, NewHTTPServer(h, limits), ln, 0) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

// dial opens a connection whose every read and write must finish within 10 s, so a test that
// would hang fails instead.
func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// TestBodyTimeout: a body that stops short of its Content-Length fails the handler's read with
// os.ErrDeadlineExceeded, the handler's answer reaches the client and the connection closes.
func TestBodyTimeout(t *testing.T) {
	readErr := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		readErr <- err
		w.WriteHeader(http.StatusRequestTimeout)
	})
	addr := serveLimited(t, h, HTTPLimits{BodyTimeout: 100 * time.Millisecond})
	for _, tc := range []struct{ name, head string }{
		{"content-length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"},
		{"chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"},
		{"expect-continue", "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := dial(t, addr)
			if _, err := io.WriteString(c, tc.head); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			for err == nil && resp.StatusCode == http.StatusContinue {
				resp, err = http.ReadResponse(br, nil)
			}
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			if resp.StatusCode != http.StatusRequestTimeout {
				t.Fatalf("status %d, want 408", resp.StatusCode)
			}
			if err := <-readErr; !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("handler's body read = %v, want os.ErrDeadlineExceeded", err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			if _, err := br.ReadByte(); err != io.EOF {
				t.Fatalf("connection still open after a timed-out body (read: %v)", err)
			}
		})
	}
}

// TestBodyDeadlineClearedAfterBody: once the body has been read, the body deadline no longer
// applies — a handler that takes longer than BodyTimeout afterwards keeps its context (the
// server's background read must not fail at the deadline) and its connection is reused.
func TestBodyDeadlineClearedAfterBody(t *testing.T) {
	const timeout = 50 * time.Millisecond
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusRequestTimeout)
			return
		}
		select {
		case <-r.Context().Done():
			w.WriteHeader(http.StatusInternalServerError) // the deadline cut the request
			return
		case <-time.After(4 * timeout): // work that outlasts the body deadline
		}
		_, _ = w.Write(b)
	})
	addr := serveLimited(t, h, HTTPLimits{BodyTimeout: timeout})
	c, br := dial(t, addr)
	for i := range 2 {
		if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d on one connection: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || string(b) != "ok" {
			t.Fatalf("request %d: %d %q, want 200 \"ok\"", i, resp.StatusCode, b)
		}
	}
}

// TestUnreadBodyBounded: a handler that answers without reading a stalled body (a 401 before
// the body) still frees the connection within BodyTimeout.
func TestUnreadBodyBounded(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusUnauthorized) })
	addr := serveLimited(t, h, HTTPLimits{BodyTimeout: 100 * time.Millisecond})
	c, br := dial(t, addr)
	if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("answer %v, %v; want 401", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("connection still open (read: %v)", err)
	}
}

// TestHeaderLimits: headers above MaxHeaderBytes get 431.
func TestHeaderLimits(t *testing.T) {
	addr := serveLimited(t, http.NotFoundHandler(), HTTPLimits{MaxHeaderBytes: 1 << 10})
	c, br := dial(t, addr)
	big := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 8<<10) + "\r\n\r\n"
	if _, err := io.WriteString(c, big); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("answer %v, %v; want 431", resp, err)
	}
}

func TestHTTPLimitsDefaults(t *testing.T) {
	srv := NewHTTPServer(http.NotFoundHandler(), HTTPLimits{})
	if srv.ReadHeaderTimeout != 5*time.Second || srv.IdleTimeout != 2*time.Minute || srv.MaxHeaderBytes != 64<<10 {
		t.Fatalf("defaults: %v %v %v", srv.ReadHeaderTimeout, srv.IdleTimeout, srv.MaxHeaderBytes)
	}
	srv = NewHTTPServer(http.NotFoundHandler(), HTTPLimits{ReadHeaderTimeout: -1, IdleTimeout: time.Second})
	if srv.ReadHeaderTimeout != 0 || srv.IdleTimeout != time.Second {
		t.Fatalf("negative = no limit, set = kept: %v %v", srv.ReadHeaderTimeout, srv.IdleTimeout)
	}
}

// TestHTTPLimitFlags: the HTTP server's limits come from flags or MERIDIAN_* variables and
// default to the documented values.
func TestHTTPLimitFlags(t *testing.T) {
	parse := func(vars map[string]string, args ...string) HTTPLimits {
		t.Helper()
		env := envflag.New(func(k string) (string, bool) { v, ok := vars[k]; return v, ok })
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		var l HTTPLimits
		HTTPLimitFlags(fs, env, &l)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		if err := env.Err(); err != nil {
			t.Fatal(err)
		}
		return l
	}
	if got, want := parse(nil), (HTTPLimits{ReadHeaderTimeout: 5 * time.Second, BodyTimeout: 5 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}); got != want {
		t.Errorf("defaults %+v, want %+v", got, want)
	}
	got := parse(map[string]string{"MERIDIAN_BODY_TIMEOUT": "300ms", "MERIDIAN_MAX_HEADER_BYTES": "8192"},
		"-idle-timeout", "30s", "-read-header-timeout", "2s")
	if want := (HTTPLimits{ReadHeaderTimeout: 2 * time.Second, BodyTimeout: 300 * time.Millisecond,
		IdleTimeout: 30 * time.Second, MaxHeaderBytes: 8192}); got != want {
		t.Errorf("set %+v, want %+v", got, want)
	}
}
