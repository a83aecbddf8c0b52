package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// rawServer is a loopback TCP server whose answers are written byte for byte by answer, for
// framings net/http would not produce on demand. It reads each request with http.ReadRequest
// (body included) and counts connections and requests.
type rawServer struct {
	ln       net.Listener
	conns    atomic.Int64
	requests atomic.Int64
	// answer writes the answer to the n-th request (from 0, across connections) and says
	// whether to close the connection after it; nil: never answer (hold the connection).
	answer func(w *bufio.Writer, n int64, r *http.Request) (closeAfter bool)
	wg     sync.WaitGroup
	mu     sync.Mutex
	open   map[net.Conn]bool
}

func newRawServer(t *testing.T, answer func(w *bufio.Writer, n int64, r *http.Request) bool) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln, answer: answer, open: map[net.Conn]bool{}}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			s.mu.Lock()
			s.open[c] = true
			s.mu.Unlock()
			s.wg.Go(func() { s.serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *rawServer) serve(c net.Conn) {
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.open, c)
		s.mu.Unlock()
	}()
	br, bw := bufio.NewReader(c), bufio.NewWriter(c)
	for {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		n := s.requests.Add(1) - 1
		if s.answer == nil {
			_, _ = io.Copy(io.Discard, br) // hold it until the client gives up
			return
		}
		closeAfter := s.answer(bw, n, r)
		if bw.Flush() != nil || closeAfter {
			return
		}
	}
}

func (s *rawServer) url(path string) string { return "http://" + s.ln.Addr().String() + path }

// writeSplit writes an answer in pieces of size bytes, flushing each, so that the client's
// parser sees it in parts (a zero size writes it whole).
func writeSplit(w *bufio.Writer, answer string, size int) {
	if size <= 0 {
		w.WriteString(answer)
		return
	}
	for len(answer) > 0 {
		k := min(size, len(answer))
		w.WriteString(answer[:k])
		if w.Flush() != nil {
			return
		}
		answer = answer[k:]
		time.Sleep(100 * time.Microsecond) // lets the pieces arrive apart; correctness does not depend on it
	}
}

// loopCfg is a loop-engine config for tests.
func loopCfg(c Config) Config {
	c.Engine = EngineLoop
	return c
}

// TestLoopCountsAnswersByStatus: every answer is counted under its status, the server sees
// exactly the requests the report counts, with their method, Host, header fields and POST
// bodies (the counter server refuses anything else with 401 or 400).
func TestLoopCountsAnswersByStatus(t *testing.T) {
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			c := newCounter(t, 0, func(seq int) int {
				switch seq % 10 {
				case 3:
					return http.StatusServiceUnavailable
				case 7:
					return http.StatusNotFound
				case 8:
					return http.StatusFound // 3xx: success
				}
				return http.StatusOK
			})
			rep, err := Run(t.Context(), loopCfg(Config{Concurrency: 4, Requests: 400}), []Target{c.target("t", method)})
			if err != nil {
				t.Fatal(err)
			}
			r := rep.Targets[0]
			checkOrdered(t, r)
			want := map[string]int64{"503": 40, "404": 40}
			if r.Requests != 400 || r.OK != 320 || !maps.Equal(r.ErrorsByStatus, want) {
				t.Errorf("requests %d ok %d errors %v; want 400, 320, %v", r.Requests, r.OK, r.ErrorsByStatus, want)
			}
			if hits := c.hits.Load(); hits != 400 {
				t.Errorf("server saw %d requests, want 400", hits)
			}
		})
	}
}

// chunkedAnswer is a 200 with a chunked body in three chunks (one with an extension) and a
// trailer, after a 100 Continue that must be skipped.
const chunkedAnswer = "HTTP/1.1 100 Continue\r\n\r\n" +
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n" +
	"5\r\nhello\r\n1;ext=1\r\n,\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer-Field: x\r\n\r\n"

// lengthAnswer is a 201 with a Content-Length body.
const lengthAnswer = "HTTP/1.1 201 Created\r\nContent-Length: 11\r\nx-kind: length\r\n\r\n{\"ok\":true}"

// TestLoopChunkedAndContentLength: answers framed by chunks and by Content-Length, written whole
// and in small pieces, are all read to their end and counted as successes, on keep-alive
// connections (one per worker); a parser that lost the framing would misread the next answer
// on the connection as malformed.
func TestLoopChunkedAndContentLength(t *testing.T) {
	for _, piece := range []int{0, 1, 7} {
		t.Run(fmt.Sprintf("pieces of %d", piece), func(t *testing.T) {
			srv := newRawServer(t, func(w *bufio.Writer, n int64, _ *http.Request) bool {
				if n%2 == 0 {
					writeSplit(w, chunkedAnswer, piece)
				} else {
					writeSplit(w, lengthAnswer, piece)
				}
				return false
			})
			kinds := map[string]int{}
			var mu sync.Mutex
			rep, err := Run(t.Context(), loopCfg(Config{Concurrency: 2, Requests: 60,
				OnAnswer: func(status int, header func(string) string, err error) {
					mu.Lock()
					kinds[strconv.Itoa(status)+" "+header("X-Kind")]++
					mu.Unlock()
				}}), []Target{simple("t", srv.url("/x"))})
			if err != nil {
				t.Fatal(err)
			}
			r := rep.Targets[0]
			if r.Requests != 60 || r.OK != 60 {
				t.Fatalf("requests %d ok %d errors %v; want 60 answered", r.Requests, r.OK, r.ErrorsByStatus)
			}
			if want := map[string]int{"200 chunked": 30, "201 length": 30}; !maps.Equal(kinds, want) {
				t.Errorf("answers seen %v, want %v", kinds, want)
			}
			if n := srv.conns.Load(); n != 2 {
				t.Errorf("%d connections, want 2 (one per worker, kept alive)", n)
			}
		})
	}
}

// TestLoopServerClosesAfterEachAnswer: a server that answers with Connection: close and closes
// gets every request on a new connection, and every answer counts as a success.
func TestLoopServerClosesAfterEachAnswer(t *testing.T) {
	srv := newRawServer(t, func(w *bufio.Writer, _ int64, _ *http.Request) bool {
		w.WriteString("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
		return true
	})
	rep, err := Run(t.Context(), loopCfg(Config{Concurrency: 3, Requests: 90}), []Target{simple("t", srv.url("/"))})
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Targets[0]
	if r.Requests != 90 || r.OK != 90 {
		t.Fatalf("requests %d ok %d errors %v; want 90 answered", r.Requests, r.OK, r.ErrorsByStatus)
	}
	if n := srv.conns.Load(); n != 90 {
		t.Errorf("%d connections, want 90 (one per request)", n)
	}
}

// TestLoopBodyUntilClose: an answer without Content-Length or chunks ends with its connection,
// and counts as a success.
func TestLoopBodyUntilClose(t *testing.T) {
	srv := newRawServer(t, func(w *bufio.Writer, _ int64, _ *http.Request) bool {
		w.WriteString("HTTP/1.1 200 OK\r\n\r\nthe body runs until the close")
		return true
	})
	rep, err := Run(t.Context(), loopCfg(Config{Concurrency: 2, Requests: 20}), []Target{simple("t", srv.url("/"))})
	if err != nil {
		t.Fatal(err)
	}
	if r := rep.Targets[0]; r.Requests != 20 || r.OK != 20 {
		t.Fatalf("requests %d ok %d errors %v; want 20 answered", r.Requests, r.OK, r.ErrorsByStatus)
	}
}

// TestLoopMalformedAnswer: a malformed answer is a transport error and its connection is
// closed; the next request on a new connection is answered.
func TestLoopMalformedAnswer(t *testing.T) {
	srv := newRawServer(t, func(w *bufio.Writer, n int64, _ *http.Request) bool {
		if n%2 == 0 {
			w.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n")
			return false // the client must close it
		}
		w.WriteString(lengthAnswer)
		return false
	})
	rep, err := Run(t.Context(), loopCfg(Config{Concurrency: 1, Requests: 10}), []Target{simple("t", srv.url("/"))})
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Targets[0]
	if r.Requests != 10 || r.OK != 5 || r.ErrorsByStatus[TransportError] != 5 {
		t.Fatalf("requests %d ok %d errors %v; want 10, 5 ok, 5 transport", r.Requests, r.OK, r.ErrorsByStatus)
	}
	if n := srv.conns.Load(); n != 6 {
		t.Errorf("%d connections, want 6 (the first, then a new one after each of 5 malformed answers)", n)
	}
}

// TestLoopTimeoutEndsOnTime: against a server that never answers, every request is counted as
// a transport error once Timeout has passed, its connection is closed and dialled again, and
// the run ends on time (the deadline, then at most the requests in flight's timeout).
func TestLoopTimeoutEndsOnTime(t *testing.T) {
	srv := newRawServer(t, nil)
	const d, timeout = 500 * time.Millisecond, 200 * time.Millisecond
	// A run that never ends fails here rather than at the test binary's timeout.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	rep, err := Run(ctx, loopCfg(Config{Concurrency: 2, Duration: d, Timeout: timeout}), []Target{simple("t", srv.url("/"))})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	r := rep.Targets[0]
	// Each worker's requests time out after 200–250 ms: 2 or 3 each before and across the deadline.
	if r.OK != 0 || r.Requests < 4 || r.Requests > 6 || r.ErrorsByStatus[TransportError] != r.Requests {
		t.Errorf("requests %d ok %d errors %v; want 4 to 6, all transport errors", r.Requests, r.OK, r.ErrorsByStatus)
	}
	if limit := d + timeout + 2*tickEvery + time.Second; took > limit {
		t.Errorf("run took %s, want at most %s", took, limit)
	}
	if n := srv.conns.Load(); n != r.Requests {
		t.Errorf("%d connections for %d requests; want a new one after each timeout", n, r.Requests)
	}
}

// TestLoopDialFailurePauses: a target that refuses connections counts a transport error per
// dial, the workers pause between dials instead of spinning, and the run ends on time.
func TestLoopDialFailurePauses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: connections are refused
	const d = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	rep, err := Run(ctx, loopCfg(Config{Concurrency: 2, Duration: d}), []Target{simple("t", "http://"+addr+"/")})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	r := rep.Targets[0]
	// Two workers, one dial per dialPause (100 ms) each: about 10 in 500 ms; a spin would make thousands.
	if r.OK != 0 || r.Requests < 4 || r.Requests > 16 || r.ErrorsByStatus[TransportError] != r.Requests {
		t.Errorf("requests %d ok %d errors %v; want 4 to 16 transport errors", r.Requests, r.OK, r.ErrorsByStatus)
	}
	if took > d+time.Second {
		t.Errorf("run took %s for a %s duration", took, d)
	}
}

// TestLoopSameReportAsGoroutines: the same targets and bounds give reports of the same shape and
// counts through both engines: mode, schedule, targets, requests, statuses.
func TestLoopSameReportAsGoroutines(t *testing.T) {
	status := func(seq int) int {
		if seq%5 == 0 {
			return http.StatusTooManyRequests
		}
		return http.StatusOK
	}
	run := func(engine string) *Report {
		a, b := newCounter(t, 0, status), newCounter(t, 0, status)
		rep, err := Run(t.Context(), Config{Engine: engine, Concurrency: 3, Requests: 150, SideBySide: true,
			Round: 20 * time.Millisecond, Warmup: 10 * time.Millisecond},
			[]Target{a.target("a", http.MethodGet), b.target("b", http.MethodPost)})
		if err != nil {
			t.Fatalf("%s: %v", engine, err)
		}
		return rep
	}
	g, l := run(EngineGoroutines), run(EngineLoop)
	if g.Mode != l.Mode || g.Concurrency != l.Concurrency || g.Requests != l.Requests || g.Round != l.Round {
		t.Errorf("header differs: goroutines %s/%d/%d/%s, loop %s/%d/%d/%s", g.Mode, g.Concurrency, g.Requests, g.Round,
			l.Mode, l.Concurrency, l.Requests, l.Round)
	}
	if len(g.Targets) != 2 || len(l.Targets) != 2 || len(g.Ratios) != len(l.Ratios) {
		t.Fatalf("targets %d/%d ratios %d/%d", len(g.Targets), len(l.Targets), len(g.Ratios), len(l.Ratios))
	}
	for i := range g.Targets {
		gt, lt := g.Targets[i], l.Targets[i]
		checkOrdered(t, lt)
		if gt.Name != lt.Name || gt.Requests != lt.Requests || gt.OK != lt.OK || !maps.Equal(gt.ErrorsByStatus, lt.ErrorsByStatus) {
			t.Errorf("target %d: goroutines %s %d/%d %v, loop %s %d/%d %v", i, gt.Name, gt.Requests, gt.OK, gt.ErrorsByStatus,
				lt.Name, lt.Requests, lt.OK, lt.ErrorsByStatus)
		}
		if lt.Requests != 150 || lt.ErrorsByStatus["429"] != 30 || lt.Elapsed <= 0 || lt.Throughput <= 0 {
			t.Errorf("loop %s: %+v; want 150 requests, 30 of them 429", lt.Name, lt)
		}
	}
	// Rounds alternate a, b, … in both; their number depends on the machine's speed.
	for _, rep := range []*Report{g, l} {
		for i, name := range rep.Schedule {
			if want := []string{"a", "b"}[i%2]; name != want && !(i > 0 && name == rep.Schedule[i-1]) {
				t.Errorf("schedule %v does not alternate", rep.Schedule)
				break
			}
		}
	}
}

// TestOnAnswerSeesEveryAnswer: both engines call OnAnswer once per counted request, warm-up
// included, with the answer's status and a case-insensitive lookup of its header.
func TestOnAnswerSeesEveryAnswer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seq", r.URL.Query().Get("seq"))
		w.Header().Add("X-Seq", "second value")
		if r.URL.Query().Get("seq") == "3" {
			w.WriteHeader(http.StatusTeapot)
		}
		io.WriteString(w, "body")
	}))
	defer srv.Close()
	for _, engine := range []string{EngineGoroutines, EngineLoop} {
		t.Run(engine, func(t *testing.T) {
			var mu sync.Mutex
			seen := map[string]int{}
			statuses := map[int]int{}
			var warmups int
			rep, err := Run(t.Context(), Config{Engine: engine, Concurrency: 4, Requests: 100, Warmup: 20 * time.Millisecond,
				BeforeRound: func(context.Context, string, bool) error {
					mu.Lock()
					warmups = len(seen)
					mu.Unlock()
					return nil
				},
				OnAnswer: func(status int, header func(string) string, err error) {
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						t.Errorf("answer error %v", err)
					}
					seen[header("x-SEQ")]++
					statuses[status]++
					if header("Content-Type") == "" || header("No-Such-Field") != "" {
						t.Errorf("header lookups: Content-Type %q, No-Such-Field %q", header("Content-Type"), header("No-Such-Field"))
					}
				}}, []Target{{Name: "t", New: func(_ int, seq uint64) Request {
				return Request{URL: fmt.Sprintf("%s/?seq=%d", srv.URL, seq)}
			}}})
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			total := 0
			for k, n := range seen {
				if n != 1 || k == "" || k == "second value" {
					t.Errorf("X-Seq %q seen %d times; want every sequence number once, first value only", k, n)
				}
				total += n
			}
			if r := rep.Targets[0]; int64(total-warmups) != r.Requests || warmups == 0 {
				t.Errorf("OnAnswer saw %d answers (%d in the warm-up), the report counts %d measured", total, warmups, r.Requests)
			}
			if statuses[http.StatusTeapot] != 1 {
				t.Errorf("statuses %v, want one 418", statuses)
			}
		})
	}
}

// TestLoopKeepsConnectionsAcrossRounds: the engine's connections outlive rounds and targets of
// one run: two targets on one host, side by side in many rounds, use one connection per worker.
func TestLoopKeepsConnectionsAcrossRounds(t *testing.T) {
	srv := newRawServer(t, func(w *bufio.Writer, _ int64, _ *http.Request) bool {
		w.WriteString(lengthAnswer)
		return false
	})
	rep, err := Run(t.Context(), loopCfg(Config{Concurrency: 3, SideBySide: true, Duration: 200 * time.Millisecond,
		Round: 20 * time.Millisecond, Warmup: 20 * time.Millisecond}),
		[]Target{simple("a", srv.url("/a")), simple("b", srv.url("/b"))})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Schedule) < 10 {
		t.Errorf("schedule %v, want at least 10 rounds", rep.Schedule)
	}
	for _, r := range rep.Targets {
		if r.Requests == 0 || r.OK != r.Requests {
			t.Errorf("%s: requests %d ok %d errors %v", r.Name, r.Requests, r.OK, r.ErrorsByStatus)
		}
	}
	if n := srv.conns.Load(); n != 3 {
		t.Errorf("%d connections, want 3 (one per worker for the whole run)", n)
	}
}

// TestLoopCancelled: ctx ending stops the run at once, without counting the requests in flight
// as failures.
func TestLoopCancelled(t *testing.T) {
	c := newCounter(t, 2*time.Millisecond, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	type result struct {
		rep *Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := Run(ctx, loopCfg(Config{Concurrency: 4, Duration: time.Hour}), []Target{c.target("t", http.MethodGet)})
		done <- result{rep, err}
	}()
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := c.hits.Load(); n < 50 {
			return fmt.Errorf("%d hits", n)
		}
		return nil
	})
	cancel()
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the cancel")
	}
	if !errors.Is(res.err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", res.err)
	}
	if r := res.rep.Targets[0]; r.OK < 40 || r.Errors != 0 {
		t.Fatalf("partial report %+v: want the requests before the cancel, none counted as errors", r)
	}
}

// TestLoopBadConfig: what the event-loop engine cannot do is refused.
func TestLoopBadConfig(t *testing.T) {
	ok := simple("a", "http://127.0.0.1:1/")
	for _, tc := range []struct {
		name   string
		cfg    Config
		target Target
		want   error
	}{
		{"open loop", Config{Engine: EngineLoop, Rate: 100}, ok, ErrBadConfig},
		{"unknown engine", Config{Engine: "threads"}, ok, ErrBadConfig},
		{"https", Config{Engine: EngineLoop, Requests: 1}, simple("a", "https://127.0.0.1:1/"), ErrBadTarget},
		{"no scheme", Config{Engine: EngineLoop, Requests: 1}, simple("a", "127.0.0.1:1/"), ErrBadTarget},
		{"header with a newline", Config{Engine: EngineLoop, Requests: 1}, Target{Name: "a", New: func(int, uint64) Request {
			return Request{URL: "http://127.0.0.1:1/", Header: http.Header{"X": {"a\r\nInjected: 1"}}}
		}}, ErrBadTarget},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Run(t.Context(), tc.cfg, []Target{tc.target}); !errors.Is(err, tc.want) {
				t.Errorf("err %v, want %v", err, tc.want)
			}
		})
	}
}

// answerCase is one answer for the parser tests.
type answerCase struct {
	name       string
	head       bool // the request was a HEAD
	in         string
	status     int
	used       int // bytes of in the answer takes (len(in) when 0)
	closeAfter bool
	untilClose bool // complete only when the connection closes
	bad        bool
}

var answerCases = []answerCase{
	{name: "length", in: lengthAnswer, status: 201},
	{name: "chunked after 100", in: chunkedAnswer, status: 200},
	{name: "zero length", in: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", status: 200},
	{name: "no reason", in: "HTTP/1.1 204\r\n\r\n", status: 204},
	{name: "bare LF", in: "HTTP/1.1 200 OK\nContent-Length: 1\n\nx", status: 200},
	{name: "HEAD ignores length", head: true, in: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", status: 200},
	{name: "304 has no body", in: "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", status: 304},
	{name: "bytes after", in: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1", used: 40, status: 200},
	{name: "connection close", in: "HTTP/1.1 503 x\r\nConnection: keep-alive, Close\r\nContent-Length: 1\r\n\r\nx", status: 503, closeAfter: true},
	{name: "HTTP/1.0", in: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", status: 200, closeAfter: true},
	{name: "HTTP/1.0 keep-alive", in: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", status: 200},
	{name: "chunked wins over length", in: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", status: 200},
	{name: "until close", in: "HTTP/1.1 200 OK\r\n\r\nabc", status: 200, untilClose: true, closeAfter: true},
	{name: "bad status line", in: "HTTP/2 200 OK\r\n\r\n", bad: true},
	{name: "bad status", in: "HTTP/1.1 2x0 OK\r\n\r\n", bad: true},
	{name: "status below 100", in: "HTTP/1.1 099 x\r\n\r\n", bad: true},
	{name: "bad length", in: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", bad: true},
	{name: "conflicting lengths", in: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", bad: true},
	{name: "bad chunk size", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", bad: true},
	{name: "no CRLF after chunk", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n", bad: true},
	{name: "field without colon", in: "HTTP/1.1 200 OK\r\nno colon\r\n\r\n", bad: true},
	{name: "space before colon", in: "HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\nx", bad: true},
}

// parseAnswer feeds in to a fresh parser in pieces of size bytes (whole when 0), as OnTraffic
// does: unused bytes stay and more are appended. It returns the bytes the answer used.
func parseAnswer(p *answerParser, in string, head bool, size int) (used int, done bool, err error) {
	p.reset(head, true)
	var buf []byte
	fed := 0
	for {
		if size <= 0 {
			buf, fed = append(buf, in[fed:]...), len(in)
		} else if fed < len(in) {
			k := min(size, len(in)-fed)
			buf, fed = append(buf, in[fed:fed+k]...), fed+k
		}
		n, done, err := p.feed(buf)
		used += n
		buf = buf[n:]
		if err != nil || done || fed == len(in) && (n == 0 || len(buf) == 0) {
			return used, done, err
		}
	}
}

func TestAnswerParser(t *testing.T) {
	for _, tc := range answerCases {
		for _, size := range []int{0, 1, 3} {
			t.Run(fmt.Sprintf("%s/%d", tc.name, size), func(t *testing.T) {
				var p answerParser
				used, done, err := parseAnswer(&p, tc.in, tc.head, size)
				switch {
				case tc.bad:
					if !errors.Is(err, errLoopMalformed) {
						t.Fatalf("err %v, want malformed", err)
					}
					return
				case err != nil:
					t.Fatalf("err %v", err)
				case tc.untilClose:
					if done || p.state != stUntilClose {
						t.Fatalf("done %v state %d, want reading until the close", done, p.state)
					}
				case !done:
					t.Fatalf("not done after %d of %d bytes", used, len(tc.in))
				}
				want := tc.used
				if want == 0 {
					want = len(tc.in)
				}
				if used != want || p.status != tc.status || p.closeAfter != tc.closeAfter {
					t.Errorf("used %d status %d close %v; want %d, %d, %v", used, p.status, p.closeAfter, want, tc.status, tc.closeAfter)
				}
			})
		}
	}
}

// FuzzAnswerParser: feeding an answer in pieces gives what feeding it whole gives, and the
// parser never uses more bytes than it was given.
func FuzzAnswerParser(f *testing.F) {
	for _, tc := range answerCases {
		f.Add(tc.in, uint8(1))
	}
	f.Fuzz(func(t *testing.T, in string, size uint8) {
		var whole, split answerParser
		u1, d1, e1 := parseAnswer(&whole, in, false, 0)
		u2, d2, e2 := parseAnswer(&split, in, false, int(size))
		if u1 > len(in) || u2 > len(in) {
			t.Fatalf("used %d / %d of %d bytes", u1, u2, len(in))
		}
		if (e1 == nil) != (e2 == nil) || d1 != d2 || (e1 == nil && (u1 != u2 || whole.status != split.status)) {
			t.Fatalf("whole: used %d done %v err %v status %d; in pieces of %d: used %d done %v err %v status %d",
				u1, d1, e1, whole.status, size, u2, d2, e2, split.status)
		}
	})
}

// TestAppendRequest: the request is written as the contract says.
func TestAppendRequest(t *testing.T) {
	authority, target, err := splitURL("http://example.test:8080/v1/x?a=b#frag")
	if err != nil || authority != "example.test:8080" || target != "/v1/x?a=b" {
		t.Fatalf("splitURL: %q %q %v", authority, target, err)
	}
	if _, target, _ := splitURL("http://h?q=1"); target != "/?q=1" {
		t.Errorf("target %q, want /?q=1", target)
	}
	if a := dialAddr("h"); a != "h:80" {
		t.Errorf("dialAddr(h) = %q", a)
	}
	b := appendRequest(nil, http.MethodPost, "/x", "other.test", http.Header{"Host": {"ignored"}, "X-A": {"1", "2"},
		"Content-Length": {"99"}}, []byte("body"))
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		t.Fatalf("%q: %v", b, err)
	}
	body, _ := io.ReadAll(req.Body)
	if req.Method != "POST" || req.Host != "other.test" || req.RequestURI != "/x" || req.ContentLength != 4 ||
		string(body) != "body" || !slices.Equal(req.Header["X-A"], []string{"1", "2"}) {
		t.Errorf("request %q read as %s %s host %s length %d body %q header %v", b, req.Method, req.RequestURI, req.Host,
			req.ContentLength, body, req.Header)
	}
	if strings.Count(string(b), "Content-Length") != 1 {
		t.Errorf("request %q: want one Content-Length", b)
	}
}

// BenchmarkEngines compares the two engines' cost per request: 16 closed-loop workers against
// an in-process net/http server on loopback answering a 64-byte body, b.N measured requests
// after a 200 ms warm-up. cpu-µs/req is the whole process's user + system CPU time
// (getrusage) over the measured round per request: the server's share is the same for both
// engines, so the difference is the engines'. Run it with a fixed count, e.g.
//
//	go test -run '^$' -bench Engines -benchtime 50000x -count 3 ./internal/loadgen
func BenchmarkEngines(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = []string{"application/json"}
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	h := http.Header{"Accept": {"application/json"}, "Authorization": {"Bearer bench"}}
	for _, engine := range []string{EngineGoroutines, EngineLoop} {
		b.Run(engine, func(b *testing.B) {
			var cpu0 time.Duration
			var wall0 time.Time
			cfg := Config{Engine: engine, Concurrency: 16, Requests: b.N, Warmup: 200 * time.Millisecond,
				BeforeRound: func(_ context.Context, _ string, warmup bool) error {
					if !warmup {
						b.ResetTimer()
						cpu0, wall0 = testenv.ProcessCPU(), time.Now()
					}
					return nil
				}}
			b.ReportAllocs()
			rep, err := Run(b.Context(), cfg, []Target{{Name: "get", New: func(_ int, seq uint64) Request {
				return Request{URL: srv.URL + "/v1/records/" + strconv.FormatUint(seq%1000, 10), Header: h}
			}}})
			cpu, wall := testenv.ProcessCPU()-cpu0, time.Since(wall0)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			r := rep.Targets[0]
			if r.Requests != int64(b.N) || r.OK != r.Requests {
				b.Fatalf("requests %d ok %d errors %v; want %d answered", r.Requests, r.OK, r.ErrorsByStatus, b.N)
			}
			n := float64(r.Requests)
			b.ReportMetric(float64(cpu.Microseconds())/n, "cpu-µs/req")
			b.ReportMetric(n/wall.Seconds(), "req/s")
			b.ReportMetric(0, "ns/op") // wall time per request of 16 workers says little; req/s says it
		})
	}
}
