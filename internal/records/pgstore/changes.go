package pgstore

import (
	"context"
	"errors"
	"math"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/internal/records"
)

// ChangesLimit is the most rows one Changes call returns; a caller that wants more calls again
// after the last seq it got.
const ChangesLimit = 1000

// changesSQL reads a tenant's outbox rows in (after, upto] in seq order, on the unique index
// (tenant_id, seq). Row-level security scopes it to the batch's tenant as well.
const changesSQL = `SELECT seq, id, collection, record_id, op, version, created_at FROM outbox
	WHERE tenant_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4`

// Changes returns the tenant's outbox rows with after < seq ≤ upto in seq order (upto 0 = no
// upper bound), at most ChangesLimit of them: callers loop. It reads like every read, as the
// app role in the tenant's scope, from the region's local copy when the read-source decision
// lets it (a fresh, healthy standby), else from the shard's primary. When upto > 0 and the
// standby has not yet replayed every row up to upto, the rest is read from the primary, so the
// answer is never short because of replication lag. records.ErrTenantNotFound when the tenant
// has no row.
//
// Rows older than the outbox's retention are pruned: when after+1 is older than that, the
// answer starts past after+1, and the caller must treat the hole as a gap it cannot fill.
func (s *Store) Changes(ctx context.Context, tenant, shard string, after, upto int64) ([]records.ChangeEvent, error) {
	t := records.Target{Tenant: tenant, Shard: shard}
	bound := upto
	if bound <= 0 {
		bound = math.MaxInt64
	}
	var out []records.ChangeEvent
	info, err := s.read(ctx, t, records.ReadOptions{}, queueChanges(&out, tenant, after, bound, ChangesLimit))
	if err != nil {
		return nil, err
	}
	if info.Source == records.SourcePrimary || upto <= 0 || len(out) == ChangesLimit {
		return out, nil
	}
	last := after
	if len(out) > 0 {
		last = out[len(out)-1].Seq
	}
	if last >= upto {
		return out, nil
	}
	// A tenant's seqs commit in order (its row lock serialises them), so what a standby has is
	// a prefix of what the primary has: the primary adds the seqs after the last one we got.
	_, primary, err := s.primary(ctx, shard)
	if err != nil {
		return nil, err
	}
	var rest []records.ChangeEvent
	if _, err := readOn(ctx, primary, tenant, 0, queueChanges(&rest, tenant, last, bound, ChangesLimit-len(out))); err != nil {
		return nil, classify(err)
	}
	return append(out, rest...), nil
}

// queueChanges queues changesSQL and collects its rows into *out (reset on every call: a
// failed standby read is retried on the primary).
func queueChanges(out *[]records.ChangeEvent, tenant string, after, upto int64, limit int) func(*pgx.Batch) {
	return func(b *pgx.Batch) {
		b.Queue(changesSQL, tenant, after, upto, limit).Query(func(rows pgx.Rows) error {
			var err error
			*out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (records.ChangeEvent, error) {
				var ev records.ChangeEvent
				err := row.Scan(&ev.Seq, &ev.OutboxID, &ev.Collection, &ev.ID, &ev.Op, &ev.Version, &ev.At)
				return ev, err
			})
			return err
		})
	}
}

// ChangeSeq returns the tenant's last change sequence (tenants.change_seq): the seq of its
// newest change event, 0 before its first write. It reads like every read, from the region's
// local copy when the read-source decision lets it, so it may trail the primary by up to the
// staleness bound; records.ErrTenantNotFound when the tenant has no row.
func (s *Store) ChangeSeq(ctx context.Context, t records.Target) (int64, error) {
	var seq int64
	_, err := s.read(ctx, t, records.ReadOptions{}, func(b *pgx.Batch) {
		b.Queue(`SELECT change_seq FROM tenants WHERE tenant_id = $1`, t.Tenant).QueryRow(func(row pgx.Row) error {
			err := row.Scan(&seq)
			if errors.Is(err, pgx.ErrNoRows) {
				// The batch's tenant check answers first; this is only a row gone in between.
				return records.ErrTenantNotFound
			}
			return err
		})
	})
	if err != nil {
		return 0, err
	}
	return seq, nil
}
