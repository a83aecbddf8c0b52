package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/loadgen"
)

func TestZipfSamplerBounds(t *testing.T) {
	for _, n := range []int{1, 2, 10, 10_000} {
		z := newZipfSampler(zipfSeed, 0, 1.1, n)
		for range 20_000 {
			if k := z.next(); k < 1 || k > n {
				t.Fatalf("n=%d: drew %d, want 1…%d", n, k, n)
			}
		}
	}
}

func TestZipfSamplerDistribution(t *testing.T) {
	const n, s, draws = 10_000, 1.1, 200_000
	z := newZipfSampler(zipfSeed, 7, s, n)
	counts := make([]int, n+1)
	for range draws {
		counts[z.next()]++
	}
	var h float64
	for k := 1; k <= n; k++ {
		h += math.Pow(float64(k), -s)
	}
	// P(k) = k^-s / H: check the head, where the counts are large enough to be tight.
	for _, k := range []int{1, 2, 3, 10} {
		want := math.Pow(float64(k), -s) / h * draws
		if got := float64(counts[k]); math.Abs(got-want) > 5*math.Sqrt(want) {
			t.Errorf("k=%d drawn %v times, want ≈ %.0f", k, got, want)
		}
	}
	if counts[1] <= counts[2] || counts[2] <= counts[10] {
		t.Errorf("not decreasing: %d %d %d", counts[1], counts[2], counts[10])
	}
	// The same seed and stream draw the same ids; another stream others.
	a, b, c := newZipfSampler(1, 1, s, n), newZipfSampler(1, 1, s, n), newZipfSampler(1, 2, s, n)
	same, diff := true, false
	for range 100 {
		x, y, w := a.next(), b.next(), c.next()
		same = same && x == y
		diff = diff || x != w
	}
	if !same || !diff {
		t.Errorf("seeding: same=%v diff=%v", same, diff)
	}
}

func TestHitShare(t *testing.T) {
	for _, tc := range []struct {
		src         map[string]int64
		hits, total int64
		share       float64
		ok          bool
	}{
		{nil, 0, 0, 0, false},
		{map[string]int64{"replica": 10}, 0, 10, 0, true},
		{map[string]int64{"cache": 9, "replica": 1}, 9, 10, 0.9, true},
		{map[string]int64{"cache": 4, "primary": 2, "none": 2}, 4, 8, 0.5, true},
	} {
		hits, total, share, ok := hitShare(tc.src)
		if hits != tc.hits || total != tc.total || share != tc.share || ok != tc.ok {
			t.Errorf("%v: got %d/%d %v %v", tc.src, hits, total, share, ok)
		}
	}
}

// TestReadCounter counts statuses and the 200s' sources from real answers, only within a phase,
// fed through loadgen's OnAnswer by either engine (useCacheClient).
func TestReadCounter(t *testing.T) {
	for _, client := range []string{clientLoop, clientGoroutines} {
		t.Run(client, func(t *testing.T) {
			var n atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch n.Add(1) % 4 {
				case 0:
					w.Header().Set("X-Read-Source", "replica")
				case 1, 2:
					w.Header().Set("X-Read-Source", "cache")
				case 3:
					w.Header().Set("X-Read-Source", "cache") // a 429 with a source must not count as a hit
					w.WriteHeader(http.StatusTooManyRequests)
				}
			}))
			defer srv.Close()
			cfg := loadgen.Config{Concurrency: 1}
			rc := useCacheClient(&cfg, client)
			if want := map[string]string{clientLoop: loadgen.EngineLoop, clientGoroutines: loadgen.EngineGoroutines}[client]; cfg.Engine != want {
				t.Fatalf("engine %q, want %q", cfg.Engine, want)
			}
			get := func(requests int) {
				t.Helper()
				cfg.Requests = requests
				if _, err := loadgen.Run(t.Context(), cfg, []loadgen.Target{{Name: "t", New: func(int, uint64) loadgen.Request {
					return loadgen.Request{URL: srv.URL}
				}}}); err != nil {
					t.Fatal(err)
				}
			}
			get(1) // no phase: not counted
			rc.setPhase("p")
			get(7) // answers 2…8: cache, 429, replica, cache, cache, 429, replica
			rc.setPhase("")
			get(1)
			got := rc.get("p")
			if got.status["200"] != 5 || got.status["429"] != 2 || got.source200["cache"] != 3 || got.source200["replica"] != 2 {
				t.Errorf("counts %v %v", got.status, got.source200)
			}
			if hits, total, _, _ := hitShare(got.source200); hits != 3 || total != 5 {
				t.Errorf("hit share %d/%d", hits, total)
			}
			if len(rc.get("other").status) != 0 {
				t.Error("an unknown phase has counts")
			}
		})
	}
}

func TestParseCacheRequests(t *testing.T) {
	text := `# HELP meridian_cache_requests_total Cache lookups by kind and result.
# TYPE meridian_cache_requests_total counter
meridian_cache_requests_total{kind="record",result="hit"} 90
meridian_cache_requests_total{kind="list",result="hit"} 5
meridian_cache_requests_total{kind="record",result="miss"} 8
meridian_cache_requests_total{kind="record",result="bypass"} 2e+00
meridian_cache_requests_total_created{kind="record",result="hit"} 1.7e9
meridian_cache_fill_skipped_total{reason="lsn"} 3
meridian_edge_cache_requests_total{result="hit"} 1000
`
	got, found := parseRequests(strings.NewReader(text), cacheMetric)
	if !found || got["hit"] != 95 || got["miss"] != 8 || got["bypass"] != 2 || len(got) != 3 {
		t.Errorf("got %v %v", got, found)
	}
	if _, found := parseRequests(strings.NewReader("meridian_http_requests_total 3\n"), cacheMetric); found {
		t.Error("found a series that is absent")
	}
}

// TestParseEdgeRequests reads the router's edge counter by result, and neither counter as the
// other (one name is not a prefix of the other, but a router and a node may expose both).
func TestParseEdgeRequests(t *testing.T) {
	text := `# HELP meridian_edge_cache_requests_total Record GETs the router looked up in the region's cache, by result.
# TYPE meridian_edge_cache_requests_total counter
meridian_edge_cache_requests_total{result="bypass"} 12
meridian_edge_cache_requests_total{result="hit"} 4.1e+03
meridian_edge_cache_requests_total{result="miss"} 30
meridian_edge_cache_requests_total{result="stale"} 2
meridian_edge_cache_requests_total{result="epoch"} 1
meridian_edge_cache_requests_total{result="shard"} 0
meridian_edge_cache_requests_total{result="error"} 3
meridian_edge_cache_requests_total_created{result="hit"} 1.7e9
meridian_cache_requests_total{kind="record",result="hit"} 7
meridian_http_requests_total{route="edge"} 9
`
	got, found := parseRequests(strings.NewReader(text), edgeMetric)
	want := map[string]float64{"bypass": 12, "hit": 4100, "miss": 30, "stale": 2, "epoch": 1, "shard": 0, "error": 3}
	if !found || !maps.Equal(got, want) {
		t.Errorf("edge: got %v %v, want %v", got, found, want)
	}
	if node, _ := parseRequests(strings.NewReader(text), cacheMetric); !maps.Equal(node, map[string]float64{"hit": 7}) {
		t.Errorf("node counter read as %v", node)
	}
	// A router whose edge has counted nothing (or is off) exposes no series.
	if _, found := parseRequests(strings.NewReader("# HELP go_goroutines x\ngo_goroutines 8\n"), edgeMetric); found {
		t.Error("found an edge series that is absent")
	}
}

// TestScrapeCacheUncompressed: an API node that answers Accept-Encoding: gzip with a body
// compressed twice (as cmd/api's /metrics did) is still read, because the scrape asks for none.
func TestScrapeCacheUncompressed(t *testing.T) {
	const text = "meridian_cache_requests_total{kind=\"record\",result=\"hit\"} 7\n" +
		"meridian_cache_requests_total{kind=\"record\",result=\"miss\"} 2\n" +
		"meridian_edge_cache_requests_total{result=\"hit\"} 5\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			var inner, outer bytes.Buffer
			gz := gzip.NewWriter(&inner)
			gz.Write([]byte(text))
			gz.Close()
			gz = gzip.NewWriter(&outer)
			gz.Write(inner.Bytes())
			gz.Close()
			w.Header().Set("Content-Encoding", "gzip")
			w.Write(outer.Bytes())
			return
		}
		w.Write([]byte(text))
	}))
	defer srv.Close()
	got, answered, found := scrapeCache(t.Context(), srv.Client(), []string{srv.URL}, cacheMetric)
	if !answered || !found || got["hit"] != 7 || got["miss"] != 2 {
		t.Fatalf("scrapeCache = %v, %v, %v; want hit 7, miss 2", got, answered, found)
	}
	// The router's edge counter is scraped the same way.
	got, answered, found = scrapeCache(t.Context(), srv.Client(), []string{srv.URL}, edgeMetric)
	if !answered || !found || got["hit"] != 5 || len(got) != 1 {
		t.Fatalf("scrapeCache(edge) = %v, %v, %v; want hit 5", got, answered, found)
	}
}

// TestScrapeCacheAbsent: a process that answers /metrics without the series has answered (its
// counter has counted nothing), one that does not answer has not.
func TestScrapeCacheAbsent(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "go_goroutines 8")
	}))
	defer srv.Close()
	if got, answered, found := scrapeCache(t.Context(), srv.Client(), []string{srv.URL}, edgeMetric); !answered || found || len(got) != 0 {
		t.Errorf("no series: %v %v %v", got, answered, found)
	}
	if _, answered, found := scrapeCache(t.Context(), srv.Client(), []string{srv.URL + "/gone"}, edgeMetric); answered || found {
		t.Errorf("a 404 counted as answered: %v %v", answered, found)
	}
}

// TestPhaseMeterEdge: the router's edge counter is added up per phase like the nodes' counter;
// a result first counted during a phase counts from 0, a reading the router did not answer
// leaves the phase without edge figures, and the counter is known to exist once a reading has it.
func TestPhaseMeterEdge(t *testing.T) {
	snaps := []meterSnap{
		{cacheOK: true, cache: map[string]float64{"miss": 10}, edgeOK: true}, // the edge has counted nothing yet
		{cacheOK: true, cache: map[string]float64{"miss": 15, "hit": 2}, edgeOK: true, edgeFound: true,
			edge: map[string]float64{"hit": 40, "miss": 5}},
		{cacheOK: true, cache: map[string]float64{"miss": 15, "hit": 2, "bypass": 50}, edgeOK: true, edgeFound: true,
			edge: map[string]float64{"hit": 40, "miss": 5, "bypass": 50}},
		{cacheOK: true, cache: map[string]float64{"miss": 16, "hit": 2, "bypass": 50}}, // the router's /metrics failed
	}
	i := 0
	m := &phaseMeter{usage: map[string]*phaseUsage{}, snap: func(context.Context) meterSnap {
		s := snaps[i]
		i++
		return s
	}}
	m.mark(t.Context(), cachedPhase)
	if m.edgeExported || !m.edgeRead {
		t.Errorf("after a reading without the series: exported %v, read %v", m.edgeExported, m.edgeRead)
	}
	m.mark(t.Context(), uncachedPhase)
	m.mark(t.Context(), directPrefix+cachedPhase)
	m.mark(t.Context(), "")
	if !m.edgeExported {
		t.Error("edge counter not noticed")
	}
	c := m.usage[cachedPhase]
	if !c.edgeSeen || !maps.Equal(c.edge, map[string]float64{"hit": 40, "miss": 5}) || c.cache["miss"] != 5 || c.cache["hit"] != 2 {
		t.Errorf("cached: %+v", c)
	}
	if u := m.usage[uncachedPhase]; !u.edgeSeen || u.edge["bypass"] != 50 || u.edge["hit"] != 0 || u.cache["bypass"] != 50 {
		t.Errorf("no-cache: %+v", u)
	}
	if d := m.usage[directPrefix+cachedPhase]; d.edgeSeen || !d.cacheSeen || d.cache["miss"] != 1 {
		t.Errorf("direct cached: %+v", d)
	}
}

// TestMetricsHitRatio: edge hits count as hits the nodes never saw, the edge's other results
// not at all (the nodes counted those reads), and only for reads through the router.
func TestMetricsHitRatio(t *testing.T) {
	u := &phaseUsage{cacheSeen: true, cache: map[string]float64{"hit": 10, "miss": 5, "bypass": 5},
		edgeSeen: true, edge: map[string]float64{"hit": 80, "miss": 4, "stale": 3, "epoch": 1, "shard": 1, "error": 1, "bypass": 5}}
	for _, tc := range []struct {
		name string
		u    *phaseUsage
		edge bool
		want float64
		ok   bool
	}{
		{"through the router", u, true, 0.9, true}, // (10+80) / (10+5+5+80)
		{"direct: nodes only", u, false, 0.5, true},
		{"no reading of the router", &phaseUsage{cacheSeen: true, cache: u.cache, edge: u.edge}, true, 0, false},
		{"no reading of the nodes", &phaseUsage{edgeSeen: true, cache: map[string]float64{}, edge: u.edge}, true, 0, false},
		{"only edge hits", &phaseUsage{cacheSeen: true, cache: map[string]float64{}, edgeSeen: true, edge: map[string]float64{"hit": 7}}, true, 1, true},
		{"nothing counted", &phaseUsage{cacheSeen: true, cache: map[string]float64{}, edgeSeen: true, edge: map[string]float64{}}, true, 0, false},
		{"no phase", nil, true, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := metricsHitRatio(tc.u, tc.edge)
			if ok != tc.ok || math.Abs(got-tc.want) > 1e-12 {
				t.Errorf("got %v %v, want %v %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestParseProcStat(t *testing.T) {
	line := "4242 (my (odd) comm) S 17 4242 4242 0 -1 4194304 1 2 3 4 150 50 7 3 20 0 9 0 100 0 0\n"
	st, ok := parseProcStat([]byte(line))
	if !ok || st.ppid != 17 || st.own != 200 || st.reaped != 10 {
		t.Errorf("got %+v %v", st, ok)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2 3", "1 (x) S 1 2 3 4 5 6 7 8 9 10 a b c d"} {
		if _, ok := parseProcStat([]byte(bad)); ok {
			t.Errorf("%q parsed", bad)
		}
	}
	// This process's own line parses.
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skip("no /proc")
	}
	if st, ok := parseProcStat(b); !ok || st.ppid <= 0 {
		t.Errorf("/proc/self/stat: %+v %v", st, ok)
	}
}

func TestTreeTicks(t *testing.T) {
	procs := map[int]procStat{
		1:  {ppid: 0, own: 1000},
		10: {ppid: 1, own: 5, reaped: 100}, // a postmaster whose exited backends used 100
		11: {ppid: 10, own: 20},            // its backends
		12: {ppid: 11, own: 3},             // a grandchild
		20: {ppid: 1, own: 7},              // something else
	}
	for _, tc := range []struct {
		roots []int
		want  int64
	}{{nil, 0}, {[]int{10}, 128}, {[]int{11}, 23}, {[]int{20}, 7}, {[]int{10, 20}, 135}, {[]int{99}, 0}} {
		if got := treeTicks(procs, tc.roots); got != tc.want {
			t.Errorf("roots %v: %d, want %d", tc.roots, got, tc.want)
		}
	}
}

func TestProcessMatchers(t *testing.T) {
	pm := procCmd{comm: "postgres", args: []string{"/usr/lib/postgresql/15/bin/postgres", "-D", "/x/data", "-p", "20061", "-c", "fsync=off"}}
	backend := procCmd{comm: "postgres", args: []string{"postgres: meridian_app meridian_us_west_1 127.0.0.1(4242) idle"}}
	if !isPostmaster(pm, "20061") || isPostmaster(pm, "20062") || isPostmaster(backend, "20061") {
		t.Error("postmaster matching")
	}
	started := procCmd{comm: "redis-server", args: []string{"/usr/bin/redis-server", "--port", "20070", "--bind", "127.0.0.1"}}
	retitled := procCmd{comm: "redis-server", args: []string{"/usr/bin/redis-server 127.0.0.1:20070"}}
	if !isRedis(started, "20070") || !isRedis(retitled, "20070") || isRedis(retitled, "2007") || isRedis(pm, "20061") {
		t.Error("redis matching")
	}
	if hostPort("http://127.0.0.1:20000") != "127.0.0.1:20000" || hostPort("http://x") != "" {
		t.Error("hostPort")
	}
}

func TestReadDSN(t *testing.T) {
	var cs clusterState
	if err := json.Unmarshal([]byte(`{"regions":{
		"us-east":{"postgres":{"primary":"postgres://postgres@127.0.0.1:20050/postgres?sslmode=disable",
			"shards":{"us-east-1":"postgres://postgres@127.0.0.1:20050/meridian_us_east_1?sslmode=disable"},
			"standbys":{"us-west":"postgres://postgres@127.0.0.1:20061/postgres?sslmode=disable"}}},
		"us-west":{"postgres":{"shards":{"us-west-1":"postgres://postgres@127.0.0.1:21050/meridian_us_west_1?sslmode=disable"}}}}}`), &cs); err != nil {
		t.Fatal(err)
	}
	got, err := cs.readDSN("us-east", "us-west", "us-west-1")
	if want := "postgres://meridian_app@127.0.0.1:20061/meridian_us_west_1?sslmode=disable"; err != nil || got != want {
		t.Errorf("standby: %q %v, want %q", got, err, want)
	}
	got, err = cs.readDSN("us-east", "us-east", "us-east-1")
	if want := "postgres://meridian_app@127.0.0.1:20050/meridian_us_east_1?sslmode=disable"; err != nil || got != want {
		t.Errorf("local primary: %q %v, want %q", got, err, want)
	}
	if _, err := cs.readDSN("us-west", "us-east", "us-east-1"); err == nil {
		t.Error("a missing standby was not reported")
	}
	if _, err := cs.readDSN("us-east", "us-west", ""); err == nil {
		t.Error("an unknown shard was not reported")
	}
}

func TestPgbenchOutputAndLog(t *testing.T) {
	out := `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: /tmp/read.sql
scaling factor: 1
query mode: prepared
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 21437
number of failed transactions: 3 (0.014%)
latency average = 3.727 ms
initial connection time = 14.802 ms
tps = 4290.115364 (without initial connection time)
`
	got, err := parsePgbenchOutput(out)
	if err != nil || got.tx != 21437 || got.failed != 3 || got.tps != 4290.115364 {
		t.Errorf("got %+v %v", got, err)
	}
	if _, err := parsePgbenchOutput("pgbench: error: connection failed\n"); err == nil {
		t.Error("no summary accepted")
	}
	lat, skipped := parsePgbenchLog(strings.NewReader("0 0 1834 0 1732930000 123456\n1 0 2210 0 1732930000 123999\n1 1 failed 0 1732930000 124000\n\n"))
	if len(lat) != 2 || lat[0] != 1834*time.Microsecond || lat[1] != 2210*time.Microsecond || skipped != 1 {
		t.Errorf("log: %v %d", lat, skipped)
	}
	script := pgbenchScript("bench-cache-us-west", 10_000, 1.1)
	for _, want := range []string{`\set k random_zipfian(1, 10000, 1.1)`, `\startpipeline`, `\endpipeline`,
		"set_config('meridian.tenant', 'bench-cache-us-west', true)", "id = 'zipf-' || :k AND NOT deleted", "collection = 'zipf'",
		"SELECT COALESCE(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text;"} {
		if !strings.Contains(script, want) {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}
	p := &pgbenchRun{tx: 3, busy: time.Second, lat: []time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond}}
	r := p.result()
	if r.P50 != 2*time.Millisecond || r.Max != 3*time.Millisecond || r.Throughput != 3 || r.Errors != 0 {
		t.Errorf("result %+v", r)
	}
}

func TestParseFlagsCache(t *testing.T) {
	for _, args := range [][]string{
		{"-scenario", "get", "-records", "10"},
		{"-scenario", "cache", "-pair-rounds", "3"},
		{"-scenario", "invalidation", "-zipf-s", "1.5"},
		{"-scenario", "cache", "-zipf-s", "1"},
		{"-scenario", "cache", "-records", "0"},
		{"-scenario", "cache", "-target", "api=http://127.0.0.1:1"},
		{"-scenario", "cache", "-sequential"},
		{"-scenario", "invalidation", "-poll", "0s"},
		{"-scenario", "invalidation", "-token", "x"},
		{"-scenario", "cache", "-via", "nginx"},
		{"-scenario", "cache", "-via", "router,router"},
		{"-scenario", "cache", "-via", ""},
		{"-scenario", "invalidation", "-via", "direct"},
	} {
		if _, err := parseFlags(args, &bytes.Buffer{}); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	o, err := parseFlags([]string{"-scenario", "cache", "-records", "500", "-zipf-s", "1.3"}, &bytes.Buffer{})
	if err != nil || o.records != 500 || o.zipfS != 1.3 || o.pairRounds != 50 || o.via != "router,direct" {
		t.Errorf("%+v %v", o, err)
	}
	if via, err := parseVia("direct, router"); err != nil || !slices.Equal(via, []string{"direct", "router"}) {
		t.Errorf("parseVia: %v %v", via, err)
	}
}

// fakeRegions is a stand-in for a cluster of routers and API nodes with a read cache: records
// with versions shared by every region, a new version visible in a reader region after lag, a
// per-region cache that answers X-Read-Source: cache once a record was read there (unless the
// request says Cache-Control: no-cache) and drops an entry when a newer version is visible, and
// the admin tenant routes. Each region has a router and an API node, two servers sharing that
// state: the router answers a read itself when the region's cache has the visible version (the
// edge), else hands it to the node's code; the node looks the cache up on every read. The node
// serves /metrics with meridian_cache_requests_total, the router with
// meridian_edge_cache_requests_total.
type fakeRegions struct {
	mu  sync.Mutex
	lag time.Duration
	// flapEvery > 0 answers the previous version on every flapEvery-th read after the lag (a
	// reader that goes back in time).
	flapEvery int
	reads     int
	tenants   map[string]string
	patched   map[string]bool
	recs      map[string]*fakeRecord
	puts      atomic.Int64
	routers   map[string]*httptest.Server
	nodes     map[string]*httptest.Server
	results   map[string]map[string]int64 // region -> result -> count, of the node
	edge      map[string]map[string]int64 // region -> result -> count, of the router's edge
}

type fakeRecord struct {
	version, prev int64
	written       time.Time
	cached        map[string]int64 // region -> cached version
}

func newFakeRegions(t *testing.T, lag time.Duration, regions ...string) *fakeRegions {
	t.Helper()
	f := &fakeRegions{lag: lag, tenants: map[string]string{}, patched: map[string]bool{}, recs: map[string]*fakeRecord{},
		routers: map[string]*httptest.Server{}, nodes: map[string]*httptest.Server{},
		results: map[string]map[string]int64{}, edge: map[string]map[string]int64{}}
	v, err := auth.NewVerifier(auth.Config{Secret: []byte(testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range regions {
		f.results[r], f.edge[r] = map[string]int64{}, map[string]int64{}
		f.routers[r] = httptest.NewServer(f.handler(r, v, true))
		t.Cleanup(f.routers[r].Close)
		f.nodes[r] = httptest.NewServer(f.handler(r, v, false))
		t.Cleanup(f.nodes[r].Close)
	}
	return f
}

// handler serves region's router (router true) or API node.
func (f *fakeRegions) handler(region string, v *auth.Verifier, router bool) http.Handler {
	mux := http.NewServeMux()
	admin := func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") != "Bearer "+testAdmin {
			http.Error(w, "not admin", http.StatusForbidden)
			return false
		}
		return true
	}
	mux.HandleFunc("POST /admin/v1/tenants", func(w http.ResponseWriter, r *http.Request) {
		if !admin(w, r) {
			return
		}
		var body struct{ ID, Region string }
		_ = json.NewDecoder(r.Body).Decode(&body)
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := f.tenants[body.ID]; ok {
			w.WriteHeader(http.StatusConflict)
			return
		}
		f.tenants[body.ID] = body.Region
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":%q,"shard":"%s-1","home_region":%q}`, body.ID, body.Region, body.Region)
	})
	mux.HandleFunc("GET /admin/v1/tenants/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		h := f.tenants[r.PathValue("id")]
		fmt.Fprintf(w, `{"id":%q,"shard":"%s-1","home_region":%q}`, r.PathValue("id"), h, h)
	})
	mux.HandleFunc("PATCH /admin/v1/tenants/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !admin(w, r) {
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.patched[r.PathValue("id")] = true
		fmt.Fprint(w, `{}`)
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if router {
			for res, n := range f.edge[region] {
				fmt.Fprintf(w, "%s{result=%q} %d\n", edgeMetric, res, n)
			}
			return
		}
		for res, n := range f.results[region] {
			fmt.Fprintf(w, "%s{kind=\"record\",result=%q} %d\n", cacheMetric, res, n)
		}
	})
	tenant := func(w http.ResponseWriter, r *http.Request) (string, bool) {
		tok, err := auth.BearerToken(r.Header.Get("Authorization"))
		var cl *auth.Claims
		if err == nil {
			cl, err = v.Verify(tok)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return "", false
		}
		return cl.Tenant, true
	}
	mux.HandleFunc("PUT /v1/collections/{c}/records/{id}", func(w http.ResponseWriter, r *http.Request) {
		ten, ok := tenant(w, r)
		if !ok {
			return
		}
		f.puts.Add(1)
		key := ten + "/" + r.PathValue("c") + "/" + r.PathValue("id")
		f.mu.Lock()
		defer f.mu.Unlock()
		rec := f.recs[key]
		if rec != nil && r.Header.Get("If-None-Match") == "*" {
			w.WriteHeader(http.StatusPreconditionFailed)
			return
		}
		status := http.StatusOK
		if rec == nil {
			rec = &fakeRecord{cached: map[string]int64{}}
			f.recs[key] = rec
			status = http.StatusCreated
		}
		rec.prev, rec.version, rec.written = rec.version, rec.version+1, time.Now()
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"id":%q,"version":%d,"data":{}}`, r.PathValue("id"), rec.version)
	})
	mux.HandleFunc("GET /v1/collections/{c}/records/{id}", func(w http.ResponseWriter, r *http.Request) {
		ten, ok := tenant(w, r)
		if !ok {
			return
		}
		key := ten + "/" + r.PathValue("c") + "/" + r.PathValue("id")
		f.mu.Lock()
		defer f.mu.Unlock()
		rec := f.recs[key]
		if rec == nil {
			http.Error(w, "no record", http.StatusNotFound)
			return
		}
		visible := rec.version
		f.reads++
		if rec.prev > 0 && (time.Since(rec.written) < f.lag || (f.flapEvery > 0 && f.reads%f.flapEvery == 0)) {
			visible = rec.prev
		}
		noCache := r.Header.Get("Cache-Control") == "no-cache"
		if router {
			// The edge: a hit is answered here and never reaches the node.
			switch {
			case noCache:
				f.edge[region]["bypass"]++
			case rec.cached[region] == visible:
				f.edge[region]["hit"]++
				w.Header().Set("X-Read-Source", "cache")
				fmt.Fprintf(w, `{"id":%q,"version":%d,"data":{}}`, r.PathValue("id"), visible)
				return
			default:
				f.edge[region]["miss"]++
			}
		}
		src := "replica"
		switch {
		case noCache:
			f.results[region]["bypass"]++
		case rec.cached[region] == visible:
			src = "cache"
			f.results[region]["hit"]++
		default:
			rec.cached[region] = visible
			f.results[region]["miss"]++
		}
		w.Header().Set("X-Read-Source", src)
		fmt.Fprintf(w, `{"id":%q,"version":%d,"data":{}}`, r.PathValue("id"), visible)
	})
	return mux
}

func (f *fakeRegions) clusterFile(t *testing.T, latency bool) string {
	t.Helper()
	regions := map[string]any{}
	for r, srv := range f.routers {
		regions[r] = map[string]any{"router": srv.URL, "routers": []string{srv.URL}, "api": []string{f.nodes[r].URL}, "redis": "127.0.0.1:1"}
	}
	b, _ := json.Marshal(map[string]any{"regions": regions, "dev_jwt_secret": testSecret, "admin_token": testAdmin,
		"cluster_token": "c", "latency": latency})
	path := filepath.Join(t.TempDir(), "cluster.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRunCache(t *testing.T) {
	f := newFakeRegions(t, 0, "us-east", "us-west")
	cluster := f.clusterFile(t, false)
	out := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "-cluster", cluster, "-scenario", "cache", "-records", "300", "-seed-workers", "8",
		"-c", "4", "-d", "600ms", "-round", "200ms", "-warmup", "200ms", "-out", out}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	md := stdout.String()
	t.Log(md)
	for _, want := range []string{
		"## Cached vs uncached GET of Zipf-distributed records through one router and direct to its API node, beside pgbench (",
		"-scenario cache -records 300",
		"| no-cache | ", "| cached | ", "| cached / no-cache | ",
		"| direct no-cache | ", "| direct cached | ", "| direct cached / direct no-cache | ", "| direct cached / cached | ",
		"- throughput `cached` / `no-cache` (through the router): **",
		"- throughput `direct cached` / `direct no-cache` (direct to the API node): **",
		"tenant `bench-cache-us-west`", "homed in us-west",
		"| variant | answers by status | X-Read-Source of the 200s | hit ratio (answers) |",
		"| phase | requests | router us-east | API node(s) us-east | Postgres (us-east's standby of us-west) | Redis us-east |",
		"pgbench was not run: the cluster file has no database for shard \"us-west-1\" in us-west.",
		"300 created, 0 already there",
		"- hit ratio of `cached` over 300 records, Zipf s=1.1: **",
		"; load generator: bench `-client loop` (loadgen's event-loop engine", // the default client
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// The no-cache variant: bypass only, never a cache answer; the cached one mostly hits.
	if !strings.Contains(md, "| no-cache | 200×") || strings.Contains(md, "does not honour") || strings.Contains(md, "no `cached` answer came") {
		t.Errorf("variants not as the fake answers them")
	}
	if m := regexpFind(md, `\| cached \| 200×\d+ \| cache×\d+, replica×\d+ \| ([0-9.]+) %`); m == "" {
		t.Errorf("no hit ratio of the cached variant")
	} else if v, _ := strconv.ParseFloat(m, 64); v < 50 {
		t.Errorf("hit ratio %v%%: the fake caches every record read once", v)
	}
	if !strings.Contains(md, "bypass×") || !strings.Contains(md, "hit×") {
		t.Errorf("metric deltas missing")
	}
	// The router answers the cached variant's hits at the edge, which no node sees: the table
	// shows them by name and the hit ratio (metrics) counts them.
	for _, want := range []string{
		"| " + cacheMetric + " Δ (API nodes) | " + edgeMetric + " Δ (router) | hit ratio (metrics) |",
		"the router answers a plain record GET itself when it finds the record in the region's cache (the edge",
		"the region's API nodes count the rest",
		"The direct variants never pass the router, so its edge counter does not move in them",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	rows := map[string]cacheRow{}
	for _, ph := range []string{uncachedPhase, cachedPhase, directPrefix + uncachedPhase, directPrefix + cachedPhase} {
		rows[ph] = parseCacheRow(t, md, ph)
	}
	cached := rows[cachedPhase]
	if cached.edge["edge hit"] == 0 || cached.edge["edge miss"] == 0 || cached.node["hit"] != 0 {
		t.Errorf("cached: edge %v, node %v; want edge hits and misses (the fake's edge finds every entry the node would)",
			cached.edge, cached.node)
	}
	for ph, r := range rows {
		edgeHits := r.edge["edge hit"]
		if strings.HasPrefix(ph, directPrefix) {
			if n := r.edge["edge hit"] + r.edge["edge miss"] + r.edge["edge bypass"]; n != 0 {
				t.Errorf("%s: the router's edge counted %d reads sent straight to the node", ph, n)
			}
			edgeHits = 0
		}
		want := 100 * float64(r.node["hit"]+edgeHits) / float64(r.node["hit"]+r.node["miss"]+r.node["bypass"]+edgeHits)
		if math.Abs(r.ratio-want) > 0.051 {
			t.Errorf("%s: hit ratio (metrics) %v %%, want %.2f %% from node %v and edge %v", ph, r.ratio, want, r.node, r.edge)
		}
	}
	if r := rows[cachedPhase]; r.ratio < 50 {
		t.Errorf("cached: hit ratio (metrics) %v %%, the fake caches every record read once", r.ratio)
	}
	if r := rows[uncachedPhase]; r.edge["edge bypass"] != r.node["bypass"] || r.edge["edge bypass"] == 0 || r.ratio != 0 {
		t.Errorf("no-cache: edge %v, node %v, ratio %v; want every read bypassed at the edge and at the node", r.edge, r.node, r.ratio)
	}
	if f.puts.Load() != 300 || !f.patched["bench-cache-us-west"] {
		t.Errorf("seeded %d records, patched %v", f.puts.Load(), f.patched)
	}
	if !strings.Contains(stderr.String(), "bench: seeding zipf: 300/300") {
		t.Errorf("no seeding progress: %s", stderr.String())
	}
	b, _ := os.ReadFile(out)
	if !strings.Contains(string(b), "## Cached vs uncached GET") || strings.Contains(string(b), testSecret) {
		t.Error("-out not written, or a secret leaked")
	}

	// A second run finds the records there and creates none.
	stdout.Reset()
	if err := run(t.Context(), args[:len(args)-2], &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "0 created, 300 already there") || f.puts.Load() != 600 {
		t.Errorf("rerun: %d PUTs\n%s", f.puts.Load(), stdout.String())
	}
}

// cacheRow is a row of the cache report's answers table: the deltas of the nodes' and the
// router's counters and the hit ratio (metrics) in percent.
type cacheRow struct {
	node, edge map[string]int64
	ratio      float64
}

func parseCacheRow(t *testing.T, md, variant string) cacheRow {
	t.Helper()
	var cells []string
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "| "+variant+" | ") && strings.Count(line, "|") == 8 {
			cells = strings.Split(strings.Trim(line, "| "), " | ")
			break
		}
	}
	if len(cells) != 7 {
		t.Fatalf("no row of %q in the answers table", variant)
	}
	counts := func(cell string) map[string]int64 {
		out := map[string]int64{}
		if cell == "–" {
			return out
		}
		for _, part := range strings.Split(cell, ", ") {
			k, v, ok := strings.Cut(part, "×")
			n, err := strconv.ParseInt(v, 10, 64)
			if !ok || err != nil {
				t.Fatalf("%s: cell %q", variant, cell)
			}
			out[k] = n
		}
		return out
	}
	ratio, err := strconv.ParseFloat(strings.TrimSuffix(cells[6], " %"), 64)
	if err != nil {
		t.Fatalf("%s: hit ratio (metrics) %q", variant, cells[6])
	}
	return cacheRow{node: counts(cells[4]), edge: counts(cells[5]), ratio: ratio}
}

func regexpFind(s, re string) string {
	m := regexp.MustCompile(re).FindStringSubmatch(s)
	if len(m) < 2 {
		return ""
	}
	return m[1]
}

// TestCacheReportEdge: the answers table with a router whose edge counted, one without the edge
// counter, and one whose /metrics was never read.
func TestCacheReportEdge(t *testing.T) {
	pairs := cachePairs([]string{viaRouter, viaDirect}, "http://router", "http://api")
	usage := func(edgeSeen bool) map[string]*phaseUsage {
		return map[string]*phaseUsage{
			uncachedPhase: {cacheSeen: true, cache: map[string]float64{"bypass": 100}, edgeSeen: edgeSeen,
				edge: map[string]float64{"bypass": 100}},
			cachedPhase: {cacheSeen: true, cache: map[string]float64{"hit": 10, "miss": 20}, edgeSeen: edgeSeen,
				edge: map[string]float64{"hit": 70, "miss": 15, "stale": 5}},
			directPrefix + uncachedPhase: {cacheSeen: true, cache: map[string]float64{"bypass": 100}, edgeSeen: edgeSeen, edge: map[string]float64{}},
			directPrefix + cachedPhase:   {cacheSeen: true, cache: map[string]float64{"hit": 90, "miss": 10}, edgeSeen: edgeSeen, edge: map[string]float64{}},
		}
	}
	for _, tc := range []struct {
		name     string
		meter    *phaseMeter
		cached   string // the cached row's edge cell and ratio
		direct   string // the direct cached row's
		sentence string
	}{
		{"edge on", &phaseMeter{usage: usage(true), edgeRead: true, edgeExported: true},
			"| edge hit×70, edge miss×15, edge stale×5 | 80.0 % |", "| – | 90.0 % |", "the router answers a plain record GET itself"},
		{"edge off", &phaseMeter{usage: usage(true), edgeRead: true},
			"| not exported | 33.3 % |", "| not exported | 90.0 % |", "The router exported no `" + edgeMetric + "`"},
		{"router not read", &phaseMeter{usage: usage(false)},
			"| not read | – |", "| not read | 90.0 % |", "The router's `/metrics` could not be read"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var w strings.Builder
			writeCacheReport(&w, cacheReport{o: &options{cacheFlags: cacheFlags{records: 10, zipfS: 1.1}}, rep: &loadgen.Report{},
				counter: newReadCounter(), meter: tc.meter, pairs: pairs})
			md := w.String()
			for _, want := range []string{"| cached | – | – | – | hit×10, miss×20 " + tc.cached,
				"| direct cached | – | – | – | hit×90, miss×10 " + tc.direct, tc.sentence} {
				if !strings.Contains(md, want) {
					t.Errorf("report lacks %q:\n%s", want, md)
				}
			}
		})
	}
}

// TestCPUPerRequest: the "all of them" column and the saturated-CPU ratio add every process's
// CPU time per request (bench's own in the HTTP phases, pgbench's in its own), and say nothing
// when a process was not found.
func TestCPUPerRequest(t *testing.T) {
	m := &phaseMeter{roles: []procRole{{name: "router", pids: []int{1}}, {name: "API node", pids: []int{2}}},
		usage: map[string]*phaseUsage{
			uncachedPhase: {ticks: []int64{20, 30}, self: 10}, // 600 ms over 1000 requests
			cachedPhase:   {ticks: []int64{10, 10}, self: 10}, // 300 ms over 1000 requests
			pgbenchPhase:  {ticks: []int64{0, 0}},
		}}
	c := cacheReport{meter: m, pg: &pgbenchRun{cpu: 50 * time.Millisecond},
		rep: &loadgen.Report{Targets: []loadgen.TargetResult{{Name: uncachedPhase, Requests: 1000, Throughput: 100},
			{Name: cachedPhase, Requests: 1000, Throughput: 150}, {Name: pgbenchPhase, Requests: 500}}}}
	for ph, want := range map[string]float64{uncachedPhase: 600, cachedPhase: 300, pgbenchPhase: 100} {
		if got, ok := c.cpuPerRequest(ph); !ok || math.Abs(got-want) > 1e-9 {
			t.Errorf("%s: %v %v, want %v", ph, got, ok, want)
		}
	}
	m.roles[1].pids = nil
	if _, ok := c.cpuPerRequest(cachedPhase); ok {
		t.Error("a total without the API node's CPU")
	}
}

// TestRunCacheRouterFront: -router-front loop needs the cluster file's router_loop and says
// so without one; an unknown front is a usage error.
func TestRunCacheRouterFront(t *testing.T) {
	f := newFakeRegions(t, 0, "us-east", "us-west")
	cluster := f.clusterFile(t, false)
	for front, want := range map[string]string{
		"loop":  "has no router_loop",
		"other": `-router-front "other": want listen or loop`,
	} {
		var stdout, stderr bytes.Buffer
		args := []string{"bench", "-cluster", cluster, "-scenario", "cache", "-router-front", front, "-records", "10",
			"-c", "1", "-d", "100ms", "-round", "100ms"}
		err := run(t.Context(), args, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("-router-front %s: %v, want an error with %q", front, err, want)
		}
	}
}
