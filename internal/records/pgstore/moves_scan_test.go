package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/meridian-dev/meridian/internal/records"
)

// scanRanges is the ranges SplitKeys's keys bound: (zero, k1], …, (kn, zero = no bound).
func scanRanges(splits []records.Key) [][2]records.Key {
	var out [][2]records.Key
	var prev records.Key
	for _, k := range splits {
		out = append(out, [2]records.Key{prev, k})
		prev = k
	}
	return append(out, [2]records.Key{prev, {}})
}

// copyRanges copies every range on its own goroutine with CopyRange, limit rows a batch.
func copyRanges(t testing.TB, s *Store, tenant string, rs [][2]records.Key, limit int) int {
	t.Helper()
	var mu sync.Mutex
	total := 0
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Go(func() {
			after := r[0]
			for {
				next, n, err := s.CopyRange(context.Background(), tenant, "s1", "s2", after, r[1], limit)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				total += n
				mu.Unlock()
				if n < limit || next == r[1] {
					return
				}
				after = next
			}
		})
	}
	wg.Wait()
	return total
}

// compareRanges runs CompareRange over every range at once and returns the diffs (in key
// order) and keys checked.
func compareRanges(t testing.TB, s *Store, tenant string, rs [][2]records.Key) ([]records.Key, int) {
	t.Helper()
	parts := make([][]records.Key, len(rs))
	counts := make([]int, len(rs))
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Go(func() {
			d, n, err := s.CompareRange(context.Background(), tenant, "s1", "s2", r[0], r[1])
			if err != nil {
				t.Error(err)
			}
			parts[i], counts[i] = d, n
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	var diffs []records.Key
	total := 0
	for i := range rs {
		if !slices.IsSortedFunc(parts[i], cmpKey) {
			t.Fatalf("range %v: diffs out of key order: %v", rs[i], parts[i])
		}
		diffs = append(diffs, parts[i]...)
		total += counts[i]
	}
	return diffs, total
}

func cmpKey(a, b records.Key) int {
	switch {
	case a.Less(b):
		return -1
	case b.Less(a):
		return 1
	}
	return 0
}

// TestSplitKeys: the ranges SplitKeys's keys bound hold every key of the tenant exactly once
// (tombstones included, other tenants' never), every rows each but the last.
func TestSplitKeys(t *testing.T) {
	e := newMoveEnv(t)
	ctx := context.Background()
	for _, tn := range []string{"acme", "other"} {
		if _, err := e.src.CreateTenant(ctx, tn, "s1"); err != nil {
			t.Fatal(err)
		}
	}
	e.seedRows(t, "s1", "acme", 2345)
	e.seedRows(t, "s1", "other", 100)
	if _, err := e.src.SplitKeys(ctx, "nobody", "s1", 10); !errors.Is(err, records.ErrTenantNotFound) {
		t.Fatalf("unknown tenant: %v", err)
	}
	for _, every := range []int{1, 7, 100, 2345, 5000} {
		ks, err := e.src.SplitKeys(ctx, "acme", "s1", every)
		if err != nil {
			t.Fatal(err)
		}
		if want := 2345 / every; len(ks) != want {
			t.Fatalf("every %d: %d keys, want %d", every, len(ks), want)
		}
		if !slices.IsSortedFunc(ks, func(a, b records.Key) int {
			if a.Less(b) {
				return -1
			}
			return 1
		}) {
			t.Fatalf("every %d: keys not ascending", every)
		}
		total := int64(0)
		for i, r := range scanRanges(ks) {
			n := e.scalar(t, "s1", `SELECT count(*) FROM records WHERE tenant_id = 'acme' AND (collection, id) > ($1, $2)
				AND ($5 OR (collection, id) <= ($3, $4))`, r[0].Collection, r[0].ID, r[1].Collection, r[1].ID, r[1] == records.Key{})
			if i < len(ks) && n != int64(every) {
				t.Fatalf("every %d: range %d holds %d rows", every, i, n)
			}
			total += n
		}
		if total != 2345 {
			t.Fatalf("every %d: ranges hold %d rows, want 2345", every, total)
		}
	}
	if _, err := e.src.SplitKeys(ctx, "acme", "s1", 0); err == nil {
		t.Fatal("every 0 accepted")
	}
}

// TestCopyRangeParallel: ranges copied all at once, while a client writes the tenant through
// the mirror (updates, deletes, creates, re-creations over tombstones), leave the target equal
// to the source, tombstones included: no copy regressed a mirrored version or resurrected a
// deleted record. Then CompareRange finds exactly the injected differences, for range sizes
// from a few keys (ranges with keys on one side only) to one range of the whole tenant, and
// nothing once they are repaired.
func TestCopyRangeParallel(t *testing.T) {
	e := newMoveEnv(t)
	ctx := context.Background()
	if _, err := e.src.CreateTenant(ctx, "acme", "s1"); err != nil {
		t.Fatal(err)
	}
	const n = 6000
	e.seedRows(t, "s1", "acme", n)
	if err := e.src.PrepareTarget(ctx, "acme", "s1", "s2"); err != nil {
		t.Fatal(err)
	}
	ks, err := e.src.SplitKeys(ctx, "acme", "s1", 500)
	if err != nil {
		t.Fatal(err)
	}
	key := func(i int) records.Key {
		return records.Key{Collection: []string{"alpha", "beta", "gamma"}[i%3], ID: fmt.Sprintf("r%07d", i)}
	}
	tgt := records.Target{Tenant: "acme", Shard: "s1", Epoch: 1, MirrorTo: "s2"}
	stop := make(chan struct{})
	var writes sync.WaitGroup
	writes.Go(func() {
		for i := 1; ; i += 37 {
			select {
			case <-stop:
				return
			default:
			}
			k := key(1 + i%n)
			ops := []records.WriteOp{
				{Op: records.Put, Collection: k.Collection, ID: k.ID, Data: []byte(fmt.Sprintf(`{"w":%d}`, i))},
				{Op: records.Delete, Collection: k.Collection, ID: k.ID},
				{Op: records.Put, Collection: "delta", ID: fmt.Sprintf("new%05d", i), Data: []byte(`{"new":true}`)},
			}
			for _, op := range ops {
				res, err := write(t, e.src, tgt, op)
				if err != nil && op.Op != records.Delete {
					t.Errorf("write %+v: %v", op, err)
					return
				}
				if err == nil && res.Mirror != records.MirrorOK {
					t.Errorf("write %+v: mirror %s", op, res.Mirror)
					return
				}
			}
		}
	})
	copied := copyRanges(t, e.src, "acme", scanRanges(ks), 128)
	close(stop)
	writes.Wait()
	if copied < n {
		t.Fatalf("copied %d rows, want at least %d", copied, n)
	}
	e.sameRows(t, "acme")
	total := int(e.scalar(t, "s1", `SELECT count(*) FROM records WHERE tenant_id = 'acme'`))
	if diffs, checked := compareRanges(t, e.src, "acme", scanRanges(ks)); len(diffs) != 0 || checked != total {
		t.Fatalf("clean copy: %d diffs, %d of %d keys checked", len(diffs), checked, total)
	}

	// Damage the target: missing rows, extra rows (before, inside and after every source key),
	// older versions, other data at the same version, a tombstone live again.
	var want []records.Key
	for _, i := range []int{3, 1000, 1001, 2500, 5999} {
		k := key(i)
		e.exec(t, "s2", `DELETE FROM records WHERE tenant_id = 'acme' AND collection = $1 AND id = $2`, k.Collection, k.ID)
		want = append(want, k)
	}
	for _, k := range []records.Key{{Collection: "aaa", ID: "x"}, {Collection: "alpha", ID: "r0002000x"}, {Collection: "zeta", ID: "a"}} {
		e.exec(t, "s2", `INSERT INTO records (tenant_id, collection, id, version, data) VALUES ('acme', $1, $2, 1, '{}')`, k.Collection, k.ID)
		want = append(want, k)
	}
	for _, i := range []int{11, 2222, 4001} {
		k := key(i)
		e.exec(t, "s2", `UPDATE records SET data = data || '{"changed":1}' WHERE tenant_id = 'acme' AND collection = $1 AND id = $2`, k.Collection, k.ID)
		want = append(want, k)
	}
	k := key(3333)
	e.exec(t, "s2", `UPDATE records SET deleted = NOT deleted WHERE tenant_id = 'acme' AND collection = $1 AND id = $2`, k.Collection, k.ID)
	want = append(want, k)
	slices.SortFunc(want, cmpKey)
	for _, every := range []int{500, 1000, 7, 100000} {
		ks, err := e.src.SplitKeys(ctx, "acme", "s1", every)
		if err != nil {
			t.Fatal(err)
		}
		diffs, checked := compareRanges(t, e.src, "acme", scanRanges(ks))
		if !slices.Equal(diffs, want) {
			t.Fatalf("every %d: diffs\n%v\nwant\n%v", every, diffs, want)
		}
		if checked != total+3 {
			t.Fatalf("every %d: checked %d keys, want %d", every, checked, total+3)
		}
	}
	// One range, unbounded, holds everything; a range past every key holds nothing.
	if diffs, checked := compareRanges(t, e.src, "acme", [][2]records.Key{{}}); !slices.Equal(diffs, want) || checked != total+3 {
		t.Fatalf("one range: %d keys checked, diffs %v", checked, diffs)
	}
	if diffs, checked := compareRanges(t, e.src, "acme", [][2]records.Key{{{Collection: "zzz"}, {}}}); len(diffs) != 0 || checked != 0 {
		t.Fatalf("past the last key: %d keys checked, diffs %v", checked, diffs)
	}
	if _, _, err := e.src.CompareRange(ctx, "nobody", "s1", "s2", records.Key{}, records.Key{}); !errors.Is(err, records.ErrTenantNotFound) {
		t.Fatalf("CompareRange of an unknown tenant: %v", err)
	}
	if n, err := e.src.Repair(ctx, "acme", "s1", "s2", want); err != nil || n != len(want) {
		t.Fatalf("repair: %d %v, want %d", n, err, len(want))
	}
	if diffs, _ := compareRanges(t, e.src, "acme", scanRanges(ks)); len(diffs) != 0 {
		t.Fatalf("after repair: %v", diffs)
	}
	e.sameRows(t, "acme")
}
