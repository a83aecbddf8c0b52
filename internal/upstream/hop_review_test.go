package upstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// Review tests for HopTransport (hop.go): protocol corners, cancellation, and pool safety.

// rawServer accepts connections on 127.0.0.1 and runs serve on each; conn numbers count from 1.
type rawServer struct {
	ln    net.Listener
	conns atomic.Int64
}

func newRawServer(t testing.TB, serve func(c net.Conn, br *bufio.Reader, conn int64)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			n := s.conns.Add(1)
			wg.Go(func() {
				defer c.Close()
				serve(c, bufio.NewReader(c), n)
			})
		}
	})
	return s
}

func (s *rawServer) url() string { return "http://" + s.ln.Addr().String() }

// roundTrip sends a GET (or the given request) and returns the status, body and trailer.
func roundTrip(t *testing.T, tr http.RoundTripper, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s %s: body: %v", req.Method, req.URL, err)
	}
	return resp, string(b)
}

func newReq(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestHopReviewBodilessAndChunkedAnswersKeepTheConnection: chunked bodies with trailers, HEAD
// with a Content-Length, 304, 204, a 103 Early Hints before the answer, and a request body of
// unknown length (sent chunked) all leave the connection reusable, with the right bodies,
// lengths and trailers.
func TestHopReviewBodilessAndChunkedAnswersKeepTheConnection(t *testing.T) {
	srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			for i := range 5 {
				fmt.Fprintf(w, "part%d;", i)
				w.(http.Flusher).Flush() // no Content-Length: chunked
			}
			w.Header().Set("X-Sum", "five")
		case "/head":
			w.Header().Set("Content-Length", "12345")
		case "/304":
			w.Header().Set("ETag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/hints":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Set("X-Final", "yes")
			io.WriteString(w, "after hints")
		case "/upload":
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			fmt.Fprintf(w, "%d %v %d", r.ContentLength, r.TransferEncoding, len(b))
		}
	}))
	tr := &HopTransport{}
	for i := range 3 {
		resp, body := roundTrip(t, tr, newReq(t, "GET", srv.URL+"/chunked", nil))
		if body != "part0;part1;part2;part3;part4;" || resp.Trailer.Get("X-Sum") != "five" || resp.ContentLength != -1 {
			t.Fatalf("chunked: %q trailer %v length %d", body, resp.Trailer, resp.ContentLength)
		}

		resp, body = roundTrip(t, tr, newReq(t, "HEAD", srv.URL+"/head", nil))
		if resp.StatusCode != 200 || body != "" || resp.ContentLength != 12345 {
			t.Fatalf("HEAD: %d %q length %d", resp.StatusCode, body, resp.ContentLength)
		}

		req := newReq(t, "GET", srv.URL+"/304", nil)
		req.Header.Set("If-None-Match", `"v1"`)
		resp, body = roundTrip(t, tr, req)
		if resp.StatusCode != 304 || body != "" || resp.Header.Get("ETag") != `"v1"` {
			t.Fatalf("304: %d %q %v", resp.StatusCode, body, resp.Header)
		}

		// A 204 closed without reading.
		resp, err := tr.RoundTrip(newReq(t, "DELETE", srv.URL+"/204", nil))
		if err != nil || resp.StatusCode != 204 {
			t.Fatalf("204: %v %v", resp, err)
		}
		resp.Body.Close()

		resp, body = roundTrip(t, tr, newReq(t, "GET", srv.URL+"/hints", nil))
		if resp.StatusCode != 200 || body != "after hints" || resp.Header.Get("X-Final") != "yes" {
			t.Fatalf("after 103: %d %q %v", resp.StatusCode, body, resp.Header)
		}

		// Unknown length: io.MultiReader hides the size from NewRequest.
		payload := strings.Repeat("z", 40<<10+i)
		req = newReq(t, "POST", srv.URL+"/upload", io.MultiReader(strings.NewReader(payload)))
		req.ContentLength = -1
		_, body = roundTrip(t, tr, req)
		if want := fmt.Sprintf("-1 [chunked] %d", len(payload)); body != want {
			t.Fatalf("upload of unknown length: %q, want %q", body, want)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 18 sequential exchanges, want 1", n)
	}
}

// TestHopReviewHTTP10AndCloseDelimitedBodies: an HTTP/1.0 answer without keep-alive, and an
// HTTP/1.1 body delimited by the connection's end, are read whole and never reused.
func TestHopReviewHTTP10AndCloseDelimitedBodies(t *testing.T) {
	srv := newRawServer(t, func(c net.Conn, br *bufio.Reader, conn int64) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		switch req.URL.Path {
		case "/10":
			body := fmt.Sprintf("conn %d", conn)
			fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		}
		// Stay open a moment, as a lazy server would: the client must not wait for more.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = br.ReadByte()
	})
	tr := &HopTransport{}
	for i := range 4 {
		resp, body := roundTrip(t, tr, newReq(t, "GET", srv.url()+"/10", nil))
		if resp.ProtoMajor != 1 || resp.ProtoMinor != 0 || body != "conn "+strconv.Itoa(i+1) {
			t.Fatalf("HTTP/1.0: %s %q", resp.Proto, body)
		}
		if !resp.Close {
			t.Fatalf("HTTP/1.0 without keep-alive not marked Close")
		}
	}
	if n := srv.conns.Load(); n != 4 {
		t.Fatalf("%d connections for 4 HTTP/1.0 answers, want 4", n)
	}
	srv2 := newRawServer(t, func(c net.Conn, br *bufio.Reader, conn int64) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\n\r\nuntil close %d", conn)
	})
	for i := range 3 {
		_, body := roundTrip(t, tr, newReq(t, "GET", srv2.url()+"/eof", nil))
		if body != "until close "+strconv.Itoa(i+1) {
			t.Fatalf("close-delimited body %d: %q", i, body)
		}
	}
	if n := srv2.conns.Load(); n != 3 {
		t.Fatalf("%d connections for 3 close-delimited answers, want 3", n)
	}
}

// TestHopReviewLeftoverBytesRetireTheConnection: a server that writes more than its
// Content-Length (right away, or later while the connection idles) has its connection
// retired: the next request gets a clean new connection and the right answer.
func TestHopReviewLeftoverBytesRetireTheConnection(t *testing.T) {
	for _, c := range []struct {
		name  string
		later bool
	}{{"in the same write", false}, {"while idle", true}} {
		t.Run(c.name, func(t *testing.T) {
			wrote := make(chan struct{}, 16)
			srv := newRawServer(t, func(cn net.Conn, br *bufio.Reader, conn int64) {
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					body := fmt.Sprintf("c%d", conn)
					junk := "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\njunk"
					if c.later {
						fmt.Fprintf(cn, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
						time.Sleep(20 * time.Millisecond)
						io.WriteString(cn, junk)
					} else {
						fmt.Fprintf(cn, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s%s", len(body), body, junk)
					}
					wrote <- struct{}{}
				}
			})
			tr := &HopTransport{}
			for i := range 3 {
				_, body := roundTrip(t, tr, newReq(t, "GET", srv.url()+"/", nil))
				if want := "c" + strconv.Itoa(i+1); body != want {
					t.Fatalf("request %d answered %q, want %q (a stale answer from a reused connection?)", i, body, want)
				}
				<-wrote // the junk is on the wire before the next request
				if c.later {
					testenv.WaitFor(t, 5*time.Second, func() error {
						tr.mu.Lock()
						defer tr.mu.Unlock()
						if l := tr.idle[srv.ln.Addr().String()]; len(l) != 1 || peerOpen(l[0].conn) {
							return errors.New("the junk has not reached the idle connection yet")
						}
						return nil
					})
				}
			}
			if n := srv.conns.Load(); n != 3 {
				t.Fatalf("%d connections, want 3", n)
			}
		})
	}
}

// TestHopReviewDeadlineDuringRequestWrite: a server that never reads leaves the client blocked
// writing a large body; the request's deadline must end the write with the context's error
// and the connection must not be pooled.
func TestHopReviewDeadlineDuringRequestWrite(t *testing.T) {
	release := make(chan struct{})
	srv := newRawServer(t, func(c net.Conn, br *bufio.Reader, conn int64) {
		<-release // read nothing until the test ends
	})
	t.Cleanup(func() { close(release) }) // runs before the server's cleanup
	tr := &HopTransport{}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	body := bytes.NewReader(make([]byte, 64<<20)) // far beyond any loopback socket buffer
	req, _ := http.NewRequestWithContext(ctx, "PUT", srv.url()+"/big", body)
	done := make(chan error, 1)
	go func() {
		resp, err := tr.RoundTrip(req)
		if resp != nil {
			resp.Body.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err %v, want context.DeadlineExceeded", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the deadline did not interrupt the request write")
	}
	tr.mu.Lock()
	n := len(tr.idle[srv.ln.Addr().String()])
	tr.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d idle connections after an interrupted write, want 0", n)
	}
}

// TestHopReviewConcurrentReadAndClose: Close racing a Read of the same body (as a proxy does
// when the client goes away) neither races nor pools a connection mid-body; every later answer
// is the right one.
func TestHopReviewConcurrentReadAndClose(t *testing.T) {
	srv, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		io.WriteString(w, r.URL.Query().Get("id")+":")
		io.WriteString(w, strings.Repeat("b", n))
	}))
	tr := &HopTransport{}
	for i := range 60 {
		id := strconv.Itoa(i)
		resp, err := tr.RoundTrip(newReq(t, "GET", fmt.Sprintf("%s/?id=%s&n=%d", srv.URL, id, (i%6)*20000), nil))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() { _, _ = io.Copy(io.Discard, resp.Body) })
		wg.Go(func() { resp.Body.Close() })
		wg.Wait()
		resp.Body.Close() // a second Close is harmless
		// The next exchange, possibly on the pooled connection, must see its own answer.
		_, body := roundTrip(t, tr, newReq(t, "GET", srv.URL+"/?id=check"+id+"&n=3", nil))
		if body != "check"+id+":bbb" {
			t.Fatalf("after read/close race %d: %q", i, body)
		}
	}
}

// TestHopReviewManyGoroutinesWithCloseIdleAndEarlyCloses: 12 goroutines share a transport while
// another keeps calling CloseIdleConnections and some bodies are abandoned half read. Every
// answer must be the one for its own request (an idle connection handed to two requests, or
// one reused with a body unread, would mix them up), and with MaxIdlePerHost 3 the pool stays
// bounded.
func TestHopReviewManyGoroutinesWithCloseIdleAndEarlyCloses(t *testing.T) {
	srv, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		n, _ := strconv.Atoi(r.URL.Query().Get("pad"))
		fmt.Fprintf(w, "%s|%s|%s", r.URL.Query().Get("id"), b, strings.Repeat(".", n))
	}))
	tr := &HopTransport{MaxIdlePerHost: 3}
	stop := make(chan struct{})
	var closer sync.WaitGroup
	closer.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				tr.CloseIdleConnections()
			}
		}
	})
	var wg sync.WaitGroup
	for g := range 12 {
		wg.Go(func() {
			for i := range 40 {
				id := fmt.Sprintf("g%di%d", g, i)
				pad := (g * i % 5) * 9000
				method, body := "GET", io.Reader(nil)
				if i%3 == 0 {
					method, body = "PUT", strings.NewReader("payload-"+id)
				}
				req, _ := http.NewRequest(method, fmt.Sprintf("%s/?id=%s&pad=%d", srv.URL, id, pad), body)
				resp, err := tr.RoundTrip(req)
				if err != nil {
					t.Errorf("%s: %v", id, err)
					return
				}
				if i%4 == 1 { // abandon after a few bytes
					buf := make([]byte, len(id)+1)
					if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != id+"|" {
						t.Errorf("%s: prefix %q %v", id, buf, err)
					}
					resp.Body.Close()
					continue
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				want := id + "|"
				if method == "PUT" {
					want += "payload-" + id
				}
				want += "|" + strings.Repeat(".", pad)
				if err != nil || string(b) != want {
					t.Errorf("%s: got %.60q (len %d) %v, want %.60q", id, b, len(b), err, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	closer.Wait()
	tr.mu.Lock()
	n := len(tr.idle[srv.Listener.Addr().String()])
	tr.mu.Unlock()
	if n > 3 {
		t.Fatalf("%d idle connections, MaxIdlePerHost is 3", n)
	}
}

// TestHopReviewIdleTimeoutRetiresOldConnections: an idle connection older than IdleTimeout is
// closed instead of reused.
func TestHopReviewIdleTimeoutRetiresOldConnections(t *testing.T) {
	srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	tr := &HopTransport{IdleTimeout: 30 * time.Millisecond}
	get(t, tr, srv.URL)
	get(t, tr, srv.URL)
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 2 quick requests, want 1", n)
	}
	time.Sleep(60 * time.Millisecond) // past IdleTimeout: what is asserted is reuse, not time
	get(t, tr, srv.URL)
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2: a connection idle past IdleTimeout was reused", n)
	}
}

// TestHopReviewRequestsStayUntouched: RoundTrip must not modify the caller's request (the
// http.RoundTripper contract), including on the replay path.
func TestHopReviewRequestsStayUntouched(t *testing.T) {
	f := newFlakyServer(t)
	tr := &HopTransport{}
	get(t, tr, f.url()+"/warm")
	req := newReq(t, "PUT", f.url()+"/x", strings.NewReader("body"))
	req.Header.Set("Idempotency-Key", "k")
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("body")), nil }
	hdr := req.Header.Clone()
	resp, body := roundTrip(t, tr, req) // replayed on a new connection
	if body != "ok" {
		t.Fatalf("replayed PUT: %q", body)
	}
	if fmt.Sprint(req.Header) != fmt.Sprint(hdr) || req.URL.String() != f.url()+"/x" || req.Method != "PUT" {
		t.Fatalf("request modified: %v %v %s", req.Header, req.URL, req.Method)
	}
	if resp.Request == nil || resp.Request.URL.String() != req.URL.String() {
		t.Fatalf("resp.Request = %v", resp.Request)
	}
}

// Found by review (these failed before the fix in the same commit).
func TestHopReviewUpgradedConnectionIsNeverPooled(t *testing.T) {
	srv := newRawServer(t, func(c net.Conn, br *bufio.Reader, conn int64) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.Header.Get("Upgrade") != "" {
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
				_, _ = io.Copy(c, br) // the connection now speaks "echo", not HTTP
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	tr := &HopTransport{}
	req := newReq(t, "GET", srv.url()+"/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	resp, err := tr.RoundTrip(req)
	if err == nil {
		// httputil.ReverseProxy closes a 101 whose body is not an io.ReadWriteCloser.
		resp.Body.Close()
	}
	// A POST (not replayable) must get a fresh HTTP connection, not the upgraded one.
	resp, err = tr.RoundTrip(newReq(t, "POST", srv.url()+"/next", strings.NewReader("x")))
	if err != nil {
		t.Fatalf("request after a 101: %v (the upgraded connection was pooled)", err)
	}
	resp.Body.Close()
}

func TestHopReviewIPv6LiteralWithoutPort(t *testing.T) {
	tr := &HopTransport{DialTimeout: time.Second}
	req := newReq(t, "GET", "http://[::1]/", nil)
	resp, err := tr.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
		return // something answers on [::1]:80: the address was right
	}
	var ae *net.AddrError
	if errors.As(err, &ae) {
		t.Fatalf("http://[::1]/ dialled a malformed address: %v", err)
	}
}

func TestHopReviewResponseHeadersAreBounded(t *testing.T) {
	// 12 MiB of 103 Early Hints before the answer: net/http gives up past
	// MaxResponseHeaderBytes (10 MiB by default); an unbounded reader buffers whatever comes.
	srv := newRawServer(t, func(c net.Conn, br *bufio.Reader, conn int64) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		hint := "HTTP/1.1 103 Early Hints\r\nLink: </" + strings.Repeat("x", 1000) + ">\r\n\r\n"
		bw := bufio.NewWriter(c)
		for range 12 << 10 {
			if _, err := bw.WriteString(hint); err != nil {
				return
			}
		}
		bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		bw.Flush()
	})
	for _, c := range []struct {
		name string
		tr   http.RoundTripper
	}{{"net/http", &http.Transport{}}, {"HopTransport", &HopTransport{}}} {
		t.Run(c.name, func(t *testing.T) {
			resp, err := c.tr.RoundTrip(newReq(t, "GET", srv.url()+"/", nil))
			if err == nil {
				resp.Body.Close()
				t.Fatalf("12 MiB of response headers accepted")
			}
			t.Log(err)
		})
	}
}
