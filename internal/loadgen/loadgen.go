// Package loadgen is Meridian's small HTTP load generator: N concurrent workers send requests to
// one or more named targets for a duration (or a request count), every latency is recorded, and
// the result is a Report per target (requests, errors by status, throughput, p50/p90/p99/max)
// that renders as a Markdown table for docs/BENCHMARKS.md or as JSON.
//
// Targets run one after another, or side by side: interleaved in one run as short rounds
// (A, B, A, B, …) so that noise from other work on the machine hits every target alike, and the
// report then gives each target's throughput ratio and p50/p99 deltas against the first.
//
// It runs closed loop or open loop. Closed loop (the default, Config.Rate zero) is like wrk: each
// worker sends its next request when the last one is answered, so a stalled server gets fewer
// requests rather than queued ones, and at saturation the latencies are mostly queueing in the
// server (they understate what an open-loop client would see). Open loop (Config.Rate positive)
// is like wrk2: each round of a target schedules requests at fixed intervals of 1/Rate from the
// round's start, independent of the answers; a free worker takes the next scheduled slot, waits
// for its time if it is early, and a request's latency runs from its scheduled time, so time spent
// waiting for a free worker counts (no coordinated omission). Use it to measure latency below
// saturation. Slots are never queued without bound: if the next unsent slot falls more than
// MaxBacklog behind the clock, the round stops sending, and every slot the round planned but did
// not send is counted in TargetResult.Missed.
//
// Two engines send the requests. The goroutine engine (the default) runs a goroutine per worker
// over an http.RoundTripper, in both modes. The event-loop engine (Config.Engine EngineLoop,
// closed loop only, evloop.go) drives every worker's keep-alive connection from one gnet event
// loop, writing requests and parsing answers itself: on a machine it shares with what it
// measures it spends less CPU per request, most of the goroutine engine's going to the Go
// scheduler's wake-ups. Both record into the same statistics and call Config.OnAnswer alike.
//
// Every successful request's latency is kept in a slice sorted once at the end: exact
// percentiles, 8 bytes a sample, fine for the few million samples of a run. It never retries or
// follows redirects, only sleeps to keep an open-loop schedule, and it counts only what it saw.
// Tests run it against httptest servers on loopback; cmd/bench wires it to a cluster.
package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
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

// MaxBacklog is how far an open-loop schedule may fall behind the clock: when a worker comes to
// take a slot whose scheduled time is more than MaxBacklog ago (Rate × MaxBacklog requests are
// due and unsent), the target cannot keep up, and the round sends nothing more. Its length does
// not change: a round bounded by time still ends at its deadline (plus the requests in flight
// then); one bounded by a count alone ends when its requests in flight are answered.
const MaxBacklog = time.Second

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

// Config configures Run. The zero value runs 16 closed-loop workers for 10 s per target, one
// target after another.
type Config struct {
	// Concurrency is the number of workers; zero means DefaultConcurrency. In open loop it bounds
	// the requests in flight.
	Concurrency int
	// Rate, when positive, runs open loop: Rate requests per second are scheduled to each target,
	// at fixed intervals from the start of each round (and of the warm-up), whatever the answers,
	// and latencies run from the scheduled send time (see the package doc and MaxBacklog). Zero
	// means closed loop. It must be finite and not negative.
	Rate float64
	// Duration is the measured time per target. Zero means DefaultDuration unless Requests is
	// set, in which case the run is bounded by the count alone.
	Duration time.Duration
	// Requests, when positive, caps the measured requests per target. In open loop it caps the
	// slots a round schedules; slots it missed are scheduled again in later side-by-side rounds.
	Requests int
	// Warmup is sent to each target before measuring and not recorded. Zero means none.
	Warmup time.Duration
	// SideBySide interleaves the targets in rounds of Round instead of running them in turn.
	SideBySide bool
	// Round is the length of one side-by-side round; zero means DefaultRound.
	Round time.Duration
	// Timeout bounds each request (until its answer's last byte) sent through Transport or the
	// transport Run builds; zero means DefaultTimeout. It is not applied to a Client given by
	// the caller.
	Timeout time.Duration
	// Client, when not nil, sends the requests (and Transport is ignored).
	Client *http.Client
	// Transport, when Client is nil, sends the requests straight through its RoundTrip: no
	// redirect is followed, no cookie kept, and Timeout bounds each request. Nil means
	// NewTransport(Concurrency). Going around an http.Client saves the per-request work it does
	// for redirects and its timeout (a header copy, a context and a timer each); see
	// BenchmarkCacheClientCPU in cmd/bench and docs/BENCHMARKS.md.
	Transport http.RoundTripper
	// Engine picks what sends the requests: "" or EngineGoroutines, a goroutine per worker
	// over Client or Transport (every mode); EngineLoop, one gnet event loop driving
	// Concurrency keep-alive HTTP/1.1 connections per target host, closed loop only (Rate must be
	// zero), plain http URLs only, Client and Transport ignored, its connections kept for the
	// whole Run (see evloop.go). Any other value is a config error.
	Engine string
	// OnAnswer, when not nil, is called once for every request whose outcome Run records
	// (warm-up included, interrupted requests not): status is the answer's status code (zero
	// with err, when no answer came), header looks up the answer's first value of a header
	// field by case-insensitive name ("" when absent, always "" with err) and is valid only
	// during the call. Both engines call it from whichever goroutine finished the request,
	// concurrently with the goroutine engine: the callee synchronises.
	OnAnswer func(status int, header func(name string) string, err error)
	// BeforeRound, when not nil, is called before each warm-up (warmup true) and each measured
	// round of a target, with the target's name, and its time is not measured: a caller uses it
	// to change what else runs beside a target (cmd/bench starts or stops a background load).
	// An error ends the run with that error.
	BeforeRound func(ctx context.Context, target string, warmup bool) error
}

// Engines of Config.Engine.
const (
	// EngineGoroutines runs a goroutine per worker, each sending through Client or Transport.
	EngineGoroutines = "goroutines"
	// EngineLoop runs every worker's connections on one gnet event loop (closed loop only).
	EngineLoop = "loop"
)

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
	if math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) || c.Rate < 0 {
		return c, fmt.Errorf("%w: rate %v: want a finite number of requests per second ≥ 0", ErrBadConfig, c.Rate)
	}
	switch c.Engine {
	case "", EngineGoroutines:
	case EngineLoop:
		if c.Rate > 0 {
			return c, fmt.Errorf("%w: engine %q runs closed loop only; rate %v wants engine %q", ErrBadConfig, EngineLoop, c.Rate, EngineGoroutines)
		}
	default:
		return c, fmt.Errorf("%w: engine %q: want %q or %q", ErrBadConfig, c.Engine, EngineGoroutines, EngineLoop)
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
	if c.Client == nil && c.Transport == nil && c.Engine != EngineLoop {
		// RoundTrip never follows a redirect: a 3xx counts as success, as it should (following
		// it would measure a different request).
		c.Transport = NewTransport(c.Concurrency)
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
		Rate:        cfg.Rate,
		Duration:    cfg.Duration,
		Requests:    cfg.Requests,
		Started:     time.Now().UTC(),
	}
	if cfg.SideBySide {
		rep.Mode = ModeSideBySide
		rep.Round = cfg.Round
	}

	// The event-loop engine, when cfg asks for it, is started by the first round and keeps its
	// connections until the run ends.
	lp := &lazyLoop{cfg: cfg}
	defer lp.stop()

	var runErr error
	if cfg.SideBySide {
		for _, s := range states {
			if runErr = warm(ctx, cfg, lp, s); runErr != nil {
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
				if runErr = cfg.beforeRound(ctx, s.target.Name, false); runErr != nil {
					break
				}
				rep.Schedule = append(rep.Schedule, s.target.Name)
				if runErr = measure(ctx, cfg, lp, s, budget, quota); runErr != nil {
					break
				}
			}
		}
	} else {
		for _, s := range states {
			if runErr = warm(ctx, cfg, lp, s); runErr != nil {
				break
			}
			if runErr = cfg.beforeRound(ctx, s.target.Name, false); runErr != nil {
				break
			}
			rep.Schedule = append(rep.Schedule, s.target.Name)
			if runErr = measure(ctx, cfg, lp, s, cfg.Duration, cfg.Requests); runErr != nil {
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

// beforeRound calls BeforeRound when set.
func (c Config) beforeRound(ctx context.Context, target string, warmup bool) error {
	if c.BeforeRound == nil {
		return nil
	}
	return c.BeforeRound(ctx, target, warmup)
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
func warm(ctx context.Context, cfg Config, lp *lazyLoop, s *targetState) error {
	if cfg.Warmup <= 0 {
		return nil
	}
	if err := cfg.beforeRound(ctx, s.target.Name, true); err != nil {
		return err
	}
	scratch := &targetState{target: s.target, stats: newStats()}
	scratch.seq.Store(s.seq.Load())
	err := measure(ctx, cfg, lp, scratch, cfg.Warmup, 0)
	s.seq.Store(scratch.seq.Load())
	return err
}

// measure runs cfg.Concurrency workers against s until budget (if positive) has passed or quota
// (if positive) requests were sent, then adds what they saw to s. Requests in flight when the
// budget ends are finished and counted, and the elapsed time runs until the last one is done, so
// throughput is requests over the wall time they really took. With cfg.Rate it runs open loop
// (see openLoop); with cfg.Engine EngineLoop the event-loop engine sends (see loopEngine.round).
func measure(ctx context.Context, cfg Config, lp *lazyLoop, s *targetState, budget time.Duration, quota int) error {
	start := time.Now()
	var deadline time.Time
	if budget > 0 {
		deadline = start.Add(budget)
	}
	locals := make([]*stats, cfg.Concurrency)
	for w := range locals {
		locals[w] = newStats()
	}
	var err error
	switch {
	case cfg.Engine == EngineLoop:
		var e *loopEngine
		if e, err = lp.get(); err == nil {
			err = e.round(ctx, s, deadline, quota, locals)
		}
	case cfg.Rate > 0:
		openLoop(ctx, cfg, s, start, budget, quota, locals)
	default:
		closedLoop(ctx, cfg, s, deadline, quota, locals)
	}
	elapsed := time.Since(start)
	for _, st := range locals {
		s.stats.merge(st)
		s.done += int(st.requests)
	}
	s.elapsed += elapsed
	if err != nil {
		return err
	}
	return ctx.Err()
}

// closedLoop has every worker send its next request as soon as the last one is answered, until
// deadline (if not zero) or until quota (if positive) requests were issued.
func closedLoop(ctx context.Context, cfg Config, s *targetState, deadline time.Time, quota int, locals []*stats) {
	var issued atomic.Int64
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		wg.Go(func() {
			st := locals[w]
			snd := newSender(ctx, cfg)
			defer snd.close()
			for ctx.Err() == nil {
				if !deadline.IsZero() && !time.Now().Before(deadline) {
					return
				}
				if quota > 0 && issued.Add(1) > int64(quota) {
					return
				}
				r := s.target.New(w, s.seq.Add(1)-1)
				lat, status, hdr, err := snd.do(r, time.Time{})
				if err != nil && ctx.Err() != nil {
					return // interrupted, not a failure of the target
				}
				st.add(lat, status, err)
				cfg.answered(status, headerOf(hdr), err)
			}
		})
	}
	wg.Wait()
}

// openLoop sends s's requests on a fixed schedule: slot i is due at start + i/cfg.Rate seconds.
// The round plans the slots due before start+budget (if budget is positive), at most quota (if
// positive) of them. A free worker claims the next slot, sleeps until it is due if it is early,
// sends it and records the latency from the slot's due time. A slot claimed after the deadline,
// or after the schedule fell more than MaxBacklog behind, is not sent and the round sends nothing
// more; every planned slot that was not sent is counted as missed in locals[0]. The round lasts
// until the deadline (unless it sent its whole quota before), never longer than the requests in
// flight then take, so the run ends on time. When ctx ends, nothing is counted as missed.
func openLoop(ctx context.Context, cfg Config, s *targetState, start time.Time, budget time.Duration, quota int, locals []*stats) {
	// Slot times are computed from the index, not accumulated, so rounding never drifts.
	nsPerSlot := 1e9 / cfg.Rate
	due := func(i int64) time.Duration {
		ns := float64(i) * nsPerSlot
		if ns >= math.MaxInt64 {
			return math.MaxInt64 // a rate so low that the slot is beyond any deadline
		}
		return time.Duration(ns)
	}
	planned := int64(math.MaxInt64)
	if quota > 0 {
		planned = int64(quota)
	}
	if budget > 0 {
		// The slots due before the deadline: the smallest n with due(n) ≥ budget, found from an
		// estimate and corrected with due itself so that it agrees with the schedule exactly.
		n := int64(min(math.Ceil(budget.Seconds()*cfg.Rate), float64(planned)))
		for n > 0 && due(n-1) >= budget {
			n--
		}
		for n < planned && due(n) < budget {
			n++
		}
		planned = n
	}
	var deadline time.Time
	if budget > 0 {
		deadline = start.Add(budget)
	}

	var next atomic.Int64   // the next slot to claim
	var stopped atomic.Bool // the round sends nothing more: behind schedule or past the deadline
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		wg.Go(func() {
			st := locals[w]
			snd := newSender(ctx, cfg)
			defer snd.close()
			timer := time.NewTimer(time.Hour)
			timer.Stop()
			defer timer.Stop()
			for ctx.Err() == nil && !stopped.Load() {
				i := next.Add(1) - 1
				if i >= planned {
					return
				}
				at := start.Add(due(i))
				now := time.Now()
				if (!deadline.IsZero() && !now.Before(deadline)) || now.Sub(at) > MaxBacklog {
					stopped.Store(true)
					return
				}
				if wait := at.Sub(now); wait > 0 {
					timer.Reset(wait)
					select {
					case <-timer.C:
					case <-ctx.Done():
						return
					}
				}
				r := s.target.New(w, s.seq.Add(1)-1)
				lat, status, hdr, err := snd.do(r, at)
				if err != nil && ctx.Err() != nil {
					return // interrupted, not a failure of the target
				}
				st.add(lat, status, err)
				cfg.answered(status, headerOf(hdr), err)
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	var sent int64
	for _, st := range locals {
		sent += st.requests
	}
	if planned != math.MaxInt64 {
		locals[0].missed += planned - sent
	}
	// A round lasts until its deadline, as the schedule says, even when its last slot was
	// answered earlier or it stopped behind schedule: side-by-side rounds keep their lengths, and
	// Elapsed is the scheduled time. Only a round that sent its whole quota ends early, as a
	// closed-loop one does.
	if !deadline.IsZero() && (quota == 0 || planned < int64(quota) || stopped.Load()) {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
}

// sender sends one worker's requests, through cfg.Client or straight through cfg.Transport.
// It is not safe for concurrent use.
type sender struct {
	parent  context.Context
	client  *http.Client
	rt      http.RoundTripper
	timeout time.Duration

	// With rt, requests run under ctx, which timer cancels when one outlasts timeout. One
	// context and timer serve request after request (the timer is reset for each and stopped
	// when its answer is read); only a timer that fired takes a new pair.
	ctx    context.Context
	cancel context.CancelFunc
	timer  *time.Timer
}

func newSender(ctx context.Context, cfg Config) *sender {
	return &sender{parent: ctx, client: cfg.Client, rt: cfg.Transport, timeout: cfg.Timeout}
}

// close releases the sender's context and timer.
func (s *sender) close() {
	if s.timer != nil {
		s.timer.Stop()
		s.cancel()
	}
}

// answered calls OnAnswer, when set, with an answer's status and header lookup (nil: an
// answer without a header); a request that failed (err) has neither.
func (c Config) answered(status int, header func(string) string, err error) {
	if c.OnAnswer == nil {
		return
	}
	switch {
	case err != nil:
		c.OnAnswer(0, noHeader, err)
	case header == nil:
		c.OnAnswer(status, noHeader, nil)
	default:
		c.OnAnswer(status, header, nil)
	}
}

// headerOf is h's lookup, nil when there is no header (a failed request).
func headerOf(h http.Header) func(string) string {
	if h == nil {
		return nil
	}
	return h.Get
}

// noHeader is the header lookup of a request without an answer.
func noHeader(string) string { return "" }

// do sends r and reads the whole answer, returning the latency to the last body byte from from
// (or from the moment it sends the request when from is zero), the status and the answer's
// header.
func (s *sender) do(r Request, from time.Time) (time.Duration, int, http.Header, error) {
	var body io.Reader
	if r.Body != nil {
		body = bytes.NewReader(r.Body)
	}
	method := r.Method
	if method == "" {
		method = http.MethodGet
	}
	ctx := s.parent
	if s.client == nil {
		if s.timer == nil {
			s.ctx, s.cancel = context.WithCancel(s.parent)
			s.timer = time.AfterFunc(s.timeout, s.cancel)
		} else {
			s.timer.Reset(s.timeout)
		}
		ctx = s.ctx
		defer func() {
			if !s.timer.Stop() {
				// It fired, or is firing: this context is spent.
				s.cancel()
				s.timer = nil
			}
		}()
	}
	req, err := http.NewRequestWithContext(ctx, method, r.URL, body)
	if err != nil {
		return 0, 0, nil, err
	}
	if r.Header != nil {
		// Shared, not copied: the factory may hand every worker the same map, and neither a
		// RoundTripper nor http.Client changes a request's Header (a Client copies it first).
		req.Header = r.Header
	}
	if h := r.Header.Get("Host"); h != "" {
		req.Host = h
	}
	start := from
	if start.IsZero() {
		start = time.Now()
	}
	var resp *http.Response
	if s.client != nil {
		resp, err = s.client.Do(req)
	} else {
		resp, err = s.rt.RoundTrip(req)
	}
	if err != nil {
		return time.Since(start), 0, nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	lat := time.Since(start)
	if err != nil {
		return lat, 0, nil, err
	}
	return lat, resp.StatusCode, resp.Header, nil
}

// stats accumulates one target's (or one worker's) outcomes.
type stats struct {
	requests int64
	missed   int64 // open-loop slots planned and not sent
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
	s.missed += o.missed
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
		Missed:         s.missed,
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
