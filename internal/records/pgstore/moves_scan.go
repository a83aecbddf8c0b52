package pgstore

// The range primitives of a move's two scans (backfill and a full verify pass), for a
// controller that runs several key-range streams at once (docs/moves.md, "Throughput").
// SplitKeys cuts a tenant's keys into ranges; CopyRange is CopyBatch bounded above and
// CompareRange is VerifyBatch over a whole range, with the same guards: a copy never regresses
// a version nor brings back a deleted record, tombstones travel, and a compared range is read
// on both sides over the same keys. CompareRange reads each side's row digests with one
// streamed query and merges the two streams as they arrive: no LIMIT pages, no per-range
// digest (a range digest saved bytes, not the server's work of reading every row, and a range
// with one difference was read twice).

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

var copyBoundedSQL = boundedSQL(rowCols)

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

// streamSQL reads cols of every row of tenant $1 after the key ($2, $3) in key order (up to
// ($4, $5) inclusive when bounded), with no LIMIT: one index range scan a range, streamed.
func streamSQL(cols string, bounded bool) string {
	bound := ``
	if bounded {
		bound = ` AND (collection, id) <= ($4, $5)`
	}
	return `SELECT ` + cols + ` FROM records WHERE tenant_id = $1 AND (collection, id) > ($2, $3)` + bound + `
	ORDER BY collection, id`
}

// hashCols are what CompareRange reads of a row: the key, version, deleted flag and a 64-bit
// hash of data's binary form (jsonb_hash_extended, the hash of jsonb equality, the equality
// Repair's guard uses). It adds about a fifth of what md5(data::text) adds to reading a
// row, md5 having to print the jsonb as text first (docs/BENCHMARKS.md, "Tenant moves:
// backfill and verify (issue 14)").
// Unlike md5 its value depends on the server's architecture and Postgres version, so two rows
// that differ only by hash are compared again by md5 (VerifyKeys) before they count: a pair
// of shards that disagree on hashes makes a pass slower, never wrong, and never makes it find
// differences Repair cannot remove.
const hashCols = `collection, id, version, deleted, jsonb_hash_extended(data, 0)`

var (
	digestStreamSQL        = streamSQL(hashCols, false)
	digestStreamBoundedSQL = streamSQL(hashCols, true)
)

// streamArgs are streamSQL's statement and arguments for the range (after, upto] (the zero
// upto: no bound).
func streamArgs(tenant string, after, upto records.Key, unbounded, bounded string) (string, []any) {
	if upto == (records.Key{}) {
		return unbounded, []any{tenant, after.Collection, after.ID}
	}
	return bounded, []any{tenant, after.Collection, after.ID, upto.Collection, upto.ID}
}

// digestChunk is how many digests a side's reader hands the merge at a time.
const digestChunk = 512

// streamDigests reads the digests of tenant's rows in (after, upto] on pool in key order and
// sends them to out in chunks; it closes out when it returns.
func streamDigests(ctx context.Context, pool *pgxpool.Pool, tenant string, after, upto records.Key, out chan<- []digest) error {
	defer close(out)
	stmt, args := streamArgs(tenant, after, upto, digestStreamSQL, digestStreamBoundedSQL)
	_, err := readOn(ctx, pool, tenant, 0, func(b *pgx.Batch) {
		b.Queue(stmt, args...).Query(func(rows pgx.Rows) error {
			chunk := make([]digest, 0, digestChunk)
			send := func() error {
				select {
				case out <- chunk:
					chunk = make([]digest, 0, digestChunk)
					return nil
				case <-ctx.Done():
					return context.Cause(ctx)
				}
			}
			for rows.Next() {
				var d digest
				if err := rows.Scan(&d.key.Collection, &d.key.ID, &d.version, &d.deleted, &d.hash); err != nil {
					return err
				}
				if chunk = append(chunk, d); len(chunk) == digestChunk {
					if err := send(); err != nil {
						return err
					}
				}
			}
			if err := rows.Err(); err != nil {
				return err
			}
			if len(chunk) > 0 {
				return send()
			}
			return nil
		})
	})
	return err
}

// digestCursor walks one side's stream of digest chunks.
type digestCursor struct {
	in    <-chan []digest
	chunk []digest
	done  bool
}

// peek is the side's next digest, nil at the end of its stream.
func (c *digestCursor) peek() *digest {
	for len(c.chunk) == 0 && !c.done {
		ch, ok := <-c.in
		c.chunk, c.done = ch, !ok
	}
	if len(c.chunk) == 0 {
		return nil
	}
	return &c.chunk[0]
}

func (c *digestCursor) pop() { c.chunk = c.chunk[1:] }

// CompareRange compares tenant's rows on shards from and to over the keys in (after, upto]
// (the zero upto: every key after after) by (collection, id, version, deleted, a hash of data;
// rows that differ by the hash alone are compared again by md5 of data, as VerifyBatch
// compares them: hashCols), and returns the keys that differ (missing on to, extra on to, or
// different), in key order, and how many distinct keys it compared. Each side is read with
// one streamed query (no LIMIT, no keyset round trips) and the two streams are merged as they
// arrive, so its memory is a few chunks of digests a side plus the differing keys whatever
// the range's size; ranges are meant to come from SplitKeys.
func (s *Store) CompareRange(ctx context.Context, tenant, from, to string, after, upto records.Key) (diffs []records.Key, checked int, err error) {
	src, dst, err := s.primaries(ctx, from, to)
	if err != nil {
		return nil, 0, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	chA, chB := make(chan []digest, 4), make(chan []digest, 4)
	// The first side to fail stops the other; its error is the one returned (the other's is
	// then only the cancellation).
	var first error
	var once sync.Once
	fail := func(shard string, err error) {
		once.Do(func() {
			first = classify(fmt.Errorf("read %s: %w", shard, err))
			cancel(first)
		})
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := streamDigests(ctx, src, tenant, after, upto, chA); err != nil {
			fail(from, err)
		}
	})
	wg.Go(func() {
		if err := streamDigests(ctx, dst, tenant, after, upto, chB); err != nil {
			fail(to, err)
		}
	})
	a, b := &digestCursor{in: chA}, &digestCursor{in: chB}
	var suspects []records.Key // same version and deleted flag, other hash
	for {
		da, db := a.peek(), b.peek()
		if da == nil && db == nil {
			break // both streams closed: ended or failed (then the other was cancelled)
		}
		switch {
		case db == nil || (da != nil && da.key.Less(db.key)):
			diffs = append(diffs, da.key) // missing on the target
			a.pop()
		case da == nil || db.key.Less(da.key):
			diffs = append(diffs, db.key) // on the target only
			b.pop()
		default:
			switch {
			case da.version != db.version || da.deleted != db.deleted:
				diffs = append(diffs, da.key)
			case da.hash != db.hash:
				suspects = append(suspects, da.key)
			}
			a.pop()
			b.pop()
		}
		checked++
	}
	wg.Wait()
	if first != nil {
		return nil, 0, first
	}
	if len(suspects) == 0 {
		return diffs, checked, nil
	}
	confirmed, err := s.VerifyKeys(ctx, tenant, from, to, suspects)
	if err != nil {
		return nil, 0, err
	}
	return mergeKeys(diffs, confirmed), checked, nil
}

// mergeKeys merges two lists of distinct keys, each in key order, into one in key order.
func mergeKeys(a, b []records.Key) []records.Key {
	out := make([]records.Key, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		if a[0].Less(b[0]) {
			out, a = append(out, a[0]), a[1:]
		} else {
			out, b = append(out, b[0]), b[1:]
		}
	}
	return append(append(out, a...), b...)
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
