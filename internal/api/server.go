// Package api is Meridian's regional data node: the /v1 records API (gin) executed against the
// tenant's Postgres shard, with idempotency keys and the outbox written in each write's own
// transaction.
//
// It owns request validation (strict JSON, list queries, signed cursors), shard routing inside
// the node (pool per shard, home-region and fence checks), and the node's operational endpoints.
// It must never write to a shard homed in another region, never trust a tenant other than the
// token's, and never answer bad input with a 5xx. Tests run it against real Postgres databases
// from internal/testenv with migrations applied; only the shard map is a fake of ShardMap.
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
	"github.com/meridian-dev/meridian/replication"
)

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	Region       string        // this node's region (required)
	CursorKey    []byte        // HMAC key for list cursors (required; share it across nodes)
	ClusterToken string        // bearer token of /internal endpoints; "" disables them
	MaxBody      int64         // 0 = 1 MiB
	Deadline     time.Duration // per-request deadline; 0 = 5s
	IdemTTL      time.Duration // Idempotency-Key lifetime; 0 = 24h
	MapWait      time.Duration // how long to wait for a newer map a router names; 0 = 1s
	MaxMapAge    time.Duration // /readyz fails when the map is older; 0 = 30s
	// Standby reads (DESIGN.md §6).
	MaxStaleness    time.Duration // most a standby may lag and serve a default read; 0 = 5s
	RYWWait         time.Duration // how long a read waits for the standby to replay its token; 0 = 100ms, <0 = no wait
	StandbyInterval time.Duration // standby status is re-checked at most this often; 0 = 250ms
	StandbyFailures int           // consecutive failed checks/reads that mark a standby unhealthy; 0 = 3
	Logger          *slog.Logger  // nil = slog.Default()
	Now             func() time.Time
	// Workers are pools connected as migrations.WorkerRole, which may delete expired
	// Idempotency-Key rows of every tenant. nil = the cleanup job purges only the tenants this
	// node has stored keys for since it started (the app role sees one tenant at a time).
	Workers *Pools
}

// Server is the API node's HTTP service.
type Server struct {
	cfg      Config
	maps     ShardMap
	pools    *Pools
	verifier *auth.Verifier
	cursors  cursorCodec
	log      *slog.Logger
	metrics  *metrics
	engine   *gin.Engine
	openapi  []byte

	readPolicy replication.Policy
	standbys   *standbys

	keyMu sync.Mutex
	// keyTenants (shard -> tenants) is guarded by keyMu: tenants with stored keys, for cleanup.
	keyTenants map[string]map[string]struct{}
}

// New builds a Server. openapi is the document served at /openapi.json (may be nil).
func New(cfg Config, maps ShardMap, pools *Pools, verifier *auth.Verifier, openapi []byte) (*Server, error) {
	if cfg.Region == "" || len(cfg.CursorKey) == 0 || maps == nil || pools == nil || verifier == nil {
		return nil, errors.New("api: Region, CursorKey, ShardMap, Pools and Verifier are required")
	}
	if cfg.MaxBody == 0 {
		cfg.MaxBody = 1 << 20
	}
	if cfg.Deadline == 0 {
		cfg.Deadline = 5 * time.Second
	}
	if cfg.IdemTTL == 0 {
		cfg.IdemTTL = 24 * time.Hour
	}
	if cfg.MapWait == 0 {
		cfg.MapWait = time.Second
	}
	if cfg.MaxMapAge == 0 {
		cfg.MaxMapAge = 30 * time.Second
	}
	if cfg.MaxStaleness <= 0 {
		cfg.MaxStaleness = replication.DefaultMaxStaleness
	}
	if cfg.RYWWait == 0 {
		cfg.RYWWait = defaultRYWWait
	}
	if cfg.StandbyInterval <= 0 {
		cfg.StandbyInterval = defaultStandbyInterval
	}
	if cfg.StandbyFailures <= 0 {
		cfg.StandbyFailures = defaultStandbyFailures
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, maps: maps, pools: pools, verifier: verifier, cursors: cursorCodec{key: cfg.CursorKey},
		log: cfg.Logger.With("region", cfg.Region), openapi: openapi, readPolicy: replication.Policy{MaxStaleness: cfg.MaxStaleness},
		standbys: &standbys{interval: cfg.StandbyInterval, failures: cfg.StandbyFailures, now: time.Now, shards: map[string]*standbyState{}}}
	s.metrics = newMetrics(pools)
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
	r.ContextWithFallback = true
	r.Use(problem.RequestID(), s.recover, s.observe, s.guard, gzipMiddleware())
	r.NoRoute(func(c *gin.Context) { problem.Write(c, http.StatusNotFound, "", "no such route") })
	r.NoMethod(func(c *gin.Context) {
		problem.Write(c, http.StatusMethodNotAllowed, "", "method not allowed on this route")
	})

	r.GET("/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) })
	r.GET("/readyz", s.readyz)
	r.GET("/metrics", gin.WrapH(promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})))
	r.GET("/openapi.json", func(c *gin.Context) {
		if s.openapi == nil {
			problem.Write(c, http.StatusNotFound, "", "no OpenAPI document configured")
			return
		}
		c.Data(http.StatusOK, "application/json", s.openapi)
	})
	internal := r.Group("/internal/v1", auth.ClusterToken(s.cfg.ClusterToken))
	internal.POST("/tenants", s.createTenant)
	internal.GET("/tenants/:id", s.getTenant)

	v1 := r.Group("/v1", auth.Middleware(s.verifier))
	read, write := auth.RequireScope(auth.ScopeRead), auth.RequireScope(auth.ScopeWrite)
	v1.POST("/collections/:collection/records", write, s.createRecord)
	v1.GET("/collections/:collection/records", read, s.listRecords)
	v1.GET("/collections/:collection/records/:id", read, s.getRecord)
	v1.PUT("/collections/:collection/records/:id", write, s.putRecord)
	v1.PATCH("/collections/:collection/records/:id", write, s.patchRecord)
	v1.DELETE("/collections/:collection/records/:id", write, s.deleteRecord)
	return r
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

// guard applies the request deadline, the body cap and the served-region header.
func (s *Server) guard(c *gin.Context) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), s.cfg.Deadline)
	defer cancel()
	c.Request = c.Request.WithContext(ctx)
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
	s.metrics.observe(route, c.Request.Method, status, time.Since(start))
	lvl := slog.LevelInfo
	if status >= 500 {
		lvl = slog.LevelError
	}
	if s.log.Enabled(c.Request.Context(), lvl) {
		s.log.LogAttrs(c.Request.Context(), lvl, "request", slog.String("request_id", c.GetString(problem.ContextKey)),
			slog.String("method", c.Request.Method), slog.String("route", route), slog.Int("status", status),
			slog.String("tenant", c.GetString("tenant")), slog.String("shard", c.GetString("shard")),
			slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000))
	}
}

func (s *Server) readyz(c *gin.Context) {
	if age := s.maps.Age(); age > s.cfg.MaxMapAge {
		problem.Write(c, http.StatusServiceUnavailable, "", "shard map is stale ("+age.Round(time.Millisecond).String()+")")
		return
	}
	shards := s.maps.Shards()
	if len(shards) == 0 {
		problem.Write(c, http.StatusServiceUnavailable, "", "shard map has no shards")
		return
	}
	for _, sh := range shards {
		pool, err := s.pools.Primary(c, sh)
		if err == nil {
			ctx, cancel := context.WithTimeout(c, time.Second)
			err = pool.Ping(ctx)
			cancel()
		}
		if err != nil {
			problem.Write(c, http.StatusServiceUnavailable, "", "shard "+sh.ID+" unreachable")
			return
		}
	}
	c.JSON(http.StatusOK, gin.H{"status": "ready", "map_version": s.maps.Version(), "shards": len(shards)})
}

// retryAfter writes a retryable 503.
func retryAfter(c *gin.Context, secs int, detail string) {
	c.Header("Retry-After", strconv.Itoa(secs))
	problem.Write(c, http.StatusServiceUnavailable, "", detail)
}
