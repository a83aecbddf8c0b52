package router

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/meridian-dev/meridian/internal/upstream"
)

// Headers the router reads or sets.
const (
	HeaderRequestID       = "X-Request-Id"
	HeaderShardmapVersion = "X-Shardmap-Version"
	HeaderServedRegion    = "X-Served-Region"
	HeaderTraceparent     = "traceparent"
	HeaderIdempotencyKey  = "Idempotency-Key"
)

// hopHeaders are connection-scoped headers that must not be forwarded (RFC 9110 §7.6.1).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// ctx keys stored on the gin context.
const (
	ctxRequestID = "meridian.request_id"
	ctxTenant    = "meridian.tenant"
	ctxClass     = "meridian.class"
	ctxUpstream  = "meridian.upstream_time"
	ctxMapVer    = "meridian.map_version"
)

// proxy serves every /v1 request.
func (s *Server) proxy(c *gin.Context) {
	r := c.Request
	class := Classify(r.Method, r.URL.Path)
	c.Set(ctxClass, class)

	// 1. Body: buffered (so retries can resend it) and bounded.
	body, ok := s.readBody(c)
	if !ok {
		return
	}

	// 2. Authentication: the tenant is the token's claim, never the request's.
	p, ok := s.authenticate(c)
	if !ok {
		return
	}
	if p.Tenant == "" {
		s.problem(c, http.StatusForbidden, "Forbidden", "token carries no tenant claim")
		return
	}
	need := "data:read"
	if IsWrite(r.Method) {
		need = "data:write"
	}
	if !p.HasScope(need) {
		s.problem(c, http.StatusForbidden, "Forbidden", "token lacks scope "+need)
		return
	}
	c.Set(ctxTenant, p.Tenant)

	// 3. Rate limits; RateLimit-* go on every answer from here on.
	if !s.rateLimit(c, p, class) {
		return
	}

	// 3b. Admission (limits.go): a per-tenant concurrency slot, held until the answer is done
	// (streams included), and load shedding by class. Before any upstream work.
	if !s.admit(c, p.Tenant) {
		return
	}
	defer s.release(p.Tenant)

	// 4. Route.
	route, err := s.cfg.Map.Lookup(p.Tenant)
	switch {
	case errors.Is(err, ErrBadTenantID):
		s.problem(c, http.StatusForbidden, "Forbidden", "token's tenant claim is not a valid tenant id")
		return
	case err != nil:
		c.Header("Retry-After", "1")
		s.problem(c, http.StatusServiceUnavailable, "Service Unavailable", "shard map not available: "+err.Error())
		return
	}
	s.forward(c, body, p.Tenant, route)
}

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
	if err != nil {
		s.problem(c, http.StatusBadRequest, "Bad Request", "reading request body: "+err.Error())
		return nil, false
	}
	if int64(len(body)) > s.cfg.MaxBody {
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
		c.Header("WWW-Authenticate", `Bearer realm="meridian", error="invalid_token"`)
		s.problem(c, http.StatusUnauthorized, "Unauthorized", err.Error())
		return Principal{}, false
	}
	return p, true
}

func (s *Server) rateLimit(c *gin.Context, p Principal, class string) bool {
	if s.cfg.Limiter == nil {
		return true
	}
	res, err := s.cfg.Limiter.Check(c.Request.Context(), LimitRequest{
		Tenant: p.Tenant, Subject: p.Subject, IP: c.ClientIP(), Class: class,
	})
	backend := "redis"
	if res.Local {
		backend = "local"
	}
	if err != nil {
		// A limiter that cannot decide must not take the front door down: let the request in.
		s.m.rateLimit.WithLabelValues("error", backend).Inc()
		s.log(c).Warn("rate limiter failed; request allowed", "err", err)
		return true
	}
	h := c.Writer.Header()
	if res.Limit > 0 { // 0: no limit applied to this request, so there is nothing to report
		h.Set("RateLimit-Limit", strconv.Itoa(res.Limit))
		h.Set("RateLimit-Remaining", strconv.Itoa(max(res.Remaining, 0)))
		h.Set("RateLimit-Reset", strconv.Itoa(ceilSeconds(res.Reset)))
	}
	if res.Allowed {
		s.m.rateLimit.WithLabelValues("allow", backend).Inc()
		return true
	}
	s.m.rateLimit.WithLabelValues("deny", backend).Inc()
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
// the retry policy (upstream.RetryPolicy) and any request once after a 421, then streams the
// answer back.
func (s *Server) forward(c *gin.Context, body []byte, tenant string, route Route) {
	r := c.Request
	in := DecisionInput{
		Method:            r.Method,
		Path:              r.URL.Path,
		HasIdempotencyKey: r.Header.Get(HeaderIdempotencyKey) != "",
		LocalRegion:       s.cfg.Region,
		HomeRegion:        route.HomeRegion,
		LocalHealthy:      s.cfg.Upstreams.Healthy(s.cfg.Region),
		LeaseValid:        s.leaseValid(),
	}
	d := Decide(in)
	if d.Status != 0 {
		c.Header("Retry-After", "1")
		s.problem(c, d.Status, "Service Unavailable", d.Reason)
		return
	}
	traceparent := NextTraceparent(r.Header.Get(HeaderTraceparent))
	retried421 := false
	// One retry budget for the whole request: the 421 retry below does not renew it.
	tries := s.cfg.Retry.Start(d.Idempotent)
	for {
		c.Set(ctxMapVer, route.Version)
		resp, up, fail := s.attempt(c, d.Region, body, route, traceparent, tries.Avoid())
		if fail != nil {
			if tries.Again(r.Context(), fail.failure) {
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
			ctx, cancel := context.WithTimeout(r.Context(), s.cfg.MapWait)
			if want == 0 {
				want = route.Version + 1
			}
			_ = s.cfg.Map.WaitVersion(ctx, want) // on timeout, retry with what we have
			cancel()
			nr, err := s.cfg.Map.Lookup(tenant)
			if err == nil {
				route = nr
			}
			in.HomeRegion = route.HomeRegion
			in.LeaseValid = s.leaseValid()
			in.LocalHealthy = s.cfg.Upstreams.Healthy(s.cfg.Region)
			if d = Decide(in); d.Status != 0 {
				c.Header("Retry-After", "1")
				s.problem(c, d.Status, "Service Unavailable", d.Reason)
				return
			}
			continue
		}
		s.copyResponse(c, resp, up, route)
		return
	}
}

// upstreamError is a failed attempt: no node could be picked, or the exchange with the node
// failed before an answer arrived.
type upstreamError struct {
	failure upstream.Failure
	url     string
	err     error
}

func (e *upstreamError) Error() string {
	if e.url == "" {
		return e.err.Error()
	}
	return "upstream " + e.url + ": " + e.err.Error()
}
func (e *upstreamError) Unwrap() error { return e.err }

// attempt sends one try to one node of region. On success the caller owns resp and must call
// up.Done. A transport error counts against the node's breaker; an answer of any status is
// reported as a success when the caller calls up.Done(nil).
func (s *Server) attempt(c *gin.Context, region string, body []byte, route Route, traceparent string, avoid []string) (*http.Response, Upstream, *upstreamError) {
	r := c.Request
	up, err := s.cfg.Upstreams.Pick(region, avoid)
	if err != nil {
		return nil, nil, &upstreamError{failure: upstream.Failure{NoNode: errors.Is(err, ErrNoUpstream)}, err: err}
	}
	target := strings.TrimRight(up.URL(), "/") + r.URL.RequestURI()
	var rb io.Reader
	if body != nil {
		rb = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, target, rb)
	if err != nil {
		up.Done(nil)
		return nil, nil, &upstreamError{failure: upstream.Failure{Node: up.ID()}, url: up.URL(), err: err}
	}
	copyHeader(req.Header, r.Header)
	removeHop(req.Header)
	req.Header.Set(HeaderRequestID, c.GetString(ctxRequestID))
	req.Header.Set(HeaderShardmapVersion, strconv.FormatUint(route.Version, 10))
	req.Header.Set(HeaderTraceparent, traceparent)
	if ip := c.ClientIP(); ip != "" {
		if prior := r.Header.Get("X-Forwarded-For"); prior != "" {
			ip = prior + ", " + ip
		}
		req.Header.Set("X-Forwarded-For", ip)
	}
	req.ContentLength = int64(len(body))
	req.Host = r.Host

	start := time.Now()
	resp, err := s.cfg.Transport.RoundTrip(req)
	elapsed := time.Since(start)
	addUpstreamTime(c, elapsed)
	if err != nil {
		up.Done(err)
		s.m.upstream.WithLabelValues(region, "error").Inc()
		s.m.upstreamDur.WithLabelValues(region).Observe(elapsed.Seconds())
		return nil, nil, &upstreamError{failure: upstream.Failure{Node: up.ID(), Sent: upstream.MayHaveReached(err)},
			url: up.URL(), err: err}
	}
	s.m.upstream.WithLabelValues(region, strconv.Itoa(resp.StatusCode)).Inc()
	s.m.upstreamDur.WithLabelValues(region).Observe(elapsed.Seconds())
	return resp, up, nil
}

func addUpstreamTime(c *gin.Context, d time.Duration) {
	prev, _ := c.Get(ctxUpstream)
	p, _ := prev.(time.Duration)
	c.Set(ctxUpstream, p+d)
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// upstreamFailure answers a request that no API node could serve.
func (s *Server) upstreamFailure(c *gin.Context, d Decision, err error) {
	if c.Request.Context().Err() != nil {
		c.Abort() // the client went away; nobody is listening
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

// copyResponse streams an API node's answer to the client, flushing as it goes for event
// streams.
// The upstream's concurrency slot is released when the body ends, or at once for an event
// stream, which may stay open for hours and must not pin a slot.
func (s *Server) copyResponse(c *gin.Context, resp *http.Response, up Upstream, route Route) {
	defer resp.Body.Close()
	stream := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	if stream {
		up.Done(nil)
	} else {
		defer up.Done(nil)
	}
	h := c.Writer.Header()
	for k, vv := range resp.Header {
		if k == "Ratelimit-Limit" || k == "Ratelimit-Remaining" || k == "Ratelimit-Reset" {
			continue // the router's limits are the ones that apply at the front door
		}
		h[k] = append([]string(nil), vv...)
	}
	removeHop(h)
	h.Set(HeaderRequestID, c.GetString(ctxRequestID))
	h.Set(HeaderShardmapVersion, strconv.FormatUint(route.Version, 10))
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

func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		dst[k] = append([]string(nil), vv...)
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
