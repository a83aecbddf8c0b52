// Command router is Meridian's regional front door: it authenticates and rate-limits /v1
// requests, routes them by tenant to API nodes (writes to the home region, reads locally),
// serves the admin API, and is a voter of the shard-map Raft group (DESIGN.md §3, §5).
//
// Every flag can also be set by the environment variable named in its help text; a flag on the
// command line wins. All wiring lives in internal/router.Start; this file only parses config.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/ratelimit"
	"github.com/meridian-dev/meridian/internal/router"
)

type config struct {
	pc                                          router.ProcessConfig
	jwtSecret, jwksFile, jwtIssuer, jwtAudience string
	join, gossipJoin, apiNodes                  string
	tenantRate, ipRate                          float64
	tenantBurst, ipBurst                        int
	shutdownGrace                               time.Duration
}

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func envDur(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return n
	}
	return def
}

func envFloat(name string, def float64) float64 {
	if f, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil {
		return f
	}
	return def
}

func envBool(name string, def bool) bool {
	if b, err := strconv.ParseBool(os.Getenv(name)); err == nil {
		return b
	}
	return def
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
	fs := flag.NewFlagSet("router", flag.ContinueOnError)
	fs.StringVar(&c.pc.Region, "region", env("MERIDIAN_REGION", ""), "this router's region (MERIDIAN_REGION; required)")
	fs.StringVar(&c.pc.ID, "id", env("MERIDIAN_ROUTER_ID", ""), "Raft id and gossip name, stable across restarts (MERIDIAN_ROUTER_ID; default <region>-router-<port>)")
	fs.StringVar(&c.pc.ListenAddr, "listen", env("MERIDIAN_ROUTER_LISTEN", "127.0.0.1:8080"), "HTTP listen address (MERIDIAN_ROUTER_LISTEN)")
	fs.StringVar(&c.pc.AdvertiseURL, "advertise-url", env("MERIDIAN_ROUTER_URL", ""), "base URL other nodes reach this router at (MERIDIAN_ROUTER_URL; default http://<listen>)")
	fs.StringVar(&c.pc.RaftAddr, "raft-addr", env("MERIDIAN_RAFT_ADDR", "127.0.0.1:7000"), "Raft bind address (MERIDIAN_RAFT_ADDR)")
	fs.StringVar(&c.pc.DataDir, "data-dir", env("MERIDIAN_DATA_DIR", "./data/router"), "shard-map data directory (MERIDIAN_DATA_DIR)")
	fs.BoolVar(&c.pc.Bootstrap, "bootstrap", envBool("MERIDIAN_BOOTSTRAP", false), "form a new map cluster if the data dir is empty (MERIDIAN_BOOTSTRAP)")
	fs.StringVar(&c.join, "join", env("MERIDIAN_JOIN", ""), "comma-separated router base URLs to join the map cluster through (MERIDIAN_JOIN)")
	fs.StringVar(&c.pc.GossipAddr, "gossip-addr", env("MERIDIAN_GOSSIP_ADDR", ""), "memberlist bind host:port; empty = no gossip (MERIDIAN_GOSSIP_ADDR)")
	fs.StringVar(&c.gossipJoin, "gossip-join", env("MERIDIAN_GOSSIP_JOIN", ""), "comma-separated gossip addresses to join (MERIDIAN_GOSSIP_JOIN)")
	fs.StringVar(&c.apiNodes, "api-nodes", env("MERIDIAN_API_NODES", ""), "static API nodes: region=url|url;region=url (MERIDIAN_API_NODES)")
	fs.StringVar(&c.pc.ClusterToken, "cluster-token", env("MERIDIAN_CLUSTER_TOKEN", ""), "cluster token of internal endpoints (MERIDIAN_CLUSTER_TOKEN; required)")
	fs.StringVar(&c.jwtSecret, "jwt-secret", env("MERIDIAN_JWT_SECRET", ""), "HS256 secret, raw bytes (MERIDIAN_JWT_SECRET)")
	fs.StringVar(&c.jwksFile, "jwks-file", env("MERIDIAN_JWKS_FILE", ""), "JWKS file with RS256/EdDSA keys (MERIDIAN_JWKS_FILE)")
	fs.StringVar(&c.jwtIssuer, "jwt-issuer", env("MERIDIAN_JWT_ISSUER", ""), "required iss; empty = not checked (MERIDIAN_JWT_ISSUER)")
	fs.StringVar(&c.jwtAudience, "jwt-audience", env("MERIDIAN_JWT_AUDIENCE", ""), "required aud; empty = not checked (MERIDIAN_JWT_AUDIENCE)")
	fs.StringVar(&c.pc.RedisAddr, "redis-addr", env("MERIDIAN_REDIS_ADDR", ""), "Redis host:port for rate limits; empty = in-process limits (MERIDIAN_REDIS_ADDR)")
	fs.Float64Var(&c.tenantRate, "tenant-rate", envFloat("MERIDIAN_TENANT_RATE", 500), "requests/s per tenant (MERIDIAN_TENANT_RATE)")
	fs.IntVar(&c.tenantBurst, "tenant-burst", envInt("MERIDIAN_TENANT_BURST", 1000), "burst per tenant (MERIDIAN_TENANT_BURST)")
	fs.Float64Var(&c.ipRate, "ip-rate", envFloat("MERIDIAN_IP_RATE", 2000), "requests/s per client IP (MERIDIAN_IP_RATE)")
	fs.IntVar(&c.ipBurst, "ip-burst", envInt("MERIDIAN_IP_BURST", 2000), "burst per client IP (MERIDIAN_IP_BURST)")
	fs.DurationVar(&c.pc.Lease, "lease", envDur("MERIDIAN_WRITE_LEASE", 2*time.Second), "writes stop this long after the last Raft leader contact (MERIDIAN_WRITE_LEASE)")
	fs.DurationVar(&c.pc.UpstreamTimeout, "upstream-timeout", envDur("MERIDIAN_UPSTREAM_TIMEOUT", 5*time.Second), "wait for an API node's response headers (MERIDIAN_UPSTREAM_TIMEOUT)")
	fs.IntVar(&c.pc.MaxInFlight, "max-inflight", envInt("MERIDIAN_MAX_INFLIGHT", 256), "concurrent requests per API node before 503 (MERIDIAN_MAX_INFLIGHT)")
	fs.DurationVar(&c.shutdownGrace, "shutdown-grace", envDur("MERIDIAN_SHUTDOWN_GRACE", 20*time.Second), "time to finish in-flight requests on shutdown (MERIDIAN_SHUTDOWN_GRACE)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.pc.Region == "" || c.pc.ClusterToken == "" {
		return c, errors.New("-region and -cluster-token are required")
	}
	if c.jwtSecret == "" && c.jwksFile == "" {
		return c, errors.New("one of -jwt-secret and -jwks-file is required")
	}
	c.pc.Join, c.pc.GossipJoin = splitList(c.join), splitList(c.gossipJoin)
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
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("component", "router")
	slog.SetDefault(log)
	cfg, err := parseConfig(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "router:", err)
		os.Exit(2)
	}
	if err := run(cfg, log); err != nil {
		log.Error("exit", "err", err)
		os.Exit(1)
	}
}

func run(cfg config, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
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
