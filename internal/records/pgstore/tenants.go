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

// MaxTenantsPage is the most tenants ListTenants answers at once.
const MaxTenantsPage = 1000

// ListTenants lists the tenants with a row on shard whose id sorts after after, in id order, at
// most limit (1..MaxTenantsPage), with each row's status. Row-level security shows meridian_app
// one tenant at a time, so it reads as the worker role (Config.Workers; migration 00004 lets it
// read tenant_id and status of every row) on the shard's primary, and answers
// records.ErrNoWorkerRole without one. A shard holds a moving tenant's importing copy and a
// moved tenant's fenced source until cleanup: the caller decides placement from the map.
func (s *Store) ListTenants(ctx context.Context, shard, after string, limit int) ([]records.TenantStatus, error) {
	if limit < 1 || limit > MaxTenantsPage {
		return nil, fmt.Errorf("pgstore: ListTenants: limit %d not in [1, %d]", limit, MaxTenantsPage)
	}
	sh, err := s.shard(shard)
	if err != nil {
		return nil, err
	}
	if s.cfg.Workers == nil {
		return nil, records.ErrNoWorkerRole
	}
	pool, err := s.cfg.Workers.Primary(ctx, sh)
	if err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, `SELECT tenant_id, status FROM tenants WHERE tenant_id > $1 ORDER BY tenant_id LIMIT $2`, after, limit)
	if err != nil {
		return nil, classify(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (records.TenantStatus, error) {
		var t records.TenantStatus
		err := r.Scan(&t.ID, &t.Status)
		return t, err
	})
	return out, classify(err)
}
