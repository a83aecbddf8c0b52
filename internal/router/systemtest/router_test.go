package systemtest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/ratelimit"
	"github.com/meridian-dev/meridian/internal/router"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/internal/upstream"
	"github.com/meridian-dev/meridian/shardmap"
)

// TestWritesGoHomeReadsStayLocal: a write through any router lands on the home region's primary;
// a read through any router is served by that router's region, for tenants homed anywhere.
func TestWritesGoHomeReadsStayLocal(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	tenants := map[string]string{} // tenant -> home region
	for _, tc := range []struct{ id, region, via string }{
		{"eu-tenant", "eu-west", "us-west"},
		{"us-tenant", "us-east", "eu-west"},
	} {
		got := c.createTenant(tc.via, tc.id, tc.region)
		if got["home_region"] != tc.region || got["shard"] != c.shards[tc.region] || got["pinned"] != true {
			t.Fatalf("created %v", got)
		}
		tenants[tc.id] = tc.region
	}
	// A tenant placed by slot lands wherever its slot is.
	got := c.createTenant("us-east", "slot-tenant", "")
	tenants["slot-tenant"] = got["home_region"].(string)
	if a := c.do("us-east", "POST", "/admin/v1/tenants", adminToken(t), `{"id":"eu-tenant"}`); a.status != 409 {
		t.Fatalf("second create: %d %s", a.status, a.body)
	}

	for tenant, home := range tenants {
		tok := dataToken(t, tenant)
		for _, via := range regions {
			id := "r-" + via
			a := c.do(via, "PUT", "/v1/collections/notes/records/"+id, tok, `{"data":{"via":"`+via+`"}}`)
			if a.status != 201 {
				t.Fatalf("PUT %s via %s: %d %s", tenant, via, a.status, a.body)
			}
			if sr := a.header.Get("X-Served-Region"); sr != home {
				t.Fatalf("write of %s via %s served by %q, want home %s", tenant, via, sr, home)
			}
			if a.header.Get("X-Shardmap-Version") == "" || a.header.Get("X-Request-Id") == "" {
				t.Fatalf("missing router headers: %v", a.header)
			}
			if n := c.rows(c.shards[home], tenant, "id = '"+id+"'"); n != 1 {
				t.Fatalf("record %s of %s: %d rows on home shard", id, tenant, n)
			}
		}
		for _, via := range regions {
			a := c.do(via, "GET", "/v1/collections/notes/records/r-us-west", tok, "")
			if a.status != 200 {
				t.Fatalf("GET %s via %s: %d %s", tenant, via, a.status, a.body)
			}
			if sr := a.header.Get("X-Served-Region"); sr != via {
				t.Fatalf("read of %s via %s served by %q, want %s", tenant, via, sr, via)
			}
		}
	}
	// Admin reads.
	a := c.do("eu-west", "GET", "/admin/v1/shardmap", adminToken(t), "")
	if a.status != 200 || !strings.Contains(string(a.body), `"eu-tenant":"euw1"`) {
		t.Fatalf("shardmap: %d %s", a.status, a.body)
	}
	a = c.do("eu-west", "GET", "/admin/v1/regions", adminToken(t), "")
	if a.status != 200 || !strings.Contains(string(a.body), `"leader":"`) {
		t.Fatalf("regions: %d %s", a.status, a.body)
	}
	if a := c.do("eu-west", "GET", "/admin/v1/regions", dataToken(t, "eu-tenant"), ""); a.status != 403 {
		t.Fatalf("tenant token on admin: %d", a.status)
	}

	// The routers serve on cmd/router's default front, the event loop (unless this is
	// TestSuiteOnNetHTTP's child): plain reads are its own, on connections that began with the
	// admin API too (net/http gives them back between requests).
	if httpFront() {
		return
	}
	tok := dataToken(t, "us-tenant")
	for _, via := range regions {
		before, err := testenv.LoopCounts(context.Background(), httpClient, c.routers[via].URL)
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			if a := c.do(via, "GET", "/v1/collections/notes/records/r-us-west", tok, ""); a.status != 200 {
				t.Fatalf("GET via %s: %d %s", via, a.status, a.body)
			}
		}
		after, err := testenv.LoopCounts(context.Background(), httpClient, c.routers[via].URL)
		if err != nil {
			t.Fatal(err)
		}
		if after["native"] <= before["native"] {
			t.Errorf("%s's router served none of five GETs on its event loop (loop counts %v, then %v)", via, before, after)
		}
	}
}

// laggingMap is a router's view of the map frozen at one snapshot until the router asks to
// wait for a newer version (as after a 421), which is what a router whose copy lags sees.
type laggingMap struct {
	router.NodeMap
	mu     sync.Mutex
	frozen *shardmap.Map
	waits  atomic.Int64
}

func (l *laggingMap) freeze() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.frozen = l.Node.Map()
}

func (l *laggingMap) view() *shardmap.Map {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.frozen != nil {
		return l.frozen
	}
	return l.Node.Map()
}

func (l *laggingMap) Lookup(tenant string) (router.Route, error) {
	r, err := l.view().Lookup(tenant)
	return router.Route(r), err
}

func (l *laggingMap) Version() uint64 { return l.view().Version() }

func (l *laggingMap) WaitVersion(ctx context.Context, v uint64) error {
	l.waits.Add(1)
	l.mu.Lock()
	l.frozen = nil
	l.mu.Unlock()
	return l.NodeMap.WaitVersion(ctx, v)
}

// TestStaleMapCorrectedBy421: after a tenant's pin changes (a move's cutover), the first write
// through a router with an older map is answered 421 by the API node, and the router waits for
// the newer map, re-resolves and succeeds.
func TestStaleMapCorrectedBy421(t *testing.T) {
	var lag *laggingMap
	c := newCluster(t, clusterOptions{wrapMap: map[string]func(router.ShardMap) router.ShardMap{
		"us-west": func(m router.ShardMap) router.ShardMap {
			lag = &laggingMap{NodeMap: m.(router.NodeMap)}
			return lag
		},
	}})
	c.createTenant("us-east", "mover", "eu-west")
	// The create was awaited on us-east's copy; the first write below must not take the 421
	// path because us-west's copy has not caught up yet (that is not what this test is about).
	testenv.WaitFor(t, 5*time.Second, func() error {
		if r, err := lag.Lookup("mover"); err != nil || r.HomeRegion != "eu-west" {
			return fmt.Errorf("us-west's map places mover at %+v, %v", r, err)
		}
		return nil
	})
	tok := dataToken(t, "mover")
	if a := c.do("us-west", "PUT", "/v1/collections/c/records/before", tok, `{"data":{}}`); a.status != 201 || a.header.Get("X-Served-Region") != "eu-west" {
		t.Fatalf("write before move: %d %v %s", a.status, a.header.Get("X-Served-Region"), a.body)
	}
	lag.freeze()

	// Move mover from euw1 to use1: record the tenant on the target shard (what backfill
	// would have done), then walk the move through to cutover in the map.
	if a := c.do("us-east", "POST", "/admin/v1/tenants", adminToken(t), `{"id":"mover"}`); a.status != 409 {
		t.Fatalf("recreate: %d", a.status)
	}
	node := c.routers["us-east"].Node
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	internal, err := send("POST", c.apis["us-east"][0].url+"/internal/v1/tenants", clusterToken, `{"id":"mover","shard":"use1"}`)
	if err != nil || internal.status != 201 {
		t.Fatalf("record mover on use1: %v %d %s", err, internal.status, internal.body)
	}
	idx, err := node.Apply(ctx, shardmap.RequestMove{Tenant: "mover", To: "use1"})
	if err != nil {
		t.Fatal(err)
	}
	mv := shardmap.MoveIDForIndex(idx)
	for _, ph := range []shardmap.Phase{shardmap.PhaseDualWrite, shardmap.PhaseBackfill, shardmap.PhaseVerify} {
		if _, err := node.Apply(ctx, shardmap.SetMovePhase{ID: mv, Phase: ph}); err != nil {
			t.Fatal(err)
		}
	}
	cut, err := node.Apply(ctx, shardmap.Cutover{ID: mv})
	if err != nil {
		t.Fatal(err)
	}
	// The API nodes see the cutover; the lagging router does not.
	testenv.WaitFor(t, 5*time.Second, func() error {
		for _, r := range regions {
			if v := c.apis[r][0].client.Map().Version(); v < cut {
				return fmt.Errorf("api %s at %d < %d", r, v, cut)
			}
		}
		return nil
	})
	if r, _ := lag.Lookup("mover"); r.HomeRegion != "eu-west" {
		t.Fatalf("lagging router already sees %+v", r)
	}
	a := c.do("us-west", "PUT", "/v1/collections/c/records/after", tok, `{"data":{"n":1}}`)
	if a.status != 201 {
		t.Fatalf("first write after cutover through the stale router: %d %s", a.status, a.body)
	}
	if sr := a.header.Get("X-Served-Region"); sr != "us-east" {
		t.Fatalf("served by %s, want the new home us-east", sr)
	}
	if v, _ := strconv.ParseUint(a.header.Get("X-Shardmap-Version"), 10, 64); v < cut {
		t.Fatalf("X-Shardmap-Version %d < cutover %d", v, cut)
	}
	if lag.waits.Load() != 1 {
		t.Fatalf("router waited for a newer map %d times, want 1 (the 421 path)", lag.waits.Load())
	}
	if n := c.rows("use1", "mover", "id = 'after'"); n != 1 {
		t.Fatalf("write not on the new shard: %d rows", n)
	}
	if n := c.rows("euw1", "mover", "id = 'after'"); n != 0 {
		t.Fatalf("write landed on the old shard")
	}
}

// TestLeaderRouterKilled: reads never stop while the Raft leader router dies; writes resume
// within 5 s through the others.
func TestLeaderRouterKilled(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	c.createTenant("us-east", "steady", "eu-west")
	tok := dataToken(t, "steady")
	if a := c.do("eu-west", "PUT", "/v1/collections/c/records/x", tok, `{"data":{}}`); a.status != 201 {
		t.Fatalf("seed: %d %s", a.status, a.body)
	}
	var leader string
	testenv.WaitFor(t, 5*time.Second, func() error {
		if leader = c.leader(); leader == "" {
			return errors.New("no leader")
		}
		return nil
	})
	var survivors []string
	for _, r := range regions {
		if r != leader {
			survivors = append(survivors, r)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var reads, readFailures atomic.Int64
	var firstFailure atomic.Value
	for _, via := range survivors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				a, err := send("GET", c.routers[via].URL+"/v1/collections/c/records/x", tok, "")
				reads.Add(1)
				if err != nil || a.status != 200 {
					readFailures.Add(1)
					firstFailure.CompareAndSwap(nil, fmt.Sprintf("via %s: %v %d %s", via, err, a.status, a.body))
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond) // let the readers run before the kill (not a wait for a condition)
	killed := time.Now()
	_ = c.routers[leader].Close()
	var resumed time.Duration
	n := 0
	testenv.WaitFor(t, 5*time.Second, func() error {
		n++
		a, err := send("PUT", c.routers[survivors[0]].URL+"/v1/collections/c/records/w"+strconv.Itoa(n), tok, `{"data":{}}`)
		if err != nil {
			return err
		}
		if a.status != 201 {
			return fmt.Errorf("write %d: %s", a.status, a.body)
		}
		resumed = time.Since(killed)
		return nil
	})
	// Keep reading a little after writes resumed, then stop.
	before := reads.Load()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if reads.Load() < before+20 {
			return errors.New("readers stalled")
		}
		return nil
	})
	cancel()
	wg.Wait()
	if f := readFailures.Load(); f != 0 {
		t.Fatalf("%d of %d reads failed across the leader kill; first: %v", f, reads.Load(), firstFailure.Load())
	}
	t.Logf("killed leader %s; writes resumed after %v; %d reads, none failed", leader, resumed.Round(time.Millisecond), reads.Load())
}

// TestRateLimits: a tenant over its limit gets 429 with a correct Retry-After while others are
// unaffected; stopping Redis does not stop the router.
func TestRateLimits(t *testing.T) {
	c := newCluster(t, clusterOptions{limits: map[ratelimit.Rule]ratelimit.Limit{
		{Scope: ratelimit.ScopeTenant}: {Rate: 0.5, Burst: 5}, // one request per 2 s once the burst is spent
	}})
	for _, id := range []string{"noisy", "quiet"} {
		c.createTenant("us-east", id, "us-east")
	}
	noisy, quiet := dataToken(t, "noisy"), dataToken(t, "quiet")
	path := "/v1/collections/c/records/x"
	limited := answer{}
	for i := range 6 {
		a := c.do("us-east", "GET", path, noisy, "")
		if i < 5 {
			if a.status == 429 {
				t.Fatalf("request %d limited inside the burst", i)
			}
			if a.header.Get("RateLimit-Limit") != "5" || a.header.Get("RateLimit-Remaining") != strconv.Itoa(4-i) {
				t.Fatalf("request %d: RateLimit-Limit %q Remaining %q", i, a.header.Get("RateLimit-Limit"), a.header.Get("RateLimit-Remaining"))
			}
			continue
		}
		limited = a
	}
	if limited.status != 429 {
		t.Fatalf("6th request: %d, want 429", limited.status)
	}
	ra, err := strconv.Atoi(limited.header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 2 {
		t.Fatalf("Retry-After %q, want 1..2 s at 0.5 req/s", limited.header.Get("Retry-After"))
	}
	if limited.header.Get("RateLimit-Remaining") != "0" || !strings.Contains(limited.header.Get("Content-Type"), "problem+json") {
		t.Fatalf("429 headers %v", limited.header)
	}
	// Another tenant is unaffected, on the same router and on another.
	for _, via := range []string{"us-east", "eu-west"} {
		if a := c.do(via, "GET", path, quiet, ""); a.status == 429 {
			t.Fatalf("quiet tenant limited via %s", via)
		}
	}
	// After Retry-After the noisy tenant is admitted again.
	time.Sleep(time.Duration(ra) * time.Second) // the wait the client was told to make
	if a := c.do("us-east", "GET", path, noisy, ""); a.status == 429 {
		t.Fatalf("still limited after Retry-After %ds", ra)
	}

	// Redis down: the router keeps serving with local limits.
	if err := c.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, via := range regions {
		a := c.do(via, "GET", path, quiet, "")
		if a.status != 404 && a.status != 200 {
			t.Fatalf("with Redis down via %s: %d %s", via, a.status, a.body)
		}
	}
	if !c.routers["us-east"].Limiter.Fallback() {
		t.Fatal("limiter does not report its local fallback")
	}
}

// TestAPINodeKilledMidLoad: with two API nodes in us-east, killing one under load leaves
// idempotent requests succeeding (retried on the other), non-idempotent ones failing cleanly
// without duplicates; the node is ejected and readmitted when it returns.
func TestAPINodeKilledMidLoad(t *testing.T) {
	c := newCluster(t, clusterOptions{apiPerReg: map[string]int{"us-east": 2}, failThresh: 2})
	c.createTenant("us-east", "loaded", "us-east")
	tok := dataToken(t, "loaded")
	if a := c.do("us-east", "PUT", "/v1/collections/c/records/x", tok, `{"data":{}}`); a.status != 201 {
		t.Fatalf("seed: %d %s", a.status, a.body)
	}
	victim := c.apis["us-east"][0]
	via := c.routers["us-east"].URL

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var getOK, getFail, postOK, postFail atomic.Int64
	var firstGetFail atomic.Value
	var okMu sync.Mutex
	okMarkers := map[string]bool{}
	var seq atomic.Int64
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if w%2 == 0 {
					a, err := send("GET", via+"/v1/collections/c/records/x", tok, "")
					if err == nil && a.status == 200 {
						getOK.Add(1)
					} else {
						getFail.Add(1)
						firstGetFail.CompareAndSwap(nil, fmt.Sprintf("%v %d %s", err, a.status, a.body))
					}
					continue
				}
				m := "m" + strconv.FormatInt(seq.Add(1), 10)
				a, err := send("POST", via+"/v1/collections/load/records", tok, `{"data":{"marker":"`+m+`"}}`)
				switch {
				case err == nil && a.status == 201:
					postOK.Add(1)
					okMu.Lock()
					okMarkers[m] = true
					okMu.Unlock()
				case err == nil && (a.status == 503 || a.status == 504) && strings.Contains(a.header.Get("Content-Type"), "problem+json"):
					postFail.Add(1)
				default:
					t.Errorf("POST %s: %v %d %s", m, err, a.status, a.body)
				}
			}
		}()
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if victim.hits.Load() < 10 {
			return errors.New("victim not loaded yet")
		}
		return nil
	})
	victim.kill()
	pool := c.routers["us-east"].Pool
	testenv.WaitFor(t, 5*time.Second, func() error {
		if st := pool.State(victim.url); st != upstream.Open && st != upstream.HalfOpen {
			return fmt.Errorf("victim breaker %v", st)
		}
		return nil
	})
	// While it is down, the survivor carries everything.
	base := getOK.Load()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if getOK.Load() < base+20 {
			return errors.New("no progress with one node")
		}
		return nil
	})
	// Bring it back on the same address: readmitted after its ejection time.
	hitsAtReturn := victim.hits.Load()
	victim.start(t)
	testenv.WaitFor(t, 10*time.Second, func() error {
		if victim.hits.Load() < hitsAtReturn+5 || pool.State(victim.url) != upstream.Closed {
			return fmt.Errorf("victim not readmitted: breaker %v, %d new hits", pool.State(victim.url), victim.hits.Load()-hitsAtReturn)
		}
		return nil
	})
	cancel()
	wg.Wait()

	if getFail.Load() != 0 {
		t.Fatalf("%d idempotent GETs failed (of %d); first: %v", getFail.Load(), getOK.Load()+getFail.Load(), firstGetFail.Load())
	}
	// No duplicate write: every marker is stored at most once, every acknowledged one exactly once.
	conn, err := c.pg["us-east"].Connect(context.Background(), c.dbs["use1"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(),
		`SELECT data->>'marker', count(*) FROM records WHERE tenant_id='loaded' AND collection='load' GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]int{}
	for rows.Next() {
		var m string
		var n int
		if err := rows.Scan(&m, &n); err != nil {
			t.Fatal(err)
		}
		stored[m] = n
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	for m, n := range stored {
		if n != 1 {
			t.Fatalf("marker %s stored %d times", m, n)
		}
	}
	for m := range okMarkers {
		if stored[m] != 1 {
			t.Fatalf("acknowledged write %s not stored", m)
		}
	}
	t.Logf("GET ok %d; POST ok %d, failed cleanly %d; stored %d", getOK.Load(), postOK.Load(), postFail.Load(), len(stored))
}
