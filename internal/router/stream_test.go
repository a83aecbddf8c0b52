package router

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// sseNode makes the rig's API node of region serve GET /v1/changes as an event stream the
// test drives; other requests get the default echo.
type sseNode struct {
	opened atomic.Int64 // stream requests received
	// serve, when set, writes the stream after the headers were flushed and returns when the
	// stream should end; nil: one event, then wait for end or the request's end.
	serve func(w http.ResponseWriter, r *http.Request, flush func())
	end   chan struct{} // closed: every open stream ends normally
	// gone receives the X-Request-Id of every stream whose request context ended before the
	// stream ended by itself (the router gave up on it).
	gone chan string
	mu   sync.Mutex
	hdr  http.Header // the last stream request's headers
}

func newSSENode(t *testing.T, rg *rig, region string) *sseNode {
	t.Helper()
	f := &sseNode{end: make(chan struct{}), gone: make(chan string, 64)}
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(f.end) }) })
	a := rg.nodes[region]
	a.mu.Lock()
	defer a.mu.Unlock()
	a.handle = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/v1/changes" {
			return false
		}
		f.opened.Add(1)
		f.mu.Lock()
		f.hdr = r.Header.Clone()
		serve := f.serve
		f.mu.Unlock()
		flush := w.(http.Flusher).Flush
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		flush()
		if r.Method == http.MethodHead {
			return true
		}
		if serve != nil {
			serve(w, r, flush)
			return true
		}
		_, _ = io.WriteString(w, "id: 1\ndata: {}\n\n")
		flush()
		select {
		case <-f.end:
		case <-r.Context().Done():
			f.gone <- r.Header.Get(HeaderRequestID)
		}
		return true
	}
	return f
}

func (f *sseNode) setServe(serve func(w http.ResponseWriter, r *http.Request, flush func())) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.serve = serve
}

func (f *sseNode) lastHeader() http.Header {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hdr
}

// stream is one client's open /v1/changes through the rig.
type stream struct {
	resp   *http.Response
	r      *bufio.Reader
	cancel context.CancelFunc
}

// openStream opens GET /v1/changes as token; the answer's headers have arrived when it returns.
func openStream(t *testing.T, rg *rig, token string, hdr ...string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", rg.http.URL+"/v1/changes", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	// The headers must arrive on their own, before any event: a router that held them back
	// until the body's first bytes (or its end) fails here rather than hang the test.
	timer := time.AfterFunc(5*time.Second, cancel)
	resp, err := http.DefaultClient.Do(req)
	timer.Stop()
	if err != nil {
		cancel()
		t.Fatalf("open stream: %v", err)
	}
	s := &stream{resp: resp, r: bufio.NewReader(resp.Body), cancel: cancel}
	t.Cleanup(s.close)
	return s
}

// event reads the stream's next event (its lines up to the blank line), failing the test if
// none arrives within 5 s.
func (s *stream) event(t *testing.T) string {
	t.Helper()
	type res struct {
		ev  string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		var b strings.Builder
		for {
			line, err := s.r.ReadString('\n')
			b.WriteString(line)
			if err != nil || line == "\n" {
				ch <- res{b.String(), err}
				return
			}
		}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("stream read after %q: %v", r.ev, r.err)
		}
		return r.ev
	case <-time.After(5 * time.Second):
		s.close() // unblocks the reader
		t.Fatal("no event within 5 s (not flushed?)")
		return ""
	}
}

// rest reads the stream to its end, failing the test if it does not end within 5 s.
func (s *stream) rest(t *testing.T) (string, error) {
	t.Helper()
	timer := time.AfterFunc(5*time.Second, s.close)
	defer timer.Stop()
	b, err := io.ReadAll(s.r)
	if !timer.Stop() {
		t.Fatalf("the stream did not end within 5 s (read %q)", b)
	}
	return string(b), err
}

func (s *stream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// TestStreamFlushesEachEvent: the stream's headers reach the client before any event, and each
// event before the API node writes the next one or ends the stream.
func TestStreamFlushesEachEvent(t *testing.T) {
	rg := newRig(t, nil)
	f := newSSENode(t, rg, "us-east")
	next := make(chan struct{})
	f.setServe(func(w http.ResponseWriter, r *http.Request, flush func()) {
		for i := 1; i <= 3; i++ {
			select {
			case <-next: // the client has everything so far
			case <-r.Context().Done():
				return
			case <-f.end:
				return
			}
			fmt.Fprintf(w, "id: %d\ndata: {\"collection\":\"c\",\"id\":\"r%d\",\"op\":\"put\",\"version\":1}\n\n", i, i)
			flush()
		}
		select {
		case <-r.Context().Done():
		case <-f.end:
		}
	})
	s := openStream(t, rg, tokAcme) // headers only: nothing written after them yet
	if ct := s.resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	if s.resp.Header.Get(HeaderServedRegion) != "us-east" || s.resp.Header.Get(HeaderRequestID) == "" {
		t.Fatalf("headers %v", s.resp.Header)
	}
	for i := 1; i <= 3; i++ {
		next <- struct{}{}
		if ev := s.event(t); !strings.HasPrefix(ev, fmt.Sprintf("id: %d\ndata: {", i)) {
			t.Fatalf("event %d: %q", i, ev)
		}
	}
}

// TestStreamOutlivesRequestDeadline: a stream lasting many request deadlines is not cut, and
// its API node is told no deadline (not even the client's value).
func TestStreamOutlivesRequestDeadline(t *testing.T) {
	const deadline = 250 * time.Millisecond
	rg := newRig(t, func(c *Config) { c.UpstreamTimeout = deadline })
	f := newSSENode(t, rg, "us-east")
	f.setServe(func(w http.ResponseWriter, r *http.Request, flush func()) {
		for i := 1; i <= 8; i++ { // 8 × deadline/2 = 4 deadlines
			select {
			case <-time.After(deadline / 2):
			case <-r.Context().Done():
				return
			}
			fmt.Fprintf(w, "id: %d\ndata: {}\n\n", i)
			flush()
		}
	})
	start := time.Now()
	s := openStream(t, rg, tokAcme, HeaderRequestTimeout, "999999")
	for i := 1; i <= 8; i++ {
		if ev := s.event(t); ev != fmt.Sprintf("id: %d\ndata: {}\n\n", i) {
			t.Fatalf("event %d: %q", i, ev)
		}
	}
	if rest, err := s.rest(t); err != nil || rest != "" {
		t.Fatalf("stream end: %q %v, want a clean end", rest, err)
	}
	if took := time.Since(start); took < 3*deadline {
		t.Fatalf("stream took %v, not longer than the deadline %v: the test proves nothing", took, deadline)
	}
	if v, ok := f.lastHeader()[http.CanonicalHeaderKey(HeaderRequestTimeout)]; ok {
		t.Fatalf("API node was sent %s %v for a stream", HeaderRequestTimeout, v)
	}
	if n := rg.failures("us-east-a"); n != 0 {
		t.Fatalf("a stream's normal end counted %d failures against the node", n)
	}
}

// TestStreamTenantBound: a tenant's 21st open stream (default bound 20) is 429 with
// Retry-After while another tenant's stream is admitted; streams take no request slots; a slot
// comes back when a stream ends, by the client leaving or the API node ending it.
func TestStreamTenantBound(t *testing.T) {
	rg := newRig(t, func(c *Config) { c.TenantConcurrency = 1 })
	f := newSSENode(t, rg, "us-east")
	var endOne atomic.Bool // the next stream's serve ends it once told (below)
	endNow := make(chan struct{})
	f.setServe(func(w http.ResponseWriter, r *http.Request, flush func()) {
		_, _ = io.WriteString(w, "id: 1\ndata: {}\n\n")
		flush()
		stop := endNow
		if !endOne.CompareAndSwap(true, false) {
			stop = nil // only the stream opened after endOne was set ends on endNow
		}
		select {
		case <-stop: // the API node ends this stream
		case <-f.end:
		case <-r.Context().Done():
		}
	})
	var acme []*stream
	for i := 1; i <= 20; i++ {
		if got := testutil.ToFloat64(rg.srv.lim.streams.total); int(got) != i-1 {
			t.Fatalf("streams_open %v before stream %d", got, i)
		}
		s := openStream(t, rg, tokAcme)
		if s.resp.StatusCode != 200 {
			t.Fatalf("stream %d: %d", i, s.resp.StatusCode)
		}
		s.event(t)
		acme = append(acme, s)
	}
	if n := rg.srv.lim.streams.inFlight("acme"); n != 20 {
		t.Fatalf("acme holds %d stream slots", n)
	}
	hits := f.opened.Load()
	resp, b := rg.do(t, "GET", "/v1/changes", tokAcme, "")
	wantStatus(t, resp, b, 429)
	wantProblemType(t, b, "concurrency-limited")
	if resp.Header.Get("Retry-After") != streamRetryAfter {
		t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	if f.opened.Load() != hits {
		t.Fatal("the refused stream reached the API node")
	}
	if n := testutil.ToFloat64(rg.srv.lim.streamsRejected); n != 1 {
		t.Fatalf("streams_rejected_total %v", n)
	}
	// Another tenant's stream is admitted, and the tenant's requests are not held up by its
	// streams (its request bound is 1).
	euco := openStream(t, rg, tokEuco)
	if euco.resp.StatusCode != 200 {
		t.Fatalf("other tenant's stream: %d", euco.resp.StatusCode)
	}
	euco.event(t)
	resp, b = rg.do(t, "GET", "/v1/collections/c/records/x", tokAcme, "")
	wantStatus(t, resp, b, 200)
	if n := testutil.ToFloat64(rg.srv.lim.streams.total); n != 21 {
		t.Fatalf("streams_open %v, want 21", n)
	}
	if n := rg.srv.lim.slots.inFlight("acme"); n != 0 {
		t.Fatalf("streams hold %d request slots", n)
	}

	// The client leaves one stream: its slot comes back.
	acme[0].close()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := rg.srv.lim.streams.inFlight("acme"); n != 19 {
			return fmt.Errorf("acme holds %d stream slots", n)
		}
		return nil
	})
	endOne.Store(true)
	acme[0] = openStream(t, rg, tokAcme) // this one the API node will end
	if acme[0].resp.StatusCode != 200 {
		t.Fatalf("stream after a slot came back: %d", acme[0].resp.StatusCode)
	}
	acme[0].event(t)
	resp, b = rg.do(t, "GET", "/v1/changes", tokAcme, "")
	wantStatus(t, resp, b, 429)

	// The API node ends a stream: its slot comes back.
	close(endNow)
	if rest, err := acme[0].rest(t); err != nil || rest != "" {
		t.Fatalf("ended stream: %q %v", rest, err)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := rg.srv.lim.streams.inFlight("acme"); n != 19 {
			return fmt.Errorf("acme holds %d stream slots after the node ended one", n)
		}
		return nil
	})
	s := openStream(t, rg, tokAcme)
	if s.resp.StatusCode != 200 {
		t.Fatalf("stream after the node ended one: %d", s.resp.StatusCode)
	}
	acme = append(acme, s)

	for _, s := range append(acme, euco) {
		s.close()
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := testutil.ToFloat64(rg.srv.lim.streams.total); n != 0 {
			return fmt.Errorf("streams_open %v after every stream ended", n)
		}
		return nil
	})
	if n := rg.failures("us-east-a"); n != 0 {
		t.Fatalf("streams counted %d failures against the node", n)
	}
}

// TestStreamClientGoneCancelsUpstream: a client that leaves ends the API node's request
// promptly (its context is done), the slots are given back, and nothing counts against the
// node.
func TestStreamClientGoneCancelsUpstream(t *testing.T) {
	rg := newRig(t, nil)
	f := newSSENode(t, rg, "us-east")
	s := openStream(t, rg, tokAcme, HeaderRequestID, "leaver-1")
	s.event(t)
	s.close()
	select {
	case id := <-f.gone:
		if id != "leaver-1" {
			t.Fatalf("the node saw request %q end", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the API node's request was not cancelled after the client left")
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := testutil.ToFloat64(rg.srv.lim.streams.total); n != 0 {
			return fmt.Errorf("streams_open %v", n)
		}
		return nil
	})
	rg.ups.mu.Lock()
	inFlight := rg.ups.nodes[0].inFlight
	rg.ups.mu.Unlock()
	if inFlight != 0 || rg.failures("us-east-a") != 0 {
		t.Fatalf("node in flight %d, failures %d", inFlight, rg.failures("us-east-a"))
	}
}

// TestStreamNoRetryAfterHeaders: an API node that goes away mid-stream ends the client's
// stream; the request is not sent again and the node's breaker counts nothing. A failure
// before the headers is retried and counted, as for every read.
func TestStreamNoRetryAfterHeaders(t *testing.T) {
	rg := newRig(t, nil)
	f := newSSENode(t, rg, "us-east")
	f.setServe(func(w http.ResponseWriter, r *http.Request, flush func()) {
		_, _ = io.WriteString(w, "id: 7\ndata: {}\n\n")
		flush()
		panic(http.ErrAbortHandler) // the node goes away: the connection is cut
	})
	s := openStream(t, rg, tokAcme)
	if ev := s.event(t); ev != "id: 7\ndata: {}\n\n" {
		t.Fatalf("event %q", ev)
	}
	_, _ = s.rest(t) // the stream ends (cleanly or not: the client resumes either way)
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := testutil.ToFloat64(rg.srv.lim.streams.total); n != 0 {
			return fmt.Errorf("streams_open %v", n)
		}
		return nil
	})
	if n := f.opened.Load(); n != 1 {
		t.Fatalf("the stream was sent %d times, want once", n)
	}
	if n := testutil.ToFloat64(rg.srv.m.retries); n != 0 {
		t.Fatalf("retries_total %v", n)
	}
	if n := rg.failures("us-east-a"); n != 0 {
		t.Fatalf("a node going away mid-stream counted %d failures", n)
	}

	// Before the headers the retry policy applies: the first attempt is cut, the retry answers.
	var calls atomic.Int64
	f.setServe(nil)
	rg.nodes["us-east"].mu.Lock()
	inner := rg.nodes["us-east"].handle
	rg.nodes["us-east"].handle = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v1/changes" && calls.Add(1) == 1 {
			panic(http.ErrAbortHandler) // cut before any answer byte
		}
		return inner(w, r)
	}
	rg.nodes["us-east"].mu.Unlock()
	s = openStream(t, rg, tokAcme)
	if s.resp.StatusCode != 200 {
		t.Fatalf("stream after a failed first attempt: %d", s.resp.StatusCode)
	}
	s.event(t)
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d attempts, want 2", n)
	}
	if n := rg.failures("us-east-a"); n != 1 {
		t.Fatalf("failure before the answer counted %d times, want 1", n)
	}
}

// TestStreamRoutedLikeARead: a stream needs data:read, is served by the local region, and by
// the home region when the local one has no healthy API node; HEAD answers the headers.
func TestStreamRoutedLikeARead(t *testing.T) {
	rg := newRig(t, nil)
	newSSENode(t, rg, "us-east")
	newSSENode(t, rg, "eu-west")
	resp, b := rg.do(t, "GET", "/v1/changes", "euco|u|data:write", "")
	wantStatus(t, resp, b, 403)

	s := openStream(t, rg, tokEuco)
	if got := s.resp.Header.Get(HeaderServedRegion); got != "us-east" {
		t.Fatalf("served by %q, want the local region", got)
	}
	s.close()

	rg.ups.mu.Lock()
	rg.ups.nodes[0].down = true // us-east
	rg.ups.mu.Unlock()
	s = openStream(t, rg, tokEuco)
	if got := s.resp.Header.Get(HeaderServedRegion); got != "eu-west" {
		t.Fatalf("served by %q, want the home region", got)
	}
	s.event(t)
	s.close()

	req, _ := http.NewRequest("HEAD", rg.http.URL+"/v1/changes", nil)
	req.Header.Set("Authorization", "Bearer "+tokEuco)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("HEAD: %d %v", resp.StatusCode, resp.Header)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := testutil.ToFloat64(rg.srv.lim.streams.total); n != 0 {
			return fmt.Errorf("streams_open %v", n)
		}
		return nil
	})
}

// TestStreamStopStreams: at shutdown (StopStreams, registered with the HTTP server's
// Shutdown) an open stream ends and its upstream request is cancelled, so it does not hold the
// drain for the whole grace period, and the node is not blamed for it.
func TestStreamStopStreams(t *testing.T) {
	rg := newRig(t, nil)
	f := newSSENode(t, rg, "us-east")
	s := openStream(t, rg, tokAcme, HeaderRequestID, "shutdown-1")
	s.event(t)
	rg.srv.StopStreams()
	select {
	case id := <-f.gone:
		if id != "shutdown-1" {
			t.Fatalf("the node saw request %q end", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the API node's request was not cancelled at shutdown")
	}
	s.rest(t) // ends within 5 s (else the test fails)
	if rg.failures("us-east-a") != 0 {
		t.Fatalf("a stream ended by shutdown counted against the node: %d", rg.failures("us-east-a"))
	}
}
