package loadgen

// The event-loop engine (Config.Engine EngineLoop): the closed loop of closedLoop without a
// goroutine per worker. One gnet client runs one event loop; every worker w has, per target
// host, one keep-alive HTTP/1.1 connection (its slot), and sends its next request (from
// Target.New(w, seq)) on the slot of that request's host as soon as the last answer is
// complete, from the loop's OnTraffic. Requests are written into a buffer per slot reused for
// every request, answers parsed in place (answerParser) without net/http.
//
// The engine lives for one Run: the first round starts it, its connections stay open between
// rounds and targets (a round opens only what it lacks), and Run stops it at the end.
//
// State and locking: every field below the engine's mu is guarded by it, and everything that
// touches them holds it: the loop's callbacks (OnOpen, OnTraffic, OnClose), its ticker
// (OnTick, on a goroutine of gnet's), the dialling goroutines, the pause timers and the
// goroutine running the round. Only the loop writes to a connection directly (Conn.Write);
// the others wake it (Conn.Wake: OnTraffic writes the request waiting) or close it
// (Conn.Close). A Conn.Write that fails closes the connection at once, which calls OnClose on
// the same goroutine while the lock is held: the loop's callbacks therefore take the lock
// through enter/leave, which count the depth (a field only the loop's goroutine touches).
//
// Round end, timeouts and closes, as closedLoop does them:
//   - A worker sends nothing more once the round's deadline has passed, its quota has been
//     issued, or a request could not be built (a bad URL: the round's error). A request in
//     flight then is finished and counted; the round ends when every worker has stopped.
//   - ctx ending stops the round at once: requests in flight are dropped uncounted (their
//     connections closed) and the round returns.
//   - The ticker (every tickEvery) counts a request older than Config.Timeout as a
//     TransportError, closes its connection, and the worker sends its next request on a new
//     one (dialled then).
//   - A connection closed while a request is in flight counts a TransportError (unless the
//     answer's body runs until the close: then the close completes it). A malformed answer is
//     a TransportError and closes the connection. An answer with Connection: close (or an
//     HTTP/1.0 one without keep-alive) is counted and its connection closed; the next request
//     dials again.
//   - A dial that fails counts a TransportError; so does a connection closed before its first
//     answer. Either way the worker waits dialPause (or until the deadline, if sooner) before
//     its next request, so that a target refusing connections is not dialled in a spin.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/meridian-dev/meridian/internal/gnetlog"
	"github.com/meridian-dev/meridian/internal/h1"
)

const (
	// tickEvery is how often the engine looks for requests older than Config.Timeout.
	tickEvery = 50 * time.Millisecond
	// dialPause is how long a worker waits after a failed dial (or a connection closed before
	// its first answer) before its next request.
	dialPause = 100 * time.Millisecond
	// maxAnswerLine bounds one line of an answer's head or chunk framing; maxAnswerHead the
	// whole head. Longer is malformed.
	maxAnswerLine = 64 << 10
	maxAnswerHead = 1 << 20
)

// Errors of the event-loop engine, counted as TransportError (never returned by Run).
var (
	errLoopTimeout   = errors.New("loadgen: no complete answer within the timeout")
	errLoopClosed    = errors.New("loadgen: connection closed before the answer was complete")
	errLoopMalformed = errors.New("loadgen: malformed answer")
	errLoopWake      = errors.New("loadgen: event loop is not running")
)

// lazyLoop starts the run's event-loop engine on first use and stops it at the end of the run.
type lazyLoop struct {
	cfg Config
	e   *loopEngine
	err error
}

// get returns the engine, started on the first call.
func (l *lazyLoop) get() (*loopEngine, error) {
	if l.e == nil && l.err == nil {
		l.e, l.err = newLoopEngine(l.cfg)
	}
	return l.e, l.err
}

// stop stops the engine if it was started.
func (l *lazyLoop) stop() {
	if l.e != nil {
		l.e.stop()
		l.e = nil
	}
}

// loopEngine is the event-loop engine of one Run.
type loopEngine struct {
	gnet.BuiltinEventEngine
	cfg        Config
	cli        *gnet.Client
	dialer     net.Dialer
	dialCtx    context.Context
	cancelDial context.CancelFunc
	dials      sync.WaitGroup

	// depth is how many of the loop's callbacks are running on the loop's goroutine, nested
	// (see enter); only that goroutine touches it.
	depth int

	mu       sync.Mutex
	active   *loopRound // the round in progress; nil between rounds
	workers  []*loopWorker
	hosts    map[string]*loopHost // by the URL's authority
	stopping bool
}

var _ gnet.EventHandler = (*loopEngine)(nil)

// loopRound is one measured round (or warm-up) of one target.
type loopRound struct {
	s        *targetState
	deadline time.Time // zero: none
	quota    int       // zero: none
	issued   int
	locals   []*stats
	running  int   // workers not stopped
	err      error // why the round stopped early (a request that cannot be sent)
	aborted  bool  // ctx ended it
	done     chan struct{}
}

// loopWorker is one worker: at most one request in flight, on one of its slots.
type loopWorker struct {
	idx     int
	cur     *loopSlot // the slot with the worker's request in flight; nil when none
	stopped bool      // sends nothing more this round
}

// loopHost is one target host's slots, one per worker.
type loopHost struct {
	addr  string // host:port to dial
	slots []*loopSlot
}

// loopSlot is one worker's connection to one host and the request it carries.
type loopSlot struct {
	e       *loopEngine
	host    *loopHost
	worker  int
	sock    *loopSock // the current connection (dialling or open); nil when none
	busy    bool      // a request is in flight
	written bool      // ... and has been written (or handed to the connection's opening)
	start   time.Time // when the request in flight was issued
	req     []byte    // the request in flight, as written (reused)
	p       answerParser
	hdrFn   func(string) string // s.header, made once
}

// loopSock is one connection of a slot: gnet's Context of the connection. A callback for a
// sock that is no longer its slot's current one is stale and ignored.
type loopSock struct {
	slot     *loopSlot
	gc       gnet.Conn // nil while dialling
	answered bool      // it has delivered a complete answer
}

// newLoopEngine starts a gnet client with one event loop for cfg (defaults applied).
func newLoopEngine(cfg Config) (*loopEngine, error) {
	e := &loopEngine{cfg: cfg, hosts: map[string]*loopHost{}}
	e.dialer.Timeout = cfg.Timeout
	e.dialCtx, e.cancelDial = context.WithCancel(context.Background())
	for w := range cfg.Concurrency {
		e.workers = append(e.workers, &loopWorker{idx: w})
	}
	// gnet.NewClient installs its logger as gnet's process-wide default.
	cli, err := gnet.NewClient(e, gnet.WithMulticore(false), gnet.WithNumEventLoop(1), gnet.WithTicker(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay), gnet.WithLogger(gnetlog.Logger{Prefix: "loadgen: gnet: "}))
	if err != nil {
		e.cancelDial()
		return nil, fmt.Errorf("loadgen: event loop: %w", err)
	}
	if err := cli.Start(); err != nil {
		e.cancelDial()
		return nil, fmt.Errorf("loadgen: event loop: %w", err)
	}
	e.cli = cli
	return e, nil
}

// stop closes every connection and stops the loop; dials under way are cancelled first (a
// dial registers its connection with the loop, which must still run).
func (e *loopEngine) stop() {
	e.mu.Lock()
	e.stopping = true
	e.mu.Unlock()
	e.cancelDial()
	e.dials.Wait()
	if err := e.cli.Stop(); err != nil {
		slog.Warn("loadgen: stopping the event loop", "err", err)
	}
}

// round runs one round of s: every worker sends until deadline (if not zero) or until quota
// (if positive) requests were issued, recording into locals[worker]; see the file's comment
// for the round's end. It returns an error only for a request that cannot be sent.
func (e *loopEngine) round(ctx context.Context, s *targetState, deadline time.Time, quota int, locals []*stats) error {
	if ctx.Err() != nil {
		return nil
	}
	r := &loopRound{s: s, deadline: deadline, quota: quota, locals: locals, running: len(e.workers), done: make(chan struct{})}
	e.mu.Lock()
	e.active = r
	for _, w := range e.workers {
		w.cur, w.stopped = nil, false
	}
	for _, w := range e.workers {
		e.issue(w, false)
	}
	e.mu.Unlock()
	select {
	case <-r.done:
	case <-ctx.Done():
		e.mu.Lock()
		if e.active == r {
			e.abort(r)
		}
		e.mu.Unlock()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return r.err
}

// abort ends r at once: requests in flight are dropped uncounted and their connections closed.
func (e *loopEngine) abort(r *loopRound) {
	r.aborted = true
	e.active = nil
	for _, w := range e.workers {
		s := w.cur
		if s == nil {
			continue
		}
		s.busy, w.cur = false, nil
		e.drop(s)
	}
}

// drop detaches s's connection and closes it (a dialling one closes when it opens).
func (e *loopEngine) drop(s *loopSlot) {
	sock := s.sock
	s.sock = nil
	if sock != nil && sock.gc != nil {
		_ = sock.gc.Close() // asynchronous: runs on the loop; stale by then
	}
}

// stopWorker ends w's round; the last worker to stop ends the round.
func (e *loopEngine) stopWorker(r *loopRound, w *loopWorker) {
	w.stopped = true
	r.running--
	if r.running == 0 {
		e.active = nil
		close(r.done)
	}
}

// issue sends w's next request, or stops w when the round is over for it. onLoop says whether
// the caller is the loop (which may write to a connection directly).
func (e *loopEngine) issue(w *loopWorker, onLoop bool) {
	r := e.active
	if r == nil || w.stopped || w.cur != nil {
		return
	}
	if r.err != nil || (!r.deadline.IsZero() && !time.Now().Before(r.deadline)) || (r.quota > 0 && r.issued >= r.quota) {
		e.stopWorker(r, w)
		return
	}
	req := r.s.target.New(w.idx, r.s.seq.Add(1)-1)
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	authority, target, err := splitURL(req.URL)
	if err == nil {
		err = checkRequest(method, req.Header)
	}
	if err != nil {
		r.err = fmt.Errorf("%w: target %q: %w", ErrBadTarget, r.s.target.Name, err)
		e.stopWorker(r, w)
		return
	}
	r.issued++
	h := e.hosts[authority]
	if h == nil {
		h = &loopHost{addr: dialAddr(authority), slots: make([]*loopSlot, len(e.workers))}
		e.hosts[authority] = h
	}
	s := h.slots[w.idx]
	if s == nil {
		s = &loopSlot{e: e, host: h, worker: w.idx}
		s.hdrFn = s.header
		h.slots[w.idx] = s
	}
	host := authority
	if v := req.Header.Get("Host"); v != "" {
		host = v
	}
	s.req = appendRequest(s.req[:0], method, target, host, req.Header, req.Body)
	s.p.reset(method == http.MethodHead, e.cfg.OnAnswer != nil)
	s.busy, s.written, s.start = true, false, time.Now()
	w.cur = s
	switch {
	case s.sock == nil:
		e.dial(s)
	case s.sock.gc == nil:
		// Dialling: OnOpen writes the request.
	case onLoop:
		e.write(s)
	default:
		if err := s.sock.gc.Wake(nil); err != nil {
			e.drop(s)
			e.finish(w, s, 0, fmt.Errorf("%w: %w", errLoopWake, err))
			e.stopWorker(r, w)
		}
	}
}

// write writes s's request on its open connection; the loop only. A failed write closes the
// connection at once (OnClose, nested, counts the request).
func (e *loopEngine) write(s *loopSlot) {
	s.written = true
	_, _ = s.sock.gc.Write(s.req)
}

// dial opens a new connection for s on a goroutine of its own (net.Dial blocks, and gnet
// registers the connection with the loop, which must not wait for itself).
func (e *loopEngine) dial(s *loopSlot) {
	sock := &loopSock{slot: s}
	s.sock = sock
	if e.stopping {
		return // the request stays in flight until a timeout or the end
	}
	e.dials.Add(1)
	go func() {
		defer e.dials.Done()
		nc, err := e.dialer.DialContext(e.dialCtx, "tcp", s.host.addr)
		if err == nil {
			// OnOpen has run on the loop when EnrollContext returns.
			if _, err = e.cli.EnrollContext(nc, sock); err == nil {
				return
			}
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if s.sock != sock {
			return
		}
		s.sock = nil
		if w := e.workers[s.worker]; s.busy && w.cur == s {
			e.finish(w, s, 0, err)
			e.pause(w)
		}
	}()
}

// pause has w send its next request after dialPause, or at the deadline if sooner.
func (e *loopEngine) pause(w *loopWorker) {
	r := e.active
	if r == nil {
		return
	}
	d := dialPause
	if !r.deadline.IsZero() {
		d = min(d, time.Until(r.deadline))
	}
	if d <= 0 {
		e.issue(w, false)
		return
	}
	time.AfterFunc(d, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.active == r {
			e.issue(w, false)
		}
	})
}

// finish records the outcome of w's request on s and calls OnAnswer.
func (e *loopEngine) finish(w *loopWorker, s *loopSlot, status int, err error) {
	lat := time.Since(s.start)
	s.busy, w.cur = false, nil
	r := e.active
	if r == nil {
		return
	}
	r.locals[w.idx].add(lat, status, err)
	e.cfg.answered(status, s.hdrFn, err)
}

// enter takes the lock for a loop callback unless a callback further up the loop's stack
// holds it; leave undoes enter.
func (e *loopEngine) enter() {
	if e.depth == 0 {
		e.mu.Lock()
	}
	e.depth++
}

func (e *loopEngine) leave() {
	e.depth--
	if e.depth == 0 {
		e.mu.Unlock()
	}
}

// OnOpen hands a freshly dialled connection the request waiting for it.
func (e *loopEngine) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	e.enter()
	defer e.leave()
	sock, _ := c.Context().(*loopSock)
	if sock == nil || sock.slot.sock != sock || e.stopping {
		return nil, gnet.Close
	}
	sock.gc = c
	s := sock.slot
	if s.busy && !s.written {
		s.written = true
		return s.req, gnet.None
	}
	return nil, gnet.None
}

// OnTraffic reads answers and sends each worker's next request; it also writes a request
// handed over by another goroutine (Wake).
func (e *loopEngine) OnTraffic(c gnet.Conn) gnet.Action {
	e.enter()
	defer e.leave()
	sock, _ := c.Context().(*loopSock)
	if sock == nil || sock.slot.sock != sock {
		_, _ = c.Discard(-1)
		return gnet.Close
	}
	s := sock.slot
	for {
		if !s.busy {
			if c.InboundBuffered() > 0 {
				s.sock = nil // bytes nobody asked for
				return gnet.Close
			}
			return gnet.None
		}
		if !s.written {
			e.write(s)
			if s.sock != sock {
				return gnet.None // the write failed and closed the connection
			}
		}
		buf, _ := c.Peek(-1)
		if len(buf) == 0 {
			return gnet.None
		}
		n, done, err := s.p.feed(buf)
		if n > 0 {
			_, _ = c.Discard(n) // never Discard(0): it discards everything
		}
		w := e.workers[s.worker]
		if err != nil {
			s.sock = nil
			e.finish(w, s, 0, err)
			if sock.answered {
				e.issue(w, true)
			} else {
				e.pause(w)
			}
			return gnet.Close
		}
		if !done {
			return gnet.None
		}
		sock.answered = true
		closeAfter := s.p.closeAfter
		if closeAfter {
			s.sock = nil
		}
		e.finish(w, s, s.p.status, nil)
		e.issue(w, true)
		if closeAfter {
			return gnet.Close
		}
		if s.sock != sock {
			return gnet.None // the next request's write failed and closed the connection
		}
	}
}

// OnClose counts the request in flight on a connection that closed, and sends the worker's
// next one on a new connection.
func (e *loopEngine) OnClose(c gnet.Conn, err error) gnet.Action {
	e.enter()
	defer e.leave()
	sock, _ := c.Context().(*loopSock)
	if sock == nil || sock.slot.sock != sock {
		return gnet.None
	}
	s := sock.slot
	s.sock = nil
	w := e.workers[s.worker]
	if !s.busy || w.cur != s {
		return gnet.None
	}
	if s.p.state == stUntilClose {
		e.finish(w, s, s.p.status, nil) // the body ran until the close
		e.issue(w, true)
		return gnet.None
	}
	if err == nil {
		err = errLoopClosed
	} else {
		err = fmt.Errorf("%w: %w", errLoopClosed, err)
	}
	e.finish(w, s, 0, err)
	if sock.answered {
		e.issue(w, true) // a keep-alive connection the server closed: try a new one at once
	} else {
		e.pause(w)
	}
	return gnet.None
}

// OnTick counts the requests older than Config.Timeout as transport errors, closes their
// connections and sends the workers' next requests.
func (e *loopEngine) OnTick() (time.Duration, gnet.Action) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.active == nil {
		return tickEvery, gnet.None
	}
	now := time.Now()
	for _, w := range e.workers {
		s := w.cur
		if s == nil || now.Sub(s.start) <= e.cfg.Timeout {
			continue
		}
		e.drop(s)
		e.finish(w, s, 0, errLoopTimeout)
		e.issue(w, false)
	}
	return tickEvery, gnet.None
}

// header looks up the first value of the field name in the answer just completed on s.
func (s *loopSlot) header(name string) string {
	p := &s.p
	for _, f := range p.fields {
		if h1.EqualFold(p.hdr[f.name:f.nameEnd], name) {
			return string(p.hdr[f.value:f.valueEnd])
		}
	}
	return ""
}

// splitURL splits an http URL into its authority (host[:port]) and request target (path and
// query, "/" when empty); the fragment is dropped.
func splitURL(raw string) (authority, target string, err error) {
	const scheme = "http://"
	if len(raw) < len(scheme) || !strings.EqualFold(raw[:len(scheme)], scheme) {
		if len(raw) >= len("https://") && strings.EqualFold(raw[:len("https://")], "https://") {
			return "", "", fmt.Errorf("url %q: https is not supported by engine %q", raw, EngineLoop)
		}
		return "", "", fmt.Errorf("url %q: want http://host[:port]/path", raw)
	}
	rest := raw[len(scheme):]
	authority, target = rest, "/"
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, target = rest[:i], rest[i:]
	}
	if i := strings.IndexByte(target, '#'); i >= 0 {
		target = target[:i]
	}
	if target == "" || target[0] != '/' {
		target = "/" + target
	}
	if authority == "" || strings.ContainsAny(authority, "@ ") {
		return "", "", fmt.Errorf("url %q: want http://host[:port]/path", raw)
	}
	for i := 0; i < len(target); i++ {
		if c := target[i]; c <= ' ' || c == 0x7f {
			return "", "", fmt.Errorf("url %q: unescaped byte %#x in the path", raw, c)
		}
	}
	return authority, target, nil
}

// dialAddr is authority with port 80 when it has none.
func dialAddr(authority string) string {
	if _, _, err := net.SplitHostPort(authority); err == nil {
		return authority
	}
	return net.JoinHostPort(strings.Trim(authority, "[]"), "80")
}

// checkRequest rejects a method or header fields that would break the request's framing.
func checkRequest(method string, h http.Header) error {
	if strings.ContainsAny(method, " \r\n") {
		return fmt.Errorf("method %q", method)
	}
	for k, vs := range h {
		if k == "" || strings.ContainsAny(k, " :\r\n") {
			return fmt.Errorf("header field name %q", k)
		}
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n") {
				return fmt.Errorf("header field %s: value %q", k, v)
			}
		}
	}
	return nil
}

// appendRequest appends an HTTP/1.1 request to b: the request line, Host, the header fields
// (but Host and Content-Length), Content-Length when there is a body (or the method expects
// one), and the body.
func appendRequest(b []byte, method, target, host string, h http.Header, body []byte) []byte {
	b = append(b, method...)
	b = append(b, ' ')
	b = append(b, target...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, "\r\n"...)
	for k, vs := range h {
		if h1.EqualFold(k, "Host") || h1.EqualFold(k, "Content-Length") {
			continue
		}
		for _, v := range vs {
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	if body != nil || method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(body)), 10)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	return append(b, body...)
}

// States of answerParser.
const (
	stStatus     = iota // the status line
	stHeader            // header field lines
	stBody              // remain bytes of a Content-Length body
	stChunkSize         // a chunk's size line
	stChunkData         // remain bytes of a chunk
	stChunkEnd          // the CRLF after a chunk
	stTrailer           // trailer lines after the last chunk
	stUntilClose        // a body delimited by the connection's close
	stDone
)

// answerParser reads one HTTP/1.x answer incrementally: status, framing (Content-Length,
// chunked, or until the close), Connection: close; 1xx answers are skipped. With keep, the
// head's field lines are kept (copied) for header lookups until the next reset.
type answerParser struct {
	state      int
	status     int
	head       bool // the request was a HEAD: no body
	keep       bool
	http10     bool
	keepAlive  bool // Connection: keep-alive (for HTTP/1.0)
	closeAfter bool
	chunked    bool
	haveLength bool
	length     int64
	remain     int64
	headSize   int
	hdr        []byte
	fields     []answerField
}

// answerField locates one field line's name and value in answerParser.hdr.
type answerField struct{ name, nameEnd, value, valueEnd int }

// reset prepares p for the answer to a new request.
func (p *answerParser) reset(head, keep bool) {
	*p = answerParser{head: head, keep: keep, hdr: p.hdr[:0], fields: p.fields[:0]}
}

// feed consumes the answer's bytes at the start of b. It returns how many it used (an
// incomplete line is left for the next call, with more bytes), whether the answer is complete,
// and an error when it is malformed. Bytes after a complete answer are not used.
func (p *answerParser) feed(b []byte) (int, bool, error) {
	n := 0
	for n < len(b) {
		switch p.state {
		case stBody, stChunkData:
			k := int(min(int64(len(b)-n), p.remain))
			n += k
			p.remain -= int64(k)
			if p.remain > 0 {
				return n, false, nil
			}
			if p.state == stBody {
				p.state = stDone
				return n, true, nil
			}
			p.state = stChunkEnd
		case stUntilClose:
			return len(b), false, nil
		case stDone:
			return n, true, nil
		default:
			i := bytes.IndexByte(b[n:], '\n')
			if i < 0 {
				if len(b)-n > maxAnswerLine {
					return n, false, fmt.Errorf("%w: a line longer than %d bytes", errLoopMalformed, maxAnswerLine)
				}
				return n, false, nil
			}
			line := b[n : n+i]
			n += i + 1
			if k := len(line); k > 0 && line[k-1] == '\r' {
				line = line[:k-1]
			}
			done, err := p.line(line)
			if err != nil {
				return n, false, err
			}
			if done {
				p.state = stDone
				return n, true, nil
			}
		}
	}
	return n, p.state == stDone, nil
}

// line handles one line of a line-based state; done means the answer is complete.
func (p *answerParser) line(line []byte) (bool, error) {
	if p.state == stStatus || p.state == stHeader {
		if p.headSize += len(line) + 2; p.headSize > maxAnswerHead {
			return false, fmt.Errorf("%w: a head longer than %d bytes", errLoopMalformed, maxAnswerHead)
		}
	}
	switch p.state {
	case stStatus:
		// HTTP/1.x SP 3DIGIT [SP reason]
		if len(line) < 12 || string(line[:7]) != "HTTP/1." || (line[7] != '0' && line[7] != '1') || line[8] != ' ' ||
			(len(line) > 12 && line[12] != ' ') {
			return false, fmt.Errorf("%w: status line %q", errLoopMalformed, truncate(line))
		}
		code := 0
		for _, c := range line[9:12] {
			if c < '0' || c > '9' {
				return false, fmt.Errorf("%w: status line %q", errLoopMalformed, truncate(line))
			}
			code = code*10 + int(c-'0')
		}
		if code < 100 {
			return false, fmt.Errorf("%w: status %d", errLoopMalformed, code)
		}
		p.status, p.http10 = code, line[7] == '0'
		p.keepAlive, p.closeAfter, p.chunked, p.haveLength = false, false, false, false
		p.hdr, p.fields = p.hdr[:0], p.fields[:0]
		p.state = stHeader
	case stHeader:
		if len(line) == 0 {
			return p.endOfHead()
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || bytes.ContainsAny(line[:colon], " \t") {
			return false, fmt.Errorf("%w: header line %q", errLoopMalformed, truncate(line))
		}
		name, value := line[:colon], bytes.Trim(line[colon+1:], " \t")
		switch {
		case h1.EqualFold(name, "Content-Length"):
			v := int64(h1.Atoi(value))
			if v < 0 || (p.haveLength && v != p.length) {
				return false, fmt.Errorf("%w: Content-Length %q", errLoopMalformed, truncate(value))
			}
			p.length, p.haveLength = v, true
		case h1.EqualFold(name, "Transfer-Encoding"):
			p.chunked = h1.HasToken(value, "chunked")
		case h1.EqualFold(name, "Connection"):
			if h1.HasToken(value, "close") {
				p.closeAfter = true
			}
			if h1.HasToken(value, "keep-alive") {
				p.keepAlive = true
			}
		}
		if p.keep {
			at := len(p.hdr)
			p.hdr = append(p.hdr, name...)
			p.hdr = append(p.hdr, value...)
			p.fields = append(p.fields, answerField{at, at + len(name), at + len(name), len(p.hdr)})
		}
	case stChunkSize:
		size := line
		if i := bytes.IndexByte(size, ';'); i >= 0 {
			size = size[:i]
		}
		v, ok := parseHex(bytes.Trim(size, " \t"))
		if !ok {
			return false, fmt.Errorf("%w: chunk size %q", errLoopMalformed, truncate(line))
		}
		if v == 0 {
			p.state = stTrailer
		} else {
			p.remain, p.state = v, stChunkData
		}
	case stChunkEnd:
		if len(line) != 0 {
			return false, fmt.Errorf("%w: no CRLF after a chunk", errLoopMalformed)
		}
		p.state = stChunkSize
	case stTrailer:
		if len(line) == 0 {
			return true, nil
		}
	}
	return false, nil
}

// endOfHead decides how the body is delimited once the head is read.
func (p *answerParser) endOfHead() (bool, error) {
	if p.status < 200 {
		p.state = stStatus // 1xx: the real answer follows
		return false, nil
	}
	if p.http10 && !p.keepAlive {
		p.closeAfter = true
	}
	switch {
	case p.head || p.status == http.StatusNoContent || p.status == http.StatusNotModified:
		return true, nil
	case p.chunked:
		p.state = stChunkSize
	case p.haveLength:
		if p.length == 0 {
			return true, nil
		}
		p.remain, p.state = p.length, stBody
	default:
		p.state, p.closeAfter = stUntilClose, true
	}
	return false, nil
}

// parseHex parses a non-empty run of hex digits below 2^60.
func parseHex(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var v int64
	for _, c := range b {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		v = v<<4 | int64(d)
	}
	return v, true
}

// truncate is b as a string for an error message, cut at 64 bytes.
func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}
