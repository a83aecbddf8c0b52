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
	at    map[string][]time.Time // per path, in arrival order
}

func (f *fakeServer) client() *http.Client {
	f.hits = map[string]int64{}
	f.at = map[string][]time.Time{}
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Body != nil {
			defer r.Body.Close()
		}
		f.mu.Lock()
		f.hits[r.URL.Path]++
		f.at[r.URL.Path] = append(f.at[r.URL.Path], time.Now())
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

// arrivals is when path's requests arrived, as offsets from start, in arrival order.
func (f *fakeServer) arrivals(path string, start time.Time) []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]time.Duration, len(f.at[path]))
	for i, at := range f.at[path] {
		out[i] = at.Sub(start)
	}
	return out
}

// every is n times from, from+step, from+2×step, …
func every(from time.Duration, n int, step time.Duration) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = from + time.Duration(i)*step
	}
	return out
}

// diffTimes describes the first difference between two lists of arrival offsets; "" if equal.
func diffTimes(got, want []time.Duration) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("request %d arrived at %s, want %s", i, got[i], want[i])
		}
	}
	if len(got) != len(want) {
		return fmt.Sprintf("%d requests arrived, want %d", len(got), len(want))
	}
	return ""
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

// TestRunBeforeRound checks that the hook runs before every warm-up and measured round, in the
// schedule's order, that its time is not measured, and that its error ends the run.
func TestRunBeforeRound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := &fakeServer{delay: map[string]time.Duration{"/a": time.Millisecond, "/b": time.Millisecond}}
		var calls []string
		hook := func(_ context.Context, target string, warmup bool) error {
			if warmup {
				target = "warm-" + target
			}
			calls = append(calls, target)
			time.Sleep(time.Second) // the hook's own time, which must not be measured
			return nil
		}
		targets := []Target{simple("a", "http://fake.test/a"), simple("b", "http://fake.test/b")}
		rep, err := Run(t.Context(), Config{Concurrency: 2, SideBySide: true, Duration: 200 * time.Millisecond,
			Round: 100 * time.Millisecond, Warmup: 10 * time.Millisecond, Client: srv.client(), BeforeRound: hook}, targets)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := strings.Join(calls, ","), "warm-a,warm-b,a,b,a,b"; got != want {
			t.Errorf("hook calls %s, want %s", got, want)
		}
		for _, r := range rep.Targets {
			if r.Elapsed != 200*time.Millisecond {
				t.Errorf("%s: elapsed %s, want 200ms (the hook's time is not measured)", r.Name, r.Elapsed)
			}
		}

		calls = nil
		_, err = Run(t.Context(), Config{Concurrency: 2, Duration: 100 * time.Millisecond, Client: srv.client(),
			BeforeRound: func(_ context.Context, target string, _ bool) error {
				calls = append(calls, target)
				if target == "b" {
					return errors.New("hook failed")
				}
				return nil
			}}, targets)
		if err == nil || err.Error() != "hook failed" {
			t.Errorf("err %v, want the hook's error", err)
		}
		if got := strings.Join(calls, ","); got != "a,b" {
			t.Errorf("sequential hook calls %s, want a,b", got)
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

// TestRunOpenLoopRate runs one target open loop at 200 req/s for 1 s on the bubble's clock, with
// 8 workers (far more than needed) and a server that answers in 1 ms. The round plans the 200
// slots due before the deadline, 5 ms apart, and sends each at exactly its time: none missed,
// none early (a burst), none late, so every latency is the server's 1 ms. It lasts exactly the
// second, though its last answer comes at 996 ms. A closed loop would send 8000 requests.
func TestRunOpenLoopRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const rate, d, delay = 200, time.Second, time.Millisecond
		srv := &fakeServer{delay: map[string]time.Duration{"/x": delay}}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		start := time.Now()
		rep, err := Run(ctx, Config{Concurrency: 8, Rate: rate, Duration: d, Client: srv.client()},
			[]Target{simple("x", "http://fake.test/x")})
		if err != nil {
			t.Fatal(err)
		}
		r := rep.Targets[0]
		checkOrdered(t, r)
		if r.Requests != rate || r.OK != rate || r.Missed != 0 {
			t.Errorf("requests %d ok %d missed %d, want all %d scheduled sent (errors %v)", r.Requests, r.OK, r.Missed, rate, r.ErrorsByStatus)
		}
		if diff := diffTimes(srv.arrivals("/x", start), every(0, rate, d/rate)); diff != "" {
			t.Errorf("not sent on the schedule of one request every %s: %s", d/rate, diff)
		}
		if r.P50 != delay || r.Max != delay || r.Mean != delay {
			t.Errorf("p50 %s max %s mean %s, want the handler's %s (every request sent on time)", r.P50, r.Max, r.Mean, delay)
		}
		if took := time.Since(start); rep.Rate != rate || r.Elapsed != d || took != d || r.Throughput != rate {
			t.Errorf("report rate %v elapsed %s throughput %v (run %s) on the bubble's clock, want %d, %s, %d (run %s)",
				rep.Rate, r.Elapsed, r.Throughput, took, rate, d, rate, d)
		}
	})
}

// TestRunOpenLoopBounds runs two targets open loop at 100 req/s (a slot every 10 ms) on the
// bubble's clock, bounded by a count, a duration or both, in turn or side by side. The server
// answers in 1 ms, so no slot is missed and every request arrives exactly at its slot's time. A
// round bounded by time lasts exactly its length; one bounded by a count alone ends when its
// last request is answered, 1 ms after that request's slot.
func TestRunOpenLoopBounds(t *testing.T) {
	const step, delay = 10 * time.Millisecond, time.Millisecond
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tc := range []struct {
		name     string
		cfg      Config
		schedule string
		at       map[string][]time.Duration // per target: arrivals, as offsets from the run's start
		elapsed  time.Duration              // per target
		took     time.Duration              // the whole run
	}{
		// Count only: 60 slots, the last due at 590 ms and answered at 591 ms, when b starts.
		{"count", Config{Concurrency: 4, Rate: 100, Requests: 60}, "a,b",
			map[string][]time.Duration{"a": every(0, 60, step), "b": every(ms(591), 60, step)},
			ms(591), ms(1182)},
		// Duration and count: the count is reached first, and the round ends with its last answer.
		{"count before duration", Config{Concurrency: 4, Rate: 100, Requests: 30, Duration: time.Hour}, "a,b",
			map[string][]time.Duration{"a": every(0, 30, step), "b": every(ms(291), 30, step)},
			ms(291), ms(582)},
		// Side by side: each 200 ms round restarts the schedule (20 slots), three rounds each,
		// each exactly 200 ms.
		{"side by side", Config{Concurrency: 4, Rate: 100, Duration: ms(600), SideBySide: true, Round: ms(200)},
			"a,b,a,b,a,b",
			map[string][]time.Duration{
				"a": slices.Concat(every(0, 20, step), every(ms(400), 20, step), every(ms(800), 20, step)),
				"b": slices.Concat(every(ms(200), 20, step), every(ms(600), 20, step), every(ms(1000), 20, step)),
			},
			ms(600), ms(1200)},
		// Side by side by count: two full rounds of 20, then a third with the 10 left that ends
		// with its last answer, 91 ms in; exactly the count is sent.
		{"side by side count", Config{Concurrency: 4, Rate: 100, Requests: 50, SideBySide: true, Round: ms(200)},
			"a,b,a,b,a,b",
			map[string][]time.Duration{
				"a": slices.Concat(every(0, 20, step), every(ms(400), 20, step), every(ms(800), 10, step)),
				"b": slices.Concat(every(ms(200), 20, step), every(ms(600), 20, step), every(ms(891), 10, step)),
			},
			ms(491), ms(982)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv := &fakeServer{delay: map[string]time.Duration{"/a": delay, "/b": delay}}
				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				defer cancel()
				cfg := tc.cfg
				cfg.Client = srv.client()
				start := time.Now()
				rep, err := Run(ctx, cfg, []Target{simple("a", "http://fake.test/a"), simple("b", "http://fake.test/b")})
				if err != nil {
					t.Fatal(err)
				}
				if got := strings.Join(rep.Schedule, ","); got != tc.schedule {
					t.Errorf("schedule %s, want %s", got, tc.schedule)
				}
				for _, r := range rep.Targets {
					checkOrdered(t, r)
					want := tc.at[r.Name]
					if r.Requests != int64(len(want)) || r.OK != r.Requests || r.Missed != 0 {
						t.Errorf("%s: requests %d ok %d missed %d, want %d sent, none missed (errors %v)",
							r.Name, r.Requests, r.OK, r.Missed, len(want), r.ErrorsByStatus)
					}
					if diff := diffTimes(srv.arrivals("/"+r.Name, start), want); diff != "" {
						t.Errorf("%s: not sent on the schedule: %s", r.Name, diff)
					}
					if r.P50 != delay || r.Max != delay {
						t.Errorf("%s: p50 %s max %s, want the handler's %s (every request sent on time)", r.Name, r.P50, r.Max, delay)
					}
					if r.Elapsed != tc.elapsed {
						t.Errorf("%s: elapsed %s on the bubble's clock, want %s", r.Name, r.Elapsed, tc.elapsed)
					}
				}
				if took := time.Since(start); took != tc.took {
					t.Errorf("run took %s on the bubble's clock, want %s", took, tc.took)
				}
			})
		})
	}
}

// TestRunOpenLoopOverload schedules 100 req/s (a slot every 10 ms) to a server that takes 50 ms
// a request, with two workers: 40 req/s at most. On the bubble's clock one worker sends at
// 0, 50, 100, … ms and the other at 10, 60, 110, …; the m-th pair (m from 0) takes slots 2m and
// 2m+1, due at 20m and 20m+10 ms, 30m ms late, and both answer 50+30m ms after their slots were
// due: the latency counts the wait for a free worker (a closed loop would report 50 ms).
//
// Over 3 s the schedule falls more than MaxBacklog behind at the 35th pair (1020 ms late, at
// 1700 ms): the round sends nothing more, 68 sent and the other 232 slots missed, and it still
// lasts exactly 3 s, not draining the backlog nor sending on to the deadline (120 requests).
// Over 1 s the deadline comes first, at the 21st pair (at 1000 ms): 40 sent, 60 missed, and the
// round ends when the request in flight is answered, at 1010 ms.
func TestRunOpenLoopOverload(t *testing.T) {
	const delay, step = 50 * time.Millisecond, 10 * time.Millisecond
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tc := range []struct {
		name                     string
		d                        time.Duration
		pairs                    int // requests sent: 2 × pairs
		missed                   int64
		elapsed                  time.Duration
		p50, p90, p99, max, mean time.Duration // of 50+30m ms for m < pairs, twice each
	}{
		{"stops at the backlog bound", 3 * time.Second, 34, 232, 3 * time.Second, ms(530), ms(950), ms(1040), ms(1040), ms(545)},
		{"stops at the deadline", time.Second, 20, 60, ms(1010), ms(320), ms(560), ms(620), ms(620), ms(335)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv := &fakeServer{delay: map[string]time.Duration{"/slow": delay}}
				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				defer cancel()
				start := time.Now()
				rep, err := Run(ctx, Config{Concurrency: 2, Rate: 100, Duration: tc.d, Client: srv.client()},
					[]Target{simple("slow", "http://fake.test/slow")})
				if err != nil {
					t.Fatal(err)
				}
				r := rep.Targets[0]
				checkOrdered(t, r)
				sent := int64(2 * tc.pairs)
				if r.Requests != sent || r.OK != sent || r.Missed != tc.missed {
					t.Errorf("requests %d ok %d missed %d, want %d sent and %d missed of %d scheduled (errors %v)",
						r.Requests, r.OK, r.Missed, sent, tc.missed, int64(tc.d/step), r.ErrorsByStatus)
				}
				var want []time.Duration
				for m := range tc.pairs {
					want = append(want, time.Duration(m)*delay, time.Duration(m)*delay+step)
				}
				if diff := diffTimes(srv.arrivals("/slow", start), want); diff != "" {
					t.Errorf("not sent as soon as a worker was free: %s", diff)
				}
				if r.P50 != tc.p50 || r.P90 != tc.p90 || r.P99 != tc.p99 || r.Max != tc.max || r.Mean != tc.mean {
					t.Errorf("p50 %s p90 %s p99 %s max %s mean %s, want %s %s %s %s %s (measured from the schedule)",
						r.P50, r.P90, r.P99, r.Max, r.Mean, tc.p50, tc.p90, tc.p99, tc.max, tc.mean)
				}
				if took := time.Since(start); r.Elapsed != tc.elapsed || took != tc.elapsed {
					t.Errorf("elapsed %s (run %s) on the bubble's clock, want %s", r.Elapsed, took, tc.elapsed)
				}

				var md bytes.Buffer
				if err := rep.WriteMarkdown(&md); err != nil {
					t.Fatal(err)
				}
				for _, want := range []string{
					fmt.Sprintf("Mode sequential, open loop at 100 req/s per target, 2 workers, %s per target.", tc.d),
					"from each request's scheduled send time",
					"| target | requests | missed | errors |",
					fmt.Sprintf("| slow | %d | %d | 0 |", sent, tc.missed),
					fmt.Sprintf("Note: slow missed %d scheduled requests", tc.missed),
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
				if got.Rate != 100 || len(got.Targets) != 1 || got.Targets[0].Missed == nil || *got.Targets[0].Missed != tc.missed {
					t.Errorf("JSON %s", raw)
				}
			})
		})
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

// TestRunTransportTimeout: through Config.Transport, Timeout ends a stalled request (counted as
// a transport error), and the worker's next requests are sent and answered as usual, under a
// fresh context; a 3xx is counted as success and not followed.
func TestRunTransportTimeout(t *testing.T) {
	var followed atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		case "/moved":
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		case "/elsewhere":
			followed.Add(1)
		}
	}))
	defer srv.Close()
	paths := []string{"/slow", "/fast", "/moved", "/slow", "/fast"}
	rep, err := Run(t.Context(), Config{Concurrency: 1, Requests: len(paths), Timeout: 100 * time.Millisecond,
		Transport: NewTransport(1)}, []Target{{Name: "t", New: func(_ int, seq uint64) Request {
		return Request{URL: srv.URL + paths[seq]}
	}}})
	if err != nil {
		t.Fatal(err)
	}
	tr := rep.Targets[0]
	if tr.Requests != 5 || tr.OK != 3 || tr.ErrorsByStatus[TransportError] != 2 || followed.Load() != 0 {
		t.Fatalf("requests %d, ok %d, errors %v, redirects followed %d; want 5, 3, 2 transport, 0",
			tr.Requests, tr.OK, tr.ErrorsByStatus, followed.Load())
	}
}
