package pgstore

// The delta of a move's verify (docs/moves.md, "The cutover"): instead of comparing every key of
// the tenant again, compare only the keys written since the last pass began. A write's outbox
// row names its key and carries its change_seq, and change_seq is allocated under the tenant
// row lock and commits in order, so the keys written in (after, upto] are exactly the keys of
// the outbox rows with seq in that range, once change_seq has reached upto.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-dev/meridian/internal/records"
)

// deltaPage is how many keys VerifyKeys compares per round trip.
const deltaPage = 5000

// CommittedSeq returns tenant's committed change_seq on shard's primary: every write with a lower
// or equal seq has committed. records.ErrTenantNotFound when the shard has no row for it.
func (s *Store) CommittedSeq(ctx context.Context, tenant, shard string) (int64, error) {
	_, pool, err := s.primary(ctx, shard)
	if err != nil {
		return 0, err
	}
	var seq int64
	_, err = readOn(ctx, pool, tenant, 0, func(b *pgx.Batch) {
		b.Queue(`SELECT change_seq FROM tenants WHERE tenant_id = $1`, tenant).QueryRow(func(r pgx.Row) error {
			err := r.Scan(&seq)
			if errors.Is(err, pgx.ErrNoRows) {
				return records.ErrTenantNotFound
			}
			return err
		})
	})
	return seq, classify(err)
}

// ChangedKeys returns the distinct keys of tenant's writes with change_seq in (after, upto] on
// shard's primary, in key order. upto must not be above the tenant's committed change_seq (read
// it with CommittedSeq first). It wraps records.ErrChangesPruned when the outbox no longer holds
// every seq of the range (rows pruned after their retention), since then some key may be
// missing from the answer.
func (s *Store) ChangedKeys(ctx context.Context, tenant, shard string, after, upto int64) ([]records.Key, error) {
	if after < 0 || upto < after {
		return nil, fmt.Errorf("pgstore: ChangedKeys: range (%d, %d]", after, upto)
	}
	if upto == after {
		return nil, nil
	}
	_, pool, err := s.primary(ctx, shard)
	if err != nil {
		return nil, err
	}
	var n int64
	var keys []records.Key
	_, err = readOn(ctx, pool, tenant, 0, func(b *pgx.Batch) {
		queueChangedKeys(b, "$3", &n, &keys, tenant, after, upto)
	})
	if err != nil {
		return nil, classify(err)
	}
	if n != upto-after {
		return nil, fmt.Errorf("%w: %d of the %d changes in (%d, %d] of %s on %s", records.ErrChangesPruned, n, upto-after, after, upto, tenant, shard)
	}
	return keys, nil
}

// queueChangedKeys queues the count of tenant's ($1) outbox rows with seq in ($2, upto] into n
// and their distinct keys, in key order, into keys; upto is an SQL expression ("$3", or a
// subquery) and args its parameters after tenant and after.
func queueChangedKeys(b *pgx.Batch, upto string, n *int64, keys *[]records.Key, args ...any) {
	b.Queue(`SELECT count(*) FROM outbox WHERE tenant_id = $1 AND seq > $2 AND seq <= `+upto, args...).
		QueryRow(func(r pgx.Row) error { return r.Scan(n) })
	b.Queue(`SELECT DISTINCT collection, record_id FROM outbox WHERE tenant_id = $1 AND seq > $2 AND seq <= `+upto+`
		ORDER BY collection, record_id`, args...).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var k records.Key
			if err := rows.Scan(&k.Collection, &k.ID); err != nil {
				return err
			}
			*keys = append(*keys, k)
		}
		return rows.Err()
	})
}

// keyDigestsSQL reads the digests of the given keys ($2, $3) of tenant $1, in key order.
const keyDigestsSQL = `SELECT collection, id, version, deleted, md5(data::text) FROM records
	WHERE tenant_id = $1 AND (collection, id) IN (SELECT * FROM unnest($2::text[], $3::text[]))
	ORDER BY collection, id`

// keyDigests reads the digests of keys of tenant on pool, by key.
func keyDigests(ctx context.Context, pool *pgxpool.Pool, tenant string, keys []records.Key) (map[records.Key]digest, error) {
	colls, ids := keyArrays(keys)
	out := make(map[records.Key]digest, len(keys))
	_, err := readOn(ctx, pool, tenant, 0, func(b *pgx.Batch) {
		b.Queue(keyDigestsSQL, tenant, colls, ids).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var d digest
				if err := rows.Scan(&d.key.Collection, &d.key.ID, &d.version, &d.deleted, &d.md5); err != nil {
					return err
				}
				out[d.key] = d
			}
			return rows.Err()
		})
	})
	return out, err
}

// VerifyKeys compares the given keys of tenant on shards from and to, like VerifyBatch but for
// a list of keys (a delta pass), and returns those that differ (missing on to, extra on to, or
// different), in the order given.
func (s *Store) VerifyKeys(ctx context.Context, tenant, from, to string, keys []records.Key) ([]records.Key, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	src, dst, err := s.primaries(ctx, from, to)
	if err != nil {
		return nil, err
	}
	var diffs []records.Key
	for page := range chunks(keys, deltaPage) {
		var a, b map[records.Key]digest
		var errA, errB error
		var wg sync.WaitGroup
		wg.Go(func() { a, errA = keyDigests(ctx, src, tenant, page) })
		b, errB = keyDigests(ctx, dst, tenant, page)
		wg.Wait()
		if errA != nil {
			return nil, classify(fmt.Errorf("read %s: %w", from, errA))
		}
		if errB != nil {
			return nil, classify(fmt.Errorf("read %s: %w", to, errB))
		}
		for _, k := range page {
			da, okA := a[k]
			db, okB := b[k]
			if okA != okB || (okA && (da.version != db.version || da.deleted != db.deleted || da.md5 != db.md5)) {
				diffs = append(diffs, k)
			}
		}
	}
	return diffs, nil
}

// chunks yields s in slices of at most n.
func chunks[T any](s []T, n int) func(func([]T) bool) {
	return func(yield func([]T) bool) {
		for len(s) > 0 {
			m := min(n, len(s))
			if !yield(s[:m]) {
				return
			}
			s = s[m:]
		}
	}
}

// PrecopyTarget copies, before a move's fence, what FinishTarget would otherwise copy under it:
// tenant's outbox rows and unexpired Idempotency-Key rows on shard from up to the source's
// current change_seq (the mark it returns), into the importing copy on shard to, in one
// transaction that also records the mark as the copy's change_seq. FinishTarget then copies
// only the rows after the mark, so the pause does not grow with the tenant's write history.
// Idempotent; calling it again copies only what is new since the last mark and raises it. The target's row must be
// importing (records.ErrTenantExists otherwise; records.ErrTenantNotFound without one).
func (s *Store) PrecopyTarget(ctx context.Context, tenant, from, to string) (int64, error) {
	mark, err := s.CommittedSeq(ctx, tenant, from)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", from, err)
	}
	src, dst, err := s.primaries(ctx, from, to)
	if err != nil {
		return 0, err
	}
	err = inTx(ctx, dst, tenant, pgx.TxOptions{}, func(tx pgx.Tx) error {
		// prev is the last precopy's mark: the keys up to it are on the target. The copy can
		// take seconds while the row is locked (FOR NO KEY UPDATE: FOR UPDATE made every mirror
		// wait until its statement timeout, moving 200,000 rows under load).
		status, _, prev, err := lockTarget(ctx, tx, tenant, to)
		switch {
		case err != nil:
			return err
		case status != StatusImporting:
			return fmt.Errorf("%w: %s on %s has status %s", records.ErrTenantExists, tenant, to, status)
		}
		if err := copyOutbox(ctx, src, tx, tenant, mark); err != nil {
			return err
		}
		// The first precopy copies every live key (those without a seq too); a later one only
		// the keys of the writes since the one before (re-reading them all each time made a
		// precopy of a busy tenant take seconds, and the controller's catch-up never caught up).
		if err := copyIdemKeys(ctx, src, tx, tenant, s.cfg.Now(), prev, mark); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE tenants SET change_seq = GREATEST(change_seq, $2) WHERE tenant_id = $1`, tenant, mark)
		return err
	})
	if err != nil {
		return 0, classify(err)
	}
	return mark, nil
}

// FirstWrite measures a finished cutover's pause as clients saw it: from when the fence was set
// on shard from (its tenant row's updated_at, which only the fence's change moves) to the first
// write a client made on shard to (its earliest outbox row with a WAL position: rows the move
// copied have none), both by the databases' clocks. ok is false when either is not known: the
// source is not fenced (or gone) or no client has written to the target yet.
func (s *Store) FirstWrite(ctx context.Context, tenant, from, to string) (pause time.Duration, ok bool, err error) {
	src, dst, err := s.primaries(ctx, from, to)
	if err != nil {
		return 0, false, err
	}
	var fenced bool
	var fencedAt time.Time
	_, err = readOn(ctx, src, tenant, 0, func(b *pgx.Batch) {
		b.Queue(`SELECT write_fenced, updated_at FROM tenants WHERE tenant_id = $1`, tenant).QueryRow(func(r pgx.Row) error {
			return r.Scan(&fenced, &fencedAt)
		})
	})
	if errors.Is(err, records.ErrTenantNotFound) || (err == nil && !fenced) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, classify(fmt.Errorf("read %s: %w", from, err))
	}
	var first *time.Time
	_, err = readOn(ctx, dst, tenant, 0, func(b *pgx.Batch) {
		b.Queue(`SELECT min(created_at) FROM outbox WHERE tenant_id = $1 AND lsn IS NOT NULL`, tenant).QueryRow(func(r pgx.Row) error {
			return r.Scan(&first)
		})
	})
	if err != nil {
		return 0, false, classify(fmt.Errorf("read %s: %w", to, err))
	}
	if first == nil {
		return 0, false, nil
	}
	return max(first.Sub(fencedAt), 0), true, nil
}
