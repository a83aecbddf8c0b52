package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// noteKeyTenant remembers that tenant stored an Idempotency-Key on shard.
func (s *Store) noteKeyTenant(shard, tenant string) {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	if s.keyTenants == nil {
		s.keyTenants = map[string]map[string]struct{}{}
	}
	if s.keyTenants[shard] == nil {
		s.keyTenants[shard] = map[string]struct{}{}
	}
	s.keyTenants[shard][tenant] = struct{}{}
}

func (s *Store) knownTenants(shard string) []string {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	out := make([]string, 0, len(s.keyTenants[shard]))
	for t := range s.keyTenants[shard] {
		out = append(out, t)
	}
	return out
}

// RunCleanup deletes expired Idempotency-Key rows on every shard homed in this region every
// interval until ctx ends.
func (s *Store) RunCleanup(ctx context.Context, interval time.Duration) {
	tk := time.NewTicker(interval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		for _, sh := range s.cfg.Map.Shards() {
			if sh.HomeRegion != s.cfg.Region {
				continue
			}
			if n, err := s.CleanupIdempotencyKeys(ctx, sh.ID); err != nil {
				s.log.Warn("idempotency cleanup", "shard", sh.ID, "err", err)
			} else if n > 0 {
				s.log.Info("idempotency cleanup", "shard", sh.ID, "deleted", n)
			}
		}
	}
}

// CleanupIdempotencyKeys deletes expired Idempotency-Key rows on shard and returns how many it
// removed: of every tenant through Config.Workers when set, else per known tenant, because
// row-level security scopes every statement of meridian_app to one tenant.
func (s *Store) CleanupIdempotencyKeys(ctx context.Context, shard string) (int64, error) {
	sh, err := s.shard(shard)
	if err != nil {
		return 0, err
	}
	if s.cfg.Workers != nil {
		// The worker role's policy lets it delete expired keys of every tenant, by the
		// database's clock, in one statement.
		pool, err := s.cfg.Workers.Primary(ctx, sh)
		if err != nil {
			return 0, err
		}
		tag, err := pool.Exec(ctx, `DELETE FROM idempotency_keys WHERE expires_at < now()`)
		if err != nil {
			return 0, fmt.Errorf("pgstore: idempotency cleanup on %s: %w", sh.ID, err)
		}
		return tag.RowsAffected(), nil
	}
	pool, err := s.cfg.Conns.Primary(ctx, sh)
	if err != nil {
		return 0, err
	}
	// meridian_app cannot list tenants (row-level security), so the job covers the tenants
	// this store has stored keys for since it started; keys of others are still never replayed
	// once expired (claimKey re-claims them), they only wait for a cross-tenant purge.
	var total int64
	for _, tenant := range s.knownTenants(sh.ID) {
		err := inTx(ctx, pool, tenant, pgx.TxOptions{}, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, `DELETE FROM idempotency_keys WHERE tenant_id = $1 AND expires_at < $2`, tenant, s.cfg.Now())
			total += tag.RowsAffected()
			return err
		})
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
