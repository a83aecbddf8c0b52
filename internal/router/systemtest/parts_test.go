package systemtest

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/daemon"
	"github.com/meridian-dev/meridian/internal/ratelimit"
	"github.com/meridian-dev/meridian/internal/router"
	"github.com/meridian-dev/meridian/internal/upstream"
	"github.com/meridian-dev/meridian/region"
	"github.com/meridian-dev/meridian/shardmap"
)

// routerOptions is what a test router is built from; the fields mean what cmd/router's flags of
// the same names mean. Zero values mean cmd/router's defaults.
type routerOptions struct {
	id, region, dataDir, raftAddr string
	bootstrap                     bool
	join                          []string
	verifier                      *auth.Verifier
	redisAddr                     string
	limits                        map[ratelimit.Rule]ratelimit.Limit
	staticAPI                     map[string][]string
	upstreamTimeout, ejectBase    time.Duration
	failThresh                    int
	// gossipAddr "" = no gossip; gossipConfig is the base memberlist config (test timings).
	gossipAddr   string
	gossipJoin   []string
	gossipConfig *memberlist.Config
	// publishEvery is the gossip Status period (0 = region's default).
	publishEvery time.Duration
	// wrapMap, if set, wraps the router's view of the map (to make one router's copy lag).
	wrapMap  func(router.ShardMap) router.ShardMap
	raftTune func(*raft.Config)
	log      *slog.Logger
	// httpLimits are the HTTP server's limits (cmd/router's -body-timeout and the like).
	httpLimits daemon.HTTPLimits
}

// testRouter is a running router assembled like cmd/router's run: the same constructors, in
// the same order, recorded in a daemon.Parts and stopped in reverse order.
type testRouter struct {
	URL     string
	Node    *shardmap.Node
	Gossip  *region.Cluster // nil without gossip
	Limiter *ratelimit.Limiter
	Pool    *upstream.Pool
	parts   *daemon.Parts
}

// startRouter starts a router on a free loopback port; it is stopped at the end of the test.
func startRouter(t testing.TB, o routerOptions) *testRouter {
	t.Helper()
	parts := daemon.NewParts(o.log)
	r := &testRouter{parts: parts}
	t.Cleanup(func() { _ = r.Close() })

	// The front cmd/router serves -listen with by default, the event loop, bound first; with
	// MERIDIAN_TEST_FRONT=http (TestSuiteOnNetHTTP's child run) net/http alone.
	var (
		ln net.Listener
		lp *router.Loop
	)
	if httpFront() {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("start router %s: %v", o.id, err)
		}
		ln = l
		parts.Add("listener", func(context.Context) error { _ = ln.Close(); return nil })
		r.URL = "http://" + ln.Addr().String()
	} else {
		l, err := router.ListenLoop("127.0.0.1:0", 0, o.log)
		if err != nil {
			t.Fatalf("start router %s: %v", o.id, err)
		}
		lp = l
		parts.Add("listener", lp.Stop)
		r.URL = "http://" + lp.Addr()
	}
	var err error
	reg := prometheus.NewRegistry()

	r.Node, err = shardmap.NewNode(shardmap.NodeConfig{ID: o.id, DataDir: o.dataDir, RaftAddr: o.raftAddr,
		HTTPAddr: r.URL, Bootstrap: o.bootstrap, Join: o.join, Token: clusterToken, Logger: o.log,
		Registerer: reg, Tune: o.raftTune})
	if err != nil {
		t.Fatalf("start router %s: %v", o.id, err)
	}
	parts.Add("shard map node", func(context.Context) error { return r.Node.Shutdown() })
	nm := router.NodeMap{Node: r.Node}
	var view router.ShardMap = nm
	if o.wrapMap != nil {
		view = o.wrapMap(nm)
	}

	if o.gossipAddr != "" {
		r.Gossip, err = region.Join(context.Background(), region.JoinConfig{Name: o.id, Region: o.region,
			Role: region.RoleRouter, URL: r.URL, Addr: o.gossipAddr, Join: o.gossipJoin, Memberlist: o.gossipConfig,
			Logger: o.log, Status: router.MapStatus(view), PublishEvery: o.publishEvery})
		if err != nil {
			t.Fatalf("start router %s: %v", o.id, err)
		}
		parts.Add("gossip", r.Gossip.Depart)
	}

	var stopLimiter func(context.Context) error
	r.Limiter, stopLimiter, err = router.NewLimiter(router.LimiterConfig{RedisAddr: o.redisAddr, Limits: o.limits,
		Logger: o.log, Registerer: reg})
	if err != nil {
		t.Fatalf("start router %s: %v", o.id, err)
	}
	parts.Add("rate limiter", stopLimiter)

	upstreams, err := router.NewUpstreams(router.UpstreamsConfig{Gossip: r.Gossip, Static: o.staticAPI,
		Regions: func() []string { return r.Node.Map().Regions() }, EjectBase: o.ejectBase,
		FailureThreshold: o.failThresh, Registerer: reg})
	if err != nil {
		t.Fatalf("start router %s: %v", o.id, err)
	}
	r.Pool = upstreams.Pool

	cfg := router.Config{Region: o.region, Map: view, MapHandler: r.Node.Handler(), Auth: router.JWTAuth{Verifier: o.verifier},
		Limiter: router.RateLimiter{L: r.Limiter}, Upstreams: upstreams, ClusterToken: clusterToken,
		UpstreamTimeout: o.upstreamTimeout, Registry: reg, Logger: o.log}
	if r.Gossip != nil {
		cfg.Members = router.GossipMembers{Cluster: r.Gossip}
	}
	srv, err := router.New(cfg)
	if err != nil {
		t.Fatalf("start router %s: %v", o.id, err)
	}
	// No grace: Close is also how a test kills a router.
	hs := daemon.NewHTTPServer(srv.Handler(), o.httpLimits)
	if lp != nil {
		if err := lp.Serve(srv, hs); err != nil {
			t.Fatalf("start router %s: %v", o.id, err)
		}
		parts.Add("http", func(context.Context) error { _ = hs.Close(); return lp.Stop(context.Background()) })
		return r
	}
	parts.Go("http", func(ctx context.Context) error {
		return daemon.ServeHTTP(ctx, hs, ln, 0)
	})
	return r
}

// Close stops the router at once (tests use it to kill one); it is idempotent.
func (r *testRouter) Close() error {
	return r.parts.Stop(context.Background())
}
