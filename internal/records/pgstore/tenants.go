package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/internal/records"
)

// CreateTenant records tenant on shard (idempotent) and reports whether this call created the
// row. Only a store of the shard's home region may do it (records.ErrNotHome otherwise).
func (s *Store) CreateTenant(ctx context.Context, tenant, shard string) (created bool, err error) {
	sh, err := s.shard(shard)
	if err != nil {
		return false, err
	}
	if sh.HomeRegion != s.cfg.Region {
		return false, fmt.Errorf("%w: %s is homed in %s", records.ErrNotHome, sh.ID, sh.HomeRegion)
	}
	pool, err := s.cfg.Conns.Primary(ctx, sh)
	if err != nil {
		return false, err
	}
	err = inTx(ctx, pool, tenant, pgx.TxOptions{}, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO tenants (tenant_id) VALUES ($1) ON CONFLICT (tenant_id) DO NOTHING`, tenant)
		created = tag.RowsAffected() == 1
		return err
	})
	return created, classify(err)
}

// Tenant reads tenant's row on shard from the shard's primary (the router's admin API decides
// existence with it, so it must not see a lagging copy), in one round trip like every read.
// records.ErrTenantNotFound when there is no row.
func (s *Store) Tenant(ctx context.Context, tenant, shard string) (records.TenantRow, error) {
	sh, pool, err := s.primary(ctx, shard)
	if err != nil {
		return records.TenantRow{}, err
	}
	row := records.TenantRow{ID: tenant, Shard: sh.ID}
	_, err = readOn(ctx, pool, tenant, 0, func(b *pgx.Batch) {
		b.Queue(`SELECT status, write_epoch, write_fenced, created_at FROM tenants WHERE tenant_id = $1`, tenant).
			QueryRow(func(r pgx.Row) error {
				err := r.Scan(&row.Status, &row.WriteEpoch, &row.Fenced, &row.CreatedAt)
				if errors.Is(err, pgx.ErrNoRows) {
					return records.ErrTenantNotFound
				}
				return err
			})
	})
	if err != nil {
		return records.TenantRow{}, classify(err)
	}
	return row, nil
}
