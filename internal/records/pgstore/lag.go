package pgstore

import (
	"context"
	"time"
)

// ReplicaLag is the largest replay lag of this region's healthy standby copies of shards homed
// elsewhere, 0 when there are none; cmd/api publishes it in gossip. It asks the read path's
// tracker about every such copy — not only those reads have used — so an idle node reports its
// standbys too, and it queries a standby at most once per StandbyInterval.
func (s *Store) ReplicaLag(ctx context.Context) time.Duration {
	for _, sh := range s.cfg.Map.Shards() {
		pool, isPrimary, err := s.cfg.Conns.Local(ctx, sh, s.cfg.Region)
		if err != nil || isPrimary {
			continue
		}
		s.tracker.Status(ctx, sh.ID, pool)
	}
	return s.tracker.Lag()
}
