package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/ratelimit"
	"github.com/meridian-dev/meridian/internal/upstream"
	"github.com/meridian-dev/meridian/region"
	"github.com/meridian-dev/meridian/shardmap"
)

// ProcessConfig is everything one router process is built from; cmd/router fills it from flags
// and the system tests fill it directly. Zero values mean the documented defaults.
type ProcessConfig struct {
	// ID is the router's Raft id and gossip name; "": "<region>-router-<port>".
	ID string
	// Region is the router's region (required).
	Region string
	// Listener serves HTTP; nil: listen on ListenAddr ("": 127.0.0.1:0).
	Listener   net.Listener
	ListenAddr string
	// AdvertiseURL is the base URL others reach this router at; "": http://<listener addr>.
	AdvertiseURL string
	// DataDir holds the map node's Raft data (required).
	DataDir string
	// RaftAddr is the Raft bind address (required; port 0 picks one — a restarting router must
	// reuse its address).
	RaftAddr string
	// Bootstrap forms a new single-voter map cluster when DataDir is empty.
	Bootstrap bool
	// Join lists base URLs of existing routers to join the map cluster through.
	Join []string
	// ClusterToken authenticates internal endpoints (required).
	ClusterToken string
	// Verifier validates JWTs (required).
	Verifier *auth.Verifier
	// RedisAddr is the region's Redis for rate limits; "": in-process limits only.
	RedisAddr string
	// Limits are the rate limits; nil: ratelimit.DefaultLimits().
	Limits map[ratelimit.Rule]ratelimit.Limit
	// RateLimitLease is how long tokens leased from Redis may be spent locally (see
	// internal/ratelimit); 0: 100 ms; negative: no leases, every decision asks Redis.
	RateLimitLease time.Duration
	// TrustedProxies: see Config.TrustedProxies (nil: none).
	TrustedProxies []string
	// StaticAPI lists API node base URLs per region, used with (or instead of) gossip.
	StaticAPI map[string][]string
	// GossipAddr is the memberlist bind "host:port"; "": no gossip (static API nodes only).
	GossipAddr string
	// GossipJoin lists gossip addresses of existing members.
	GossipJoin []string
	// GossipConfig is the base memberlist config; nil: memberlist.DefaultLANConfig().
	GossipConfig *memberlist.Config
	// Lease, UpstreamTimeout: see Config. MaxInFlight, EjectBase: see upstream.Config.
	Lease           time.Duration
	UpstreamTimeout time.Duration
	MaxInFlight     int
	EjectBase       time.Duration
	// FailureThreshold is how many consecutive failures eject a node; 0: 5.
	FailureThreshold int
	// WrapMap, if set, wraps the router's view of the map (tests use it to make one router's
	// copy lag behind the cluster's).
	WrapMap func(ShardMap) ShardMap
	// RaftTune adjusts Raft timings (tests cut them to tens of ms).
	RaftTune func(*raft.Config)
	// Logger: nil means slog.Default().
	Logger *slog.Logger
}

// Process is a running router: map node, gossip member, limiter, pool and HTTP server.
type Process struct {
	Node     *shardmap.Node
	Server   *Server
	Gossip   *region.Cluster // nil without gossip
	Limiter  *ratelimit.Limiter
	Pool     *upstream.Pool
	URL      string
	Registry *prometheus.Registry

	http  *http.Server
	redis *redis.Client
	done  chan struct{}
}

// Start builds and starts a router process.
func Start(ctx context.Context, pc ProcessConfig) (p *Process, err error) {
	if pc.Region == "" || pc.DataDir == "" || pc.RaftAddr == "" || pc.ClusterToken == "" || pc.Verifier == nil {
		return nil, errors.New("router: ProcessConfig needs Region, DataDir, RaftAddr, ClusterToken and Verifier")
	}
	log := pc.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("region", pc.Region)
	ln := pc.Listener
	if ln == nil {
		addr := pc.ListenAddr
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		if ln, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("router: listen: %w", err)
		}
	}
	p = &Process{Registry: prometheus.NewRegistry(), done: make(chan struct{})}
	defer func() {
		if err != nil {
			ln.Close()
			p.Close()
		}
	}()
	p.URL = pc.AdvertiseURL
	if p.URL == "" {
		p.URL = "http://" + ln.Addr().String()
	}
	if pc.ID == "" {
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		pc.ID = pc.Region + "-router-" + port
	}

	p.Node, err = shardmap.NewNode(shardmap.NodeConfig{
		ID: pc.ID, DataDir: pc.DataDir, RaftAddr: pc.RaftAddr, HTTPAddr: p.URL, Bootstrap: pc.Bootstrap,
		Join: pc.Join, Token: pc.ClusterToken, Logger: log, Registerer: p.Registry, Tune: pc.RaftTune,
	})
	if err != nil {
		return p, err
	}
	nm := NodeMap{Node: p.Node}
	var view ShardMap = nm
	if pc.WrapMap != nil {
		view = pc.WrapMap(nm)
	}

	var sources MultiSource
	if pc.GossipAddr != "" {
		host, portS, err := net.SplitHostPort(pc.GossipAddr)
		if err != nil {
			return p, fmt.Errorf("router: gossip addr: %w", err)
		}
		port, _ := strconv.Atoi(portS)
		p.Gossip, err = region.New(region.Config{
			Name: pc.ID, BindAddr: host, BindPort: port, Memberlist: pc.GossipConfig, Logger: log,
			Meta: region.Meta{Region: pc.Region, Role: region.RoleRouter, HTTPAddr: p.URL},
		})
		if err != nil {
			return p, err
		}
		if len(pc.GossipJoin) > 0 {
			jctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, jerr := p.Gossip.Join(jctx, pc.GossipJoin)
			cancel()
			if jerr != nil {
				// Not fatal: the others may start later and join us; static nodes still work.
				log.Warn("gossip join failed", "err", jerr)
			}
		}
		sources = append(sources, upstream.RegionSource{Cluster: p.Gossip})
	}
	if len(pc.StaticAPI) > 0 {
		sources = append(sources, StaticSource(pc.StaticAPI))
	}
	p.Pool, err = upstream.New(upstream.Config{Source: sources, MaxInFlight: pc.MaxInFlight,
		EjectBase: pc.EjectBase, FailureThreshold: pc.FailureThreshold, Registerer: p.Registry})
	if err != nil {
		return p, err
	}
	regions := func() []string {
		rs := nm.Node.Map().Regions()
		for r := range pc.StaticAPI {
			if !contains(rs, r) {
				rs = append(rs, r)
			}
		}
		return rs
	}

	rcfg := ratelimit.Config{Limits: pc.Limits, Lease: pc.RateLimitLease, Logger: log, Registerer: p.Registry}
	if pc.RedisAddr != "" {
		p.redis = redis.NewClient(&redis.Options{Addr: pc.RedisAddr, DialTimeout: 200 * time.Millisecond,
			ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond, MaxRetries: -1})
		rcfg.Redis = p.redis
	}
	if p.Limiter, err = ratelimit.New(rcfg); err != nil {
		return p, err
	}

	cfg := Config{
		Region: pc.Region, Map: view, MapHandler: p.Node.Handler(), Auth: JWTAuth{Verifier: pc.Verifier},
		Limiter: RateLimiter{L: p.Limiter}, ClusterToken: pc.ClusterToken, Lease: pc.Lease,
		UpstreamTimeout: pc.UpstreamTimeout, Registry: p.Registry, Logger: log, TrustedProxies: pc.TrustedProxies,
		Upstreams: PoolUpstreams{Pool: p.Pool, Source: sources, Regions: regions},
	}
	if p.Gossip != nil {
		cfg.Members = GossipMembers{Cluster: p.Gossip}
	}
	if p.Server, err = New(cfg); err != nil {
		return p, err
	}
	p.http = &http.Server{Handler: p.Server.Handler(), ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	go func() {
		defer close(p.done)
		if err := p.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "err", err)
		}
	}()
	log.Info("router listening", "url", p.URL, "raft", p.Node.RaftAddr(), "id", pc.ID)
	return p, nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// Shutdown stops the process in order: stop taking requests (waiting for in-flight ones until
// ctx ends), leave gossip, stop the map node, close Redis.
func (p *Process) Shutdown(ctx context.Context) error {
	var errs []error
	if p.http != nil {
		if err := p.http.Shutdown(ctx); err != nil {
			errs = append(errs, err)
			p.http.Close()
		}
		<-p.done
	}
	if p.Gossip != nil {
		_ = p.Gossip.Leave(ctx)
		errs = append(errs, p.Gossip.Shutdown())
	}
	if p.Node != nil {
		errs = append(errs, p.Node.Shutdown())
	}
	if p.redis != nil {
		errs = append(errs, p.redis.Close())
	}
	return errors.Join(errs...)
}

// Close stops the process at once (tests use it to kill a router).
func (p *Process) Close() error {
	if p.http != nil {
		p.http.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return p.Shutdown(ctx)
}
