package main

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestParseFlagsMoves(t *testing.T) {
	o, err := parseFlags([]string{"-scenario", "moves"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.moves != defaultMoves || o.records != defaultMoveRecords || o.cfg.Rate != defaultWriteRate ||
		o.readRate != defaultReadRate || o.cfg.Concurrency != defaultMovesInFly {
		t.Errorf("defaults: moves %d records %d rate %v read-rate %v c %d", o.moves, o.records, o.cfg.Rate, o.readRate, o.cfg.Concurrency)
	}
	o, err = parseFlags([]string{"-scenario", "moves", "-moves", "3", "-records", "500", "-rate", "50", "-read-rate", "0",
		"-move-shards", "us-east-1,eu-west-1", "-c", "10"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.moves != 3 || o.records != 500 || o.cfg.Rate != 50 || o.readRate != 0 || o.cfg.Concurrency != 10 {
		t.Errorf("given: %+v", o.movesFlags)
	}

	for _, tc := range []struct {
		args []string
		want string // in the error
	}{
		{[]string{"-scenario", "moves", "-moves", "0"}, "-moves 0"},
		{[]string{"-scenario", "moves", "-moves", "-2"}, "-moves -2"},
		{[]string{"-scenario", "moves", "-records", "0"}, "-records 0"},
		{[]string{"-scenario", "moves", "-rate", "0"}, "-rate 0"},
		{[]string{"-scenario", "moves", "-rate", "NaN"}, "-rate"},
		{[]string{"-scenario", "moves", "-read-rate", "-1"}, "-read-rate"},
		{[]string{"-scenario", "moves", "-read-rate", "+Inf"}, "-read-rate"},
		{[]string{"-scenario", "moves", "-move-shards", "a"}, "-move-shards"},
		{[]string{"-scenario", "moves", "-move-shards", "a,a"}, "-move-shards"},
		{[]string{"-scenario", "moves", "-move-shards", "a,b,c"}, "-move-shards"},
		{[]string{"-scenario", "moves", "-move-poll", "0s"}, "-move-poll"},
		{[]string{"-scenario", "moves", "-move-timeout", "0s"}, "-move-timeout"},
		{[]string{"-scenario", "moves", "-cutover-window", "0s"}, "-cutover-window"},
		{[]string{"-scenario", "moves", "-rebalancer", "localhost:1"}, "-rebalancer"},
		{[]string{"-scenario", "moves", "-d", "10s"}, "-d is not for -scenario moves"},
		{[]string{"-scenario", "moves", "-zipf-s", "2"}, "-zipf-s is not for"},
		{[]string{"-scenario", "moves", "-region", "us-east"}, "-region is not for"},
		{[]string{"-scenario", "moves", "-target", "a=http://x:1"}, "not -target"},
		{[]string{"-scenario", "moves", "-token", "x"}, "not -token"},
		{[]string{"-scenario", "get", "-moves", "3"}, "-moves is for -scenario moves"},
		{[]string{"-scenario", "cache", "-read-rate", "3"}, "-read-rate is for -scenario moves"},
		{[]string{"-scenario", "moves", "-moves"}, "flag needs an argument"},
		{[]string{"-scenario", "moves", "-moves", "x"}, "invalid value"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stderr bytes.Buffer
			_, err := parseFlags(tc.args, &stderr)
			if !errors.Is(err, errUsage) {
				t.Fatalf("err = %v, want a usage error", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to say %q", err, tc.want)
			}
		})
	}
	// The cache scenario keeps its own -records default and checks.
	o, err = parseFlags([]string{"-scenario", "cache"}, &bytes.Buffer{})
	if err != nil || o.records != 10_000 {
		t.Errorf("cache: records %d, err %v", o.records, err)
	}
}

const routerMetrics = `# HELP meridian_router_hold_seconds Time writes spent held during a tenant's cutover, per hold.
# TYPE meridian_router_hold_seconds histogram
meridian_router_hold_seconds_bucket{le="0.001"} 0
meridian_router_hold_seconds_bucket{le="0.002"} 1
meridian_router_hold_seconds_bucket{le="0.512"} 3
meridian_router_hold_seconds_bucket{le="8.192"} 4
meridian_router_hold_seconds_bucket{le="+Inf"} 4
meridian_router_hold_seconds_sum 5.5
meridian_router_hold_seconds_count 4
meridian_router_held_writes 2
meridian_router_held_writes_total{result="gone"} 0
meridian_router_held_writes_total{result="released"} 3
meridian_router_held_writes_total{result="timeout"} 1 1700000000000
meridian_router_requests_total{route="x y"} 9
weird{a="}"} 1
`

func TestParseMetrics(t *testing.T) {
	m := parseMetrics(strings.NewReader(routerMetrics), holdSecondsMetric, heldTotalMetric)
	for series, want := range map[string]float64{
		`meridian_router_hold_seconds_bucket{le="0.002"}`:      1,
		`meridian_router_hold_seconds_bucket{le="+Inf"}`:       4,
		"meridian_router_hold_seconds_sum":                     5.5,
		"meridian_router_hold_seconds_count":                   4,
		`meridian_router_held_writes_total{result="timeout"}`:  1, // the timestamp is not the value
		`meridian_router_held_writes_total{result="released"}`: 3,
		"meridian_router_held_writes":                          0, // the gauge is another family
		`meridian_router_hold_seconds_bucket{le="0.001"}`:      0,
		`meridian_router_held_writes_total{result="gone"}`:     0,
		`meridian_router_hold_seconds_bucket{le="8.192"}`:      4,
		`meridian_router_hold_seconds_bucket{le="0.512"}`:      3,
		`meridian_router_held_writes_total{result="overflow"}`: 0,
		`meridian_router_requests_total{route="x y"}`:          0,
		`weird{a="}"}`: 0,
	} {
		if got := m[series]; got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if _, ok := m[`meridian_router_requests_total{route="x y"}`]; ok {
		t.Error("a family not asked for was kept")
	}
	// Label values with spaces and braces keep the series whole.
	m = parseMetrics(strings.NewReader(routerMetrics), "meridian_router_requests_total", "weird")
	if m[`meridian_router_requests_total{route="x y"}`] != 9 || m[`weird{a="}"}`] != 1 {
		t.Errorf("labels with spaces or braces: %v", m)
	}
	if len(parseMetrics(strings.NewReader("garbage\nx{\nx NaN\n"), "x", "garbage")) != 0 {
		t.Error("unparsable lines kept")
	}
}

func TestDiffHold(t *testing.T) {
	before := parseMetrics(strings.NewReader(routerMetrics), holdSecondsMetric, heldTotalMetric)
	after := parseMetrics(strings.NewReader(strings.NewReplacer(
		`le="0.002"} 1`, `le="0.002"} 2`,
		`le="0.512"} 3`, `le="0.512"} 5`,
		`le="8.192"} 4`, `le="8.192"} 6`,
		`le="+Inf"} 4`, `le="+Inf"} 6`,
		"_sum 5.5", "_sum 5.9",
		"_count 4", "_count 6",
		`result="released"} 3`, `result="released"} 5`,
	).Replace(routerMetrics)), holdSecondsMetric, heldTotalMetric)
	h := diffHold(before, after)
	if h.Count != 2 || math.Abs(h.Sum-0.4) > 1e-9 || h.Results["released"] != 2 || h.Results["timeout"] != 0 {
		t.Errorf("delta = %+v", h)
	}
	if got := h.holdMax(); got != 0.512 {
		t.Errorf("holdMax = %v, want 0.512 (both holds within that bucket)", got)
	}
	if got := meanMS(h); math.Abs(got-200) > 1e-6 {
		t.Errorf("mean = %v ms, want 200", got)
	}
	// A router that restarted (counters from 0) gives no negative deltas.
	h = diffHold(after, parseMetrics(strings.NewReader(""), holdSecondsMetric))
	if h.Count != 0 || h.Sum != 0 || h.holdMax() != 0 {
		t.Errorf("after a restart: %+v", h)
	}
	// Holds only in +Inf: longer than the last bound.
	inf := holdDelta{Count: 1, Buckets: map[float64]float64{0.5: 0, math.Inf(1): 1}}
	if !math.IsInf(inf.holdMax(), 1) || fmtBound(inf.holdMax()) != "> 8192" {
		t.Errorf("+Inf only: %v %q", inf.holdMax(), fmtBound(inf.holdMax()))
	}
	sum := h.add(diffHold(before, after)).add(diffHold(before, after))
	if sum.Count != 4 || sum.Results["released"] != 4 || sum.Buckets[0.512] != 4 {
		t.Errorf("add: %+v", sum)
	}
}

func TestDiffController(t *testing.T) {
	before := parseMetrics(strings.NewReader(`meridian_moves_phase_seconds_sum{phase="backfill"} 10
meridian_moves_phase_seconds_count{phase="backfill"} 2
meridian_moves_phase_seconds_sum{phase="verify"} 1
meridian_moves_rows_copied_total 40000
meridian_moves_repairs_total 5
meridian_moves_step_errors_total{phase="backfill"} 1
`), phaseSecondsMetric, rowsCopiedMetric, repairsMetric, stepErrorsMetric)
	after := parseMetrics(strings.NewReader(`meridian_moves_phase_seconds_sum{phase="backfill"} 12.5
meridian_moves_phase_seconds_count{phase="backfill"} 3
meridian_moves_phase_seconds_sum{phase="verify"} 1.75
meridian_moves_phase_seconds_sum{phase="cutover"} 0.25
meridian_moves_rows_copied_total 60000
meridian_moves_repairs_total 9
meridian_moves_step_errors_total{phase="backfill"} 1
`), phaseSecondsMetric, rowsCopiedMetric, repairsMetric, stepErrorsMetric)
	d := diffController(before, after)
	if d.PhaseSeconds["backfill"] != 2.5 || d.PhaseSeconds["verify"] != 0.75 || d.PhaseSeconds["cutover"] != 0.25 ||
		d.PhaseCounts["backfill"] != 1 || d.RowsCopied != 20000 || d.Repairs != 4 || sumValues(d.StepErrors) != 0 {
		t.Errorf("delta = %+v", d)
	}
}

func TestParseMove(t *testing.T) {
	mv, err := parseMove([]byte(`{"id":"mv-7","tenant":"acme","from_shard":"us-east-1","to_shard":"eu-west-1","phase":"done",
		"rows_copied":20000,"rows_total":20100,"repairs":3,"pause_ms":412,"first_write_ms":57,"error":"","created_at":"2026-11-30T06:00:00Z",
		"updated_at":"2026-11-30T06:00:21.5Z"}`))
	if err != nil {
		t.Fatal(err)
	}
	if mv.ID != "mv-7" || mv.From != "us-east-1" || mv.To != "eu-west-1" || !mv.terminal() || mv.RowsCopied != 20000 ||
		mv.RowsTotal != 20100 || mv.Repairs != 3 || mv.PauseMS != 412 || mv.FirstWriteMS != 57 || mv.UpdatedAt.Sub(mv.CreatedAt) != 21500*time.Millisecond {
		t.Errorf("move = %+v", mv)
	}
	for _, bad := range []string{`{`, `{"id":"mv-1"}`, `{"phase":"done"}`, `[]`, `{"id":"x","phase":"done","pause_ms":"1"}`} {
		if _, err := parseMove([]byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	for phase, term := range map[string]bool{"done": true, "failed": true, "cancelled": true, "verify": false, "cleanup": false} {
		if (moveView{Phase: phase}).terminal() != term {
			t.Errorf("%s: terminal != %v", phase, term)
		}
	}
}

func TestLogPasses(t *testing.T) {
	log := `{"time":"t","level":"INFO","msg":"verify pass","component":"rebalancer","component":"moves","move_id":"mv-1","pass":1,"differences":18}
{"time":"t","level":"INFO","msg":"verify pass","move_id":"mv-12","pass":1,"differences":0}
{"time":"t","level":"INFO","msg":"verify pass","move_id":"mv-1","pass":2,"differences":3}
{"time":"t","level":"INFO","msg":"final verify pass repaired differences","move_id":"mv-1","pass":1,"differences":1}
{"time":"t","level":"INFO","msg":"source fenced","move_id":"mv-1"}
not json "mv-1"
{"time":"t","level":"INFO","msg":"verify pass","tenant":"mv-1","move_id":"mv-2"}
`
	v, f := logPasses(strings.NewReader(log), "mv-1")
	if v != 2 || f != 1 {
		t.Errorf("passes = %d, %d; want 2, 1", v, f)
	}
	if v, f := logPasses(strings.NewReader(log), "mv-9"); v != 0 || f != 0 {
		t.Errorf("unknown move: %d, %d", v, f)
	}
}

func TestPercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[float64]float64{50: 50, 95: 95, 99: 99, 100: 100, 1: 1} {
		if got := durPct(ds, p); got != want {
			t.Errorf("p%v = %v ms, want %v", p, got, want)
		}
	}
	if ds[0] != 100*time.Millisecond {
		t.Error("durPct sorted its argument in place")
	}
	if durPct(nil, 99) != 0 || floatPct(nil, 50) != 0 {
		t.Error("empty: want 0")
	}
	// Nearest rank on few samples: p99 of 20 moves is the largest.
	xs := []float64{3, 1, 2, 20, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19}
	if floatPct(xs, 99) != 20 || floatPct(xs, 95) != 19 || floatPct(xs, 50) != 10 {
		t.Errorf("floatPct: p99 %v p95 %v p50 %v", floatPct(xs, 99), floatPct(xs, 95), floatPct(xs, 50))
	}
}

func TestCutoverWindowsAndSummarize(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	runs := []moveRun{
		{Final: moveView{Phase: "done", PauseMS: 500}, Seen: map[string]time.Time{"verify": t0, "cleanup": t0.Add(10 * time.Second)}},
		{Final: moveView{Phase: "failed"}, Seen: map[string]time.Time{"verify": t0.Add(20 * time.Second)}}, // never cut over
	}
	ws := cutoverWindows(runs, time.Second)
	if len(ws) != 1 || !ws[0].from.Equal(t0.Add(8500*time.Millisecond)) || !ws[0].to.Equal(t0.Add(11*time.Second)) {
		t.Fatalf("windows = %+v", ws)
	}
	r := "http://127.0.0.1:28000"
	samples := []sample{
		{kind: kindCreate, router: r, sent: t0.Add(9 * time.Second), latency: 600 * time.Millisecond, status: 201},
		{kind: kindUpdate, router: r, sent: t0.Add(2 * time.Second), latency: 5 * time.Millisecond, status: 200},
		{kind: kindDelete, router: r, sent: t0.Add(11 * time.Second), latency: 7 * time.Millisecond, status: 204},
		{kind: kindDelete, router: r, sent: t0.Add(30 * time.Second), latency: 7 * time.Millisecond, status: 404},
		{kind: kindCreate, router: r, sent: t0.Add(9 * time.Second), latency: 5 * time.Second, status: 503, problem: "tenant-fenced"},
		{kind: kindRead, router: r, sent: t0.Add(10 * time.Second), latency: 3 * time.Millisecond, status: 200},
		{kind: kindRead, router: r, sent: t0.Add(40 * time.Second), latency: 2 * time.Millisecond, status: 0},
	}
	st := summarize(samples, ws)
	if st.unexpected != 3 {
		t.Errorf("unexpected = %d, want 3", st.unexpected)
	}
	if len(st.writesNear) != 2 || len(st.writesFar) != 1 || len(st.readsNear) != 1 || len(st.readsFar) != 0 {
		t.Errorf("split: near %v far %v reads near %v far %v", st.writesNear, st.writesFar, st.readsNear, st.readsFar)
	}
	if st.counts[kindCreate]["503 tenant-fenced"] != 1 || st.counts[kindRead]["transport"] != 1 || st.counts[kindDelete]["204"] != 1 {
		t.Errorf("counts = %v", st.counts)
	}
	if st.bad[r]["delete 404"] != 1 || st.bad[r]["create 503 tenant-fenced"] != 1 {
		t.Errorf("bad = %v", st.bad)
	}
}

func TestProblemOf(t *testing.T) {
	body := []byte(`{"type":"https://meridian.dev/problems/tenant-fenced","title":"Service Unavailable","status":503}`)
	if got := problemOf(kindCreate, 503, body); got != "tenant-fenced" {
		t.Errorf("got %q", got)
	}
	if got := problemOf(kindCreate, 201, body); got != "" {
		t.Errorf("expected status: %q", got)
	}
	if got := problemOf(kindRead, 502, []byte("<html>")); got != "" {
		t.Errorf("not JSON: %q", got)
	}
}

func TestPickWriteAndPool(t *testing.T) {
	if pickWrite(0, 0.99) != kindCreate || pickWrite(100, 0.1) != kindCreate || pickWrite(100, 0.5) != kindUpdate ||
		pickWrite(100, 0.9) != kindDelete {
		t.Error("pickWrite")
	}
	p := &idPool{}
	rng := rand.New(rand.NewPCG(1, 2))
	if _, ok := p.take(rng); ok {
		t.Error("take from an empty pool")
	}
	p.put("a")
	p.put("b")
	x, _ := p.take(rng)
	y, _ := p.take(rng)
	if x == y || p.size() != 0 {
		t.Errorf("took %q %q, left %d", x, y, p.size())
	}
}

func TestPickShards(t *testing.T) {
	shards := []shardInfo{
		{ID: "us-east-1", HomeRegion: "us-east", State: "active"}, {ID: "us-east-2", HomeRegion: "us-east", State: "active"},
		{ID: "us-west-2", HomeRegion: "us-west", State: "active"}, {ID: "us-west-1", HomeRegion: "us-west", State: "draining"},
		{ID: "eu-west-1", HomeRegion: "eu-west", State: "active"},
	}
	a, b, err := pickShards("", "us-east-2", shards)
	if err != nil || a.ID != "us-east-2" || b.ID != "us-west-2" {
		t.Errorf("default: %v %v %v", a.ID, b.ID, err)
	}
	a, b, err = pickShards("", "us-west-2", shards) // the region after us-west, wrapping (eu-west, us-east, us-west)
	if err != nil || b.ID != "eu-west-1" {
		t.Errorf("wrap: %v %v %v", a.ID, b.ID, err)
	}
	a, b, err = pickShards("eu-west-1,us-east-1", "us-east-2", shards)
	if err != nil || a.ID != "eu-west-1" || b.ID != "us-east-1" {
		t.Errorf("flag: %v %v %v", a.ID, b.ID, err)
	}
	if _, _, err := pickShards("eu-west-1,nope", "us-east-2", shards); err == nil {
		t.Error("unknown shard in -move-shards")
	}
	if _, _, err := pickShards("", "gone", shards); err == nil {
		t.Error("tenant on an unknown shard")
	}
	if _, _, err := pickShards("", "us-east-1", shards[:2]); err == nil {
		t.Error("one region only")
	}
}

func TestMoveFigures(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	r := moveRun{
		Asked: t0, Ended: t0.Add(20 * time.Second),
		Final:        moveView{Phase: "done", RowsCopied: 20000, RowsTotal: 20000, PauseMS: 300},
		Ctl:          &ctlDelta{PhaseSeconds: map[string]float64{"backfill": 2, "verify": 1, "cutover": 0.5}},
		VerifyPasses: 2, FinalPasses: 1,
		Holds: map[string]holdDelta{"a": {Count: 2, Sum: 0.2, Buckets: map[float64]float64{0.256: 2}}, "b": {Count: 1, Sum: 0.1}},
	}
	f := r.figures()
	if f.backfillRate != 10000 || f.verifyRate != 40000 || f.finalRate != 40000 || f.verifyRateIsBound || f.total != 20*time.Second ||
		f.holds.Count != 3 {
		t.Errorf("figures = %+v", f)
	}
	// Without the controller's metrics and log: backfill from the polled phases, verify unknown.
	r.Ctl, r.VerifyPasses, r.FinalPasses = nil, 0, 0
	r.Seen = map[string]time.Time{"backfill": t0.Add(2 * time.Second), "verify": t0.Add(6 * time.Second)}
	f = r.figures()
	if f.backfillRate != 5000 || f.verifyRate != 0 || !f.verifyRateIsBound || f.finalRate != 0 {
		t.Errorf("without metrics = %+v", f)
	}
	seen := map[string]time.Time{}
	notePhase(seen, "backfill", t0)
	notePhase(seen, "cleanup", t0.Add(time.Second))
	notePhase(seen, "backfill", t0.Add(time.Hour))
	if !seen["requested"].Equal(t0) || !seen["verify"].Equal(t0.Add(time.Second)) || !seen["backfill"].Equal(t0) || len(seen) != 6 {
		t.Errorf("notePhase: %v", seen)
	}
}

func TestUnapplied(t *testing.T) {
	for _, tc := range []struct {
		st      int
		problem string
		want    bool
	}{
		{429, "rate-limited", true}, {503, "tenant-fenced", true}, {503, "overloaded", true},
		{503, "service-unavailable", false}, {504, "gateway-timeout", false}, {0, "", false}, {500, "", false},
	} {
		if got := unapplied(tc.st, tc.problem); got != tc.want {
			t.Errorf("%d %s: %v", tc.st, tc.problem, got)
		}
	}
}

func TestExpectedStatus(t *testing.T) {
	for _, tc := range []struct {
		kind string
		st   int
		ok   bool
	}{
		{kindCreate, 201, true}, {kindCreate, 200, false}, {kindUpdate, 200, true}, {kindDelete, 204, true},
		{kindDelete, 404, false}, {kindRead, 200, true}, {kindRead, 503, false}, {kindRead, 0, false},
		{kindCreate, http.StatusTooManyRequests, false},
	} {
		if expected(tc.kind, tc.st) != tc.ok {
			t.Errorf("%s %d: expected = %v", tc.kind, tc.st, !tc.ok)
		}
	}
}
