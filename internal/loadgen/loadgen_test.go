package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
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
			}
		})
	}
}

// roundTripFunc serves a request in the caller's goroutine.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// fakeServer is an in-memory server for runs inside a synctest bubble: no sockets, so the
// bubble's clock moves only when every goroutine waits on it, and a handler's delay, a round's
// length and a schedule are exact. It counts requests per path and records when each arrived.
type fakeServer struct {
	delay map[string]time.Duration // per path; missing = 0
	mu    sync.Mutex
	hits  map[string]int64
	at    []time.Time
}

func (f *fakeServer) client() *http.Client {
	f.hits = map[string]int64{}
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Body != nil {
			defer r.Body.Close()
		}
		f.mu.Lock()
		f.hits[r.URL.Path]++
		f.at = append(f.at, time.Now())
		f.mu.Unlock()
		time.Sleep(f.delay[r.URL.Path]) // the bubble's clock: exact, and instant in real time
		rec := httptest.NewRecorder()
		rec.WriteHeader(http.StatusOK)
		return rec.Result(), nil
	})}
}

func (f *fakeServer) count(path string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits[path]
}

// TestRunClosedLoopStopsAtDuration runs a closed loop bounded by time and by a much larger count
// on the bubble's clock. Each of 4 workers sends at 0, 10, …, 140 ms (the handler takes 10 ms)
// and stops when its answer at 150 ms finds the duration over: 60 requests, measured over
// exactly 150 ms, after a 50 ms warm-up of 20 unrecorded ones. A loop that ignored the duration
// would send the count; one that stopped early or late would send another number.
func TestRunClosedLoopStopsAtDuration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const workers, step, d, warmup = 4, 10 * time.Millisecond, 150 * time.Millisecond, 50 * time.Millisecond
		srv := &fakeServer{delay: map[string]time.Duration{"/x": step}}
		// A loop that never stops is cut off by this (fake) minute rather than hanging the test.
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		start := time.Now()
		rep, err := Run(ctx, Config{Concurrency: workers, Duration: d, Requests: 1000, Warmup: warmup,
			Client: srv.client()}, []Target{simple("x", "http://fake.test/x")})
		if err != nil {
			t.Fatal(err)
		}
		r := rep.Targets[0]
		checkOrdered(t, r)
		want := int64(workers * (d / step))
		if r.Requests != want || r.OK != want {
			t.Errorf("requests %d ok %d, want %d: the run should end when the duration is over", r.Requests, r.OK, want)
		}
		if hits, warm := srv.count("/x"), int64(workers*(warmup/step)); hits != want+warm {
			t.Errorf("server saw %d requests, want %d measured + %d warm-up", hits, want, warm)
		}
		if r.Elapsed != d || time.Since(start) != warmup+d {
			t.Errorf("elapsed %s (run %s) on the bubble's clock, want %s (run %s)", r.Elapsed, time.Since(start), d, warmup+d)
		}
		if r.P50 != step || r.Max != step {
			t.Errorf("p50 %s max %s, want the handler's %s", r.P50, r.Max, step)
		}
	})
}

// TestRunSideBySideRounds runs two targets side by side for 500 ms in 100 ms rounds on the
// bubble's clock: five rounds each, alternating, each round exactly 100 ms, and every worker
// sending back to back within its round (a answers in 1 ms, b in 2 ms).
func TestRunSideBySideRounds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const workers, d, round = 4, 500 * time.Millisecond, 100 * time.Millisecond
		srv := &fakeServer{delay: map[string]time.Duration{"/a": time.Millisecond, "/b": 2 * time.Millisecond}}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		start := time.Now()
		rep, err := Run(ctx, Config{Concurrency: workers, SideBySide: true, Duration: d, Round: round,
			Client: srv.client()}, []Target{simple("a", "http://fake.test/a"), simple("b", "http://fake.test/b")})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := strings.Join(rep.Schedule, ","), "a,b,a,b,a,b,a,b,a,b"; got != want {
			t.Errorf("schedule %s, want %s", got, want)
		}
		for _, r := range rep.Targets {
			checkOrdered(t, r)
			want := int64(workers) * int64(d/srv.delay["/"+r.Name])
			if r.Requests != want || srv.count("/"+r.Name) != want {
				t.Errorf("%s: %d requests (server saw %d), want %d", r.Name, r.Requests, srv.count("/"+r.Name), want)
			}
			if r.Elapsed != d {
				t.Errorf("%s: elapsed %s on the bubble's clock, want %s", r.Name, r.Elapsed, d)
			}
		}
		if took := time.Since(start); took != 2*d {
			t.Errorf("run took %s on the bubble's clock, want %s (two targets, rounds never overlap)", took, 2*d)
		}
	})
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
	testenv.WaitFor(t, 10*time.Second, func() error {
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
		{"negative rate", Config{Rate: -1}, []Target{ok}, ErrBadConfig},
		{"NaN rate", Config{Rate: math.NaN()}, []Target{ok}, ErrBadConfig},
		{"infinite rate", Config{Rate: math.Inf(1)}, []Target{ok}, ErrBadConfig},
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

// stamps is a test server that records when each request arrived.
type stamps struct {
	mu  sync.Mutex
	at  []time.Time
	srv *httptest.Server
}

func newStamps(t *testing.T) *stamps {
	t.Helper()
	s := &stamps{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.at = append(s.at, time.Now())
		s.mu.Unlock()
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *stamps) times() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.at)
}

func TestRunOpenLoopRate(t *testing.T) {
	srv := newStamps(t)
	const rate, d = 200, time.Second
	rep, err := Run(t.Context(), Config{Concurrency: 8, Rate: rate, Duration: d}, []Target{simple("x", srv.srv.URL)})
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Targets[0]
	checkOrdered(t, r)
	// The round plans exactly rate × d slots; every one is sent or counted as missed.
	if r.Requests+r.Missed != rate || r.Errors != 0 {
		t.Fatalf("requests %d + missed %d, want %d scheduled (errors %v)", r.Requests, r.Missed, rate, r.ErrorsByStatus)
	}
	// Generous: a busy 2-core machine may fall behind now and then, but a closed loop against
	// this server would send thousands, and a sender that misses most slots is broken.
	if r.Requests < rate*3/4 {
		t.Errorf("%d requests sent, want about %d (missed %d)", r.Requests, rate, r.Missed)
	}
	at := srv.times()
	if int64(len(at)) != r.Requests {
		t.Fatalf("server saw %d requests, report says %d", len(at), r.Requests)
	}
	// Spread over the second, not sent in a burst: the last slot is due at 995 ms.
	if spread := at[len(at)-1].Sub(at[0]); spread < 900*time.Millisecond {
		t.Errorf("requests arrived within %s, want them spread over about %s", spread, d)
	}
	if firstQuarter := countBefore(at, at[0].Add(d/4)); firstQuarter > rate/2 {
		t.Errorf("%d requests in the first quarter second, want about %d", firstQuarter, rate/4)
	}
	if rep.Rate != rate || r.Elapsed < d {
		t.Errorf("report rate %v elapsed %s, want %d and ≥ %s", rep.Rate, r.Elapsed, rate, d)
	}
}

func countBefore(at []time.Time, t time.Time) int {
	n := 0
	for _, a := range at {
		if a.Before(t) {
			n++
		}
	}
	return n
}

func TestRunOpenLoopBounds(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       Config
		scheduled int64 // per target: sent + missed
		minTime   time.Duration
	}{
		// Count only: 60 slots at 10 ms, the last due at 590 ms.
		{"count", Config{Concurrency: 4, Rate: 100, Requests: 60}, 60, 590 * time.Millisecond},
		// Duration and count: the count is reached first.
		{"count before duration", Config{Concurrency: 4, Rate: 100, Requests: 30, Duration: time.Hour}, 30, 290 * time.Millisecond},
		// Side by side: each 200 ms round restarts the schedule (20 slots), three rounds each.
		{"side by side", Config{Concurrency: 4, Rate: 100, Duration: 600 * time.Millisecond, SideBySide: true,
			Round: 200 * time.Millisecond}, 60, 600 * time.Millisecond},
		// Side by side by count: slots a round misses are offered again in later rounds, so
		// exactly the count is sent.
		{"side by side count", Config{Concurrency: 4, Rate: 100, Requests: 50, SideBySide: true,
			Round: 200 * time.Millisecond}, 0, 490 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newCounter(t, 0, nil), newCounter(t, 0, nil)
			rep, err := Run(t.Context(), tc.cfg, []Target{a.target("a", http.MethodGet), b.target("b", http.MethodGet)})
			if err != nil {
				t.Fatal(err)
			}
			if tc.cfg.SideBySide && !alternates(rep.Schedule) {
				t.Errorf("schedule %v does not alternate", rep.Schedule)
			}
			for i, c := range []*counter{a, b} {
				r := rep.Targets[i]
				checkOrdered(t, r)
				if r.Errors != 0 || c.hits.Load() != r.Requests {
					t.Errorf("%s: errors %v, server saw %d of %d", r.Name, r.ErrorsByStatus, c.hits.Load(), r.Requests)
				}
				if tc.scheduled > 0 && r.Requests+r.Missed != tc.scheduled {
					t.Errorf("%s: requests %d + missed %d, want %d scheduled", r.Name, r.Requests, r.Missed, tc.scheduled)
				}
				if tc.scheduled == 0 && r.Requests != int64(tc.cfg.Requests) {
					t.Errorf("%s: %d requests, want %d", r.Name, r.Requests, tc.cfg.Requests)
				}
				if r.Requests < 10 {
					t.Errorf("%s: only %d requests sent", r.Name, r.Requests)
				}
				// The schedule paces the requests: they cannot all go out sooner than the last slot.
				if r.Elapsed < tc.minTime {
					t.Errorf("%s: elapsed %s, want ≥ %s (the last slot's time)", r.Name, r.Elapsed, tc.minTime)
				}
			}
		})
	}
}

func TestRunOpenLoopOverload(t *testing.T) {
	// The server takes 50 ms a request and two workers serve at most 40 req/s; 100 req/s are
	// scheduled, so the backlog grows by 60 slots a second and passes MaxBacklog (100 slots)
	// after about 1.7 s.
	const delay, d = 50 * time.Millisecond, 3 * time.Second
	c := newCounter(t, delay, nil)
	start := time.Now()
	rep, err := Run(t.Context(), Config{Concurrency: 2, Rate: 100, Duration: d}, []Target{c.target("slow", http.MethodGet)})
	wall := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Targets[0]
	checkOrdered(t, r)
	if r.Errors != 0 || c.hits.Load() != r.Requests {
		t.Fatalf("errors %v, server saw %d of %d", r.ErrorsByStatus, c.hits.Load(), r.Requests)
	}
	if r.Requests+r.Missed != 300 || r.Missed < 100 {
		t.Errorf("requests %d + missed %d, want 300 scheduled and well over 100 missed", r.Requests, r.Missed)
	}
	// The round stopped sending once it was MaxBacklog behind (by about 1.7 s; at most 40 req/s
	// before that). Sending on until the deadline, it would have sent about 120.
	if r.Requests >= 100 {
		t.Errorf("%d requests sent, want the round stopped once %s behind schedule (≈ 70)", r.Requests, MaxBacklog)
	}
	// Latency counts the wait for a free worker: it grows from 50 ms towards MaxBacklog. A
	// closed loop would report about 50 ms throughout.
	if r.P50 < 4*delay || r.Max < MaxBacklog/2 {
		t.Errorf("p50 %s max %s, want latencies growing well past %s (measured from the schedule)", r.P50, r.Max, delay)
	}
	// Ends on time: the round keeps its length, no more, and does not drain the backlog (that
	// would take another 2.5 s at 40 req/s). The bound is slack for a loaded machine.
	if r.Elapsed < d || r.Elapsed > d+time.Second || wall > d+2*time.Second {
		t.Errorf("elapsed %s (Run took %s), want %s plus the requests in flight", r.Elapsed, wall, d)
	}

	var md bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Mode sequential, open loop at 100 req/s per target, 2 workers, 3s per target.",
		"from each request's scheduled send time",
		"| target | requests | missed | errors |",
		fmt.Sprintf("| slow | %d | %d | 0 |", r.Requests, r.Missed),
		fmt.Sprintf("Note: slow missed %d scheduled requests", r.Missed),
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
		Rate    float64 `json:"rate_rps"`
		Targets []struct {
			Missed *int64 `json:"missed"`
		} `json:"targets"`
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if got.Rate != 100 || len(got.Targets) != 1 || got.Targets[0].Missed == nil || *got.Targets[0].Missed != r.Missed {
		t.Errorf("JSON %s", raw)
	}
}

func TestRunOpenLoopCancelled(t *testing.T) {
	c := newCounter(t, 0, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	var rep *Report
	go func() {
		var err error
		rep, err = Run(ctx, Config{Concurrency: 2, Rate: 200, Duration: time.Hour}, []Target{c.target("t", http.MethodGet)})
		done <- err
	}()
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := c.hits.Load(); n < 21 {
			return fmt.Errorf("%d hits", n)
		}
		return nil
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	// The hour's unsent slots are not the target's fault: nothing counted as missed.
	if r := rep.Targets[0]; r.Requests < 15 || r.Missed != 0 || r.Errors != 0 {
		t.Errorf("partial result %+v: want the requests sent, none missed or failed", r)
	}
}

func TestReportOutputClosedLoopHasNoMissed(t *testing.T) {
	rep := &Report{Mode: ModeSequential, Concurrency: 4, Duration: time.Second,
		Targets: []TargetResult{{Name: "a", Requests: 10, OK: 10, Elapsed: time.Second, Throughput: 10}}}
	var md bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if s := md.String(); strings.Contains(s, "missed") || strings.Contains(s, "open loop") ||
		!strings.Contains(s, "| target | requests | errors | req/s |") {
		t.Errorf("closed-loop markdown changed:\n%s", s)
	}
	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "missed") || strings.Contains(string(raw), "rate_rps") {
		t.Errorf("closed-loop JSON has open-loop fields: %s", raw)
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
