package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/records"
)

// TestDeltaVerifyAndPrecopy checks the store side of the delta verify: the committed sequence,
// the keys a range of writes changed (and that a pruned range is refused, not answered short),
// the comparison of a list of keys, and PrecopyTarget + FinishTarget copying every live
// Idempotency-Key row exactly once across the two, a key claimed again after expiry included.
func TestDeltaVerifyAndPrecopy(t *testing.T) {
	e := newMoveEnv(t)
	ctx := context.Background()
	if _, err := e.src.CreateTenant(ctx, "acme", "s1"); err != nil {
		t.Fatal(err)
	}
	if err := e.src.PrepareTarget(ctx, "acme", "s1", "s2"); err != nil {
		t.Fatal(err)
	}
	// Unmirrored writes (no MirrorTo): the target learns of them only through verify.
	src := records.Target{Tenant: "acme", Shard: "s1", Epoch: 1}
	put := func(id, data, key string) {
		t.Helper()
		op := records.WriteOp{Op: records.Put, Collection: "c", ID: id, Data: []byte(data)}
		if key != "" {
			op.Key, op.RequestHash = key, []byte(data)
		}
		if _, err := write(t, e.src, src, op); err != nil {
			t.Fatal(err)
		}
	}
	put("a", `{"n":1}`, "k1")                                                                                      // seq 1
	put("b", `{"n":2}`, "k2")                                                                                      // seq 2
	put("a", `{"n":3}`, "k3")                                                                                      // seq 3
	put("c", `{"n":4}`, "")                                                                                        // seq 4
	if _, err := write(t, e.src, src, records.WriteOp{Op: records.Delete, Collection: "c", ID: "b"}); err != nil { // seq 5
		t.Fatal(err)
	}
	if n := e.scalar(t, "s1", `SELECT seq FROM idempotency_keys WHERE key = 'k2'`); n != 2 {
		t.Fatalf("idempotency_keys.seq of k2 = %d, want its write's change_seq 2", n)
	}

	seq, err := e.src.CommittedSeq(ctx, "acme", "s1")
	if err != nil || seq != 5 {
		t.Fatalf("CommittedSeq = %d, %v; want 5", seq, err)
	}
	if _, err := e.src.CommittedSeq(ctx, "ghost", "s1"); !errors.Is(err, records.ErrTenantNotFound) {
		t.Fatalf("CommittedSeq of a missing tenant: %v", err)
	}
	key := func(id string) records.Key { return records.Key{Collection: "c", ID: id} }
	for _, c := range []struct {
		after, upto int64
		want        []records.Key
	}{
		{0, 5, []records.Key{key("a"), key("b"), key("c")}},
		{2, 5, []records.Key{key("a"), key("b"), key("c")}},
		{3, 4, []records.Key{key("c")}},
		{0, 2, []records.Key{key("a"), key("b")}},
		{5, 5, nil},
	} {
		got, err := e.src.ChangedKeys(ctx, "acme", "s1", c.after, c.upto)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("ChangedKeys(%d, %d) = %v, %v; want %v", c.after, c.upto, got, err, c.want)
		}
	}
	if _, err := e.src.ChangedKeys(ctx, "acme", "s1", 3, 2); err == nil {
		t.Error("ChangedKeys accepted an empty range (3, 2]")
	}
	if _, err := e.src.ChangedKeys(ctx, "acme", "s1", 0, 9); !errors.Is(err, records.ErrChangesPruned) {
		t.Errorf("ChangedKeys beyond the committed sequence: %v, want ErrChangesPruned (the rows are not there)", err)
	}

	diffs, err := e.src.VerifyKeys(ctx, "acme", "s1", "s2", []records.Key{key("a"), key("b"), key("zz")})
	if err != nil || !slices.Equal(diffs, []records.Key{key("a"), key("b")}) {
		t.Fatalf("VerifyKeys before any copy = %v, %v; want a and b (zz is on neither side)", diffs, err)
	}

	mark, err := e.src.PrecopyTarget(ctx, "acme", "s1", "s2")
	if err != nil || mark != 5 {
		t.Fatalf("PrecopyTarget = %d, %v; want mark 5", mark, err)
	}
	if n := e.scalar(t, "s2", `SELECT count(*) FROM outbox WHERE tenant_id = 'acme'`); n != 5 {
		t.Fatalf("outbox rows on the target after the precopy: %d, want 5", n)
	}
	if n := e.scalar(t, "s2", `SELECT count(*) FROM idempotency_keys WHERE tenant_id = 'acme' AND seq IS NOT NULL`); n != 3 {
		t.Fatalf("idempotency keys on the target after the precopy: %d, want 3", n)
	}
	if n := e.scalar(t, "s2", `SELECT change_seq FROM tenants WHERE tenant_id = 'acme' AND status = 'importing' AND write_fenced`); n != 5 {
		t.Fatalf("the importing copy's mark = %d, want 5", n)
	}
	// A later precopy copies only the keys of writes after the last mark: a key row below it
	// that appears now (as none can) is not read again.
	e.exec(t, "s1", `INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, expires_at, seq)
		VALUES ('acme', 'below-first-mark', '', 200, now() + interval '1 hour', 3)`)
	if again, err := e.src.PrecopyTarget(ctx, "acme", "s1", "s2"); err != nil || again != 5 {
		t.Fatalf("PrecopyTarget again = %d, %v", again, err)
	}
	if n := e.scalar(t, "s2", `SELECT count(*) FROM idempotency_keys WHERE key = 'below-first-mark'`); n != 0 {
		t.Fatal("a second precopy read every key again (copied one below the first mark)")
	}

	// After the precopy: a new key, and k1 expired and claimed again by another request (its
	// row now belongs to seq 7 and answers differently).
	put("d", `{"n":6}`, "k4") // seq 6
	e.exec(t, "s1", `UPDATE idempotency_keys SET expires_at = now() - interval '1 minute' WHERE key = 'k1'`)
	put("e", `{"n":7}`, "k1") // seq 7
	// A row the delta must not copy: below the mark, so the precopy already had its chance.
	e.exec(t, "s1", `INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, expires_at, seq)
		VALUES ('acme', 'below-mark', '', 200, now() + interval '1 hour', 4)`)

	copyAll(t, e.src, "acme", 100)
	fence, err := e.src.Fence(ctx, "acme", "s1")
	if err != nil || fence != 7 {
		t.Fatalf("fence: %d %v", fence, err)
	}
	changed, err := e.src.ChangedKeys(ctx, "acme", "s1", mark, fence)
	if err != nil || !slices.Equal(changed, []records.Key{key("d"), key("e")}) {
		t.Fatalf("ChangedKeys under the fence = %v, %v; want d, e", changed, err)
	}
	// FenceDelta: the same fence (idempotent) and the same keys, in one round trip.
	if seq, keys, err := e.src.FenceDelta(ctx, "acme", "s1", mark); err != nil || seq != fence || !slices.Equal(keys, changed) {
		t.Fatalf("FenceDelta = %d, %v, %v; want %d, %v", seq, keys, err, fence, changed)
	}
	if diffs, err := e.src.VerifyKeys(ctx, "acme", "s1", "s2", changed); err != nil || len(diffs) != 0 {
		t.Fatalf("VerifyKeys after the copy = %v, %v; want none", diffs, err)
	}
	// Damage the target; VerifyKeys sees it, Repair fixes it.
	e.exec(t, "s2", `UPDATE records SET data = '{"damaged":true}' WHERE id = 'e'`)
	e.exec(t, "s2", `DELETE FROM records WHERE id = 'd'`)
	diffs, err = e.src.VerifyKeys(ctx, "acme", "s1", "s2", changed)
	if err != nil || !slices.Equal(diffs, changed) {
		t.Fatalf("VerifyKeys of damaged rows = %v, %v; want %v", diffs, err, changed)
	}
	if n, err := e.src.Repair(ctx, "acme", "s1", "s2", diffs); err != nil || n != 2 {
		t.Fatalf("repair: %d %v", n, err)
	}
	e.sameRows(t, "acme")

	// FinishTarget's three-round-trip path (finishFast) does the work here (a precopy ran);
	// it refuses, writing nothing, a change_seq the source is not fenced at.
	_, srcPool, _ := e.src.primary(ctx, "s1")
	_, dstPool, _ := e.src.primary(ctx, "s2")
	if done, err := finishFast(ctx, srcPool, dstPool, "acme", 2, fence-1, time.Now()); done || err != nil {
		t.Fatalf("finishFast at a change_seq the source is not fenced at: done %v, %v", done, err)
	}
	if n := e.scalar(t, "s2", `SELECT count(*) FROM outbox WHERE tenant_id = 'acme'`); n != 5 {
		t.Fatalf("outbox rows on the target after a refused finishFast: %d, want 5 (the precopy's)", n)
	}
	if st, err := e.src.ResumeTarget(ctx, "acme", "s1", "s2", 2); err != nil || st != records.TargetImporting {
		t.Fatalf("ResumeTarget before any finish: %v, %v; want importing", st, err)
	}
	// Knowing the precopy's mark (FinishTargetFrom's path) skips the read of the target; a mark
	// that is not the importing copy's changes nothing.
	if done, err := finishKnown(ctx, srcPool, dstPool, "acme", 2, fence, mark+1, mark+1, time.Now()); done || err != nil {
		t.Fatalf("finishKnown with a stale mark: done %v, %v", done, err)
	}
	if n := e.scalar(t, "s2", `SELECT count(*) FROM outbox WHERE tenant_id = 'acme'`); n != 5 {
		t.Fatalf("outbox rows on the target after a stale mark: %d, want 5 (the precopy's)", n)
	}
	if done, err := finishKnown(ctx, srcPool, dstPool, "acme", 2, fence, mark, mark, time.Now()); !done || err != nil {
		t.Fatalf("finishKnown at the precopy's mark: done %v, %v; want done", done, err)
	}
	// The Cutover command is what is missing now: the source is fenced at the target's seq.
	if st, err := e.src.ResumeTarget(ctx, "acme", "s1", "s2", 2); err != nil || st != records.TargetFinished {
		t.Fatalf("ResumeTarget after the finish: %v, %v; want finished", st, err)
	}
	if _, err := e.src.ResumeTarget(ctx, "acme", "s1", "s2", 3); !errors.Is(err, records.ErrTenantExists) {
		t.Fatalf("ResumeTarget at another epoch: %v, want ErrTenantExists", err)
	}
	// Again (a restarted controller), either way: done, nothing changes.
	if err := e.src.FinishTargetFrom(ctx, "acme", "s1", "s2", 2, fence, mark); err != nil {
		t.Fatal(err)
	}
	if err := e.src.FinishTarget(ctx, "acme", "s1", "s2", 2, fence); err != nil {
		t.Fatal(err)
	}
	if n := e.scalar(t, "s2", `SELECT count(*) FROM tenants WHERE tenant_id = 'acme' AND status = 'active' AND NOT write_fenced AND write_epoch = 2 AND change_seq = 7`); n != 1 {
		t.Fatal("the target is not active, unfenced, at epoch 2 and change_seq 7 after finishFast")
	}
	if n := e.scalar(t, "s2", `SELECT count(*) FROM outbox WHERE tenant_id = 'acme'`); n != 7 {
		t.Fatalf("outbox rows on the target: %d, want 7", n)
	}
	got := map[string]int64{}
	rows, err := e.admin["s2"].Query(ctx, `SELECT key, seq FROM idempotency_keys WHERE tenant_id = 'acme'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k string
		var s int64
		if err := rows.Scan(&k, &s); err != nil {
			t.Fatal(err)
		}
		got[k] = s
	}
	if want := map[string]int64{"k1": 7, "k2": 2, "k3": 3, "k4": 6}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("idempotency keys on the target = %v, want %v (k1 as claimed again; below-mark not copied by the delta)", got, want)
	}
	// The retry of k1's second request answers its response on the target.
	replay, err := write(t, e.dst, records.Target{Tenant: "acme", Shard: "s2", Epoch: 2},
		records.WriteOp{Op: records.Put, Collection: "c", ID: "e", Data: []byte(`{"n":7}`), Key: "k1", RequestHash: []byte(`{"n":7}`)})
	if err != nil || !replay.Replayed {
		t.Fatalf("retry of k1 on the target: %+v %v, want the stored answer", replay, err)
	}

	// The pause as clients see it: unknown until a client writes the target, then the time
	// from the fence to that write, which a repeated Fence does not move.
	if _, ok, err := e.src.FirstWrite(ctx, "acme", "s1", "s2"); ok || err != nil {
		t.Fatalf("FirstWrite before any client write on the target: ok %v, %v", ok, err)
	}
	time.Sleep(20 * time.Millisecond)
	if _, err := write(t, e.dst, records.Target{Tenant: "acme", Shard: "s2", Epoch: 2},
		records.WriteOp{Op: records.Put, Collection: "c", ID: "after", Data: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	// A client wrote the target: the Cutover committed (a controller's map copy may lag).
	if st, err := e.src.ResumeTarget(ctx, "acme", "s1", "s2", 2); err != nil || st != records.TargetAhead {
		t.Fatalf("ResumeTarget after a client write on the target: %v, %v; want ahead", st, err)
	}
	pause, ok, err := e.src.FirstWrite(ctx, "acme", "s1", "s2")
	if !ok || err != nil || pause < 20*time.Millisecond || pause > time.Minute {
		t.Fatalf("FirstWrite = %v, %v, %v; want >= 20ms (slept after the fence)", pause, ok, err)
	}
	if _, err := e.src.Fence(ctx, "acme", "s1"); err != nil {
		t.Fatal(err)
	}
	if again, _, _ := e.src.FirstWrite(ctx, "acme", "s1", "s2"); again != pause {
		t.Fatalf("FirstWrite after a repeated Fence = %v, want %v (the fence's time must not move)", again, pause)
	}

	// A pruned range is refused, not answered short.
	e.exec(t, "s1", `DELETE FROM outbox WHERE tenant_id = 'acme' AND seq = 6`)
	if _, err := e.src.ChangedKeys(ctx, "acme", "s1", 5, 7); !errors.Is(err, records.ErrChangesPruned) {
		t.Fatalf("ChangedKeys over a pruned row: %v, want ErrChangesPruned", err)
	}
	if seq, _, err := e.src.FenceDelta(ctx, "acme", "s1", 5); !errors.Is(err, records.ErrChangesPruned) || seq < 7 {
		t.Fatalf("FenceDelta over a pruned row: %d, %v; want ErrChangesPruned with the fenced seq", seq, err)
	}

	// A finished target whose source was unfenced since (the attempt that finished it lifted
	// the fence after an error) is turned back into an importing copy at its mark.
	if err := e.src.Unfence(ctx, "acme", "s1"); err != nil {
		t.Fatal(err)
	}
	e.exec(t, "s2", `UPDATE tenants SET change_seq = 7 WHERE tenant_id = 'acme'`) // as finished, before the client write
	if st, err := e.src.ResumeTarget(ctx, "acme", "s1", "s2", 2); err != nil || st != records.TargetImporting {
		t.Fatalf("ResumeTarget with the source unfenced: %v, %v; want importing", st, err)
	}
	if n := e.scalar(t, "s2", `SELECT count(*) FROM tenants WHERE tenant_id = 'acme' AND status = 'importing' AND write_fenced AND change_seq = 7`); n != 1 {
		t.Fatal("the finished target was not turned back into a fenced importing copy at its mark")
	}
}

// TestMoveStepsDoNotBlockMirror: PrecopyTarget (which can run for seconds) and FinishTarget
// lock the target's tenant row, and a mirror write's foreign-key check takes KEY SHARE on it.
// With a KEY SHARE held by another transaction, as a mirror in flight holds it, both steps must
// go through instead of waiting (they took FOR UPDATE once, and every mirror during a precopy
// failed on its statement timeout).
func TestMoveStepsDoNotBlockMirror(t *testing.T) {
	e := newMoveEnv(t)
	ctx := context.Background()
	if _, err := e.src.CreateTenant(ctx, "acme", "s1"); err != nil {
		t.Fatal(err)
	}
	if err := e.src.PrepareTarget(ctx, "acme", "s1", "s2"); err != nil {
		t.Fatal(err)
	}
	if _, err := write(t, e.src, records.Target{Tenant: "acme", Shard: "s1", Epoch: 1, MirrorTo: "s2"},
		records.WriteOp{Op: records.Put, Collection: "c", ID: "a", Data: []byte(`{}`), Key: "k", RequestHash: []byte("h")}); err != nil {
		t.Fatal(err)
	}
	mirror, err := e.admin["s2"].Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer mirror.Rollback(ctx)
	if _, err := mirror.Exec(ctx, `SELECT 1 FROM tenants WHERE tenant_id = 'acme' FOR KEY SHARE`); err != nil {
		t.Fatal(err)
	}
	step := func(name string, f func(context.Context) error) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := f(sctx); err != nil {
			t.Errorf("%s while a mirror holds KEY SHARE on the target's tenant row: %v", name, err)
		}
	}
	step("PrecopyTarget", func(ctx context.Context) error { _, err := e.src.PrecopyTarget(ctx, "acme", "s1", "s2"); return err })
	seq, err := e.src.Fence(ctx, "acme", "s1")
	if err != nil {
		t.Fatal(err)
	}
	step("FinishTarget", func(ctx context.Context) error { return e.src.FinishTarget(ctx, "acme", "s1", "s2", 2, seq) })
}
