package pgstore

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/meridian-dev/meridian/internal/records"
)

// TestMirrorGroupCommit: many writers mirroring at once to one target shard share statements
// (fewer statements than writes), every mirror is answered MirrorOK, and the target ends equal to
// the source — with two versions of one record in flight together, the newer one.
func TestMirrorGroupCommit(t *testing.T) {
	e := newMoveEnv(t)
	ctx := context.Background()
	for _, tenant := range []string{"acme", "bravo"} {
		if _, err := e.src.CreateTenant(ctx, tenant, "s1"); err != nil {
			t.Fatal(err)
		}
		if err := e.src.PrepareTarget(ctx, tenant, "s1", "s2"); err != nil {
			t.Fatal(err)
		}
	}
	const writers, each = 32, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		tenant := []string{"acme", "bravo"}[w%2]
		wg.Go(func() {
			tgt := records.Target{Tenant: tenant, Shard: "s1", Epoch: 1, MirrorTo: "s2"}
			for i := range each {
				// Half the writers share records, so one batch can hold two versions of one key.
				id := fmt.Sprintf("w%d-%d", w, i)
				if w%4 < 2 {
					id = fmt.Sprintf("shared-%d", i)
				}
				res, err := write(t, e.src, tgt, records.WriteOp{Op: records.Put, Collection: "c", ID: id, Data: []byte(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))})
				if err != nil {
					errs <- err
					return
				}
				if res.Mirror != records.MirrorOK {
					errs <- fmt.Errorf("writer %d write %d: mirror %q", w, i, res.Mirror)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, tenant := range []string{"acme", "bravo"} {
		e.sameRows(t, tenant)
	}
	if n := e.src.mirrors.batches.Load(); n >= writers*each {
		t.Errorf("%d mirror statements for %d writes: no two writes shared one", n, writers*each)
	} else {
		t.Logf("%d writes mirrored in %d statements", writers*each, n)
	}
}

// TestMirrorAndCopyDoNotDeadlock: mirror statements (many rows of one tenant, from concurrent
// writers) and the backfill's copy statements lock the same target rows; both must take them
// in key order, or Postgres aborts one of two statements waiting on each other (a 200,000-row
// move under load lost its backfill to "deadlock detected" when mirror rows went in map order).
func TestMirrorAndCopyDoNotDeadlock(t *testing.T) {
	e := newMoveEnv(t)
	ctx := context.Background()
	if _, err := e.src.CreateTenant(ctx, "acme", "s1"); err != nil {
		t.Fatal(err)
	}
	const n = 400
	src := records.Target{Tenant: "acme", Shard: "s1", Epoch: 1}
	for i := range n {
		if _, err := write(t, e.src, src, records.WriteOp{Op: records.Put, Collection: "c", ID: fmt.Sprintf("r%04d", i), Data: []byte(`{"v":0}`)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.src.PrepareTarget(ctx, "acme", "s1", "s2"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	// Writers: random keys of the copied range, mirrored (batches of many keys).
	for w := range 24 {
		wg.Go(func() {
			tgt := records.Target{Tenant: "acme", Shard: "s1", Epoch: 1, MirrorTo: "s2"}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("r%04d", (w*7919+i*104729)%n)
				res, err := write(t, e.src, tgt, records.WriteOp{Op: records.Put, Collection: "c", ID: id, Data: []byte(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))})
				switch {
				case err != nil:
					errs <- err
				case res.Mirror != records.MirrorOK:
					errs <- fmt.Errorf("writer %d write %d of %s: mirror %q", w, i, id, res.Mirror)
				}
			}
		})
	}
	// The backfill's statement, over the whole range, again and again.
	for range 15 {
		if _, _, err := e.src.CopyRange(ctx, "acme", "s1", "s2", records.Key{}, records.Key{}, n); err != nil {
			errs <- fmt.Errorf("copy: %w", err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	e.sameRows(t, "acme")
}
