package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// counter is a test server that counts requests and optionally delays or fails them.
type counter struct {
	hits  atomic.Int64
	delay time.Duration
	// status picks the answer for request seq (from the "seq" query parameter); nil means 200.
	status func(seq int) int
	srv    *httptest.Server
}

func newCounter(t *testing.T, delay time.Duration, status func(int) int) *counter {
	t.Helper()
	c := &counter{delay: delay, status: status}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.hits.Add(1)
		if got := r.Header.Get("Authorization"); got != "Bearer test" {
			http.Error(w, "no token: "+got, http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodPost {
			b, _ := io.ReadAll(r.Body)
			if !bytes.HasPrefix(b, []byte(`{"data":`)) {
				http.Error(w, "bad body "+string(b), http.StatusBadRequest)
				return
			}
		}
		if c.delay > 0 {
			time.Sleep(c.delay) // the injected handler delay under test, not a wait
		}
		code := http.StatusOK
		if c.status != nil {
			seq, _ := strconv.Atoi(r.URL.Query().Get("seq"))
			code = c.status(seq)
		}
		w.WriteHeader(code)
		io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *counter) target(name, method string) Target {
	h := http.Header{"Authorization": {"Bearer test"}, "Content-Type": {"application/json"}}
	return Target{Name: name, New: func(worker int, seq uint64) Request {
		r := Request{Method: method, URL: fmt.Sprintf("%s/x?seq=%d", c.srv.URL, seq), Header: h}
		if method == http.MethodPost {
			r.Body = fmt.Appendf(nil, `{"data":{"w":%d}}`, worker)
		}
		return r
	}}
}

// waitFor polls f until it returns nil or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: %v", timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func checkOrdered(t *testing.T, r TargetResult) {
	t.Helper()
	if r.OK > 0 && !(0 < r.P50 && r.P50 <= r.P90 && r.P90 <= r.P99 && r.P99 <= r.Max && r.Mean <= r.Max) {
		t.Errorf("%s: percentiles out of order: p50 %s p90 %s p99 %s max %s mean %s", r.Name, r.P50, r.P90, r.P99, r.Max, r.Mean)
	}
	if r.Requests != r.OK+r.Errors {
		t.Errorf("%s: requests %d != ok %d + errors %d", r.Name, r.Requests, r.OK, r.Errors)
	}
	var sum int64
	for _, n := range r.ErrorsByStatus {
		sum += n
	}
	if sum != r.Errors {
		t.Errorf("%s: errors by status sum to %d, errors %d", r.Name, sum, r.Errors)
	}
}

func TestRunCountsAddUp(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		cfg    Config
	}{
		{"count GET", http.MethodGet, Config{Concurrency: 8, Requests: 500}},
		{"count POST", http.MethodPost, Config{Concurrency: 3, Requests: 101}},
		{"duration", http.MethodGet, Config{Concurrency: 4, Duration: 150 * time.Millisecond}},
		{"duration and warmup", http.MethodGet, Config{Concurrency: 4, Duration: 100 * time.Millisecond, Warmup: 50 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newCounter(t, 0, nil), newCounter(t, 0, nil)
			rep, err := Run(t.Context(), tc.cfg, []Target{a.target("a", tc.method), b.target("b", tc.method)})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Mode != ModeSequential || strings.Join(rep.Schedule, ",") != "a,b" {
				t.Errorf("mode %s schedule %v, want sequential a,b", rep.Mode, rep.Schedule)
			}
			for i, c := range []*counter{a, b} {
				r := rep.Targets[i]
				checkOrdered(t, r)
				if r.Errors != 0 {
					t.Errorf("%s: errors %v", r.Name, r.ErrorsByStatus)
				}
				hits := c.hits.Load()
				if tc.cfg.Warmup == 0 && hits != r.Requests {
					t.Errorf("%s: server saw %d requests, report says %d", r.Name, hits, r.Requests)
				}
				if tc.cfg.Warmup > 0 && hits <= r.Requests {
					t.Errorf("%s: server saw %d requests, want more than the %d measured (warm-up)", r.Name, hits, r.Requests)
				}
				if tc.cfg.Requests > 0 && r.Requests != int64(tc.cfg.Requests) {
					t.Errorf("%s: %d requests, want %d", r.Name, r.Requests, tc.cfg.Requests)
				}
				if r.Requests == 0 || r.Throughput <= 0 || r.Elapsed <= 0 {
					t.Errorf("%s: nothing measured: %+v", r.Name, r)
				}
				if tc.cfg.Duration > 0 && r.Elapsed < tc.cfg.Duration {
					t.Errorf("%s: elapsed %s shorter than the configured %s", r.Name, r.Elapsed, tc.cfg.Duration)
				}
			}
		})
	}
}

func TestRunInjectedDelay(t *testing.T) {
	const delay = 5 * time.Millisecond
	c := newCounter(t, delay, nil)
	rep, err := Run(t.Context(), Config{Concurrency: 4, Requests: 80}, []Target{c.target("slow", http.MethodGet)})
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Targets[0]
	checkOrdered(t, r)
	if r.OK != 80 {
		t.Fatalf("ok %d, want 80 (errors %v)", r.OK, r.ErrorsByStatus)
	}
	// Lower bounds only: every request waited for the handler's delay.
	if r.P50 < delay || r.Mean < delay {
		t.Errorf("p50 %s mean %s, want ≥ %s", r.P50, r.Mean, delay)
	}
}

func TestRunErrorsByStatus(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	deadURL := closed.URL
	closed.Close()

	statuses := func(seq int) int { return []int{200, 404, 503, 302}[seq%4] }
	for _, tc := range []struct {
		name   string
		target func(t *testing.T) Target
		ok     int64
		errs   map[string]int64
	}{
		{"status mix", func(t *testing.T) Target { return newCounter(t, 0, statuses).target("mix", http.MethodGet) },
			200, map[string]int64{"404": 100, "503": 100}},
		{"no token", func(t *testing.T) Target {
			c := newCounter(t, 0, nil)
			return Target{Name: "anon", New: func(int, uint64) Request { return Request{URL: c.srv.URL} }}
		}, 0, map[string]int64{"401": 400}},
		{"transport", func(*testing.T) Target {
			return Target{Name: "dead", New: func(int, uint64) Request { return Request{URL: deadURL} }}
		}, 0, map[string]int64{TransportError: 400}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := Run(t.Context(), Config{Concurrency: 4, Requests: 400}, []Target{tc.target(t)})
			if err != nil {
				t.Fatal(err)
			}
			r := rep.Targets[0]
			checkOrdered(t, r)
			if r.Requests != 400 || r.OK != tc.ok {
				t.Errorf("requests %d ok %d, want 400 and %d", r.Requests, r.OK, tc.ok)
			}
			if fmt.Sprint(r.ErrorsByStatus) != fmt.Sprint(tc.errs) {
				t.Errorf("errors by status %v, want %v", r.ErrorsByStatus, tc.errs)
			}
			var md bytes.Buffer
			if err := rep.WriteMarkdown(&md); err != nil {
				t.Fatal(err)
			}
			for k, n := range tc.errs {
				if want := fmt.Sprintf("%s×%d", k, n); !strings.Contains(md.String(), want) {
					t.Errorf("markdown lacks %q:\n%s", want, md.String())
				}
			}
		})
	}
}

// arrivals logs which server answered, in arrival order, so a test can see interleaving.
type arrivals struct {
	mu  sync.Mutex
	log []string
}

func (a *arrivals) server(t *testing.T, name string, delay time.Duration) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.log = append(a.log, name)
		a.mu.Unlock()
		if delay > 0 {
			time.Sleep(delay) // injected handler delay
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// runs is the arrival log with consecutive repeats collapsed.
func (a *arrivals) runs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return collapse(a.log)
}

// collapse drops consecutive repeats: a a b b a → a b a.
func collapse(s []string) []string {
	var out []string
	for _, n := range s {
		if len(out) == 0 || out[len(out)-1] != n {
			out = append(out, n)
		}
	}
	return out
}

// alternates reports whether s is a, b, a, b, … for at least two rounds each, followed only by
// further rounds of whichever target still had its share to run.
func alternates(s []string) bool {
	i := 0
	for i+1 < len(s) && s[i] == "a" && s[i+1] == "b" {
		i += 2
	}
	if i < 4 {
		return false
	}
	for _, n := range s[i:] {
		if n != s[len(s)-1] {
			return false
		}
	}
	return true
}

func simple(name, url string) Target {
	return Target{Name: name, New: func(int, uint64) Request { return Request{URL: url} }}
}

func TestRunSideBySide(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"by duration", Config{Concurrency: 4, SideBySide: true, Duration: 500 * time.Millisecond, Round: 100 * time.Millisecond}},
		// Short rounds and slow handlers so the count takes many rounds.
		{"by count", Config{Concurrency: 4, SideBySide: true, Requests: 300, Round: 5 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log arrivals
			const delayB = 2 * time.Millisecond
			a, b := log.server(t, "a", time.Millisecond), log.server(t, "b", delayB)
			rep, err := Run(t.Context(), tc.cfg, []Target{simple("a", a.URL), simple("b", b.URL)})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Mode != ModeSideBySide || rep.Round != tc.cfg.Round {
				t.Errorf("mode %s round %s", rep.Mode, rep.Round)
			}
			if !alternates(rep.Schedule) {
				t.Fatalf("schedule %v does not alternate a, b, a, b … (then the one with rounds left)", rep.Schedule)
			}
			// Rounds never overlap: what the servers saw follows the schedule in order. (A round
			// may see no request at all on a loaded machine, so the servers' runs are an ordered
			// subsequence of the schedule, not always all of it.)
			if got := log.runs(); !inOrder(got, rep.Schedule) {
				t.Errorf("servers saw rounds %v, schedule says %v", got, rep.Schedule)
			}
			ra, rb := rep.Targets[0], rep.Targets[1]
			checkOrdered(t, ra)
			checkOrdered(t, rb)
			if ra.Errors+rb.Errors != 0 {
				t.Errorf("errors: %v %v", ra.ErrorsByStatus, rb.ErrorsByStatus)
			}
			if tc.cfg.Requests > 0 && (ra.Requests != 300 || rb.Requests != 300) {
				t.Errorf("requests a %d b %d, want 300 each", ra.Requests, rb.Requests)
			}
			if tc.cfg.Duration > 0 && (ra.Elapsed < tc.cfg.Duration || rb.Elapsed < tc.cfg.Duration) {
				t.Errorf("elapsed a %s b %s, want ≥ %s each", ra.Elapsed, rb.Elapsed, tc.cfg.Duration)
			}
			if rb.P50 < delayB {
				t.Errorf("b p50 %s, want ≥ %s", rb.P50, delayB)
			}
			if len(rep.Ratios) != 1 {
				t.Fatalf("ratios %+v, want one", rep.Ratios)
			}
			x := rep.Ratios[0]
			if x.Target != "b" || x.Baseline != "a" || x.Throughput != rb.Throughput/ra.Throughput ||
				x.P50Delta != rb.P50-ra.P50 || x.P99Delta != rb.P99-ra.P99 {
				t.Errorf("ratio %+v does not match a %+v b %+v", x, ra, rb)
			}
		})
	}
}

func TestRunCancelled(t *testing.T) {
	c := newCounter(t, time.Millisecond, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	type result struct {
		rep *Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := Run(ctx, Config{Concurrency: 4, Duration: time.Hour}, []Target{c.target("t", http.MethodGet)})
		done <- result{rep, err}
	}()
	waitFor(t, 10*time.Second, func() error {
		if n := c.hits.Load(); n < 50 {
			return fmt.Errorf("%d hits", n)
		}
		return nil
	})
	cancel()
	res := <-done
	rep, err := res.rep, res.err
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if rep == nil || rep.Targets[0].OK < 40 || rep.Targets[0].Errors != 0 {
		t.Fatalf("partial report %+v: want the requests before the cancel, none counted as errors", rep)
	}
}

func TestRunBadInput(t *testing.T) {
	ok := simple("a", "http://127.0.0.1:1/")
	for _, tc := range []struct {
		name    string
		cfg     Config
		targets []Target
		want    error
	}{
		{"no targets", Config{}, nil, ErrNoTargets},
		{"no name", Config{}, []Target{{New: ok.New}}, ErrBadTarget},
		{"no factory", Config{}, []Target{{Name: "x"}}, ErrBadTarget},
		{"duplicate", Config{}, []Target{ok, ok}, ErrBadTarget},
		{"negative concurrency", Config{Concurrency: -1}, []Target{ok}, ErrBadConfig},
		{"negative duration", Config{Duration: -time.Second}, []Target{ok}, ErrBadConfig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Run(t.Context(), tc.cfg, tc.targets); !errors.Is(err, tc.want) {
				t.Errorf("err %v, want %v", err, tc.want)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	seq := func(n int) []time.Duration {
		s := make([]time.Duration, n)
		for i := range s {
			s[i] = time.Duration(i + 1)
		}
		return s
	}
	for _, tc := range []struct {
		n    int
		p    float64
		want time.Duration
	}{
		{0, 50, 0}, {1, 50, 1}, {1, 99, 1}, {2, 50, 1}, {3, 50, 2}, {100, 50, 50}, {100, 90, 90},
		{100, 99, 99}, {100, 100, 100}, {1000, 99, 990}, {7, 99, 7},
	} {
		if got := percentile(seq(tc.n), tc.p); got != tc.want {
			t.Errorf("p%v of 1..%d = %d, want %d", tc.p, tc.n, got, tc.want)
		}
	}
}

func TestReportOutput(t *testing.T) {
	rep := &Report{
		Mode: ModeSideBySide, Concurrency: 16, Duration: 10 * time.Second, Round: 2 * time.Second,
		Schedule: []string{"direct", "router", "direct", "router"},
		Targets: []TargetResult{
			{Name: "direct", Requests: 1000, OK: 1000, Elapsed: 10 * time.Second, Throughput: 100,
				P50: 1500 * time.Microsecond, P90: 2 * time.Millisecond, P99: 3 * time.Millisecond, Max: 9 * time.Millisecond},
			{Name: "router", Requests: 905, OK: 900, Errors: 5, ErrorsByStatus: map[string]int64{"429": 5},
				Elapsed: 10 * time.Second, Throughput: 90, P50: 1750 * time.Microsecond, P90: 2500 * time.Microsecond,
				P99: 4 * time.Millisecond, Max: 12 * time.Millisecond},
		},
	}
	rep.Ratios = ratios(rep.Targets)

	var md bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| direct | 1000 | 0 | 100 | 1.500 | 2.000 | 3.000 | 9.000 |",
		"| router | 905 | 5 (429×5) | 90 | 1.750 | 2.500 | 4.000 | 12.000 |",
		"| router / direct | 0.900 (-10.0%) | +0.250 | +1.000 |",
		"rounds of 2s (4 rounds: direct, router, direct, router)",
	} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}

	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Mode    string `json:"mode"`
		Targets []struct {
			Name           string           `json:"name"`
			P50            float64          `json:"p50_ms"`
			Throughput     float64          `json:"throughput_rps"`
			ErrorsByStatus map[string]int64 `json:"errors_by_status"`
		} `json:"targets"`
		Ratios []struct {
			Throughput float64 `json:"throughput_ratio"`
			P50Delta   float64 `json:"p50_delta_ms"`
		} `json:"ratios"`
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if got.Mode != ModeSideBySide || len(got.Targets) != 2 || got.Targets[1].P50 != 1.75 ||
		got.Targets[0].Throughput != 100 || got.Targets[1].ErrorsByStatus["429"] != 5 ||
		len(got.Ratios) != 1 || got.Ratios[0].Throughput != 0.9 || got.Ratios[0].P50Delta != 0.25 {
		t.Errorf("JSON %s", raw)
	}
}

// BenchmarkRun measures loadgen's own cost per request against a loopback server.
func BenchmarkRun(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	b.ResetTimer()
	rep, err := Run(context.Background(), Config{Concurrency: 4, Requests: b.N}, []Target{simple("x", srv.URL)})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(rep.Targets[0].Throughput, "req/s")
}

// inOrder reports whether the observed runs can be matched, in order, to rounds of schedule,
// with a run spanning consecutive rounds of the same target.
func inOrder(runs, schedule []string) bool {
	i := 0
	for _, r := range runs {
		for i < len(schedule) && schedule[i] != r {
			i++
		}
		if i == len(schedule) {
			return false
		}
		for i < len(schedule) && schedule[i] == r {
			i++
		}
	}
	return true
}
