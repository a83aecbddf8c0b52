package router

// The event-loop front (issue 16, first stage; docs/router.md, "The event-loop front"): the
// router's /v1 hot path served on github.com/panjf2000/gnet/v2's event loops, with no goroutine
// per connection or per request, and a non-blocking hop to the API nodes on the same loop.
//
// The loop serves natively only what it can serve to the letter: a GET, HEAD, POST, PUT, PATCH
// or DELETE of /v1/… (not a change stream), HTTP/1.1, with a strictly valid head within the
// limits and all of its body (if any) arrived with it. Every
// other request — and so its connection, from that request on — is detached: the socket is
// taken out of the loop (a dup of its descriptor) with the bytes already read, and handed to
// the router's own net/http server, which serves it for the rest of its life exactly as it
// serves -listen's connections (its timeouts, limits and answers are the same code).
//
// A native request runs the router's own steps (the same functions as proxy, on a gin context
// whose writer buffers the answer): request id, authentication and scope, rate limit, route,
// admission, the edge, the decision, the pick with its breakers, the hop's request (prepareHop),
// the answer's verdict and fields (copyResponse's rules, on bytes: loop_wire.go), metrics and the
// log line (observeBegin/End). A step that
// may block runs off the loop in a goroutine and comes back with EventLoop.Execute: a rate
// limit that needs Redis, an edge lookup the router's copy cannot answer, and anything after a
// first attempt that failed, was answered 421 or (a write) fenced (forwardFrom, forward's own
// loop, takes the request up there).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/panjf2000/gnet/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http/httpguts"

	"github.com/meridian-dev/meridian/internal/gnetlog"
	"github.com/meridian-dev/meridian/internal/h1"
	"github.com/meridian-dev/meridian/internal/upstream"
)

// DefaultLoops is the event loops a front runs unless told: one per CPU the runtime uses
// (GOMAXPROCS) but one, and at least one. A loop waits for its sockets in epoll_wait, a system
// call, holding its P; with every P held so, the runtime's monitor takes them back from the
// waiting loops and hands them to other threads, which find nothing to run and park again —
// futex wake-ups and sleeps at every turn of the loops (2.85 context switches per forwarded
// GET with two loops on two CPUs, 1.36 with one; CPU per request 107 → 84–89 µs, docs/router.md).
// The P left free runs the router's goroutines: steps off the loop, Raft, gossip, metrics.
func DefaultLoops() int { return max(1, runtime.GOMAXPROCS(0)-1) }

// LoopConfig configures the event-loop front (Server.StartLoop).
type LoopConfig struct {
	// Addr is the host:port to listen on (port 0: any).
	Addr string
	// Loops is the number of event loops; 0: DefaultLoops.
	Loops int
	// HTTP serves the connections the loop detaches: the router's own server (its Handler the
	// Server's, its timeouts and limits internal/daemon's HTTPLimits). Its ReadHeaderTimeout,
	// IdleTimeout and MaxHeaderBytes bound the loop's own connections too.
	HTTP *http.Server
}

// Loop is a running event-loop front.
type Loop struct {
	s      *Server
	eng    gnet.Engine
	addr   string
	detach *detachListener
	base   context.Context // parent of the requests' contexts; ends at Stop
	end    context.CancelFunc
	done   chan error    // gnet.Run's outcome
	exited chan struct{} // closed when gnet.Run has returned

	maxHead       int
	maxQueued     int // most bytes a connection may have sent ahead of what is served
	headerTimeout time.Duration
	idleTimeout   time.Duration

	mu    sync.Mutex
	conns map[*loopConn]struct{} // for the sweeper

	upAddrs sync.Map // API node base URL → *hopAddr (false: not a plain http:// URL)
	pools   sync.Map // gnet.EventLoop → *loopPool: each loop's idle hop connections

	requests    *prometheus.CounterVec
	native      prometheus.Counter
	edge        prometheus.Counter
	offloop     prometheus.Counter
	detached    prometheus.Counter
	returned    prometheus.Counter
	connections prometheus.Gauge

	booted chan error

	serving  atomic.Bool // Serve has begun: s and the limits above are set
	draining atomic.Bool // Shutdown has begun
	stopOnce sync.Once
	stopErr  error
}

// StartLoop starts the event-loop front on cfg.Addr and returns once it listens and serves:
// ListenLoop, then Serve.
func (s *Server) StartLoop(cfg LoopConfig) (*Loop, error) {
	if cfg.HTTP == nil {
		return nil, errors.New("router: loop: no HTTP server for detached connections")
	}
	l, err := ListenLoop(cfg.Addr, cfg.Loops, s.cfg.Logger)
	if err != nil {
		return nil, err
	}
	if err := l.Serve(s, cfg.HTTP); err != nil {
		_ = l.Stop(context.Background())
		return nil, err
	}
	return l, nil
}

// loopPreServeMax is the most a client may send before the front serves (Serve): its bytes wait
// in the loop's buffer, as they would in the kernel's before net/http's first Accept.
const loopPreServeMax = 1 << 20

// ListenLoop binds the event-loop front on addr (port 0: any) with loops event loops (0:
// DefaultLoops) and returns once it listens, before it serves: the router binds its listener
// first, for the address it advertises, and builds the Server after. Connections it accepts
// until Serve wait, their requests unread, as they would in the kernel's queue before net/http
// serves a listener. Stop closes it, served or not.
func ListenLoop(addr string, loops int, logger *slog.Logger) (*Loop, error) {
	if loops <= 0 {
		loops = DefaultLoops()
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &Loop{done: make(chan error, 1), exited: make(chan struct{}), booted: make(chan error, 1),
		conns: map[*loopConn]struct{}{}}
	l.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_router_loop_requests_total",
		Help: "Requests the event-loop front took, by path: native (served on a loop), edge (an edge lookup made off the loop: the router's copy of the cache lacked a key), offloop (a step after a failed or misdirected first attempt, or a rate limit that needed Redis, made off the loop), detached (the connection handed to net/http)."},
		[]string{"path"})
	l.connections = prometheus.NewGauge(prometheus.GaugeOpts{Name: "meridian_router_loop_connections",
		Help: "Client connections the event-loop front serves (detached ones not counted)."})
	l.returned = prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_router_loop_returned_total",
		Help: "Detached connections net/http handed back to the event-loop front between two requests, once it had answered the ones it was handed."})
	l.base, l.end = context.WithCancel(context.Background())
	l.detach = newDetachListener()
	go func() {
		// SO_REUSEADDR, as net.Listen sets it: a router restarted on its port must bind it while
		// the connections its predecessor closed wait out TIME_WAIT there.
		err := gnet.Run(l, "tcp://"+addr, gnet.WithMulticore(true), gnet.WithNumEventLoop(loops),
			gnet.WithTCPNoDelay(gnet.TCPNoDelay), gnet.WithReuseAddr(true), gnet.WithLogger(gnetlog.Logger{L: logger, Prefix: "event loop: "}))
		select {
		case l.booted <- err:
		default:
		}
		l.done <- err
		close(l.exited)
	}()
	if err := <-l.booted; err != nil {
		l.end()
		_ = l.detach.Close()
		return nil, fmt.Errorf("router: loop: %w", err)
	}
	return l, nil
}

// Serve starts serving the loop's connections with s's steps, the ones that waited since
// ListenLoop first; hs serves the connections the loop detaches (the router's own server: its
// Handler the Server's, its timeouts and limits internal/daemon's HTTPLimits), and its
// ReadHeaderTimeout, IdleTimeout and MaxHeaderBytes bound the loop's own connections too. Once
// only.
func (l *Loop) Serve(s *Server, hs *http.Server) error {
	if hs == nil {
		return errors.New("router: loop: no HTTP server for detached connections")
	}
	if l.s != nil {
		return errors.New("router: loop: already serving")
	}
	l.s = s
	l.maxHead, l.headerTimeout, l.idleTimeout = hs.MaxHeaderBytes, hs.ReadHeaderTimeout, hs.IdleTimeout
	if l.maxHead <= 0 {
		l.maxHead = http.DefaultMaxHeaderBytes
	}
	l.maxHead += 4096 // net/http's slack above MaxHeaderBytes (its 431 comes from there)
	l.maxQueued = l.maxHead + int(min(s.cfg.MaxBody, 64<<20)) + 64<<10
	if l.headerTimeout <= 0 {
		l.headerTimeout = 5 * time.Second
	}
	if l.idleTimeout <= 0 {
		l.idleTimeout = 2 * time.Minute
	}
	if err := registerLoop(s.cfg.Registry, l); err != nil {
		return err
	}
	handBack(hs)
	l.native, l.edge = l.requests.WithLabelValues("native"), l.requests.WithLabelValues("edge")
	l.offloop, l.detached = l.requests.WithLabelValues("offloop"), l.requests.WithLabelValues("detached")
	go func() { _ = hs.Serve(l.detach) }()
	go l.sweep()
	// The connections that came before: counted from now, and woken to read what they sent.
	l.mu.Lock()
	l.serving.Store(true)
	for lc := range l.conns {
		lc.counted = true
		l.connections.Inc()
		_ = lc.c.Wake(nil)
	}
	l.mu.Unlock()
	return nil
}

// registerLoop registers the loop's metrics, or takes the ones registered already (a second
// loop of the same Server shares them).
func registerLoop(reg prometheus.Registerer, l *Loop) (err error) {
	if l.requests, err = registerOrShare(reg, l.requests); err != nil {
		return err
	}
	if l.connections, err = registerOrShare(reg, l.connections); err != nil {
		return err
	}
	l.returned, err = registerOrShare(reg, l.returned)
	return err
}

// registerOrShare registers c, or returns the collector registered already in its place.
func registerOrShare[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		return are.ExistingCollector.(C), nil
	}
	return c, err
}

// Exited is closed when the loop's engine has stopped: after Stop, or on its own when it failed.
func (l *Loop) Exited() <-chan struct{} { return l.exited }

// Addr is the host:port the loop listens on.
func (l *Loop) Addr() string { return l.addr }

// Stop closes the loop's listener and connections (requests in flight end with them) and the
// listener of detached connections; the HTTP server's own Shutdown ends those it serves.
func (l *Loop) Stop(ctx context.Context) error {
	l.stopOnce.Do(func() {
		l.end()
		_ = l.detach.Close()
		l.stopErr = l.eng.Stop(ctx)
		select {
		case <-l.done:
		case <-ctx.Done():
		}
	})
	return l.stopErr
}

// Shutdown drains the loop as net/http's Server.Shutdown drains its connections: new
// connections are refused, idle ones closed, and each request in flight finishes — its answer
// says Connection: close and the connection closes after it; then, or when ctx ends, Stop.
func (l *Loop) Shutdown(ctx context.Context) error {
	l.draining.Store(true)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		l.mu.Lock()
		n := len(l.conns)
		for lc := range l.conns {
			if !lc.woken.Swap(true) {
				_ = lc.c.Wake(nil) // on its loop: closed if idle, else after its answer
			}
		}
		l.mu.Unlock()
		if n == 0 {
			return l.Stop(ctx)
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), l.Stop(context.Background()))
		case <-t.C:
		}
	}
}

// sweep closes the loop's connections that sat idle longer than the idle timeout, or took
// longer than the header timeout to send a request's head (the net/http server's rules).
func (l *Loop) sweep() {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-l.base.Done():
			return
		case now := <-t.C:
			n := now.UnixNano()
			l.mu.Lock()
			for lc := range l.conns {
				if lc.busy.Load() {
					continue
				}
				if h := lc.headSince.Load(); h != 0 && n-h > int64(l.headerTimeout) ||
					n-lc.active.Load() > int64(l.idleTimeout) {
					_ = lc.c.Close()
				}
			}
			l.mu.Unlock()
		}
	}
}

// loopConn is a client connection's state; only its loop touches it but for the atomics.
type loopConn struct {
	c          gnet.Conn
	peer       string
	req        *loopReq // the request in flight
	closed     bool
	closeAfter bool
	out        []byte
	hopBytes   []byte         // the hop's request being sent (reused)
	ip         string         // the peer's IP, as gin's ClientIP gives it without trusted proxies
	detachWait time.Duration  // detachConn's last wait for an answer to go out
	gc         *gin.Context   // the requests' context, one at a time (context)
	w          loopWriter     // gc's writer
	st         reqState       // the request's state (begin resets it)
	deadline   *time.Timer    // the first attempt's deadline, for the request in flight (hop)
	scratch    *nativeScratch // what the next request is parsed into (nil: a new one)

	counted bool // in the connections gauge (under Loop.mu: a connection opened before Serve is counted there)

	busy      atomic.Bool  // a request is in flight (the sweeper leaves it alone)
	woken     atomic.Bool  // Shutdown has woken it
	active    atomic.Int64 // unix nanoseconds of the last request's end (or the open)
	headSince atomic.Int64 // when the first bytes of a head not yet complete arrived; 0: none
}

// context is the gin context, writer and state for the connection's next request: made once
// per connection, reset per request as gin's own pool does (the fields the router's steps use:
// Keys, Errors, Params, Accepted; its handlers never run on the loop).
func (lc *loopConn) context(s *Server, r *http.Request) (*gin.Context, *loopWriter, *reqState) {
	lc.st = reqState{}
	w := &lc.w
	w.reset()
	w.st = &lc.st
	if lc.gc == nil {
		lc.gc = gin.CreateTestContextOnly(w, s.engine)
	}
	gc := lc.gc
	gc.Writer = w
	gc.Request = r
	clear(gc.Keys)
	gc.Errors, gc.Params, gc.Accepted = gc.Errors[:0], gc.Params[:0], nil
	return gc, w, w.st
}

// loopUp is a hop connection to an API node, on one loop: idle in that loop's pool, or carrying
// one request.
type loopUp struct {
	pool    *loopPool
	addr    string
	c       gnet.Conn // nil while dialling
	req     *loopReq  // the request in flight on it
	served  bool      // it has answered a request
	got     bool      // bytes of the answer in flight have arrived
	closed  bool
	retired bool // closed by us: its close is no failure of anybody's request
}

// loopReq is one native request.
type loopReq struct {
	lc     *loopConn
	gc     *gin.Context
	w      *loopWriter
	st     *reqState // the connection's
	start  time.Time
	isHead bool

	p     Principal
	class string
	route Route
	slots *tenantSlots

	d           Decision
	up          Upstream
	hop         *loopUp
	reused      bool
	resent      bool
	sentAt      time.Time
	deadline    time.Time
	traceparent string
	timed       bool   // the connection's deadline timer runs for this request's first attempt
	misdirected uint64 // a 421's X-Shardmap-Version, for the wait on the map

	body []byte // the request's body, all of it

	// coldColl and coldID name the record of an edge lookup that found it cold: warmed after a
	// 200 from the node.
	coldColl, coldID string

	off    bool // a step runs off the loop
	cancel context.CancelFunc
}

var _ gnet.EventHandler = (*Loop)(nil)

// OnBoot learns the listener's address (port 0 chosen by the kernel).
func (l *Loop) OnBoot(eng gnet.Engine) gnet.Action {
	l.eng = eng
	fd, err := eng.Dup()
	if err != nil {
		l.booted <- err
		return gnet.Shutdown
	}
	f := os.NewFile(uintptr(fd), "listener")
	ln, err := net.FileListener(f)
	_ = f.Close()
	if err != nil {
		l.booted <- err
		return gnet.Shutdown
	}
	l.addr = ln.Addr().String()
	_ = ln.Close()
	l.booted <- nil
	return gnet.None
}

func (l *Loop) OnShutdown(gnet.Engine) {}

func (l *Loop) OnTick() (time.Duration, gnet.Action) { return time.Hour, gnet.None }

func (l *Loop) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	if u, ok := c.Context().(*loopUp); ok { // a hop connection we dialled
		u.c = c
		if rq := u.req; rq != nil && !u.retired && !rq.lc.closed {
			raceReleaseIO()
			return rq.lc.hopBytes, gnet.None
		}
		u.retired = true // its request is gone (its client left, or it failed elsewhere)
		return nil, gnet.Close
	}
	if l.draining.Load() {
		return nil, gnet.Close // shutting down: no new connections
	}
	if _, ok := c.Context().(returnedConn); ok {
		l.returned.Inc()
	}
	lc := &loopConn{c: c}
	if a := c.RemoteAddr(); a != nil {
		lc.peer = a.String()
		if ta, ok := a.(*net.TCPAddr); ok {
			lc.ip = ta.IP.String()
		}
	}
	lc.active.Store(time.Now().UnixNano())
	c.SetContext(lc)
	l.mu.Lock()
	l.conns[lc] = struct{}{}
	if l.serving.Load() {
		lc.counted = true
		l.connections.Inc()
	}
	l.mu.Unlock()
	return nil, gnet.None
}

func (l *Loop) OnClose(c gnet.Conn, _ error) gnet.Action {
	raceAcquireIO()
	switch x := c.Context().(type) {
	case *loopConn:
		x.closed = true
		l.mu.Lock()
		delete(l.conns, x)
		if x.counted {
			l.connections.Dec()
		}
		l.mu.Unlock()
		if rq := x.req; rq != nil {
			if u := rq.hop; u != nil {
				// Its answer would come for nobody: the connection goes too.
				u.retired, u.req, rq.hop = true, nil, nil
				if u.c != nil {
					_ = u.c.Close()
				}
			}
			l.abandon(rq)
		}
	case *loopUp:
		l.hopClosed(x)
	}
	return gnet.None
}

func (l *Loop) OnTraffic(c gnet.Conn) gnet.Action {
	raceAcquireIO()
	switch x := c.Context().(type) {
	case *loopConn:
		if !l.serving.Load() {
			// Not served yet (ListenLoop without Serve): the request waits in the buffer, which
			// Serve's wake-up reads; a client that sends more than loopPreServeMax meanwhile
			// is cut off.
			if x.c.InboundBuffered() > loopPreServeMax || l.draining.Load() {
				return gnet.Close
			}
			return gnet.None
		}
		return l.request(x)
	case *loopUp:
		return l.answer(x)
	}
	return gnet.Close
}

// request takes the next request off a client connection: natively, or by detaching it.
func (l *Loop) request(lc *loopConn) gnet.Action {
	if lc.closed {
		return gnet.None
	}
	// The loop reads what a client sends whether or not it is served yet (net/http would stop
	// reading, and TCP would hold the client back): a client that sends more than the next
	// request's head and largest body while one is in flight is flooding, and is cut off.
	if lc.c.InboundBuffered() > l.maxQueued {
		return gnet.Close
	}
	if lc.req != nil { // pipelined: the next request waits until this answer is out
		return gnet.None
	}
	buf, _ := lc.c.Peek(-1)
	if len(buf) == 0 {
		if l.draining.Load() {
			return gnet.Close // idle while shutting down
		}
		return gnet.None
	}
	if lc.c.OutboundBuffered() > loopMaxUnread {
		// The client asks for more while it leaves this much of its answers unread: it is cut
		// off rather than let the loop hold its answers in memory without end.
		return gnet.Close
	}
	end := bytes.Index(buf, crlfcrlf)
	if end < 0 {
		if len(buf) > l.maxHead {
			return l.detachConn(lc)
		}
		if lc.headSince.Load() == 0 {
			lc.headSince.Store(time.Now().UnixNano())
		}
		return gnet.None
	}
	if end+4 > l.maxHead {
		return l.detachConn(lc)
	}
	if lc.scratch == nil {
		lc.scratch = new(nativeScratch)
	}
	r, closeAfter, cl, ok := parseNative(buf[:end+4], lc.scratch)
	if !ok {
		return l.detachConn(lc)
	}
	// A body is served natively when all of it came with the head (a small JSON body does):
	// one larger than the limit, or still on its way, is net/http's, with its 413 and its body
	// deadline.
	total := end + 4 + cl
	if int64(cl) > l.s.cfg.MaxBody || len(buf) < total {
		return l.detachConn(lc)
	}
	var body []byte
	if cl > 0 {
		body = bytes.Clone(buf[end+4 : total])
	}
	_, _ = lc.c.Discard(total)
	lc.headSince.Store(0)
	r.RemoteAddr = lc.peer
	lc.closeAfter = closeAfter
	l.native.Inc()
	l.begin(lc, r, body)
	return gnet.None
}

// detachConn hands the connection, from the request at the head of its buffer on, to the
// HTTP server. An answer still being written waits: its bytes must go out first; the loop looks
// again after 1 ms, then twice as long each time up to 100 ms (a client that does not read
// costs its loop a wake-up a tenth of a second, until the idle timeout closes it).
func (l *Loop) detachConn(lc *loopConn) gnet.Action {
	if lc.c.OutboundBuffered() > 0 {
		lc.detachWait = min(max(2*lc.detachWait, time.Millisecond), 100*time.Millisecond)
		c := lc.c
		time.AfterFunc(lc.detachWait, func() { _ = c.Wake(nil) })
		return gnet.None
	}
	buf, _ := lc.c.Peek(-1)
	pending := bytes.Clone(buf)
	fd, err := lc.c.Dup()
	if err != nil {
		return gnet.Close
	}
	f := os.NewFile(uintptr(fd), "client")
	nc, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		return gnet.Close
	}
	l.detached.Inc()
	raceReleaseIO()
	l.detach.hand(&prefixConn{Conn: nc, pending: pending, loop: l, el: lc.c.EventLoop()})
	return gnet.Close // closes the loop's descriptor; the socket lives on in nc
}

// begin starts a native request's steps.
func (l *Loop) begin(lc *loopConn, r *http.Request, body []byte) {
	s := l.s
	gc, w, st := lc.context(s, r)
	rq := &loopReq{lc: lc, gc: gc, w: w, st: st, start: time.Now(), isHead: r.Method == http.MethodHead, body: body}
	lc.req = rq
	lc.busy.Store(true)
	s.observeBegin(gc, st)
	if len(s.cfg.TrustedProxies) == 0 && lc.ip != "" {
		// Without trusted proxies the client IP is the peer's: worked out once per connection.
		st.ip, st.ipKnown = lc.ip, true
	}
	rq.class = Classify(r.Method, r.URL.Path)
	st.class = rq.class
	p, ok := s.authorize(gc)
	if !ok {
		l.finish(rq)
		return
	}
	rq.p = p
	rq.st.tenant = p.Tenant
	ok, decided := s.rateLimitNoWait(gc, p, rq.class)
	if !decided {
		l.offloop.Inc()
		l.offloopStep(rq, func() bool { return s.rateLimit(gc, p, rq.class) }, func() { l.admitted(rq) })
		return
	}
	if !ok {
		l.finish(rq)
		return
	}
	l.admitted(rq)
}

// admitted is the request's route, admission and edge, once its rate limit let it in.
func (l *Loop) admitted(rq *loopReq) {
	s, gc := l.s, rq.gc
	route, ok := s.lookup(gc, rq.p.Tenant)
	if !ok {
		l.finish(rq)
		return
	}
	rq.route = route
	slots, ok := s.admit(gc, rq.p.Tenant, route)
	if !ok {
		l.finish(rq)
		return
	}
	rq.slots = slots
	if coll, id, ok := s.edgeCandidate(gc, route); ok {
		if nw, can := s.cfg.Edge.(EdgeNoWait); can {
			if rec, res, decided := nw.RecordNoWait(rq.p.Tenant, route.Shard, route.Epoch, coll, id); decided {
				if res == "hit" && s.edgeRespond(gc, route, rec) {
					l.finish(rq)
					return
				}
				if res == edgeCold {
					rq.coldColl, rq.coldID = coll, id
				}
				l.hop(rq)
				return
			}
		}
		l.edge.Inc()
		// A hit answers (finish); a miss goes on to the hop.
		l.offloopStep(rq, func() bool { return !s.edgeAnswer(gc, rq.p.Tenant, route, coll, id) }, func() { l.hop(rq) })
		return
	}
	if rq.gc.Request.ContentLength > 0 {
		rq.st.bodyRead = true // readBody's mark: the body is in hand from here on
	}
	l.hop(rq)
}

// hop decides where the request goes and sends it, as forward's first attempt does.
func (l *Loop) hop(rq *loopReq) {
	s, gc, r := l.s, rq.gc, rq.gc.Request
	rq.deadline = time.Now().Add(s.cfg.UpstreamTimeout)
	d, ok := s.decide(gc, s.decisionInput(r, rq.route))
	if !ok {
		l.finish(rq)
		return
	}
	rq.d = d
	rq.traceparent = NextTraceparent(headerValue(r.Header, canonTraceparent))
	up, err := s.cfg.Upstreams.Pick(rq.d.Region, nil)
	if err != nil {
		l.resume(rq, resume{fail: &upstreamError{failure: upstream.Failure{NoNode: errors.Is(err, ErrNoUpstream)}, err: err}})
		return
	}
	addr, ok := l.upAddr(up.URL())
	if !ok { // not a plain http:// node: forward's transport speaks it
		up.Done(ErrNoVerdict)
		l.resume(rq, resume{})
		return
	}
	rq.sentAt = time.Now()
	left := rq.deadline.Sub(rq.sentAt)
	lc := rq.lc
	rq.up = up
	lc.hopBytes = appendHopRequest(lc.hopBytes[:0], rq, left) // one request at a time
	rq.timed = true
	if lc.deadline == nil {
		el := lc.c.EventLoop()
		lc.deadline = time.AfterFunc(left, func() {
			_ = el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
				// The request then in flight, if its deadline has passed: the timer is the
				// connection's, and may have fired for an earlier request.
				if rq := lc.req; rq != nil && rq.timed && rq.up != nil && !lc.closed && !time.Now().Before(rq.deadline) {
					l.hopFailed(rq, errDeadline, rq.hop == nil || rq.hop.c != nil)
				}
				return nil
			}))
		})
	} else {
		lc.deadline.Reset(left)
	}
	l.send(rq, addr)
}

// stopDeadline stops the timer of rq's first attempt, if it runs.
func (rq *loopReq) stopDeadline() {
	if rq.timed {
		rq.timed = false
		rq.lc.deadline.Stop()
	}
}

// send writes the hop's request on an idle hop connection to addr, or dials one.
func (l *Loop) send(rq *loopReq, addr *hopAddr) {
	lc := rq.lc
	key := addr.key
	el := lc.c.EventLoop()
	p := l.pool(el)
	if u := p.take(key); u != nil {
		rq.hop, u.req, u.got = u, rq, false
		rq.reused = u.served
		raceReleaseIO()
		if _, err := u.c.Write(rq.lc.hopBytes); err != nil {
			_ = u.c.Close() // hopClosed judges it
		}
		return
	}
	u := &loopUp{pool: p, addr: key, req: rq}
	rq.hop, rq.reused = u, false
	res, err := el.Register(gnet.NewContext(context.Background(), u), addr.tcp)
	if err != nil {
		l.dropUp(u)
		l.hopFailed(rq, err, false)
		return
	}
	go func() { // once per new hop connection: the dial's outcome
		r := <-res
		if r.Err == nil {
			return
		}
		_ = el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			l.dropUp(u)
			if rq2 := u.req; rq2 != nil && rq2.hop == u && lc.req == rq2 && !lc.closed {
				u.req = nil
				l.hopFailed(rq2, r.Err, false) // the dial failed: nothing was sent
			}
			return nil
		}))
	}()
}

func (l *Loop) dropUp(u *loopUp) {
	u.closed = true
	u.pool.remove(u)
}

// loopPool holds one loop's idle hop connections by node address; only that loop touches it.
type loopPool struct {
	idle map[string][]*loopUp
}

// loopMaxIdlePerNode is how many idle connections to one API node a loop keeps.
const loopMaxIdlePerNode = 256

// pool is el's pool.
func (l *Loop) pool(el gnet.EventLoop) *loopPool {
	if p, ok := l.pools.Load(el); ok {
		return p.(*loopPool)
	}
	p, _ := l.pools.LoadOrStore(el, &loopPool{idle: map[string][]*loopUp{}})
	return p.(*loopPool)
}

// take returns an idle open connection to key, or nil.
func (p *loopPool) take(key string) *loopUp {
	for list := p.idle[key]; len(list) > 0; list = p.idle[key] {
		u := list[len(list)-1]
		p.idle[key] = list[:len(list)-1]
		if !u.closed && !u.retired && u.c != nil {
			return u
		}
	}
	return nil
}

// put keeps u idle; false when the pool holds as many to its node as it may.
func (p *loopPool) put(u *loopUp) bool {
	if len(p.idle[u.addr]) >= loopMaxIdlePerNode {
		return false
	}
	p.idle[u.addr] = append(p.idle[u.addr], u)
	return true
}

func (p *loopPool) remove(u *loopUp) {
	list := p.idle[u.addr]
	for i, x := range list {
		if x == u {
			p.idle[u.addr] = append(list[:i], list[i+1:]...)
			return
		}
	}
}

// hopClosed: a hop connection closed. Under a request, as net/http's transport does, the
// request is sent once more on a new connection if the old one had served before and nothing of
// the answer came (a keep-alive connection the node closed while idle); otherwise the attempt
// failed.
func (l *Loop) hopClosed(u *loopUp) {
	l.dropUp(u)
	rq := u.req
	u.req = nil
	if rq == nil || u.retired || rq.hop != u || rq.lc.closed || rq.lc.req != rq {
		return
	}
	rq.hop = nil
	if rq.reused && !u.got && !rq.resent && upstream.Replayable(rq.gc.Request) {
		rq.resent = true
		addr, _ := l.upAddr(rq.up.URL())
		l.send(rq, addr)
		return
	}
	l.hopFailed(rq, errHopClosed, true)
}

var errHopClosed = errors.New("router: the API node closed the connection before its answer")

// hopFailed ends the native attempt as attempt does on a transport failure, then hands the
// request to forwardFrom off the loop (its retry policy decides; the deadline is the request's).
// sent: the request may have reached the node (its connection was open), which the retry
// policy weighs for a request that is not idempotent.
func (l *Loop) hopFailed(rq *loopReq, err error, sent bool) {
	s := l.s
	rq.stopDeadline()
	if u := rq.hop; u != nil {
		u.retired, u.req = true, nil
		rq.hop = nil
		if u.c != nil {
			_ = u.c.Close()
		}
		l.dropUp(u)
	}
	elapsed := time.Since(rq.sentAt)
	addUpstreamTime(rq.gc, elapsed)
	s.m.upstreamDurC.get(rq.d.Region).Observe(elapsed.Seconds())
	s.m.upstreamC.get(classCode{rq.d.Region, -1}).Inc()
	up := rq.up
	rq.up = nil
	e := &upstreamError{failure: upstream.Failure{Node: up.ID(), Sent: sent}, url: up.URL(), err: err}
	if errors.Is(err, errDeadline) {
		e.err = fmt.Errorf("%w (%v)", errDeadline, err)
	}
	up.Done(e.err)
	l.resume(rq, resume{fail: e})
}

// resume hands the request to forwardFrom off the loop, at rs (its deadline and traceparent
// filled in here): after a failed first attempt (rs.fail), after a 421 (rs.retried421: the
// wait for a newer map made first), after a write's fenced answer (rs.fenced: held first), or
// from the start of the hop (none: a request the native hop cannot send).
func (l *Loop) resume(rq *loopReq, rs resume) {
	s := l.s
	want := uint64(0)
	if rs.retried421 {
		want = rq.route.Version + 1
		if v := rq.misdirected; v != 0 {
			want = v
		}
	}
	rs.deadline, rs.traceparent = rq.deadline, rq.traceparent
	l.offloop.Inc()
	l.offloopStep(rq, func() bool {
		if rs.retried421 {
			ctx, cancel := context.WithTimeout(rq.gc.Request.Context(), s.cfg.MapWait)
			_ = s.cfg.Map.WaitVersion(ctx, want) // on timeout, retry with what we have
			cancel()
		}
		s.forwardFrom(rq.gc, rq.body, rq.p.Tenant, rq.route, rs)
		return false
	}, nil)
}

// answer reads the hop's answer; once whole, it goes to the client as copyResponse writes it.
func (l *Loop) answer(u *loopUp) gnet.Action {
	buf, _ := u.c.Peek(-1)
	if len(buf) == 0 {
		return gnet.None
	}
	u.got = true
	rq := u.req
	if rq == nil || rq.hop != u || rq.lc.closed {
		// Bytes nobody asked for (a node writing on an idle connection): the connection is
		// unusable, as the hop's idle-connection check has it.
		u.retired = true
		l.dropUp(u)
		return gnet.Close
	}
	a, ok := answerLength(buf, rq.isHead, l.maxHead)
	if !ok {
		l.hopFailed(rq, errors.New("router: malformed answer from the API node"), true)
		return gnet.None
	}
	if !a.complete {
		return gnet.None
	}
	s := l.s
	rq.stopDeadline()
	now := time.Now() // the answer's arrival: the hop's end, the request's and its log line's
	elapsed := now.Sub(rq.sentAt)
	addUpstreamTime(rq.gc, elapsed)
	s.m.upstreamDurC.get(rq.d.Region).Observe(elapsed.Seconds())
	s.m.upstreamC.get(classCode{rq.d.Region, a.status}).Inc()
	up := rq.up
	rq.up = nil
	rq.hop, u.req, u.served = nil, nil, true
	keep := !a.close && len(buf) == a.total
	if a.status == http.StatusMisdirectedRequest {
		rq.misdirected = a.mapVersion
		_, _ = u.c.Discard(a.total)
		up.Done(nil)
		s.m.misdirected.Inc()
		l.resume(rq, resume{retried421: true})
		return l.keepOrClose(u, keep)
	}
	if IsWrite(rq.gc.Request.Method) && s.hold.enabled() && a.status == http.StatusServiceUnavailable {
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(buf[:a.total])), nil)
		if err == nil && isFenced(resp) {
			// The tenant is being moved: forward's hold takes the write (hold.go).
			_, _ = u.c.Discard(a.total)
			up.Done(nil)
			l.resume(rq, resume{fenced: true})
			return l.keepOrClose(u, keep)
		}
	}
	// copyResponse's verdict and headers, on the node's bytes.
	var verdict error
	if nodeFault(a.status) {
		verdict = fmt.Errorf("%w: %d", errNodeFault, a.status)
	}
	up.Done(verdict)
	if rq.coldID != "" && a.status == http.StatusOK {
		if w, ok := s.cfg.Edge.(EdgeWarmer); ok {
			w.Warm(rq.p.Tenant, rq.coldColl, rq.coldID)
		}
	}
	rq.gc.Status(a.status)
	rq.lc.closeAfter = rq.lc.closeAfter || l.draining.Load()
	rq.lc.out = appendNodeAnswer(rq.lc.out[:0], buf[:a.total], rq, rq.lc.closeAfter)
	_, _ = u.c.Discard(a.total)
	l.send2client(rq, now)
	return l.keepOrClose(u, keep)
}

func (l *Loop) keepOrClose(u *loopUp, keep bool) gnet.Action {
	if keep && u.pool.put(u) {
		return gnet.None
	}
	u.retired = true
	l.dropUp(u)
	return gnet.Close
}

// offloopStep runs f off the loop; back on it, next runs if f returned true, else the request
// finishes with what f wrote. The client going away meanwhile cancels the request's context.
func (l *Loop) offloopStep(rq *loopReq, f func() bool, next func()) {
	if rq.cancel != nil {
		rq.cancel() // an earlier step's, which is over: its context leaves the base's children
	}
	ctx, cancel := context.WithCancel(l.base)
	rq.cancel = cancel
	rq.gc.Request = rq.gc.Request.WithContext(ctx)
	// The goroutine (and net/http's transport under forwardFrom) may hold the request's header
	// and URL past its answer: the connection's next request is parsed into new ones.
	rq.lc.scratch = nil
	rq.off = true
	el := rq.lc.c.EventLoop()
	go func() {
		goOn := f()
		back := func(context.Context) error {
			rq.off = false
			if rq.lc.closed || rq.lc.req != rq {
				l.release(rq)
				return nil
			}
			if goOn && next != nil {
				next()
				return nil
			}
			l.finish(rq)
			return nil
		}
		if err := el.Execute(context.Background(), gnet.RunnableFunc(back)); err != nil {
			l.release(rq) // the loop is shutting down with its connections
		}
	}()
}

// abandon ends a request whose client went away.
func (l *Loop) abandon(rq *loopReq) {
	if rq.cancel != nil {
		rq.cancel()
	}
	rq.stopDeadline()
	if rq.up != nil {
		rq.up.Done(fmt.Errorf("%w: the client went away", ErrNoVerdict))
		rq.up = nil
	}
	if rq.off {
		return // the step off the loop releases it when it is back
	}
	l.release(rq)
}

// release gives back the request's slot and records it (metrics, log line).
func (l *Loop) release(rq *loopReq) { l.releaseAt(rq, time.Now()) }

// releaseAt is release with the request's end read already.
func (l *Loop) releaseAt(rq *loopReq, now time.Time) {
	if rq.slots != nil {
		rq.slots.release(rq.p.Tenant)
		rq.slots = nil
	}
	if rq.cancel != nil {
		rq.cancel()
	}
	if rq.gc != nil {
		l.s.observeEndAt(rq.gc, rq.start, now)
		rq.gc = nil
	}
}

// finish writes the request's answer (its writer's) and readies the connection for its next
// request.
func (l *Loop) finish(rq *loopReq) {
	lc := rq.lc
	if rq.gc != nil {
		rq.gc.Writer.WriteHeaderNow()
	}
	lc.closeAfter = lc.closeAfter || l.draining.Load() // shutting down: the last answer
	if v := rq.w.h["Connection"]; len(v) > 0 && strings.EqualFold(v[0], "close") {
		lc.closeAfter = true // an answer before the body (sendProblem's rule)
	}
	lc.out = rq.w.appendAnswer(lc.out[:0], rq.isHead, lc.closeAfter)
	l.send2client(rq, time.Now())
}

// send2client writes lc.out, the request's answer, and readies the connection for its next
// request; now is the request's end.
func (l *Loop) send2client(rq *loopReq, now time.Time) {
	lc := rq.lc
	l.releaseAt(rq, now)
	lc.req = nil
	lc.busy.Store(false)
	lc.active.Store(now.UnixNano())
	if lc.closed {
		return
	}
	raceReleaseIO()
	if _, err := lc.c.Write(lc.out); err != nil || lc.closeAfter {
		_ = lc.c.Close()
		return
	}
	if lc.c.InboundBuffered() > 0 { // a pipelined request is waiting
		_ = lc.c.Wake(nil)
	}
}

// hopAddr is an API node's TCP address and its string, the key of the loop's idle hop
// connections (formatted once, not per request).
type hopAddr struct {
	tcp *net.TCPAddr
	key string
}

// upAddr is the TCP address of an API node's base URL, for plain http:// URLs.
func (l *Loop) upAddr(base string) (*hopAddr, bool) {
	if v, ok := l.upAddrs.Load(base); ok {
		a, _ := v.(*hopAddr)
		return a, a != nil
	}
	var a *hopAddr
	if hp, ok := strings.CutPrefix(base, "http://"); ok {
		hp = strings.TrimRight(hp, "/")
		if !strings.Contains(hp, "/") {
			if ta, err := net.ResolveTCPAddr("tcp", hp); err == nil {
				a = &hopAddr{tcp: ta, key: ta.String()}
			}
		}
	}
	if a == nil {
		l.upAddrs.Store(base, false)
		return nil, false
	}
	l.upAddrs.Store(base, a)
	return a, true
}

// loopWriter buffers a native request's answer. It is the gin context's ResponseWriter itself,
// with gin's own writer's rules (the status may change until the header is written, 200 unless
// set; a write writes the header), and is reused, like the context, by the connection's next
// request (reset).
type loopWriter struct {
	h       http.Header
	status  int
	written bool
	body    []byte
	st      *reqState // the request's state (stateOf), the connection's
}

var _ gin.ResponseWriter = (*loopWriter)(nil)

// reset readies w for a request: no fields, status 200, nothing written; the maps and buffers
// are kept.
func (w *loopWriter) reset() {
	if w.h == nil {
		w.h = make(http.Header, 8)
	}
	clear(w.h)
	w.status, w.written, w.body = http.StatusOK, false, w.body[:0]
}

func (w *loopWriter) Header() http.Header { return w.h }
func (w *loopWriter) WriteHeader(code int) {
	if code > 0 && !w.written {
		w.status = code
	}
}
func (w *loopWriter) WriteHeaderNow() { w.written = true }
func (w *loopWriter) Write(b []byte) (int, error) {
	w.written = true
	w.body = append(w.body, b...)
	return len(b), nil
}
func (w *loopWriter) WriteString(s string) (int, error) {
	w.written = true
	w.body = append(w.body, s...)
	return len(s), nil
}
func (w *loopWriter) Status() int   { return w.status }
func (w *loopWriter) Written() bool { return w.written }
func (w *loopWriter) Size() int {
	if !w.written {
		return -1
	}
	return len(w.body)
}
func (w *loopWriter) Flush()              {}
func (w *loopWriter) Pusher() http.Pusher { return nil }
func (w *loopWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, errors.New("router: a connection on the event loop cannot be hijacked")
}

// CloseNotify is gin's interface's; nothing on the router's paths uses it (a request's
// context says when its client went away).
func (w *loopWriter) CloseNotify() <-chan bool { return nil }

// appendAnswer formats the answer as net/http's server would for this handler's writes: the
// status line, the header (values with line breaks made spaces, invalid names left out), Date,
// Content-Type sniffed when the handler set none, Content-Length, the body (none for HEAD,
// 1xx, 204 and 304).
func (w *loopWriter) appendAnswer(b []byte, head, closeAfter bool) []byte {
	status := w.status
	if status == 0 {
		status = http.StatusOK
	}
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\n"...)
	bodyless := status < 200 || status == http.StatusNoContent || status == http.StatusNotModified
	b = appendFields(b, w.h)
	b = append(b, "Date: "...)
	b = appendDate(b)
	b = append(b, "\r\n"...)
	if _, ok := w.h["Content-Type"]; !ok && len(w.body) > 0 && !bodyless {
		b = append(b, "Content-Type: "...)
		b = append(b, http.DetectContentType(w.body)...)
		b = append(b, "\r\n"...)
	}
	if !bodyless {
		cl := strconv.Itoa(len(w.body))
		if head {
			if v := w.h["Content-Length"]; len(v) > 0 {
				cl = v[0]
			}
		}
		b = append(b, "Content-Length: "...)
		b = append(b, cl...)
		b = append(b, "\r\n"...)
	}
	if closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	if !head && !bodyless {
		b = append(b, w.body...)
	}
	return b
}

// appendFieldValue appends v with CR and LF as spaces and outer blanks trimmed (net/http's).
func appendFieldValue(b []byte, v string) []byte {
	v = textproto.TrimString(v)
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return b
}

// dateCache is the formatted Date of the current second.
var dateCache atomic.Pointer[dateStamp]

type dateStamp struct {
	sec int64
	s   string
}

func appendDate(b []byte) []byte {
	now := time.Now()
	d := dateCache.Load()
	if d == nil || d.sec != now.Unix() {
		d = &dateStamp{sec: now.Unix(), s: now.UTC().Format(http.TimeFormat)}
		dateCache.Store(d)
	}
	return append(b, d.s...)
}

var crlfcrlf = []byte("\r\n\r\n")

// loopMaxUnread is how many bytes of answers a connection may leave unread and still have its
// next request served.
const loopMaxUnread = 256 << 10

// nativeScratch is the request, URL, header map and values a connection's requests are parsed
// into: reused from one request to the next (four allocations fewer per request), but for a
// request with a step off the loop, whose goroutine may hold them past the answer
// (offloopStep gives the connection new ones).
type nativeScratch struct {
	r    http.Request
	u    url.URL
	h    http.Header
	vals []string
}

// parseNative parses a request head (its blank line included) the loop serves natively, into
// sc (reset here); ok is false for any other — which the loop then detaches for net/http to
// judge and answer. closeAfter: the client asked for the connection to close after the answer.
func parseNative(head []byte, sc *nativeScratch) (r *http.Request, closeAfter bool, contentLength int, ok bool) {
	i := bytes.Index(head, crlfcrlf[:2])
	line := head[:i]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 0 {
		return nil, false, 0, false
	}
	method := line[:sp1]
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 < 0 || string(rest[sp2+1:]) != "HTTP/1.1" {
		return nil, false, 0, false
	}
	target := rest[:sp2]
	mi := slices.IndexFunc(nativeMethods, func(m string) bool { return string(method) == m })
	if mi < 0 {
		return nil, false, 0, false
	}
	m := nativeMethods[mi] // the constant: no string made of the bytes
	if !nativeTarget(target) {
		return nil, false, 0, false
	}
	// One string of the whole head; names and values are its substrings (a canonical name is
	// its own canonical form: CanonicalMIMEHeaderKey returns it as it is), and the values'
	// one-element slices share one array: three allocations for any number of fields.
	hs := string(head)
	nf := bytes.Count(head, crlfcrlf[:2]) - 2
	if nf < 0 {
		return nil, false, 0, false
	}
	if sc.h == nil {
		sc.h = make(http.Header, nf)
	} else {
		clear(sc.h)
	}
	if cap(sc.vals) < nf {
		sc.vals = make([]string, nf)
	}
	h, vals := sc.h, sc.vals[:nf]
	clear(vals)
	host, hosts, f, lengths := "", 0, 0, 0
	for pos := i + 2; pos < len(head)-2; {
		e := bytes.Index(head[pos:], crlfcrlf[:2])
		l := head[pos : pos+e]
		c := bytes.IndexByte(l, ':')
		if c <= 0 {
			return nil, false, 0, false
		}
		name := l[:c]
		for _, b := range name {
			if !httpguts.IsTokenRune(rune(b)) {
				return nil, false, 0, false // also an obs-fold's leading blank
			}
		}
		vs, ve := pos+c+1, pos+e
		for vs < ve && (head[vs] == ' ' || head[vs] == '\t') {
			vs++
		}
		for ve > vs && (head[ve-1] == ' ' || head[ve-1] == '\t') {
			ve--
		}
		for _, b := range head[vs:ve] {
			if b < ' ' && b != '\t' || b == 0x7f {
				return nil, false, 0, false
			}
		}
		k := textproto.CanonicalMIMEHeaderKey(hs[pos : pos+c])
		v := hs[vs:ve]
		pos += e + 2
		switch k {
		case "Transfer-Encoding", "Expect", "Upgrade", "Trailer", "Te":
			return nil, false, 0, false
		case "Content-Length":
			// One, of digits only (net/http judges the rest: repeated, signed, spaced).
			n := h1.Atoi([]byte(v))
			if lengths++; lengths > 1 || n < 0 || len(v) > 10 {
				return nil, false, 0, false
			}
			contentLength = n
		case "Host":
			hosts++
			host = v
		case "Connection":
			for _, t := range strings.Split(v, ",") {
				if strings.EqualFold(strings.TrimSpace(t), "close") {
					closeAfter = true
				}
			}
		}
		if f >= len(vals) {
			return nil, false, 0, false
		}
		if prior, ok := h[k]; ok {
			h[k] = append(prior[:len(prior):len(prior)], v)
		} else {
			vals[f] = v
			h[k] = vals[f : f+1 : f+1]
		}
		f++
	}
	if hosts != 1 || !httpguts.ValidHostHeader(host) {
		return nil, false, 0, false
	}
	if contentLength > 0 && (m == http.MethodGet || m == http.MethodHead) {
		return nil, false, 0, false // a body on a read: net/http's to judge
	}
	// The URL as net/http's server parses it: the path has no escapes (nativeTarget), so it is
	// the target's path as it came; the query stays raw.
	uri := hs[sp1+1 : sp1+1+sp2]
	sc.u = url.URL{Path: uri}
	u := &sc.u
	if q := strings.IndexByte(uri, '?'); q >= 0 {
		u.Path, u.RawQuery = uri[:q], uri[q+1:]
		u.ForceQuery = u.RawQuery == ""
	}
	if strings.ContainsAny(u.Path, "!'()*[]") {
		// url keeps a path its escaping would change as RawPath (these are the bytes of
		// pathByte that url.PathEscape escapes), so that EscapedPath gives it back as it came.
		u.RawPath = u.Path
	}
	sc.r = http.Request{Method: m, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: h,
		Body: http.NoBody, ContentLength: int64(contentLength), Host: host, RequestURI: uri}
	return &sc.r, closeAfter, contentLength, true
}

// nativeMethods are the methods the loop serves itself.
var nativeMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// pathByte are the bytes a native target's path may hold: unreserved, sub-delims, ':', '@',
// '/', '[' and ']' (url's validEncoded; '%' left out, so no escapes).
var pathByte = func() (t [256]bool) {
	for _, c := range "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/[]" {
		t[c] = true
	}
	return t
}()

// nativeTarget: an origin-form target under /v1/ (not a change stream), printable ASCII, no
// fragment, no dot segment or empty segment (gin and net/http would judge those).
func nativeTarget(t []byte) bool {
	if !bytes.HasPrefix(t, []byte("/v1/")) || bytes.HasPrefix(t, []byte("/v1/changes")) {
		return false
	}
	p := t
	if q := bytes.IndexByte(p, '?'); q >= 0 {
		for _, b := range p[q+1:] { // the query goes on as it came (URL.RawQuery)
			if b <= ' ' || b >= 0x7f || b == '#' {
				return false
			}
		}
		p = p[:q]
	}
	for _, b := range p { // what URL.EscapedPath leaves as it came (no escapes: no '%')
		if !pathByte[b] {
			return false
		}
	}
	return !bytes.Contains(p, []byte("//")) && !bytes.Contains(p, []byte("/./")) &&
		!bytes.Contains(p, []byte("/../")) && !bytes.HasSuffix(p, []byte("/.")) &&
		!bytes.HasSuffix(p, []byte("/.."))
}

// nodeAnswer is what answerLength read of an API node's answer.
type nodeAnswer struct {
	total      int  // its length, head and body
	status     int  // its status
	complete   bool // the buffer holds all of it
	close      bool // Connection: close
	mapVersion uint64
}

// answerLength reads an API node's answer at the start of b; ok false for one the loop will not
// take (malformed, too large a head, delimited by the close, a 1xx).
func answerLength(b []byte, head bool, maxHead int) (a nodeAnswer, ok bool) {
	end := bytes.Index(b, crlfcrlf)
	if end < 0 {
		return a, len(b) <= maxHead
	}
	h := b[:end+2]
	i := bytes.Index(h, crlfcrlf[:2])
	line := h[:i]
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) || len(line) < 12 || len(line) > 12 && line[12] != ' ' {
		return a, false
	}
	a.status = h1.Atoi(line[9:12])
	if a.status < 200 || a.status > 999 {
		return a, false
	}
	length, chunked, hasLength := -1, false, false
	for pos := i + 2; pos < len(h); {
		e := bytes.Index(h[pos:], crlfcrlf[:2])
		l := h[pos : pos+e]
		pos += e + 2
		c := bytes.IndexByte(l, ':')
		if c <= 0 {
			return a, false
		}
		name, v := l[:c], textproto.TrimBytes(l[c+1:])
		switch {
		case h1.EqualFold(name, "Content-Length"):
			n := h1.Atoi(v)
			if n < 0 || hasLength && n != length {
				return a, false
			}
			length, hasLength = n, true
		case h1.EqualFold(name, "Transfer-Encoding"):
			if !h1.EqualFold(v, "chunked") {
				return a, false
			}
			chunked = true
		case h1.EqualFold(name, "Connection"):
			if h1.HasToken(v, "close") {
				a.close = true
			}
		case h1.EqualFold(name, HeaderShardmapVersion):
			if n := h1.Atoi(v); n > 0 {
				a.mapVersion = uint64(n)
			}
		}
	}
	body := end + 4
	switch {
	case head || a.status == http.StatusNoContent || a.status == http.StatusNotModified:
		a.total, a.complete = body, true
	case chunked && hasLength:
		return a, false
	case chunked:
		n, done, ok := h1.ChunkedLength(b[body:])
		a.total, a.complete = body+n, done
		return a, ok
	case hasLength:
		a.total, a.complete = body+length, len(b) >= body+length
	default:
		return a, false // delimited by the close: forward's transport takes it
	}
	return a, true
}

// detachListener is the net.Listener the HTTP server accepts detached connections from.
type detachListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newDetachListener() *detachListener {
	return &detachListener{ch: make(chan net.Conn, 256), done: make(chan struct{})}
}

// hand gives a connection to the server without blocking the loop.
func (d *detachListener) hand(c net.Conn) {
	select {
	case d.ch <- c:
		return
	default:
	}
	go func() {
		select {
		case d.ch <- c:
		case <-d.done:
			_ = c.Close()
		}
	}()
}

func (d *detachListener) Accept() (net.Conn, error) {
	select {
	case c := <-d.ch:
		return c, nil
	case <-d.done:
		return nil, net.ErrClosed
	}
}

func (d *detachListener) Close() error {
	d.once.Do(func() { close(d.done) })
	return nil
}

func (d *detachListener) Addr() net.Addr { return loopAddr{} }

type loopAddr struct{}

func (loopAddr) Network() string { return "loop" }
func (loopAddr) String() string  { return "event-loop front" }
