// Package loadgen is Meridian's small HTTP load generator: N concurrent workers send requests to
// one or more named targets for a duration (or a request count), every latency is recorded, and
// the result is a Report per target (requests, errors by status, throughput, p50/p90/p99/max)
// that renders as a Markdown table for docs/BENCHMARKS.md or as JSON.
//
// Targets run one after another, or side by side: interleaved in one run as short rounds
// (A, B, A, B, …) so that noise from other work on the machine hits every target alike, and the
// report then gives each target's throughput ratio and p50/p99 deltas against the first.
//
// It is a closed-loop generator like wrk: each worker sends its next request when the last one
// is answered, so a stalled server gets fewer requests rather than queued ones (latencies under
// overload understate what an open-loop client would see). Every successful request's latency is
// kept in a slice sorted once at the end: exact percentiles, 8 bytes a sample, fine for the few
// million samples of a run. It never retries, follows redirects or sleeps between requests, and
// it counts only what it saw. Tests run it against httptest servers on loopback; cmd/bench wires
// it to a cluster.
package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Errors returned by Run.
var (
	// ErrNoTargets means Run was given no target.
	ErrNoTargets = errors.New("loadgen: no targets")
	// ErrBadTarget means a target has no name, a duplicate name or no request factory.
	ErrBadTarget = errors.New("loadgen: bad target")
	// ErrBadConfig means a negative or contradictory setting.
	ErrBadConfig = errors.New("loadgen: bad config")
)

// Defaults for the zero values of Config.
const (
	DefaultConcurrency = 16
	DefaultDuration    = 10 * time.Second
	DefaultRound       = 2 * time.Second
	DefaultTimeout     = 10 * time.Second
)

// TransportError is the ErrorsByStatus key for requests that got no HTTP response.
const TransportError = "transport"

// Request is one HTTP request to send. Header and Body are not modified by loadgen.
type Request struct {
	Method string
	URL    string
	Header http.Header
	Body   []byte
}

// Target is a named source of requests.
type Target struct {
	// Name identifies the target in reports; it must be unique within a run.
	Name string
	// New returns the request to send; worker is the worker's index (0 ≤ worker < concurrency)
	// and seq counts the target's requests from 0 across all workers and rounds. It is called
	// concurrently from every worker and must be safe for that.
	New func(worker int, seq uint64) Request
}

// Config configures Run. The zero value runs 16 workers for 10 s per target, one target after
// another.
type Config struct {
	// Concurrency is the number of workers; zero means DefaultConcurrency.
	Concurrency int
	// Duration is the measured time per target. Zero means DefaultDuration unless Requests is
	// set, in which case the run is bounded by the count alone.
	Duration time.Duration
	// Requests, when positive, caps the measured requests per target.
	Requests int
	// Warmup is sent to each target before measuring and not recorded. Zero means none.
	Warmup time.Duration
	// SideBySide interleaves the targets in rounds of Round instead of running them in turn.
	SideBySide bool
	// Round is the length of one side-by-side round; zero means DefaultRound.
	Round time.Duration
	// Timeout bounds each request of the client Run builds; zero means DefaultTimeout. It is
	// not applied to a Client given by the caller.
	Timeout time.Duration
	// Client sends the requests. Nil means a client over NewTransport(Concurrency) that never
	// follows redirects.
	Client *http.Client
}

// NewTransport returns a keep-alive transport sized so that every one of concurrency workers
// keeps its connection to each host between requests.
func NewTransport(concurrency int) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = concurrency
	t.MaxIdleConns = 0 // no global cap; per-host is what matters
	t.IdleConnTimeout = 5 * time.Minute
	t.ForceAttemptHTTP2 = false // plain HTTP/1.1 keep-alive, like wrk
	return t
}

func (c Config) withDefaults() (Config, error) {
	if c.Concurrency < 0 || c.Duration < 0 || c.Requests < 0 || c.Warmup < 0 || c.Round < 0 || c.Timeout < 0 {
		return c, fmt.Errorf("%w: negative setting", ErrBadConfig)
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Duration == 0 && c.Requests == 0 {
		c.Duration = DefaultDuration
	}
	if c.Round == 0 {
		c.Round = DefaultRound
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Client == nil {
		c.Client = &http.Client{
			Transport: NewTransport(c.Concurrency),
			Timeout:   c.Timeout,
			// 3xx counts as success; following it would measure a different request.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return c, nil
}

// Run sends load to targets as cfg says and reports per target. When ctx ends early, Run
// returns what was measured so far together with ctx's error.
func Run(ctx context.Context, cfg Config, targets []Target) (*Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if len(targets) == 0 {
		return nil, ErrNoTargets
	}
	seen := map[string]bool{}
	for _, t := range targets {
		if t.Name == "" || t.New == nil || seen[t.Name] {
			return nil, fmt.Errorf("%w: %q (names must be unique and non-empty, New non-nil)", ErrBadTarget, t.Name)
		}
		seen[t.Name] = true
	}

	states := make([]*targetState, len(targets))
	for i, t := range targets {
		states[i] = &targetState{target: t, stats: newStats()}
	}
	rep := &Report{
		Mode:        ModeSequential,
		Concurrency: cfg.Concurrency,
		Duration:    cfg.Duration,
		Requests:    cfg.Requests,
		Started:     time.Now().UTC(),
	}
	if cfg.SideBySide {
		rep.Mode = ModeSideBySide
		rep.Round = cfg.Round
	}

	var runErr error
	if cfg.SideBySide {
		for _, s := range states {
			if runErr = warm(ctx, cfg, s); runErr != nil {
				break
			}
		}
		for progressed := true; runErr == nil && progressed; {
			progressed = false
			for _, s := range states {
				budget, quota, ok := s.nextRound(cfg)
				if !ok {
					continue
				}
				progressed = true
				rep.Schedule = append(rep.Schedule, s.target.Name)
				if runErr = measure(ctx, cfg, s, budget, quota); runErr != nil {
					break
				}
			}
		}
	} else {
		for _, s := range states {
			if runErr = warm(ctx, cfg, s); runErr != nil {
				break
			}
			rep.Schedule = append(rep.Schedule, s.target.Name)
			if runErr = measure(ctx, cfg, s, cfg.Duration, cfg.Requests); runErr != nil {
				break
			}
		}
	}

	for _, s := range states {
		rep.Targets = append(rep.Targets, s.stats.result(s.target.Name, s.elapsed))
	}
	rep.Ratios = ratios(rep.Targets)
	return rep, runErr
}

// targetState is one target's progress through the run.
type targetState struct {
	target  Target
	seq     atomic.Uint64
	stats   *stats
	elapsed time.Duration // measured wall time so far
	done    int           // measured requests so far
}

// nextRound returns the time budget and request quota of the target's next side-by-side round,
// or false when it has had its share.
func (s *targetState) nextRound(cfg Config) (budget time.Duration, quota int, ok bool) {
	if cfg.Requests > 0 && s.done >= cfg.Requests {
		return 0, 0, false
	}
	if cfg.Duration > 0 && s.elapsed >= cfg.Duration {
		return 0, 0, false
	}
	if cfg.Requests > 0 {
		quota = cfg.Requests - s.done
	}
	budget = cfg.Round
	if cfg.Duration > 0 {
		budget = min(cfg.Round, cfg.Duration-s.elapsed)
	}
	return budget, quota, true
}

// warm sends unrecorded load to s for cfg.Warmup.
func warm(ctx context.Context, cfg Config, s *targetState) error {
	if cfg.Warmup <= 0 {
		return nil
	}
	scratch := &targetState{target: s.target, stats: newStats()}
	scratch.seq.Store(s.seq.Load())
	err := measure(ctx, cfg, scratch, cfg.Warmup, 0)
	s.seq.Store(scratch.seq.Load())
	return err
}

// measure runs cfg.Concurrency workers against s until budget (if positive) has passed or quota
// (if positive) requests were sent, then adds what they saw to s. Requests in flight when the
// budget ends are finished and counted, and the elapsed time runs until the last one is done, so
// throughput is requests over the wall time they really took.
func measure(ctx context.Context, cfg Config, s *targetState, budget time.Duration, quota int) error {
	start := time.Now()
	var deadline time.Time
	if budget > 0 {
		deadline = start.Add(budget)
	}
	var issued atomic.Int64
	locals := make([]*stats, cfg.Concurrency)
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		locals[w] = newStats()
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := locals[w]
			for ctx.Err() == nil {
				if !deadline.IsZero() && !time.Now().Before(deadline) {
					return
				}
				if quota > 0 && issued.Add(1) > int64(quota) {
					return
				}
				r := s.target.New(w, s.seq.Add(1)-1)
				lat, status, err := do(ctx, cfg.Client, r)
				if err != nil && ctx.Err() != nil {
					return // interrupted, not a failure of the target
				}
				st.add(lat, status, err)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, st := range locals {
		s.stats.merge(st)
		s.done += int(st.requests)
	}
	s.elapsed += elapsed
	return ctx.Err()
}

// do sends r and reads the whole answer, returning the latency to the last body byte.
func do(ctx context.Context, client *http.Client, r Request) (time.Duration, int, error) {
	var body io.Reader
	if r.Body != nil {
		body = bytes.NewReader(r.Body)
	}
	method := r.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, r.URL, body)
	if err != nil {
		return 0, 0, err
	}
	for k, vs := range r.Header {
		// Copy: the factory may hand every worker the same map.
		req.Header[k] = vs
	}
	if h := r.Header.Get("Host"); h != "" {
		req.Host = h
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return time.Since(start), 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	lat := time.Since(start)
	if err != nil {
		return lat, 0, err
	}
	return lat, resp.StatusCode, nil
}

// stats accumulates one target's (or one worker's) outcomes.
type stats struct {
	requests int64
	errors   map[string]int64
	lat      []time.Duration // successful requests only
}

func newStats() *stats { return &stats{errors: map[string]int64{}} }

func (s *stats) add(lat time.Duration, status int, err error) {
	s.requests++
	switch {
	case err != nil:
		s.errors[TransportError]++
	case status < 200 || status >= 400:
		s.errors[strconv.Itoa(status)]++
	default:
		s.lat = append(s.lat, lat)
	}
}

func (s *stats) merge(o *stats) {
	s.requests += o.requests
	for k, n := range o.errors {
		s.errors[k] += n
	}
	s.lat = append(s.lat, o.lat...)
}

func (s *stats) result(name string, elapsed time.Duration) TargetResult {
	slices.Sort(s.lat)
	r := TargetResult{
		Name:           name,
		Requests:       s.requests,
		OK:             int64(len(s.lat)),
		Errors:         s.requests - int64(len(s.lat)),
		ErrorsByStatus: s.errors,
		Elapsed:        elapsed,
		P50:            percentile(s.lat, 50),
		P90:            percentile(s.lat, 90),
		P99:            percentile(s.lat, 99),
	}
	if n := len(s.lat); n > 0 {
		r.Max = s.lat[n-1]
		var sum time.Duration
		for _, l := range s.lat {
			sum += l
		}
		r.Mean = sum / time.Duration(n)
	}
	if elapsed > 0 {
		r.Throughput = float64(r.OK) / elapsed.Seconds()
	}
	return r
}

// percentile is the nearest-rank percentile p (0 < p ≤ 100) of sorted; zero when empty.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	// Nearest rank: the smallest value with at least p% of the samples at or below it.
	rank := int(float64(n)*p/100 + 0.999999999)
	rank = max(1, min(n, rank))
	return sorted[rank-1]
}
