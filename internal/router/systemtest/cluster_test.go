package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/hashicorp/raft"

	"github.com/meridian-dev/meridian/internal/api"
	"github.com/meridian-dev/meridian/internal/api/mapsource"
	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/daemon"
	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/ratelimit"
	"github.com/meridian-dev/meridian/internal/records/pgstore"
	"github.com/meridian-dev/meridian/internal/router"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/migrations"
	"github.com/meridian-dev/meridian/region"
	"github.com/meridian-dev/meridian/shardmap"
)

const (
	clusterToken = "sys-cluster-token"
	jwtSecret    = "sys-jwt-secret"
)

// regions of the test topology: us-east and eu-west each host one shard's primary; us-west
// hosts none (its API node reads the primaries directly), so the map has three voters.
var regions = []string{"us-east", "eu-west", "us-west"}

func fastRaft(c *raft.Config) {
	c.HeartbeatTimeout = 100 * time.Millisecond
	c.ElectionTimeout = 100 * time.Millisecond
	c.LeaderLeaseTimeout = 100 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
}

func testLogger() *slog.Logger {
	if os.Getenv("SYSTEMTEST_LOG") != "" {
		return slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// apiNode is a real internal/api node with its own listener address, so it can be killed and
// restarted on the same address.
type apiNode struct {
	region string
	addr   string
	url    string
	srv    *api.Server
	store  *pgstore.Store
	client *shardmap.Client
	pools  *shards.Conns
	stop   context.CancelFunc
	gossip *region.Cluster // nil unless the node's region is clusterOptions.gossipRegion
	limits daemon.HTTPLimits

	mu   sync.Mutex
	http *http.Server
	hits atomic.Int64
}

func (a *apiNode) start(t testing.TB) {
	t.Helper()
	var ln net.Listener
	var err error
	testenv.WaitFor(t, 5*time.Second, func() error {
		ln, err = net.Listen("tcp", a.addr)
		return err
	})
	h := a.srv.Handler()
	// The server cmd/api serves with.
	s := daemon.NewHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/") {
			a.hits.Add(1)
		}
		h.ServeHTTP(w, r)
	}), a.limits)
	a.mu.Lock()
	a.http = s
	a.mu.Unlock()
	go func() { _ = s.Serve(ln) }()
}

// kill closes the node's listener and every connection at once.
func (a *apiNode) kill() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.http != nil {
		a.http.Close()
		a.http = nil
	}
}

// join makes the node a gossip member the way cmd/api does: region.Join with its map version
// and its region's standby lag as the published Status.
func (a *apiNode) join(t testing.TB, peers []string) {
	t.Helper()
	var err error
	a.gossip, err = region.Join(context.Background(), region.JoinConfig{Region: a.region, Role: region.RoleAPI,
		URL: a.url, Addr: "127.0.0.1:0", Join: peers, Memberlist: region.TestConfig("", region.Meta{}).Memberlist,
		Logger: testLogger(), PublishEvery: 50 * time.Millisecond,
		Status: func(ctx context.Context) region.Status {
			return region.Status{Lag: a.store.ReplicaLag(ctx), MapVersion: a.client.Map().Version()}
		}})
	if err != nil {
		t.Fatalf("api node %s joins gossip: %v", a.url, err)
	}
}

// boot builds the node's parts the way cmd/api does — map watch on mapAddrs, shard
// connections, records store (store adjusts its configuration; nil = defaults), HTTP layer —
// starts serving, and stops it all when the test ends.
func (a *apiNode) boot(t testing.TB, mapAddrs []string, maxConns int32, verifier *auth.Verifier, store func(*pgstore.Config)) {
	t.Helper()
	a.client = shardmap.NewClient(shardmap.ClientConfig{Addrs: slices.Clone(mapAddrs), // NewClient rewrites Addrs in place
		Token: clusterToken, Wait: time.Second, Logger: testLogger()})
	cctx, cancel := context.WithCancel(context.Background())
	a.stop = cancel
	go func() { _ = a.client.Run(cctx) }()
	a.pools = shards.New(shards.Config{MaxConns: maxConns})
	maps := mapsource.Adapter{Src: a.client}
	cfg := pgstore.Config{Region: a.region, Map: maps, Conns: a.pools, Logger: testLogger().With("node", "api-"+a.addr)}
	if store != nil {
		store(&cfg)
	}
	var err error
	if a.store, err = pgstore.New(cfg); err != nil {
		t.Fatal(err)
	}
	a.srv, err = api.New(api.Config{Region: a.region, CursorKey: []byte("cursor"), ClusterToken: clusterToken,
		Logger: testLogger().With("node", "api-"+a.addr)}, maps, a.store, verifier, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.start(t)
	t.Cleanup(func() {
		a.kill()
		a.stop()
		a.pools.Close()
	})
}

type clusterOptions struct {
	limits     map[ratelimit.Rule]ratelimit.Limit
	apiPerReg  map[string]int // API nodes per region (default 1)
	wrapMap    map[string]func(router.ShardMap) router.ShardMap
	failThresh int
	// gossipRegion, if set, turns gossip on in every router and leaves this region out of the
	// static API lists: its API nodes are found only through gossip (region.Join).
	gossipRegion string
	// httpLimits are the HTTP limits of every router and API node (-body-timeout and the like).
	httpLimits daemon.HTTPLimits
}

// cluster is three routers (one per region, the map's voters), API nodes, two Postgres
// clusters and one Redis, all on loopback.
type cluster struct {
	t       testing.TB
	routers map[string]*testRouter
	apis    map[string][]*apiNode
	pg      map[string]*localsrv.Postgres
	dbs     map[string]string // shard -> database
	redis   *localsrv.Redis
	shards  map[string]string // region -> shard id homed there
}

func newCluster(t testing.TB, o clusterOptions) *cluster {
	t.Helper()
	ctx := context.Background()
	c := &cluster{t: t, routers: map[string]*testRouter{}, apis: map[string][]*apiNode{},
		pg: map[string]*localsrv.Postgres{}, dbs: map[string]string{},
		shards: map[string]string{"us-east": "use1", "eu-west": "euw1"}}
	c.redis = testenv.Redis(t)
	dsns := map[string]string{}
	for _, r := range []string{"us-east", "eu-west"} {
		pg := testenv.Postgres(t)
		c.pg[r] = pg
		sh := c.shards[r]
		db := "shard_" + sh
		if err := pg.CreateDatabase(ctx, db); err != nil {
			t.Fatal(err)
		}
		c.dbs[sh] = db
		dsns[sh] = pg.DSN(db)
	}
	if res, err := migrations.Apply(ctx, dsns); err != nil {
		t.Fatalf("migrations: %v %+v", err, res)
	}
	verifier, err := auth.NewVerifier(auth.Config{Secret: []byte(jwtSecret)})
	if err != nil {
		t.Fatal(err)
	}
	limits := o.limits
	if limits == nil {
		limits = map[ratelimit.Rule]ratelimit.Limit{{Scope: ratelimit.ScopeTenant}: {Rate: 1e6, Burst: 1e6}}
	}

	// API node addresses first: routers get them as static lists.
	static := map[string][]string{}
	for _, r := range regions {
		n := 1
		if o.apiPerReg != nil && o.apiPerReg[r] > 0 {
			n = o.apiPerReg[r]
		}
		for range n {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			a := &apiNode{region: r, addr: ln.Addr().String(), url: "http://" + ln.Addr().String(), limits: o.httpLimits}
			ln.Close()
			c.apis[r] = append(c.apis[r], a)
			if r != o.gossipRegion {
				static[r] = append(static[r], a.url)
			}
		}
	}

	var join, gossipJoin []string
	for i, r := range regions {
		ro := routerOptions{
			id: r + "-router", region: r, dataDir: t.TempDir(), raftAddr: "127.0.0.1:0",
			bootstrap: i == 0, join: join, verifier: verifier,
			redisAddr: c.redis.Addr(), limits: limits, staticAPI: static,
			upstreamTimeout: 3 * time.Second, ejectBase: 200 * time.Millisecond,
			failThresh: o.failThresh, raftTune: fastRaft, log: testLogger().With("node", r+"-router"),
			httpLimits: o.httpLimits,
		}
		if o.wrapMap != nil {
			ro.wrapMap = o.wrapMap[r]
		}
		if o.gossipRegion != "" {
			ro.gossipAddr, ro.gossipJoin = "127.0.0.1:0", gossipJoin
			ro.gossipConfig = region.TestConfig("", region.Meta{}).Memberlist
		}
		p := startRouter(t, ro)
		if p.Gossip != nil {
			gossipJoin = append(gossipJoin, p.Gossip.Addr())
		}
		c.routers[r] = p
		if i == 0 {
			join = []string{p.URL}
			testenv.WaitFor(t, 10*time.Second, func() error {
				if !p.Node.IsLeader() {
					return fmt.Errorf("%s not leader yet", r)
				}
				return nil
			})
			c.bootstrapMap(p.Node)
		}
	}
	// Every router must be a voter with the bootstrapped map.
	want := c.routers["us-east"].Node.Map().Version()
	testenv.WaitFor(t, 15*time.Second, func() error {
		for r, p := range c.routers {
			if v := p.Node.Map().Version(); v < want || len(p.Node.Map().Nodes()) < len(regions) {
				return fmt.Errorf("router %s at map version %d with %d nodes", r, v, len(p.Node.Map().Nodes()))
			}
		}
		return nil
	})

	for _, r := range regions {
		var addrs []string
		addrs = append(addrs, c.routers[r].URL)
		for _, o := range regions {
			if o != r {
				addrs = append(addrs, c.routers[o].URL)
			}
		}
		for _, a := range c.apis[r] {
			a.boot(t, addrs, 20, verifier, nil)
			if r == o.gossipRegion {
				a.join(t, gossipJoin)
			}
			t.Cleanup(func() { _ = a.gossip.Depart(context.Background()) }) // before boot's cleanup
			testenv.WaitFor(t, 10*time.Second, func() error {
				if v := a.client.Map().Version(); v < want {
					return fmt.Errorf("api node %s at map version %d", a.url, v)
				}
				return nil
			})
		}
	}
	return c
}

func (c *cluster) bootstrapMap(n *shardmap.Node) {
	c.t.Helper()
	var shards []shardmap.Shard
	for _, r := range []string{"us-east", "eu-west"} {
		sh := c.shards[r]
		eps := map[string]string{}
		for _, rr := range regions {
			eps[rr] = c.pg[r].Addr() // no standbys here: every region reads the primary
		}
		shards = append(shards, shardmap.Shard{ID: sh, HomeRegion: r, Database: c.dbs[sh], Endpoints: eps, State: "active"})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.Apply(ctx, shardmap.Bootstrap{Regions: regions, Shards: shards, SlotCount: 64}); err != nil {
		c.t.Fatalf("bootstrap map: %v", err)
	}
}

// token mints an HS256 token.
func token(t testing.TB, tenant, sub, scope string) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": sub, "tenant": tenant, "scope": scope,
		"iat": time.Now().Add(-time.Minute).Unix(), "exp": time.Now().Add(time.Hour).Unix()})
	s, err := tok.SignedString([]byte(jwtSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// adminToken carries a tenant claim because internal/auth requires one on every token.
func adminToken(t testing.TB) string { return token(t, "ops-admin", "root", "admin") }

func dataToken(t testing.TB, tenant string) string {
	return token(t, tenant, "user-"+tenant, "data:read data:write")
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

func send(method, url, tok, body string, hdr ...string) (answer, error) {
	var rb io.Reader
	if body != "" {
		rb = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rb)
	if err != nil {
		return answer{}, err
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, b}, err
}

func (c *cluster) do(region, method, path, tok, body string, hdr ...string) answer {
	c.t.Helper()
	a, err := send(method, c.routers[region].URL+path, tok, body, hdr...)
	if err != nil {
		c.t.Fatalf("%s %s via %s: %v", method, path, region, err)
	}
	return a
}

// createTenant creates a tenant through a router's admin API.
func (c *cluster) createTenant(via, id, region string) map[string]any {
	c.t.Helper()
	body := `{"id":"` + id + `"}`
	if region != "" {
		body = `{"id":"` + id + `","region":"` + region + `"}`
	}
	a := c.do(via, "POST", "/admin/v1/tenants", adminToken(c.t), body)
	if a.status != 201 {
		c.t.Fatalf("create tenant %s: %d %s", id, a.status, a.body)
	}
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		c.t.Fatal(err)
	}
	return m
}

// rows counts a tenant's live records on a shard's primary (as superuser, so RLS is bypassed).
func (c *cluster) rows(shard, tenant, where string) int {
	c.t.Helper()
	region := "us-east"
	if shard == c.shards["eu-west"] {
		region = "eu-west"
	}
	conn, err := c.pg[region].Connect(context.Background(), c.dbs[shard])
	if err != nil {
		c.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	q := `SELECT count(*) FROM records WHERE tenant_id = $1 AND NOT deleted`
	if where != "" {
		q += " AND " + where
	}
	if err := conn.QueryRow(context.Background(), q, tenant).Scan(&n); err != nil {
		c.t.Fatal(err)
	}
	return n
}

func (c *cluster) leader() string {
	for r, p := range c.routers {
		if p.Node.IsLeader() {
			return r
		}
	}
	return ""
}
