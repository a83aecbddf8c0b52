// Package api is the HTTP layer of Meridian's regional data node: the /v1 records API, the
// /v1/changes event stream (Server-Sent Events from a ChangeFeed, our own interface over the
// node's event consumer) and the /internal tenant endpoints (gin), the node's health,
// readiness, metrics and OpenAPI routes.
//
// It owns routing, request validation (strict JSON, ids, list queries, signed cursors, entity
// tags, read preferences), the home-region and map-version checks, problem+json answers and
// response headers; what a request does in Postgres is the records store's (Store, implemented
// by internal/records/pgstore, with the vocabulary of internal/records). It must never import a
// database driver (TestNoDatabaseDriver checks that pgx is not among its dependencies), never
// trust a tenant other than the token's, and never answer bad input with a 5xx. Tests run it
// over a real store on real Postgres databases from internal/testenv with migrations applied;
// only the shard map is a fake of ShardMap.
package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/problem"
)

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	Region       string        // this node's region (required)
	CursorKey    []byte        // HMAC key for list cursors (required; share it across nodes)
	ClusterToken string        // bearer token of /internal endpoints; "" disables them
	MaxBody      int64         // 0 = 1 MiB
	Deadline     time.Duration // per-request deadline; 0 = 5s
	MapWait      time.Duration // how long to wait for a newer map a router names; 0 = 1s
	MaxMapAge    time.Duration // /readyz fails when the map is older; 0 = 30s
	Logger       *slog.Logger  // nil = slog.Default()
	// Changes serves GET /v1/changes (the node's event consumer, adapted). nil = the route
	// answers 503 changes-unavailable.
	Changes ChangeFeed
	// Heartbeat is how often an open change stream gets a comment line; 0 = 15s.
	Heartbeat time.Duration
	// FollowBuffer is how many events a change stream may fall behind before its feed ends it
	// (the client resumes with Last-Event-ID); 0 = 256.
	FollowBuffer int
	// Collectors are registered on the node's /metrics registry besides its own series, e.g.
	// shards.Collector for the pool statistics. nil = none.
	Collectors []prometheus.Collector
	// Gatherers are served on /metrics after the node's own registry, e.g. the registry the
	// relay, consumer and cache register on. nil = none.
	Gatherers []prometheus.Gatherer
}

// Server is the API node's HTTP service.
type Server struct {
	cfg      Config
	maps     ShardMap
	store    Store
	verifier *auth.Verifier
	cursors  cursorCodec
	log      *slog.Logger
	metrics  *metrics
	engine   *gin.Engine
	openapi  []byte

	// stopStreams is closed by StopStreams (once): open change streams end.
	stopStreams chan struct{}
	stopOnce    sync.Once
}

// New builds a Server. openapi is the document served at /openapi.json (may be nil).
func New(cfg Config, maps ShardMap, store Store, verifier *auth.Verifier, openapi []byte) (*Server, error) {
	if cfg.Region == "" || len(cfg.CursorKey) == 0 || maps == nil || store == nil || verifier == nil {
		return nil, errors.New("api: Region, CursorKey, ShardMap, Store and Verifier are required")
	}
	if cfg.MaxBody == 0 {
		cfg.MaxBody = 1 << 20
	}
	if cfg.Deadline == 0 {
		cfg.Deadline = 5 * time.Second
	}
	if cfg.MapWait == 0 {
		cfg.MapWait = time.Second
	}
	if cfg.MaxMapAge == 0 {
		cfg.MaxMapAge = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 15 * time.Second
	}
	if cfg.FollowBuffer <= 0 {
		cfg.FollowBuffer = 256
	}
	s := &Server{cfg: cfg, maps: maps, store: store, verifier: verifier, cursors: cursorCodec{key: cfg.CursorKey},
		log: cfg.Logger.With("region", cfg.Region), openapi: openapi, stopStreams: make(chan struct{})}
	s.metrics = newMetrics(cfg.Collectors...)
	s.engine = s.routes()
	return s, nil
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler { return s.engine }

// Registry returns the Prometheus registry served at /metrics.
func (s *Server) Registry() *prometheus.Registry { return s.metrics.reg }

func (s *Server) routes() *gin.Engine {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true
	// An unknown path, with or without a trailing slash, is 404 problem+json: never a redirect.
	r.RedirectTrailingSlash = false
	r.RedirectFixedPath = false
	r.ContextWithFallback = true
	r.Use(problem.RequestID(), s.recover, s.observe, s.guard, gzipMiddleware())
	r.NoRoute(func(c *gin.Context) { problem.Write(c, http.StatusNotFound, "", "no such route") })
	r.NoMethod(func(c *gin.Context) {
		problem.Write(c, http.StatusMethodNotAllowed, "", "method not allowed on this route")
	})

	getHead(r, "/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) })
	getHead(r, "/readyz", s.readyz)
	getHead(r, "/metrics", gin.WrapH(promhttp.HandlerFor(append(prometheus.Gatherers{s.metrics.reg}, s.cfg.Gatherers...), promhttp.HandlerOpts{})))
	getHead(r, "/openapi.json", func(c *gin.Context) {
		if s.openapi == nil {
			problem.Write(c, http.StatusNotFound, "", "no OpenAPI document configured")
			return
		}
		c.Data(http.StatusOK, "application/json", s.openapi)
	})
	internal := r.Group("/internal/v1", auth.ClusterToken(s.cfg.ClusterToken))
	internal.POST("/tenants", s.createTenant)
	getHead(internal, "/tenants", s.listTenants)
	getHead(internal, "/tenants/:id", s.getTenant)

	v1 := r.Group("/v1", auth.Middleware(s.verifier))
	read, write := auth.RequireScope(auth.ScopeRead), auth.RequireScope(auth.ScopeWrite)
	v1.POST("/collections/:collection/records", write, s.createRecord)
	getHead(v1, "/collections/:collection/records", read, s.listRecords)
	getHead(v1, "/collections/:collection/records/:id", read, s.getRecord)
	v1.PUT("/collections/:collection/records/:id", write, s.putRecord)
	v1.PATCH("/collections/:collection/records/:id", write, s.patchRecord)
	v1.DELETE("/collections/:collection/records/:id", write, s.deleteRecord)
	getHead(v1, "/changes", read, s.changes) // changesPath
	return r
}

// getHead routes GET and HEAD of path to the same handlers (net/http drops a HEAD answer's body).
func getHead(r gin.IRoutes, path string, h ...gin.HandlerFunc) {
	r.GET(path, h...)
	r.HEAD(path, h...)
}

// recover turns a panic into a 500 problem instead of a dropped connection.
func (s *Server) recover(c *gin.Context) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.Error("panic", "request_id", c.GetString(problem.ContextKey), "panic", v)
			problem.Write(c, http.StatusInternalServerError, "", "internal error")
		}
	}()
	c.Next()
}

// guard applies the request deadline, the body cap and the served-region header. The deadline
// is Config.Deadline, or the time a router says it will still wait (hdrRequestTimeout) when
// that is shorter: work the router has given up on is wasted. The change stream has none: it
// lives as long as its client (its Follow is bounded by the feed's own reads).
func (s *Server) guard(c *gin.Context) {
	if c.FullPath() != changesPath {
		ctx, cancel := context.WithTimeout(c.Request.Context(), requestDeadline(s.cfg.Deadline, c.GetHeader(hdrRequestTimeout)))
		defer cancel()
		c.Request = c.Request.WithContext(ctx)
	}
	c.Request.Body = http.MaxBytesReader(c.Writer, c.Request.Body, s.cfg.MaxBody)
	c.Header("X-Served-Region", s.cfg.Region)
	c.Next()
}

// observe records RED metrics and a JSON log line per request.
func (s *Server) observe(c *gin.Context) {
	start := time.Now()
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "unmatched"
	}
	status := c.Writer.Status()
	took := time.Since(start)
	s.metrics.observe(route, c.Request.Method, status, took)
	lvl := slog.LevelInfo
	if status >= 500 {
		lvl = slog.LevelError
	}
	if ctx := c.Request.Context(); s.log.Enabled(ctx, lvl) {
		// A Record made here (pc 0) rather than LogAttrs: the logger would walk the stack for
		// a source location no handler of ours prints, on every request.
		r := slog.NewRecord(time.Now(), lvl, "request", 0)
		r.AddAttrs(slog.String("request_id", c.GetString(problem.ContextKey)),
			slog.String("method", c.Request.Method), slog.String("route", route), slog.Int("status", status),
			slog.String("tenant", c.GetString("tenant")), slog.String("shard", c.GetString("shard")),
			slog.Float64("duration_ms", float64(took.Microseconds())/1000))
		_ = s.log.Handler().Handle(ctx, r)
	}
}

func (s *Server) readyz(c *gin.Context) {
	if age := s.maps.Age(); age > s.cfg.MaxMapAge {
		problem.Write(c, http.StatusServiceUnavailable, "", "shard map is stale ("+age.Round(time.Millisecond).String()+")")
		return
	}
	shards := s.maps.ShardIDs()
	if len(shards) == 0 {
		problem.Write(c, http.StatusServiceUnavailable, "", "shard map has no shards")
		return
	}
	for _, id := range shards {
		ctx, cancel := context.WithTimeout(c, time.Second)
		err := s.store.Ping(ctx, id)
		cancel()
		if err != nil {
			problem.Write(c, http.StatusServiceUnavailable, "", "shard "+id+" unreachable")
			return
		}
	}
	c.JSON(http.StatusOK, gin.H{"status": "ready", "map_version": s.maps.Version(), "shards": len(shards)})
}

// hdrRequestTimeout is how long, in whole milliseconds, the router that sent a request will
// still wait for its answer (internal/router's HeaderRequestTimeout).
const hdrRequestTimeout = "X-Request-Timeout-Ms"

// requestDeadline is own, or the router's remaining time when the header names a shorter one
// (a positive whole number of milliseconds; anything else is ignored).
func requestDeadline(own time.Duration, header string) time.Duration {
	ms, err := strconv.ParseInt(header, 10, 64)
	if err != nil || ms <= 0 || ms >= own.Milliseconds() {
		return own
	}
	return time.Duration(ms) * time.Millisecond
}

// retryAfter writes a retryable 503.
func retryAfter(c *gin.Context, secs int, detail string) {
	c.Header("Retry-After", strconv.Itoa(secs))
	problem.Write(c, http.StatusServiceUnavailable, "", detail)
}
