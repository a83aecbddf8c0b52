// Command router is Meridian's regional front door: it authenticates and rate-limits /v1
// requests, routes them by tenant to API nodes (writes to the home region, reads locally),
// serves the admin API, and is a voter of the shard-map Raft group (DESIGN.md §3, §5).
//
// Every flag can also be set by the environment variable named in its help text; a flag on the
// command line wins. A malformed variable (a number or duration that does not parse) is refused
// with exit status 2, not ignored (internal/envflag). All wiring lives in internal/router.Start;
// this file only parses config.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/daemon"
	"github.com/meridian-dev/meridian/internal/envflag"
	"github.com/meridian-dev/meridian/internal/ratelimit"
	"github.com/meridian-dev/meridian/internal/router"
)

type config struct {
	pc                                          router.ProcessConfig
	jwtSecret, jwksFile, jwtIssuer, jwtAudience string
	join, gossipJoin, apiNodes, trustedProxies  string
	tenantRate, ipRate                          float64
	tenantBurst, ipBurst                        int
	shutdownGrace                               time.Duration
	debugAddr                                   string
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
	env := envflag.New(nil)
	fs := flag.NewFlagSet("router", flag.ContinueOnError)
	fs.StringVar(&c.pc.Region, "region", env.String("MERIDIAN_REGION", ""), "this router's region (MERIDIAN_REGION; required)")
	fs.StringVar(&c.pc.ID, "id", env.String("MERIDIAN_ROUTER_ID", ""), "Raft id and gossip name, stable across restarts (MERIDIAN_ROUTER_ID; default <region>-router-<port>)")
	fs.StringVar(&c.pc.ListenAddr, "listen", env.String("MERIDIAN_ROUTER_LISTEN", "127.0.0.1:8080"), "HTTP listen address (MERIDIAN_ROUTER_LISTEN)")
	fs.StringVar(&c.pc.AdvertiseURL, "advertise-url", env.String("MERIDIAN_ROUTER_URL", ""), "base URL other nodes reach this router at (MERIDIAN_ROUTER_URL; default http://<listen>)")
	fs.StringVar(&c.pc.RaftAddr, "raft-addr", env.String("MERIDIAN_RAFT_ADDR", "127.0.0.1:7000"), "Raft bind address (MERIDIAN_RAFT_ADDR)")
	fs.StringVar(&c.pc.DataDir, "data-dir", env.String("MERIDIAN_DATA_DIR", "./data/router"), "shard-map data directory (MERIDIAN_DATA_DIR)")
	fs.BoolVar(&c.pc.Bootstrap, "bootstrap", env.Bool("MERIDIAN_BOOTSTRAP", false), "form a new map cluster if the data dir is empty (MERIDIAN_BOOTSTRAP)")
	fs.StringVar(&c.join, "join", env.String("MERIDIAN_JOIN", ""), "comma-separated router base URLs to join the map cluster through (MERIDIAN_JOIN)")
	fs.StringVar(&c.pc.GossipAddr, "gossip-addr", env.String("MERIDIAN_GOSSIP_ADDR", ""), "memberlist bind host:port; empty = no gossip (MERIDIAN_GOSSIP_ADDR)")
	fs.StringVar(&c.gossipJoin, "gossip-join", env.String("MERIDIAN_GOSSIP_JOIN", ""), "comma-separated gossip addresses to join (MERIDIAN_GOSSIP_JOIN)")
	fs.StringVar(&c.trustedProxies, "trusted-proxies", env.String("MERIDIAN_TRUSTED_PROXIES", ""), "comma-separated IPs or CIDRs of load balancers whose X-Forwarded-For is believed; empty = none, the client IP is the TCP peer's (MERIDIAN_TRUSTED_PROXIES)")
	fs.StringVar(&c.apiNodes, "api-nodes", env.String("MERIDIAN_API_NODES", ""), "static API nodes: region=url|url;region=url (MERIDIAN_API_NODES)")
	fs.StringVar(&c.pc.ClusterToken, "cluster-token", env.String("MERIDIAN_CLUSTER_TOKEN", ""), "cluster token of internal endpoints (MERIDIAN_CLUSTER_TOKEN; required)")
	fs.StringVar(&c.jwtSecret, "jwt-secret", env.String("MERIDIAN_JWT_SECRET", ""), "HS256 secret, raw bytes (MERIDIAN_JWT_SECRET)")
	fs.StringVar(&c.jwksFile, "jwks-file", env.String("MERIDIAN_JWKS_FILE", ""), "JWKS file with RS256/EdDSA keys (MERIDIAN_JWKS_FILE)")
	fs.StringVar(&c.jwtIssuer, "jwt-issuer", env.String("MERIDIAN_JWT_ISSUER", ""), "required iss; empty = not checked (MERIDIAN_JWT_ISSUER)")
	fs.StringVar(&c.jwtAudience, "jwt-audience", env.String("MERIDIAN_JWT_AUDIENCE", ""), "required aud; empty = not checked (MERIDIAN_JWT_AUDIENCE)")
	fs.StringVar(&c.pc.RedisAddr, "redis-addr", env.String("MERIDIAN_REDIS_ADDR", ""), "Redis host:port for rate limits; empty = in-process limits (MERIDIAN_REDIS_ADDR)")
	fs.Float64Var(&c.tenantRate, "tenant-rate", env.Float64("MERIDIAN_TENANT_RATE", 500), "requests/s per tenant (MERIDIAN_TENANT_RATE)")
	fs.IntVar(&c.tenantBurst, "tenant-burst", env.Int("MERIDIAN_TENANT_BURST", 1000), "burst per tenant (MERIDIAN_TENANT_BURST)")
	fs.Float64Var(&c.ipRate, "ip-rate", env.Float64("MERIDIAN_IP_RATE", 2000), "requests/s per client IP (MERIDIAN_IP_RATE)")
	fs.IntVar(&c.ipBurst, "ip-burst", env.Int("MERIDIAN_IP_BURST", 2000), "burst per client IP (MERIDIAN_IP_BURST)")
	fs.DurationVar(&c.pc.RateLimitLease, "ratelimit-lease", env.Duration("MERIDIAN_RATELIMIT_LEASE", 100*time.Millisecond), "spend rate-limit tokens leased from Redis locally for up to this long; negative = ask Redis on every request (MERIDIAN_RATELIMIT_LEASE)")
	fs.DurationVar(&c.pc.Lease, "lease", env.Duration("MERIDIAN_WRITE_LEASE", 2*time.Second), "writes stop this long after the last Raft leader contact (MERIDIAN_WRITE_LEASE)")
	fs.DurationVar(&c.pc.UpstreamTimeout, "upstream-timeout", env.Duration("MERIDIAN_UPSTREAM_TIMEOUT", 5*time.Second), "wait for an API node's response headers (MERIDIAN_UPSTREAM_TIMEOUT)")
	fs.IntVar(&c.pc.MaxInFlight, "max-inflight", env.Int("MERIDIAN_MAX_INFLIGHT", 256), "concurrent requests per API node before 503 (MERIDIAN_MAX_INFLIGHT)")
	fs.StringVar(&c.debugAddr, "debug-addr", env.String("MERIDIAN_DEBUG_ADDR", ""), "serve Go profiles (/debug/pprof/) on this private host:port (MERIDIAN_DEBUG_ADDR; empty = off)")
	fs.DurationVar(&c.shutdownGrace, "shutdown-grace", env.Duration("MERIDIAN_SHUTDOWN_GRACE", 20*time.Second), "time to finish in-flight requests on shutdown (MERIDIAN_SHUTDOWN_GRACE)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if err := env.Err(); err != nil {
		return c, err
	}
	if c.pc.Region == "" || c.pc.ClusterToken == "" {
		return c, errors.New("-region and -cluster-token are required")
	}
	if c.jwtSecret == "" && c.jwksFile == "" {
		return c, errors.New("one of -jwt-secret and -jwks-file is required")
	}
	c.pc.Join, c.pc.GossipJoin = splitList(c.join), splitList(c.gossipJoin)
	c.pc.TrustedProxies = splitList(c.trustedProxies)
	nodes, err := parseAPINodes(c.apiNodes)
	if err != nil {
		return c, err
	}
	c.pc.StaticAPI = nodes
	c.pc.Limits = map[ratelimit.Rule]ratelimit.Limit{
		{Scope: ratelimit.ScopeTenant}: {Rate: c.tenantRate, Burst: c.tenantBurst},
		{Scope: ratelimit.ScopeIP}:     {Rate: c.ipRate, Burst: c.ipBurst},
	}
	return c, nil
}

func main() {
	cfg, err := parseConfig(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "router:", err)
		os.Exit(2)
	}
	os.Exit(daemon.Main("router", cfg.debugAddr, func(ctx context.Context, log *slog.Logger) error {
		return run(ctx, cfg, log)
	}))
}

// run serves until ctx ends (SIGINT/SIGTERM), then shuts down in order.
func run(ctx context.Context, cfg config, log *slog.Logger) error {
	verifier, err := auth.NewVerifier(auth.Config{Secret: []byte(cfg.jwtSecret), JWKSFile: cfg.jwksFile,
		Issuer: cfg.jwtIssuer, Audience: cfg.jwtAudience})
	if err != nil {
		return err
	}
	cfg.pc.Verifier, cfg.pc.Logger = verifier, log
	p, err := router.Start(ctx, cfg.pc)
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownGrace)
	defer cancel()
	return p.Shutdown(sctx)
}
