package pgstore

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/migrations"
)

// moveEnv is a move's two shards on one real Postgres cluster: s1 homed in us-east (the
// source) and s2 homed in eu-west (the target), a store of each region (src writes s1, dst
// writes s2 after the cutover; either runs the move's steps, as the controller would), and a
// superuser pool per shard for checks and injected damage.
type moveEnv struct {
	pg       *localsrv.Postgres
	maps     *fakeMap
	src, dst *Store
	admin    map[string]*pgxpool.Pool // shard -> superuser pool
}

func newMoveEnv(t testing.TB) *moveEnv {
	t.Helper()
	ctx := context.Background()
	e := &moveEnv{pg: testenv.Postgres(t), maps: &fakeMap{shards: map[string]shards.Info{}}, admin: map[string]*pgxpool.Pool{}}
	dsns := map[string]string{}
	for _, sh := range []struct{ id, home string }{{"s1", region}, {"s2", homeRegion}} {
		db := fmt.Sprintf("shard_%s_%d", sh.id, dbSeq.Add(1))
		if err := e.pg.CreateDatabase(ctx, db); err != nil {
			t.Fatal(err)
		}
		dsns[sh.id] = e.pg.DSN(db)
		e.maps.shards[sh.id] = shards.Info{ID: sh.id, HomeRegion: sh.home, Database: db,
			Endpoints: map[string]string{region: e.pg.Addr(), homeRegion: e.pg.Addr()}}
	}
	if res, err := migrations.Apply(ctx, dsns); err != nil {
		t.Fatalf("migrations: %v %+v", err, res)
	}
	for id, dsn := range dsns {
		e.admin[id] = testenv.NewPool(t, dsn)
	}
	// A move's batches run longer than a request's statements: the controller's connections
	// need more than the 1 s statement timeout the API node's have.
	_, e.src = openStore(t, region, e.maps, shards.Config{MaxConns: 8, StatementTimeout: 30 * time.Second})
	_, e.dst = openStore(t, homeRegion, e.maps, shards.Config{MaxConns: 8, StatementTimeout: 30 * time.Second})
	return e
}

// write runs one write through store for tenant on shard, mirroring to mirrorTo, at epoch.
func write(t testing.TB, s *Store, tgt records.Target, op records.WriteOp) (records.WriteResult, error) {
	t.Helper()
	if op.Render == nil {
		op.Render = func(ch records.Change) (records.Response, error) {
			return records.Response{Status: http.StatusOK, Headers: map[string]string{"ETag": fmt.Sprint(ch.Record.Version)}, Body: ch.Record.Data}, nil
		}
	}
	return s.Write(context.Background(), tgt, op)
}

// dump is every column of a tenant's rows on a shard, in key order, one line per row.
func (e *moveEnv) dump(t testing.TB, shard, tenant string) []string {
	t.Helper()
	rows, err := e.admin[shard].Query(context.Background(), `SELECT collection, id, version, data::text, deleted, created_at, updated_at
		FROM records WHERE tenant_id = $1 ORDER BY collection, id`, tenant)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := scanRows(rows)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = fmt.Sprintf("%s/%s v%d %s del=%v %s %s", r.key.Collection, r.key.ID, r.version, r.data, r.deleted,
			r.created.UTC().Format(time.RFC3339Nano), r.updated.UTC().Format(time.RFC3339Nano))
	}
	return out
}

// sameRows fails unless the tenant's rows on s1 and s2 are identical, column for column.
func (e *moveEnv) sameRows(t testing.TB, tenant string) {
	t.Helper()
	a, b := e.dump(t, "s1", tenant), e.dump(t, "s2", tenant)
	if !slices.Equal(a, b) {
		t.Fatalf("rows differ:\ns1 %d rows %v\ns2 %d rows %v", len(a), head(a), len(b), head(b))
	}
}

func head(s []string) []string { return s[:min(len(s), 10)] }

func (e *moveEnv) scalar(t testing.TB, shard, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := e.admin[shard].QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (e *moveEnv) exec(t testing.TB, shard, sql string, args ...any) {
	t.Helper()
	if _, err := e.admin[shard].Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestWriteEpoch: a write routed on an epoch older than the tenant row's write_epoch is
// ErrStaleEpoch and writes nothing (no record, no outbox row, no change_seq); the row's epoch
// or a newer one writes; Epoch 0 skips the check. The epoch is checked before the fence.
func TestWriteEpoch(t *testing.T) {
	e := newMoveEnv(t)
	ctx := context.Background()
	if _, err := e.src.CreateTenant(ctx, "acme", "s1"); err != nil {
		t.Fatal(err)
	}
	e.exec(t, "s1", `UPDATE tenants SET write_epoch = 3 WHERE tenant_id = 'acme'`)
	put := records.WriteOp{Op: records.Put, Collection: "n", ID: "r1", Data: []byte(`{"a":1}`)}
	for _, ep := range []uint64{1, 2} {
		if _, err := write(t, e.src, records.Target{Tenant: "acme", Shard: "s1", Epoch: ep}, put); !errors.Is(err, records.ErrStaleEpoch) {
			t.Fatalf("epoch %d: %v, want ErrStaleEpoch", ep, err)
		}
	}
	if n := e.scalar(t, "s1", `SELECT (SELECT count(*) FROM records) + (SELECT count(*) FROM outbox) + (SELECT change_seq FROM tenants)`); n != 0 {
		t.Fatalf("a refused write left %d rows/seq", n)
	}
	for i, ep := range []uint64{3, 4, 0} {
		res, err := write(t, e.src, records.Target{Tenant: "acme", Shard: "s1", Epoch: ep}, put)
		if err != nil || res.Response.Headers["ETag"] != fmt.Sprint(i+1) || res.Mirror != "" {
			t.Fatalf("epoch %d: %+v %v", ep, res, err)
		}
	}
	e.exec(t, "s1", `UPDATE tenants SET write_fenced = true WHERE tenant_id = 'acme'`)
	if _, err := write(t, e.src, records.Target{Tenant: "acme", Shard: "s1", Epoch: 2}, put); !errors.Is(err, records.ErrStaleEpoch) {
		t.Fatalf("fenced, stale: %v", err)
	}
	if _, err := write(t, e.src, records.Target{Tenant: "acme", Shard: "s1", Epoch: 3}, put); !errors.Is(err, records.ErrTenantFenced) {
		t.Fatalf("fenced, current: %v", err)
	}
}

// TestMirror: during a move every write committed on the source is applied to the target
// (create, put, patch, re-create over a tombstone, delete as a tombstone) with the same
// versions and columns, without outbox rows or change_seq on the target; a stale mirror (or a
// backfill row older than the target's) never regresses a row nor resurrects a tombstone; a
// target without the tenant's row is skipped, an unreachable one fails, and neither fails the
// write.
func TestMirror(t *testing.T) {
	e := newMoveEnv(t)
	ctx := context.Background()
	if _, err := e.src.CreateTenant(ctx, "acme", "s1"); err != nil {
		t.Fatal(err)
	}
	// Before PrepareTarget: skipped.
	tgt := records.Target{Tenant: "acme", Shard: "s1", Epoch: 1, MirrorTo: "s2"}
	res, err := write(t, e.src, tgt, records.WriteOp{Op: records.Put, Collection: "n", ID: "early", Data: []byte(`{"v":0}`)})
	if err != nil || res.Mirror != records.MirrorSkipped {
		t.Fatalf("mirror before prepare: %+v %v", res, err)
	}
	if err := e.src.PrepareTarget(ctx, "acme", "s1", "s2"); err != nil {
		t.Fatal(err)
	}
	if err := e.src.PrepareTarget(ctx, "acme", "s1", "s2"); err != nil {
		t.Fatalf("prepare again: %v", err)
	}
	var created string
	steps := []records.WriteOp{
		{Op: records.Create, Collection: "n", Data: []byte(`{"v":1}`)},
		{Op: records.Put, Collection: "n", ID: "p", Data: []byte(`{"v":1}`)},
		{Op: records.Put, Collection: "n", ID: "p", Data: []byte(`{"v":2}`)},
		{Op: records.Patch, Collection: "n", ID: "p", Data: []byte(`{"w":3}`)},
		{Op: records.Put, Collection: "m", ID: "d", Data: []byte(`{"x":1}`)},
		{Op: records.Delete, Collection: "m", ID: "d"},
		{Op: records.Put, Collection: "m", ID: "r", Data: []byte(`{"x":1}`)},
		{Op: records.Delete, Collection: "m", ID: "r"},
		{Op: records.Put, Collection: "m", ID: "r", Data: []byte(`{"x":"again"}`)}, // re-created over its tombstone
		{Op: records.Put, Collection: "n", ID: "k", Data: []byte(`{"v":1}`), Key: "key-1", RequestHash: []byte("h")},
	}
	for i, op := range steps {
		res, err := write(t, e.src, tgt, op)
		if err != nil || res.Mirror != records.MirrorOK {
			t.Fatalf("step %d: %+v %v", i, res, err)
		}
		if op.Op == records.Create {
			created = string(res.Response.Body)
		}
	}
	// A replay writes nothing and mirrors nothing.
	if res, err := write(t, e.src, tgt, steps[len(steps)-1]); err != nil || !res.Replayed || res.Mirror != "" {
		t.Fatalf("replay: %+v %v", res, err)
	}
	// "early" was written before the target existed: only it is missing there.
	a, b := e.dump(t, "s1", "acme"), e.dump(t, "s2", "acme")
	if len(a) != len(b)+1 || !slices.Equal(slices.DeleteFunc(slices.Clone(a), func(s string) bool { return strings.HasPrefix(s, "n/early ") }), b) {
		t.Fatalf("mirror:\ns1 %v\ns2 %v", a, b)
	}
	if created == "" || !strings.Contains(strings.Join(b, "\n"), `m/d v2 {} del=true`) || !strings.Contains(strings.Join(b, "\n"), `m/r v3 {"x": "again"} del=false`) {
		t.Fatalf("target rows %v", b)
	}
	if n := e.scalar(t, "s2", `SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM idempotency_keys) + (SELECT change_seq FROM tenants)`); n != 0 {
		t.Fatalf("the mirror wrote outbox/keys/change_seq on the target: %d", n)
	}
	if n := e.scalar(t, "s2", `SELECT count(*) FROM tenants WHERE status = 'importing' AND write_fenced`); n != 1 {
		t.Fatalf("target row not importing+fenced")
	}

	// Stale arrivals: an older version of p and of the tombstone d (a mirror overtaken by a newer
	// one, or a backfill batch read before the delete) change nothing.
	for _, r := range []row{
		{key: records.Key{Collection: "n", ID: "p"}, version: 1, data: `{"v":1}`, created: time.Now(), updated: time.Now()},
		{key: records.Key{Collection: "m", ID: "d"}, version: 1, data: `{"x":1}`, created: time.Now(), updated: time.Now()},
		{key: records.Key{Collection: "m", ID: "d"}, version: 2, data: `{"x":1}`, created: time.Now(), updated: time.Now()},
	} {
		if n, err := e.src.upsertRows(ctx, "acme", "s2", []row{r}, upsertNewerSQL); err != nil || n != 0 {
			t.Fatalf("stale %+v: changed %d, %v", r, n, err)
		}
		if res := e.src.mirror(ctx, tgt, records.Change{Kind: records.Updated, Record: records.Record{Collection: r.key.Collection,
			ID: r.key.ID, Version: r.version, Data: []byte(r.data), CreatedAt: r.created, UpdatedAt: r.updated}}); res != records.MirrorOK {
			t.Fatalf("stale mirror: %s", res)
		}
	}
	if b2 := e.dump(t, "s2", "acme"); !slices.Equal(b, b2) {
		t.Fatalf("a stale write changed the target:\n%v\n%v", b, b2)
	}
	// A backfill after all of it leaves the tombstone a tombstone and copies "early".
	for k := (records.Key{}); ; {
		next, n, err := e.src.CopyBatch(ctx, "acme", "s1", "s2", k, 2)
		if err != nil {
			t.Fatal(err)
		}
		if n < 2 {
			break
		}
		k = next
	}
	e.sameRows(t, "acme")

	// An unreachable target fails the mirror, not the write.
	e.maps.mu.Lock()
	e.maps.shards["s3"] = shards.Info{ID: "s3", HomeRegion: homeRegion, Database: "nope", Endpoints: map[string]string{homeRegion: "127.0.0.1:1"}}
	e.maps.mu.Unlock()
	for _, to := range []string{"s3", "s9"} {
		tgt.MirrorTo = to
		res, err := write(t, e.src, tgt, records.WriteOp{Op: records.Put, Collection: "n", ID: "p", Data: []byte(`{"v":9}`)})
		if err != nil || res.Mirror != records.MirrorFailed || res.Response.Status != 200 {
			t.Fatalf("mirror to %s: %+v %v", to, res, err)
		}
	}
}

// seedRows inserts n rows for tenant on shard as the superuser: three collections, every 10th
// row a tombstone, versions 1..5, timestamps spread out.
func (e *moveEnv) seedRows(t testing.TB, shard, tenant string, n int) {
	t.Helper()
	e.exec(t, shard, `INSERT INTO records (tenant_id, collection, id, version, data, deleted, created_at, updated_at)
		SELECT $1, (ARRAY['alpha','beta','gamma'])[1 + i % 3], 'r' || lpad(i::text, 7, '0'), 1 + i % 5,
			CASE WHEN i % 10 = 0 THEN '{}'::jsonb ELSE jsonb_build_object('i', i, 'name', 'record ' || i, 'tags', jsonb_build_array('a', i % 7)) END,
			i % 10 = 0, now() - make_interval(secs => i), now() - make_interval(secs => i / 2)
		FROM generate_series(1, $2) AS i`, tenant, n)
}

// copyAll runs CopyBatch over the whole tenant and returns the rows it read.
func copyAll(t testing.TB, s *Store, tenant string, limit int) int {
	t.Helper()
	total := 0
	for k := (records.Key{}); ; {
		next, n, err := s.CopyBatch(context.Background(), tenant, "s1", "s2", k, limit)
		if err != nil {
			t.Fatal(err)
		}
		total += n
		if n < limit {
			return total
		}
		k = next
	}
}

// verifyAll runs VerifyBatch over the whole tenant and returns the diffs and keys checked.
func verifyAll(t testing.TB, s *Store, tenant string, limit int) ([]records.Key, int) {
	t.Helper()
	var diffs []records.Key
	total := 0
	for k := (records.Key{}); ; {
		next, d, n, err := s.VerifyBatch(context.Background(), tenant, "s1", "s2", k, limit)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			if next != k {
				t.Fatalf("empty batch moved the key from %v to %v", k, next)
			}
			return diffs, total
		}
		diffs = append(diffs, d...)
		total += n
		k = next
	}
}

// TestCopyVerifyRepair: 5,000 rows copied in batches arrive whole; verify finds nothing; then
// exactly the injected differences (rows missing on the target, extra ones before, inside and
// after the source's range, older versions, other data at the same version, a tombstone
// undone), whatever the batch size; Repair fixes them and the next pass is clean.
func TestCopyVerifyRepair(t *testing.T) {
	e := newMoveEnv(t)
	ctx := context.Background()
	if _, err := e.src.CreateTenant(ctx, "acme", "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.src.CreateTenant(ctx, "other", "s1"); err != nil {
		t.Fatal(err)
	}
	e.seedRows(t, "s1", "acme", 5000)
	e.seedRows(t, "s1", "other", 50)
	if _, _, err := e.src.CopyBatch(ctx, "acme", "s1", "s2", records.Key{}, 10); !errors.Is(err, records.ErrTenantNotFound) {
		t.Fatalf("copy before prepare: %v", err)
	}
	if err := e.src.PrepareTarget(ctx, "acme", "s1", "s2"); err != nil {
		t.Fatal(err)
	}
	if n, err := e.src.CountRows(ctx, "acme", "s1"); err != nil || n != 5000 {
		t.Fatalf("count: %d %v", n, err)
	}
	if n := copyAll(t, e.src, "acme", 1000); n != 5000 {
		t.Fatalf("copied %d", n)
	}
	e.sameRows(t, "acme")
	if n := e.scalar(t, "s2", `SELECT count(*) FROM records WHERE tenant_id <> 'acme'`); n != 0 {
		t.Fatalf("another tenant's rows copied: %d", n)
	}
	if diffs, n := verifyAll(t, e.src, "acme", 1000); len(diffs) != 0 || n != 5000 {
		t.Fatalf("clean copy: %d diffs of %d: %v", len(diffs), n, diffs)
	}

	var want []records.Key
	// key is seed row i's key (seedRows).
	key := func(i int) records.Key {
		return records.Key{Collection: []string{"alpha", "beta", "gamma"}[i%3], ID: fmt.Sprintf("r%07d", i)}
	}
	// Missing on the target, among them the first (3) and the last (4999) source key.
	for _, i := range []int{3, 1000, 1001, 2500, 4999, 5000, 30} {
		k := key(i)
		e.exec(t, "s2", `DELETE FROM records WHERE tenant_id = 'acme' AND collection = $1 AND id = $2`, k.Collection, k.ID)
		want = append(want, k)
	}
	// Extra on the target: before every source key, between keys, after every source key, and
	// in a collection the source does not have.
	for _, k := range []records.Key{{Collection: "aaa", ID: "x"}, {Collection: "alpha", ID: "r0002000x"},
		{Collection: "beta", ID: "zzz"}, {Collection: "zeta", ID: "a"}, {Collection: "zeta", ID: "b"}} {
		e.exec(t, "s2", `INSERT INTO records (tenant_id, collection, id, version, data) VALUES ('acme', $1, $2, 1, '{}')`, k.Collection, k.ID)
		want = append(want, k)
	}
	// Older on the target, other data at the same version, a tombstone live again.
	// Rows 7, 1234, 3333 and 4444 have versions 3, 5, 4 and 5 (1 + i%5).
	for _, i := range []int{7, 1234, 3333, 4444} {
		k := key(i)
		e.exec(t, "s2", `UPDATE records SET version = version - 1, data = '{"old":true}' WHERE tenant_id = 'acme' AND collection = $1 AND id = $2 AND version > 1`, k.Collection, k.ID)
		want = append(want, k)
	}
	for _, i := range []int{11, 2222, 3001} {
		k := key(i)
		e.exec(t, "s2", `UPDATE records SET data = data || '{"changed":1}' WHERE tenant_id = 'acme' AND collection = $1 AND id = $2`, k.Collection, k.ID)
		want = append(want, k)
	}
	k := key(1500) // i % 10 == 0: a tombstone
	e.exec(t, "s2", `UPDATE records SET deleted = false WHERE tenant_id = 'acme' AND collection = $1 AND id = $2`, k.Collection, k.ID)
	want = append(want, k)
	slices.SortFunc(want, func(a, b records.Key) int {
		if a.Less(b) {
			return -1
		}
		return 1
	})

	for _, limit := range []int{1000, 7, 5000, 100000} {
		diffs, n := verifyAll(t, e.src, "acme", limit)
		if !slices.Equal(diffs, want) {
			t.Fatalf("limit %d: diffs\n%v\nwant\n%v", limit, diffs, want)
		}
		if n != 5000+5 {
			t.Fatalf("limit %d: checked %d keys, want 5005", limit, n)
		}
	}
	diffs, _ := verifyAll(t, e.src, "acme", 1000)
	if n, err := e.src.Repair(ctx, "acme", "s1", "s2", diffs); err != nil || n != len(want) {
		t.Fatalf("repair: %d %v, want %d", n, err, len(want))
	}
	if diffs, _ := verifyAll(t, e.src, "acme", 1000); len(diffs) != 0 {
		t.Fatalf("after repair: %v", diffs)
	}
	e.sameRows(t, "acme")
	// Repair never regresses a newer target row (a mirror of a newer source write).
	e.exec(t, "s2", `UPDATE records SET version = version + 1, data = '{"newer":true}' WHERE tenant_id = 'acme' AND collection = 'beta' AND id = 'r0000001'`)
	if n, err := e.src.Repair(ctx, "acme", "s1", "s2", []records.Key{{Collection: "beta", ID: "r0000001"}}); err != nil || n != 0 {
		t.Fatalf("repair of a newer row: %d %v", n, err)
	}
	// A batch is a range scan of the primary key, bounded by the row comparison.
	e.exec(t, "s1", `ANALYZE records`)
	rows, err := e.admin["s1"].Query(ctx, `EXPLAIN `+copyRangeSQL, "acme", "beta", "x", 1000)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
	}
	if plan := strings.Join(lines, "\n"); !strings.Contains(plan, "Index Cond: ((tenant_id = 'acme'::text) AND (ROW(collection, id) > ROW('beta'::text, 'x'::text)))") {
		t.Fatalf("batch plan does not use the primary key: %s", plan)
	}
}

// TestFenceFinishDrop: Fence blocks writes (in flight ones finish first) and is idempotent;
// FinishTarget activates the target at the new epoch and the source's change_seq, with the
// outbox (marked sent) and the live Idempotency-Keys, so the next write there is seq+1 and a
// retry of a key answered before the move gets its first answer; repeating it changes nothing;
// the old epoch is refused on the target; DropTenant refuses the live copy and drops the rest.
func TestFenceFinishDrop(t *testing.T) {
	e := newMoveEnv(t)
	ctx := context.Background()
	if _, err := e.src.CreateTenant(ctx, "acme", "s1"); err != nil {
		t.Fatal(err)
	}
	src := records.Target{Tenant: "acme", Shard: "s1", Epoch: 1, MirrorTo: "s2"}
	keyed := records.WriteOp{Op: records.Put, Collection: "n", ID: "k", Data: []byte(`{"first":true}`), Key: "retry-me", RequestHash: []byte("req")}
	first, err := write(t, e.src, records.Target{Tenant: "acme", Shard: "s1", Epoch: 1}, keyed)
	if err != nil {
		t.Fatal(err)
	}
	e.exec(t, "s1", `INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, expires_at) VALUES ('acme', 'expired', '', 200, now() - interval '1 minute')`)
	if err := e.src.PrepareTarget(ctx, "acme", "s1", "s2"); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := write(t, e.src, src, records.WriteOp{Op: records.Put, Collection: "n", ID: fmt.Sprint("r", i), Data: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	// Two outbox rows already published by the source's relay.
	e.exec(t, "s1", `UPDATE outbox SET sent_at = now() - interval '1 hour' WHERE seq <= 2`)
	copyAll(t, e.src, "acme", 100)

	seq, err := e.src.Fence(ctx, "acme", "s1")
	if err != nil || seq != 6 {
		t.Fatalf("fence: %d %v", seq, err)
	}
	if again, err := e.src.Fence(ctx, "acme", "s1"); err != nil || again != seq {
		t.Fatalf("fence again: %d %v", again, err)
	}
	if _, err := write(t, e.src, src, records.WriteOp{Op: records.Put, Collection: "n", ID: "late", Data: []byte(`{}`)}); !errors.Is(err, records.ErrTenantFenced) {
		t.Fatalf("write after fence: %v", err)
	}
	if _, err := e.src.Fence(ctx, "ghost", "s1"); !errors.Is(err, records.ErrTenantNotFound) {
		t.Fatalf("fence of a missing tenant: %v", err)
	}
	if diffs, _ := verifyAll(t, e.src, "acme", 100); len(diffs) != 0 {
		t.Fatalf("diffs at cutover: %v", diffs)
	}
	if err := e.src.FinishTarget(ctx, "acme", "s1", "s2", 2, seq-1); err == nil {
		t.Fatal("FinishTarget accepted a change_seq the source is not fenced at")
	}
	if err := e.src.FinishTarget(ctx, "acme", "s1", "s2", 2, seq); err != nil {
		t.Fatal(err)
	}
	row, err := e.dst.Tenant(ctx, "acme", "s2")
	if err != nil || row.Status != "active" || row.Fenced || row.WriteEpoch != 2 {
		t.Fatalf("target row %+v %v", row, err)
	}
	if n := e.scalar(t, "s2", `SELECT count(*) FROM outbox WHERE tenant_id = 'acme' AND sent_at IS NOT NULL AND lsn IS NULL`); n != seq {
		t.Fatalf("outbox rows copied and sent: %d, want %d", n, seq)
	}
	if n := e.scalar(t, "s2", `SELECT count(*) FROM outbox o WHERE seq <= 2 AND sent_at < now() - interval '59 minutes'`); n != 2 {
		t.Fatalf("sent_at of published rows not kept: %d", n)
	}
	if n := e.scalar(t, "s2", `SELECT count(*) FROM idempotency_keys`); n != 1 {
		t.Fatalf("idempotency keys on the target: %d, want the live one", n)
	}

	// Clients now write the target, at the new epoch.
	dst := records.Target{Tenant: "acme", Shard: "s2", Epoch: 2}
	if _, err := write(t, e.dst, records.Target{Tenant: "acme", Shard: "s2", Epoch: 1}, records.WriteOp{Op: records.Put, Collection: "n", ID: "x", Data: []byte(`{}`)}); !errors.Is(err, records.ErrStaleEpoch) {
		t.Fatalf("old epoch on the target: %v", err)
	}
	replay, err := write(t, e.dst, dst, keyed)
	if err != nil || !replay.Replayed || replay.Response.Status != first.Response.Status || string(replay.Response.Body) != string(first.Response.Body) ||
		replay.Response.Headers["ETag"] != first.Response.Headers["ETag"] {
		t.Fatalf("replay on the target: %+v %v, first %+v", replay, err, first)
	}
	if _, err := write(t, e.dst, dst, records.WriteOp{Op: records.Put, Collection: "n", ID: "after", Data: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	evs, err := e.dst.Changes(ctx, "acme", "s2", seq-1, 0)
	if err != nil || len(evs) != 2 || evs[0].Seq != seq || evs[1].Seq != seq+1 || evs[1].ID != "after" {
		t.Fatalf("changes on the target after the move: %+v %v", evs, err)
	}
	if n := e.scalar(t, "s2", `SELECT count(*) FROM outbox WHERE sent_at IS NULL`); n != 1 {
		t.Fatalf("unsent outbox rows on the target: %d, want only the new write's", n)
	}
	// FinishTarget again (a restarted controller) leaves the live target alone.
	if err := e.src.FinishTarget(ctx, "acme", "s1", "s2", 2, seq); err != nil {
		t.Fatal(err)
	}
	if n := e.scalar(t, "s2", `SELECT change_seq FROM tenants`); n != seq+1 {
		t.Fatalf("change_seq after a repeated FinishTarget: %d", n)
	}
	if err := e.src.FinishTarget(ctx, "acme", "s1", "s2", 3, seq); !errors.Is(err, records.ErrTenantExists) {
		t.Fatalf("FinishTarget at another epoch: %v", err)
	}
	if err := e.src.PrepareTarget(ctx, "acme", "s1", "s2"); !errors.Is(err, records.ErrTenantExists) {
		t.Fatalf("PrepareTarget over a live copy: %v", err)
	}

	// Cleanup: the target is live now, the source fenced.
	if err := e.src.DropTenant(ctx, "acme", "s2"); !errors.Is(err, records.ErrTenantLive) {
		t.Fatalf("drop of the live copy: %v", err)
	}
	// In batches of one row (the tenant has more of each kind), twice (idempotent).
	defer func(n int) { dropBatch = n }(dropBatch)
	dropBatch = 1
	if n := e.scalar(t, "s1", `SELECT least((SELECT count(*) FROM records), (SELECT count(*) FROM outbox), (SELECT count(*) FROM idempotency_keys))`); n < 2 {
		t.Fatalf("the source has %d rows of some kind; the batched drop needs more than a batch of each", n)
	}
	for range 2 {
		if err := e.src.DropTenant(ctx, "acme", "s1"); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.scalar(t, "s1", `SELECT (SELECT count(*) FROM tenants) + (SELECT count(*) FROM records) + (SELECT count(*) FROM outbox) + (SELECT count(*) FROM idempotency_keys)`); n != 0 {
		t.Fatalf("rows left on the source: %d", n)
	}
	if _, err := e.src.Fence(ctx, "acme", "s2"); err != nil {
		t.Fatal(err)
	}
	if err := e.src.Unfence(ctx, "acme", "s2"); err != nil {
		t.Fatal(err)
	}
	if _, err := write(t, e.dst, dst, records.WriteOp{Op: records.Put, Collection: "n", ID: "unfenced", Data: []byte(`{}`)}); err != nil {
		t.Fatalf("write after unfence: %v", err)
	}
}

// TestMoveThroughput logs CopyBatch and VerifyBatch rows/s over 50,000 rows (the target
// is 50,000 rows/s each; a test never asserts a wall time).
func TestMoveThroughput(t *testing.T) {
	if testing.Short() {
		t.Skip("throughput figures only")
	}
	e := newMoveEnv(t)
	ctx := context.Background()
	if _, err := e.src.CreateTenant(ctx, "big", "s1"); err != nil {
		t.Fatal(err)
	}
	const n = 50000
	e.seedRows(t, "s1", "big", n)
	e.exec(t, "s1", `VACUUM ANALYZE records`)
	if err := e.src.PrepareTarget(ctx, "big", "s1", "s2"); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int{1000, 5000} {
		e.exec(t, "s2", `DELETE FROM records`)
		start := time.Now()
		if got := copyAll(t, e.src, "big", limit); got != n {
			t.Fatalf("copied %d", got)
		}
		c := time.Since(start)
		start = time.Now()
		if diffs, got := verifyAll(t, e.src, "big", limit); len(diffs) != 0 || got != n {
			t.Fatalf("verify: %d diffs, %d checked", len(diffs), got)
		}
		v := time.Since(start)
		t.Logf("batch %d: CopyBatch %d rows in %v = %.0f rows/s; VerifyBatch %d rows in %v = %.0f rows/s",
			limit, n, c.Round(time.Millisecond), n/c.Seconds(), n, v.Round(time.Millisecond), n/v.Seconds())
	}
}

// TestSchemaVersion: the store reads each shard's schema version as meridian_app (the move
// controller compares them), and sees a shard that is behind.
func TestSchemaVersion(t *testing.T) {
	e := newMoveEnv(t)
	ctx := context.Background()
	for _, sh := range []string{"s1", "s2"} {
		if v, err := e.src.SchemaVersion(ctx, sh); err != nil || v != migrations.Latest() {
			t.Fatalf("SchemaVersion(%s) = %d, %v; want %d", sh, v, err, migrations.Latest())
		}
	}
	// A shard one migration behind (as the superuser, goose's own bookkeeping).
	if _, err := e.admin["s2"].Exec(ctx, `DELETE FROM goose_db_version WHERE version_id = $1`, migrations.Latest()); err != nil {
		t.Fatal(err)
	}
	if v, err := e.src.SchemaVersion(ctx, "s2"); err != nil || v != migrations.Latest()-1 {
		t.Fatalf("SchemaVersion(s2) after removing the last version = %d, %v; want %d", v, err, migrations.Latest()-1)
	}
}
