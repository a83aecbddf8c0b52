package api

import (
	"context"
	"time"
)

// ReplicaLag is the largest replay lag of this region's healthy standby copies of shards homed
// elsewhere, 0 when there are none; cmd/api publishes it in gossip. It reuses the read path's
// standby status, so it queries a standby at most once per StandbyInterval.
func (s *Server) ReplicaLag(ctx context.Context) time.Duration {
	var lag time.Duration
	for _, sh := range s.maps.Shards() {
		pool, isPrimary, err := s.pools.Local(ctx, sh, s.cfg.Region)
		if err != nil || isPrimary {
			continue
		}
		if st, healthy := s.standbys.status(ctx, sh.ID, pool); healthy {
			lag = max(lag, st.Lag)
		}
	}
	return lag
}
