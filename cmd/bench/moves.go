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
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-dev/meridian/internal/loadgen"
)

// The moves scenario (issue 14's benchmark points; docs/internal-contracts.md "Move benchmark"):
// one tenant with -records records is moved back and forth between two shards in different
// regions -moves times through the admin API, one move after the other, while a load of writes
// (creates with Idempotency-Key, updates with Idempotency-Key, deletes) at -rate per second and
// reads at -read-rate per second runs through every router of the cluster. Per move it records
// the map's figures (pause_ms, rows_copied, rows_total, repairs), the phase transitions it saw
// by polling the move, the controller's /metrics (meridian_moves_phase_seconds per phase) and
// its log (verify passes), and every router's hold metrics before and after the move. The
// load's answers are all counted: a run with a 5xx, an unexpected 4xx or a transport error
// measures nothing and ends non-zero.

// Defaults and bounds of the moves flags.
const (
	defaultMoves       = 20
	defaultMoveRecords = 20_000
	defaultWriteRate   = 200
	defaultReadRate    = 200
	defaultMovesInFly  = 2000
	maxMoves           = 1000
	maxMovesRate       = 100_000
	movesTenantDefault = "bench-moves"
	// movesCollection holds the load's own records (the seeded ones are in zipfCollection).
	movesCollection = "moves"
)

// movesFlags are the flags of the moves scenario.
type movesFlags struct {
	moves         int
	readRate      float64
	moveShards    string
	movePoll      time.Duration
	moveTimeout   time.Duration
	cutoverWindow time.Duration
	rebalancer    string
	rebalancerLog string
}

func (m *movesFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&m.moves, "moves", defaultMoves, "moves: how many moves of the tenant, alternately to each of the two shards (moves: -records defaults to 20000, -rate to 200 writes/s in all, -c to 2000 in flight)")
	fs.Float64Var(&m.readRate, "read-rate", defaultReadRate, "moves: GETs per second in all, spread over every router (0: no reads)")
	fs.StringVar(&m.moveShards, "move-shards", "", "moves: the two shards A,B to move between, in different regions (default: the tenant's shard and the first shard of the next region)")
	fs.DurationVar(&m.movePoll, "move-poll", 50*time.Millisecond, "moves: interval of GET /admin/v1/moves/{id} while a move runs")
	fs.DurationVar(&m.moveTimeout, "move-timeout", 5*time.Minute, "moves: give up on a move not done after this long")
	fs.DurationVar(&m.cutoverWindow, "cutover-window", time.Second, "moves: writes sent within this long of a cutover's pause count as near the cutover")
	fs.StringVar(&m.rebalancer, "rebalancer", "", "moves: base URL of the controller's /metrics (default: from the launcher's control endpoint)")
	fs.StringVar(&m.rebalancerLog, "rebalancer-log", "", "moves: the controller's log, for its verify passes (default: <cluster dir>/data/*/rebalancer/rebalancer.log)")
}

// movesOnly are the flags only the moves scenario takes.
var movesOnly = []string{"moves", "read-rate", "move-shards", "move-poll", "move-timeout", "cutover-window", "rebalancer", "rebalancer-log"}

// checkMovesFlags checks the moves scenario's flags, and that no other scenario is given them.
// It sets the moves defaults of the shared flags (-records, -rate, -c) when they were not given.
func (o *options) checkMovesFlags() error {
	if o.scenario != scenarioMoves {
		for _, name := range movesOnly {
			if o.set[name] {
				return fmt.Errorf("%w: -%s is for -scenario %s", errUsage, name, scenarioMoves)
			}
		}
		return nil
	}
	for _, name := range []string{"zipf-s", "pgbench", "pair-rounds", "poll", "recheck", "visible-timeout", "cache-wait",
		"topology", "n", "d", "round", "warmup", "sequential", "baseline-proxy", "baseline-echo", "setup", "hostile-tenant",
		"hostile-rate", "hostile-slow", "control", "slow-conns", "body-timeout", "router-pid", "region"} {
		if o.set[name] {
			return fmt.Errorf("%w: -%s is not for -scenario moves (it runs as long as its moves, through every router)", errUsage, name)
		}
	}
	if !o.set["records"] {
		o.records = defaultMoveRecords
	}
	if !o.set["rate"] {
		o.cfg.Rate = defaultWriteRate
	}
	if !o.set["c"] {
		o.cfg.Concurrency = defaultMovesInFly
	}
	m := o.movesFlags
	switch {
	case len(o.targets) > 0:
		return fmt.Errorf("%w: -scenario moves needs a cluster file (every router, the admin token), not -target", errUsage)
	case o.token != "":
		return fmt.Errorf("%w: -scenario moves mints its tenant's token; give -jwt-secret (or a cluster file), not -token", errUsage)
	case m.moves < 1 || m.moves > maxMoves:
		return fmt.Errorf("%w: -moves %d: want 1 to %d", errUsage, m.moves, maxMoves)
	case o.records < 1 || o.records > maxRecords:
		return fmt.Errorf("%w: -records %d: want 1 to %d", errUsage, o.records, maxRecords)
	case o.seedWorkers < 1 || o.seedWorkers > maxSeedWorkers:
		return fmt.Errorf("%w: -seed-workers %d: want 1 to %d", errUsage, o.seedWorkers, maxSeedWorkers)
	case badRate(o.cfg.Rate) || o.cfg.Rate == 0:
		return fmt.Errorf("%w: -rate %v: want writes per second in all, > 0 and ≤ %d", errUsage, o.cfg.Rate, maxMovesRate)
	case badRate(m.readRate):
		return fmt.Errorf("%w: -read-rate %v: want reads per second in all, 0 to %d", errUsage, m.readRate, maxMovesRate)
	case m.movePoll < time.Millisecond || m.movePoll > 10*time.Second:
		return fmt.Errorf("%w: -move-poll %s: want 1ms to 10s", errUsage, m.movePoll)
	case m.moveTimeout <= 0:
		return fmt.Errorf("%w: -move-timeout must be positive", errUsage)
	case m.cutoverWindow <= 0 || m.cutoverWindow > time.Minute:
		return fmt.Errorf("%w: -cutover-window %s: want more than 0, at most 1m", errUsage, m.cutoverWindow)
	case m.rebalancer != "" && !validBase(m.rebalancer):
		return fmt.Errorf("%w: -rebalancer %q is not an http(s) URL", errUsage, m.rebalancer)
	}
	if m.moveShards != "" {
		if _, _, err := parseMoveShards(m.moveShards); err != nil {
			return err
		}
	}
	return nil
}

func badRate(r float64) bool { return math.IsNaN(r) || math.IsInf(r, 0) || r < 0 || r > maxMovesRate }

// parseMoveShards parses -move-shards A,B.
func parseMoveShards(s string) (string, string, error) {
	a, b, ok := strings.Cut(s, ",")
	a, b = strings.TrimSpace(a), strings.TrimSpace(b)
	if !ok || a == "" || b == "" || strings.Contains(b, ",") || a == b {
		return "", "", fmt.Errorf("%w: -move-shards %q: want two different shards A,B", errUsage, s)
	}
	return a, b, nil
}

// moveView is a move as the admin API answers it (GET /admin/v1/moves/{id}; shardmap.Move).
type moveView struct {
	ID         string `json:"id"`
	Tenant     string `json:"tenant"`
	From       string `json:"from_shard"`
	To         string `json:"to_shard"`
	Phase      string `json:"phase"`
	RowsCopied int64  `json:"rows_copied"`
	RowsTotal  int64  `json:"rows_total"`
	Repairs    int64  `json:"repairs"`
	PauseMS    int64  `json:"pause_ms"`
	// FirstWriteMS is the pause as DESIGN.md §8 defines it (fence → first client write on the
	// target), absent until the controller's cleanup step records it.
	FirstWriteMS int64     `json:"first_write_ms,omitempty"`
	Error        string    `json:"error"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

func (m moveView) terminal() bool {
	return m.Phase == "done" || m.Phase == "cancelled" || m.Phase == "failed"
}

// parseMove reads a move answer; an answer without an id or phase is an error.
func parseMove(b []byte) (moveView, error) {
	var mv moveView
	if err := json.Unmarshal(b, &mv); err != nil {
		return mv, fmt.Errorf("move answer: %w", err)
	}
	if mv.ID == "" || mv.Phase == "" {
		return mv, fmt.Errorf("move answer has no id or phase: %.200q", b)
	}
	return mv, nil
}

// phaseOrder is the order of a move's phases; the time a phase was first seen is recorded.
var phaseOrder = []string{"requested", "dual_write", "backfill", "verify", "cutover", "cleanup", "done"}

// moveRun is one measured move.
type moveRun struct {
	N      int       `json:"n"`
	Final  moveView  `json:"move"`
	Asked  time.Time `json:"requested_at"`
	Ended  time.Time `json:"ended_at"`
	Reason string    `json:"problem,omitempty"` // why the move did not finish, when it did not
	// Seen is when the poll first saw each phase (later phases imply earlier ones).
	Seen map[string]time.Time `json:"phases_seen"`
	// Controller's metrics over the move (deltas), when its /metrics was reachable.
	Ctl *ctlDelta `json:"controller,omitempty"`
	// VerifyPasses and FinalPasses are from the controller's log (0: not found).
	VerifyPasses int `json:"verify_passes"`
	FinalPasses  int `json:"final_passes"`
	// Holds are the routers' hold metrics over the move, per router.
	Holds map[string]holdDelta `json:"holds"`
}

// ctlDelta is what the controller's /metrics say about one move.
type ctlDelta struct {
	PhaseSeconds map[string]float64 `json:"phase_seconds"`
	PhaseCounts  map[string]float64 `json:"phase_counts"`
	RowsCopied   float64            `json:"rows_copied"`
	Repairs      float64            `json:"repairs"`
	StepErrors   map[string]float64 `json:"step_errors"`
}

// holdDelta is one router's hold metrics over one move.
type holdDelta struct {
	Count   float64             `json:"count"`
	Sum     float64             `json:"sum_seconds"`
	Buckets map[float64]float64 `json:"-"` // le → cumulative count
	Results map[string]float64  `json:"results"`
}

// holdMax is an upper bound of the longest hold: the smallest bucket bound holding them all
// (+Inf when only the last does, 0 when nothing was held).
func (h holdDelta) holdMax() float64 {
	if h.Count <= 0 {
		return 0
	}
	les := slices.Sorted(maps.Keys(h.Buckets))
	for _, le := range les {
		if h.Buckets[le] >= h.Count {
			return le
		}
	}
	return math.Inf(1)
}

// add sums two routers' deltas.
func (h holdDelta) add(o holdDelta) holdDelta {
	out := holdDelta{Count: h.Count + o.Count, Sum: h.Sum + o.Sum, Buckets: map[float64]float64{}, Results: map[string]float64{}}
	for _, m := range []map[float64]float64{h.Buckets, o.Buckets} {
		for k, v := range m {
			out.Buckets[k] += v
		}
	}
	for _, m := range []map[string]float64{h.Results, o.Results} {
		for k, v := range m {
			out.Results[k] += v
		}
	}
	return out
}

// metrics is a Prometheus text exposition's samples: series (name plus its label list as
// written, e.g. `x_bucket{le="0.5"}`) → value.
type metrics map[string]float64

// parseMetrics reads the samples of the families named by prefixes from a Prometheus text
// exposition. Comments, other families and unparsable values are skipped.
func parseMetrics(r io.Reader, prefixes ...string) metrics {
	out := metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if !slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(line, p) }) {
			continue
		}
		var series, value string
		brace, space := strings.IndexByte(line, '{'), strings.IndexFunc(line, isSpace)
		if brace >= 0 && (space < 0 || brace < space) {
			end := strings.LastIndexByte(line, '}') // label values may hold spaces and braces
			if end < brace {
				continue
			}
			series, value = line[:end+1], line[end+1:]
		} else if space >= 0 {
			series, value = line[:space], line[space:]
		} else {
			continue
		}
		f := strings.Fields(value) // a value, then maybe a timestamp
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil || math.IsNaN(v) {
			continue
		}
		out[series] = v
	}
	return out
}

func isSpace(r rune) bool { return r == ' ' || r == '\t' }

// seriesName splits a series into its name and labels (without braces).
func seriesName(series string) (name, labels string) {
	name, labels, ok := strings.Cut(series, "{")
	if !ok {
		return series, ""
	}
	return name, strings.TrimSuffix(labels, "}")
}

// byLabel sums the samples of family name by the value of label (after − before, never < 0:
// a restarted process starts again from 0).
func byLabel(before, after metrics, name, label string) map[string]float64 {
	out := map[string]float64{}
	for s, v := range after {
		n, labels := seriesName(s)
		if n != name {
			continue
		}
		out[labelValue(labels, label)] += max(0, v-before[s])
	}
	return out
}

// Metric families bench reads.
const (
	holdSecondsMetric  = "meridian_router_hold_seconds"
	heldTotalMetric    = "meridian_router_held_writes_total"
	phaseSecondsMetric = "meridian_moves_phase_seconds"
	rowsCopiedMetric   = "meridian_moves_rows_copied_total"
	repairsMetric      = "meridian_moves_repairs_total"
	stepErrorsMetric   = "meridian_moves_step_errors_total"
)

// diffHold is a router's hold metrics between two scrapes.
func diffHold(before, after metrics) holdDelta {
	h := holdDelta{Buckets: map[float64]float64{}, Results: byLabel(before, after, heldTotalMetric, "result")}
	h.Count = max(0, after[holdSecondsMetric+"_count"]-before[holdSecondsMetric+"_count"])
	h.Sum = max(0, after[holdSecondsMetric+"_sum"]-before[holdSecondsMetric+"_sum"])
	for le, v := range byLabel(before, after, holdSecondsMetric+"_bucket", "le") {
		f, err := strconv.ParseFloat(le, 64) // "+Inf" parses as +Inf
		if err == nil {
			h.Buckets[f] = v
		}
	}
	return h
}

// diffController is the controller's metrics between two scrapes.
func diffController(before, after metrics) *ctlDelta {
	return &ctlDelta{
		PhaseSeconds: byLabel(before, after, phaseSecondsMetric+"_sum", "phase"),
		PhaseCounts:  byLabel(before, after, phaseSecondsMetric+"_count", "phase"),
		RowsCopied:   max(0, after[rowsCopiedMetric]-before[rowsCopiedMetric]),
		Repairs:      max(0, after[repairsMetric]-before[repairsMetric]),
		StepErrors:   byLabel(before, after, stepErrorsMetric, "phase"),
	}
}

// scrape reads the families named by prefixes from base's /metrics; nil when unreachable.
func scrape(ctx context.Context, client *http.Client, base string, prefixes ...string) metrics {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil
	}
	req.Header.Set("Accept-Encoding", "identity") // see scrapeCache
	resp, err := client.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	return parseMetrics(io.LimitReader(resp.Body, 16<<20), prefixes...)
}

// logPasses counts, in the controller's JSON log, the verify passes before the fence ("verify
// pass") and the final passes under the fence of move id. A final pass that found nothing is
// not logged, so the final passes are the logged ones plus one when the move cut over.
func logPasses(r io.Reader, id string) (verify, finalRepaired int) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	needle := []byte(`"` + id + `"`)
	for sc.Scan() {
		b := sc.Bytes()
		if !bytes.Contains(b, needle) {
			continue
		}
		var l struct {
			Msg    string `json:"msg"`
			MoveID string `json:"move_id"`
		}
		if json.Unmarshal(b, &l) != nil || l.MoveID != id {
			continue
		}
		switch l.Msg {
		case "verify pass":
			verify++
		case "final verify pass repaired differences":
			finalRepaired++
		}
	}
	return verify, finalRepaired
}

// durationsOf returns sorted copies of ds.
func sortedDurations(ds []time.Duration) []time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s
}

// sample is one request of the load.
type sample struct {
	kind    string // create, update, delete, read
	router  string
	sent    time.Time
	latency time.Duration
	status  int // 0: transport error
	// problem is an unexpected answer's problem type (the last segment of its "type"), if any.
	problem string
}

// Load request kinds and the statuses each expects.
const (
	kindCreate = "create"
	kindUpdate = "update"
	kindDelete = "delete"
	kindRead   = "read"
)

var expectedStatus = map[string][]int{
	kindCreate: {http.StatusCreated},
	kindUpdate: {http.StatusOK},
	kindDelete: {http.StatusNoContent, http.StatusOK},
	kindRead:   {http.StatusOK},
}

// expected says whether status is a correct answer to a request of kind.
func expected(kind string, status int) bool { return slices.Contains(expectedStatus[kind], status) }

// statusKey names a status in the counts: the number, or "transport" for no answer.
func statusKey(status int) string {
	if status == 0 {
		return loadgen.TransportError
	}
	return strconv.Itoa(status)
}

// loadStats summarises samples.
type loadStats struct {
	// counts is kind → status → requests.
	counts map[string]map[string]int64
	// bad is router → "kind status" → requests with an unexpected answer.
	bad map[string]map[string]int64
	// writesNear and writesFar are the write latencies sent within the cutover window and
	// outside; reads likewise.
	writesNear, writesFar, readsNear, readsFar []time.Duration
	unexpected                                 int64
}

// window is an interval of time near a cutover.
type window struct{ from, to time.Time }

// cutoverWindows are, for each move that cut over, [fence − w, cutover seen + w]: the fence is
// the first time the poll saw the phase past verify minus the move's pause.
func cutoverWindows(runs []moveRun, w time.Duration) []window {
	var out []window
	for _, r := range runs {
		at, ok := r.cutoverSeen()
		if !ok {
			continue
		}
		fence := at.Add(-time.Duration(r.Final.PauseMS) * time.Millisecond)
		out = append(out, window{fence.Add(-w), at.Add(w)})
	}
	return out
}

// cutoverSeen is when the poll first saw the move past verify.
func (r moveRun) cutoverSeen() (time.Time, bool) {
	for _, p := range []string{"cutover", "cleanup", "done"} {
		if t, ok := r.Seen[p]; ok {
			return t, true
		}
	}
	return time.Time{}, false
}

func near(ws []window, t time.Time) bool {
	return slices.ContainsFunc(ws, func(w window) bool { return !t.Before(w.from) && !t.After(w.to) })
}

// summarize counts the load's answers and splits its latencies by the cutover windows. Only
// correct answers' latencies count.
func summarize(samples []sample, ws []window) loadStats {
	st := loadStats{counts: map[string]map[string]int64{}, bad: map[string]map[string]int64{}}
	for _, s := range samples {
		if st.counts[s.kind] == nil {
			st.counts[s.kind] = map[string]int64{}
		}
		key := statusKey(s.status)
		if s.problem != "" {
			key += " " + s.problem
		}
		st.counts[s.kind][key]++
		if !expected(s.kind, s.status) {
			st.unexpected++
			if st.bad[s.router] == nil {
				st.bad[s.router] = map[string]int64{}
			}
			st.bad[s.router][s.kind+" "+key]++
			continue
		}
		isNear := near(ws, s.sent)
		switch {
		case s.kind == kindRead && isNear:
			st.readsNear = append(st.readsNear, s.latency)
		case s.kind == kindRead:
			st.readsFar = append(st.readsFar, s.latency)
		case isNear:
			st.writesNear = append(st.writesNear, s.latency)
		default:
			st.writesFar = append(st.writesFar, s.latency)
		}
	}
	return st
}

// idPool is one load stream's live records: an id is taken out while a request uses it, so
// an update never meets a concurrent delete of its record.
type idPool struct {
	mu  sync.Mutex
	ids []string
}

func (p *idPool) put(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ids = append(p.ids, id)
}

// take removes and returns a random id, false when empty.
func (p *idPool) take(r *rand.Rand) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.ids) == 0 {
		return "", false
	}
	i := r.IntN(len(p.ids))
	id := p.ids[i]
	p.ids[i] = p.ids[len(p.ids)-1]
	p.ids = p.ids[:len(p.ids)-1]
	return id, true
}

func (p *idPool) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ids)
}

// pickWrite chooses a write kind: creates until the pool has a few records, then 40 % creates,
// 40 % updates and 20 % deletes (the tenant grows slowly).
func pickWrite(poolSize int, x float64) string {
	switch {
	case poolSize < 8 || x < 0.4:
		return kindCreate
	case x < 0.8:
		return kindUpdate
	}
	return kindDelete
}

// movesLoad is the load through every router.
type movesLoad struct {
	client   *http.Client
	token    string
	routers  []string
	runID    string
	records  int
	inFlight chan struct{}
	missed   atomic.Int64
	mu       sync.Mutex
	samples  []sample
}

func (l *movesLoad) record(s sample) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.samples = append(l.samples, s)
}

// run sends rate requests per second in all, spread evenly over the routers on a fixed schedule
// each, until ctx ends; write says whether they are writes or reads. It returns when every
// request it started is answered.
func (l *movesLoad) run(ctx context.Context, rate float64, write bool) {
	if rate <= 0 {
		return
	}
	var wg sync.WaitGroup
	per := rate / float64(len(l.routers))
	interval := time.Duration(float64(time.Second) / per)
	for ri, base := range l.routers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(ri), uint64(time.Now().UnixNano())))
			pool := &idPool{}
			start := time.Now()
			for i := int64(0); ; i++ {
				next := start.Add(time.Duration(i) * interval)
				if d := time.Until(next); d > 0 {
					t := time.NewTimer(d)
					select {
					case <-ctx.Done():
						t.Stop()
						return
					case <-t.C:
					}
				} else if ctx.Err() != nil {
					return
				}
				select {
				case l.inFlight <- struct{}{}:
				default:
					l.missed.Add(1)
					continue
				}
				var do func()
				if write {
					kind := pickWrite(pool.size(), rng.Float64())
					id := ""
					if kind != kindCreate {
						var ok bool
						if id, ok = pool.take(rng); !ok {
							kind = kindCreate
						}
					}
					key := fmt.Sprintf("mvb-%s-%d-%d", l.runID, ri, i)
					do = func() { l.write(ctx, base, kind, id, key, pool) }
				} else {
					k := rng.IntN(l.records) + 1
					do = func() { l.read(ctx, base, k) }
				}
				wg.Go(func() {
					defer func() { <-l.inFlight }()
					do()
				})
			}
		})
	}
	wg.Wait()
}

// write does one write of kind (on record id for updates and deletes) and returns the record
// to the pool when it is still live.
func (l *movesLoad) write(ctx context.Context, base, kind, id, key string, pool *idPool) {
	coll := base + "/v1/collections/" + movesCollection + "/records"
	var method, url string
	var body []byte
	hdr := http.Header{}
	switch kind {
	case kindCreate:
		method, url = http.MethodPost, coll
		body = fmt.Appendf(nil, `{"data":{"note":"meridian bench moves","key":%q}}`, key)
		hdr.Set("Idempotency-Key", key)
	case kindUpdate:
		method, url = http.MethodPatch, coll+"/"+id
		body = fmt.Appendf(nil, `{"data":{"updated_by":%q}}`, key)
		hdr.Set("Idempotency-Key", key)
	default:
		method, url = http.MethodDelete, coll+"/"+id
	}
	sent := time.Now()
	st, a, err := doJSON(ctx, l.client, method, url, l.token, hdr, body)
	lat := time.Since(sent)
	if ctx.Err() != nil && err != nil {
		// The run ended while this was in flight: neither an answer nor a failure.
		if id != "" && kind == kindUpdate {
			pool.put(id)
		}
		return
	}
	if err != nil {
		st = 0
	}
	problem := problemOf(kind, st, a.body)
	l.record(sample{kind: kind, router: base, sent: sent, latency: lat, status: st, problem: problem})
	switch {
	case kind == kindCreate && st == http.StatusCreated:
		if rid, err := parseRecordID(a.body); err == nil {
			pool.put(rid)
		}
	case kind == kindUpdate:
		pool.put(id) // live whatever the answer: nothing deleted it
	case kind == kindDelete && unapplied(st, problem):
		pool.put(id)
	}
	// A delete without a definite answer (no answer in time, 504, another 5xx) may have
	// committed: its record is never used again, so a later 404 is always a finding.
}

// unapplied says whether a failed write's answer proves it changed nothing: refused by a rate
// limit or load shedding before the store, or by the fence (read first in the write's
// transaction).
func unapplied(status int, problem string) bool {
	return status == http.StatusTooManyRequests ||
		status == http.StatusServiceUnavailable && (problem == "tenant-fenced" || problem == "overloaded")
}

func (l *movesLoad) read(ctx context.Context, base string, k int) {
	sent := time.Now()
	st, a, err := doJSON(ctx, l.client, http.MethodGet, base+"/v1/collections/"+zipfCollection+"/records/"+zipfID(k), l.token, nil, nil)
	if ctx.Err() != nil && err != nil {
		return
	}
	if err != nil {
		st = 0
	}
	l.record(sample{kind: kindRead, router: base, sent: sent, latency: time.Since(sent), status: st, problem: problemOf(kindRead, st, a.body)})
}

// problemOf is the problem type of an unexpected answer (RFC 9457 "type", its last path
// segment), "" for an expected answer or a body without one.
func problemOf(kind string, status int, body []byte) string {
	if status == 0 || expected(kind, status) {
		return ""
	}
	var p struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(body, &p) != nil || p.Type == "" || p.Type == "about:blank" {
		return ""
	}
	t := strings.TrimRight(p.Type, "/")
	return t[strings.LastIndexByte(t, '/')+1:]
}

// adminClient calls one router's admin API.
type adminClient struct {
	client *http.Client
	base   string
	token  string
}

func (a adminClient) do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	return send(ctx, a.client, method, a.base+path, a.token, body)
}

// shardInfo is a shard of GET /admin/v1/shardmap.
type shardInfo struct {
	ID         string `json:"id"`
	HomeRegion string `json:"home_region"`
	State      string `json:"state"`
}

func (a adminClient) shards(ctx context.Context) ([]shardInfo, error) {
	st, b, err := a.do(ctx, http.MethodGet, "/admin/v1/shardmap", nil)
	if err != nil {
		return nil, err
	}
	if st != http.StatusOK {
		return nil, fmt.Errorf("GET /admin/v1/shardmap: %d %.300s", st, b)
	}
	var m struct {
		Shards []shardInfo `json:"shards"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("GET /admin/v1/shardmap: %w", err)
	}
	return m.Shards, nil
}

// tenantPlace is the part of GET /admin/v1/tenants/{id} bench reads.
type tenantPlace struct {
	Shard  string `json:"shard"`
	Pinned bool   `json:"pinned"`
	Moving *bool  `json:"moving"`
}

func (a adminClient) tenant(ctx context.Context, id string) (tenantPlace, error) {
	var t tenantPlace
	st, b, err := a.do(ctx, http.MethodGet, "/admin/v1/tenants/"+id, nil)
	if err != nil {
		return t, err
	}
	if st != http.StatusOK {
		return t, fmt.Errorf("GET /admin/v1/tenants/%s: %d %.300s", id, st, b)
	}
	err = json.Unmarshal(b, &t)
	return t, err
}

// activeMove returns the tenant's unfinished move, if any.
func (a adminClient) activeMove(ctx context.Context, tenant string) (moveView, bool, error) {
	st, b, err := a.do(ctx, http.MethodGet, "/admin/v1/moves?tenant="+tenant, nil)
	if err != nil {
		return moveView{}, false, err
	}
	if st != http.StatusOK {
		return moveView{}, false, fmt.Errorf("GET /admin/v1/moves: %d %.300s", st, b)
	}
	var list struct {
		Items []moveView `json:"items"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		return moveView{}, false, fmt.Errorf("GET /admin/v1/moves: %w", err)
	}
	for _, m := range list.Items {
		if m.Tenant == tenant && !m.terminal() {
			return m, true, nil
		}
	}
	return moveView{}, false, nil
}

// pickShards decides the two shards: -move-shards, else the tenant's shard and the first active
// shard of the next region (by name) that has one.
func pickShards(flagValue, current string, shards []shardInfo) (a, b shardInfo, err error) {
	byID := map[string]shardInfo{}
	for _, s := range shards {
		byID[s.ID] = s
	}
	if flagValue != "" {
		x, y, err := parseMoveShards(flagValue)
		if err != nil {
			return a, b, err
		}
		var ok1, ok2 bool
		if a, ok1 = byID[x]; !ok1 {
			return a, b, fmt.Errorf("-move-shards: no shard %q in the map", x)
		}
		if b, ok2 = byID[y]; !ok2 {
			return a, b, fmt.Errorf("-move-shards: no shard %q in the map", y)
		}
		return a, b, nil // the same region is allowed; the report says so
	}
	a, ok := byID[current]
	if !ok {
		return a, b, fmt.Errorf("the tenant's shard %q is not in the map", current)
	}
	var regions []string
	for _, s := range shards {
		if !slices.Contains(regions, s.HomeRegion) {
			regions = append(regions, s.HomeRegion)
		}
	}
	slices.Sort(regions)
	i := slices.Index(regions, a.HomeRegion)
	for k := 1; k < len(regions); k++ {
		r := regions[(i+k)%len(regions)]
		cands := slices.DeleteFunc(slices.Clone(shards), func(s shardInfo) bool { return s.HomeRegion != r || s.State != "active" })
		slices.SortFunc(cands, func(x, y shardInfo) int { return strings.Compare(x.ID, y.ID) })
		if len(cands) > 0 {
			return a, cands[0], nil
		}
	}
	return a, b, fmt.Errorf("no active shard outside %s to move to", a.HomeRegion)
}

// processInfo is a process of the launcher's GET /processes (internal/sim.ProcessInfo).
type processInfo struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Region  string `json:"region"`
	URL     string `json:"url"`
	Pid     int    `json:"pid"`
	Running bool   `json:"running"`
}

func launcherProcesses(ctx context.Context, client *http.Client, control string) ([]processInfo, error) {
	if control == "" {
		return nil, errors.New("the cluster file names no control endpoint")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(control, "/")+"/processes", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var ps []processInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&ps); err != nil {
		return nil, fmt.Errorf("launcher processes: %w", err)
	}
	return ps, nil
}

// cpuByKind is the CPU time (ticks) of every launcher process and its children, by kind.
func cpuByKind(ps []processInfo) map[string]int64 {
	procs := readProcs()
	out := map[string]int64{}
	for _, p := range ps {
		if p.Pid > 0 {
			out[p.Kind] += treeTicks(procs, []int{p.Pid})
		}
	}
	out["bench"] = procs[os.Getpid()].own
	return out
}

// movesClusterFile is the part of the cluster file the moves scenario reads beyond clusterState.
type movesClusterFile struct {
	Control string `json:"control"`
	Dir     string `json:"dir"`
}

// movesReport is what writeMoves writes from.
type movesReport struct {
	started, ended time.Time
	m              machine
	tenant         string
	a, b           shardInfo
	routers        []string
	records        int
	seed           seedCounts
	writeRate      float64
	readRate       float64
	runs           []moveRun
	load           loadStats
	missed         int64
	holdRouters    map[string]holdDelta // over the whole run
	cpu            map[string]int64     // ticks over the moves
	wall           time.Duration
	ctlFound       bool
	logFound       bool
	notes          []string
}

// runMoves is the moves scenario, from the cluster file to the written section.
func runMoves(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	cs, err := readClusterState(o.cluster)
	if err != nil {
		return err
	}
	var extra movesClusterFile
	if b, err := os.ReadFile(o.cluster); err == nil {
		_ = json.Unmarshal(b, &extra) // readClusterState parsed the same file
	}
	secret, adminToken := o.jwtSecret, o.adminToken
	if secret == "" {
		secret = cs.DevJWTSecret
	}
	if adminToken == "" {
		adminToken = cs.AdminToken
	}
	if adminToken == "" {
		return fmt.Errorf("%w: -scenario moves needs the admin token (cluster file or -admin-token)", errUsage)
	}
	var routers []string
	for _, r := range cs.regionNames() {
		rs := cs.Regions[r].Routers
		if len(rs) == 0 && cs.Regions[r].Router != "" {
			rs = []string{cs.Regions[r].Router}
		}
		for _, u := range rs {
			routers = append(routers, strings.TrimRight(u, "/"))
		}
	}
	if len(routers) == 0 {
		return fmt.Errorf("no routers in %s", o.cluster)
	}
	if o.title == "" {
		o.title = scenarioTitles[scenarioMoves]
	}
	tenant := o.tenant
	if tenant == "" {
		tenant = movesTenantDefault
	}
	token, err := mintToken([]byte(secret), tenant, 24*time.Hour, time.Now())
	if err != nil {
		return err
	}
	setupClient := &http.Client{Timeout: 30 * time.Second, Transport: loadgen.NewTransport(o.seedWorkers)}
	admin := adminClient{client: setupClient, base: routers[0], token: adminToken}
	rep := movesReport{m: machineInfo(ctx), tenant: tenant, routers: routers, records: o.records,
		writeRate: o.cfg.Rate, readRate: o.readRate}

	// Setup: the tenant, created without a region so that it may move between regions.
	if err := createTenant(ctx, setupClient, admin.base, adminToken, tenantSpec{id: tenant}, stderr); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	raiseTenantLimits(ctx, setupClient, admin.base, adminToken, tenant, stderr)
	if mv, ok, err := admin.activeMove(ctx, tenant); err != nil {
		return fmt.Errorf("setup: %w", err)
	} else if ok {
		fmt.Fprintf(stderr, "bench: tenant %s has move %s in phase %s; waiting for it\n", tenant, mv.ID, mv.Phase)
		if _, err := waitMove(ctx, admin, mv.ID, o.movePoll, o.moveTimeout, nil); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}
	place, err := admin.tenant(ctx, tenant)
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	shards, err := admin.shards(ctx)
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if rep.a, rep.b, err = pickShards(o.moveShards, place.Shard, shards); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if rep.a.HomeRegion == rep.b.HomeRegion {
		rep.notes = append(rep.notes, fmt.Sprintf("Both shards are homed in %s: these moves do not cross regions.", rep.a.HomeRegion))
	}
	fmt.Fprintf(stderr, "bench: tenant %s on %s; moving between %s (%s) and %s (%s), %d times\n",
		tenant, place.Shard, rep.a.ID, rep.a.HomeRegion, rep.b.ID, rep.b.HomeRegion, o.moves)
	if rep.seed, err = seedRecords(ctx, setupClient, admin.base, token, o.records, o.seedWorkers, stderr); err != nil {
		return fmt.Errorf("setup: seeding: %w", err)
	}

	// The controller's metrics and log, and the processes for CPU times.
	ctlURL := strings.TrimRight(o.rebalancer, "/")
	procs, perr := launcherProcesses(ctx, setupClient, extra.Control)
	if perr != nil {
		rep.notes = append(rep.notes, "CPU times not measured: "+perr.Error()+".")
	}
	if ctlURL == "" {
		for _, p := range procs {
			if p.Kind == "rebalancer" && p.Running && validBase(p.URL) {
				ctlURL = strings.TrimRight(p.URL, "/")
			}
		}
	}
	logPath := o.rebalancerLog
	if logPath == "" && extra.Dir != "" {
		if m, _ := filepath.Glob(filepath.Join(extra.Dir, "data", "*", "rebalancer", "rebalancer.log")); len(m) == 1 {
			logPath = m[0]
		}
	}
	metricsClient := &http.Client{Timeout: 5 * time.Second}
	ctlPrefixes := []string{phaseSecondsMetric, rowsCopiedMetric, repairsMetric, stepErrorsMetric}
	holdPrefixes := []string{holdSecondsMetric, heldTotalMetric}
	scrapeRouters := func() map[string]metrics {
		out := map[string]metrics{}
		for _, r := range routers {
			out[r] = scrape(ctx, metricsClient, r, holdPrefixes...)
		}
		return out
	}

	// The load, through every router, until the moves are over.
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	load := &movesLoad{
		client: &http.Client{Timeout: o.cfg.Timeout, Transport: loadgen.NewTransport(o.cfg.Concurrency),
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		token: token, routers: routers, runID: strconv.FormatInt(time.Now().UnixNano(), 36), records: o.records,
		inFlight: make(chan struct{}, o.cfg.Concurrency),
	}
	var loadWG sync.WaitGroup
	loadWG.Go(func() { load.run(loadCtx, o.cfg.Rate, true) })
	loadWG.Go(func() { load.run(loadCtx, o.readRate, false) })
	fmt.Fprintf(stderr, "bench: load through %d routers: %s writes/s, %s reads/s in all\n", len(routers),
		strconv.FormatFloat(o.cfg.Rate, 'f', -1, 64), strconv.FormatFloat(o.readRate, 'f', -1, 64))

	rep.started = time.Now().UTC()
	cpu0 := cpuByKind(procs)
	routers0 := scrapeRouters()
	settle := 2 * o.cutoverWindow // load before the first and after the last move, outside every window
	if err := sleepCtx(ctx, settle); err != nil {
		return err
	}
	current := place.Shard
	var moveErr error
	for n := 1; n <= o.moves; n++ {
		to := rep.a
		if current == rep.a.ID {
			to = rep.b
		}
		run, err := oneMove(ctx, admin, tenant, to.ID, n, o, metricsClient, ctlURL, ctlPrefixes, scrapeRouters)
		if logPath != "" && run.Final.ID != "" {
			if f, ferr := os.Open(logPath); ferr == nil {
				run.VerifyPasses, run.FinalPasses = logPasses(f, run.Final.ID)
				f.Close()
				rep.logFound = true
				if _, ok := run.cutoverSeen(); ok {
					run.FinalPasses++ // the clean pass, which is not logged
				}
			}
		}
		rep.runs = append(rep.runs, run)
		if err != nil {
			moveErr = err
			fmt.Fprintf(stderr, "bench: move %d: %v\n", n, err)
			break
		}
		current = run.Final.To
		fmt.Fprintf(stderr, "bench: move %d/%d %s %s → %s: %s, pause %d ms, %d rows, %.1f s\n", n, o.moves, run.Final.ID,
			run.Final.From, run.Final.To, run.Final.Phase, run.Final.PauseMS, run.Final.RowsTotal, run.Ended.Sub(run.Asked).Seconds())
	}
	if err := sleepCtx(ctx, settle); err != nil {
		return err
	}
	stopLoad()
	loadWG.Wait()
	rep.ended = time.Now().UTC()
	rep.wall = rep.ended.Sub(rep.started)
	cpu1 := cpuByKind(procs)
	routers1 := scrapeRouters()
	if len(procs) > 0 {
		rep.cpu = map[string]int64{}
		for k, v := range cpu1 {
			rep.cpu[k] = max(0, v-cpu0[k])
		}
	}
	rep.holdRouters = map[string]holdDelta{}
	for _, r := range routers {
		if routers0[r] != nil && routers1[r] != nil {
			rep.holdRouters[r] = diffHold(routers0[r], routers1[r])
		}
	}
	rep.ctlFound = ctlURL != "" && slices.ContainsFunc(rep.runs, func(r moveRun) bool { return r.Ctl != nil })
	rep.load = summarize(load.samples, cutoverWindows(rep.runs, o.cutoverWindow))
	rep.missed = load.missed.Load()

	var md strings.Builder
	writeMoves(&md, o, rep)
	invalid := rep.load.unexpected > 0 || moveErr != nil || rep.missed > 0
	if invalid {
		// Shown, never recorded as a result: the section goes to stdout only, the raw figures
		// (which say why the run is invalid) to -json.
		if _, err := io.WriteString(stdout, md.String()); err != nil {
			return err
		}
		if o.jsonOut != "" {
			jo := *o
			jo.out = ""
			if err := emit(&jo, "", movesJSON(rep), stdout, stderr); err != nil {
				return err
			}
		}
		fmt.Fprintf(stderr, "\nbench: THIS RUN MEASURES NOTHING: %s\n", invalidReason(rep, moveErr))
		if extra.Dir != "" {
			fmt.Fprintf(stderr, "bench: the cluster's logs are under %s\n", extra.Dir)
		}
		return fmt.Errorf("moves: %s", invalidReason(rep, moveErr))
	}
	return emit(o, md.String(), movesJSON(rep), stdout, stderr)
}

// invalidReason says why a run measured nothing.
func invalidReason(rep movesReport, moveErr error) string {
	var why []string
	if moveErr != nil {
		why = append(why, moveErr.Error())
	}
	if rep.load.unexpected > 0 {
		why = append(why, fmt.Sprintf("%d load requests had a 5xx, an unexpected 4xx or no answer", rep.load.unexpected))
	}
	if rep.missed > 0 {
		why = append(why, fmt.Sprintf("%d load requests were not sent (more than -c in flight)", rep.missed))
	}
	return strings.Join(why, "; ")
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// oneMove requests move n of the tenant to shard to and follows it to its end, with the
// controller's and routers' metrics before and after.
func oneMove(ctx context.Context, admin adminClient, tenant, to string, n int, o *options, mc *http.Client,
	ctlURL string, ctlPrefixes []string, scrapeRouters func() map[string]metrics) (moveRun, error) {
	run := moveRun{N: n, Seen: map[string]time.Time{}, Holds: map[string]holdDelta{}}
	var ctl0 metrics
	if ctlURL != "" {
		ctl0 = scrape(ctx, mc, ctlURL, ctlPrefixes...)
	}
	r0 := scrapeRouters()
	body, _ := json.Marshal(map[string]string{"tenant": tenant, "to_shard": to})
	run.Asked = time.Now()
	var id string
	err := poll(ctx, func() (bool, error) {
		st, b, err := admin.do(ctx, http.MethodPost, "/admin/v1/moves", body)
		if err != nil {
			return false, err
		}
		if st != http.StatusAccepted {
			// 409 tenant-moving: the map has not yet settled the previous move everywhere.
			return !(retryable(st) || st == http.StatusConflict), fmt.Errorf("POST /admin/v1/moves: %d %.300s", st, bytes.TrimSpace(b))
		}
		mv, err := parseMove(b)
		id = mv.ID
		return true, err
	})
	if err != nil {
		run.Reason = err.Error()
		return run, fmt.Errorf("requesting move %d to %s: %w", n, to, err)
	}
	run.Final.ID = id
	final, err := waitMove(ctx, admin, id, o.movePoll, o.moveTimeout, run.Seen)
	run.Final = final
	run.Ended = time.Now()
	if final.ID == "" {
		run.Final.ID = id
	}
	if ctlURL != "" && ctl0 != nil {
		if ctl1 := scrape(ctx, mc, ctlURL, ctlPrefixes...); ctl1 != nil {
			run.Ctl = diffController(ctl0, ctl1)
		}
	}
	r1 := scrapeRouters()
	for r, m := range r1 {
		if m != nil && r0[r] != nil {
			run.Holds[r] = diffHold(r0[r], m)
		}
	}
	if err != nil {
		run.Reason = err.Error()
		return run, fmt.Errorf("move %d (%s) to %s: %w", n, id, to, err)
	}
	if final.Phase != "done" {
		run.Reason = fmt.Sprintf("ended %s: %s", final.Phase, final.Error)
		return run, fmt.Errorf("move %d (%s) %s → %s ended %s in the map: %q", n, id, final.From, final.To, final.Phase, final.Error)
	}
	return run, nil
}

// waitMove polls move id until it is terminal, noting in seen when each phase was first seen.
func waitMove(ctx context.Context, admin adminClient, id string, every, timeout time.Duration, seen map[string]time.Time) (moveView, error) {
	deadline := time.Now().Add(timeout)
	var last moveView
	var lastErr error
	for {
		st, b, err := admin.do(ctx, http.MethodGet, "/admin/v1/moves/"+id, nil)
		now := time.Now()
		switch {
		case err != nil:
			lastErr = err
		case st != http.StatusOK:
			lastErr = fmt.Errorf("GET /admin/v1/moves/%s: %d %.300s", id, st, bytes.TrimSpace(b))
		default:
			mv, perr := parseMove(b)
			if perr != nil {
				lastErr = perr
				break
			}
			last, lastErr = mv, nil
			if seen != nil {
				notePhase(seen, mv.Phase, now)
			}
			if mv.terminal() {
				return mv, nil
			}
		}
		if now.After(deadline) {
			return last, fmt.Errorf("not finished after %s (last phase %q, last error %v)", timeout, last.Phase, lastErr)
		}
		if err := sleepCtx(ctx, every); err != nil {
			return last, err
		}
	}
}

// notePhase records when phase was first seen; the phases before it that the poll missed are
// given the same time (they ended no later).
func notePhase(seen map[string]time.Time, phase string, at time.Time) {
	if _, ok := seen[phase]; ok {
		return
	}
	seen[phase] = at
	if i := slices.Index(phaseOrder, phase); i > 0 {
		for _, p := range phaseOrder[:i] {
			if _, ok := seen[p]; !ok {
				seen[p] = at
			}
		}
	}
}

// moveFigures are one move's derived figures.
type moveFigures struct {
	total             time.Duration
	backfillSeconds   float64 // 0: unknown
	backfillRate      float64
	verifySeconds     float64
	verifyRate        float64
	verifyRateIsBound bool // passes unknown: the rate assumes one pass, a lower bound
	cutoverSeconds    float64
	finalRate         float64
	holds             holdDelta
}

// figures derives a move's rates. Backfill: rows_copied over the controller's backfill step
// time (meridian_moves_phase_seconds{phase="backfill"}), else over the polled phase times.
// Verify: the passes before the fence (from the log) × rows_total over the controller's verify
// time (passes before the fence); final: the passes under the fence × rows_total over the
// cutover step time (fence → Cutover applied, so a lower bound of the final passes' rate).
func (r moveRun) figures() moveFigures {
	f := moveFigures{total: r.Ended.Sub(r.Asked), holds: holdDelta{Buckets: map[float64]float64{}, Results: map[string]float64{}}}
	for _, h := range r.Holds {
		f.holds = f.holds.add(h)
	}
	if r.Ctl != nil {
		f.backfillSeconds = r.Ctl.PhaseSeconds["backfill"]
		f.verifySeconds = r.Ctl.PhaseSeconds["verify"]
		f.cutoverSeconds = r.Ctl.PhaseSeconds["cutover"]
	}
	if f.backfillSeconds == 0 {
		if b, ok1 := r.Seen["backfill"]; ok1 {
			if v, ok2 := r.Seen["verify"]; ok2 {
				f.backfillSeconds = v.Sub(b).Seconds()
			}
		}
	}
	if f.backfillSeconds > 0 {
		f.backfillRate = float64(r.Final.RowsCopied) / f.backfillSeconds
	}
	passes := r.VerifyPasses
	if passes == 0 {
		passes, f.verifyRateIsBound = 1, true
	}
	if f.verifySeconds > 0 {
		f.verifyRate = float64(passes) * float64(r.Final.RowsTotal) / f.verifySeconds
	}
	if f.cutoverSeconds > 0 && r.FinalPasses > 0 {
		f.finalRate = float64(r.FinalPasses) * float64(r.Final.RowsTotal) / f.cutoverSeconds
	}
	return f
}

// movesJSON is the -json document.
func movesJSON(rep movesReport) any {
	type lat struct {
		N   int     `json:"n"`
		P50 float64 `json:"p50_ms"`
		P99 float64 `json:"p99_ms"`
		Max float64 `json:"max_ms"`
	}
	mk := func(ds []time.Duration) lat {
		s := sortedDurations(ds)
		l := lat{N: len(s), P50: ms(nearestRank(s, 50)), P99: ms(nearestRank(s, 99))}
		if len(s) > 0 {
			l.Max = ms(s[len(s)-1])
		}
		return l
	}
	return map[string]any{
		"started": rep.started, "ended": rep.ended, "tenant": rep.tenant, "shards": []string{rep.a.ID, rep.b.ID},
		"records": rep.records, "write_rate": rep.writeRate, "read_rate": rep.readRate, "moves": rep.runs,
		"status_counts": rep.load.counts, "unexpected": rep.load.unexpected, "missed": rep.missed,
		"writes_near_cutover": mk(rep.load.writesNear), "writes_outside": mk(rep.load.writesFar),
		"reads_near_cutover": mk(rep.load.readsNear), "reads_outside": mk(rep.load.readsFar),
		"cpu_seconds": cpuSeconds(rep.cpu),
	}
}

func cpuSeconds(ticks map[string]int64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range ticks {
		out[k] = float64(v) / clockTicks
	}
	return out
}

// durPct is p of ds (sorted inside) in milliseconds.
func durPct(ds []time.Duration, p float64) float64 { return ms(nearestRank(sortedDurations(ds), p)) }

// floatPct is the nearest-rank percentile of xs.
func floatPct(xs []float64, p float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	rank := int(math.Ceil(float64(len(s)) * p / 100))
	return s[max(1, min(len(s), rank))-1]
}

func fmtRate(x float64) string {
	if x <= 0 {
		return "?"
	}
	return strconv.FormatFloat(math.Round(x), 'f', 0, 64)
}

func fmtBound(le float64) string {
	switch {
	case le == 0:
		return "–"
	case math.IsInf(le, 1):
		return "> 8192"
	}
	return "≤ " + strconv.FormatFloat(le*1000, 'f', -1, 64)
}

// shortRouter is a router's host:port.
func shortRouter(u string) string {
	if hp := hostPort(u); hp != "" {
		return hp
	}
	return u
}

// writeMoves writes the moves scenario's section.
func writeMoves(w *strings.Builder, o *options, rep movesReport) {
	writeHeading(w, o, rep.started, rep.m)
	var rs []string
	for _, r := range rep.routers {
		rs = append(rs, shortRouter(r))
	}
	fmt.Fprintf(w, "- Tenant `%s` (created without a region, so it may change regions), moved between shard `%s` (%s) and `%s` (%s); "+
		"%d records `%s/zipf-1…%d` (%d created, %d already there, in %.1f s by %d concurrent `PUT … If-None-Match: *`).\n",
		rep.tenant, rep.a.ID, rep.a.HomeRegion, rep.b.ID, rep.b.HomeRegion, rep.records, zipfCollection, rep.records,
		rep.seed.created, rep.seed.existed, rep.seed.took.Seconds(), o.seedWorkers)
	fmt.Fprintf(w, "- Load through every router (%s), each its share of a fixed schedule (open loop, at most %d in flight): "+
		"%s writes/s in all — 40 %% `POST` creates and 40 %% `PATCH` updates, both with an `Idempotency-Key`, 20 %% `DELETE`s of "+
		"the load's own records (collection `%s`) — and %s reads/s of the seeded records (uniform). The load ran %.1f s, from "+
		"%s before the first move to %s after the last.\n",
		strings.Join(rs, ", "), o.cfg.Concurrency, strconv.FormatFloat(rep.writeRate, 'f', -1, 64), movesCollection,
		strconv.FormatFloat(rep.readRate, 'f', -1, 64), rep.wall.Seconds(), 2*o.cutoverWindow, 2*o.cutoverWindow)
	fmt.Fprintf(w, "- Moves requested one after the other (`POST /admin/v1/moves`, the next once the last is `done`), each "+
		"followed with `GET /admin/v1/moves/{id}` every %s; the controller's `/metrics` and every router's `/metrics` read "+
		"before and after each move.\n\n", o.movePoll)

	n := len(rep.runs)
	var pauses, firstWrites, totals []time.Duration
	var bf, vf, fr []float64
	verifyBound := false
	all := holdDelta{Buckets: map[float64]float64{}, Results: map[string]float64{}}
	done := 0
	for _, r := range rep.runs {
		f := r.figures()
		if r.Final.Phase == "done" {
			done++
			pauses = append(pauses, time.Duration(r.Final.PauseMS)*time.Millisecond)
			if r.Final.FirstWriteMS > 0 {
				firstWrites = append(firstWrites, time.Duration(r.Final.FirstWriteMS)*time.Millisecond)
			}
			totals = append(totals, f.total)
		}
		if f.backfillRate > 0 {
			bf = append(bf, f.backfillRate)
		}
		if f.verifyRate > 0 {
			vf = append(vf, f.verifyRate)
			verifyBound = verifyBound || f.verifyRateIsBound
		}
		if f.finalRate > 0 {
			fr = append(fr, f.finalRate)
		}
		all = all.add(f.holds)
	}
	fmt.Fprintf(w, "**%d of %d moves done.** Summary over the moves that finished:\n\n", done, n)
	w.WriteString("| figure | p50 | p95 | p99 | max | min |\n|---|---:|---:|---:|---:|---:|\n")
	pr := func(name string, ds []time.Duration, unit func(time.Duration) string) {
		s := sortedDurations(ds)
		if len(s) == 0 {
			fmt.Fprintf(w, "| %s | – | – | – | – | – |\n", name)
			return
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", name, unit(nearestRank(s, 50)), unit(nearestRank(s, 95)),
			unit(nearestRank(s, 99)), unit(s[len(s)-1]), unit(s[0]))
	}
	pr("cutover pause (`pause_ms`: fence → `Cutover` applied), ms", pauses, func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) })
	pr("write pause (`first_write_ms`: fence → first client write on the target), ms", firstWrites, func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) })
	pr("move duration (request → `done`, incl. the 2 s propagation wait and 10 s grace), s", totals,
		func(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) })
	prf := func(name string, xs []float64) {
		if len(xs) == 0 {
			fmt.Fprintf(w, "| %s | ? | ? | ? | ? | ? |\n", name)
			return
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", name, fmtRate(floatPct(xs, 50)), fmtRate(floatPct(xs, 95)),
			fmtRate(floatPct(xs, 99)), fmtRate(slices.Max(xs)), fmtRate(slices.Min(xs)))
	}
	prf("backfill, rows/s", bf)
	vname := "verify before the fence, rows compared/s"
	if verifyBound {
		vname += " (≥: passes not in the log, one assumed)"
	}
	prf(vname, vf)
	prf("final verify under the fence, rows compared/s (≥: over fence → `Cutover` applied)", fr)
	fmt.Fprintf(w, "\nHeld writes (routers' `%s`, all routers, all moves): %.0f held, mean %.1f ms, longest %s ms; by result: %s.\n\n",
		holdSecondsMetric, all.Count, meanMS(all), fmtBound(all.holdMax()), resultCell(all.Results))

	w.WriteString("Per move (rows: the map's `rows_total`; backfill, verify and cutover times are the controller's " +
		"`meridian_moves_phase_seconds` over the move; verify passes from the controller's log; holds summed over the routers):\n\n")
	w.WriteString("| # | move | from → to | rows | repairs | backfill s | rows/s | verify passes | verify s | compared/s | " +
		"final passes | fence → cutover s | pause ms | held writes | hold mean ms | hold max ms | total s | phase |\n")
	w.WriteString("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rep.runs {
		f := r.figures()
		fmt.Fprintf(w, "| %d | `%s` | %s → %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %d | %.0f | %.1f | %s | %.1f | %s |\n",
			r.N, r.Final.ID, r.Final.From, r.Final.To, r.Final.RowsTotal, r.Final.Repairs, secs(f.backfillSeconds),
			fmtRate(f.backfillRate), passesCell(r.VerifyPasses, rep.logFound), secs(f.verifySeconds), fmtRate(f.verifyRate),
			passesCell(r.FinalPasses, rep.logFound), secs(f.cutoverSeconds), r.Final.PauseMS, f.holds.Count, meanMS(f.holds),
			fmtBound(f.holds.holdMax()), f.total.Seconds(), phaseCell(r))
	}

	w.WriteString("\nThe load's latency (correct answers only), sent outside vs within ")
	fmt.Fprintf(w, "±%s of a cutover (from the fence, i.e. the poll's first sight of `cutover` minus `pause_ms`, to that sight):\n\n", o.cutoverWindow)
	w.WriteString("| requests | sent | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n")
	lrow := func(name string, ds []time.Duration) {
		s := sortedDurations(ds)
		mx := 0.0
		if len(s) > 0 {
			mx = ms(s[len(s)-1])
		}
		fmt.Fprintf(w, "| %s | %d | %.1f | %.1f | %.1f |\n", name, len(s), ms(nearestRank(s, 50)), ms(nearestRank(s, 99)), mx)
	}
	lrow("writes, outside", rep.load.writesFar)
	lrow(fmt.Sprintf("writes, within ±%s of a cutover", o.cutoverWindow), rep.load.writesNear)
	lrow("reads, outside", rep.load.readsFar)
	lrow(fmt.Sprintf("reads, within ±%s of a cutover", o.cutoverWindow), rep.load.readsNear)

	w.WriteString("\nEvery answer of the load, by request and status (expected: create 201, update 200, delete 204, read 200):\n\n")
	w.WriteString("| request | answers |\n|---|---|\n")
	for _, k := range []string{kindCreate, kindUpdate, kindDelete, kindRead} {
		fmt.Fprintf(w, "| %s | %s |\n", k, countCell(rep.load.counts[k]))
	}
	if rep.load.unexpected > 0 || rep.missed > 0 {
		fmt.Fprintf(w, "\n**THIS RUN MEASURES NOTHING: %d answers were a 5xx, an unexpected 4xx or no answer; %d requests were not sent "+
			"(more than %d in flight).** By router:\n\n", rep.load.unexpected, rep.missed, o.cfg.Concurrency)
		for _, r := range slices.Sorted(maps.Keys(rep.load.bad)) {
			fmt.Fprintf(w, "- %s: %s\n", shortRouter(r), countCell(rep.load.bad[r]))
		}
	}
	for _, r := range rep.runs {
		if r.Reason != "" {
			fmt.Fprintf(w, "\n**Move %d (`%s`, %s → %s) did not finish: %s.**\n", r.N, r.Final.ID, r.Final.From, r.Final.To, r.Reason)
		}
		if r.Ctl != nil {
			if e := sumValues(r.Ctl.StepErrors); e > 0 {
				fmt.Fprintf(w, "\nMove %d: the controller counted %.0f failed steps (retried): %s.\n", r.N, e, resultCell(r.Ctl.StepErrors))
			}
		}
	}

	if len(rep.holdRouters) > 0 {
		w.WriteString("\nHolds by router over the whole run:\n\n| router | held | mean ms | longest ms | results |\n|---|---:|---:|---:|---|\n")
		for _, r := range rep.routers {
			h, ok := rep.holdRouters[r]
			if !ok {
				fmt.Fprintf(w, "| %s | ? | ? | ? | /metrics not read |\n", shortRouter(r))
				continue
			}
			fmt.Fprintf(w, "| %s | %.0f | %.1f | %s | %s |\n", shortRouter(r), h.Count, meanMS(h), fmtBound(h.holdMax()), resultCell(h.Results))
		}
	}
	if len(rep.cpu) > 0 && rep.wall > 0 {
		w.WriteString("\nCPU time over the load (from /proc: each launcher process and its children, by kind; 2 CPUs = 2 s per s):\n\n")
		w.WriteString("| process | CPU s | share of one CPU |\n|---|---:|---:|\n")
		for _, k := range slices.Sorted(maps.Keys(rep.cpu)) {
			s := float64(rep.cpu[k]) / clockTicks
			fmt.Fprintf(w, "| %s | %.1f | %.0f %% |\n", k, s, 100*s/rep.wall.Seconds())
		}
	}
	w.WriteString("\nHow the figures are made: `pause_ms` is the controller's (docs/moves.md, \"What is measured\"). Backfill rows/s " +
		"is `rows_copied` over the controller's backfill step time. Verify rows/s is not exported as such: it is the verify " +
		"passes before the fence (`verify pass` lines of the controller's log for the move) × `rows_total` over the controller's " +
		"`verify` time (those passes); the final passes under the fence (the logged ones with differences, plus the clean one) × " +
		"`rows_total` over the `cutover` time (fence → `Cutover` applied, which also holds the fence and `FinishTarget`), so " +
		"that rate is a lower bound. A hold's max is the upper bound of its histogram bucket.\n")
	if !rep.ctlFound {
		w.WriteString("\nNote: the controller's /metrics was not read (no `rebalancer` process in the launcher's list, or no " +
			"answer): backfill time is from the polled phase changes, verify and cutover times are unknown.\n")
	}
	if !rep.logFound {
		w.WriteString("\nNote: the controller's log was not found: verify passes unknown (one assumed).\n")
	}
	for _, n := range rep.notes {
		fmt.Fprintf(w, "\nNote: %s\n", n)
	}
}

func meanMS(h holdDelta) float64 {
	if h.Count <= 0 {
		return 0
	}
	return 1000 * h.Sum / h.Count
}

func secs(s float64) string {
	if s <= 0 {
		return "?"
	}
	return strconv.FormatFloat(s, 'f', 2, 64)
}

func passesCell(n int, known bool) string {
	if !known {
		return "?"
	}
	return strconv.Itoa(n)
}

func phaseCell(r moveRun) string {
	if r.Final.Phase == "done" {
		return "done"
	}
	p := r.Final.Phase
	if p == "" {
		p = "?"
	}
	return "**" + p + "**"
}

func sumValues(m map[string]float64) float64 {
	var s float64
	for _, v := range m {
		s += v
	}
	return s
}

// resultCell renders float counts as "a×3, b×1" (zeros left out), "–" when none.
func resultCell(m map[string]float64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s×%.0f", k, m[k]))
		}
	}
	if len(parts) == 0 {
		return "–"
	}
	return strings.Join(parts, ", ")
}
