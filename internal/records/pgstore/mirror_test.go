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
