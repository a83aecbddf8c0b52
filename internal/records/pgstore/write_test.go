package pgstore

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/internal/testenv"
)

// A write takes its tenant row last (writeTx), so writes of one tenant are no longer
// serialised from their first statement: these tests pin what that serialisation used to
// give for free.

// TestConcurrentPutsOfOneNewRecord: writers Put the same new id at once. Each succeeds (the
// losers of the insert race start over on the winner's row), exactly one creates, the versions
// are 1..n, and the change stream numbers them gap-free in version order, each stored
// Idempotency-Key carrying its write's seq.
func TestConcurrentPutsOfOneNewRecord(t *testing.T) {
	e := newEnv(t, shards.Config{})
	createTenant(t, e.store, "race-put")
	ctx := context.Background()
	const n = 16
	type result struct {
		kind    records.ChangeKind
		version int64
	}
	results := make([]result, n)
	errs := make([]error, n)
	var start sync.WaitGroup
	start.Add(1)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			start.Wait()
			op := records.WriteOp{Op: records.Put, Collection: "c", ID: "same", Data: []byte(fmt.Sprintf(`{"w":%d}`, i)),
				Key: fmt.Sprintf("key-%d", i), RequestHash: []byte("h"),
				Render: func(ch records.Change) (records.Response, error) {
					results[i] = result{ch.Kind, ch.Record.Version}
					return records.Response{Status: http.StatusOK, Body: ch.Record.Data}, nil
				}}
			_, errs[i] = e.store.Write(ctx, target("race-put"), op)
		})
	}
	start.Done()
	wg.Wait()
	var versions []int64
	created := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("writer %d: %v", i, errs[i])
		}
		if results[i].kind == records.Created {
			created++
		}
		versions = append(versions, results[i].version)
	}
	slices.Sort(versions)
	for i, v := range versions {
		if v != int64(i+1) {
			t.Fatalf("versions %v, want 1..%d", versions, n)
		}
	}
	if created != 1 {
		t.Fatalf("%d writers created the record, want 1", created)
	}
	evs, err := e.store.Changes(ctx, "race-put", "s1", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != n {
		t.Fatalf("%d change events, want %d: %+v", len(evs), n, evs)
	}
	for i, ev := range evs {
		if ev.Seq != int64(i+1) || ev.Version != int64(i+1) {
			t.Fatalf("event %d: seq %d version %d, want both %d (seq gap-free, in the record's version order)", i, ev.Seq, ev.Version, i+1)
		}
	}
	tx, err := e.appConn().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, setTenantSQL, "race-put"); err != nil {
		t.Fatal(err)
	}
	rows, err := tx.Query(ctx, `SELECT key, seq FROM idempotency_keys WHERE tenant_id = 'race-put' ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	seqs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (int64, error) {
		var k string
		var s *int64
		if err := r.Scan(&k, &s); err != nil || s == nil {
			return 0, fmt.Errorf("key %s seq %v: %v", k, s, err)
		}
		return *s, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seqs) != n || seqs[0] != 1 || seqs[n-1] != n {
		t.Fatalf("stored keys' seqs %v, want 1..%d", seqs, n)
	}
}

// TestFenceSeenByWriteInFlight: a write that passed its first look at the tenant row and then
// waits (here on its record's row lock, held by another transaction) while a move fences the
// tenant must not commit: the fence does not wait for it, and it reads the fence again under
// the tenant row lock and rolls back — nothing lands on the source after the fence.
func TestFenceSeenByWriteInFlight(t *testing.T) {
	e := newEnv(t, shards.Config{})
	createTenant(t, e.store, "fence-race")
	ctx := context.Background()
	put(t, e.store, "fence-race", "c", "x", `{"v":1}`)
	hold, err := e.appConn().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Rollback(ctx)
	if _, err := hold.Exec(ctx, setTenantSQL, "fence-race"); err != nil {
		t.Fatal(err)
	}
	if _, err := hold.Exec(ctx, `SELECT 1 FROM records WHERE tenant_id = 'fence-race' AND collection = 'c' AND id = 'x' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := e.store.Write(ctx, target("fence-race"), records.WriteOp{Op: records.Put, Collection: "c", ID: "x", Data: []byte(`{"v":2}`),
			Key: "in-flight", RequestHash: []byte("h"),
			Render: func(ch records.Change) (records.Response, error) {
				return records.Response{Status: http.StatusOK, Body: ch.Record.Data}, nil
			}})
		done <- err
	}()
	// Wait until the write waits on the record's row (asked outside hold's transaction, which
	// would see one snapshot of pg_stat_activity).
	watch := e.appConn()
	testenv.WaitFor(t, 10*time.Second, func() error {
		var n int
		if err := watch.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE%'`).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return errors.New("the write does not wait on the record's row yet")
		}
		return nil
	})
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	seq, err := e.store.Fence(fctx, "fence-race", "s1")
	if err != nil {
		t.Fatalf("fence while a write waits on a record: %v", err)
	}
	if seq != 1 {
		t.Fatalf("fenced at change_seq %d, want 1", seq)
	}
	if err := hold.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, records.ErrTenantFenced) {
		t.Fatalf("the write in flight at the fence: %v, want %v", err, records.ErrTenantFenced)
	}
	if got, err := e.store.ChangeSeq(ctx, target("fence-race")); err != nil || got != 1 {
		t.Fatalf("change_seq after the fence: %d %v, want 1", got, err)
	}
	if err := e.store.Unfence(ctx, "fence-race", "s1"); err != nil {
		t.Fatal(err)
	}
	r, _, err := e.store.Get(ctx, target("fence-race"), records.ReadOptions{}, "c", "x")
	if err != nil || r.Version != 1 || string(r.Data) != `{"v": 1}` && string(r.Data) != `{"v":1}` {
		t.Fatalf("record after the refused write: %+v %v, want version 1 {\"v\":1}", r, err)
	}
}
