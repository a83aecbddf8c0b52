package api

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/meridian-dev/meridian/replication"
)

// appConn returns a connection of the node's (meridian_app) pool of shard, released at cleanup.
func appConn(t *testing.T, e *env, shard string) *pgx.Conn {
	t.Helper()
	sh, _ := e.maps.ShardInfo(shard)
	pool, err := e.pools.Primary(context.Background(), sh)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pool.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Release)
	return c.Conn()
}

// TestReadBatchScopesTenant: the tenant setting of a read batch is in force for the statements
// it carries, and only for them. Two tenants hold a record with the same collection and id; a
// query with no tenant filter of its own sees exactly the reading tenant's row (RLS alone scopes
// it), and afterwards the connection has no tenant and is read-write again.
func TestReadBatchScopesTenant(t *testing.T) {
	e := newEnv(t)
	e.createTenant("alpha", "s1")
	e.createTenant("bravo", "s1")
	for _, tn := range []string{"alpha", "bravo"} {
		r := e.do("PUT", "/v1/collections/c/records/same", "Bearer "+e.token(tn, "data:write"), `{"data":{"owner":"`+tn+`"}}`, nil)
		if r.StatusCode != 201 {
			t.Fatalf("put %s: %d %s", tn, r.StatusCode, r.Body)
		}
	}
	// Through the handlers: every read route answers with the caller's own record.
	for _, tn := range []string{"alpha", "bravo"} {
		a := "Bearer " + e.token(tn, "data:read")
		want := `{"owner":"` + tn + `"}`
		if r := e.do("GET", "/v1/collections/c/records/same", a, "", nil); r.StatusCode != 200 || !jsonEqual(decodeRecord(t, r.Body).Data, want) {
			t.Fatalf("%s GET: %d %s", tn, r.StatusCode, r.Body)
		}
		for _, q := range []string{"", "?ids=same"} {
			lb := decodeList(t, e.do("GET", "/v1/collections/c/records"+q, a, "", nil))
			if len(lb.Items) != 1 || !jsonEqual(lb.Items[0].Data, want) {
				t.Fatalf("%s list %q: %+v", tn, q, lb.Items)
			}
		}
	}

	ctx := context.Background()
	conn := appConn(t, e, "s1")
	var owners []string
	err := readBatch(ctx, conn, "alpha", 0, func(b *pgx.Batch) {
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
	err = readBatch(ctx, conn, "ghost", 0, func(b *pgx.Batch) {
		b.Queue(`SELECT 1`).QueryRow(func(pgx.Row) error { called = true; return nil })
	})
	if !errors.Is(err, ErrTenantNotFound) || called {
		t.Fatalf("ghost tenant: err %v, callback called %v", err, called)
	}
}

// TestReadBatchIsReadOnly: no statement in a read batch can write, not even one that tries to
// switch read-only off first; the same write in a read-write transaction succeeds (the role may
// write, so the batch's read-only mode is what stopped it).
func TestReadBatchIsReadOnly(t *testing.T) {
	e := newEnv(t)
	e.createTenant("alpha", "s1")
	a := "Bearer " + e.token("alpha", "data:read data:write")
	if r := e.do("PUT", "/v1/collections/c/records/r1", a, `{"data":{"v":1}}`, nil); r.StatusCode != 201 {
		t.Fatalf("put: %d %s", r.StatusCode, r.Body)
	}
	ctx := context.Background()
	conn := appConn(t, e, "s1")
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
			err := readBatch(ctx, conn, "alpha", 0, func(b *pgx.Batch) {
				b.Queue(w.sql)
				b.Queue(`UPDATE records SET data = '{"v":3}' WHERE collection = 'c' AND id = 'r1'`)
			})
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != w.code {
				t.Fatalf("write in a read batch: %v, want SQLSTATE %s", err, w.code)
			}
		})
	}
	r := e.do("GET", "/v1/collections/c/records/r1", a, "", nil)
	if rec := decodeRecord(t, r.Body); r.StatusCode != 200 || rec.Version != 1 || !jsonEqual(rec.Data, `{"v":1}`) {
		t.Fatalf("record changed by a read batch: %d %s", r.StatusCode, r.Body)
	}
	if list := decodeList(t, e.do("GET", "/v1/collections/c/records", a, "", nil)); len(list.Items) != 1 {
		t.Fatalf("read batch inserted: %+v", list.Items)
	}
	// Control: the role can make this very change outside a read batch.
	sh, _ := e.maps.ShardInfo("s1")
	pool, err := e.pools.Primary(ctx, sh)
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
// check,) tenant check, read.
func wantOneBatch(t *testing.T, ct *countTracer, what string, token bool) {
	t.Helper()
	q, b := ct.take()
	if len(q) != 0 || len(b) != 1 {
		t.Fatalf("%s: %d queries %q and %d batches, want none and 1", what, len(q), q, len(b))
	}
	want := []string{readScopeSQL, tenantExistsSQL}
	if token {
		want = []string{readScopeSQL, replayedSQL, tenantExistsSQL}
	}
	if len(b[0]) != len(want)+1 || !slices.Equal(b[0][:len(want)], want) {
		t.Fatalf("%s: batch %q, want %q then the read", what, b[0], want)
	}
}

// TestReadRoundTrips: every read route costs one batch — scope, tenant check and the read in
// one round trip — and nothing else, whatever its outcome.
func TestReadRoundTrips(t *testing.T) {
	e := newEnv(t)
	ct := &countTracer{}
	e.pools.cfg.Tracer = ct       // pools open on first use: before any request, so every pool has it
	e.createTenant("alpha", "s1") // ghost has no row anywhere; the map places it on s1
	a := "Bearer " + e.token("alpha", "data:read data:write")
	if r := e.do("PUT", "/v1/collections/c/records/r1", a, `{"data":{"v":1}}`, nil); r.StatusCode != 201 {
		t.Fatalf("put: %d %s", r.StatusCode, r.Body)
	}
	for _, tc := range []struct {
		name, tenant, path string
		status             int
	}{
		{"get", "alpha", "/v1/collections/c/records/r1", 200},
		{"get missing", "alpha", "/v1/collections/c/records/nope", 404},
		{"get unknown tenant", "ghost", "/v1/collections/c/records/r1", 404},
		{"list", "alpha", "/v1/collections/c/records?limit=5", 200},
		{"list filtered", "alpha", "/v1/collections/c/records?where[v]=1&fields=v", 200},
		{"batch", "alpha", "/v1/collections/c/records?ids=r1,r2", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ct.take()
			r := e.do("GET", tc.path, "Bearer "+e.token(tc.tenant, "data:read"), "", nil)
			if r.StatusCode != tc.status || r.Header.Get("X-Read-Source") != "primary" {
				t.Fatalf("status %d source %q: %s", r.StatusCode, r.Header.Get("X-Read-Source"), r.Body)
			}
			if tc.tenant == "ghost" && !strings.Contains(r.Body, "tenant not found") {
				t.Fatalf("unknown tenant: %s", r.Body)
			}
			wantOneBatch(t, ct, tc.name, false)
		})
	}
}

// TestStandbyReadRoundTrips: a standby read is one batch, with or without a Consistency-Token
// (the token's replay check is a statement of the batch).
func TestStandbyReadRoundTrips(t *testing.T) {
	// A long interval keeps the cached standby status from being refreshed mid-count.
	se := newStandbyEnv(t, func(c *Config) { c.StandbyInterval = time.Hour })
	ct := &countTracer{}
	se.local.pools.cfg.Tracer = ct
	se.maps.pins["acme"] = "s1"
	if r := se.home.do("POST", "/internal/v1/tenants", "Bearer cluster-token", `{"id":"acme","shard":"s1"}`, nil); r.StatusCode != 201 {
		t.Fatalf("create tenant: %d %s", r.StatusCode, r.Body)
	}
	rw := "Bearer " + se.home.token("acme", "data:read data:write")
	w := se.home.do("PUT", "/v1/collections/n/records/n1", rw, `{"data":{"v":1}}`, nil)
	if w.StatusCode != 201 {
		t.Fatalf("put: %d %s", w.StatusCode, w.Body)
	}
	se.waitReplayed(t, w.Header.Get("Consistency-Token"))
	tok := map[string]string{"Consistency-Token": w.Header.Get("Consistency-Token")}
	path := "/v1/collections/n/records/n1"
	// Warm up: the first read checks the standby's status (and waits for the token) and caches it.
	wantSource(t, se.local.do("GET", path, rw, "", tok), 200, "replica")
	ct.take()

	wantSource(t, se.local.do("GET", path, rw, "", nil), 200, "replica")
	wantOneBatch(t, ct, "standby read", false)
	wantSource(t, se.local.do("GET", path, rw, "", tok), 200, "replica")
	wantOneBatch(t, ct, "standby read with token", true)
}

// TestReadBatchReplayCheck: a Consistency-Token's check inside the batch stops the read on a
// standby that has not replayed the token's LSN, and on a primary.
func TestReadBatchReplayCheck(t *testing.T) {
	se := newStandbyEnv(t)
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
	if err := readBatch(ctx, sconn, "acme", st.Replayed, queue); !errors.Is(err, ErrTenantNotFound) || ran {
		t.Fatalf("token already replayed: %v (read ran %v), want ErrTenantNotFound", err, ran)
	}
	if err := readBatch(ctx, sconn, "acme", st.Replayed+1<<32, queue); !errors.Is(err, errStandbyBehind) || ran {
		t.Fatalf("token ahead of replay: %v (read ran %v), want errStandbyBehind", err, ran)
	}
	pconn, err := pgx.Connect(ctx, se.primary.DSN(se.db))
	if err != nil {
		t.Fatal(err)
	}
	defer pconn.Close(ctx)
	if err := readBatch(ctx, pconn, "acme", 1, queue); !errors.Is(err, replication.ErrNotStandby) || ran {
		t.Fatalf("token check on a primary: %v, want replication.ErrNotStandby", err)
	}
	// The connection is usable afterwards (the pipeline was drained).
	var one int
	if err := sconn.QueryRow(ctx, `SELECT 1`).Scan(&one); err != nil || one != 1 {
		t.Fatalf("standby connection after a failed batch: %v", err)
	}
}
