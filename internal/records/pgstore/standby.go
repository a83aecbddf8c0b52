package pgstore

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-dev/meridian/replication"
)

// Read-path defaults (DESIGN.md §6).
const (
	defaultRYWWait         = 100 * time.Millisecond
	defaultStandbyInterval = 250 * time.Millisecond
	defaultStandbyFailures = 3
	// rywPoll is how often a read waiting for its Consistency-Token polls the standby.
	rywPoll = 5 * time.Millisecond
)

// standbys tracks the health and replay position of the standby each shard is read from. A
// shard's status is refreshed on demand, at most once per interval; concurrent readers use the
// cached status meanwhile. A standby is unhealthy after `failures` consecutive failed checks or
// reads, or when its last good status is older than four intervals.
type standbys struct {
	interval time.Duration
	failures int
	now      func() time.Time
	mu       sync.Mutex
	// shards (shard -> state) is guarded by mu.
	shards map[string]*standbyState
}

type standbyState struct {
	mu sync.Mutex
	// All fields are guarded by mu.
	pool        *pgxpool.Pool // the standby this state is about; reset when it changes
	st          replication.StandbyStatus
	checked, ok time.Time // last check, last successful check
	failures    int
	refreshing  bool
}

func (sb *standbys) state(shard string, pool *pgxpool.Pool) *standbyState {
	sb.mu.Lock()
	s, ok := sb.shards[shard]
	if !ok {
		s = &standbyState{}
		sb.shards[shard] = s
	}
	sb.mu.Unlock()
	s.mu.Lock()
	if s.pool != pool {
		s.pool, s.st, s.checked, s.ok, s.failures = pool, replication.StandbyStatus{}, time.Time{}, time.Time{}, 0
	}
	s.mu.Unlock()
	return s
}

// status returns the standby's last known status and whether it may serve reads, refreshing it
// first when it is older than the interval and no other caller is refreshing it. While the
// standby is failing the refresh runs in the background, so reads don't wait on a dead copy.
func (sb *standbys) status(ctx context.Context, shard string, pool *pgxpool.Pool) (replication.StandbyStatus, bool) {
	s := sb.state(shard, pool)
	s.mu.Lock()
	refresh := !s.refreshing && sb.now().Sub(s.checked) >= sb.interval
	if refresh {
		s.refreshing = true
	}
	failing := s.failures >= sb.failures
	s.mu.Unlock()
	if refresh {
		check := func(ctx context.Context) {
			cctx, cancel := context.WithTimeout(ctx, max(sb.interval, 500*time.Millisecond))
			st, err := replication.ReadStandbyStatus(cctx, pool)
			cancel()
			s.mu.Lock()
			s.refreshing = false
			s.checked = sb.now()
			s.mu.Unlock()
			sb.record(shard, pool, st, err)
		}
		if failing {
			go check(context.WithoutCancel(ctx))
		} else {
			check(ctx)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st, sb.healthyLocked(s)
}

// healthyLocked reports whether s may serve reads; s.mu must be held.
func (sb *standbys) healthyLocked(s *standbyState) bool {
	return s.failures < sb.failures && !s.ok.IsZero() && sb.now().Sub(s.ok) <= 4*sb.interval
}

// record stores the outcome of a status query (a fresh status, or a failure).
func (sb *standbys) record(shard string, pool *pgxpool.Pool, st replication.StandbyStatus, err error) {
	s := sb.state(shard, pool)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.failures++
		return
	}
	s.failures = 0
	s.ok = sb.now()
	if st.Replayed < s.st.Replayed {
		st.Replayed = s.st.Replayed // replay never goes back on one standby; keep the newest seen
	}
	s.st = st
}

// waitReplayed polls the standby until it has replayed lsn, for at most wait. It reports
// whether it did; a failed poll ends the wait (and counts against the standby).
func (sb *standbys) waitReplayed(ctx context.Context, shard string, pool *pgxpool.Pool, lsn replication.LSN, wait time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	tk := time.NewTicker(rywPoll)
	defer tk.Stop()
	for {
		st, err := replication.ReadStandbyStatus(ctx, pool)
		if err != nil {
			if ctx.Err() == nil {
				sb.record(shard, pool, st, err)
			}
			return false
		}
		sb.record(shard, pool, st, nil)
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
