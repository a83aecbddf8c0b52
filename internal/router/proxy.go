package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/internal/upstream"
)

// Headers the router reads or sets.
const (
	HeaderRequestID       = "X-Request-Id"
	HeaderShardmapVersion = "X-Shardmap-Version"
	HeaderServedRegion    = "X-Served-Region"
	HeaderTraceparent     = "traceparent"
	HeaderIdempotencyKey  = "Idempotency-Key"
	// HeaderRequestTimeout tells an API node, in whole milliseconds, how long the router will
	// still wait for its answer; the node bounds its own deadline by it (docs/api.md).
	HeaderRequestTimeout = "X-Request-Timeout-Ms"
	// HeaderTenantEpoch carries the tenant's write epoch of the route a request was sent on
	// (Route.Epoch); an API node whose map or database knows a newer one refuses the write
	// with 421 (DESIGN.md §8). A client's own value is never passed on.
	HeaderTenantEpoch = "X-Tenant-Epoch"
)

// Canonical forms of header names the hot path reads or sets by map index: http.Header's Get
// and Set allocate a canonical copy of a name that is not canonical already, on every call.
const (
	canonTraceparent        = "Traceparent"     // HeaderTraceparent
	canonRateLimitLimit     = "Ratelimit-Limit" // RateLimit-Limit
	canonRateLimitRemaining = "Ratelimit-Remaining"
	canonRateLimitReset     = "Ratelimit-Reset"
)

// hopHeaders are connection-scoped headers that must not be forwarded (RFC 9110 §7.6.1).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// ctxState is the gin context's key of the request's *reqState (stateOf).
const ctxState = "meridian.request"

// proxy serves every /v1 request, in the order docs/router.md ("Request path") gives: nothing
// of the body is read before the caller has a valid token and scope, is within its limits and
// holds a concurrency slot.
func (s *Server) proxy(c *gin.Context) {
	r := c.Request
	class := Classify(r.Method, r.URL.Path)
	stateOf(c).class = class

	// 1. Authentication and scope, from the headers alone: the tenant is the token's claim,
	//    never the request's.
	p, ok := s.authorize(c)
	if !ok {
		return
	}
	stateOf(c).tenant = p.Tenant

	// 2. Rate limits; RateLimit-* go on every answer from here on.
	if !s.rateLimit(c, p, class) {
		return
	}

	// 3. Route: the tenant's shard and home region from the local map copy.
	route, ok := s.lookup(c, p.Tenant)
	if !ok {
		return
	}

	// 4. Admission (limits.go): a per-tenant concurrency slot (for a change stream a slot of
	//    the tenant's open streams), held until the answer is done, and load shedding by class.
	//    Before any upstream work.
	slots, ok := s.admit(c, p.Tenant, route)
	if !ok {
		return
	}
	defer slots.release(p.Tenant)

	// 5. The edge (edge.go): a plain record GET whose entry the region's cache holds, servable
	//    as the API node would serve it, is answered here.
	if s.serveEdge(c, p.Tenant, route) {
		return
	}

	// 6. Body: buffered (so retries can resend it), bounded in size here and in time by the
	//    HTTP server's body timeout (internal/daemon).
	body, ok := s.readBody(c)
	if !ok {
		return
	}

	// 7. Forward, within the request deadline until the response headers (a change stream's
	//    body then lasts as long as the client and the API node keep it open).
	s.forward(c, body, p.Tenant, route)
}

// authorize authenticates the bearer token and checks that it carries a tenant and the scope the
// method needs.
func (s *Server) authorize(c *gin.Context) (Principal, bool) {
	p, ok := s.authenticate(c)
	if !ok {
		return Principal{}, false
	}
	if p.Tenant == "" {
		s.problem(c, http.StatusForbidden, "Forbidden", "token carries no tenant claim")
		return Principal{}, false
	}
	need := "data:read"
	if IsWrite(c.Request.Method) {
		need = "data:write"
	}
	if !p.HasScope(need) {
		s.problem(c, http.StatusForbidden, "Forbidden", "token lacks scope "+need)
		return Principal{}, false
	}
	return p, true
}

// lookup resolves the tenant on the local map copy.
func (s *Server) lookup(c *gin.Context, tenant string) (Route, bool) {
	route, err := s.cfg.Map.Lookup(tenant)
	switch {
	case errors.Is(err, ErrBadTenantID):
		s.problem(c, http.StatusForbidden, "Forbidden", "token's tenant claim is not a valid tenant id")
		return Route{}, false
	case err != nil:
		s.log(c).Warn("shard map lookup failed", "err", err)
		c.Header("Retry-After", "1")
		s.problem(c, http.StatusServiceUnavailable, "Service Unavailable", "shard map not available")
		return Route{}, false
	}
	return route, true
}

// readBody reads the whole request body. A body not complete within the server's body timeout
// is 408 (its read fails with os.ErrDeadlineExceeded: daemon.HTTPLimits), one that cannot be
// read otherwise (cut off, malformed chunks) 400; neither is any API node's concern.
func (s *Server) readBody(c *gin.Context) ([]byte, bool) {
	r := c.Request
	if r.ContentLength > s.cfg.MaxBody {
		s.problem(c, http.StatusRequestEntityTooLarge, "Content Too Large",
			"request body exceeds "+strconv.FormatInt(s.cfg.MaxBody, 10)+" bytes")
		return nil, false
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, true
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxBody+1))
	stateOf(c).bodyRead = true
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.log(c).Info("request body timed out", "err", err)
		// The rest of the body is still on the connection: it cannot carry another request.
		c.Header("Connection", "close")
		s.kindProblem(c, problem.RequestTimeout, "request body not received within the body timeout")
		return nil, false
	case err != nil:
		s.log(c).Info("request body unreadable", "err", err)
		c.Header("Connection", "close")
		s.problem(c, http.StatusBadRequest, "Bad Request", "request body could not be read")
		return nil, false
	case int64(len(body)) > s.cfg.MaxBody:
		s.problem(c, http.StatusRequestEntityTooLarge, "Content Too Large",
			"request body exceeds "+strconv.FormatInt(s.cfg.MaxBody, 10)+" bytes")
		return nil, false
	}
	return body, true
}

func (s *Server) authenticate(c *gin.Context) (Principal, bool) {
	h := c.GetHeader("Authorization")
	scheme, tok, found := strings.Cut(h, " ")
	if !found || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		c.Header("WWW-Authenticate", `Bearer realm="meridian"`)
		s.problem(c, http.StatusUnauthorized, "Unauthorized", "missing bearer token")
		return Principal{}, false
	}
	p, err := s.cfg.Auth.Authenticate(c.Request.Context(), strings.TrimSpace(tok))
	if err != nil {
		// The verifier's reason stays in the log: it is library text, not a client contract.
		s.log(c).Debug("token rejected", "err", err)
		c.Header("WWW-Authenticate", `Bearer realm="meridian", error="invalid_token"`)
		s.problem(c, http.StatusUnauthorized, "Unauthorized", "invalid or expired token")
		return Principal{}, false
	}
	return p, true
}

func (s *Server) rateLimit(c *gin.Context, p Principal, class string) bool {
	if s.cfg.Limiter == nil {
		return true
	}
	res, err := s.cfg.Limiter.Check(c.Request.Context(), s.limitRequest(c, p, class))
	return s.applyLimit(c, class, res, err)
}

// rateLimitNoWait is rateLimit when the limiter can decide without waiting (NoWaitLimiter);
// decided is false, and nothing was spent or written, when it cannot.
func (s *Server) rateLimitNoWait(c *gin.Context, p Principal, class string) (ok, decided bool) {
	if s.cfg.Limiter == nil {
		return true, true
	}
	nw, can := s.cfg.Limiter.(NoWaitLimiter)
	if !can {
		return false, false
	}
	res, decided, err := nw.CheckNoWait(s.limitRequest(c, p, class))
	if !decided {
		return false, false
	}
	return s.applyLimit(c, class, res, err), true
}

// limitString is strconv.Itoa(n), the RateLimit-Limit value: a tenant's limit is the same
// from one request to the next, so the last one formatted is kept.
func (s *Server) limitString(n int) string {
	if l := s.lastLimit.Load(); l != nil && l.n == n {
		return l.s
	}
	l := &formattedInt{n: n, s: strconv.Itoa(n)}
	s.lastLimit.Store(l)
	return l.s
}

type formattedInt struct {
	n int
	s string
}

func (s *Server) limitRequest(c *gin.Context, p Principal, class string) LimitRequest {
	return LimitRequest{Tenant: p.Tenant, Subject: p.Subject, IP: clientIP(c), Class: class}
}

// applyLimit answers the limiter's decision: RateLimit-* on the answer, 429 on a denial.
func (s *Server) applyLimit(c *gin.Context, class string, res LimitResult, err error) bool {
	backend := "redis"
	if res.Local {
		backend = "local"
	}
	if err != nil {
		// A limiter that cannot decide must not take the front door down: let the request in.
		s.m.rateLimitC.get([2]string{"error", backend}).Inc()
		s.log(c).Warn("rate limiter failed; request allowed", "err", err)
		return true
	}
	h := c.Writer.Header()
	if res.Limit > 0 { // 0: no limit applied to this request, so there is nothing to report
		v := make([]string, 3) // the three fields' values in one allocation
		v[0], v[1], v[2] = s.limitString(res.Limit), strconv.Itoa(max(res.Remaining, 0)), strconv.Itoa(ceilSeconds(res.Reset))
		h[canonRateLimitLimit], h[canonRateLimitRemaining], h[canonRateLimitReset] = v[0:1:1], v[1:2:2], v[2:3:3]
	}
	if res.Allowed {
		s.m.rateLimitC.get([2]string{"allow", backend}).Inc()
		return true
	}
	s.m.rateLimitC.get([2]string{"deny", backend}).Inc()
	h.Set("Retry-After", strconv.Itoa(max(ceilSeconds(res.RetryAfter), 1)))
	s.problem(c, http.StatusTooManyRequests, "Too Many Requests",
		"rate limit exceeded for "+class+" requests")
	return false
}

func ceilSeconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return int((d + time.Second - 1) / time.Second)
}

// leaseValid reports whether the router heard from the Raft leader within its lease.
func (s *Server) leaseValid() bool {
	return s.cfg.Now().Sub(s.cfg.Map.LeaderContact()) <= s.cfg.Lease
}

// forward sends the request to an API node chosen by Decide, retrying failed attempts under
// the retry policy (upstream.RetryPolicy) and any request once after a 421, holds a write
// answered 503 tenant-fenced until the tenant's new home is in the map (hold.go), then streams
// the answer back. The request deadline (UpstreamTimeout from now, the body being in hand)
// bounds every attempt until its response headers, less the time spent held, which moves it
// later; each attempt tells its API node the time left.
func (s *Server) forward(c *gin.Context, body []byte, tenant string, route Route) {
	s.forwardFrom(c, body, tenant, route, resume{})
}

// resume is where forwardFrom takes up a request whose first attempt the event-loop front made
// (loop.go): with its deadline and traceparent, and the attempt's failure (to be judged by the
// retry policy as forward judges its own), its 421 (the wait for the map made already) or its
// fenced answer to a write (the write is held first).
type resume struct {
	deadline    time.Time // zero: UpstreamTimeout from now
	traceparent string    // "": a new one from the client's
	fail        *upstreamError
	retried421  bool
	fenced      bool // the first attempt, a write, was answered fenced: hold it first
}

// forwardFrom is forward, taken up at rs.
func (s *Server) forwardFrom(c *gin.Context, body []byte, tenant string, route Route, rs resume) {
	r := c.Request
	deadline := rs.deadline
	if deadline.IsZero() {
		deadline = time.Now().Add(s.cfg.UpstreamTimeout)
	}
	in := s.decisionInput(r, route)
	d, ok := s.decide(c, in)
	if !ok {
		return
	}
	// reroute resolves the tenant again on the local map and decides anew; on false the
	// answer has been written.
	reroute := func() bool {
		if nr, err := s.cfg.Map.Lookup(tenant); err == nil {
			route = nr
		}
		in.HomeRegion = route.HomeRegion
		in.LeaseValid = s.leaseValid()
		in.LocalHealthy = s.cfg.Upstreams.Healthy(s.cfg.Region)
		var ok bool
		d, ok = s.decide(c, in)
		return ok
	}
	traceparent := rs.traceparent
	if traceparent == "" {
		traceparent = NextTraceparent(headerValue(r.Header, canonTraceparent))
	}
	retried421 := rs.retried421
	if retried421 && !reroute() {
		return
	}
	pending := rs.fail
	// held is the write's ticket in its tenant's hold queue once it has been fenced: it keeps
	// its place until its resend is answered, so the tenant's held writes go out in order.
	var held *heldWrite
	defer func() { s.hold.leave(held) }()
	// One retry budget for the whole request: the 421 retry and a hold below do not renew it.
	// Backoffs end with the deadline too. The context that ends at the deadline is made only
	// when a backoff or a wait for the map needs it (most requests need neither, and each costs
	// a context and a timer), and made anew once a hold moved the deadline.
	tries := s.cfg.Retry.Start(d.Idempotent)
	var retryCtx context.Context
	var cancels []context.CancelFunc
	defer func() {
		for _, cancel := range cancels {
			cancel()
		}
	}()
	deadlineCtx := func() context.Context {
		if retryCtx == nil {
			ctx, cancel := context.WithDeadline(r.Context(), deadline)
			retryCtx, cancels = ctx, append(cancels, cancel)
		}
		return retryCtx
	}
	// holdFenced holds a write its node answered fenced until the map names the tenant's new
	// home (hold.go); false: the answer has been written (or the client went away).
	holdFenced := func() bool {
		if held == nil {
			held = newHeldWrite(tenant, r)
		}
		start := time.Now()
		res := s.hold.hold(r.Context(), held, route)
		switch res {
		case holdGone:
			c.Abort() // the client went away; nobody is listening
			return false
		case holdTimeout, holdOverflow:
			c.Header("Retry-After", "1")
			detail := "tenant is being moved; its writes were held for the longest hold and are still paused"
			if res == holdOverflow {
				detail = "tenant is being moved; this router holds as many paused writes as it may"
			}
			s.kindProblem(c, problem.TenantFenced, detail)
			return false
		}
		// Released: the time held does not count against the request deadline, nor as the
		// router's own overhead (it is a wait on others, like an API node's answer).
		heldFor := time.Since(start)
		deadline = deadline.Add(heldFor)
		addUpstreamTime(c, heldFor)
		retryCtx = nil // the deadline moved: deadlineCtx makes one that ends at the new one
		return reroute()
	}
	if rs.fenced && !holdFenced() {
		return
	}
	for {
		var resp *http.Response
		var up Upstream
		var fail *upstreamError
		if pending != nil {
			fail, pending = pending, nil
		} else {
			resp, up, fail = s.attempt(c, d.Region, body, route, traceparent, tries.Avoid(), deadline)
		}
		if fail != nil {
			if !fail.unsendable && tries.Again(deadlineCtx(), fail.failure) {
				s.m.retries.Inc()
				continue
			}
			s.upstreamFailure(c, d, fail)
			return
		}
		if resp.StatusCode == http.StatusMisdirectedRequest && !retried421 {
			// The API node's map is newer and disagrees: wait for ours to catch up, re-resolve,
			// and try once more. The node executed nothing, so this is safe for any method.
			retried421 = true
			want, _ := strconv.ParseUint(resp.Header.Get(HeaderShardmapVersion), 10, 64)
			drain(resp)
			up.Done(nil)
			s.m.misdirected.Inc()
			ctx, cancel := context.WithTimeout(deadlineCtx(), s.cfg.MapWait)
			if want == 0 {
				want = route.Version + 1
			}
			_ = s.cfg.Map.WaitVersion(ctx, want) // on timeout, retry with what we have
			cancel()
			if !reroute() {
				return
			}
			continue
		}
		if IsWrite(r.Method) && s.hold.enabled() && isFenced(resp) {
			// The tenant's source is fenced for a move's cutover: the node wrote nothing (the
			// fence is read first in the write's transaction), so the write is held until the
			// map names the new home, then resent there, whatever its method. A fenced answer
			// is the node's verdict on the tenant, not a failure of the node.
			drain(resp)
			up.Done(nil)
			if !holdFenced() {
				return
			}
			continue
		}
		// The answer is in: a held write's successors in its tenant's queue may go.
		s.hold.leave(held)
		s.copyResponse(c, resp, up, route)
		return
	}
}

// decisionInput is what Decide needs of r, routed to route, as this router stands now.
func (s *Server) decisionInput(r *http.Request, route Route) DecisionInput {
	return DecisionInput{
		Method:            r.Method,
		Path:              r.URL.Path,
		HasIdempotencyKey: r.Header.Get(HeaderIdempotencyKey) != "",
		LocalRegion:       s.cfg.Region,
		HomeRegion:        route.HomeRegion,
		LocalHealthy:      s.cfg.Upstreams.Healthy(s.cfg.Region),
		LeaseValid:        s.leaseValid(),
	}
}

// decide is Decide's verdict on in; false: the request is refused and the answer written.
func (s *Server) decide(c *gin.Context, in DecisionInput) (Decision, bool) {
	d := Decide(in)
	if d.Status != 0 {
		c.Header("Retry-After", "1")
		s.problem(c, d.Status, "Service Unavailable", d.Reason)
		return d, false
	}
	return d, true
}

// errShuttingDown ends a change stream when the router shuts down.
var errShuttingDown = errors.New("router: shutting down")

// upstreamError is a failed attempt: no node could be picked, the exchange with the node
// failed before an answer arrived, or the request could not be sent as it was.
type upstreamError struct {
	failure upstream.Failure
	url     string
	err     error
	// unsendable: the request itself could not be sent (upstream.ErrUnsendable); it is the
	// client's 400, not retried, and no failure of the node.
	unsendable bool
}

func (e *upstreamError) Error() string {
	if e.url == "" {
		return e.err.Error()
	}
	return "upstream " + e.url + ": " + e.err.Error()
}
func (e *upstreamError) Unwrap() error { return e.err }

// errDeadline is an attempt cut short by the request deadline before its response headers.
var errDeadline = fmt.Errorf("%w: no response headers within the request deadline", context.DeadlineExceeded)

// errNodeFault marks an answer that counts against the node's breaker (see nodeFault).
var errNodeFault = errors.New("router: API node answered with a server error")

// nodeFault reports whether an API node's answer counts against its breaker: its own server
// errors do, but 503 and 504, with which a node speaks of a tenant (fenced during a move), a
// write conflict, a shard or its database (unreachable or slow for every node alike) or the
// request's own deadline — none of which another node would fix, and all of which one tenant
// could otherwise use to eject a node from everyone's traffic.
func nodeFault(status int) bool {
	return status >= 500 && status != http.StatusServiceUnavailable && status != http.StatusGatewayTimeout
}

// timeLeft is what an attempt tells its API node of the request deadline: the time left less a
// margin (a tenth, at most 250 ms) for the answer's way back, so that a node that runs out of
// time answers 504 itself before the router stops waiting.
func timeLeft(d time.Duration) time.Duration {
	return d - min(d/10, 250*time.Millisecond)
}

// attempt sends one try to one node of region. On success the caller owns resp and must call
// up.Done. A transport failure counts against the node's breaker; an attempt whose client went
// away or whose request could not be sent is released without a verdict (ErrNoVerdict).
func (s *Server) attempt(c *gin.Context, region string, body []byte, route Route, traceparent string, avoid []string, deadline time.Time) (*http.Response, Upstream, *upstreamError) {
	r := c.Request
	left := time.Until(deadline)
	if left <= time.Millisecond {
		return nil, nil, &upstreamError{err: errDeadline}
	}
	up, err := s.cfg.Upstreams.Pick(region, avoid)
	if err != nil {
		return nil, nil, &upstreamError{failure: upstream.Failure{NoNode: errors.Is(err, ErrNoUpstream)}, err: err}
	}
	target := strings.TrimRight(up.URL(), "/") + r.URL.RequestURI()
	var rb io.Reader
	if body != nil {
		rb = bytes.NewReader(body)
	}
	// ctx ends with the client's request, or at the deadline until the response headers arrive
	// (stopped below): the body of an answer may stream for longer (an event stream for hours).
	ctx, cancel := context.WithCancelCause(r.Context())
	timer := time.AfterFunc(left, func() { cancel(errDeadline) })
	req, err := http.NewRequestWithContext(ctx, r.Method, target, rb)
	if err != nil {
		timer.Stop()
		cancel(nil)
		up.Done(ErrNoVerdict)
		return nil, nil, &upstreamError{url: up.URL(), err: fmt.Errorf("%w: %v", upstream.ErrUnsendable, err), unsendable: true}
	}
	stream := stateOf(c).class == ClassStream
	s.prepareHop(c, req, route, traceparent, left, stream, len(body))
	if stream {
		// A stream ends when the router shuts down (StopStreams).
		stopOnShutdown := context.AfterFunc(s.streams, func() { cancel(errShuttingDown) })
		context.AfterFunc(ctx, func() { stopOnShutdown() })
	}

	start := time.Now()
	resp, err := s.cfg.Transport.RoundTrip(req)
	elapsed := time.Since(start)
	addUpstreamTime(c, elapsed)
	if !timer.Stop() && err == nil {
		// The deadline fired as the headers arrived: the answer is too late all the same.
		resp.Body.Close()
		err = errDeadline
	}
	s.m.upstreamDurC.get(region).Observe(elapsed.Seconds())
	if err != nil {
		cancel(nil)
		s.m.upstreamC.get(classCode{region, -1}).Inc()
		e := &upstreamError{failure: upstream.Failure{Node: up.ID(), Sent: upstream.MayHaveReached(err)}, url: up.URL(), err: err}
		switch {
		case r.Context().Err() != nil:
			up.Done(fmt.Errorf("%w: the client went away: %v", ErrNoVerdict, err))
		case errors.Is(err, upstream.ErrUnsendable):
			up.Done(fmt.Errorf("%w: %v", ErrNoVerdict, err))
			e.unsendable = true
		case errors.Is(context.Cause(ctx), errDeadline):
			e.err = fmt.Errorf("%w (%v)", errDeadline, err)
			up.Done(e.err)
		default:
			up.Done(err)
		}
		return nil, nil, e
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	s.m.upstreamC.get(classCode{region, resp.StatusCode}).Inc()
	return resp, up, nil
}

// prepareHop fills the hop's request req from the client's (c.Request): its header less the
// hop-by-hop fields and Expect, the router's own (request id, map version, a write's tenant
// epoch, the time left, traceparent, X-Forwarded-For), its length and Host; no User-Agent of its
// own when the client sent none. The event-loop front
// writes the same fields as bytes (appendHopRequest); TestLoopAnswersAsNetHTTP compares what the
// API node receives from each.
func (s *Server) prepareHop(c *gin.Context, req *http.Request, route Route, traceparent string, left time.Duration, stream bool, bodyLen int) {
	r := c.Request
	copyHeader(req.Header, r.Header)
	removeHop(req.Header)
	// The router holds the whole body: a 100-continue was the client's with this router (net/http
	// answered it when the body was read) and has no meaning on the hop, which cannot speak it.
	req.Header.Del("Expect")
	setCanon(req.Header, HeaderRequestID, stateOf(c).requestID)
	setCanon(req.Header, HeaderShardmapVersion, strconv.FormatUint(route.Version, 10))
	if hopEpoch(r.Method, route) {
		setCanon(req.Header, HeaderTenantEpoch, strconv.FormatUint(route.Epoch, 10))
	} else {
		req.Header.Del(HeaderTenantEpoch) // a read, or no epoch known: the node checks none
	}
	if _, ok := r.Header["User-Agent"]; !ok {
		// Named and empty: neither Request.Write nor the hop's writer adds its default
		// (Go-http-client/1.1), which nothing behind the router reads and every API node
		// would parse (appendHopRequest, the loop's writer, adds none either).
		req.Header["User-Agent"] = nil
	}
	if stream {
		// A change stream has no deadline on the API node (docs/api.md): the time left here
		// bounds only the wait for its headers, which the node sends at once, and must not be
		// read as a bound on the stream. A client's own value is not passed on either.
		req.Header.Del(HeaderRequestTimeout)
	} else {
		setCanon(req.Header, HeaderRequestTimeout, strconv.FormatInt(timeLeft(left).Milliseconds(), 10))
	}
	req.Header[canonTraceparent] = []string{traceparent}
	if ip := clientIP(c); ip != "" {
		if prior := r.Header.Get("X-Forwarded-For"); prior != "" {
			ip = prior + ", " + ip
		}
		req.Header["X-Forwarded-For"] = []string{ip}
	}
	req.ContentLength = int64(bodyLen)
	req.Host = r.Host
}

// hopEpoch reports whether the hop carries X-Tenant-Epoch: for a write, when the route has an
// epoch. An API node checks the epoch of writes alone (docs/api.md, "Write epochs"), so a read
// does not carry a field every node would parse for nothing.
func hopEpoch(method string, route Route) bool {
	return route.Epoch > 0 && IsWrite(method)
}

// cancelOnClose ends an attempt's context when its answer's body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelCauseFunc
}

func (b cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel(nil)
	return err
}

// reqState is what a request's steps record for the later ones (the hop's headers, the
// problem documents, the metrics and the log line), under one key of the gin context: one
// lookup, not one per value, and nothing boxed per value. observe (and the event loop, once
// per connection) stores it; stateOf makes one for a handler chain without observe (tests).
type reqState struct {
	requestID string
	tenant    string
	class     string
	bodyRead  bool // the body is in hand (readBody's mark): a problem needs no Connection: close

	// upstream adds up the request's time spent waiting on others (API nodes, a cutover hold).
	upstream    time.Duration
	upstreamSet bool

	ip      string // the client IP, once known (clientIP)
	ipKnown bool
}

// stateOf is c's reqState: on the event loop its writer's (no lookup under the context's
// lock), else the one under ctxState.
func stateOf(c *gin.Context) *reqState {
	if w, ok := c.Writer.(*loopWriter); ok && w.st != nil {
		return w.st
	}
	if v, ok := c.Get(ctxState); ok {
		return v.(*reqState)
	}
	st := &reqState{}
	c.Set(ctxState, st)
	return st
}

// clientIP is gin's ClientIP of the request (the TCP peer's, or the trusted proxies' view),
// worked out once per request: the rate limit and every attempt's X-Forwarded-For need it,
// and each call parses the address and formats the IP anew.
func clientIP(c *gin.Context) string {
	st := stateOf(c)
	if !st.ipKnown {
		st.ip, st.ipKnown = c.ClientIP(), true
	}
	return st.ip
}

// setCanon is h.Set(key, v) for a key already in canonical form (the Header* constants but
// HeaderTraceparent are, and the canon* ones: TestHeaderNamesCanonical), without Set's check
// and copy of the name.
func setCanon(h http.Header, key, v string) { h[key] = []string{v} }

// headerValue is h.Get(key) for a key already in canonical form (no canonical copy made).
func headerValue(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func addUpstreamTime(c *gin.Context, d time.Duration) {
	st := stateOf(c)
	st.upstream += d
	st.upstreamSet = true
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// upstreamFailure answers a request that no API node could serve.
func (s *Server) upstreamFailure(c *gin.Context, d Decision, err *upstreamError) {
	if c.Request.Context().Err() != nil {
		c.Abort() // the client went away; nobody is listening
		return
	}
	if err.unsendable {
		s.log(c).Info("request cannot be forwarded", "err", err)
		s.problem(c, http.StatusBadRequest, "Bad Request", "request cannot be forwarded as sent")
		return
	}
	s.log(c).Warn("upstream failed", "err", err, "upstream_region", d.Region)
	switch {
	case errors.Is(err, ErrSaturated):
		c.Header("Retry-After", "1")
		s.problem(c, http.StatusServiceUnavailable, "Service Unavailable",
			"API nodes of region "+d.Region+" are at their concurrency limit")
	case errors.Is(err, ErrNoUpstream):
		c.Header("Retry-After", "1")
		s.problem(c, http.StatusServiceUnavailable, "Service Unavailable",
			"no healthy API node in region "+d.Region)
	case isTimeout(err):
		s.problem(c, http.StatusGatewayTimeout, "Gateway Timeout",
			"API node of region "+d.Region+" did not answer in time")
	default:
		c.Header("Retry-After", "1")
		s.problem(c, http.StatusServiceUnavailable, "Service Unavailable",
			"API nodes of region "+d.Region+" are unreachable")
	}
}

// copyResponse streams an API node's answer to the client. For a change stream (the route, or
// any text/event-stream answer) the headers are flushed as soon as they arrive and every read
// of the body as soon as it is written, and the upstream's concurrency slot is released at
// once: a stream may stay open for hours and must not pin a slot. Other answers release it
// when the body ends. The answer's status is the node's verdict (nodeFault), given before any
// body byte: how the body ends — a stream's normal end, the node going away mid-stream, a
// client that leaves — changes nothing, and nothing is retried once headers were received.
// A client that leaves ends the copy promptly: its request's context is the attempt's, whose
// end unblocks the read from the node (upstream.HopTransport), and Close ends the hop.
func (s *Server) copyResponse(c *gin.Context, resp *http.Response, up Upstream, route Route) {
	defer resp.Body.Close()
	var verdict error
	if nodeFault(resp.StatusCode) {
		verdict = fmt.Errorf("%w: %d", errNodeFault, resp.StatusCode)
	}
	stream := stateOf(c).class == ClassStream ||
		strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	if stream {
		up.Done(verdict)
	} else {
		defer up.Done(verdict)
	}
	h := c.Writer.Header()
	for k, vv := range resp.Header {
		if k == "Ratelimit-Limit" || k == "Ratelimit-Remaining" || k == "Ratelimit-Reset" {
			continue // the router's limits are the ones that apply at the front door
		}
		h[k] = vv // resp is this request's alone and its header is not used again: no copy
	}
	removeHop(h)
	setCanon(h, HeaderRequestID, stateOf(c).requestID)
	setCanon(h, HeaderShardmapVersion, strconv.FormatUint(route.Version, 10))
	c.Status(resp.StatusCode)
	c.Writer.WriteHeaderNow()
	if stream {
		c.Writer.Flush()
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := c.Writer.Write(buf[:n]); werr != nil {
				return
			}
			if stream {
				c.Writer.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}

// copyBufs recycles response copy buffers (a fresh 32 KiB per request was the router's largest
// allocation).
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// copyHeader copies src's entries into dst, sharing their value slices: the router replaces
// or deletes entries of the upstream request's header (Set, Del), never the values in place,
// so the client's header is not changed through dst.
func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		dst[k] = vv
	}
}

func removeHop(h http.Header) {
	for _, f := range h.Values("Connection") {
		for _, k := range strings.Split(f, ",") {
			if k = strings.TrimSpace(k); k != "" {
				h.Del(k)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}
