package api

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/daemon"
	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/records/pgstore"
	"github.com/meridian-dev/meridian/internal/shards"
)

// fakeChanges is a fake of our own ChangeFeed: each Follow records its arguments and hands the
// test a fakeFeed to drive (or fails with err).
type fakeChanges struct {
	mu    sync.Mutex
	err   error
	calls []followCall
	feeds chan *fakeFeed
}

type followCall struct {
	target records.Target
	after  int64
	buf    int
}

var _ ChangeFeed = (*fakeChanges)(nil)

func newFakeChanges() *fakeChanges { return &fakeChanges{feeds: make(chan *fakeFeed, 64)} }

func (f *fakeChanges) Follow(ctx context.Context, t records.Target, after int64, buf int) (Feed, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, followCall{t, after, buf})
	if f.err != nil {
		return nil, f.err
	}
	feed := &fakeFeed{ctx: ctx, c: make(chan records.ChangeEvent), closed: make(chan struct{})}
	f.feeds <- feed
	return feed, nil
}

// failWith makes every later Follow fail with err (nil: succeed).
func (f *fakeChanges) failWith(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// lastCall returns the arguments of the latest Follow.
func (f *fakeChanges) lastCall(t *testing.T) followCall {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		t.Fatal("Follow was never called")
	}
	return f.calls[len(f.calls)-1]
}

// next returns the feed of the next Follow.
func (f *fakeChanges) next(t *testing.T) *fakeFeed {
	t.Helper()
	select {
	case feed := <-f.feeds:
		return feed
	case <-time.After(10 * time.Second):
		t.Fatal("no Follow")
		return nil
	}
}

// fakeFeed is a Feed the test drives: send delivers one event to the handler (unbuffered, so
// it returns once the handler took it), end closes C with an error.
type fakeFeed struct {
	ctx    context.Context
	c      chan records.ChangeEvent
	closed chan struct{}
	once   sync.Once
	mu     sync.Mutex
	err    error
}

func (f *fakeFeed) C() <-chan records.ChangeEvent { return f.c }

func (f *fakeFeed) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

func (f *fakeFeed) Close() { f.once.Do(func() { close(f.closed) }) }

func (f *fakeFeed) send(t *testing.T, ev records.ChangeEvent) {
	t.Helper()
	select {
	case f.c <- ev:
	case <-f.closed:
		t.Fatalf("the handler closed the feed before event %d", ev.Seq)
	case <-time.After(10 * time.Second):
		t.Fatalf("the handler did not take event %d", ev.Seq)
	}
}

func (f *fakeFeed) end(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
	close(f.c)
}

// waitClosed fails unless the handler closes the feed.
func (f *fakeFeed) waitClosed(t *testing.T) {
	t.Helper()
	select {
	case <-f.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler never closed its feed")
	}
}

// newStreamEnv starts an API node over a fake ChangeFeed, served by the production HTTP server
// (daemon.NewHTTPServer) with every limit of HTTPLimits at 100 ms, and a request deadline of
// 100 ms: a stream must outlive all of them. The records store is real but never reached (its
// connections are opened lazily; /v1/changes goes through the feed alone).
func newStreamEnv(t *testing.T, feed ChangeFeed, mutate ...func(*Config)) *env {
	t.Helper()
	e := &env{t: t, maps: &staticMap{version: 1, pins: map[string]string{}, def: "s1",
		shards: map[string]shards.Info{"s1": {ID: "s1", HomeRegion: region, Database: "unused"}}}}
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	conns := shards.New(shards.Config{})
	t.Cleanup(conns.Close)
	store, err := pgstore.New(pgstore.Config{Region: region, Map: e.maps, Conns: conns, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := auth.NewVerifier(auth.Config{Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Region: region, CursorKey: []byte("k"), Logger: log, Changes: feed, Deadline: 100 * time.Millisecond, Heartbeat: time.Hour}
	for _, f := range mutate {
		f(&cfg)
	}
	if e.srv, err = New(cfg, e.maps, store, verifier, nil); err != nil {
		t.Fatal(err)
	}
	e.http = httptest.NewUnstartedServer(e.srv.Handler())
	e.http.Config = daemon.NewHTTPServer(e.srv.Handler(), daemon.HTTPLimits{ReadHeaderTimeout: 100 * time.Millisecond,
		BodyTimeout: 100 * time.Millisecond, IdleTimeout: 100 * time.Millisecond})
	e.http.Start()
	t.Cleanup(e.http.Close)
	return e
}

// stream is an open /v1/changes response.
type stream struct {
	resp *http.Response
	r    *bufio.Reader
}

// openStream sends GET /v1/changes for tenant acme and returns once the headers arrived: Do
// returns only then, so a handler that held its headers back until an event fails here. hdr
// adds request headers.
func (e *env) openStream(hdr map[string]string) *stream {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	e.t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.http.URL+"/v1/changes", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.token("acme", "data:read"))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	type answer struct {
		resp *http.Response
		err  error
	}
	got := make(chan answer, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		got <- answer{resp, err}
	}()
	select {
	case a := <-got:
		if a.err != nil {
			e.t.Fatal(a.err)
		}
		e.t.Cleanup(func() { a.resp.Body.Close() })
		return &stream{resp: a.resp, r: bufio.NewReader(a.resp.Body)}
	case <-time.After(5 * time.Second):
		e.t.Fatal("no response headers within 5s of the request")
		return nil
	}
}

// block reads the next block of the stream: its lines up to and including the blank line
// that ends it.
func (s *stream) block(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for {
		line, err := s.r.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			t.Fatalf("stream broke after %q: %v", b.String(), err)
		}
		if line == "\n" {
			return b.String()
		}
	}
}

// event reads the next block that is not a heartbeat.
func (s *stream) event(t *testing.T) string {
	t.Helper()
	for {
		if b := s.block(t); b != heartbeatComment {
			return b
		}
	}
}

// rest reads the stream to its end, failing if it does not end cleanly.
func (s *stream) rest(t *testing.T) string {
	t.Helper()
	b, err := io.ReadAll(s.r)
	if err != nil {
		t.Fatalf("stream did not end cleanly after %q: %v", b, err)
	}
	return string(b)
}

func ev(seq int64, id, op string, version int64) records.ChangeEvent {
	return records.ChangeEvent{Seq: seq, OutboxID: seq + 100, Collection: "notes", ID: id, Op: op, Version: version, At: time.Now()}
}

// TestChangesStream: the headers come at once, before any event, and uncompressed; each event
// is id + data + blank line; Follow gets the token's tenant, its shard, after -1 without
// Last-Event-ID and the default buffer; the stream outlives the request deadline (100 ms) and
// every HTTP server limit; the feed ending with an error mid-stream ends the response cleanly
// after whole events, and the handler closes its feed.
func TestChangesStream(t *testing.T) {
	fc := newFakeChanges()
	e := newStreamEnv(t, fc)
	// Accept-Encoding: gzip would have a gzip writer hold the events back.
	s := e.openStream(map[string]string{"Accept-Encoding": "gzip", "X-Request-Timeout-Ms": "50"})
	feed := fc.next(t)
	h := s.resp.Header
	if s.resp.StatusCode != 200 || h.Get("Content-Type") != "text/event-stream" || h.Get("Cache-Control") != "no-store" ||
		h.Get("X-Served-Region") != region || h.Get(problem.HeaderRequestID) == "" || h.Get("Content-Encoding") != "" {
		t.Fatalf("stream answered %d %v", s.resp.StatusCode, h)
	}
	if c := fc.lastCall(t); c.target.Tenant != "acme" || c.target.Shard != "s1" || c.after != -1 || c.buf != 256 {
		t.Fatalf("Follow(%+v), want acme on s1 after -1 with buffer 256", c)
	}

	feed.send(t, ev(1, "a", "create", 1))
	if got, want := s.event(t), "id: 1\ndata: {\"collection\":\"notes\",\"id\":\"a\",\"op\":\"create\",\"version\":1}\n\n"; got != want {
		t.Fatalf("event %q, want %q", got, want)
	}
	// Past the request deadline and every server limit: the stream is still served.
	time.Sleep(400 * time.Millisecond)
	feed.send(t, ev(2, "a", "update", 2))
	feed.send(t, ev(3, "b\"<&>", "delete", 7))
	if got, want := s.event(t), "id: 2\ndata: {\"collection\":\"notes\",\"id\":\"a\",\"op\":\"update\",\"version\":2}\n\n"; got != want {
		t.Fatalf("event %q, want %q", got, want)
	}
	if got, want := s.event(t), "id: 3\ndata: {\"collection\":\"notes\",\"id\":\"b\\\"\\u003c\\u0026\\u003e\",\"op\":\"delete\",\"version\":7}\n\n"; got != want {
		t.Fatalf("event %q, want %q", got, want)
	}
	// The feed gives up (a slow follower, an outbox error): the response ends cleanly.
	feed.send(t, ev(4, "c", "create", 1))
	feed.end(errors.New("follower fell 256 events behind"))
	if got := s.rest(t); got != "id: 4\ndata: {\"collection\":\"notes\",\"id\":\"c\",\"op\":\"create\",\"version\":1}\n\n" {
		t.Fatalf("after the feed ended: %q, want only the last whole event", got)
	}
	feed.waitClosed(t)
}

// TestChangesHeartbeat: an idle stream gets a heartbeat comment every Config.Heartbeat.
func TestChangesHeartbeat(t *testing.T) {
	fc := newFakeChanges()
	e := newStreamEnv(t, fc, func(c *Config) { c.Heartbeat = 20 * time.Millisecond })
	s := e.openStream(nil)
	feed := fc.next(t)
	for range 3 {
		if b := s.block(t); b != heartbeatComment {
			t.Fatalf("idle stream sent %q, want %q", b, heartbeatComment)
		}
	}
	feed.send(t, ev(9, "x", "create", 1))
	if b := s.event(t); !strings.HasPrefix(b, "id: 9\n") {
		t.Fatalf("event %q", b)
	}
	if b := s.block(t); b != heartbeatComment {
		t.Fatalf("after the event: %q, want a heartbeat", b)
	}
}

// TestChangesStopStreams: StopStreams ends open streams cleanly.
func TestChangesStopStreams(t *testing.T) {
	fc := newFakeChanges()
	e := newStreamEnv(t, fc)
	s := e.openStream(nil)
	feed := fc.next(t)
	feed.send(t, ev(1, "a", "create", 1))
	s.event(t)
	e.srv.StopStreams()
	e.srv.StopStreams() // twice is fine
	if got := s.rest(t); got != "" {
		t.Fatalf("after StopStreams: %q", got)
	}
	feed.waitClosed(t)
}

// TestLastEventID: Last-Event-ID is absent (-1) or one non-negative decimal int64 with digits
// only; anything else is 400 invalid-last-event-id, before Follow is called.
func TestLastEventID(t *testing.T) {
	for _, tc := range []struct {
		vals []string
		want int64 // -2: a 400
	}{
		{nil, -1},
		{[]string{"0"}, 0},
		{[]string{"42"}, 42},
		{[]string{"007"}, 7},
		{[]string{"9223372036854775807"}, 9223372036854775807},
		{[]string{""}, -2},
		{[]string{"-1"}, -2},
		{[]string{"+1"}, -2},
		{[]string{" 1"}, -2},
		{[]string{"1 "}, -2},
		{[]string{"1 2"}, -2},
		{[]string{"1.0"}, -2},
		{[]string{"1e3"}, -2},
		{[]string{"0x10"}, -2},
		{[]string{"١"}, -2},
		{[]string{"9223372036854775808"}, -2},  // 19 digits, above int64
		{[]string{"12345678901234567890"}, -2}, // 20 digits
		{[]string{"00000000000000000001"}, -2}, // 20 digits
		{[]string{"1", "2"}, -2},
	} {
		got, err := parseLastEventID(tc.vals)
		var he *httpError
		switch {
		case tc.want == -2 && (!errors.As(err, &he) || he.kind != problem.InvalidLastEventID):
			t.Errorf("%q: %d %v, want a 400 invalid-last-event-id", tc.vals, got, err)
		case tc.want != -2 && (err != nil || got != tc.want):
			t.Errorf("%q: %d %v, want %d", tc.vals, got, err, tc.want)
		}
	}

	fc := newFakeChanges()
	e := newStreamEnv(t, fc)
	authz := "Bearer " + e.token("acme", "data:read")
	for _, v := range []string{"-1", "x", "1 2", "99999999999999999999"} {
		wantKind(t, e.do("GET", "/v1/changes", authz, "", map[string]string{"Last-Event-ID": v}), problem.InvalidLastEventID)
	}
	fc.mu.Lock()
	calls := len(fc.calls)
	fc.mu.Unlock()
	if calls != 0 {
		t.Fatalf("Follow called %d times for malformed Last-Event-IDs", calls)
	}
	// A good one resumes after it.
	s := e.openStream(map[string]string{"Last-Event-ID": "41"})
	feed := fc.next(t)
	if c := fc.lastCall(t); c.after != 41 {
		t.Fatalf("Follow after %d, want 41", c.after)
	}
	feed.end(nil)
	if got := s.rest(t); got != "" {
		t.Fatalf("ended feed: %q", got)
	}
}

// TestChangesFailures: what fails before the stream starts is a problem+json answer: no token
// 401, no data:read 403, Follow's tenant-not-found 404, another Follow failure 503
// changes-unavailable (no internal text), no feed configured 503 changes-unavailable. HEAD
// answers the stream's headers (and closes its feed) or the failure's status; other methods
// are 405.
func TestChangesFailures(t *testing.T) {
	fc := newFakeChanges()
	e := newStreamEnv(t, fc, func(c *Config) { c.FollowBuffer = 7 })
	read := "Bearer " + e.token("acme", "data:read")
	wantKind(t, e.do("GET", "/v1/changes", "", "", nil), problem.Unauthorized)
	wantKind(t, e.do("GET", "/v1/changes", "Bearer "+e.token("acme", "data:write"), "", nil), problem.Forbidden)

	r := e.do("HEAD", "/v1/changes", read, "", nil)
	if r.StatusCode != 200 || r.Header.Get("Content-Type") != "text/event-stream" || r.Body != "" {
		t.Fatalf("HEAD: %d %v %q", r.StatusCode, r.Header, r.Body)
	}
	fc.next(t).waitClosed(t)
	if c := fc.lastCall(t); c.buf != 7 {
		t.Fatalf("Follow buffer %d, want Config.FollowBuffer 7", c.buf)
	}
	if r := e.do("POST", "/v1/changes", read, "", nil); r.StatusCode != 405 || r.Header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST: %d Allow %q", r.StatusCode, r.Header.Get("Allow"))
	}

	fc.failWith(records.ErrTenantNotFound)
	wantKind(t, e.do("GET", "/v1/changes", read, "", nil), problem.TenantNotFound)
	if r := e.do("HEAD", "/v1/changes", read, "", nil); r.StatusCode != 404 {
		t.Fatalf("HEAD of a ghost tenant: %d", r.StatusCode)
	}
	fc.failWith(errors.New("nats: no responders available"))
	r = e.do("GET", "/v1/changes", read, "", nil)
	wantKind(t, r, problem.ChangesUnavailable, "nats", "responders")
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}

	none := newStreamEnv(t, nil)
	r = none.do("GET", "/v1/changes", "Bearer "+none.token("acme", "data:read"), "", nil)
	wantKind(t, r, problem.ChangesUnavailable)
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
}

// storeFeed is a ChangeFeed over the real store and nothing else: the tenant's backlog after
// `after` read from the outbox (after < 0: the current seq, so nothing), then the end of the
// feed. It proves the HTTP contract over real outbox rows, without the event bus.
type storeFeed struct {
	store atomic.Pointer[pgstore.Store]
	down  atomic.Bool // Follow fails as if the consumer were not running
}

var _ ChangeFeed = (*storeFeed)(nil)

func (f *storeFeed) Follow(ctx context.Context, t records.Target, after int64, _ int) (Feed, error) {
	if f.down.Load() {
		return nil, errors.New("consumer not running")
	}
	s := f.store.Load()
	if after < 0 {
		seq, err := s.ChangeSeq(ctx, t)
		if err != nil {
			return nil, err
		}
		after = seq
	}
	evs, err := s.Changes(ctx, t.Tenant, t.Shard, after, 0)
	if err != nil {
		return nil, err
	}
	c := make(chan records.ChangeEvent, len(evs))
	for _, ev := range evs {
		c <- ev
	}
	close(c)
	return backlogFeed(c), nil
}

// backlogFeed is a feed whose events are all in its closed channel.
type backlogFeed chan records.ChangeEvent

func (f backlogFeed) C() <-chan records.ChangeEvent { return f }
func (f backlogFeed) Err() error                    { return nil }
func (f backlogFeed) Close()                        {}
