package pgstore

import (
	"context"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/replication"
)

// errStandbyBehind is returned inside a standby read batch whose standby has not replayed the
// read's token; the read is then served by the primary.
var errStandbyBehind = errors.New("pgstore: standby has not replayed the consistency token")

// readScopeSQL opens every read batch: it makes the batch's transaction read-only and scopes it
// to one tenant. Both settings are local to the transaction, so they end at its Sync and never
// reach the connection's next user. Raising transaction_read_only is allowed at any point of a
// transaction (only lowering it is not), and it is in force for every later statement.
const readScopeSQL = `SELECT set_config('transaction_read_only', 'on', true), set_config('meridian.tenant', $1, true)`

// replayedSQL is a Consistency-Token's check on a standby: has it replayed WAL up to $1? NULL
// on a primary (pg_last_wal_replay_lsn is NULL outside recovery).
const replayedSQL = `SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn`

// readLSNSQL is a read's WAL position: on a standby the position it has replayed, on a primary
// its current WAL position (pg_last_wal_replay_lsn is NULL outside recovery). readBatch runs it
// as a statement of its own before the read's statement, so in READ COMMITTED the read's
// snapshot is taken after it: on a standby the snapshot holds every commit replayed up to it
// (replay makes a commit visible before it advances the replay position).
const readLSNSQL = `SELECT COALESCE(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text`

// tenantExistsSQL tells a tenant without a row here (404 tenant) from one without the record.
// It must run after readScopeSQL: the tenants table is under row-level security too.
const tenantExistsSQL = `SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)`

// readBatch runs a read for tenant on conn in one round trip: readScopeSQL, the tenant check,
// then the statements queue adds (with their result callbacks, see pgx.QueuedQuery), all sent
// as one pipeline with a single Sync. Postgres runs the statements between two Syncs in one
// implicit transaction, so the local settings of readScopeSQL hold for every statement queue
// adds, and an error anywhere rolls the whole batch back. It returns records.ErrTenantNotFound
// when the tenant has no row, else the first error of a statement or callback; the callbacks of
// statements after a failed one are not called.
//
// It also returns the server's WAL position read in the batch before the read's statements
// (readLSNSQL; 0 when the batch failed before it).
//
// minLSN > 0 makes the batch check first that the server (a standby) has replayed WAL up to
// minLSN, returning errStandbyBehind if not (and replication.ErrNotStandby on a primary). The
// check is a statement of its own, before the read's, so in READ COMMITTED the read's snapshot
// is taken after it and includes everything up to minLSN.
func readBatch(ctx context.Context, conn *pgx.Conn, tenant string, minLSN replication.LSN, queue func(*pgx.Batch)) (replication.LSN, error) {
	var lsn replication.LSN
	b := &pgx.Batch{}
	b.Queue(readScopeSQL, tenant)
	if minLSN > 0 {
		b.Queue(replayedSQL, minLSN.String()).QueryRow(func(row pgx.Row) error {
			var ok *bool
			if err := row.Scan(&ok); err != nil {
				return err
			}
			switch {
			case ok == nil:
				return replication.ErrNotStandby
			case !*ok:
				return errStandbyBehind
			}
			return nil
		})
	}
	b.Queue(tenantExistsSQL, tenant).QueryRow(func(row pgx.Row) error {
		var exists bool
		if err := row.Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return records.ErrTenantNotFound
		}
		return nil
	})
	b.Queue(readLSNSQL).QueryRow(func(row pgx.Row) error {
		var text string
		if err := row.Scan(&text); err != nil {
			return err
		}
		var err error
		lsn, err = replication.ParseLSN(text)
		return err
	})
	queue(b)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return 0, err
	}
	return lsn, nil
}

// readRequest is a read's decoded options.
type readRequest struct {
	strong bool
	token  *replication.Token
}

// decodeOptions decodes ReadOptions; a token that does not decode is records.ErrBadToken.
func decodeOptions(ro records.ReadOptions) (readRequest, error) {
	rr := readRequest{strong: ro.Strong}
	if ro.Token != "" {
		tok, err := replication.DecodeToken(strings.TrimSpace(ro.Token))
		if err != nil {
			return rr, errors.Join(records.ErrBadToken, err)
		}
		rr.token = &tok
	}
	return rr, nil
}

// fallBack reports whether a read that failed on the standby should be retried on the primary.
// Outcomes of the read itself (no such record, a value the database rejects) and a finished
// request are final.
func fallBack(err error) bool {
	var ve *records.ValueError
	return !errors.Is(err, records.ErrRecordNotFound) && !errors.As(err, &ve) &&
		!errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// read runs a read for the target on the source replication.Policy.Choose picks and says which
// source answered. queue adds the read's statements, with result callbacks, to a batch that
// readBatch runs read-only, scoped to the tenant, after checking the tenant exists (and, on a
// standby, that it replayed the read's token), in one round trip. A standby read that fails for
// any reason but the read's own outcome is retried on the primary, so queue may be called twice
// and its callbacks must reset what they collect; only failures of the standby itself count
// against its health. Writes never come here: their read-back is in their own transaction.
func (s *Store) read(ctx context.Context, t records.Target, ro records.ReadOptions, queue func(*pgx.Batch)) (records.ReadInfo, error) {
	sh, primary, err := s.primary(ctx, t.Shard)
	if err != nil {
		return records.ReadInfo{}, err
	}
	rr, err := decodeOptions(ro)
	if err != nil {
		return records.ReadInfo{}, err
	}
	// standby stays an untyped nil when the local copy is the primary (or cannot be opened):
	// Choose then sends the read to the primary.
	var standby replication.Querier
	var standbyPool *pgxpool.Pool
	if !rr.strong {
		if pool, isPrimary, err := s.cfg.Conns.Local(ctx, sh, s.cfg.Region); err == nil && !isPrimary {
			standby, standbyPool = pool, pool
		}
	}
	d := s.policy.Choose(ctx, s.tracker, sh.ID, replication.ReadRequest{Strong: rr.strong, Token: rr.token}, standby, primary)
	info := records.ReadInfo{Reason: string(d.Reason)}
	if d.Source == replication.SourceReplica {
		lsn, err := readOn(ctx, standbyPool, t.Tenant, d.MinLSN, queue)
		err = classify(err)
		if err == nil || !fallBack(err) {
			info.Source, info.LSN = records.SourceReplica, uint64(lsn)
			return info, err
		}
		if !errors.Is(err, errStandbyBehind) && !errors.Is(err, records.ErrTenantNotFound) {
			s.tracker.Record(sh.ID, standby, replication.StandbyStatus{}, err)
			s.log.Warn("standby read failed; using the primary", "shard", sh.ID, "err", err)
		}
		info.FellBack = true
	}
	lsn, err := readOn(ctx, primary, t.Tenant, 0, queue)
	info.Source, info.LSN = records.SourcePrimary, uint64(lsn)
	return info, classify(err)
}

// readOn runs one read for tenant on a connection of pool in one round trip (readBatch) and
// returns the copy's WAL position read before the read's statements. With minLSN > 0, the copy
// must have replayed it first: readBatch checks that in the same batch, before the read's
// statements.
func readOn(ctx context.Context, pool *pgxpool.Pool, tenant string, minLSN replication.LSN, queue func(*pgx.Batch)) (replication.LSN, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Release()
	return readBatch(ctx, conn.Conn(), tenant, minLSN, queue)
}

// recordCols are the columns scanRecord reads, in its order.
const recordCols = `id, version, data, created_at, updated_at`

func scanRecord(row pgx.Row, coll string) (records.Record, error) {
	r := records.Record{Collection: coll}
	err := row.Scan(&r.ID, &r.Version, &r.Data, &r.CreatedAt, &r.UpdatedAt)
	return r, err
}

// Get reads one live record.
func (s *Store) Get(ctx context.Context, t records.Target, ro records.ReadOptions, coll, id string) (records.Record, records.ReadInfo, error) {
	var r records.Record
	info, err := s.read(ctx, t, ro, func(b *pgx.Batch) {
		b.Queue(`SELECT `+recordCols+` FROM records WHERE tenant_id = $1 AND collection = $2 AND id = $3 AND NOT deleted`,
			t.Tenant, coll, id).QueryRow(func(row pgx.Row) error {
			var err error
			r, err = scanRecord(row, coll)
			if errors.Is(err, pgx.ErrNoRows) {
				return records.ErrRecordNotFound
			}
			return err
		})
	})
	return r, info, err
}

// List reads one page of a collection's live records in id order (keyset pagination).
func (s *Store) List(ctx context.Context, t records.Target, ro records.ReadOptions, coll string, q records.ListQuery) (records.Page, records.ReadInfo, error) {
	sql, args := listStatement(t.Tenant, coll, q)
	var page records.Page
	info, err := s.read(ctx, t, ro, func(b *pgx.Batch) {
		b.Queue(sql, args...).Query(func(rows pgx.Rows) error {
			var err error
			page.Items, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (records.Record, error) { return scanRecord(row, coll) })
			return err
		})
	})
	if err != nil {
		return records.Page{}, info, err
	}
	if len(page.Items) > q.Limit {
		page.Items, page.More = page.Items[:q.Limit], true
	}
	return page, info, nil
}

// GetMany reads up to len(ids) live records of a collection in one query; missing and deleted
// ids are left out, the rest keep the order of ids. fields selects top-level data fields (nil =
// all of data).
func (s *Store) GetMany(ctx context.Context, t records.Target, ro records.ReadOptions, coll string, ids, fields []string) ([]records.Record, records.ReadInfo, error) {
	sql, args := batchStatement(t.Tenant, coll, ids, fields)
	var byID map[string]records.Record
	info, err := s.read(ctx, t, ro, func(b *pgx.Batch) {
		b.Queue(sql, args...).Query(func(rows pgx.Rows) error {
			byID = map[string]records.Record{} // a standby read that failed may be retried on the primary
			recs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (records.Record, error) { return scanRecord(row, coll) })
			for _, r := range recs {
				byID[r.ID] = r
			}
			return err
		})
	})
	if err != nil {
		return nil, info, err
	}
	out := make([]records.Record, 0, len(byID))
	for _, id := range ids {
		if r, ok := byID[id]; ok {
			out = append(out, r)
		}
	}
	return out, info, nil
}
