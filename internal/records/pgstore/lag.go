package pgstore

import (
	"context"
	"time"

	"github.com/meridian-dev/meridian/replication"
)

// ReplicaLag is the largest proven staleness (replication.StandbyStatus.Staleness) of this
// region's healthy standby copies of shards homed elsewhere, 0 when there are none;
// replication.StalenessUnknown for a copy not yet proven fresh (its primary not sampled yet, or
// unreachable since before the copy's replay position). cmd/api publishes it in gossip. It asks
// the read path's tracker about every such copy — not only those reads have used — so an idle
// node reports its standbys too, and it queries a standby, and samples its primary, at most once
// per StandbyInterval (the sample in the background).
func (s *Store) ReplicaLag(ctx context.Context) time.Duration {
	for _, sh := range s.cfg.Map.Shards() {
		pool, isPrimary, err := s.cfg.Conns.Local(ctx, sh, s.cfg.Region)
		if err != nil || isPrimary {
			continue
		}
		// An untyped nil when the primary pool cannot be had: no sample, so the copy's
		// staleness grows.
		var primary replication.Querier
		if _, p, err := s.primary(ctx, sh.ID); err == nil {
			primary = p
		}
		s.tracker.Status(ctx, sh.ID, pool, primary)
	}
	return s.tracker.Lag()
}
