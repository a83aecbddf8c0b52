package router

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/meridian-dev/meridian/internal/ratelimit"
	"github.com/meridian-dev/meridian/internal/upstream"
	"github.com/meridian-dev/meridian/region"
)

// This file holds the constructors of a router process's parts besides the Server (New) and
// the parts other packages own (shardmap.NewNode, region.Join). cmd/router's main calls them in
// the order docs/router.md lists, and the system tests assemble their routers from the same
// constructors in the same order.

// MapStatus is a router's gossip Status: the version of its map copy, and no replica lag (a
// router reads no standby).
func MapStatus(m ShardMap) func(context.Context) region.Status {
	return func(context.Context) region.Status { return region.Status{MapVersion: m.Version()} }
}

// LimiterConfig configures NewLimiter. Zero values mean the documented defaults.
type LimiterConfig struct {
	// RedisAddr is the region's Redis; "": in-process limits only.
	RedisAddr string
	// Limits are the rate limits; nil: ratelimit.DefaultLimits().
	Limits map[ratelimit.Rule]ratelimit.Limit
	// Lease: see ratelimit.Config.Lease (0: 100 ms; negative: every decision asks Redis).
	Lease time.Duration
	// Logger and Registerer: see ratelimit.Config.
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// NewLimiter builds the router's rate limiter, on the region's Redis when one is configured.
// stop releases the Redis client; call it after the HTTP server has stopped.
func NewLimiter(cfg LimiterConfig) (l *ratelimit.Limiter, stop func(context.Context) error, err error) {
	rcfg := ratelimit.Config{Limits: cfg.Limits, Lease: cfg.Lease, Logger: cfg.Logger, Registerer: cfg.Registerer}
	stop = func(context.Context) error { return nil }
	if cfg.RedisAddr != "" {
		// Short timeouts and no retries: a limiter that waits on Redis slows every request, and
		// the limiter falls back to local decisions when Redis fails.
		rc := redis.NewClient(&redis.Options{Addr: cfg.RedisAddr, DialTimeout: 200 * time.Millisecond,
			ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond, MaxRetries: -1})
		rcfg.Redis = rc
		stop = func(context.Context) error { return rc.Close() }
	}
	if l, err = ratelimit.New(rcfg); err != nil {
		_ = stop(context.Background())
		return nil, nil, err
	}
	return l, stop, nil
}

// UpstreamsConfig configures NewUpstreams. Zero values mean the documented defaults.
type UpstreamsConfig struct {
	// Gossip finds API nodes; nil: Static only.
	Gossip *region.Cluster
	// Static lists API node base URLs per region, used with (or instead of) gossip.
	Static map[string][]string
	// Regions lists the map's regions (Static's are added), for Nodes (required).
	Regions func() []string
	// MaxInFlight, EjectBase, FailureThreshold (0: 5 consecutive failures), Registerer: see
	// upstream.Config.
	MaxInFlight      int
	EjectBase        time.Duration
	FailureThreshold int
	Registerer       prometheus.Registerer
}

// targetsTTL is how long the pool reuses a region's list of API nodes (cachedSource).
const targetsTTL = 50 * time.Millisecond

// cachedSource keeps each region's targets for ttl. They are asked for three times per request
// (admission's load, the decision's Healthy, the pick), and merging gossip's members with the
// static list copies and allocates each time; a change of membership or health reaches the
// pool within ttl (gossip itself takes seconds to spread one). An entry is dropped by a timer
// ttl after it was made, so a lookup reads no clock (time.Now is ≈ 0.13 µs on this machine's
// VMs and was a quarter of the router's clock reads per request; docs/router.md, "Seventeenth
// session"). The slices it returns are shared: read only.
type cachedSource struct {
	src upstream.Source
	ttl time.Duration
	m   sync.Map // region → *targetsEntry
}

type targetsEntry struct{ ts []upstream.Target }

func (c *cachedSource) Targets(r string) []upstream.Target {
	if v, ok := c.m.Load(r); ok {
		return v.(*targetsEntry).ts
	}
	e := &targetsEntry{ts: c.src.Targets(r)}
	if v, loaded := c.m.LoadOrStore(r, e); loaded {
		return v.(*targetsEntry).ts // another lookup made it first: one timer per entry
	}
	time.AfterFunc(c.ttl, func() { c.m.CompareAndDelete(r, e) })
	return e.ts
}

// NewUpstreams builds the pool of API nodes the router forwards to, found through gossip and
// the static lists (merged; a node listed by both is one node).
func NewUpstreams(cfg UpstreamsConfig) (PoolUpstreams, error) {
	var sources MultiSource
	if cfg.Gossip != nil {
		sources = append(sources, upstream.RegionSource{Cluster: cfg.Gossip})
	}
	if len(cfg.Static) > 0 {
		sources = append(sources, StaticSource(cfg.Static))
	}
	// One cached list for the pool and for Healthy (every request's decision asks it).
	cached := &cachedSource{src: sources, ttl: targetsTTL}
	pool, err := upstream.New(upstream.Config{Source: cached, MaxInFlight: cfg.MaxInFlight,
		EjectBase: cfg.EjectBase, FailureThreshold: cfg.FailureThreshold, Registerer: cfg.Registerer})
	if err != nil {
		return PoolUpstreams{}, err
	}
	regions := func() []string {
		rs := cfg.Regions()
		for r := range cfg.Static {
			if !slices.Contains(rs, r) {
				rs = append(rs, r)
			}
		}
		return rs
	}
	return PoolUpstreams{Pool: pool, Source: cached, Regions: regions}, nil
}
