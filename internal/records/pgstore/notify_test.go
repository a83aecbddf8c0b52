package pgstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/shards"
)

// TestWriteNotifies: a committed write notifies NotifyChannel with its shard id; a write that
// fails (and rolls back) does not.
func TestWriteNotifies(t *testing.T) {
	e := newEnv(t, shards.Config{})
	createTenant(t, e.store, "acme")
	ctx := context.Background()
	listener, err := e.pg.Connect(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(ctx)
	if _, err := listener.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		t.Fatal(err)
	}
	// A patch of a missing record rolls its transaction back: no notification.
	_, err = e.store.Write(ctx, target("acme"), records.WriteOp{Op: records.Patch, Collection: "n", ID: "missing", Data: []byte(`{}`),
		Render: func(records.Change) (records.Response, error) { return records.Response{}, nil }})
	if !errors.Is(err, records.ErrRecordNotFound) {
		t.Fatalf("patch of a missing record: %v", err)
	}
	put(t, e.store, "acme", "n", "n1", `{"v":1}`)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := listener.WaitForNotification(wctx)
	if err != nil {
		t.Fatalf("no notification after a write: %v", err)
	}
	if n.Channel != NotifyChannel || n.Payload != "s1" {
		t.Fatalf("notification %+v, want channel %s payload s1", n, NotifyChannel)
	}
	// Notifications arrive in commit order, so a notification of the failed write would have
	// come first; and no second one follows.
	qctx, qcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer qcancel()
	if n, err := listener.WaitForNotification(qctx); err == nil {
		t.Fatalf("a second notification %+v for one committed write", n)
	}
}
