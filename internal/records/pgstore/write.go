package pgstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/replication"
)

// Write runs op in one transaction on the shard's primary: check the tenant row (fence and
// write epoch), claim the Idempotency-Key (or answer its stored response), make the change,
// render the response, then lock the tenant row (fence and epoch checked again + change seq),
// append the outbox event and notify NotifyChannel, store the response with the key, commit
// (writeTx). Then
// it reads the WAL insert position for the Consistency-Token, and, when t.MirrorTo names a
// move's target shard, applies the committed change there too (Store.mirror; its outcome is
// WriteResult.Mirror and never fails the write).
func (s *Store) Write(ctx context.Context, t records.Target, op records.WriteOp) (records.WriteResult, error) {
	sh, pool, err := s.primary(ctx, t.Shard)
	if err != nil {
		return records.WriteResult{}, err
	}
	if sh.HomeRegion != s.cfg.Region {
		return records.WriteResult{}, fmt.Errorf("%w: %s is homed in %s", records.ErrNotHome, sh.ID, sh.HomeRegion)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return records.WriteResult{}, classify(err)
	}
	res, ch, err := s.writeTx(ctx, conn.Conn(), t, op)
	if err != nil {
		conn.Release()
		return records.WriteResult{}, classify(err)
	}
	// Read after COMMIT returned: at or past the commit record, on the same server. For a
	// replay it is past the original commit, which was visible to our transaction.
	if lsn, err := replication.CurrentLSN(ctx, conn); err == nil {
		res.Token = replication.Token{Shard: sh.ID, LSN: lsn}.Encode()
	}
	conn.Release() // before the mirror's round trip to another shard
	if t.MirrorTo != "" && !res.Replayed {
		// The write has committed: whatever becomes of the mirror, the client gets its answer.
		res.Mirror = s.mirror(ctx, t, ch)
	}
	return res, nil
}

// NotifyChannel is the channel every write transaction notifies, with the shard id as the
// payload: the shard's relay LISTENs on it (docs/internal-contracts.md, issue 13).
const NotifyChannel = "meridian_outbox"

// notifySQL wakes the shard's relay; see NotifyChannel.
const notifySQL = `SELECT pg_notify('` + NotifyChannel + `', $1)`

// writeTx is Write's transaction. It returns the change it committed (zero for a replay).
//
// One tenant's writes serialise on its tenant row from the moment its change_seq is allocated
// to COMMIT (so change_seq is gap-free in commit order, and a move's fence and epoch are read
// current), so that lock is taken last, and its step, the outbox row, the stored answer and
// the COMMIT go in one pipelined round trip: a tenant's write rate is one over that round trip
// (BenchmarkTenantWrites). Before it, without the lock: BEGIN, the tenant's scope and a first
// look at its row (one round trip), the Idempotency-Key claim and the record change. Every
// writer takes its locks in the same order — the key's row, the record's row, the tenant row —
// so two writers never wait for each other in a cycle; a move's fence (which takes only the
// tenant row) is seen by every write that commits after it.
//
// The transaction is driven by statements on conn (BEGIN and COMMIT inside the pipelines), not
// a pgx.Tx, which would spend a round trip on each.
func (s *Store) writeTx(ctx context.Context, conn *pgx.Conn, t records.Target, op records.WriteOp) (records.WriteResult, records.Change, error) {
	var res records.WriteResult
	var none records.Change
	defer func() {
		if conn.PgConn().TxStatus() != 'I' { // not committed (or the connection is gone)
			_, _ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}()
	// The tenant's scope and a first look at its row: an unknown, fenced or re-homed tenant is
	// answered before anything is written.
	var st tenantState
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(setTenantSQL, t.Tenant)
	b.Queue(`SELECT write_fenced, write_epoch FROM tenants WHERE tenant_id = $1`, t.Tenant).QueryRow(st.scan)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return res, none, err
	}
	if err := st.admit(t); err != nil {
		return res, none, err
	}
	if op.Key != "" {
		// A concurrent first request with this key holds its row (uncommitted) until it
		// commits or rolls back; the claim waits for it.
		stored, err := s.claimKey(ctx, conn, t, op)
		if err != nil {
			return res, none, err
		}
		if stored != nil {
			// Rolled back: the replay changes nothing.
			return records.WriteResult{Response: *stored, Replayed: true}, none, nil
		}
	}
	ch, err := change(ctx, conn, t.Tenant, op)
	if err != nil {
		return res, none, err
	}
	resp, err := op.Render(ch)
	if err != nil {
		return res, none, err
	}
	// Under the tenant row lock, one round trip: the change seq, with the epoch and the fence
	// checked again (a cutover or a fence may have come since the first look;
	// meridian_next_change_seq raises, and the rest of the pipeline, COMMIT included, is
	// skipped), the outbox row numbered by it, the relay's wake-up, the stored answer with the
	// seq, COMMIT. Postgres delivers the notification at commit and drops it on rollback, so a
	// relay never wakes for a row it cannot see yet.
	b = &pgx.Batch{}
	b.Queue(`SELECT meridian_next_change_seq($1, $2)`, t.Tenant, int64(t.Epoch))
	b.Queue(`INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version, lsn)
		SELECT $1, change_seq, $2, $3, $4, $5, pg_current_wal_insert_lsn() FROM tenants WHERE tenant_id = $1`,
		t.Tenant, ch.Record.Collection, ch.Record.ID, ch.Kind.String(), ch.Record.Version)
	b.Queue(notifySQL, t.Shard)
	if op.Key != "" {
		hdrs, _ := json.Marshal(resp.Headers)
		b.Queue(`UPDATE idempotency_keys SET status = $3, headers = $4, body = $5,
			seq = (SELECT change_seq FROM tenants WHERE tenant_id = $1) WHERE tenant_id = $1 AND key = $2`,
			t.Tenant, op.Key, resp.Status, hdrs, resp.Body)
	}
	b.Queue("COMMIT")
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return res, none, refusal(err, t)
	}
	return records.WriteResult{Response: resp}, ch, nil
}

// refusal maps meridian_next_change_seq's refusals (migration 00008) to the store's errors;
// other errors are returned as they are.
func refusal(err error, t records.Target) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch pe.Code {
	case "MR404":
		return records.ErrTenantNotFound
	case "MR421":
		return fmt.Errorf("%w: on %s %s", records.ErrStaleEpoch, t.Shard, pe.Message)
	case "MR503":
		return records.ErrTenantFenced
	}
	return err
}

// querier is what a write's statements run on: the connection its transaction is open on.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// tenantState is what a write's first look reads of its tenant row.
type tenantState struct {
	epoch  int64
	fenced bool
}

// scan reads a tenantState from a row of (write_fenced, write_epoch); no row is
// records.ErrTenantNotFound.
func (st *tenantState) scan(r pgx.Row) error {
	err := r.Scan(&st.fenced, &st.epoch)
	if errors.Is(err, pgx.ErrNoRows) {
		return records.ErrTenantNotFound
	}
	return err
}

// admit refuses a write to a tenant in state st: the epoch first, so a request routed before a
// cutover is re-routed at once (421), while a fenced tenant's writes are held by the router
// until the new epoch is visible (503).
func (st *tenantState) admit(t records.Target) error {
	if t.Epoch > 0 && uint64(st.epoch) > t.Epoch {
		return fmt.Errorf("%w: the tenant's write epoch on %s is %d, the request's %d", records.ErrStaleEpoch, t.Shard, st.epoch, t.Epoch)
	}
	if st.fenced {
		return records.ErrTenantFenced
	}
	return nil
}

// claimKey inserts the Idempotency-Key row (seq NULL until the write's last round trip sets
// it, under the tenant row lock), or, when a committed row exists, returns its stored response
// (same request) or records.ErrKeyReused (different request). The insert waits for a
// concurrent first request's uncommitted row, so by the time it returns that request has
// committed or rolled back.
func (s *Store) claimKey(ctx context.Context, tx querier, t records.Target, op records.WriteOp) (*records.Response, error) {
	tenant := t.Tenant
	now := s.cfg.Now()
	tag, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, created_at, expires_at)
		VALUES ($1, $2, $3, 102, $4, $5) ON CONFLICT (tenant_id, key) DO NOTHING`, tenant, op.Key, op.RequestHash, now, now.Add(s.cfg.IdemTTL))
	if err != nil {
		return nil, err
	}
	if tag.RowsAffected() == 1 {
		s.noteKeyTenant(t.Shard, tenant)
		return nil, nil
	}
	var hash, body []byte
	var status int
	var headers map[string]string
	var expires time.Time
	if err := tx.QueryRow(ctx, `SELECT request_hash, status, headers, body, expires_at FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 FOR UPDATE`,
		tenant, op.Key).Scan(&hash, &status, &headers, &body, &expires); err != nil {
		return nil, err
	}
	if !expires.After(now) {
		// Expired but not yet cleaned up: the key is free again.
		_, err := tx.Exec(ctx, `UPDATE idempotency_keys SET request_hash = $3, status = 102, headers = '{}', body = '', created_at = $4, expires_at = $5, seq = NULL
			WHERE tenant_id = $1 AND key = $2`, tenant, op.Key, op.RequestHash, now, now.Add(s.cfg.IdemTTL))
		return nil, err
	}
	if !bytes.Equal(hash, op.RequestHash) {
		return nil, records.ErrKeyReused
	}
	return &records.Response{Status: status, Headers: headers, Body: body}, nil
}

// updateDataSQL replaces a live record's data (Put over a record, Patch) and returns it.
const updateDataSQL = `UPDATE records SET data = $4, version = version + 1, updated_at = now()
	WHERE tenant_id = $1 AND collection = $2 AND id = $3 RETURNING ` + recordCols

// change makes op's change to the records table in tx and says what it did.
func change(ctx context.Context, tx querier, tenant string, op records.WriteOp) (records.Change, error) {
	coll, id := op.Collection, op.ID
	switch op.Op {
	case records.Create:
		u, err := uuid.NewV7()
		if err != nil {
			return records.Change{}, err
		}
		r := records.Record{ID: u.String(), Collection: coll, Version: 1}
		if err := tx.QueryRow(ctx, `INSERT INTO records (tenant_id, collection, id, version, data) VALUES ($1, $2, $3, 1, $4)
			RETURNING data, created_at, updated_at`, tenant, coll, r.ID, []byte(op.Data)).Scan(&r.Data, &r.CreatedAt, &r.UpdatedAt); err != nil {
			return records.Change{}, err
		}
		return records.Change{Kind: records.Created, Record: r}, nil

	case records.Put:
		// Two Puts may create the same id at once (a write holds the tenant row only at its
		// end): the second's insert finds the first's row, waits for it, inserts nothing, and
		// the Put starts over on the row the first committed.
		for range 3 {
			ch, err := putChange(ctx, tx, tenant, op)
			if !errors.Is(err, errRaced) {
				return ch, err
			}
		}
		return records.Change{}, fmt.Errorf("pgstore: put %s/%s: the record was created concurrently three times", coll, id)

	case records.Patch:
		_, cur, err := lockLiveRecord(ctx, tx, tenant, coll, id, op)
		if err != nil {
			return records.Change{}, err
		}
		merged := cur
		if op.Data != nil {
			if merged, err = applyPatch(cur, op.Data); err != nil {
				return records.Change{}, err
			}
			if op.MaxData > 0 && int64(len(merged)) > op.MaxData {
				return records.Change{}, fmt.Errorf("%w: %d bytes after the patch, at most %d", records.ErrDataTooLarge, len(merged), op.MaxData)
			}
		}
		r, err := scanRecord(tx.QueryRow(ctx, updateDataSQL, tenant, coll, id, merged), coll)
		if err != nil {
			return records.Change{}, err
		}
		return records.Change{Kind: records.Updated, Record: r}, nil

	case records.Delete:
		version, _, err := lockLiveRecord(ctx, tx, tenant, coll, id, op)
		if err != nil {
			return records.Change{}, err
		}
		// Tombstone: the row stays with version+1 so versions never go back (see docs/api.md).
		// Its timestamps are what a move's mirror copies.
		r := records.Record{ID: id, Collection: coll, Version: version + 1}
		if err := tx.QueryRow(ctx, `UPDATE records SET deleted = true, data = '{}', version = version + 1, updated_at = now()
			WHERE tenant_id = $1 AND collection = $2 AND id = $3 RETURNING created_at, updated_at`, tenant, coll, id).Scan(&r.CreatedAt, &r.UpdatedAt); err != nil {
			return records.Change{}, err
		}
		return records.Change{Kind: records.Deleted, Record: r}, nil
	}
	return records.Change{}, fmt.Errorf("pgstore: unknown write op %d", op.Op)
}

// errRaced is putChange's answer when another transaction created the record first.
var errRaced = errors.New("pgstore: the record was created concurrently")

// putChange makes a Put's change: update a live record, re-create over a tombstone, or create.
// errRaced when a concurrent write created the record after the look (nothing was written).
func putChange(ctx context.Context, tx querier, tenant string, op records.WriteOp) (records.Change, error) {
	coll, id := op.Collection, op.ID
	var version int64
	var deleted bool
	err := tx.QueryRow(ctx, `SELECT version, deleted FROM records WHERE tenant_id = $1 AND collection = $2 AND id = $3 FOR UPDATE`,
		tenant, coll, id).Scan(&version, &deleted)
	exists := err == nil && !deleted
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return records.Change{}, err
	}
	if err := preconditions(op, exists, version); err != nil {
		return records.Change{}, err
	}
	var r records.Record
	kind := records.Updated
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		kind = records.Created
		r, err = scanRecord(tx.QueryRow(ctx, `INSERT INTO records (tenant_id, collection, id, version, data) VALUES ($1, $2, $3, 1, $4)
			ON CONFLICT DO NOTHING RETURNING `+recordCols, tenant, coll, id, []byte(op.Data)), coll)
		if errors.Is(err, pgx.ErrNoRows) {
			return records.Change{}, errRaced
		}
	case deleted:
		// Re-creating over a tombstone continues the version sequence.
		kind = records.Created
		r, err = scanRecord(tx.QueryRow(ctx, `UPDATE records SET data = $4, version = version + 1, deleted = false, created_at = now(), updated_at = now()
			WHERE tenant_id = $1 AND collection = $2 AND id = $3 RETURNING `+recordCols, tenant, coll, id, []byte(op.Data)), coll)
	default:
		r, err = scanRecord(tx.QueryRow(ctx, updateDataSQL, tenant, coll, id, []byte(op.Data)), coll)
	}
	if err != nil {
		return records.Change{}, err
	}
	return records.Change{Kind: kind, Record: r}, nil
}

// lockLiveRecord locks a live (not deleted) record for update and checks op's preconditions
// against it. A missing or deleted record is records.ErrRecordNotFound, or
// records.ErrPrecondition when If-Match was sent.
func lockLiveRecord(ctx context.Context, tx querier, tenant, coll, id string, op records.WriteOp) (version int64, data []byte, err error) {
	var deleted bool
	err = tx.QueryRow(ctx, `SELECT version, deleted, data FROM records WHERE tenant_id = $1 AND collection = $2 AND id = $3 FOR UPDATE`,
		tenant, coll, id).Scan(&version, &deleted, &data)
	switch {
	case errors.Is(err, pgx.ErrNoRows) || (err == nil && deleted):
		if op.IfMatch != nil {
			return 0, nil, records.ErrPrecondition
		}
		return 0, nil, records.ErrRecordNotFound
	case err != nil:
		return 0, nil, err
	}
	if err := preconditions(op, true, version); err != nil {
		return 0, nil, err
	}
	return version, data, nil
}

// preconditions checks op's If-Match and If-None-Match against the current state (RFC 9110
// §13.2.2: If-Match first). exists=false: no live record.
func preconditions(op records.WriteOp, exists bool, version int64) error {
	if m := op.IfMatch; m != nil && (!exists || !(m.Any || slices.Contains(m.Versions, version))) {
		return records.ErrPrecondition
	}
	if m := op.IfNoneMatch; m != nil && exists && (m.Any || slices.Contains(m.Versions, version)) {
		return records.ErrPrecondition
	}
	return nil
}

// applyPatch applies the RFC 7396 merge patch to the stored data object cur and returns the
// result as compact JSON, without HTML escaping (so its length is the data's own size, which
// WriteOp.MaxData bounds).
func applyPatch(cur, patch []byte) ([]byte, error) {
	obj, err := decodeObject(cur)
	if err != nil {
		return nil, err
	}
	p, err := decodeObject(patch)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(mergePatch(obj, p)); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// decodeObject decodes a JSON object keeping numbers exact.
func decodeObject(raw []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("malformed JSON: %v", err)
	}
	return m, nil
}

// mergePatch applies an RFC 7396 merge patch to target and returns the result. target may be
// modified in place.
func mergePatch(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	tm, ok := target.(map[string]any)
	if !ok {
		tm = map[string]any{}
	}
	for k, v := range pm {
		if v == nil {
			delete(tm, k)
			continue
		}
		tm[k] = mergePatch(tm[k], v)
	}
	return tm
}
