package router

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meridian-dev/meridian/internal/jsonlog"
	"github.com/meridian-dev/meridian/internal/problem"
)

// Server is one router's HTTP front: /v1 proxy, /admin/v1, /internal/v1 (the map node), and
// the operational endpoints.
type Server struct {
	cfg    Config
	engine *gin.Engine
	m      *metrics
	lim    *limits      // per-tenant concurrency and load shedding (limits.go)
	hold   *holds       // writes held during a tenant's cutover (hold.go)
	client *http.Client // for the API node's internal endpoints

	// reqlog writes the request log line itself when cfg.Logger's handler is a jsonlog.Handler
	// that can (cmd/router's); nil: the line goes through slog. reqlogRegion: the line carries
	// "region" (false when the handler's attributes already hold this region).
	reqlog       *jsonlog.Handler
	reqlogRegion bool

	lastLimit atomic.Pointer[formattedInt] // limitString's

	// streams ends when StopStreams is called: open change streams end.
	streams     context.Context
	stopStreams context.CancelFunc
}

// StopStreams ends every open change stream (their upstream requests are cancelled, so the
// answers end and clients resume elsewhere with Last-Event-ID). cmd/router registers it with the
// HTTP server's shutdown, so open streams do not hold the drain for the whole grace period.
func (s *Server) StopStreams() { s.stopStreams() }

// New builds a Server from cfg (see Config for required fields and defaults).
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:    cfg,
		m:      newMetrics(cfg.Registry, cfg.Upstreams),
		client: &http.Client{Transport: cfg.Transport, Timeout: cfg.UpstreamTimeout},
	}
	if h, ok := cfg.Logger.Handler().(*jsonlog.Handler); ok && h.Lines() {
		s.reqlog, s.reqlogRegion = h, !h.HasString("region", cfg.Region)
	}
	s.streams, s.stopStreams = context.WithCancel(context.Background())
	s.initLimits()
	s.hold = newHolds(cfg.Registry, cfg.Hold, cfg.Map)
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	// gin believes X-Forwarded-For from anyone by default, which would let a client pick the
	// IP its rate limit is keyed by.
	if err := e.SetTrustedProxies(cfg.TrustedProxies); err != nil {
		return nil, fmt.Errorf("router: trusted proxies: %w", err)
	}
	e.ContextWithFallback = true
	// Unknown paths are 404 and known paths with another method 405 with Allow, all
	// problem+json; never a redirect to a path with or without a trailing slash.
	e.RedirectTrailingSlash = false
	e.RedirectFixedPath = false
	e.HandleMethodNotAllowed = true
	e.Use(s.observe)
	getHead(e, "/healthz", s.healthz)
	getHead(e, "/readyz", s.readyz)
	getHead(e, "/metrics", gin.WrapH(promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{})))
	if cfg.MapHandler != nil {
		e.Any("/internal/v1/*path", gin.WrapH(cfg.MapHandler))
	}
	admin := e.Group("/admin/v1", s.requireAdmin)
	admin.POST("/tenants", s.createTenant)
	getHead(admin, "/tenants/:id", s.getTenant)
	admin.PATCH("/tenants/:id", s.patchTenant)
	getHead(admin, "/shardmap", s.getShardmap)
	getHead(admin, "/regions", s.getRegions)
	getHead(admin, "/tenants", s.listTenants)
	admin.POST("/moves", s.createMove)
	getHead(admin, "/moves", s.listMoves)
	getHead(admin, "/moves/:id", s.getMove)
	admin.POST("/moves/:id/cancel", s.cancelMove)
	e.Any("/v1/*path", s.proxy)
	e.NoRoute(func(c *gin.Context) {
		s.problem(c, http.StatusNotFound, "Not Found", "no such route")
	})
	e.NoMethod(func(c *gin.Context) {
		// gin has set Allow to the path's methods.
		s.problem(c, http.StatusMethodNotAllowed, "Method Not Allowed", "method not allowed on this route")
	})
	s.engine = e
	return s, nil
}

// getHead routes GET and HEAD of path to the same handlers (net/http drops a HEAD answer's body).
func getHead(r gin.IRoutes, path string, h ...gin.HandlerFunc) {
	r.GET(path, h...)
	r.HEAD(path, h...)
}

// Handler returns the router's HTTP handler.
func (s *Server) Handler() http.Handler { return s.engine }

// observe assigns the request id, logs the request and records RED metrics and the proxy
// overhead (time spent in the router, excluding the wait for API nodes).
func (s *Server) observe(c *gin.Context) {
	start := time.Now()
	s.observeBegin(c, nil)
	c.Next()
	s.observeEnd(c, start)
}

// observeBegin and observeEnd are observe's halves, before and after the handler; the
// event-loop front (loop.go) calls them around its own steps.
//
// st is the request's state, reset: the event loop's, reused per connection, which its writer
// carries (stateOf); nil: a new one, stored on c.
func (s *Server) observeBegin(c *gin.Context, st *reqState) {
	if st == nil {
		st = &reqState{}
		c.Set(ctxState, st)
	}
	st.requestID = RequestID(headerValue(c.Request.Header, HeaderRequestID))
	setCanon(c.Writer.Header(), HeaderRequestID, st.requestID)
}

func (s *Server) observeEnd(c *gin.Context, start time.Time) { s.observeEndAt(c, start, time.Now()) }

// observeEndAt is observeEnd with the request's end read already (the loop reads the clock
// once for the hop's time, the request's and its log line's).
func (s *Server) observeEndAt(c *gin.Context, start, now time.Time) {
	total := now.Sub(start)
	st := stateOf(c)
	cl := st.class
	if cl == "" {
		cl = Classify(c.Request.Method, c.Request.URL.Path)
	}
	status := c.Writer.Status()
	s.m.requestsC.get(classCode{cl, status}).Inc()
	s.m.durationC.get(cl).Observe(total.Seconds())
	if st.upstreamSet && cl != ClassStream {
		s.m.overhead.Observe(max(total-st.upstream, 0).Seconds())
	}
	level := slog.LevelInfo
	if status >= 500 {
		level = slog.LevelWarn
	}
	if cl == ClassOther {
		level = slog.LevelDebug
	}
	if s.cfg.Logger.Enabled(c.Request.Context(), level) {
		s.logRequest(c, level, status, cl, total, now)
	}
}

// logRequest writes the request's log line: "request" with request_id, tenant, region, method,
// path, status, class and duration_ms. Through jsonlog's Line when the handler allows it (the
// same JSON slog's handler writes, with "region" once: the handler's attributes carry it in
// cmd/router), else through slog.
func (s *Server) logRequest(c *gin.Context, level slog.Level, status int, cl string, total time.Duration, now time.Time) {
	ms := float64(total.Microseconds()) / 1000
	if s.reqlog != nil {
		if l := s.reqlog.Begin(now, level, "request"); l != nil {
			l.Str("request_id", stateOf(c).requestID).Str("tenant", stateOf(c).tenant)
			if s.reqlogRegion {
				l.Str("region", s.cfg.Region)
			}
			_ = l.Str("method", c.Request.Method).Str("path", c.Request.URL.Path).Int("status", int64(status)).
				Str("class", cl).Float("duration_ms", ms).End()
			return
		}
	}
	// LogAttrs with the request attributes inline: Logger.With would format them into a new
	// handler on every request.
	s.cfg.Logger.LogAttrs(c.Request.Context(), level, "request",
		slog.String("request_id", stateOf(c).requestID), slog.String("tenant", stateOf(c).tenant),
		slog.String("region", s.cfg.Region), slog.String("method", c.Request.Method),
		slog.String("path", c.Request.URL.Path), slog.Int("status", status), slog.String("class", cl),
		slog.Float64("duration_ms", ms))
}

// log returns the logger with the request's attributes.
func (s *Server) log(c *gin.Context) *slog.Logger {
	return s.cfg.Logger.With("request_id", stateOf(c).requestID,
		"tenant", stateOf(c).tenant, "region", s.cfg.Region)
}

// problemBody is an RFC 9457 problem document (the shape internal/problem writes).
type problemBody = problem.Problem

// problem answers an application/problem+json error (internal/problem's shape and type URIs)
// and stops the handler chain.
func (s *Server) problem(c *gin.Context, status int, title, detail string) {
	s.sendProblem(c, problem.New(status, title, detail))
}

// kindProblem answers the problem of kind k (its slug, fixed title and status) and stops the
// handler chain.
func (s *Server) kindProblem(c *gin.Context, k problem.Kind, detail string) {
	s.sendProblem(c, k.New(detail))
}

func (s *Server) sendProblem(c *gin.Context, p problem.Problem) {
	if c.Request.ContentLength != 0 && !stateOf(c).bodyRead {
		// An answer before the body (a 401 ahead of it): close the connection after the
		// answer. net/http would still read and discard up to 256 KiB of the unread body
		// before closing — a stalled one for the whole body timeout — so a read deadline in
		// the past ends that read at once; the answer is written all the same.
		c.Header("Connection", "close")
		_ = http.NewResponseController(c.Writer).SetReadDeadline(time.Now())
	}
	p.RequestID = stateOf(c).requestID
	b, _ := json.Marshal(p)
	c.Header("Content-Type", problem.ContentType)
	c.Status(p.Status)
	_, _ = c.Writer.Write(b)
	c.Abort()
}

func (s *Server) healthz(c *gin.Context) {
	c.JSON(http.StatusOK, gin.H{"status": "ok", "region": s.cfg.Region})
}

// readyz: ready once the map node has a leader, or has heard from one recently enough that its
// map copy is fresh (a partitioned router keeps serving reads from it).
func (s *Server) readyz(c *gin.Context) {
	v := s.cfg.Map.Version()
	leader := s.cfg.Map.Leader()
	age := s.cfg.Now().Sub(s.cfg.Map.LeaderContact())
	body := gin.H{"region": s.cfg.Region, "map_version": v, "leader": leader,
		"leader_contact_age_ms": age.Milliseconds()}
	if v > 0 && (leader != "" || age <= s.cfg.ReadyStaleness) {
		body["status"] = "ready"
		c.JSON(http.StatusOK, body)
		return
	}
	body["status"] = "not ready"
	c.Header("Retry-After", "1")
	c.JSON(http.StatusServiceUnavailable, body)
}

// metrics are the router's Prometheus series.
type metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	upstream    *prometheus.CounterVec
	upstreamDur *prometheus.HistogramVec
	overhead    prometheus.Histogram
	rateLimit   *prometheus.CounterVec
	misdirected prometheus.Counter
	retries     prometheus.Counter

	// The hot path's children of the vectors above, by label values (see children).
	requestsC    *children[classCode, prometheus.Counter]
	durationC    *children[string, prometheus.Observer]
	upstreamC    *children[classCode, prometheus.Counter] // class is the region; code -1: "error"
	upstreamDurC *children[string, prometheus.Observer]
	rateLimitC   *children[[2]string, prometheus.Counter]
}

// classCode is a pair of label values: a route class (or a region) and a status code.
type classCode struct {
	class string
	code  int
}

// children caches a metric vector's children by their label values. The vector's
// WithLabelValues hashes the values and takes the vector's lock on every call, and a status
// label costs a strconv allocation: about 4% of the router's CPU per proxied request (issue 16).
// Label values are the same bounded sets as before (classes, regions, status codes).
type children[K comparable, M any] struct {
	mu  sync.RWMutex
	m   map[K]M
	new func(K) M
}

func newChildren[K comparable, M any](f func(K) M) *children[K, M] {
	return &children[K, M]{m: map[K]M{}, new: f}
}

func (c *children[K, M]) get(k K) M {
	c.mu.RLock()
	v, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return v
	}
	v = c.new(k) // WithLabelValues returns the same child every time
	c.mu.Lock()
	c.m[k] = v
	c.mu.Unlock()
	return v
}

func newMetrics(reg *prometheus.Registry, ups Upstreams) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_router_requests_total", Help: "Requests by route class and status.",
		}, []string{"class", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "meridian_router_request_duration_seconds", Help: "Request duration by route class.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15),
		}, []string{"class"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_router_upstream_requests_total", Help: "Attempts to API nodes by region and status (\"error\": transport failure).",
		}, []string{"region", "code"}),
		upstreamDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "meridian_router_upstream_duration_seconds", Help: "Time to an API node's response headers by region.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15),
		}, []string{"region"}),
		overhead: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "meridian_router_proxy_overhead_seconds", Help: "Time in the router excluding the wait for API nodes.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 14),
		}),
		rateLimit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_router_ratelimit_decisions_total", Help: "Rate-limit decisions (allow, deny, error) by backend (redis, local).",
		}, []string{"decision", "backend"}),
		misdirected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meridian_router_misdirected_total", Help: "421 answers from API nodes corrected by waiting for a newer map.",
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meridian_router_retries_total", Help: "Attempts made again under the retry policy after one got no answer.",
		}),
	}
	m.requestsC = newChildren(func(k classCode) prometheus.Counter {
		return m.requests.WithLabelValues(k.class, strconv.Itoa(k.code))
	})
	m.durationC = newChildren(func(class string) prometheus.Observer { return m.duration.WithLabelValues(class) })
	m.upstreamC = newChildren(func(k classCode) prometheus.Counter {
		code := "error"
		if k.code >= 0 {
			code = strconv.Itoa(k.code)
		}
		return m.upstream.WithLabelValues(k.class, code)
	})
	m.upstreamDurC = newChildren(func(region string) prometheus.Observer { return m.upstreamDur.WithLabelValues(region) })
	m.rateLimitC = newChildren(func(k [2]string) prometheus.Counter { return m.rateLimit.WithLabelValues(k[0], k[1]) })
	reg.MustRegister(m.requests, m.duration, m.upstream, m.upstreamDur, m.overhead, m.rateLimit,
		m.misdirected, m.retries, breakerCollector{ups})
	return m
}

// breakerCollector reports each upstream node's breaker state at scrape time.
type breakerCollector struct{ ups Upstreams }

var breakerDesc = prometheus.NewDesc("meridian_router_upstream_breaker_state",
	"Circuit breaker state per API node: 0 closed, 1 half-open, 2 open.",
	[]string{"region", "node"}, nil)

var healthyDesc = prometheus.NewDesc("meridian_router_upstream_healthy",
	"1 when the API node is admitted for traffic, 0 when ejected.",
	[]string{"region", "node"}, nil)

func (b breakerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- breakerDesc
	ch <- healthyDesc
}

func (b breakerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, n := range b.ups.Nodes() {
		v := 0.0
		switch n.Breaker {
		case "half-open":
			v = 1
		case "open":
			v = 2
		}
		h := 0.0
		if n.Healthy {
			h = 1
		}
		ch <- prometheus.MustNewConstMetric(breakerDesc, prometheus.GaugeValue, v, n.Region, n.ID)
		ch <- prometheus.MustNewConstMetric(healthyDesc, prometheus.GaugeValue, h, n.Region, n.ID)
	}
}
