package pgstore

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/replication"
)

// TestReadBatchScopesTenant: the tenant setting of a read batch is in force for the statements
// it carries, and only for them. Two tenants hold a record with the same collection and id; a
// query with no tenant filter of its own sees exactly the reading tenant's row (RLS alone scopes
// it), and afterwards the connection has no tenant and is read-write again.
func TestReadBatchScopesTenant(t *testing.T) {
	e := newEnv(t, shards.Config{})
	for _, tn := range []string{"alpha", "bravo"} {
		createTenant(t, e.store, tn)
		put(t, e.store, tn, "c", "same", `{"owner":"`+tn+`"}`)
	}
	ctx := context.Background()
	// Through the store: every read answers with the caller's own record.
	for _, tn := range []string{"alpha", "bravo"} {
		want := `{"owner": "` + tn + `"}`
		if r, _, err := e.store.Get(ctx, target(tn), records.ReadOptions{}, "c", "same"); err != nil || string(r.Data) != want {
			t.Fatalf("%s Get: %s %v", tn, r.Data, err)
		}
		page, _, err := e.store.List(ctx, target(tn), records.ReadOptions{}, "c", records.ListQuery{Limit: 10})
		if err != nil || len(page.Items) != 1 || string(page.Items[0].Data) != want {
			t.Fatalf("%s List: %+v %v", tn, page.Items, err)
		}
		recs, _, err := e.store.GetMany(ctx, target(tn), records.ReadOptions{}, "c", []string{"same"}, nil)
		if err != nil || len(recs) != 1 || string(recs[0].Data) != want {
			t.Fatalf("%s GetMany: %+v %v", tn, recs, err)
		}
	}

	conn := e.appConn()
	var owners []string
	_, err := readBatch(ctx, conn, "alpha", 0, func(b *pgx.Batch) {
		b.Queue(`SELECT tenant_id FROM records WHERE collection = 'c' AND id = 'same'`).Query(func(rows pgx.Rows) error {
			var err error
			owners, err = pgx.CollectRows(rows, pgx.RowTo[string])
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(owners) != 1 || owners[0] != "alpha" {
		t.Fatalf("alpha's unfiltered read saw tenants %v, want [alpha]", owners)
	}
	var tenant, readOnly string
	if err := conn.QueryRow(ctx, `SELECT coalesce(current_setting('meridian.tenant', true), ''), current_setting('transaction_read_only')`).Scan(&tenant, &readOnly); err != nil {
		t.Fatal(err)
	}
	if tenant != "" || readOnly != "off" {
		t.Fatalf("after the batch: tenant %q, transaction_read_only %q; the settings leaked", tenant, readOnly)
	}
	// Without the batch's scope the same query sees nothing: RLS is what answered above.
	rows, err := conn.Query(ctx, `SELECT tenant_id FROM records WHERE collection = 'c' AND id = 'same'`)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := pgx.CollectRows(rows, pgx.RowTo[string]); err != nil || len(n) != 0 {
		t.Fatalf("unscoped read saw %v (%v)", n, err)
	}

	// A tenant without a row: ErrTenantNotFound, and the read's own callback never runs.
	called := false
	_, err = readBatch(ctx, conn, "ghost", 0, func(b *pgx.Batch) {
		b.Queue(`SELECT 1`).QueryRow(func(pgx.Row) error { called = true; return nil })
	})
	if !errors.Is(err, records.ErrTenantNotFound) || called {
		t.Fatalf("ghost tenant: err %v, callback called %v", err, called)
	}
}

// TestReadBatchIsReadOnly: no statement in a read batch can write, not even one that tries to
// switch read-only off first; the same write in a read-write transaction succeeds (the role may
// write, so the batch's read-only mode is what stopped it).
func TestReadBatchIsReadOnly(t *testing.T) {
	e := newEnv(t, shards.Config{})
	createTenant(t, e.store, "alpha")
	put(t, e.store, "alpha", "c", "r1", `{"v":1}`)
	ctx := context.Background()
	conn := e.appConn()
	writes := []struct {
		name, sql string
		code      string // SQLSTATE the write must fail with
	}{
		{"update", `UPDATE records SET data = '{"v":2}' WHERE collection = 'c' AND id = 'r1'`, "25006"},
		{"insert", `INSERT INTO records (tenant_id, collection, id, version, data) VALUES ('alpha', 'c', 'r2', 1, '{}')`, "25006"},
		{"delete", `DELETE FROM records WHERE collection = 'c' AND id = 'r1'`, "25006"},
		{"cte", `WITH d AS (DELETE FROM records WHERE id = 'r1' RETURNING 1) SELECT count(*) FROM d`, "25006"},
		{"read-write again", `SELECT set_config('transaction_read_only', 'off', true)`, "25001"},
	}
	for _, w := range writes {
		t.Run(w.name, func(t *testing.T) {
			_, err := readBatch(ctx, conn, "alpha", 0, func(b *pgx.Batch) {
				b.Queue(w.sql)
				b.Queue(`UPDATE records SET data = '{"v":3}' WHERE collection = 'c' AND id = 'r1'`)
			})
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != w.code {
				t.Fatalf("write in a read batch: %v, want SQLSTATE %s", err, w.code)
			}
		})
	}
	if rec, _, err := e.store.Get(ctx, target("alpha"), records.ReadOptions{}, "c", "r1"); err != nil || rec.Version != 1 || string(rec.Data) != `{"v": 1}` {
		t.Fatalf("record changed by a read batch: %+v %v", rec, err)
	}
	if page, _, err := e.store.List(ctx, target("alpha"), records.ReadOptions{}, "c", records.ListQuery{Limit: 10}); err != nil || len(page.Items) != 1 {
		t.Fatalf("read batch inserted: %+v %v", page.Items, err)
	}
	// Control: the role can make this very change outside a read batch.
	sh, _ := e.maps.ShardInfo("s1")
	pool, err := e.conns.Primary(ctx, sh)
	if err != nil {
		t.Fatal(err)
	}
	err = inTx(ctx, pool, "alpha", pgx.TxOptions{}, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, writes[0].sql)
		if err == nil && tag.RowsAffected() != 1 {
			err = errors.New("control update matched no row")
		}
		return err
	})
	if err != nil {
		t.Fatalf("control write: %v", err)
	}
}

// countTracer counts the queries and batches pgx sends on a pool.
type countTracer struct {
	mu      sync.Mutex
	queries []string   // SQL of each Query/QueryRow/Exec: one round trip each
	batches [][]string // SQL of each batch: one round trip each once its statements are prepared
}

var (
	_ pgx.QueryTracer = (*countTracer)(nil)
	_ pgx.BatchTracer = (*countTracer)(nil)
)

func (ct *countTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	ct.queries = append(ct.queries, d.SQL)
	return ctx
}

func (ct *countTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (ct *countTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	var sqls []string
	for _, q := range d.Batch.QueuedQueries {
		sqls = append(sqls, q.SQL)
	}
	ct.batches = append(ct.batches, sqls)
	return ctx
}

func (ct *countTracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (ct *countTracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// take returns and resets what was counted.
func (ct *countTracer) take() (queries []string, batches [][]string) {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	queries, batches = ct.queries, ct.batches
	ct.queries, ct.batches = nil, nil
	return queries, batches
}

// wantOneBatch checks that a request cost nothing but the given queries and one read batch.
// wantOneBatch: exactly one batch and no other query — scope, (with a token: the replay
// check,) tenant check, WAL position, read.
func wantOneBatch(t *testing.T, ct *countTracer, what string, token bool) {
	t.Helper()
	q, b := ct.take()
	if len(q) != 0 || len(b) != 1 {
		t.Fatalf("%s: %d queries %q and %d batches, want none and 1", what, len(q), q, len(b))
	}
	want := []string{readScopeSQL, tenantExistsSQL, readLSNSQL}
	if token {
		want = []string{readScopeSQL, replayedSQL, tenantExistsSQL, readLSNSQL}
	}
	if len(b[0]) != len(want)+1 || !slices.Equal(b[0][:len(want)], want) {
		t.Fatalf("%s: batch %q, want %q then the read", what, b[0], want)
	}
}

// TestReadRoundTrips: every read costs one batch — scope, tenant check and the read in one
// round trip — and nothing else, whatever its outcome.
func TestReadRoundTrips(t *testing.T) {
	ct := &countTracer{}
	e := newEnv(t, shards.Config{Tracer: ct})
	createTenant(t, e.store, "alpha") // ghost has no row anywhere
	put(t, e.store, "alpha", "c", "r1", `{"v":1}`)
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		read   func(records.Target) (records.ReadInfo, error)
		tenant string
		want   error
	}{
		{"get", func(t records.Target) (records.ReadInfo, error) {
			_, info, err := e.store.Get(ctx, t, records.ReadOptions{}, "c", "r1")
			return info, err
		}, "alpha", nil},
		{"get missing", func(t records.Target) (records.ReadInfo, error) {
			_, info, err := e.store.Get(ctx, t, records.ReadOptions{}, "c", "nope")
			return info, err
		}, "alpha", records.ErrRecordNotFound},
		{"get unknown tenant", func(t records.Target) (records.ReadInfo, error) {
			_, info, err := e.store.Get(ctx, t, records.ReadOptions{}, "c", "r1")
			return info, err
		}, "ghost", records.ErrTenantNotFound},
		{"list", func(t records.Target) (records.ReadInfo, error) {
			_, info, err := e.store.List(ctx, t, records.ReadOptions{}, "c", records.ListQuery{Limit: 5})
			return info, err
		}, "alpha", nil},
		{"list filtered", func(t records.Target) (records.ReadInfo, error) {
			_, info, err := e.store.List(ctx, t, records.ReadOptions{}, "c", records.ListQuery{Limit: 5, Filter: `{"v":1}`, Fields: []string{"v"}})
			return info, err
		}, "alpha", nil},
		{"batch", func(t records.Target) (records.ReadInfo, error) {
			_, info, err := e.store.GetMany(ctx, t, records.ReadOptions{}, "c", []string{"r1", "r2"}, nil)
			return info, err
		}, "alpha", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ct.take()
			info, err := tc.read(target(tc.tenant))
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) || info.Source != records.SourcePrimary {
				t.Fatalf("err %v (want %v), source %q", err, tc.want, info.Source)
			}
			wantOneBatch(t, ct, tc.name, false)
		})
	}
}

// TestStandbyReadRoundTrips: a standby read is one batch, with or without a Consistency-Token
// (the token's replay check is a statement of the batch).
func TestStandbyReadRoundTrips(t *testing.T) {
	ct := &countTracer{}
	// A long interval keeps the cached standby status from being refreshed mid-count.
	se := newStandbyEnv(t, shards.Config{Tracer: ct}, func(c *Config) { c.StandbyInterval = time.Hour })
	createTenant(t, se.home, "acme")
	w := put(t, se.home, "acme", "n", "n1", `{"v":1}`)
	se.waitReplayed(t, w.Token)
	ctx := context.Background()
	read := func(token, reason string) {
		t.Helper()
		r, info, err := se.local.Get(ctx, target("acme"), records.ReadOptions{Token: token}, "n", "n1")
		if err != nil || info.Source != records.SourceReplica || info.FellBack || info.Reason != reason || r.Version != 1 {
			t.Fatalf("standby read (token %q): %+v %+v %v, want reason %q", token, r, info, err, reason)
		}
	}
	// Warm up: the first read checks the standby's status (and waits for the token) and caches it.
	read(w.Token, "token-replayed")
	ct.take()

	read("", "fresh")
	wantOneBatch(t, ct, "standby read", false)
	read(w.Token, "token-replayed")
	wantOneBatch(t, ct, "standby read with token", true)
	// A value the database rejects is the read's own outcome on the standby: a ValueError,
	// neither retried on the primary nor counted against the standby.
	_, info, err := se.local.List(ctx, target("acme"), records.ReadOptions{}, "n", records.ListQuery{Limit: 5, Filter: `{"a":"\u0000"}`})
	var ve *records.ValueError
	if !errors.As(err, &ve) || info.Source != records.SourceReplica || info.FellBack {
		t.Fatalf("rejected filter on the standby: %+v %v, want a ValueError from the replica", info, err)
	}
	// A strong read goes to the primary without asking the standby.
	if _, info, err := se.local.Get(ctx, target("acme"), records.ReadOptions{Strong: true}, "n", "n1"); err != nil ||
		info.Source != records.SourcePrimary || info.Reason != "strong" {
		t.Fatalf("strong read: %+v %v", info, err)
	}
}

// TestReadBatchReplayCheck: a Consistency-Token's check inside the batch stops the read on a
// standby that has not replayed the token's LSN, and on a primary.
func TestReadBatchReplayCheck(t *testing.T) {
	se := newStandbyEnv(t, shards.Config{})
	ctx := context.Background()
	sconn, err := pgx.Connect(ctx, se.standby.DSN(se.db))
	if err != nil {
		t.Fatal(err)
	}
	defer sconn.Close(ctx)
	st, err := replication.ReadStandbyStatus(ctx, sconn)
	if err != nil || st.Replayed == 0 {
		t.Fatalf("standby status %+v %v", st, err)
	}
	ran := false
	queue := func(b *pgx.Batch) {
		b.Queue(`SELECT 1`).QueryRow(func(pgx.Row) error { ran = true; return nil })
	}
	// Replayed far enough: the check passes and the batch goes on (to the tenant check: "acme"
	// has no row, so the read itself never runs).
	if _, err := readBatch(ctx, sconn, "acme", st.Replayed, queue); !errors.Is(err, records.ErrTenantNotFound) || ran {
		t.Fatalf("token already replayed: %v (read ran %v), want ErrTenantNotFound", err, ran)
	}
	if _, err := readBatch(ctx, sconn, "acme", st.Replayed+1<<32, queue); !errors.Is(err, errStandbyBehind) || ran {
		t.Fatalf("token ahead of replay: %v (read ran %v), want errStandbyBehind", err, ran)
	}
	pconn, err := pgx.Connect(ctx, se.primary.DSN(se.db))
	if err != nil {
		t.Fatal(err)
	}
	defer pconn.Close(ctx)
	if _, err := readBatch(ctx, pconn, "acme", 1, queue); !errors.Is(err, replication.ErrNotStandby) || ran {
		t.Fatalf("token check on a primary: %v, want replication.ErrNotStandby", err)
	}
	// The connection is usable afterwards (the pipeline was drained).
	var one int
	if err := sconn.QueryRow(ctx, `SELECT 1`).Scan(&one); err != nil || one != 1 {
		t.Fatalf("standby connection after a failed batch: %v", err)
	}
}
