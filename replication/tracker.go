package replication

import (
	"context"
	"sync"
	"time"
)

// Tracker defaults, used for TrackerConfig's zero fields.
const (
	DefaultTrackerInterval = 250 * time.Millisecond
	DefaultTrackerFailures = 3
	// DefaultKeepWarm is well past a cached entry's life (internal/cache: 60 s), during which
	// a region may read a shard only from its cache and never ask the tracker.
	DefaultKeepWarm = 5 * time.Minute
)

// replayPoll is how often WaitReplayed polls the standby.
const replayPoll = 5 * time.Millisecond

// minCheckTimeout is the least time a status check gets, however short the interval.
const minCheckTimeout = 500 * time.Millisecond

// TrackerConfig configures a Tracker. The zero value means the defaults.
type TrackerConfig struct {
	// Interval is the most often a standby's status is re-checked (0 = 250 ms). A standby
	// whose last good status is older than four intervals is unhealthy.
	Interval time.Duration
	// Failures is how many consecutive failed checks or reads make a standby unhealthy
	// (0 = 3).
	Failures int
	// KeepWarm is how long after a shard's last Status the tracker goes on sampling its
	// primary and checking its standby by itself, once per Interval in the background, so that
	// the first read after a spell without reads (a cache answering them, say) finds the
	// standby proven fresh instead of too stale (0 = DefaultKeepWarm; negative = not at all).
	KeepWarm time.Duration
	// Now is the clock (nil = time.Now).
	Now func() time.Time
}

// Tracker keeps the health, replay position and proven staleness of the standby each shard is
// read from. A shard's status is refreshed on demand, at most once per Interval; concurrent
// callers use the cached status meanwhile, and while the standby is failing the refresh runs in
// the background so reads never wait on a dead copy. A standby is unhealthy after Failures
// consecutive failures, or when its last good status is older than four intervals. The replay
// position never goes back on one standby.
//
// Staleness is proven against the shard's primary: at most once per Interval, Status starts a
// background sample of the primary's WAL position (ReadPrimarySample, stamped with the clock
// read just before the query) and keeps the recent samples; the standby is fresh as of the
// newest sample it has replayed. A read never waits for a sample, so the primary's distance adds
// nothing to its latency; while the primary cannot be reached no sample is added and the
// standby's staleness grows. For KeepWarm after a shard's last Status the tracker goes on
// sampling its primary and checking its standby by itself, once per Interval, so a read after a
// spell without reads (answered by a cache) is not sent to the primary for old samples alone.
//
// Each shard's state is about one standby and one primary querier, compared with ==: passing a
// different standby (a new pool for the shard) starts the shard afresh, a different primary
// drops the samples. Queriers must therefore be comparable values, such as *pgxpool.Pool. A
// Tracker is safe for concurrent use; the zero value is not usable.
type Tracker struct {
	interval time.Duration
	failures int
	keepWarm int // intervals a shard is kept warm after its last Status; 0 = not at all
	now      func() time.Time

	mu sync.Mutex
	// shards (shard -> state) is guarded by mu.
	shards map[string]*standbyState
}

// standbyState is what a Tracker knows about one shard's standby.
type standbyState struct {
	mu sync.Mutex
	// All fields are guarded by mu.
	q           Querier // the standby this state is about; reset when it changes
	st          StandbyStatus
	checked, ok time.Time // last check, last good status
	failures    int
	refreshing  bool

	primary  Querier   // the primary the samples are from; they are dropped when it changes
	samples  []Sample  // oldest first, at most maxSamples
	sampled  time.Time // when the last sample was started
	sampling bool      // a sample is under way

	warm    int  // intervals the keeper still runs (reset by every Status)
	keeping bool // a keeper (Tracker.keep) runs for q
}

// NewTracker returns a Tracker that tracks no standby yet.
func NewTracker(cfg TrackerConfig) *Tracker {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultTrackerInterval
	}
	if cfg.Failures <= 0 {
		cfg.Failures = DefaultTrackerFailures
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.KeepWarm == 0 {
		cfg.KeepWarm = DefaultKeepWarm
	}
	keepWarm := 0
	if cfg.KeepWarm > 0 {
		keepWarm = int((cfg.KeepWarm + cfg.Interval - 1) / cfg.Interval)
	}
	return &Tracker{interval: cfg.Interval, failures: cfg.Failures, keepWarm: keepWarm, now: cfg.Now, shards: map[string]*standbyState{}}
}

// state returns shard's state about q, reset first if it was about another querier.
func (t *Tracker) state(shard string, q Querier) *standbyState {
	t.mu.Lock()
	s, ok := t.shards[shard]
	if !ok {
		s = &standbyState{}
		t.shards[shard] = s
	}
	t.mu.Unlock()
	s.mu.Lock()
	if s.q != q {
		s.q, s.st, s.checked, s.ok, s.failures, s.refreshing = q, StandbyStatus{}, time.Time{}, time.Time{}, 0, false
		s.primary, s.samples, s.sampled, s.sampling = nil, nil, time.Time{}, false
		s.warm, s.keeping = 0, false // a keeper of the old querier stops at its next tick
	}
	s.mu.Unlock()
	return s
}

// Status returns the last known status of shard's standby q and whether it may serve reads,
// refreshing it first when it is at least an interval old and no other caller is refreshing
// it. While the standby is failing the refresh runs in the background and Status returns at
// once. primary is the shard's primary: when its last sample is at least an interval old and
// none is under way, Status starts one in the background (a nil primary is never sampled, so
// the standby's staleness stays unknown). Only the very first sample of a primary for the
// shard is waited for (bounded by the check timeout): until one exists the read would go to
// the primary anyway. The returned status's Staleness is as of now.
func (t *Tracker) Status(ctx context.Context, shard string, q, primary Querier) (StandbyStatus, bool) {
	s := t.state(shard, q)
	s.mu.Lock()
	if s.q == q && s.primary != primary {
		s.primary, s.samples, s.sampled, s.sampling = primary, nil, time.Time{}, false
	}
	now := t.now()
	refresh := s.q == q && !s.refreshing && now.Sub(s.checked) >= t.interval
	if refresh {
		s.refreshing = true
	}
	sample := s.q == q && primary != nil && !s.sampling && now.Sub(s.sampled) >= t.interval
	first := sample && s.sampled.IsZero()
	if sample {
		s.sampling, s.sampled = true, now
	}
	failing := s.failures >= t.failures
	keep := false
	if s.q == q && t.keepWarm > 0 {
		s.warm = t.keepWarm
		keep, s.keeping = !s.keeping, true
	}
	s.mu.Unlock()
	if keep {
		go t.keep(context.WithoutCancel(ctx), q, s)
	}
	switch {
	case first:
		// Cold start: nothing can prove the standby fresh yet, so the read would go to the
		// primary anyway; one primary round trip now (before the standby check, which then
		// sees a replay position taken after the sample) keeps later reads on the standby.
		t.sample(ctx, q, primary, s)
	case sample:
		go t.sample(context.WithoutCancel(ctx), q, primary, s)
	}
	if refresh {
		if failing {
			go t.check(context.WithoutCancel(ctx), q, s)
		} else {
			t.check(ctx, q, s)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return t.statusLocked(s), t.healthyLocked(s)
}

// keep keeps s's standby q warm while s.warm lasts: once per interval it samples the primary
// and checks the standby when they are due, as Status would. Without it, a shard whose reads
// a cache answers for longer than the staleness bound has only old samples when the next read
// reaches the store, which then goes to the primary (too stale) although the standby is
// current, paying a cross-region round trip, often on a cold connection.
func (t *Tracker) keep(ctx context.Context, q Querier, s *standbyState) {
	tk := time.NewTicker(t.interval)
	defer tk.Stop()
	for range tk.C {
		s.mu.Lock()
		if s.q != q {
			s.mu.Unlock()
			return // the shard moved to another standby; its own keeper starts with its Status
		}
		if s.warm <= 0 {
			s.keeping = false
			s.mu.Unlock()
			return
		}
		s.warm--
		now := t.now()
		primary := s.primary
		sample := primary != nil && !s.sampling && now.Sub(s.sampled) >= t.interval
		if sample {
			s.sampling, s.sampled = true, now
		}
		refresh := !s.refreshing && now.Sub(s.checked) >= t.interval
		if refresh {
			s.refreshing = true
		}
		s.mu.Unlock()
		// The sample first: a caught-up standby checked after it covers it at once.
		if sample {
			t.sample(ctx, q, primary, s)
		}
		if refresh {
			t.check(ctx, q, s)
		}
	}
}

// statusLocked returns s's status with its staleness as of now; s.mu must be held.
func (t *Tracker) statusLocked(s *standbyState) StandbyStatus {
	st := s.st
	st.Staleness = StalenessUnknown
	if at, ok := freshAsOf(s.samples, st.Replayed); ok {
		st.Staleness = max(t.now().Sub(at), 0)
	}
	return st
}

// sample reads one sample of primary, the primary of s's standby q, and keeps it. Its time is
// the clock just before the query is sent: every commit acknowledged before then is before
// the position the primary returns. A failed sample is not kept and counts against nothing
// (the standby is not at fault); its staleness grows until samples resume.
func (t *Tracker) sample(ctx context.Context, q, primary Querier, s *standbyState) {
	cctx, cancel := context.WithTimeout(ctx, max(t.interval, minCheckTimeout))
	smp, err := ReadPrimarySample(cctx, primary, t.now())
	cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.q != q || s.primary != primary {
		return // the shard moved to another standby or primary meanwhile
	}
	s.sampling = false
	if err == nil {
		s.samples = addSample(s.samples, smp)
	}
}

// check queries the status of s's standby q and records it.
func (t *Tracker) check(ctx context.Context, q Querier, s *standbyState) {
	cctx, cancel := context.WithTimeout(ctx, max(t.interval, minCheckTimeout))
	st, err := ReadStandbyStatus(cctx, q)
	cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.q != q {
		return // the shard moved to another standby meanwhile; this result is about the old one
	}
	s.refreshing = false
	s.checked = t.now()
	if err != nil && ctx.Err() != nil {
		return // the caller went away: that says nothing about the standby
	}
	t.recordLocked(s, st, err)
}

// healthyLocked reports whether s may serve reads; s.mu must be held.
func (t *Tracker) healthyLocked(s *standbyState) bool {
	return s.failures < t.failures && !s.ok.IsZero() && t.now().Sub(s.ok) <= 4*t.interval
}

// Record stores the outcome of a status query or of a read on shard's standby q: a fresh
// status (err nil) or a failure. A good status counts as a check. Callers must report only
// failures of the standby itself — connection errors, timeouts, server errors — never a query
// rejected because of the request's own content, a read's own outcome (not found), a
// standby that has not replayed the read's token, or a caller that went away.
func (t *Tracker) Record(shard string, q Querier, st StandbyStatus, err error) {
	s := t.state(shard, q)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.q == q {
		t.recordLocked(s, st, err)
	}
}

// recordLocked is Record on s; s.mu must be held.
func (t *Tracker) recordLocked(s *standbyState, st StandbyStatus, err error) {
	if err != nil {
		s.failures++
		return
	}
	s.failures = 0
	s.ok = t.now()
	s.checked = s.ok
	if st.Replayed < s.st.Replayed {
		st.Replayed = s.st.Replayed // replay never goes back on one standby; keep the newest seen
	}
	s.st = st
}

// WaitReplayed polls shard's standby q every 5 ms until it has replayed lsn, for at most
// wait, recording each status. It reports whether the standby did; a failed poll ends the
// wait and counts against the standby, unless ctx ended or the wait ran out.
func (t *Tracker) WaitReplayed(ctx context.Context, shard string, q Querier, lsn LSN, wait time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	tk := time.NewTicker(replayPoll)
	defer tk.Stop()
	for {
		st, err := ReadStandbyStatus(ctx, q)
		if err != nil {
			if ctx.Err() == nil {
				t.Record(shard, q, st, err)
			}
			return false
		}
		t.Record(shard, q, st, nil)
		if st.Replayed >= lsn {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tk.C:
		}
	}
}

// Lag returns the largest proven staleness (StandbyStatus.Staleness, StalenessUnknown when
// one is unproven) over the tracked standbys that are healthy, from their last known status
// and samples, or 0 when there is none. It does no I/O: a caller that publishes it on a timer
// (the API node's gossip status) calls Status for each standby first, so an idle node reports
// current staleness instead of none.
func (t *Tracker) Lag() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	var lag time.Duration
	for _, s := range t.shards {
		s.mu.Lock()
		if t.healthyLocked(s) {
			lag = max(lag, t.statusLocked(s).Staleness)
		}
		s.mu.Unlock()
	}
	return lag
}
