package pgstore

// The range primitives of a move's two scans (backfill and a full verify pass), for a
// controller that runs several key-range streams at once (docs/moves.md, "Throughput").
// SplitKeys cuts a tenant's keys into ranges; CopyRange and VerifyRange are CopyBatch and
// VerifyBatch bounded above, with the same guards: a copy never regresses a version nor
// brings back a deleted record, tombstones travel, and a verified range is compared on both
// sides over the same keys. VerifyRange first compares one digest of the whole range per side
// and reads row digests only when they differ, so a clean range costs two one-row answers.

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-dev/meridian/internal/records"
)

// splitKeysSQL reads the key of every $2-th row of tenant $1 in key order (an index-only scan
// of the primary key when the visibility map allows).
const splitKeysSQL = `SELECT collection, id FROM (
		SELECT collection, id, row_number() OVER (ORDER BY collection, id) AS rn
		FROM records WHERE tenant_id = $1) s
	WHERE rn % $2 = 0 ORDER BY collection, id`

// SplitKeys returns the key of every every-th row of tenant's rows on shard's primary
// (tombstones included), ascending. The ranges (zero, k1], (k1, k2], …, (kn, ∞) cover every
// key, including keys another shard has and this one lacks, each exactly once; each holds
// every rows when taken (the last at most every). records.ErrTenantNotFound when the shard
// has no row for the tenant.
func (s *Store) SplitKeys(ctx context.Context, tenant, shard string, every int) ([]records.Key, error) {
	if every < 1 {
		return nil, fmt.Errorf("pgstore: SplitKeys: every %d", every)
	}
	_, pool, err := s.primary(ctx, shard)
	if err != nil {
		return nil, err
	}
	var out []records.Key
	_, err = readOn(ctx, pool, tenant, 0, func(b *pgx.Batch) {
		b.Queue(splitKeysSQL, tenant, every).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var k records.Key
				if err := rows.Scan(&k.Collection, &k.ID); err != nil {
					return err
				}
				out = append(out, k)
			}
			return rows.Err()
		})
	})
	return out, classify(err)
}

// boundedSQL is rangeSQL bounded above by the key ($4, $5) (inclusive), limit $6.
func boundedSQL(cols string) string {
	return `SELECT ` + cols + ` FROM records WHERE tenant_id = $1 AND (collection, id) > ($2, $3)
	AND (collection, id) <= ($4, $5) ORDER BY collection, id LIMIT $6`
}

var (
	copyBoundedSQL   = boundedSQL(rowCols)
	verifyBoundedSQL = boundedSQL(`collection, id, version, deleted, md5(data::text)`)
)

// rangeArgs are the arguments of a range read after after, up to upto (the zero Key: no upper
// bound, rangeSQL) of limit rows, and the statement to use.
func rangeArgs(tenant string, after, upto records.Key, limit int, unbounded, bounded string) (string, []any) {
	if upto == (records.Key{}) {
		return unbounded, []any{tenant, after.Collection, after.ID, limit}
	}
	return bounded, []any{tenant, after.Collection, after.ID, upto.Collection, upto.ID, limit}
}

// CopyRange is CopyBatch over the keys in (after, upto] only; the zero upto is no bound (then
// it is CopyBatch). It copies the next limit rows of the range, version-guarded, and returns
// the last key it read and how many rows it read; copied < limit means the range is done.
func (s *Store) CopyRange(ctx context.Context, tenant, from, to string, after, upto records.Key, limit int) (next records.Key, copied int, err error) {
	if limit < 1 {
		return after, 0, fmt.Errorf("pgstore: CopyRange: limit %d", limit)
	}
	_, src, err := s.primary(ctx, from)
	if err != nil {
		return after, 0, err
	}
	stmt, args := rangeArgs(tenant, after, upto, limit, copyRangeSQL, copyBoundedSQL)
	var rows []row
	_, err = readOn(ctx, src, tenant, 0, func(b *pgx.Batch) {
		b.Queue(stmt, args...).Query(func(r pgx.Rows) error {
			var err error
			rows, err = scanRows(r)
			return err
		})
	})
	if err != nil {
		return after, 0, classify(fmt.Errorf("read %s: %w", from, err))
	}
	if len(rows) == 0 {
		return after, 0, nil
	}
	if _, err := s.upsertRows(ctx, tenant, to, rows, upsertNewerSQL); err != nil {
		return after, 0, classify(fmt.Errorf("write %s: %w", to, err))
	}
	return rows[len(rows)-1].key, len(rows), nil
}

// rowHashSQL is one row's part of a range digest: a 64-bit hash of its key, version, deleted
// flag and data, computed on jsonb's binary form (no text conversion, no md5: the cost of a
// clean range is one index scan). Keys cannot hold '/' (the records table's CHECKs), so the
// key's text is unambiguous. The data is hashed by jsonb equality, the equality Repair's guard
// uses. Hash values depend on the server's architecture and Postgres version; where two
// shards disagree on them every range looks different and is compared row by row (by
// md5(data::text), as VerifyBatch does), which is slower, never wrong.
const rowHashSQL = `(hashtextextended(collection || '/' || id, 0) # jsonb_hash_extended(data, version * 2 + deleted::int))`

// rangeDigestSQL digests tenant $1's rows after ($2, $3) (up to ($4, $5) when bounded): their
// count and the sum of their row hashes (order-free, so no sort). Two statements, not a flag:
// a bound the planner cannot see would leave the index scan running to the tenant's last key.
func rangeDigestSQL(bounded bool) string {
	bound := ``
	if bounded {
		bound = ` AND (collection, id) <= ($4, $5)`
	}
	return `SELECT count(*), COALESCE(sum(` + rowHashSQL + `), 0)::text
	FROM records WHERE tenant_id = $1 AND (collection, id) > ($2, $3)` + bound
}

var (
	digestAfterSQL   = rangeDigestSQL(false)
	digestBoundedSQL = rangeDigestSQL(true)
)

// rangeDigest is a range's count and digest on one side.
type rangeDigest struct {
	n   int
	sum string
}

func digestRange(ctx context.Context, pool *pgxpool.Pool, tenant string, after, upto records.Key) (rangeDigest, error) {
	stmt, args := digestBoundedSQL, []any{tenant, after.Collection, after.ID, upto.Collection, upto.ID}
	if upto == (records.Key{}) {
		stmt, args = digestAfterSQL, args[:3]
	}
	var d rangeDigest
	_, err := readOn(ctx, pool, tenant, 0, func(b *pgx.Batch) {
		b.Queue(stmt, args...).QueryRow(func(r pgx.Row) error { return r.Scan(&d.n, &d.sum) })
	})
	return d, err
}

// boundedDigests reads the next limit digests of tenant in (after, upto] on pool.
func boundedDigests(ctx context.Context, pool *pgxpool.Pool, tenant string, after, upto records.Key, limit int) ([]digest, error) {
	stmt, args := rangeArgs(tenant, after, upto, limit, verifyRangeSQL, verifyBoundedSQL)
	var out []digest
	_, err := readOn(ctx, pool, tenant, 0, func(b *pgx.Batch) {
		b.Queue(stmt, args...).Query(func(rows pgx.Rows) error {
			out = make([]digest, 0, limit)
			for rows.Next() {
				var d digest
				if err := rows.Scan(&d.key.Collection, &d.key.ID, &d.version, &d.deleted, &d.md5); err != nil {
					return err
				}
				out = append(out, d)
			}
			return rows.Err()
		})
	})
	return out, err
}

// both runs f on the source and target pools at once and returns the first error, named.
func both[T any](from, to string, f func(side int) (T, error)) (a, b T, err error) {
	var errA, errB error
	var wg sync.WaitGroup
	wg.Go(func() { a, errA = f(0) })
	b, errB = f(1)
	wg.Wait()
	if errA != nil {
		return a, b, classify(fmt.Errorf("read %s: %w", from, errA))
	}
	if errB != nil {
		return a, b, classify(fmt.Errorf("read %s: %w", to, errB))
	}
	return a, b, nil
}

// VerifyRange compares tenant's rows on shards from and to over the keys in (after, upto] (the
// zero upto: every key after after), like VerifyBatch, and returns the keys that differ, in key
// order, and how many distinct keys it compared. It first compares the range's count and
// digest on both sides (one row each); only when they differ does it read and merge the rows'
// digests, limit at a time. Meant for ranges of about limit keys (SplitKeys's); a larger one
// costs more round trips when it differs, never more memory than limit digests a side plus
// its differing keys.
func (s *Store) VerifyRange(ctx context.Context, tenant, from, to string, after, upto records.Key, limit int) (diffs []records.Key, checked int, err error) {
	if limit < 1 {
		return nil, 0, fmt.Errorf("pgstore: VerifyRange: limit %d", limit)
	}
	_, src, err := s.primary(ctx, from)
	if err != nil {
		return nil, 0, err
	}
	_, dst, err := s.primary(ctx, to)
	if err != nil {
		return nil, 0, err
	}
	pools := [2]*pgxpool.Pool{src, dst}
	da, db, err := both(from, to, func(side int) (rangeDigest, error) { return digestRange(ctx, pools[side], tenant, after, upto) })
	if err != nil {
		return nil, 0, err
	}
	if da == db {
		return nil, da.n, nil
	}
	// The range differs: merge its rows' digests page by page, as VerifyBatch does.
	for {
		a, b, err := both(from, to, func(side int) ([]digest, error) {
			return boundedDigests(ctx, pools[side], tenant, after, upto, limit)
		})
		if err != nil {
			return diffs, checked, err
		}
		next, d, n := mergeDigests(a, b, after, limit)
		diffs, checked = append(diffs, d...), checked+n
		if n == 0 {
			return diffs, checked, nil
		}
		after = next
	}
}

// mergeDigests compares one page of digests of both sides read after after, limit a side (as
// VerifyBatch does): the page ends at the last key of a side that returned limit rows (the
// smaller one when both did), else it holds every key of both. It returns the page's last key,
// the differing keys and how many distinct keys it compared (0: nothing was left).
func mergeDigests(a, b []digest, after records.Key, limit int) (next records.Key, diffs []records.Key, checked int) {
	var hi *records.Key
	for _, side := range [][]digest{a, b} {
		if len(side) == limit {
			if k := side[limit-1].key; hi == nil || k.Less(*hi) {
				hi = &k
			}
		}
	}
	in := func(k records.Key) bool { return hi == nil || !hi.Less(k) }
	next = after
	i, j := 0, 0
	for {
		var da, db *digest
		if i < len(a) && in(a[i].key) {
			da = &a[i]
		}
		if j < len(b) && in(b[j].key) {
			db = &b[j]
		}
		var k records.Key
		switch {
		case da == nil && db == nil:
			return next, diffs, checked
		case db == nil || (da != nil && da.key.Less(db.key)):
			k = da.key // missing on the target
			diffs = append(diffs, k)
			i++
		case da == nil || db.key.Less(da.key):
			k = db.key // on the target only
			diffs = append(diffs, k)
			j++
		default:
			k = da.key
			if da.version != db.version || da.deleted != db.deleted || da.md5 != db.md5 {
				diffs = append(diffs, k)
			}
			i++
			j++
		}
		checked++
		next = k
	}
}
