package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-dev/meridian/internal/loadgen"
)

// The cache scenario (issue 13): a tenant with -records records; GETs of ids drawn from a Zipf
// distribution through one router, with the cache allowed (target "cached") and with
// Cache-Control: no-cache (target "no-cache", which the API node serves as an uncached read),
// and the same two straight to the region's first API node ("direct cached", "direct
// no-cache"; -via picks the paths), alternated in rounds; before each round of the first
// uncached target pgbench runs the same read as SQL (the API node's three statements in one
// pipeline, as meridian_app with the tenant setting) against the Postgres that serves the
// uncached reads, for as long as one round and with as many clients.
// bench counts every answer's status and the X-Read-Source of the 200s, reads
// meridian_cache_requests_total from the region's API nodes and
// meridian_edge_cache_requests_total from the router (which answers a plain record GET itself
// when it finds the record in the region's cache: the edge) between rounds, and takes the CPU
// time of the router, API nodes, that Postgres and the region's Redis from /proc between
// rounds, so each phase gets its own CPU time per request.

// Target (phase) names of the cache scenario.
const (
	uncachedPhase = "no-cache"
	cachedPhase   = "cached"
	pgbenchPhase  = "pgbench-sql"
	// directPrefix names the same targets sent straight to the API node.
	directPrefix = "direct "
)

// The router's listeners -router-front picks between.
const (
	frontListen = "listen"
	frontLoop   = "loop"
)

// Paths of -via: through the region's router, or straight to its first API node.
const (
	viaRouter = "router"
	viaDirect = "direct"
)

// cachePair is one path's uncached and cached targets.
type cachePair struct {
	via, base        string
	uncached, cached string
}

// cachePairs are the targets of the paths in via, in that order.
func cachePairs(via []string, router, api string) []cachePair {
	var out []cachePair
	for _, v := range via {
		switch v {
		case viaRouter:
			out = append(out, cachePair{via: v, base: router, uncached: uncachedPhase, cached: cachedPhase})
		case viaDirect:
			out = append(out, cachePair{via: v, base: api, uncached: directPrefix + uncachedPhase, cached: directPrefix + cachedPhase})
		}
	}
	return out
}

// zipfCollection holds the cache scenario's records, zipfID(1) … zipfID(N).
const zipfCollection = "zipf"

// zipfID is the id of record k (1-based). pgbench builds the same id in SQL ('zipf-' || k).
func zipfID(k int) string { return "zipf-" + strconv.Itoa(k) }

// Bounds of the cache and invalidation flags.
const (
	maxRecords     = 10_000_000
	minZipfS       = 1.001 // pgbench's random_zipfian takes s in [1.001, 1000]; math/rand/v2 needs s > 1
	maxZipfS       = 1000
	maxSeedWorkers = 1024
)

// cacheFlags are the flags of the cache and invalidation scenarios.
type cacheFlags struct {
	front       string // frontListen or frontLoop
	records     int
	zipfS       float64
	seedWorkers int
	pgbench     string
	via         string
	// invalidation
	pairRounds     int
	poll           time.Duration
	recheck        time.Duration
	visibleTimeout time.Duration
	cacheWait      time.Duration
	topology       string
}

func (c *cacheFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.front, "router-front", frontListen, "cache: which of the router's listeners -via router goes through: listen (its net/http front, the cluster file's router) or loop (its event-loop front, the cluster file's router_loop)")
	fs.IntVar(&c.records, "records", 10_000, "cache: records of the tenant, read by Zipf-distributed id")
	fs.Float64Var(&c.zipfS, "zipf-s", 1.1, "cache: Zipf exponent s: record k of -records is read with probability ∝ k^-s (math/rand/v2 Zipf with v=1; pgbench random_zipfian)")
	fs.IntVar(&c.seedWorkers, "seed-workers", 32, "cache: concurrent PUTs creating the records (through the router, to the home region)")
	fs.StringVar(&c.pgbench, "pgbench", "", "cache: pgbench binary (default: PATH, then /usr/lib/postgresql/*/bin); off: no pgbench rounds")
	fs.StringVar(&c.via, "via", viaRouter+","+viaDirect, "cache: paths to measure, comma-separated: router (through the region's router), direct (straight to its first API node)")
	fs.IntVar(&c.pairRounds, "pair-rounds", 50, "invalidation: measured writes per ordered region pair")
	fs.DurationVar(&c.poll, "poll", 3*time.Millisecond, "invalidation: interval of the reader region's GETs while waiting for the new version")
	fs.DurationVar(&c.recheck, "recheck", 200*time.Millisecond, "invalidation: how long to keep reading after the new version was seen, counting older answers (violations)")
	fs.DurationVar(&c.visibleTimeout, "visible-timeout", 10*time.Second, "invalidation: give up on a write not visible in the reader region after this long")
	fs.DurationVar(&c.cacheWait, "cache-wait", 2*time.Second, "invalidation: how long to read before the write until an answer comes from the cache")
	fs.StringVar(&c.topology, "topology", "deploy/multi-region/topology.yaml", "invalidation: topology file of the cluster, for the round trip of every region pair")
}

// checkCacheFlags checks the flags of the cache and invalidation scenarios, and that no other
// scenario is given them.
func (o *options) checkCacheFlags() error {
	for name, scen := range map[string]string{"records": scenarioCache, "zipf-s": scenarioCache, "seed-workers": scenarioCache,
		"pgbench": scenarioCache, "via": scenarioCache, "pair-rounds": scenarioInvalidation, "poll": scenarioInvalidation,
		"recheck": scenarioInvalidation, "visible-timeout": scenarioInvalidation, "cache-wait": scenarioInvalidation,
		"topology": scenarioInvalidation} {
		if o.set[name] && o.scenario != scen {
			return fmt.Errorf("%w: -%s is for -scenario %s", errUsage, name, scen)
		}
	}
	if o.scenario != scenarioCache && o.scenario != scenarioInvalidation {
		return nil
	}
	c := o.cacheFlags
	switch {
	case len(o.targets) > 0:
		return fmt.Errorf("%w: -scenario %s needs a cluster file (routers, Postgres, Redis and processes of every region), not -target", errUsage, o.scenario)
	case o.token != "":
		return fmt.Errorf("%w: -scenario %s mints its tenants' tokens; give -jwt-secret (or a cluster file), not -token", errUsage, o.scenario)
	case o.sequential:
		return fmt.Errorf("%w: -scenario %s alternates its variants in rounds; drop -sequential", errUsage, o.scenario)
	case c.records < 1 || c.records > maxRecords:
		return fmt.Errorf("%w: -records %d: want 1 to %d", errUsage, c.records, maxRecords)
	case math.IsNaN(c.zipfS) || c.zipfS < minZipfS || c.zipfS > maxZipfS:
		return fmt.Errorf("%w: -zipf-s %v: want %v to %v", errUsage, c.zipfS, minZipfS, maxZipfS)
	case c.seedWorkers < 1 || c.seedWorkers > maxSeedWorkers:
		return fmt.Errorf("%w: -seed-workers %d: want 1 to %d", errUsage, c.seedWorkers, maxSeedWorkers)
	case c.pairRounds < 1:
		return fmt.Errorf("%w: -pair-rounds must be ≥ 1", errUsage)
	case c.poll < time.Millisecond || c.poll > time.Second:
		return fmt.Errorf("%w: -poll %s: want 1ms to 1s", errUsage, c.poll)
	case c.recheck < 0 || c.visibleTimeout <= 0 || c.cacheWait < 0:
		return fmt.Errorf("%w: -recheck and -cache-wait must be ≥ 0, -visible-timeout positive", errUsage)
	}
	if _, err := parseVia(c.via); err != nil {
		return err
	}
	return nil
}

// parseVia reads -via: router, direct or both, each at most once.
func parseVia(v string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(v, ",") {
		p = strings.TrimSpace(p)
		if (p != viaRouter && p != viaDirect) || slices.Contains(out, p) {
			return nil, fmt.Errorf("%w: -via %q: want %s, %s or both, comma-separated", errUsage, v, viaRouter, viaDirect)
		}
		out = append(out, p)
	}
	return out, nil
}

// clusterState is the part of .meridian/cluster.json (internal/sim.ClusterFile) that the cache
// and invalidation scenarios read: more than plan.go's clusterFile.
type clusterState struct {
	Regions map[string]struct {
		Router  string   `json:"router"`
		Routers []string `json:"routers"`
		// RouterLoop is the router's event-loop listener ("" without one).
		RouterLoop string   `json:"router_loop"`
		API        []string `json:"api"`
		Redis      string   `json:"redis"`
		Postgres   struct {
			Primary  string            `json:"primary"`
			Shards   map[string]string `json:"shards"`
			Standbys map[string]string `json:"standbys"`
		} `json:"postgres"`
	} `json:"regions"`
	DevJWTSecret string `json:"dev_jwt_secret"`
	AdminToken   string `json:"admin_token"`
	Latency      bool   `json:"latency"`
}

func readClusterState(path string) (*clusterState, error) {
	if _, err := readClusterFile(path); err != nil { // the same checks and messages as the other scenarios
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cs clusterState
	if err := json.Unmarshal(b, &cs); err != nil {
		return nil, fmt.Errorf("cluster file %s: %w", path, err)
	}
	return &cs, nil
}

func (cs *clusterState) regionNames() []string { return slices.Sorted(maps.Keys(cs.Regions)) }

// pickRegions resolves -region (default us-east, else the first) and -home (default the
// region after it, so that the region's reads are served by its standby of the home region).
func (cs *clusterState) pickRegions(region, home string) (string, string, error) {
	names := cs.regionNames()
	if region == "" {
		region = names[0]
		if _, ok := cs.Regions["us-east"]; ok {
			region = "us-east"
		}
	}
	if _, ok := cs.Regions[region]; !ok {
		return "", "", fmt.Errorf("region %q is not in the cluster file (it has %s)", region, strings.Join(names, ", "))
	}
	if home == "" {
		home = names[(slices.Index(names, region)+1)%len(names)]
	}
	if _, ok := cs.Regions[home]; !ok {
		return "", "", fmt.Errorf("home region %q is not in the cluster file (it has %s)", home, strings.Join(names, ", "))
	}
	return region, home, nil
}

// readDSN is the Postgres that serves region's uncached reads of a tenant homed in home on
// shard: region's standby of home (the primary when home is region), as meridian_app (the role
// the API node uses, under row-level security) on the shard's database. "" with an error when
// the cluster file does not say.
func (cs *clusterState) readDSN(region, home, shard string) (string, error) {
	shardDSN := cs.Regions[home].Postgres.Shards[shard]
	if shardDSN == "" {
		return "", fmt.Errorf("the cluster file has no database for shard %q in %s", shard, home)
	}
	su, err := url.Parse(shardDSN)
	if err != nil {
		return "", fmt.Errorf("shard %s DSN: %w", shard, err)
	}
	dsn := shardDSN
	if home != region {
		if dsn = cs.Regions[region].Postgres.Standbys[home]; dsn == "" {
			return "", fmt.Errorf("the cluster file has no standby of %s in %s", home, region)
		}
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "", fmt.Errorf("standby DSN: %w", err)
	}
	u.User = url.User(appRole)
	u.Path = su.Path
	return u.String(), nil
}

// appRole is the role the API nodes connect as (migrations/sql/00001_app_role.sql).
const appRole = "meridian_app"

// zipfSampler draws record numbers 1…n with P(k) ∝ k^-s: math/rand/v2's Zipf with v = 1 draws
// j in [0, n-1] with P(j) ∝ (1+j)^-s, and k = j+1 — the distribution of pgbench's
// random_zipfian(1, n, s). A sampler is not safe for concurrent use.
type zipfSampler struct{ z *rand.Zipf }

// newZipfSampler returns a sampler with its own generator seeded from seed and stream; s must be
// > 1 and n ≥ 1.
func newZipfSampler(seed, stream uint64, s float64, n int) *zipfSampler {
	z := rand.NewZipf(rand.New(rand.NewPCG(seed, stream)), s, 1, uint64(n-1))
	if z == nil {
		panic(fmt.Sprintf("zipf: s=%v n=%d out of range", s, n)) // checkCacheFlags rules this out
	}
	return &zipfSampler{z: z}
}

func (z *zipfSampler) next() int { return int(z.z.Uint64()) + 1 }

// zipfSeed fixes the generators, so every run draws the same ids in the same order per worker.
const zipfSeed = 13

// readCounter counts answers by status and the X-Read-Source of the 200s, under the phase
// (target) being measured; answers outside a phase (warm-up) are not counted. Its answer method
// is the run's loadgen.Config.OnAnswer, so that both load generator engines count alike.
type readCounter struct {
	phase atomic.Pointer[readPhase] // nil: outside a phase

	mu     sync.Mutex // guards counts (the map; each readPhase has its own lock)
	counts map[string]*readPhase
}

// readPhase is one phase's readCounts under its own lock, so that counting an answer takes
// neither the counter's lock nor a map lookup by phase name.
type readPhase struct {
	mu sync.Mutex
	rc readCounts
}

// readCounts is what one phase's answers were.
type readCounts struct {
	status    map[string]int64 // "200", "429", "transport"
	source200 map[string]int64 // X-Read-Source of the 200s: "cache", "replica", "primary", "none"
}

func newReadCounter() *readCounter {
	return &readCounter{counts: map[string]*readPhase{}}
}

// setPhase counts the answers that come back from now on under name ("": none).
func (c *readCounter) setPhase(name string) {
	if name == "" {
		c.phase.Store(nil)
		return
	}
	c.mu.Lock()
	p := c.counts[name]
	if p == nil {
		p = &readPhase{rc: readCounts{status: map[string]int64{}, source200: map[string]int64{}}}
		c.counts[name] = p
	}
	c.mu.Unlock()
	c.phase.Store(p)
}

// answer counts one finished request (a loadgen.Config.OnAnswer): its status, or a transport
// error, and the X-Read-Source of a 200.
func (c *readCounter) answer(status int, header func(string) string, err error) {
	p := c.phase.Load()
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.rc.status[loadgen.TransportError]++
		return
	}
	p.rc.status[countKey(status)]++
	if status == http.StatusOK {
		p.rc.source200[sourceOf(header)]++
	}
}

// countKey is a status code as a count's key; "200" without building the string again.
func countKey(code int) string {
	if code == http.StatusOK {
		return "200"
	}
	return strconv.Itoa(code)
}

// get returns a copy of a phase's counts (empty when it saw nothing).
func (c *readCounter) get(phase string) readCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := readCounts{status: map[string]int64{}, source200: map[string]int64{}}
	if p := c.counts[phase]; p != nil {
		p.mu.Lock()
		maps.Copy(out.status, p.rc.status)
		maps.Copy(out.source200, p.rc.source200)
		p.mu.Unlock()
	}
	return out
}

// readSource is an answer's X-Read-Source, "none" when it has none.
func readSource(h http.Header) string { return sourceOf(h.Get) }

// sourceOf is the X-Read-Source that header looks up, "none" when there is none.
func sourceOf(header func(string) string) string {
	if s := header("X-Read-Source"); s != "" {
		return s
	}
	return "none"
}

// hitShare is the share of 200s answered from the cache (X-Read-Source: cache), given the 200s'
// sources; ok is false when there were none.
func hitShare(source200 map[string]int64) (hits, total int64, share float64, ok bool) {
	for src, n := range source200 {
		total += n
		if src == "cache" {
			hits += n
		}
	}
	if total == 0 {
		return 0, 0, 0, false
	}
	return hits, total, float64(hits) / float64(total), true
}

// The cache counters bench reads between rounds.
const (
	// cacheMetric is the API node's cache counter (docs/internal-contracts.md, "Cache"):
	// results hit, miss, bypass.
	cacheMetric = "meridian_cache_requests_total"
	// edgeMetric is the router's edge cache counter (docs/internal-contracts.md, "Ninth
	// session: the edge cache"): results hit (answered by the router), miss, stale, epoch,
	// shard, error (looked up, then forwarded) and bypass (forwarded without a lookup).
	edgeMetric = "meridian_edge_cache_requests_total"
)

// parseRequests sums counter metric (cacheMetric or edgeMetric) of a Prometheus text
// exposition by its result label; found is false when the series is absent.
func parseRequests(r io.Reader, metric string) (byResult map[string]float64, found bool) {
	byResult = map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, metric)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue // another metric, or the # HELP / # TYPE lines
		}
		labels, value := "", rest
		if strings.HasPrefix(rest, "{") {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			labels, value = rest[1:end], rest[end+1:]
		}
		f := strings.Fields(value)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil || math.IsNaN(v) {
			continue
		}
		found = true
		byResult[labelValue(labels, "result")] += v
	}
	return byResult, found
}

// labelValue returns the value of label name in a Prometheus label list (a="x",b="y"), "" if
// absent. Values with escaped quotes are not expected here.
func labelValue(labels, name string) string {
	for _, part := range strings.Split(labels, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok && k == name {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// scrapeCache reads counter metric from /metrics of every process at urls (base URLs: the API
// nodes, or the router), summed by result. answered is true when some process answered its
// /metrics, found when some exposition had the series: a counter with labels appears only
// once one of its series was counted, so a process that answered without it has counted
// nothing yet (or does not have the counter at all).
func scrapeCache(ctx context.Context, client *http.Client, urls []string, metric string) (sum map[string]float64, answered, found bool) {
	sum = map[string]float64{}
	for _, u := range urls {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"/metrics", nil)
		if err != nil {
			continue
		}
		// Ask for the exposition uncompressed: an API node before 451ebdf compressed /metrics
		// twice when asked for gzip (promhttp's and the API's own middleware) under one
		// Content-Encoding, so the body Go's transport inflated was still gzip.
		req.Header.Set("Accept-Encoding", "identity")
		resp, err := client.Do(req)
		if err != nil {
			continue
		}
		m, ok := parseRequests(io.LimitReader(resp.Body, 16<<20), metric)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			continue
		}
		answered = true
		if !ok {
			continue
		}
		found = true
		for k, v := range m {
			sum[k] += v
		}
	}
	return sum, answered, found
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on every Linux architecture
// Meridian builds for (Go has no sysconf without cgo).
const clockTicks = 100

// procStat is what bench reads of one /proc/<pid>/stat.
type procStat struct {
	ppid int
	// own is the process's user+system time (all its threads), reaped that of its children
	// that exited and were waited for (a postmaster's backends), both in clock ticks.
	own, reaped int64
}

// parseProcStat parses a /proc/<pid>/stat line.
func parseProcStat(b []byte) (procStat, bool) {
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces and parentheses
	if i < 0 || i+2 > len(s) {
		return procStat{}, false
	}
	f := strings.Fields(s[i+2:])
	// f[0] is field 3 (state): ppid is field 4, utime…cstime are fields 14–17.
	if len(f) < 15 {
		return procStat{}, false
	}
	var n [5]int64
	for j, k := range []int{1, 11, 12, 13, 14} {
		v, err := strconv.ParseInt(f[k], 10, 64)
		if err != nil {
			return procStat{}, false
		}
		n[j] = v
	}
	return procStat{ppid: int(n[0]), own: n[1] + n[2], reaped: n[3] + n[4]}, true
}

// readProcs reads every process's stat.
func readProcs() map[int]procStat {
	out := map[int]procStat{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if st, ok := parseProcStat(b); ok {
			out[pid] = st
		}
	}
	return out
}

// treeTicks is the CPU time of the processes roots and all their descendants (own and reaped).
func treeTicks(procs map[int]procStat, roots []int) int64 {
	if len(roots) == 0 {
		return 0
	}
	var sum int64
	for pid, st := range procs {
		for p, depth := pid, 0; p > 1 && depth < 64; depth++ {
			if slices.Contains(roots, p) {
				sum += st.own + st.reaped
				break
			}
			p = procs[p].ppid
		}
	}
	return sum
}

// procRole is a kind of process whose CPU time the cache scenario reports.
type procRole struct {
	name string
	pids []int
}

// procCmd is a process's name and arguments.
type procCmd struct {
	pid  int
	comm string
	args []string
}

func listProcCmds() []procCmd {
	var out []procCmd
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err1 := os.ReadFile("/proc/" + e.Name() + "/comm")
		cmdline, err2 := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, procCmd{pid: pid, comm: strings.TrimSpace(string(comm)),
			args: strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")})
	}
	return out
}

// isPostmaster says whether a process is a postmaster listening on port (as internal/localsrv
// starts it: postgres -D dir -p port …). Backends rename themselves, so only the postmaster
// matches; its backends are its children.
func isPostmaster(p procCmd, port string) bool {
	if p.comm != "postgres" && p.comm != "postmaster" {
		return false
	}
	for i := 0; i+1 < len(p.args); i++ {
		if p.args[i] == "-p" && p.args[i+1] == port {
			return true
		}
	}
	return false
}

// isRedis says whether a process is a redis-server on port: started with --port port, or (as
// redis-server rewrites its title) showing host:port.
func isRedis(p procCmd, port string) bool {
	if !strings.HasPrefix(p.comm, "redis-server") {
		return false
	}
	for i, a := range p.args {
		if a == "--port" && i+1 < len(p.args) && p.args[i+1] == port {
			return true
		}
		for _, w := range strings.Fields(a) {
			if strings.HasSuffix(w, ":"+port) {
				return true
			}
		}
	}
	return false
}

// pidsOf returns the pids of the processes that match.
func pidsOf(procs []procCmd, match func(procCmd) bool) []int {
	var out []int
	for _, p := range procs {
		if match(p) {
			out = append(out, p.pid)
		}
	}
	return out
}

// hostPort is a base URL's host:port ("" when it has none).
func hostPort(base string) string {
	u, err := url.Parse(base)
	if err != nil || u.Port() == "" {
		return ""
	}
	return u.Host
}

// findRoles finds the processes of the measured region: its router (the measured one), its API
// nodes, the Postgres serving the reads (at pgPort) and its Redis. A role whose process is not
// found has no pids and is reported as unknown.
func findRoles(router string, apis []string, pgPort, redisAddr string) []procRole {
	cmds := listProcCmds()
	listener := func(base string) []int {
		if hp := hostPort(base); hp != "" {
			if pid := findListener(hp); pid != 0 {
				return []int{pid}
			}
		}
		return nil
	}
	roles := []procRole{{name: "router", pids: listener(router)}}
	var apiPIDs []int
	for _, a := range apis {
		apiPIDs = append(apiPIDs, listener(a)...)
	}
	roles = append(roles, procRole{name: "API node", pids: apiPIDs})
	var pg, rd []int
	if pgPort != "" {
		pg = pidsOf(cmds, func(p procCmd) bool { return isPostmaster(p, pgPort) })
	}
	if _, port, ok := strings.Cut(redisAddr, ":"); ok {
		rd = pidsOf(cmds, func(p procCmd) bool { return isRedis(p, port) })
	}
	return append(roles, procRole{name: "Postgres", pids: pg}, procRole{name: "Redis", pids: rd})
}

// meterSnap is one reading of the CPU times and the cache counters.
type meterSnap struct {
	at      time.Time
	ticks   []int64 // per role
	self    int64   // bench's own
	cache   map[string]float64
	cacheOK bool
	// edge is the router's edge counter; edgeOK says the router answered /metrics (without
	// the series: nothing counted yet), edgeFound that the series was there.
	edge              map[string]float64
	edgeOK, edgeFound bool
}

// phaseUsage is what one phase used in all its rounds.
type phaseUsage struct {
	wall      time.Duration
	ticks     []int64
	self      int64
	cache     map[string]float64 // the API nodes' cacheMetric, by result
	cacheSeen bool
	edge      map[string]float64 // the router's edgeMetric, by result
	edgeSeen  bool
}

// phaseMeter takes CPU times from /proc, the API nodes' cache counters and the router's edge
// counter at every phase change, and adds the difference to the phase that just ended.
type phaseMeter struct {
	roles []procRole
	apis  []string
	// router is the measured router's base URL, whose edge counter is read; "": none.
	router string
	// edgeRead is set once the router answered a reading of its /metrics, edgeExported once a
	// reading found the edge counter there: a router read without it answers no read itself
	// (its edge cache is off, or it predates the edge).
	edgeRead, edgeExported bool

	client  *http.Client
	phase   string
	last    meterSnap
	started bool
	usage   map[string]*phaseUsage
	// snap is replaced in tests.
	snap func(ctx context.Context) meterSnap
}

func newPhaseMeter(roles []procRole, apis []string) *phaseMeter {
	m := &phaseMeter{roles: roles, apis: apis, client: &http.Client{Timeout: 5 * time.Second}, usage: map[string]*phaseUsage{}}
	m.snap = m.take
	return m
}

func (m *phaseMeter) take(ctx context.Context) meterSnap {
	s := meterSnap{at: time.Now()}
	procs := readProcs()
	for _, r := range m.roles {
		s.ticks = append(s.ticks, treeTicks(procs, r.pids))
	}
	s.self = procs[os.Getpid()].own
	s.cache, _, s.cacheOK = scrapeCache(ctx, m.client, m.apis, cacheMetric)
	if m.router != "" {
		s.edge, s.edgeOK, s.edgeFound = scrapeCache(ctx, m.client, []string{m.router}, edgeMetric)
	}
	return s
}

// mark ends the current phase (adding what it used) and starts next ("" for none).
func (m *phaseMeter) mark(ctx context.Context, next string) {
	s := m.snap(ctx)
	m.edgeRead, m.edgeExported = m.edgeRead || s.edgeOK, m.edgeExported || s.edgeFound
	if m.started && m.phase != "" {
		u := m.usage[m.phase]
		if u == nil {
			u = &phaseUsage{ticks: make([]int64, len(m.roles)), cache: map[string]float64{}, edge: map[string]float64{}}
			m.usage[m.phase] = u
		}
		u.wall += s.at.Sub(m.last.at)
		for i := range s.ticks {
			u.ticks[i] += max(0, s.ticks[i]-m.last.ticks[i]) // a restarted process starts again from 0
		}
		u.self += max(0, s.self-m.last.self)
		if s.cacheOK && m.last.cacheOK {
			u.cacheSeen = true
			for k, v := range s.cache {
				u.cache[k] += max(0, v-m.last.cache[k])
			}
		}
		if s.edgeOK && m.last.edgeOK {
			// A result absent from the last reading had not been counted: it starts from 0.
			u.edgeSeen = true
			for k, v := range s.edge {
				u.edge[k] += max(0, v-m.last.edge[k])
			}
		}
	}
	m.phase, m.last, m.started = next, s, true
}

// pgbenchRun runs pgbench rounds and adds up what they did.
type pgbenchRun struct {
	bin, dsn, script, dir string
	clients, threads      int

	rounds   int
	tx       int64
	failed   int64
	busy     time.Duration // Σ tx/tps of the rounds: time spent in transactions, without connecting
	wall     time.Duration // Σ -T of the rounds
	lat      []time.Duration
	unlogged int64         // per-transaction log lines without a latency (failed transactions)
	cpu      time.Duration // pgbench's own user+system time
	err      error         // the first failure; no rounds run after it
}

// pgbenchScript is the API node's uncached read of one record (internal/records/pgstore
// read.go): the read-only tenant scope, the tenant check, the replay (or WAL) position and the
// SELECT by primary key, in one pipeline with one Sync, as one implicit transaction.
func pgbenchScript(tenant string, n int, s float64) string {
	q := "'" + strings.ReplaceAll(tenant, "'", "''") + "'" // tenant ids are [a-z0-9-] anyway
	return fmt.Sprintf(`\set k random_zipfian(1, %d, %s)
\startpipeline
SELECT set_config('transaction_read_only', 'on', true), set_config('meridian.tenant', %s, true);
SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = %s);
SELECT COALESCE(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text;
SELECT id, version, data, created_at, updated_at FROM records WHERE tenant_id = %s AND collection = '%s' AND id = 'zipf-' || :k AND NOT deleted;
\endpipeline
`, n, strconv.FormatFloat(s, 'f', -1, 64), q, q, q, zipfCollection)
}

// pgbenchOutput is what bench reads of pgbench's summary.
type pgbenchOutput struct {
	tx, failed int64
	tps        float64
}

// parsePgbenchOutput reads the transactions, failures and tps (without connection time) of a
// pgbench summary.
func parsePgbenchOutput(out string) (pgbenchOutput, error) {
	var o pgbenchOutput
	var haveTx, haveTPS bool
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "number of transactions actually processed:"); ok {
			v, _, _ = strings.Cut(strings.TrimSpace(v), "/")
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return o, fmt.Errorf("pgbench summary: %q", line)
			}
			o.tx, haveTx = n, true
		}
		if v, ok := strings.CutPrefix(line, "number of failed transactions:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				o.failed, _ = strconv.ParseInt(f[0], 10, 64)
			}
		}
		if v, ok := strings.CutPrefix(line, "tps = "); ok && strings.Contains(v, "without initial connection") {
			f := strings.Fields(v)
			t, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return o, fmt.Errorf("pgbench summary: %q", line)
			}
			o.tps, haveTPS = t, true
		}
	}
	if !haveTx || !haveTPS {
		return o, errors.New("pgbench printed no summary")
	}
	return o, nil
}

// parsePgbenchLog reads the latencies of a pgbench per-transaction log (-l): lines
// "client_id transaction_no time script_no time_epoch time_us", time in µs; lines whose time is
// not a number (failed transactions) are counted in skipped.
func parsePgbenchLog(r io.Reader) (lat []time.Duration, skipped int64) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 {
			continue
		}
		us, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			skipped++
			continue
		}
		lat = append(lat, time.Duration(us)*time.Microsecond)
	}
	return lat, skipped
}

// round runs pgbench for secs seconds; after a failure it does nothing.
func (p *pgbenchRun) round(ctx context.Context, secs int) {
	if p.err != nil {
		return
	}
	p.rounds++
	prefix := fmt.Sprintf("%s/r%d", p.dir, p.rounds)
	args := []string{"-n", "-M", "prepared", "-c", strconv.Itoa(p.clients), "-j", strconv.Itoa(p.threads),
		"-T", strconv.Itoa(secs), "-f", p.script, "-l", "--log-prefix", prefix, p.dsn}
	cmd := exec.CommandContext(ctx, p.bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if cmd.ProcessState != nil {
		p.cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		p.err = fmt.Errorf("pgbench: %w: %s", err, lastLine(stderr.String()))
		return
	}
	out, err := parsePgbenchOutput(stdout.String())
	if err != nil {
		p.err = err
		return
	}
	p.tx += out.tx
	p.failed += out.failed
	p.wall += time.Duration(secs) * time.Second
	if out.tps > 0 {
		p.busy += time.Duration(float64(out.tx) / out.tps * float64(time.Second))
	}
	logs, _ := filepath.Glob(prefix + ".*")
	for _, l := range logs {
		f, err := os.Open(l)
		if err != nil {
			continue
		}
		lat, skipped := parsePgbenchLog(f)
		f.Close()
		_ = os.Remove(l)
		p.lat = append(p.lat, lat...)
		p.unlogged += skipped
	}
}

// result is pgbench's row for the report's table.
func (p *pgbenchRun) result() loadgen.TargetResult {
	lat := slices.Clone(p.lat)
	slices.Sort(lat)
	r := loadgen.TargetResult{Name: pgbenchPhase, Requests: p.tx + p.failed, OK: p.tx, Errors: p.failed,
		ErrorsByStatus: map[string]int64{}, Elapsed: p.busy,
		P50: nearestRank(lat, 50), P90: nearestRank(lat, 90), P99: nearestRank(lat, 99)}
	if p.failed > 0 {
		r.ErrorsByStatus["failed"] = p.failed
	}
	if n := len(lat); n > 0 {
		r.Max = lat[n-1]
		var sum time.Duration
		for _, l := range lat {
			sum += l
		}
		r.Mean = sum / time.Duration(n)
	}
	if p.busy > 0 {
		r.Throughput = float64(p.tx) / p.busy.Seconds()
	}
	return r
}

// nearestRank is the nearest-rank percentile q (0 < q ≤ 100) of sorted, as loadgen computes it;
// zero when empty.
func nearestRank(sorted []time.Duration, q float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(float64(n) * q / 100))
	return sorted[max(1, min(n, rank))-1]
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// findPgbench returns the pgbench binary: -pgbench, else PATH, else the newest
// /usr/lib/postgresql/*/bin (where Debian's postgresql package puts it, as internal/localsrv
// finds postgres).
func findPgbench(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pgbench")
	slices.Sort(dirs)
	if len(dirs) > 0 {
		return dirs[len(dirs)-1], nil
	}
	return "", errors.New("pgbench is not installed (Debian package postgresql-client or postgresql); give -pgbench PATH or -pgbench off")
}

// raiseTenantLimits sets the tenant's rate and concurrency limits to the largest overrides, so
// that the tenant's limits never shape a bench run (the per-IP limit is the topology's; see
// docs/BENCHMARKS.md). A failure is reported, not fatal: the status counts show what it costs.
func raiseTenantLimits(ctx context.Context, client *http.Client, base, adminToken, tenant string, log io.Writer) {
	if adminToken == "" {
		return
	}
	body := []byte(`{"limits":{"rps":1000000,"burst":1000000,"concurrency":100000}}`)
	status, resp, err := send(ctx, client, http.MethodPatch, base+"/admin/v1/tenants/"+tenant, adminToken, body)
	if err != nil || status != http.StatusOK {
		fmt.Fprintf(log, "bench: WARNING: could not raise tenant %s's limits: %d %v %s\n", tenant, status, err, bytes.TrimSpace(resp))
		return
	}
	fmt.Fprintf(log, "bench: tenant %s's limits raised to 10⁶ req/s, burst 10⁶, 10⁵ in flight\n", tenant)
}

// seedCounts is what seeding did.
type seedCounts struct {
	created, existed int64
	took             time.Duration
}

// seedRecords creates records 1…n of the Zipf collection with PUT … If-None-Match: * through
// base (a router, which sends writes to the home region) on workers concurrent requests; a
// record that exists already (412) is left as it is. Progress goes to log every second.
func seedRecords(ctx context.Context, client *http.Client, base, token string, n, workers int, log io.Writer) (seedCounts, error) {
	start := time.Now()
	var created, existed atomic.Int64
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for k := range next {
				st, err := putRecord(ctx, client, base+"/v1/collections/"+zipfCollection+"/records/"+zipfID(k), token, k)
				if err != nil {
					cancel(fmt.Errorf("record %s: %w", zipfID(k), err))
					return
				}
				if st == http.StatusPreconditionFailed {
					existed.Add(1)
				} else {
					created.Add(1)
				}
			}
		})
	}
	progress := time.NewTicker(time.Second)
	defer progress.Stop()
	report := func() {
		c, e := created.Load(), existed.Load()
		fmt.Fprintf(log, "bench: seeding %s: %d/%d (%d created, %d existed), %.0f/s\n", zipfCollection, c+e, n, c, e,
			float64(c+e)/time.Since(start).Seconds())
	}
feed:
	for k := 1; k <= n; k++ {
		for {
			select {
			case next <- k:
				continue feed
			case <-progress.C:
				report()
			case <-ctx.Done():
				break feed
			}
		}
	}
	close(next)
	wg.Wait()
	report()
	sc := seedCounts{created: created.Load(), existed: existed.Load(), took: time.Since(start)}
	if err := context.Cause(ctx); err != nil {
		return sc, err
	}
	return sc, nil
}

// putRecord creates record k at url unless it exists; it returns 201 (or 200) or 412, retrying
// what may succeed later (the tenant not yet visible, a limit, a node restarting).
func putRecord(ctx context.Context, client *http.Client, url, token string, k int) (int, error) {
	body := fmt.Appendf(nil, `{"data":{"n":%d,"note":"meridian bench zipf record"}}`, k)
	var status int
	err := poll(ctx, func() (bool, error) {
		st, resp, err := doJSON(ctx, client, http.MethodPut, url, token, http.Header{"If-None-Match": {"*"}}, body)
		if err != nil {
			return false, err
		}
		status = st
		switch {
		case st == http.StatusCreated || st == http.StatusOK || st == http.StatusPreconditionFailed:
			return true, nil
		case retryable(st):
			return false, fmt.Errorf("PUT %s: %d %s", url, st, bytes.TrimSpace(resp.body))
		}
		return true, fmt.Errorf("PUT %s: %d %s", url, st, bytes.TrimSpace(resp.body))
	})
	return status, err
}

// answer is a response's headers and (capped) body.
type answer struct {
	header http.Header
	body   []byte
	at     time.Time // when the body was read
}

// doJSON sends one JSON request with the token and extra headers, and reads the answer.
func doJSON(ctx context.Context, client *http.Client, method, url, token string, extra http.Header, body []byte) (int, answer, error) {
	var rb io.Reader
	if body != nil {
		rb = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rb)
	if err != nil {
		return 0, answer{}, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("X-Request-Id", "bench-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, vs := range extra {
		req.Header[k] = vs
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, answer{header: resp.Header, body: b, at: time.Now()}, err
}

// runCache is the cache scenario, from the cluster file to the written section.
func runCache(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	cs, err := readClusterState(o.cluster)
	if err != nil {
		return err
	}
	region, home, err := cs.pickRegions(o.region, o.home)
	if err != nil {
		return err
	}
	reg := cs.Regions[region]
	if !validBase(reg.Router) {
		return fmt.Errorf("region %s has no router URL in %s", region, o.cluster)
	}
	router := strings.TrimRight(reg.Router, "/")
	setupBase := router
	switch o.front {
	case frontListen, "":
	case frontLoop:
		if !validBase(reg.RouterLoop) {
			return fmt.Errorf("region %s has no router_loop in %s (-router-front loop needs the launcher's router_loop_listen: true)", region, o.cluster)
		}
		router = strings.TrimRight(reg.RouterLoop, "/")
	default:
		return fmt.Errorf("%w: -router-front %q: want %s or %s", errUsage, o.front, frontListen, frontLoop)
	}
	if o.setupURL != "" {
		setupBase = o.setupURL
	}
	tenant := tenantSpec{id: o.tenant, home: home}
	if tenant.id == "" {
		tenant.id = "bench-cache-" + home
	}
	secret, adminToken := o.jwtSecret, o.adminToken
	if secret == "" {
		secret = cs.DevJWTSecret
	}
	if adminToken == "" {
		adminToken = cs.AdminToken
	}
	token, err := mintToken([]byte(secret), tenant.id, time.Hour+4*(o.cfg.Warmup+o.cfg.Duration), time.Now())
	if err != nil {
		return err
	}
	via, _ := parseVia(o.via) // checked by parseFlags
	api := ""
	if len(reg.API) > 0 {
		api = strings.TrimRight(reg.API[0], "/")
	}
	if slices.Contains(via, viaDirect) && !validBase(api) {
		return fmt.Errorf("region %s has no API node URL in %s (needed by -via %s)", region, o.cluster, viaDirect)
	}
	pairs := cachePairs(via, router, api)
	if o.title == "" {
		o.title = "Cached vs uncached GET of Zipf-distributed records " + viaTitle(via) + frontTitle(o.front) + ", beside pgbench"
	}
	fmt.Fprintf(stderr, "bench: cache, %d records, Zipf s=%v, %d workers, %s per variant, rounds of %s, router %s, API node %s (region %s), via %s, tenant %s homed in %s\n",
		o.records, o.zipfS, o.cfg.Concurrency, o.cfg.Duration, o.cfg.Round, router, api, region, strings.Join(via, ","), tenant.id, home)

	// Setup: the tenant, its limits, its records.
	client := &http.Client{Timeout: 10 * time.Second, Transport: loadgen.NewTransport(o.seedWorkers)}
	if adminToken == "" {
		fmt.Fprintf(stderr, "bench: no admin token; assuming tenant %s exists\n", tenant.id)
	} else if err := createTenant(ctx, client, setupBase, adminToken, tenant, stderr); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	raiseTenantLimits(ctx, client, setupBase, adminToken, tenant.id, stderr)
	seeded, err := seedRecords(ctx, client, setupBase, token, o.records, o.seedWorkers, stderr)
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	for _, k := range []int{1, o.records} {
		if err := waitReadable(ctx, client, router+"/v1/collections/"+zipfCollection+"/records/"+zipfID(k), token); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}

	// pgbench, on the Postgres that serves the region's uncached reads.
	var pg *pgbenchRun
	pgNote := ""
	pgPort := ""
	shard := tenantShard(ctx, client, setupBase, adminToken, tenant.id)
	dsn, dsnErr := cs.readDSN(region, home, shard)
	if dsnErr == nil {
		if u, err := url.Parse(dsn); err == nil {
			pgPort = u.Port()
		}
	}
	switch {
	case o.pgbench == "off":
		pgNote = "pgbench was not run (-pgbench off)."
	case dsnErr != nil:
		pgNote = "pgbench was not run: " + dsnErr.Error() + "."
	default:
		bin, err := findPgbench(o.pgbench)
		if err != nil {
			pgNote = "pgbench was not run: " + err.Error() + "."
			break
		}
		dir, err := os.MkdirTemp("", "bench-pgbench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		script := dir + "/read.sql"
		if err := os.WriteFile(script, []byte(pgbenchScript(tenant.id, o.records, o.zipfS)), 0o644); err != nil {
			return err
		}
		pg = &pgbenchRun{bin: bin, dsn: dsn, script: script, dir: dir, clients: o.cfg.Concurrency,
			threads: max(1, min(o.cfg.Concurrency, runtime.NumCPU()))}
	}

	// The two variants on every path.
	counter := useCacheClient(&o.cfg, o.client)
	runID := strconv.FormatInt(time.Now().UnixNano(), 36)
	targets := cacheTargets(pairs, token, runID, o.cfg.Concurrency, o.records, o.zipfS)

	meter := newPhaseMeter(findRoles(router, reg.API, pgPort, reg.Redis), reg.API)
	meter.router = router
	for _, r := range meter.roles {
		if len(r.pids) == 0 {
			fmt.Fprintf(stderr, "bench: WARNING: no %s process found in /proc; its CPU time is unknown\n", r.name)
		}
	}
	pgSecs := max(1, int(math.Round(o.cfg.Round.Seconds())))
	o.cfg.BeforeRound = func(ctx context.Context, target string, warmup bool) error {
		if !warmup && target == pairs[0].uncached && pg != nil {
			meter.mark(ctx, pgbenchPhase)
			counter.setPhase("")
			pg.round(ctx, pgSecs)
		}
		phase := target
		if warmup {
			phase = ""
		}
		meter.mark(ctx, phase)
		counter.setPhase(phase)
		return nil
	}
	meter.mark(ctx, "")
	rep, err := loadgen.Run(ctx, o.cfg, targets)
	meter.mark(ctx, "")
	if err != nil {
		if rep != nil {
			fmt.Fprintln(stderr, "bench: interrupted; partial figures, not written to -out or -json:")
			_ = rep.WriteMarkdown(stderr)
		}
		return err
	}
	if pg != nil && pg.tx+pg.failed > 0 {
		rep.Targets = append(rep.Targets, pg.result())
	}
	rep.Ratios = pairRatios(rep.Targets, pairs)

	p := &plan{scenario: scenarioCache, region: region, setupBase: setupBase}
	for _, pr := range pairs {
		p.targets = append(p.targets, benchTarget{name: pr.uncached, base: pr.base, tenant: tenant},
			benchTarget{name: pr.cached, base: pr.base, tenant: tenant})
	}
	var md strings.Builder
	writeSection(&md, o, p, rep, machineInfo(ctx))
	writeCacheReport(&md, cacheReport{o: o, region: region, home: home, shard: shard, tenant: tenant.id, seeded: seeded,
		rep: rep, counter: counter, meter: meter, pg: pg, pgNote: pgNote, pgSecs: pgSecs, pairs: pairs})
	return emit(o, md.String(), rep, stdout, stderr)
}

// useCacheClient sets cfg to send the cache scenario's requests with the load generator
// client names (see useLoadClient) and to count their answers in the counter it returns.
func useCacheClient(cfg *loadgen.Config, client string) *readCounter {
	counter := newReadCounter()
	useLoadClient(cfg, client)
	cfg.OnAnswer = counter.answer
	return counter
}

// cacheTargets are the cache scenario's targets: every pair's uncached then cached GET of
// Zipf-drawn records of the collection, with token, one request id per request under runID.
func cacheTargets(pairs []cachePair, token, runID string, concurrency, records int, zipfS float64) []loadgen.Target {
	auth := []string{"Bearer " + token}
	accept := []string{"application/json"}
	var targets []loadgen.Target
	for _, pr := range pairs {
		coll := pr.base + "/v1/collections/" + zipfCollection + "/records/"
		for i, name := range []string{pr.uncached, pr.cached} {
			uncached := i == 0
			// One sampler per worker: loadgen calls New for a worker one call at a time (from
			// the worker's goroutine, or under the event-loop engine's lock), and its rounds
			// (and warm-up) one after another. Every path draws
			// the same ids (the seed depends on the variant only).
			samplers := make([]*zipfSampler, concurrency)
			for w := range samplers {
				samplers[w] = newZipfSampler(zipfSeed+uint64(i), uint64(w), zipfS, records)
			}
			reqID := "bench-" + runID + "-" + strings.ReplaceAll(name, " ", "-") + "-"
			targets = append(targets, loadgen.Target{Name: name, New: func(w int, seq uint64) loadgen.Request {
				h := http.Header{"Authorization": auth, "Accept": accept,
					"X-Request-Id": {reqID + strconv.FormatUint(seq, 10)}}
				if uncached {
					h["Cache-Control"] = []string{"no-cache"}
				}
				return loadgen.Request{Method: http.MethodGet, URL: coll + zipfID(samplers[w].next()), Header: h}
			}})
		}
	}
	return targets
}

// viaTitle is the part of the default heading that names the paths.
func viaTitle(via []string) string {
	switch {
	case len(via) == 2:
		return "through one router and direct to its API node"
	case via[0] == viaDirect:
		return "direct to one API node"
	}
	return "through one router"
}

// frontTitle names the router's front the scenario went through, for the title.
func frontTitle(front string) string {
	if front == frontLoop {
		return " (its event-loop front)"
	}
	return ""
}

// pairRatios compares each path's cached target with its uncached one, and each path's targets
// with the first path's (direct against the router: what the hop costs).
func pairRatios(ts []loadgen.TargetResult, pairs []cachePair) []loadgen.Ratio {
	get := func(name string) (loadgen.TargetResult, bool) {
		i := slices.IndexFunc(ts, func(t loadgen.TargetResult) bool { return t.Name == name })
		if i < 0 {
			return loadgen.TargetResult{}, false
		}
		return ts[i], true
	}
	ratio := func(target, baseline string) (loadgen.Ratio, bool) {
		b, ok1 := get(target)
		a, ok2 := get(baseline)
		if !ok1 || !ok2 {
			return loadgen.Ratio{}, false
		}
		r := loadgen.Ratio{Target: b.Name, Baseline: a.Name, P50Delta: b.P50 - a.P50, P99Delta: b.P99 - a.P99}
		if a.Throughput > 0 {
			r.Throughput = b.Throughput / a.Throughput
		}
		return r, true
	}
	var out []loadgen.Ratio
	for _, pr := range pairs {
		if r, ok := ratio(pr.cached, pr.uncached); ok {
			out = append(out, r)
		}
	}
	for _, pr := range pairs[min(1, len(pairs)):] {
		for _, x := range [][2]string{{pr.uncached, pairs[0].uncached}, {pr.cached, pairs[0].cached}} {
			if r, ok := ratio(x[0], x[1]); ok {
				out = append(out, r)
			}
		}
	}
	return out
}

// cacheReport is what writeCacheReport writes from.
type cacheReport struct {
	o                           *options
	region, home, shard, tenant string
	seeded                      seedCounts
	rep                         *loadgen.Report
	counter                     *readCounter
	meter                       *phaseMeter
	pg                          *pgbenchRun
	pgNote                      string
	pgSecs                      int
	pairs                       []cachePair
}

// phases are the measured targets in report order: every path's uncached then cached.
func (c cacheReport) phases() []string {
	var out []string
	for _, pr := range c.pairs {
		out = append(out, pr.uncached, pr.cached)
	}
	return out
}

func (c cacheReport) target(name string) (loadgen.TargetResult, bool) {
	i := slices.IndexFunc(c.rep.Targets, func(t loadgen.TargetResult) bool { return t.Name == name })
	if i < 0 {
		return loadgen.TargetResult{}, false
	}
	return c.rep.Targets[i], true
}

func pct(f float64) string { return fmt.Sprintf("%.1f %%", 100*f) }

// writeCacheReport writes the cache scenario's own text and tables after the throughput table.
func writeCacheReport(w *strings.Builder, c cacheReport) {
	o := c.o
	fmt.Fprintf(w, "\nRecords `%s` … `%s` of tenant `%s` (collection `%s`, homed in %s on shard %q; %d created, %d already there, in %.1f s "+
		"by %d concurrent `PUT … If-None-Match: *` through the router). Each request reads record k drawn from a Zipf "+
		"distribution, P(k) ∝ k^−%v for k = 1…%d (math/rand/v2 `NewZipf(r, %v, 1, %d)` + 1, one fixed-seed generator per worker; "+
		"pgbench `random_zipfian(1, %d, %v)`). `%s` sends `Cache-Control: no-cache` (served as an uncached read), `%s` "+
		"the same GET without it; the warm-ups are what fill the cache, and misses in measured rounds count. "+
		"The tenant's limits were raised to the largest overrides (`PATCH /admin/v1/tenants/%s`).\n",
		zipfID(1), zipfID(o.records), c.tenant, zipfCollection, c.home, c.shard, c.seeded.created, c.seeded.existed, c.seeded.took.Seconds(),
		o.seedWorkers, o.zipfS, o.records, o.zipfS, o.records-1, o.records, o.zipfS, uncachedPhase, cachedPhase, c.tenant)
	for _, pr := range c.pairs {
		if pr.via == viaDirect {
			fmt.Fprintf(w, "\n`%s` and `%s` are the same two GETs sent straight to the region's API node (%s), without the router: "+
				"the same token, no router headers (the node resolves the tenant from its own map).\n", pr.uncached, pr.cached, pr.base)
		}
	}
	if c.pg != nil {
		fmt.Fprintf(w, "\n`%s` is pgbench %s (`-M prepared -c %d -j %d -T %d`, one run of %d s before every `%s` round, %d runs) "+
			"on `%s` — the Postgres that serves %s's uncached reads of the tenant — as `%s`, each transaction the API node's read "+
			"as one pipeline: `set_config('transaction_read_only', …), set_config('meridian.tenant', …)`, the tenant check, "+
			"the replay position (`COALESCE(pg_last_wal_replay_lsn(), pg_current_wal_lsn())`) "+
			"and `SELECT id, version, data, created_at, updated_at FROM records WHERE tenant_id = … AND collection = … AND id = 'zipf-' || :k AND NOT deleted`. "+
			"Its req/s is transactions per second without connection time, its latencies from pgbench's per-transaction log; "+
			"it is in the table for scale and left out of the ratios.\n",
			pgbenchPhase, pgVersionOf(c.pg.bin), c.pg.clients, c.pg.threads, c.pgSecs, c.pgSecs, c.pairs[0].uncached, c.pg.rounds,
			redactDSN(c.pg.dsn), c.region, appRole)
		if c.pg.err != nil {
			fmt.Fprintf(w, "\npgbench failed and was not run again: %v\n", c.pg.err)
		}
	} else if c.pgNote != "" {
		fmt.Fprintf(w, "\n%s\n", c.pgNote)
	}

	// Answers and hit ratio.
	w.WriteString("\nAnswers (measured rounds only) and hit ratio: from the answers, the share of 200s with `X-Read-Source: cache` " +
		"(whichever process answered them); from the counters read between rounds, where two processes count the reads: " +
		"the router answers a plain record GET itself when it finds the record in the region's cache (the edge, `" + edgeMetric +
		"` on the router: its hits never reach an API node), and the region's API nodes count the rest (`" + cacheMetric +
		"`: every read the router forwarded — an edge miss, cold, stale, epoch, shard, error or bypass — and every direct one). " +
		"Hit ratio (metrics) = (node hit + edge hit) / (node hit + miss + bypass + edge hit).")
	if slices.ContainsFunc(c.pairs, func(pr cachePair) bool { return pr.via == viaDirect }) {
		w.WriteString(" The direct variants never pass the router, so its edge counter does not move in them and only the nodes' count.")
	}
	// edgeKnownOff: the router was read and has no edge counter, so the nodes saw every read.
	edgeKnownOff := c.meter.edgeRead && !c.meter.edgeExported
	throughRouter := slices.ContainsFunc(c.pairs, func(pr cachePair) bool { return pr.via == viaRouter })
	switch {
	case !throughRouter:
	case !c.meter.edgeRead:
		w.WriteString(" The router's `/metrics` could not be read, so the hit ratio (metrics) of the variants through it is unknown.")
	case edgeKnownOff:
		w.WriteString(" The router exported no `" + edgeMetric + "` (its edge cache is off, or it predates the edge): " +
			"it answered no read itself, and the nodes counted every one.")
	}
	w.WriteString("\n\n")
	w.WriteString("| variant | answers by status | X-Read-Source of the 200s | hit ratio (answers) | " + cacheMetric + " Δ (API nodes) | " +
		edgeMetric + " Δ (router) | hit ratio (metrics) |\n")
	w.WriteString("|---|---|---|---:|---|---|---:|\n")
	via := map[string]string{}
	for _, pr := range c.pairs {
		via[pr.uncached], via[pr.cached] = pr.via, pr.via
	}
	for _, ph := range c.phases() {
		rc := c.counter.get(ph)
		hits, total, share, ok := hitShare(rc.source200)
		hr := "–"
		if ok {
			hr = fmt.Sprintf("%s (%d / %d)", pct(share), hits, total)
		}
		u := c.meter.usage[ph]
		mcell, ecell, mratio := "not exported", "not exported", "–"
		if u != nil && u.cacheSeen {
			mcell = countCell(roundCounts(u.cache, ""))
		}
		switch {
		case u == nil || edgeKnownOff:
		case !u.edgeSeen:
			ecell = "not read" // the router's /metrics failed around this phase
		default:
			ecell = countCell(roundCounts(u.edge, "edge "))
		}
		if r, ok := metricsHitRatio(u, via[ph] == viaRouter && !edgeKnownOff); ok {
			mratio = pct(r)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", ph, countCell(rc.status), countCell(rc.source200), hr, mcell, ecell, mratio)
	}

	// CPU per request.
	fmt.Fprintf(w, "\nCPU time per request (µs; user + system from /proc/<pid>/stat, each process with its children — a postmaster's "+
		"backends — taken between rounds, so each phase has its own; everything shares the machine's %d CPUs):\n\n", runtime.NumCPU())
	w.WriteString("| phase | requests |")
	for _, r := range c.meter.roles {
		fmt.Fprintf(w, " %s |", roleLabel(r, c))
	}
	w.WriteString(" load generator (bench) | pgbench | all of them |\n|---|---:|")
	for range c.meter.roles {
		w.WriteString("---:|")
	}
	w.WriteString("---:|---:|---:|\n")
	phases := c.phases()
	if c.pg != nil && c.pg.tx > 0 {
		phases = append(phases, pgbenchPhase)
	}
	for _, ph := range phases {
		t, _ := c.target(ph)
		u := c.meter.usage[ph]
		fmt.Fprintf(w, "| %s | %d |", ph, t.Requests)
		perReq := func(ticks int64) string {
			if t.Requests == 0 {
				return "–"
			}
			return fmt.Sprintf("%.0f", float64(ticks)*1e6/clockTicks/float64(t.Requests))
		}
		known := u != nil
		for i, r := range c.meter.roles {
			if u == nil || len(r.pids) == 0 {
				w.WriteString(" ? |")
				known = false
				continue
			}
			fmt.Fprintf(w, " %s |", perReq(u.ticks[i]))
		}
		switch {
		case u == nil:
			w.WriteString(" ? |")
		case ph == pgbenchPhase:
			w.WriteString(" – |") // bench only waits for pgbench then
		default:
			fmt.Fprintf(w, " %s |", perReq(u.self))
		}
		if ph == pgbenchPhase && t.Requests > 0 {
			fmt.Fprintf(w, " %.0f |", float64(c.pg.cpu.Microseconds())/float64(t.Requests))
		} else {
			w.WriteString(" – |")
		}
		if us, ok := c.cpuPerRequest(ph); ok && known {
			fmt.Fprintf(w, " %.0f |\n", us)
		} else {
			w.WriteString(" ? |\n")
		}
	}

	// Targets of issue 13.
	w.WriteString("\nIssue 13's targets in this run:\n\n")
	for _, pr := range c.pairs {
		unc, ok1 := c.target(pr.uncached)
		cac, ok2 := c.target(pr.cached)
		if ok1 && ok2 && unc.Throughput > 0 {
			x := cac.Throughput / unc.Throughput
			fmt.Fprintf(w, "- throughput `%s` / `%s` (%s): **%.2f×** (target ≥ 3×: %s); p50 %.3f vs %.3f ms, p99 %.3f vs %.3f ms",
				pr.cached, pr.uncached, viaLabel(pr.via), x, metOrNot(x >= 3), ms(cac.P50), ms(unc.P50), ms(cac.P99), ms(unc.P99))
			uu, ok1 := c.cpuPerRequest(pr.uncached)
			cu, ok2 := c.cpuPerRequest(pr.cached)
			if ok1 && ok2 && cu > 0 {
				// With every CPU busy, throughput is the CPUs over the CPU time per request.
				fmt.Fprintf(w, "; CPU of all the processes per request %.0f vs %.0f µs, so %.2f× on saturated CPUs", cu, uu, uu/cu)
				su, ok1 := c.cpuPerRequestOf(pr.uncached, false)
				sc, ok2 := c.cpuPerRequestOf(pr.cached, false)
				if ok1 && ok2 && sc > 0 {
					// The load generator shares the CPUs; what the service spends is the ratio a
					// load generator elsewhere would see.
					fmt.Fprintf(w, "; without the load generator's %.0f vs %.0f µs, %.2f×", sc, su, su/sc)
				}
			}
			w.WriteString("\n")
		}
	}
	for _, pr := range c.pairs {
		if _, total, share, ok := hitShare(c.counter.get(pr.cached).source200); ok && total > 0 {
			fmt.Fprintf(w, "- hit ratio of `%s` over %d records, Zipf s=%v: **%s** (target ≥ 80 %%: %s)\n",
				pr.cached, o.records, o.zipfS, pct(share), metOrNot(share >= 0.8))
		}
	}
	if pt, ok := c.target(pgbenchPhase); ok && pt.Throughput > 0 {
		for _, pr := range c.pairs {
			unc, ok1 := c.target(pr.uncached)
			cac, ok2 := c.target(pr.cached)
			if ok1 && ok2 {
				fmt.Fprintf(w, "- for scale: pgbench ran the same read as SQL at %.0f tx/s; `%s` served %.2f× that, `%s` %.2f×\n",
					pt.Throughput, pr.cached, cac.Throughput/pt.Throughput, pr.uncached, unc.Throughput/pt.Throughput)
			}
		}
	}
	// Notes that void the comparison.
	for _, pr := range c.pairs {
		if rc := c.counter.get(pr.uncached); rc.source200["cache"] > 0 {
			who := "the API node does not"
			if pr.via == viaRouter {
				who = "the router's edge or the API node does not"
			}
			fmt.Fprintf(w, "\nNote: %d `%s` answers came from the cache: %s honour `Cache-Control: no-cache`, "+
				"so `%s` is not an uncached baseline and the ratio above means nothing.\n", rc.source200["cache"], pr.uncached, who, pr.uncached)
		}
		if rc := c.counter.get(pr.cached); rc.source200["cache"] == 0 {
			fmt.Fprintf(w, "\nNote: no `%s` answer came from the cache (no `X-Read-Source: cache`): the API node has no read cache "+
				"(or it is off), so both variants measured uncached reads.\n", pr.cached)
		}
	}
	for _, ph := range c.phases() {
		rc := c.counter.get(ph)
		var bad int64
		for st, n := range rc.status {
			if st != "200" {
				bad += n
			}
		}
		if bad > 0 {
			fmt.Fprintf(w, "\nNote: %d `%s` answers were not 200 (%s); a run answered by 429s or 5xx does not measure the read.\n",
				bad, ph, countCell(rc.status))
		}
	}
}

// roundCounts is a counter's deltas as whole numbers, each result prefixed with prefix.
func roundCounts(m map[string]float64, prefix string) map[string]int64 {
	out := map[string]int64{}
	for k, v := range m {
		out[prefix+k] = int64(math.Round(v))
	}
	return out
}

// metricsHitRatio is a phase's hit ratio from the counters: (node hit + edge hit) / (node hit
// + miss + bypass + edge hit). An edge hit is a read the router answered, which no node saw;
// every other edge result is a read the router forwarded, which a node counted. edge says
// whether the router's edge counts for the phase: its reads went through the router, and the
// router is not known to lack the counter (a direct read never passes the router, so its
// counter holds none of them); then the ratio needs the router's readings too. ok is false
// without the readings or without reads.
func metricsHitRatio(u *phaseUsage, edge bool) (float64, bool) {
	if u == nil || !u.cacheSeen || (edge && !u.edgeSeen) {
		return 0, false
	}
	var lookups float64
	for _, v := range u.cache { // hit, miss, bypass
		lookups += v
	}
	hits := u.cache["hit"]
	if edge {
		lookups += u.edge["hit"]
		hits += u.edge["hit"]
	}
	if lookups <= 0 {
		return 0, false
	}
	return hits / lookups, true
}

// cpuPerRequest is the CPU time per request of a phase summed over every measured process
// (and bench itself; pgbench in its phase), in µs; ok is false when a process is unknown or
// the phase answered nothing.
func (c cacheReport) cpuPerRequest(ph string) (float64, bool) {
	return c.cpuPerRequestOf(ph, true)
}

// cpuPerRequestOf is cpuPerRequest, with or without the load generator's own CPU (without it:
// what the service's processes spent per request).
func (c cacheReport) cpuPerRequestOf(ph string, withLoadGen bool) (float64, bool) {
	t, _ := c.target(ph)
	u := c.meter.usage[ph]
	if u == nil || t.Requests == 0 {
		return 0, false
	}
	var ticks int64
	for i, r := range c.meter.roles {
		if len(r.pids) == 0 {
			return 0, false
		}
		ticks += u.ticks[i]
	}
	us := float64(ticks) * 1e6 / clockTicks
	if ph == pgbenchPhase {
		us += float64(c.pg.cpu.Microseconds())
	} else if withLoadGen {
		us += float64(u.self) * 1e6 / clockTicks
	}
	return us / float64(t.Requests), true
}

// viaLabel says which path a pair of targets took.
func viaLabel(via string) string {
	if via == viaDirect {
		return "direct to the API node"
	}
	return "through the router"
}

// roleLabel is a process column's heading: the role and what it is in this run.
func roleLabel(r procRole, c cacheReport) string {
	switch r.name {
	case "Postgres":
		if c.home != c.region {
			return fmt.Sprintf("Postgres (%s's standby of %s)", c.region, c.home)
		}
		return fmt.Sprintf("Postgres (%s primary)", c.region)
	case "API node":
		return fmt.Sprintf("API node(s) %s", c.region)
	}
	return r.name + " " + c.region
}

func metOrNot(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// ms is a duration in milliseconds.
func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

// redactDSN drops a DSN's password (there is none on the launcher's loopback clusters).
func redactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "?"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "REDACTED")
	}
	return u.String()
}

// pgVersionOf is "15.18" of a pgbench binary, "" when unknown.
func pgVersionOf(bin string) string {
	out, err := exec.CommandContext(context.Background(), bin, "--version").Output()
	if err != nil {
		return ""
	}
	f := strings.Fields(string(out)) // "pgbench (PostgreSQL) 15.18 (Debian …)"
	if len(f) < 3 {
		return ""
	}
	return f[2]
}
