package pgstore

// A tenant move's steps in Postgres (DESIGN.md §8, docs/internal-contracts.md "Move seams").
// The controller (internal/moves) calls these; an API node's Write calls mirror. Every step runs
// on the primaries of the shards it names, as the app role under the tenant's row-level
// security scope, and every step is idempotent, so a restarted controller can repeat any of
// them. Two rules keep a race between the mirror, the backfill and the repair from ever
// regressing a version or resurrecting a deleted record on the target:
//
//   - rows travel whole, tombstones included (deleted = true, with their version);
//   - a copy or mirror replaces a target row only with a greater version (upsertNewer); a repair
//     also replaces an equal version whose data or deleted flag differs (upsertRepair), never a
//     greater one.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-dev/meridian/internal/records"
)

// Tenant row statuses a move sets (tenants.status).
const (
	// StatusImporting is a move target's row until FinishTarget: fenced for client writes,
	// written only by the mirror, the backfill and the repair.
	StatusImporting = "importing"
	// StatusActive is a tenant's row where clients write.
	StatusActive = "active"
)

// row is a records row as a move copies it: every column but tenant_id. data is jsonb's text.
type row struct {
	key              records.Key
	version          int64
	data             string
	deleted          bool
	created, updated time.Time
}

// rowCols are the columns scanRows reads, in its order.
const rowCols = `collection, id, version, data::text, deleted, created_at, updated_at`

func scanRows(rows pgx.Rows) ([]row, error) {
	var out []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.key.Collection, &r.key.ID, &r.version, &r.data, &r.deleted, &r.created, &r.updated); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// rowOf is the row a committed change left on the source.
func rowOf(ch records.Change) row {
	r := row{key: records.Key{Collection: ch.Record.Collection, ID: ch.Record.ID}, version: ch.Record.Version,
		data: string(ch.Record.Data), created: ch.Record.CreatedAt, updated: ch.Record.UpdatedAt}
	if ch.Kind == records.Deleted {
		r.deleted, r.data = true, "{}"
	}
	return r
}

// The guards of upsertSQL's DO UPDATE: which target rows a source row may replace.
const (
	// upsertNewer: only an older version (mirror, backfill).
	upsertNewer = `records.version < EXCLUDED.version`
	// upsertRepair: an older version, or the same version with other data or deleted flag.
	upsertRepair = `records.version < EXCLUDED.version OR (records.version = EXCLUDED.version
		AND (records.deleted, records.data) IS DISTINCT FROM (EXCLUDED.deleted, EXCLUDED.data))`
)

// upsertSQL writes rows given as arrays ($2..$8) for tenant $1, all columns, guarded by guard.
// It inserts nothing when the tenant has no row on the shard (the caller checks that in the
// same batch, so a dropped target is told from a guarded no-op).
func upsertSQL(guard string) string {
	return `INSERT INTO records (tenant_id, collection, id, version, data, deleted, created_at, updated_at)
	SELECT $1, u.collection, u.id, u.version, u.data::jsonb, u.deleted, u.created_at, u.updated_at
	FROM unnest($2::text[], $3::text[], $4::int8[], $5::text[], $6::bool[], $7::timestamptz[], $8::timestamptz[])
		AS u(collection, id, version, data, deleted, created_at, updated_at)
	WHERE EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)
	ON CONFLICT (tenant_id, collection, id) DO UPDATE SET version = EXCLUDED.version, data = EXCLUDED.data,
		deleted = EXCLUDED.deleted, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at
	WHERE ` + guard
}

var (
	upsertNewerSQL  = upsertSQL(upsertNewer)
	upsertRepairSQL = upsertSQL(upsertRepair)
)

// upsertArgs are upsertSQL's arguments for rows.
func upsertArgs(tenant string, rows []row) []any {
	n := len(rows)
	colls, ids, data := make([]string, n), make([]string, n), make([]string, n)
	versions := make([]int64, n)
	deleted := make([]bool, n)
	created, updated := make([]time.Time, n), make([]time.Time, n)
	for i, r := range rows {
		colls[i], ids[i], versions[i], data[i], deleted[i], created[i], updated[i] =
			r.key.Collection, r.key.ID, r.version, r.data, r.deleted, r.created, r.updated
	}
	return []any{tenant, colls, ids, versions, data, deleted, created, updated}
}

// keyArrays splits keys into parallel collection and id arrays (for unnest).
func keyArrays(keys []records.Key) (colls, ids []string) {
	colls, ids = make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		colls[i], ids[i] = k.Collection, k.ID
	}
	return colls, ids
}

// tenantRowSQL reads the tenant's row for scopedBatch's check; it must follow setTenantSQL.
const tenantRowSQL = `SELECT status, write_fenced FROM tenants WHERE tenant_id = $1`

// scopedBatch runs the statements queue adds on a primary pool in one round trip, as one
// implicit transaction scoped to tenant (like readBatch, but writable), after reading the
// tenant's row: records.ErrTenantNotFound when it has none. status and fenced receive the row's
// values when not nil. An error anywhere rolls the whole batch back.
func scopedBatch(ctx context.Context, pool *pgxpool.Pool, tenant string, status *string, fenced *bool, queue func(*pgx.Batch)) error {
	b := &pgx.Batch{}
	b.Queue(setTenantSQL, tenant)
	b.Queue(tenantRowSQL, tenant).QueryRow(func(r pgx.Row) error {
		var st string
		var f bool
		if err := r.Scan(&st, &f); errors.Is(err, pgx.ErrNoRows) {
			return records.ErrTenantNotFound
		} else if err != nil {
			return err
		}
		if status != nil {
			*status = st
		}
		if fenced != nil {
			*fenced = f
		}
		return nil
	})
	queue(b)
	return pool.SendBatch(ctx, b).Close()
}

// upsertRows writes rows to tenant's copy on shard with the guard's statement and returns how
// many target rows it changed. records.ErrTenantNotFound when the shard has no row for the
// tenant (nothing is written).
func (s *Store) upsertRows(ctx context.Context, tenant, shard string, rows []row, stmt string) (int64, error) {
	_, pool, err := s.primary(ctx, shard)
	if err != nil {
		return 0, err
	}
	var n int64
	err = scopedBatch(ctx, pool, tenant, nil, nil, func(b *pgx.Batch) {
		b.Queue(stmt, upsertArgs(tenant, rows)...).Exec(func(tag pgconn.CommandTag) error {
			n = tag.RowsAffected()
			return nil
		})
	})
	return n, err
}

// mirror applies a change committed on t.Shard to t.MirrorTo (dual write, DESIGN.md §8): the
// record's row as the source has it, a delete as its tombstone, version-guarded, so a mirror
// that arrives after a newer one (or after the backfill copied a newer version) changes
// nothing. It never appends to the target's outbox nor touches its change_seq: the target
// continues the source's sequence at FinishTarget. The write has committed; a failure is
// logged and reported, and the move's verify repairs the difference.
func (s *Store) mirror(ctx context.Context, t records.Target, ch records.Change) records.MirrorResult {
	if t.MirrorTo == t.Shard {
		return ""
	}
	// The client's cancellation must not cut a mirror of a committed write short.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.MirrorTimeout)
	defer cancel()
	r := rowOf(ch)
	err := s.mirrors.send(ctx, s, t.Tenant, t.MirrorTo, r)
	switch {
	case err == nil:
		return records.MirrorOK
	case errors.Is(err, records.ErrTenantNotFound):
		s.log.Info("mirror skipped: the target has no row for the tenant", "tenant", t.Tenant, "shard", t.Shard,
			"target", t.MirrorTo, "collection", r.key.Collection, "id", r.key.ID, "version", r.version)
		return records.MirrorSkipped
	default:
		s.log.Warn("mirror write failed; the move's verify will repair it", "tenant", t.Tenant, "shard", t.Shard,
			"target", t.MirrorTo, "collection", r.key.Collection, "id", r.key.ID, "version", r.version, "err", err)
		return records.MirrorFailed
	}
}

// primaries are the primary pools of a move's source and target shards.
func (s *Store) primaries(ctx context.Context, from, to string) (src, dst *pgxpool.Pool, err error) {
	if _, src, err = s.primary(ctx, from); err != nil {
		return nil, nil, err
	}
	if _, dst, err = s.primary(ctx, to); err != nil {
		return nil, nil, err
	}
	return src, dst, nil
}

// lockTarget reads a move target's tenant row in tx, locked FOR NO KEY UPDATE (not UPDATE: a
// mirror write's foreign-key check takes KEY SHARE on this row and must not wait for us,
// TestMoveStepsDoNotBlockMirror); records.ErrTenantNotFound without one.
func lockTarget(ctx context.Context, tx pgx.Tx, tenant, to string) (status string, epoch, seq int64, err error) {
	err = tx.QueryRow(ctx, `SELECT status, write_epoch, change_seq FROM tenants WHERE tenant_id = $1 FOR NO KEY UPDATE`, tenant).Scan(&status, &epoch, &seq)
	if errors.Is(err, pgx.ErrNoRows) {
		err = fmt.Errorf("%w on %s", records.ErrTenantNotFound, to)
	}
	return status, epoch, seq, err
}

// SchemaVersion is the schema version (the highest migration applied) of shard's database,
// read on its primary through meridian_schema_version() (migration 00007: meridian_app cannot
// read goose's table).
func (s *Store) SchemaVersion(ctx context.Context, shard string) (int64, error) {
	_, pool, err := s.primary(ctx, shard)
	if err != nil {
		return 0, err
	}
	var v int64
	if err := pool.QueryRow(ctx, `SELECT meridian_schema_version()`).Scan(&v); err != nil {
		return 0, classify(err)
	}
	return v, nil
}

// PrepareTarget creates tenant's row on shard to (a move from shard from): status importing
// and write_fenced, so no client write lands there before the cutover while the mirror, the
// backfill and the repair fill it. The tenant must exist on from (records.ErrTenantNotFound).
// Idempotent; a row on to that is not an importing copy is records.ErrTenantExists.
func (s *Store) PrepareTarget(ctx context.Context, tenant, from, to string) error {
	if from == to {
		return fmt.Errorf("pgstore: PrepareTarget: source and target are both %s", from)
	}
	_, src, err := s.primary(ctx, from)
	if err != nil {
		return err
	}
	if _, err := readOn(ctx, src, tenant, 0, func(*pgx.Batch) {}); err != nil { // the tenant check only
		return classify(err)
	}
	_, pool, err := s.primary(ctx, to)
	if err != nil {
		return err
	}
	var status string
	err = inTx(ctx, pool, tenant, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO tenants (tenant_id, status, write_fenced) VALUES ($1, $2, true)
			ON CONFLICT (tenant_id) DO NOTHING`, tenant, StatusImporting); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT status FROM tenants WHERE tenant_id = $1`, tenant).Scan(&status)
	})
	if err != nil {
		return classify(err)
	}
	if status != StatusImporting {
		return fmt.Errorf("%w: %s on %s has status %s", records.ErrTenantExists, tenant, to, status)
	}
	return nil
}

// CountRows counts tenant's rows on shard's primary, tombstones included (they are copied too):
// the total of a backfill's progress. records.ErrTenantNotFound when the shard has no row for
// the tenant.
func (s *Store) CountRows(ctx context.Context, tenant, shard string) (int64, error) {
	_, pool, err := s.primary(ctx, shard)
	if err != nil {
		return 0, err
	}
	var n int64
	_, err = readOn(ctx, pool, tenant, 0, func(b *pgx.Batch) {
		b.Queue(`SELECT count(*) FROM records WHERE tenant_id = $1`, tenant).QueryRow(func(r pgx.Row) error { return r.Scan(&n) })
	})
	return n, classify(err)
}

// rangeSQL reads the next limit ($4) rows of tenant $1 after the key ($2, $3) in key order: an
// index range scan of the primary key (tenant_id, collection, id).
func rangeSQL(cols string) string {
	return `SELECT ` + cols + ` FROM records WHERE tenant_id = $1 AND (collection, id) > ($2, $3)
	ORDER BY collection, id LIMIT $4`
}

var (
	copyRangeSQL   = rangeSQL(rowCols)
	verifyRangeSQL = rangeSQL(`collection, id, version, deleted, md5(data::text)`)
)

// CopyBatch copies the next limit rows of tenant after the key after (in key order; the zero
// Key starts at the beginning) from shard from's primary to shard to's, all columns, tombstones
// included, version-guarded: a target row with the same or a greater version (written by the
// mirror since) is left alone, so a deleted record is never brought back and no version goes
// back. It returns the last key it read and how many rows it read (copied counts rows read,
// whether or not the guard let them replace a target row); copied < limit means the pass is
// over. records.ErrTenantNotFound when either shard has no row for the tenant.
func (s *Store) CopyBatch(ctx context.Context, tenant, from, to string, after records.Key, limit int) (next records.Key, copied int, err error) {
	return s.CopyRange(ctx, tenant, from, to, after, records.Key{}, limit) // the zero upto: no bound
}

// digest is what VerifyBatch compares of a row.
type digest struct {
	key     records.Key
	version int64
	deleted bool
	md5     string
	hash    int64 // CompareRange's jsonb_hash_extended of data instead of md5
}

// digests reads the next limit digests of tenant after the key after on pool.
func digests(ctx context.Context, pool *pgxpool.Pool, tenant string, after records.Key, limit int) ([]digest, error) {
	var out []digest
	_, err := readOn(ctx, pool, tenant, 0, func(b *pgx.Batch) {
		b.Queue(verifyRangeSQL, tenant, after.Collection, after.ID, limit).Query(func(rows pgx.Rows) error {
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

// VerifyBatch compares tenant's rows on shards from and to over one key range after the key
// after, by (collection, id, version, deleted, md5 of data), like Vitess's VDiff. It reads the
// next limit rows on both sides at once; the range compared ends at the last key of a side
// that returned limit rows (the smaller one when both did), or is unbounded when neither did,
// so a row present on one side only is seen wherever it is. It returns the range's last key,
// the keys that differ (missing on to, extra on to, or different), in key order, and how many
// distinct keys it compared. checked == 0 (and next == after) means the pass is over;
// checked < limit also means the range just compared was the last one.
func (s *Store) VerifyBatch(ctx context.Context, tenant, from, to string, after records.Key, limit int) (next records.Key, diffs []records.Key, checked int, err error) {
	if limit < 1 {
		return after, nil, 0, fmt.Errorf("pgstore: VerifyBatch: limit %d", limit)
	}
	src, dst, err := s.primaries(ctx, from, to)
	if err != nil {
		return after, nil, 0, err
	}
	// Both sides at once: the batch costs one round trip, not two.
	var a, b []digest
	var errA, errB error
	var wg sync.WaitGroup
	wg.Go(func() { a, errA = digests(ctx, src, tenant, after, limit) })
	b, errB = digests(ctx, dst, tenant, after, limit)
	wg.Wait()
	if errA != nil {
		return after, nil, 0, classify(fmt.Errorf("read %s: %w", from, errA))
	}
	if errB != nil {
		return after, nil, 0, classify(fmt.Errorf("read %s: %w", to, errB))
	}
	next, diffs, checked = mergeDigests(a, b, after, limit)
	return next, diffs, checked, nil
}

// Repair makes tenant's rows on shard to match shard from's for keys (VerifyBatch's diffs): the
// source's row is copied (all columns; it replaces an older version, or the same version with
// other data or deleted flag, never a greater one: that is a mirror of a newer source write),
// and a target row whose key the source does not have is deleted. It returns how many target
// rows it changed. While the source takes writes a repair can race with them (a create
// committed and mirrored between the repair's read and its delete is deleted on the target);
// the next verify pass finds and repairs that, and the cutover's last pass runs with the
// source fenced, when nothing races.
func (s *Store) Repair(ctx context.Context, tenant, from, to string, keys []records.Key) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	src, dst, err := s.primaries(ctx, from, to)
	if err != nil {
		return 0, err
	}
	colls, ids := keyArrays(keys)
	var rows []row
	_, err = readOn(ctx, src, tenant, 0, func(b *pgx.Batch) {
		b.Queue(`SELECT `+rowCols+` FROM records WHERE tenant_id = $1
			AND (collection, id) IN (SELECT * FROM unnest($2::text[], $3::text[]))`, tenant, colls, ids).Query(func(r pgx.Rows) error {
			var err error
			rows, err = scanRows(r)
			return err
		})
	})
	if err != nil {
		return 0, classify(fmt.Errorf("read %s: %w", from, err))
	}
	have := make(map[records.Key]bool, len(rows))
	for _, r := range rows {
		have[r.key] = true
	}
	var gone []records.Key
	for _, k := range keys {
		if !have[k] {
			gone = append(gone, k)
		}
	}
	var n int64
	err = scopedBatch(ctx, dst, tenant, nil, nil, func(b *pgx.Batch) {
		if len(rows) > 0 {
			b.Queue(upsertRepairSQL, upsertArgs(tenant, rows)...).Exec(func(tag pgconn.CommandTag) error {
				n += tag.RowsAffected()
				return nil
			})
		}
		if len(gone) > 0 {
			gc, gi := keyArrays(gone)
			b.Queue(`DELETE FROM records WHERE tenant_id = $1 AND (collection, id) IN (SELECT * FROM unnest($2::text[], $3::text[]))`,
				tenant, gc, gi).Exec(func(tag pgconn.CommandTag) error {
				n += tag.RowsAffected()
				return nil
			})
		}
	})
	if err != nil {
		return 0, classify(fmt.Errorf("write %s: %w", to, err))
	}
	return int(n), nil
}

// Fence stops tenant's client writes on shard (a move's cutover, on the source): write_fenced
// is set in a transaction that waits for the tenant row lock, so every write in flight has
// committed (or rolled back) before it returns, and every later one reads the fence in its own
// transaction and fails with records.ErrTenantFenced. It returns the tenant's final change_seq.
// Idempotent. records.ErrTenantNotFound when the shard has no row for the tenant.
func (s *Store) Fence(ctx context.Context, tenant, shard string) (changeSeq int64, err error) {
	return s.setFence(ctx, tenant, shard, true, nil)
}

// FenceDelta is Fence and then ChangedKeys(after, the fenced change_seq) in the same round
// trip: the keys the tenant's writes since after wrote, in key order. The fence holds even when
// the keys cannot be told (an error wrapping records.ErrChangesPruned, with changeSeq).
func (s *Store) FenceDelta(ctx context.Context, tenant, shard string, after int64) (changeSeq int64, keys []records.Key, err error) {
	if after < 0 {
		return 0, nil, fmt.Errorf("pgstore: FenceDelta: after %d", after)
	}
	var n int64
	seq, err := s.setFence(ctx, tenant, shard, true, func(b *pgx.Batch) {
		// The fence's UPDATE waited for every write holding the tenant row, and each statement
		// of the batch reads a new snapshot: every change up to the fenced change_seq is seen.
		queueChangedKeys(b, `(SELECT change_seq FROM tenants WHERE tenant_id = $1)`, &n, &keys, tenant, after)
	})
	switch {
	case err != nil:
		return 0, nil, err
	case seq < after:
		return seq, nil, fmt.Errorf("pgstore: FenceDelta: change_seq %d of %s on %s is below %d", seq, tenant, shard, after)
	case n != seq-after:
		return seq, nil, fmt.Errorf("%w: %d of the %d changes in (%d, %d] of %s on %s", records.ErrChangesPruned, n, seq-after, after, seq, tenant, shard)
	}
	return seq, keys, nil
}

// Unfence lets tenant's client writes on shard proceed again (a failed move's source).
// Idempotent. records.ErrTenantNotFound when the shard has no row for the tenant.
func (s *Store) Unfence(ctx context.Context, tenant, shard string) error {
	_, err := s.setFence(ctx, tenant, shard, false, nil)
	return err
}

// setFence sets or clears the fence in one round trip; more queues statements that run after
// it in the same implicit transaction.
func (s *Store) setFence(ctx context.Context, tenant, shard string, fenced bool, more func(*pgx.Batch)) (int64, error) {
	_, pool, err := s.primary(ctx, shard)
	if err != nil {
		return 0, err
	}
	// One round trip: the batch is one implicit transaction, committed when Close returns (an
	// explicit BEGIN ... COMMIT cost four, each a cross-region round trip from a controller
	// in another region, under the fence).
	var seq int64
	b := &pgx.Batch{}
	b.Queue(setTenantSQL, tenant)
	// updated_at changes only with the flag: it is when the fence was set (FirstWrite).
	b.Queue(`UPDATE tenants SET write_fenced = $2,
		updated_at = CASE WHEN write_fenced = $2 THEN updated_at ELSE now() END WHERE tenant_id = $1 RETURNING change_seq`,
		tenant, fenced).QueryRow(func(r pgx.Row) error {
		err := r.Scan(&seq)
		if errors.Is(err, pgx.ErrNoRows) {
			return records.ErrTenantNotFound
		}
		return err
	})
	if more != nil {
		more(b)
	}
	err = pool.SendBatch(ctx, b).Close()
	return seq, classify(err)
}

// finishPage is how many outbox or Idempotency-Key rows FinishTarget moves per statement.
const finishPage = 5000

// FinishTarget makes tenant's importing copy on shard to the one clients write, at the cutover
// after Fence on from returned changeSeq: in one transaction on to it copies the tenant's
// outbox rows from the source (those the target lacks, with sent_at set: the source's relay
// publishes them, so the target's must not publish them again; lsn empty, a source WAL
// position means nothing on the target) and its unexpired Idempotency-Key rows (so a retry of a
// write answered before the move answers its first response), then sets the row active,
// unfenced, with write_epoch = epoch (the epoch the map's Cutover gives the tenant) and
// change_seq = changeSeq (so the next write on the target is changeSeq+1). The source must be
// fenced at exactly changeSeq. Idempotent: a row already active at epoch is left as it is
// (writes may have continued there); one active at another epoch, or not importing, is
// records.ErrTenantExists.
func (s *Store) FinishTarget(ctx context.Context, tenant, from, to string, epoch uint64, changeSeq int64) error {
	if epoch < 1 || changeSeq < 0 || from == to {
		return fmt.Errorf("pgstore: FinishTarget: epoch %d, change_seq %d, %s -> %s", epoch, changeSeq, from, to)
	}
	src, dst, err := s.primaries(ctx, from, to)
	if err != nil {
		return err
	}
	if done, err := finishFast(ctx, src, dst, tenant, epoch, changeSeq, s.cfg.Now()); err != nil || done {
		return classify(err)
	}
	err = inTx(ctx, dst, tenant, pgx.TxOptions{}, func(tx pgx.Tx) error {
		status, cur, mark, err := lockTarget(ctx, tx, tenant, to)
		switch {
		case err != nil:
			return err
		case status == StatusActive && cur == int64(epoch):
			return errDone
		case status != StatusImporting:
			return fmt.Errorf("%w: %s on %s has status %s and write epoch %d", records.ErrTenantExists, tenant, to, status, cur)
		}
		var srcFenced bool
		var srcSeq int64
		if _, err := readOn(ctx, src, tenant, 0, func(b *pgx.Batch) { queueFenceRead(b, tenant, &srcFenced, &srcSeq) }); err != nil {
			return fmt.Errorf("read %s: %w", from, err)
		}
		if !srcFenced || srcSeq != changeSeq {
			return fmt.Errorf("pgstore: FinishTarget: %s on %s is not fenced at change_seq %d (fenced %v, change_seq %d)",
				tenant, from, changeSeq, srcFenced, srcSeq)
		}
		if err := copyOutbox(ctx, src, tx, tenant, changeSeq); err != nil {
			return err
		}
		// An importing copy's change_seq is the mark of the last PrecopyTarget (0 if none): it
		// holds every key of the writes up to it.
		if err := copyIdemKeys(ctx, src, tx, tenant, s.cfg.Now(), mark, 0); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE tenants SET status = $2, write_fenced = false, write_epoch = $3, change_seq = $4, updated_at = now()
			WHERE tenant_id = $1`, tenant, StatusActive, int64(epoch), changeSeq)
		return err
	})
	if errors.Is(err, errDone) {
		return nil
	}
	return classify(err)
}

// finishFast is FinishTarget in three round trips (it runs under the fence, and each trip is
// cross-region for a controller far from the tenant): a read of the target's importing row and
// its newest outbox seq, one read on the source of the fenced row, the outbox rows the target
// lacks and the Idempotency-Key rows newer than the target's mark, and one statement on the
// target that activates the row only if it is still importing at that mark and copies the rows
// only if it did. It reports done = false, with no error and nothing written, whenever it cannot
// tell (a full page to copy, the row not importing, the source not fenced at changeSeq, the row
// changed meanwhile): FinishTarget's transaction then decides, and names any error.
func finishFast(ctx context.Context, src, dst *pgxpool.Pool, tenant string, epoch uint64, changeSeq int64, now time.Time) (done bool, err error) {
	var status string
	var mark, last int64
	if _, err := readOn(ctx, dst, tenant, 0, func(b *pgx.Batch) {
		b.Queue(`SELECT status, change_seq, (SELECT COALESCE(max(seq), 0) FROM outbox WHERE tenant_id = $1)
			FROM tenants WHERE tenant_id = $1`, tenant).QueryRow(func(r pgx.Row) error {
			return r.Scan(&status, &mark, &last)
		})
	}); err != nil || status != StatusImporting || mark == 0 {
		// mark 0: no PrecopyTarget ran, so every Idempotency-Key row is to copy (by key):
		// the transaction's paged copy does that.
		return false, nil
	}
	return finishKnown(ctx, src, dst, tenant, epoch, changeSeq, mark, last, now)
}

// finishKnown is finishFast after its first read: mark is the importing copy's change_seq
// (the last PrecopyTarget's), last the target's newest outbox seq. The target's row is
// activated only if it is still importing at mark.
func finishKnown(ctx context.Context, src, dst *pgxpool.Pool, tenant string, epoch uint64, changeSeq, mark, last int64, now time.Time) (done bool, err error) {
	var fenced bool
	var srcSeq int64
	var ob outboxRows
	var ik idemRows
	if _, err := readOn(ctx, src, tenant, 0, func(b *pgx.Batch) {
		queueFenceRead(b, tenant, &fenced, &srcSeq)
		b.Queue(outboxPageSQL, tenant, last, changeSeq, finishPage).Query(ob.scan)
		b.Queue(idemDeltaSQL, tenant, mark, now, finishPage).Query(ik.scan)
	}); err != nil || !fenced || srcSeq != changeSeq || len(ob.seqs) == finishPage || len(ik.keys) == finishPage {
		return false, nil
	}
	var activated int
	b := &pgx.Batch{} // one implicit transaction
	b.Queue(setTenantSQL, tenant)
	b.Queue(`WITH u AS (
			UPDATE tenants SET status = $2, write_fenced = false, write_epoch = $3, change_seq = $4, updated_at = now()
			WHERE tenant_id = $1 AND status = $5 AND change_seq = $6 RETURNING 1),
		o AS (`+outboxInsertSQL(7)+` WHERE EXISTS (SELECT FROM u) ON CONFLICT (tenant_id, seq) DO NOTHING),
		i AS (`+idemInsertSQL(14)+` WHERE EXISTS (SELECT FROM u) `+idemConflictSQL+`)
		SELECT count(*) FROM u`,
		append(append([]any{tenant, StatusActive, int64(epoch), changeSeq, StatusImporting, mark}, ob.args()...), ik.args()...)...).QueryRow(func(r pgx.Row) error {
		return r.Scan(&activated)
	})
	if err := dst.SendBatch(ctx, b).Close(); err != nil {
		return false, err
	}
	return activated == 1, nil
}

// ResumeTarget tells a controller that starts (or repeats) a move's cutover, while the map still
// shows the move before its Cutover command, what an earlier attempt left on the target. An
// attempt that finished the target (FinishTarget: active at epoch, the source's change_seq) and
// then lost its lease, died, or failed to apply the Cutover leaves it active while the map
// still routes to the source; PrecopyTarget then refused it forever and the move could neither
// finish nor be cleaned up (found by `bench -scenario moves`). So: an importing target is
// records.TargetImporting; one active at epoch with the source fenced at its change_seq is
// records.TargetFinished (apply the Cutover); one active at epoch whose change_seq passed the
// fenced source's is records.TargetAhead (the Cutover committed); one active at epoch while the
// source was unfenced since (it took writes the target lacks) or fenced at a later change_seq
// is turned back into an importing copy (its change_seq stays the precopy mark: the outbox and
// key rows up to it are there) and answered TargetImporting. Active at another epoch:
// records.ErrTenantExists.
func (s *Store) ResumeTarget(ctx context.Context, tenant, from, to string, epoch uint64) (records.TargetState, error) {
	src, dst, err := s.primaries(ctx, from, to)
	if err != nil {
		return 0, err
	}
	state := records.TargetImporting
	err = inTx(ctx, dst, tenant, pgx.TxOptions{}, func(tx pgx.Tx) error {
		status, cur, seq, err := lockTarget(ctx, tx, tenant, to)
		switch {
		case err != nil:
			return err
		case status == StatusImporting:
			return nil
		case cur != int64(epoch):
			return fmt.Errorf("%w: %s on %s has status %s and write epoch %d", records.ErrTenantExists, tenant, to, status, cur)
		}
		var fenced bool
		var srcSeq int64
		if _, err := readOn(ctx, src, tenant, 0, func(b *pgx.Batch) { queueFenceRead(b, tenant, &fenced, &srcSeq) }); err != nil {
			return fmt.Errorf("read %s: %w", from, err)
		}
		switch {
		case fenced && srcSeq == seq:
			state = records.TargetFinished
			return nil
		case fenced && seq > srcSeq:
			state = records.TargetAhead
			return nil
		}
		_, err = tx.Exec(ctx, `UPDATE tenants SET status = $2, write_fenced = true, updated_at = now() WHERE tenant_id = $1`, tenant, StatusImporting)
		return err
	})
	return state, classify(err)
}

// FinishTargetFrom is FinishTarget for a controller that knows the mark its PrecopyTarget
// returned (the importing copy's change_seq): it skips finishFast's read of the target, so it
// takes two round trips (one on each side), and falls back to FinishTarget whenever the mark
// is not the target's any more or anything else is unusual.
func (s *Store) FinishTargetFrom(ctx context.Context, tenant, from, to string, epoch uint64, changeSeq, mark int64) error {
	if epoch < 1 || changeSeq < 0 || from == to {
		return fmt.Errorf("pgstore: FinishTargetFrom: epoch %d, change_seq %d, %s -> %s", epoch, changeSeq, from, to)
	}
	if mark > 0 && mark <= changeSeq {
		src, dst, err := s.primaries(ctx, from, to)
		if err != nil {
			return err
		}
		// The target holds the outbox rows up to the mark (PrecopyTarget copied them).
		done, err := finishKnown(ctx, src, dst, tenant, epoch, changeSeq, mark, mark, s.cfg.Now())
		if err != nil || done {
			return classify(err)
		}
	}
	return s.FinishTarget(ctx, tenant, from, to, epoch, changeSeq)
}

// queueFenceRead queues the read of tenant's fence and change_seq (on a move's source).
func queueFenceRead(b *pgx.Batch, tenant string, fenced *bool, seq *int64) {
	b.Queue(`SELECT write_fenced, change_seq FROM tenants WHERE tenant_id = $1`, tenant).QueryRow(func(r pgx.Row) error {
		return r.Scan(fenced, seq)
	})
}

// errDone ends FinishTarget's transaction early: the work was done before.
var errDone = errors.New("pgstore: already done")

// copyOutbox copies tenant's outbox rows with seq in (the target's last, upto] from src into tx
// (scoped to tenant), marked sent.
func copyOutbox(ctx context.Context, src *pgxpool.Pool, tx pgx.Tx, tenant string, upto int64) error {
	var last int64
	if err := tx.QueryRow(ctx, `SELECT COALESCE(max(seq), 0) FROM outbox WHERE tenant_id = $1`, tenant).Scan(&last); err != nil {
		return err
	}
	for last < upto {
		var ob outboxRows
		_, err := readOn(ctx, src, tenant, 0, func(b *pgx.Batch) {
			b.Queue(outboxPageSQL, tenant, last, upto, finishPage).Query(ob.scan)
		})
		if err != nil {
			return fmt.Errorf("read outbox: %w", err)
		}
		if len(ob.seqs) == 0 {
			// The source pruned or never had the rest (a sequence allocated by a write that
			// rolled back is reused, so there are no holes below the fence's change_seq).
			return nil
		}
		if _, err := tx.Exec(ctx, outboxInsertSQL(2)+` ON CONFLICT (tenant_id, seq) DO NOTHING`,
			append([]any{tenant}, ob.args()...)...); err != nil {
			return err
		}
		last = ob.seqs[len(ob.seqs)-1]
	}
	return nil
}

// outboxPageSQL reads a page of tenant ($1) outbox rows with seq in ($2, $3], at most $4, in
// outboxRows.scan's order; an unsent row's sent_at is now (the copy is marked sent).
const outboxPageSQL = `SELECT seq, collection, record_id, op, version, created_at, COALESCE(sent_at, now())
	FROM outbox WHERE tenant_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4`

// outboxRows are outbox rows read by outboxPageSQL, column by column.
type outboxRows struct {
	seqs, versions  []int64
	colls, ids, ops []string
	created, sent   []time.Time
}

func (o *outboxRows) scan(rows pgx.Rows) error {
	for rows.Next() {
		var seq, v int64
		var c, id, op string
		var at, st time.Time
		if err := rows.Scan(&seq, &c, &id, &op, &v, &at, &st); err != nil {
			return err
		}
		o.seqs, o.colls, o.ids, o.ops = append(o.seqs, seq), append(o.colls, c), append(o.ids, id), append(o.ops, op)
		o.versions, o.created, o.sent = append(o.versions, v), append(o.created, at), append(o.sent, st)
	}
	return rows.Err()
}

// args are o's columns in outboxInsertSQL's parameter order.
func (o *outboxRows) args() []any {
	return []any{o.seqs, o.colls, o.ids, o.ops, o.versions, o.created, o.sent}
}

// outboxInsertSQL inserts outbox rows of tenant $1 from the seven arrays of outboxRows.args,
// numbered from $n (no ON CONFLICT clause: the caller adds it, after any WHERE). lsn is empty:
// a source WAL position means nothing on the target.
func outboxInsertSQL(n int) string {
	return fmt.Sprintf(`INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version, lsn, created_at, sent_at)
	SELECT $1, u.seq, u.collection, u.record_id, u.op, u.version, NULL, u.created_at, u.sent_at
	FROM unnest($%d::int8[], $%d::text[], $%d::text[], $%d::text[], $%d::int8[], $%d::timestamptz[], $%d::timestamptz[])
		AS u(seq, collection, record_id, op, version, created_at, sent_at)`, n, n+1, n+2, n+3, n+4, n+5, n+6)
}

// idemCols are the Idempotency-Key columns idemRows.scan reads, in its order.
const idemCols = `key, request_hash, status, headers::text, body, created_at, expires_at, seq`

// idemDeltaSQL reads tenant's ($1) unexpired (at $3) Idempotency-Key rows of writes with seq
// above $2, in seq order, at most $4.
const idemDeltaSQL = `SELECT ` + idemCols + ` FROM idempotency_keys WHERE tenant_id = $1 AND seq > $2 AND expires_at > $3
	ORDER BY seq LIMIT $4`

// idemRows are Idempotency-Key rows, column by column.
type idemRows struct {
	keys             []string
	hashes, bodies   [][]byte
	statuses         []int32
	headers          []string
	created, expires []time.Time
	seqs             []*int64
}

func (k *idemRows) scan(rows pgx.Rows) error {
	for rows.Next() {
		var key, h string
		var hash, body []byte
		var st int32
		var c, e time.Time
		var seq *int64
		if err := rows.Scan(&key, &hash, &st, &h, &body, &c, &e, &seq); err != nil {
			return err
		}
		k.keys, k.hashes, k.statuses, k.headers = append(k.keys, key), append(k.hashes, hash), append(k.statuses, st), append(k.headers, h)
		k.bodies, k.created, k.expires, k.seqs = append(k.bodies, body), append(k.created, c), append(k.expires, e), append(k.seqs, seq)
	}
	return rows.Err()
}

// args are k's columns in idemInsertSQL's parameter order.
func (k *idemRows) args() []any {
	return []any{k.keys, k.hashes, k.statuses, k.headers, k.bodies, k.created, k.expires, k.seqs}
}

// idemInsertSQL inserts Idempotency-Key rows of tenant $1 from the eight arrays of
// idemRows.args, numbered from $n; the caller appends idemConflictSQL after any WHERE.
func idemInsertSQL(n int) string {
	return fmt.Sprintf(`INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, headers, body, created_at, expires_at, seq)
	SELECT $1, u.key, u.request_hash, u.status, u.headers::jsonb, u.body, u.created_at, u.expires_at, u.seq
	FROM unnest($%d::text[], $%d::bytea[], $%d::int4[], $%d::text[], $%d::bytea[], $%d::timestamptz[], $%d::timestamptz[], $%d::int8[])
		AS u(key, request_hash, status, headers, body, created_at, expires_at, seq)`, n, n+1, n+2, n+3, n+4, n+5, n+6, n+7)
}

// idemConflictSQL replaces a key the target already has when the source's row differs (an
// expired key claimed again since).
const idemConflictSQL = `ON CONFLICT (tenant_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, status = EXCLUDED.status,
	headers = EXCLUDED.headers, body = EXCLUDED.body, created_at = EXCLUDED.created_at,
	expires_at = EXCLUDED.expires_at, seq = EXCLUDED.seq
	WHERE idempotency_keys.seq IS DISTINCT FROM EXCLUDED.seq OR idempotency_keys.created_at <> EXCLUDED.created_at`

// copyIdemKeys copies tenant's Idempotency-Key rows unexpired at now from src into tx (scoped
// to tenant). With after > 0 it copies only the rows of writes with change_seq above after (the
// mark of an earlier PrecopyTarget); with after == 0, every row, those without a seq (stored
// before migration 00006) included, up to upto when upto > 0. A key the target already has is
// replaced when the source's row differs (an expired key claimed again since).
func copyIdemKeys(ctx context.Context, src *pgxpool.Pool, tx pgx.Tx, tenant string, now time.Time, after, upto int64) error {
	afterKey, afterSeq := "", after
	for {
		var ik idemRows
		_, err := readOn(ctx, src, tenant, 0, func(b *pgx.Batch) {
			if after > 0 { // a delta: the (tenant_id, seq) index, in seq order
				b.Queue(idemDeltaSQL, tenant, afterSeq, now, finishPage).Query(ik.scan)
			} else {
				b.Queue(`SELECT `+idemCols+` FROM idempotency_keys WHERE tenant_id = $1 AND key > $2 AND expires_at > $3
					AND ($5 = 0 OR seq IS NULL OR seq <= $5) ORDER BY key LIMIT $4`, tenant, afterKey, now, finishPage, upto).Query(ik.scan)
			}
		})
		if err != nil {
			return fmt.Errorf("read idempotency keys: %w", err)
		}
		if len(ik.keys) == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, idemInsertSQL(2)+` `+idemConflictSQL, append([]any{tenant}, ik.args()...)...); err != nil {
			return err
		}
		if len(ik.keys) < finishPage {
			return nil
		}
		afterKey = ik.keys[len(ik.keys)-1]
		if last := ik.seqs[len(ik.seqs)-1]; last != nil {
			afterSeq = *last
		}
	}
}

// DropTenant deletes tenant's rows on shard: a finished move's source (fenced) or a cancelled
// move's target (importing). The records, outbox and Idempotency-Key rows go in batches of
// dropBatch, each statement its own transaction that deletes only while the tenant's row is not
// live (one statement over a tenant of 200,000 rows outlasted the statement timeout, again and
// again, on a loaded machine), then the tenant's row, whose cascade takes whatever is left. It
// refuses the tenant's live copy, active and unfenced, with records.ErrTenantLive: fence that
// first. Idempotent: no row is success.
func (s *Store) DropTenant(ctx context.Context, tenant, shard string) error {
	_, pool, err := s.primary(ctx, shard)
	if err != nil {
		return err
	}
	var status string
	var fenced bool
	check := func(err error) (done bool, _ error) {
		switch {
		case errors.Is(err, records.ErrTenantNotFound):
			return true, nil
		case err != nil:
			return true, classify(err)
		case status == StatusActive && !fenced:
			return true, fmt.Errorf("%w: %s on %s", records.ErrTenantLive, tenant, shard)
		}
		return false, nil
	}
	for _, t := range []struct{ table, key string }{{"records", "collection, id"}, {"outbox", "seq"}, {"idempotency_keys", "key"}} {
		for {
			var n int64
			err := scopedBatch(ctx, pool, tenant, &status, &fenced, func(b *pgx.Batch) {
				b.Queue(`DELETE FROM `+t.table+` WHERE tenant_id = $1 AND (`+t.key+`) IN (
						SELECT `+t.key+` FROM `+t.table+` WHERE tenant_id = $1 ORDER BY `+t.key+` LIMIT $2)
					AND EXISTS (SELECT FROM tenants WHERE tenant_id = $1 AND (write_fenced OR status <> $3))`,
					tenant, dropBatch, StatusActive).Exec(func(tag pgconn.CommandTag) error {
					n = tag.RowsAffected()
					return nil
				})
			})
			if done, err := check(err); done {
				return err
			}
			if n < int64(dropBatch) {
				break
			}
		}
	}
	err = scopedBatch(ctx, pool, tenant, &status, &fenced, func(b *pgx.Batch) {
		b.Queue(`DELETE FROM tenants WHERE tenant_id = $1 AND (write_fenced OR status <> $2)`, tenant, StatusActive)
	})
	_, err = check(err)
	return err
}

// dropBatch is how many rows of one table DropTenant deletes per statement (a variable so a
// test can make a small tenant take several).
var dropBatch = 5000
