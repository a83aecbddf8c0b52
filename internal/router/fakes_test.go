package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/shardmap/ids"
)

// fakeMap is a ShardMap whose routes tests set directly.
type fakeMap struct {
	mu       sync.Mutex
	version  uint64
	routes   map[string]Route // tenant → route (Version filled on Lookup)
	def      Route            // route of tenants not in routes
	contact  time.Time
	leader   string
	regions  []string
	creates  []string
	createFn func(id, region string) (Route, error)
	// onWait, when set, is called with the version of every WaitVersion call as the call begins.
	onWait func(v uint64)
	// limits are the tenants' overrides (SetTenantLimits merges into them, bumping version).
	limits map[string]TenantLimits
}

var _ ShardMap = (*fakeMap)(nil)

func (m *fakeMap) Lookup(t string) (Route, error) {
	if !ids.ValidTenant(t) {
		return Route{}, ErrBadTenantID
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.routes[t]
	if !ok {
		r = m.def
	}
	r.Version = m.version
	return r, nil
}

func (m *fakeMap) Version() uint64 { m.mu.Lock(); defer m.mu.Unlock(); return m.version }

func (m *fakeMap) set(tenant string, r Route, version uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.routes == nil {
		m.routes = map[string]Route{}
	}
	m.routes[tenant] = r
	m.version = version
}

func (m *fakeMap) WaitVersion(ctx context.Context, v uint64) error {
	m.mu.Lock()
	onWait := m.onWait
	m.mu.Unlock()
	if onWait != nil {
		onWait(v)
	}
	for m.Version() < v {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

func (m *fakeMap) LeaderContact() time.Time { m.mu.Lock(); defer m.mu.Unlock(); return m.contact }
func (m *fakeMap) Leader() string           { m.mu.Lock(); defer m.mu.Unlock(); return m.leader }

func (m *fakeMap) CreateTenant(_ context.Context, id, region string) (Route, error) {
	m.mu.Lock()
	m.creates = append(m.creates, id)
	fn := m.createFn
	m.mu.Unlock()
	if fn != nil {
		return fn(id, region)
	}
	return m.Lookup(id)
}

func (m *fakeMap) Summary() MapSummary {
	s := MapSummary{Version: m.Version(), SlotCount: 1024, Pins: map[string]string{}}
	for _, r := range m.regions {
		s.Regions = append(s.Regions, RegionRef{ID: r})
		s.Shards = append(s.Shards, ShardSummary{ID: r + "-1", HomeRegion: r, State: "active"})
	}
	return s
}

func (m *fakeMap) TenantLimits(t string) (TenantLimits, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.limits[t]
	return l, ok
}

// SetTenantLimits merges like shardmap's FSM (its rules are tested there).
func (m *fakeMap) SetTenantLimits(_ context.Context, t string, p LimitsPatch) (TenantLimits, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.limits == nil {
		m.limits = map[string]TenantLimits{}
	}
	l := m.limits[t]
	for _, f := range p.Reset {
		switch f {
		case "rps":
			l.RPS = 0
		case "burst":
			l.Burst = 0
		case "concurrency":
			l.Concurrency = 0
		}
	}
	if p.Set.RPS != 0 {
		l.RPS = p.Set.RPS
	}
	if p.Set.Burst != 0 {
		l.Burst = p.Set.Burst
	}
	if p.Set.Concurrency != 0 {
		l.Concurrency = p.Set.Concurrency
	}
	if l == (TenantLimits{}) {
		delete(m.limits, t)
	} else {
		m.limits[t] = l
	}
	m.version++
	return l, nil
}

// fakeAuth accepts tokens "tenant|sub|scope scope".
type fakeAuth struct{}

func (fakeAuth) Authenticate(_ context.Context, tok string) (Principal, error) {
	parts := strings.Split(tok, "|")
	if len(parts) != 3 {
		return Principal{}, fmt.Errorf("%w: malformed", ErrUnauthenticated)
	}
	return Principal{Tenant: parts[0], Subject: parts[1], Scopes: strings.Fields(parts[2])}, nil
}

// fakeLimiter allows limit requests per tenant, then denies with a 3 s retry.
type fakeLimiter struct {
	mu    sync.Mutex
	limit int
	n     map[string]int
	last  LimitRequest // the last request checked
}

func (l *fakeLimiter) Check(_ context.Context, req LimitRequest) (LimitResult, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last = req
	if l.n == nil {
		l.n = map[string]int{}
	}
	l.n[req.Tenant]++
	used := l.n[req.Tenant]
	if used > l.limit {
		return LimitResult{Limit: l.limit, Remaining: 0, Reset: 3 * time.Second, RetryAfter: 2500 * time.Millisecond}, nil
	}
	return LimitResult{Allowed: true, Limit: l.limit, Remaining: l.limit - used, Reset: time.Second}, nil
}

// fakeUpstreams is an Upstreams over fakeNodes, with a per-node concurrency bound.
type fakeUpstreams struct {
	mu    sync.Mutex
	nodes []*fakeNode
	bound int
	// load, when it has a region, is what Load reports for it (in flight, capacity); else Load
	// counts the region's up nodes: their in-flight requests, bound each (0 without a bound).
	load map[string][2]int
	// loads records the regions Load was asked about.
	loads []string
}

type fakeNode struct {
	id, region, url string
	down            bool
	inFlight        int
	failures        int
}

type fakeLease struct {
	u *fakeUpstreams
	n *fakeNode
}

func (l fakeLease) ID() string  { return l.n.id }
func (l fakeLease) URL() string { return l.n.url }
func (l fakeLease) Done(err error) {
	l.u.mu.Lock()
	defer l.u.mu.Unlock()
	l.n.inFlight--
	if err != nil && !errors.Is(err, ErrNoVerdict) {
		l.n.failures++
	}
}

var _ Upstreams = (*fakeUpstreams)(nil)

func (u *fakeUpstreams) Pick(region string, avoid []string) (Upstream, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	var cands []*fakeNode
	for _, n := range u.nodes {
		if n.region == region && !n.down {
			cands = append(cands, n)
		}
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("%w %s", ErrNoUpstream, region)
	}
	slices.SortStableFunc(cands, func(a, b *fakeNode) int {
		ai, bi := slices.Contains(avoid, a.id), slices.Contains(avoid, b.id)
		switch {
		case ai == bi:
			return 0
		case ai:
			return 1
		}
		return -1
	})
	for _, n := range cands {
		if u.bound == 0 || n.inFlight < u.bound {
			n.inFlight++
			return fakeLease{u, n}, nil
		}
	}
	return nil, ErrSaturated
}

func (u *fakeUpstreams) Healthy(region string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, n := range u.nodes {
		if n.region == region && !n.down {
			return true
		}
	}
	return false
}

func (u *fakeUpstreams) Load(region string) (inFlight, capacity int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.loads = append(u.loads, region)
	if l, ok := u.load[region]; ok {
		return l[0], l[1]
	}
	for _, n := range u.nodes {
		if n.region == region && !n.down {
			inFlight += n.inFlight
			capacity += u.bound
		}
	}
	return inFlight, capacity
}

func (u *fakeUpstreams) setLoad(region string, inFlight, capacity int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.load == nil {
		u.load = map[string][2]int{}
	}
	u.load[region] = [2]int{inFlight, capacity}
}

func (u *fakeUpstreams) Nodes() []NodeState {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []NodeState
	for _, n := range u.nodes {
		out = append(out, NodeState{ID: n.id, Region: n.region, URL: n.url, Healthy: !n.down, Breaker: "closed"})
	}
	return out
}

// apiNode is an httptest API node that records what it received and answers with its region.
type apiNode struct {
	region string
	srv    *httptest.Server
	hits   atomic.Int64
	mu     sync.Mutex
	last   *http.Request
	body   []byte
	// handle, when set, answers instead of the default echo.
	handle func(w http.ResponseWriter, r *http.Request) bool
	// tenants are recorded by POST /internal/v1/tenants.
	tenants map[string]string
	// extraRows are more tenant rows GET /internal/v1/tenants lists, by shard (a moving
	// tenant's importing copy, a moved tenant's source awaiting cleanup).
	extraRows map[string][]string
	// listStatus, when set, is GET /internal/v1/tenants' answer (501: no worker role).
	listStatus int
}

type echo struct {
	Method  string `json:"method"`
	Path    string `json:"path"`
	Body    string `json:"body"`
	Version string `json:"shardmap_version"`
}

func newAPINode(t testing.TB, region string) *apiNode {
	a := &apiNode{region: region, tenants: map[string]string{}}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.last, a.body = r, body
		h := a.handle
		a.mu.Unlock()
		w.Header().Set(HeaderServedRegion, region)
		if strings.HasPrefix(r.URL.Path, "/internal/v1/tenants") {
			a.internal(w, r, body)
			return
		}
		a.hits.Add(1)
		if h != nil && h(w, r) {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(echo{r.Method, r.URL.RequestURI(), string(body), r.Header.Get(HeaderShardmapVersion)})
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *apiNode) internal(w http.ResponseWriter, r *http.Request, body []byte) {
	if r.Header.Get("Authorization") != "Bearer cluster-secret" {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if r.Method == http.MethodGet && r.URL.Path == "/internal/v1/tenants" {
		a.listRows(w, r)
		return
	}
	if r.Method == http.MethodPost {
		var req struct{ ID, Shard string }
		_ = json.Unmarshal(body, &req)
		if _, ok := a.tenants[req.ID]; ok {
			w.WriteHeader(http.StatusConflict)
			return
		}
		a.tenants[req.ID] = req.Shard
		w.WriteHeader(http.StatusCreated)
		return
	}
	id := strings.TrimPrefix(r.URL.Path, "/internal/v1/tenants/")
	if shard, ok := a.tenants[id]; ok {
		_ = json.NewEncoder(w).Encode(map[string]string{"id": id, "shard": shard})
		return
	}
	w.WriteHeader(http.StatusNotFound)
}

// listRows answers GET /internal/v1/tenants like an API node (called with a.mu held).
func (a *apiNode) listRows(w http.ResponseWriter, r *http.Request) {
	if a.listStatus != 0 {
		w.WriteHeader(a.listStatus)
		return
	}
	q := r.URL.Query()
	shard, after := q.Get("shard"), q.Get("after")
	limit, err := strconv.Atoi(q.Get("limit"))
	if err != nil || limit < 1 {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	rows := slices.Clone(a.extraRows[shard])
	for id, sh := range a.tenants {
		if sh == shard {
			rows = append(rows, id)
		}
	}
	slices.Sort(rows)
	type item struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	ans := struct {
		Items []item `json:"items"`
	}{Items: []item{}}
	for _, id := range slices.Compact(rows) {
		if id > after && len(ans.Items) < limit {
			ans.Items = append(ans.Items, item{id, "active"})
		}
	}
	_ = json.NewEncoder(w).Encode(ans)
}

func (a *apiNode) lastRequest() (*http.Request, []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last, a.body
}

// rig is a router in us-east with one API node in us-east and one in eu-west.
type rig struct {
	srv   *Server
	http  *httptest.Server
	loop  *Loop // the event-loop front, when the suite runs against it (MERIDIAN_TEST_LOOP)
	m     *fakeMap
	ups   *fakeUpstreams
	nodes map[string]*apiNode
}

func newRig(t testing.TB, mod func(*Config)) *rig {
	t.Helper()
	rg := &rig{
		m: &fakeMap{version: 5, contact: time.Now().Add(time.Hour), leader: "127.0.0.1:1",
			regions: []string{"eu-west", "us-east"},
			def:     Route{Shard: "us-east-1", HomeRegion: "us-east"}},
		ups:   &fakeUpstreams{},
		nodes: map[string]*apiNode{},
	}
	rg.m.set("euco", Route{Shard: "eu-west-1", HomeRegion: "eu-west", Pinned: true, Epoch: 2}, 5)
	for _, r := range []string{"us-east", "eu-west"} {
		a := newAPINode(t, r)
		rg.nodes[r] = a
		rg.ups.nodes = append(rg.ups.nodes, &fakeNode{id: r + "-a", region: r, url: a.srv.URL})
	}
	cfg := Config{
		Region: "us-east", Map: rg.m, Auth: fakeAuth{}, Upstreams: rg.ups,
		ClusterToken: "cluster-secret", Logger: slog.New(slog.DiscardHandler),
		UpstreamTimeout: 2 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rg.srv = s
	rg.http = httptest.NewServer(s.Handler())
	t.Cleanup(rg.http.Close)
	if os.Getenv("MERIDIAN_TEST_LOOP") != "" {
		// The whole suite against the event-loop front: the rig's URL is the loop's.
		rg.loop = startTestLoop(t, s)
		rg.http.URL = "http://" + rg.loop.Addr()
	}
	return rg
}

// startTestLoop starts s's event-loop front on a loopback port, its detached connections
// served by an HTTP server with the daemon's limits.
func startTestLoop(t testing.TB, s *Server) *Loop { return startTestLoopN(t, s, 2) }

// startTestLoopN is startTestLoop with the given number of event loops.
func startTestLoopN(t testing.TB, s *Server, loops int) *Loop {
	t.Helper()
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	l, err := s.StartLoop(LoopConfig{Addr: "127.0.0.1:0", Loops: loops, HTTP: hs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.Stop(ctx)
		_ = hs.Close()
	})
	return l
}

const (
	tokAcme  = "acme|u1|data:read data:write"
	tokEuco  = "euco|u2|data:read data:write"
	tokAdmin = "ops|root|admin"
)

// do sends a request through the rig's router.
func (rg *rig) do(t *testing.T, method, path, token, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	var rb io.Reader
	if body != "" {
		rb = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, rg.http.URL+path, rb)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func wantStatus(t *testing.T, resp *http.Response, body []byte, want int) {
	t.Helper()
	if resp.StatusCode != want {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, want, body)
	}
	if want >= 400 && !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
		t.Fatalf("error answer has Content-Type %q, want application/problem+json", resp.Header.Get("Content-Type"))
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%q is not an integer", s)
	}
	return n
}
