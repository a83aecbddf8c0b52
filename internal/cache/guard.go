package cache

import (
	"sync"
	"time"

	"github.com/meridian-dev/meridian/internal/records"
)

// guard is this node's memory of the events it applied, which decides whether a fill may be
// stored (DESIGN.md §7). The Applier methods update it before they touch Redis, so a fill that
// snapshotted it before an event sees the change however the Redis calls interleave.
type guard struct {
	// mu guards the fields below.
	mu sync.Mutex
	// resets counts ResetAll calls; resetAt is when the last one was applied.
	resets  uint64
	resetAt time.Time
	// tenants holds one state per tenant this node applied an event for. It is never pruned:
	// a tenant's newest event LSN must outlive any fill, and one small struct per tenant of
	// the deployment is cheap.
	tenants map[string]*tenantState
}

type tenantState struct {
	events uint64 // Invalidate and ResetTenant calls applied
	// newest is, per shard, the newest LSN an Invalidate of the tenant carried. LSNs of two
	// databases say nothing of each other, so after a move the source's never blocks (or
	// admits) a fill from the target.
	newest  map[string]uint64
	resetAt time.Time // when the last ResetTenant was applied
	epoch   uint64    // the newest write epoch a read of the tenant carried (0 = none yet)
}

// snapshot is what a read remembers of the guard before it asks the inner reader.
type snapshot struct {
	resets, events, newest uint64
	resetAt                time.Time // the later of the tenant's and the region's last reset
	at                     time.Time // when the snapshot was taken (the read's start)
}

func newGuard() *guard { return &guard{tenants: map[string]*tenantState{}} }

// snapshot reads the guard for tenant on shard without creating state for it (reads must not
// grow the map; a tenant without state has seen no event, and its first event changes events
// from 0).
func (g *guard) snapshot(tenant, shard string, now time.Time) snapshot {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := snapshot{resets: g.resets, resetAt: g.resetAt, at: now}
	if ts := g.tenants[tenant]; ts != nil {
		s.events, s.newest = ts.events, ts.newest[shard]
		if ts.resetAt.After(s.resetAt) {
			s.resetAt = ts.resetAt
		}
	}
	return s
}

// moved reports whether any event was applied for the tenant (or the region) since s.
func (g *guard) moved(tenant string, s snapshot) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	var events uint64
	if ts := g.tenants[tenant]; ts != nil {
		events = ts.events
	}
	return g.resets != s.resets || events != s.events
}

func (g *guard) state(tenant string) *tenantState {
	ts := g.tenants[tenant]
	if ts == nil {
		ts = &tenantState{}
		g.tenants[tenant] = ts
	}
	return ts
}

func (g *guard) invalidate(tenant, shard string, lsn uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ts := g.state(tenant)
	ts.events++
	if ts.newest == nil {
		ts.newest = map[string]uint64{}
	}
	ts.newest[shard] = max(ts.newest[shard], lsn)
}

// epochSeen records the write epoch a read of tenant carried. It reports true when the epoch
// is newer than one seen before (the tenant moved: the caller resets it), and also for the
// first read of a tenant that has moved at some time (epoch > 1) in this process, whose
// earlier history this node does not know: the reset opens the after-reset window, so no
// standby read of the new shard is stored before that standby has had StandbyLag to replay the
// cutover (a standby read there could otherwise predate writes the target got at cutover,
// with no event left to invalidate it).
func (g *guard) epochSeen(tenant string, epoch uint64) (reset bool) {
	if epoch == 0 {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	ts := g.tenants[tenant]
	switch {
	case ts == nil:
		if epoch <= 1 {
			return false // never moved: nothing to do, and reads must not grow the map
		}
		ts = g.state(tenant)
		reset = true
	case epoch > ts.epoch:
		reset = ts.epoch != 0 || epoch > 1
	}
	ts.epoch = max(ts.epoch, epoch)
	return reset
}

func (g *guard) resetTenant(tenant string, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ts := g.state(tenant)
	ts.events++
	ts.resetAt = now
}

func (g *guard) resetAll(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.resets++
	g.resetAt = now
}

// Reasons a fill was not stored (the reason label of meridian_cache_fill_skipped_total).
const (
	skipNotFound    = "not-found"             // the record does not exist (never cached)
	skipError       = "error"                 // the inner read failed
	skipInvalidated = "invalidated"           // this node applied an event for the tenant during the read
	skipLSNUnknown  = "lsn-unknown"           // a standby read without an LSN
	skipLSNBehind   = "lsn-behind"            // a standby read older than the newest event seen
	skipAfterReset  = "after-reset"           // a standby read that began within StandbyLag of a reset
	skipRedisRace   = "redis-invalidated"     // Redis saw an invalidation (of any node) since the lookup
	skipAfterSet    = "invalidated-after-set" // an event landed while the entry was being stored: deleted
	skipRedisError  = "redis-error"           // the fill's Redis call failed
)

// admit decides whether a read that began at snapshot s and answered info may be stored;
// redisNewest is the tenant's newest event LSN as the lookup found it in Redis (every node's
// invalidations raise it). It returns "" to store, else the reason not to.
func (g *guard) admit(tenant string, s snapshot, info records.ReadInfo, redisNewest uint64, standbyLag time.Duration) string {
	if g.moved(tenant, s) {
		return skipInvalidated
	}
	if info.Source == records.SourcePrimary {
		// A primary read that began after every event this node applied, with none applied
		// while it ran, is at least as new as each of them.
		return ""
	}
	if info.LSN == 0 {
		return skipLSNUnknown
	}
	if info.LSN < max(s.newest, redisNewest) {
		return skipLSNBehind
	}
	// A reset stands for events nobody saw (a gap, a lost message, a move): their LSNs are
	// unknown, so a standby read is trusted only once it began StandbyLag after the reset,
	// when the standby (kept within that lag by the store) has replayed whatever they were.
	if !s.resetAt.IsZero() && s.at.Sub(s.resetAt) < standbyLag {
		return skipAfterReset
	}
	return ""
}
