// Command router is Meridian's regional front door: it authenticates and rate-limits /v1
// requests, routes them by tenant to API nodes (writes to the home region, reads locally),
// serves the admin API, and is a voter of the shard-map Raft group (DESIGN.md §3, §5).
//
// Every flag can also be set by the environment variable named in its help text; a flag on the
// command line wins. A malformed variable (a number or duration that does not parse) is refused
// with exit status 2, not ignored (internal/envflag). run lists the router's parts in the order
// they are built and started (docs/router.md); they are stopped in reverse order.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/cache"
	"github.com/meridian-dev/meridian/internal/daemon"
	"github.com/meridian-dev/meridian/internal/envflag"
	"github.com/meridian-dev/meridian/internal/ratelimit"
	"github.com/meridian-dev/meridian/internal/router"
	"github.com/meridian-dev/meridian/region"
	"github.com/meridian-dev/meridian/shardmap"
)

// The fronts -front chooses between.
const (
	frontLoop = "loop"
	frontHTTP = "http"
)

type config struct {
	region, id, listen, advertiseURL, raftAddr, dataDir string
	bootstrap                                           bool
	join, gossipJoin, trustedProxies                    []string
	gossipAddr                                          string
	staticAPI                                           map[string][]string
	clusterToken                                        string
	jwtSecret, jwksFile, jwtIssuer, jwtAudience         string
	redisAddr                                           string
	edgeCache                                           bool
	front, loopListen                                   string
	loops                                               int
	edgeMemory                                          int
	cacheMaxLag                                         time.Duration
	limits                                              map[ratelimit.Rule]ratelimit.Limit
	rateLimitLease, lease, upstreamTimeout              time.Duration
	maxInFlight, tenantConcurrency, tenantStreams       int
	holdMax                                             int
	holdTime                                            time.Duration
	httpLimits                                          daemon.HTTPLimits
	shutdownGrace                                       time.Duration
	debugAddr                                           string
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// parseAPINodes reads "us-east=http://a:1|http://b:2;eu-west=http://c:3".
func parseAPINodes(s string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, part := range strings.Split(s, ";") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		region, urls, ok := strings.Cut(part, "=")
		if !ok || region == "" || urls == "" {
			return nil, fmt.Errorf("api nodes: %q is not region=url|url", part)
		}
		out[region] = append(out[region], strings.Split(urls, "|")...)
	}
	return out, nil
}

func parseConfig(args []string) (config, error) {
	var c config
	var join, gossipJoin, apiNodes, trustedProxies string
	var tenantRate, ipRate float64
	var tenantBurst, ipBurst int
	env := envflag.New(nil)
	fs := flag.NewFlagSet("router", flag.ContinueOnError)
	fs.StringVar(&c.region, "region", env.String("MERIDIAN_REGION", ""), "this router's region (MERIDIAN_REGION; required)")
	fs.StringVar(&c.id, "id", env.String("MERIDIAN_ROUTER_ID", ""), "Raft id and gossip name, stable across restarts (MERIDIAN_ROUTER_ID; default <region>-router-<port>)")
	fs.StringVar(&c.listen, "listen", env.String("MERIDIAN_ROUTER_LISTEN", "127.0.0.1:8080"), "HTTP listen address (MERIDIAN_ROUTER_LISTEN)")
	fs.StringVar(&c.front, "front", env.String("MERIDIAN_ROUTER_FRONT", frontLoop), "what serves -listen: \"loop\", the event-loop front (the router's steps on gnet's event loops; what it does not serve natively, such as change streams and the admin API, it hands to net/http), or \"http\", net/http alone (docs/router.md, \"The event-loop front\") (MERIDIAN_ROUTER_FRONT)")
	fs.IntVar(&c.loops, "loops", env.Int("MERIDIAN_ROUTER_LOOPS", 0), "event loops of each event-loop front, -listen's and -loop-listen's (0 = GOMAXPROCS less one, at least one: docs/router.md, \"The router's own work\") (MERIDIAN_ROUTER_LOOPS)")
	fs.StringVar(&c.loopListen, "loop-listen", env.String("MERIDIAN_ROUTER_LOOP_LISTEN", ""), "also serve the router on this host:port through an event-loop front of its own, whatever -front says: a second listener to set the two fronts side by side (empty = off) (MERIDIAN_ROUTER_LOOP_LISTEN)")
	fs.StringVar(&c.advertiseURL, "advertise-url", env.String("MERIDIAN_ROUTER_URL", ""), "base URL other nodes reach this router at (MERIDIAN_ROUTER_URL; default http://<listen>)")
	fs.StringVar(&c.raftAddr, "raft-addr", env.String("MERIDIAN_RAFT_ADDR", "127.0.0.1:7000"), "Raft bind address (MERIDIAN_RAFT_ADDR)")
	fs.StringVar(&c.dataDir, "data-dir", env.String("MERIDIAN_DATA_DIR", "./data/router"), "shard-map data directory (MERIDIAN_DATA_DIR)")
	fs.BoolVar(&c.bootstrap, "bootstrap", env.Bool("MERIDIAN_BOOTSTRAP", false), "form a new map cluster if the data dir is empty (MERIDIAN_BOOTSTRAP)")
	fs.StringVar(&join, "join", env.String("MERIDIAN_JOIN", ""), "comma-separated router base URLs to join the map cluster through (MERIDIAN_JOIN)")
	fs.StringVar(&c.gossipAddr, "gossip-addr", env.String("MERIDIAN_GOSSIP_ADDR", ""), "memberlist bind host:port; empty = no gossip (MERIDIAN_GOSSIP_ADDR)")
	fs.StringVar(&gossipJoin, "gossip-join", env.String("MERIDIAN_GOSSIP_JOIN", ""), "comma-separated gossip addresses to join (MERIDIAN_GOSSIP_JOIN)")
	fs.StringVar(&trustedProxies, "trusted-proxies", env.String("MERIDIAN_TRUSTED_PROXIES", ""), "comma-separated IPs or CIDRs of load balancers whose X-Forwarded-For is believed; empty = none, the client IP is the TCP peer's (MERIDIAN_TRUSTED_PROXIES)")
	fs.StringVar(&apiNodes, "api-nodes", env.String("MERIDIAN_API_NODES", ""), "static API nodes: region=url|url;region=url (MERIDIAN_API_NODES)")
	fs.StringVar(&c.clusterToken, "cluster-token", env.String("MERIDIAN_CLUSTER_TOKEN", ""), "cluster token of internal endpoints (MERIDIAN_CLUSTER_TOKEN; required)")
	fs.StringVar(&c.jwtSecret, "jwt-secret", env.String("MERIDIAN_JWT_SECRET", ""), "HS256 secret, raw bytes (MERIDIAN_JWT_SECRET)")
	fs.StringVar(&c.jwksFile, "jwks-file", env.String("MERIDIAN_JWKS_FILE", ""), "JWKS file with RS256/EdDSA keys (MERIDIAN_JWKS_FILE)")
	fs.StringVar(&c.jwtIssuer, "jwt-issuer", env.String("MERIDIAN_JWT_ISSUER", ""), "required iss; empty = not checked (MERIDIAN_JWT_ISSUER)")
	fs.StringVar(&c.jwtAudience, "jwt-audience", env.String("MERIDIAN_JWT_AUDIENCE", ""), "required aud; empty = not checked (MERIDIAN_JWT_AUDIENCE)")
	fs.StringVar(&c.redisAddr, "redis-addr", env.String("MERIDIAN_REDIS_ADDR", ""), "Redis host:port for rate limits; empty = in-process limits (MERIDIAN_REDIS_ADDR)")
	fs.BoolVar(&c.edgeCache, "edge-cache", env.Bool("MERIDIAN_EDGE_CACHE", true), "answer plain record GETs from the region's Redis cache (the one -redis-addr names, which the region's API nodes fill and invalidate) instead of forwarding them; no effect without -redis-addr (MERIDIAN_EDGE_CACHE)")
	fs.IntVar(&c.edgeMemory, "edge-cache-memory", env.Int("MERIDIAN_EDGE_CACHE_MEMORY", cache.DefaultEdgeMemory), "most bytes of the region's Redis keys the edge keeps in the router's memory, least recently used out first (Redis invalidates them as they change) (MERIDIAN_EDGE_CACHE_MEMORY)")
	fs.DurationVar(&c.cacheMaxLag, "cache-max-lag", env.Duration("MERIDIAN_CACHE_MAX_LAG", cache.DefaultEdgeMaxStaleness), "most an edge-cached read may lag its shard's writes: a shard whose freshness, as the region's API nodes publish it, is older is not answered from the cache; as the API nodes' -cache-max-lag (MERIDIAN_CACHE_MAX_LAG)")
	fs.Float64Var(&tenantRate, "tenant-rate", env.Float64("MERIDIAN_TENANT_RATE", 500), "requests/s per tenant (MERIDIAN_TENANT_RATE)")
	fs.IntVar(&tenantBurst, "tenant-burst", env.Int("MERIDIAN_TENANT_BURST", 1000), "burst per tenant (MERIDIAN_TENANT_BURST)")
	fs.Float64Var(&ipRate, "ip-rate", env.Float64("MERIDIAN_IP_RATE", 2000), "requests/s per client IP (MERIDIAN_IP_RATE)")
	fs.IntVar(&ipBurst, "ip-burst", env.Int("MERIDIAN_IP_BURST", 2000), "burst per client IP (MERIDIAN_IP_BURST)")
	fs.DurationVar(&c.rateLimitLease, "ratelimit-lease", env.Duration("MERIDIAN_RATELIMIT_LEASE", 100*time.Millisecond), "spend rate-limit tokens leased from Redis locally for up to this long; negative = ask Redis on every request (MERIDIAN_RATELIMIT_LEASE)")
	fs.DurationVar(&c.lease, "lease", env.Duration("MERIDIAN_WRITE_LEASE", 2*time.Second), "writes stop this long after the last Raft leader contact (MERIDIAN_WRITE_LEASE)")
	fs.DurationVar(&c.upstreamTimeout, "upstream-timeout", env.Duration("MERIDIAN_UPSTREAM_TIMEOUT", 5*time.Second), "request deadline: wait for an API node's response headers, all attempts together, from the moment the body is in; API nodes are told the time left (MERIDIAN_UPSTREAM_TIMEOUT)")
	fs.IntVar(&c.maxInFlight, "max-inflight", env.Int("MERIDIAN_MAX_INFLIGHT", 256), "concurrent requests per API node before 503 (MERIDIAN_MAX_INFLIGHT)")
	fs.IntVar(&c.tenantConcurrency, "tenant-concurrency", env.Int("MERIDIAN_TENANT_CONCURRENCY", 100), "requests in flight per tenant through this router before 429; a tenant's override in the map wins (MERIDIAN_TENANT_CONCURRENCY)")
	fs.IntVar(&c.tenantStreams, "tenant-streams", env.Int("MERIDIAN_TENANT_STREAMS", 20), "open change streams (/v1/changes) per tenant through this router before 429; streams do not count against -tenant-concurrency (MERIDIAN_TENANT_STREAMS)")
	fs.IntVar(&c.holdMax, "hold-max", env.Int("MERIDIAN_HOLD_MAX", 1000), "writes this router holds at once while a moved tenant's cutover fences them, instead of answering 503; beyond it 503 tenant-fenced; 0 = hold none (MERIDIAN_HOLD_MAX)")
	fs.DurationVar(&c.holdTime, "hold-time", env.Duration("MERIDIAN_HOLD_TIME", 5*time.Second), "longest a fenced write is held waiting for its tenant's new home; then 503 tenant-fenced (MERIDIAN_HOLD_TIME)")
	daemon.HTTPLimitFlags(fs, env, &c.httpLimits)
	fs.StringVar(&c.debugAddr, "debug-addr", env.String("MERIDIAN_DEBUG_ADDR", ""), "serve Go profiles (/debug/pprof/) on this private host:port (MERIDIAN_DEBUG_ADDR; empty = off)")
	fs.DurationVar(&c.shutdownGrace, "shutdown-grace", env.Duration("MERIDIAN_SHUTDOWN_GRACE", 20*time.Second), "time to finish in-flight requests on shutdown (MERIDIAN_SHUTDOWN_GRACE)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if err := env.Err(); err != nil {
		return c, err
	}
	if c.region == "" || c.clusterToken == "" {
		return c, errors.New("-region and -cluster-token are required")
	}
	if c.tenantConcurrency < 1 {
		return c, fmt.Errorf("-tenant-concurrency must be at least 1, got %d", c.tenantConcurrency)
	}
	if c.tenantStreams < 1 {
		return c, fmt.Errorf("-tenant-streams must be at least 1, got %d", c.tenantStreams)
	}
	if c.holdMax < 0 {
		return c, fmt.Errorf("-hold-max must not be negative, got %d", c.holdMax)
	}
	if c.loops < 0 {
		return c, fmt.Errorf("-loops must not be negative, got %d", c.loops)
	}
	if c.front != frontLoop && c.front != frontHTTP {
		return c, fmt.Errorf("-front must be %q or %q, got %q", frontLoop, frontHTTP, c.front)
	}
	if c.holdTime <= 0 {
		return c, fmt.Errorf("-hold-time must be positive, got %v", c.holdTime)
	}
	if c.jwtSecret == "" && c.jwksFile == "" {
		return c, errors.New("one of -jwt-secret and -jwks-file is required")
	}
	c.join, c.gossipJoin = splitList(join), splitList(gossipJoin)
	c.trustedProxies = splitList(trustedProxies)
	nodes, err := parseAPINodes(apiNodes)
	if err != nil {
		return c, err
	}
	c.staticAPI = nodes
	c.limits = map[ratelimit.Rule]ratelimit.Limit{
		{Scope: ratelimit.ScopeTenant}: {Rate: tenantRate, Burst: tenantBurst},
		{Scope: ratelimit.ScopeIP}:     {Rate: ipRate, Burst: ipBurst},
	}
	return c, nil
}

func main() {
	cfg, err := parseConfig(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "router:", err)
		os.Exit(2)
	}
	// Request ids (UUIDv7, one per request without one) draw their randomness from a pool
	// refilled 4 KiB at a time instead of a read of crypto/rand each. Set before any goroutine
	// makes one (the pool is not safe to switch on concurrently).
	uuid.EnableRandPool()
	os.Exit(daemon.Main("router", cfg.debugAddr, func(ctx context.Context, log *slog.Logger) error {
		return run(ctx, cfg, log)
	}))
}

// run builds and starts the router's parts in order, serves until ctx ends (SIGINT/SIGTERM) or
// a part fails, then stops the parts in reverse order: the HTTP server drains (up to the grace
// period), the rate limiter lets go of Redis, gossip departs, the map node leaves Raft.
func run(ctx context.Context, cfg config, log *slog.Logger) error {
	log = log.With("region", cfg.region)
	parts := daemon.NewParts(log)
	// A failed start stops what had started; after the final Stop below this does nothing.
	defer parts.Stop(context.Background())

	verifier, err := auth.NewVerifier(auth.Config{Secret: []byte(cfg.jwtSecret), JWKSFile: cfg.jwksFile,
		Issuer: cfg.jwtIssuer, Audience: cfg.jwtAudience})
	if err != nil {
		return err
	}

	// Listener first: the advertised URL and the default id name its port. The event-loop
	// front binds now and serves once the Server exists (Loop.Serve); until then its
	// connections wait, as they would in net/http's listener's queue.
	var (
		ln   net.Listener
		lp   *router.Loop
		addr string
	)
	if cfg.front == frontLoop {
		if lp, err = router.ListenLoop(cfg.listen, cfg.loops, log); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		parts.Add("listener", lp.Stop)
		addr = lp.Addr()
	} else {
		if ln, err = net.Listen("tcp", cfg.listen); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		parts.Add("listener", func(context.Context) error { return closeListener(ln) })
		addr = ln.Addr().String()
	}
	url := cfg.advertiseURL
	if url == "" {
		url = "http://" + addr
	}
	id := cfg.id
	if id == "" {
		_, port, _ := net.SplitHostPort(addr)
		id = cfg.region + "-router-" + port
	}
	reg := prometheus.NewRegistry()

	// Shard map: this router's Raft voter and its copy of the map.
	node, err := shardmap.NewNode(shardmap.NodeConfig{ID: id, DataDir: cfg.dataDir, RaftAddr: cfg.raftAddr,
		HTTPAddr: url, Bootstrap: cfg.bootstrap, Join: cfg.join, Token: cfg.clusterToken, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	parts.Add("shard map node", func(context.Context) error { return node.Shutdown() })
	view := router.NodeMap{Node: node}

	// Gossip: finds API nodes; publishes this router's map version.
	var gossip *region.Cluster
	if cfg.gossipAddr != "" {
		gossip, err = region.Join(ctx, region.JoinConfig{Name: id, Region: cfg.region, Role: region.RoleRouter, URL: url,
			Addr: cfg.gossipAddr, Join: cfg.gossipJoin, Logger: log, Status: router.MapStatus(view)})
		if err != nil {
			return err
		}
		parts.Add("gossip", gossip.Depart)
	}

	limiter, stopLimiter, err := router.NewLimiter(router.LimiterConfig{RedisAddr: cfg.redisAddr, Limits: cfg.limits,
		Lease: cfg.rateLimitLease, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	parts.Add("rate limiter", stopLimiter)

	var edge router.EdgeCache
	if cfg.edgeCache && cfg.redisAddr != "" {
		e, err := cache.NewEdge(cache.EdgeConfig{Addr: cfg.redisAddr, Memory: cfg.edgeMemory, MaxStaleness: cfg.cacheMaxLag, Logger: log, Registerer: reg})
		if err != nil {
			return err
		}
		parts.Go("edge cache", e.Run)
		edge = e
	}

	upstreams, err := router.NewUpstreams(router.UpstreamsConfig{Gossip: gossip, Static: cfg.staticAPI,
		Regions: func() []string { return node.Map().Regions() }, MaxInFlight: cfg.maxInFlight, Registerer: reg})
	if err != nil {
		return err
	}

	rcfg := router.Config{Region: cfg.region, Map: view, MapHandler: node.Handler(), Auth: router.JWTAuth{Verifier: verifier},
		Limiter: router.RateLimiter{L: limiter}, Upstreams: upstreams, Edge: edge, ClusterToken: cfg.clusterToken, Lease: cfg.lease,
		UpstreamTimeout: cfg.upstreamTimeout, TrustedProxies: cfg.trustedProxies, TenantConcurrency: cfg.tenantConcurrency,
		TenantStreams: cfg.tenantStreams, Hold: holdPolicy(cfg), Registry: reg, Logger: log}
	if gossip != nil {
		rcfg.Members = router.GossipMembers{Cluster: gossip}
	}
	srv, err := router.New(rcfg)
	if err != nil {
		return err
	}

	// HTTP: on stop, the listener closes and in-flight requests get up to the grace period.
	parts.Go("http", func(ctx context.Context) error {
		hs := daemon.NewHTTPServer(srv.Handler(), cfg.httpLimits)
		// Open change streams end at shutdown (clients resume elsewhere with Last-Event-ID)
		// instead of holding the drain for the whole grace period.
		hs.RegisterOnShutdown(srv.StopStreams)
		var loops []*router.Loop
		if lp != nil {
			if err := lp.Serve(srv, hs); err != nil {
				return err
			}
			loops = append(loops, lp)
			log.Info("event-loop front serving", "addr", lp.Addr(), "front", cfg.front)
		}
		if cfg.loopListen != "" {
			second, err := srv.StartLoop(router.LoopConfig{Addr: cfg.loopListen, Loops: cfg.loops, HTTP: hs})
			if err != nil {
				return err
			}
			loops = append(loops, second)
			log.Info("event-loop front listening", "addr", second.Addr())
		}
		// On stop the loops drain beside the HTTP server, within the same grace period.
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownGrace)
			defer cancel()
			var wg sync.WaitGroup
			for _, l := range loops {
				wg.Go(func() {
					if err := l.Shutdown(sctx); err != nil {
						log.Warn("event-loop front: drain cut short", "addr", l.Addr(), "err", err)
					}
				})
			}
			wg.Wait()
		}()
		if ln == nil {
			// The HTTP server serves only what the loop detaches (Loop.Serve started it on
			// that): it drains with the loop at stop.
			select {
			case <-ctx.Done():
			case <-lp.Exited(): // the engine failed: the part stops, and the router with it
				_ = hs.Close()
				return errors.New("event-loop front stopped serving -listen")
			}
			err := daemon.ShutdownHTTP(hs, cfg.shutdownGrace)
			<-drained
			return err
		}
		err = daemon.ServeHTTP(ctx, hs, ln, cfg.shutdownGrace)
		if ctx.Err() == nil { // the server failed: the part stops, and the loops with it
			for _, l := range loops {
				_ = l.Stop(context.Background())
			}
			return err
		}
		<-drained
		return err
	})
	log.Info("router listening", "url", url, "raft", node.RaftAddr(), "id", id)

	err = parts.Wait(ctx)
	log.Info("shutting down", "err", err)
	// No deadline: each part bounds its own stop (the HTTP drain by -shutdown-grace).
	return errors.Join(err, parts.Stop(context.Background()))
}

// The edge answers the event-loop front's lookups from memory on its loops.
var _ router.EdgeNoWait = (*cache.Edge)(nil)

// holdPolicy is the router's cutover hold from -hold-max and -hold-time (-hold-max 0, hold
// none, is HoldPolicy's negative Max: its zero means the default).
func holdPolicy(cfg config) router.HoldPolicy {
	p := router.HoldPolicy{Max: cfg.holdMax, Time: cfg.holdTime}
	if p.Max == 0 {
		p.Max = -1
	}
	return p
}

// closeListener closes ln unless the HTTP server already did.
func closeListener(ln net.Listener) error {
	if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
