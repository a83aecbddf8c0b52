package pgstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/shards"
)

// TestChanges: Changes reads a tenant's outbox rows in (after, upto] in seq order, only its
// own, from the standby, and from the primary what the standby has not replayed yet when upto
// asks for it; ChangeSeq is the tenant's change_seq. An unknown tenant is ErrTenantNotFound.
func TestChanges(t *testing.T) {
	// A long interval keeps the cached standby status fresh while replay is paused below.
	se := newStandbyEnv(t, shards.Config{}, func(c *Config) { c.StandbyInterval = time.Hour })
	createTenant(t, se.home, "acme")
	createTenant(t, se.home, "other")
	ctx := context.Background()
	if seq, err := se.home.ChangeSeq(ctx, target("acme")); err != nil || seq != 0 {
		t.Fatalf("ChangeSeq before any write: %d %v", seq, err)
	}
	var w records.WriteResult
	for i := 1; i <= 4; i++ {
		w = put(t, se.home, "acme", "n", fmt.Sprintf("r%d", i), `{"v":1}`)
		put(t, se.home, "other", "n", fmt.Sprintf("o%d", i), `{"v":1}`)
	}
	// r2 again (update), then deleted.
	put(t, se.home, "acme", "n", "r2", `{"v":2}`)
	_, err := se.home.Write(ctx, target("acme"), records.WriteOp{Op: records.Delete, Collection: "n", ID: "r2",
		Render: func(records.Change) (records.Response, error) { return records.Response{Status: 204}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	w = put(t, se.home, "acme", "n", "r5", `{"v":1}`)
	se.waitReplayed(t, w.Token)

	type want struct {
		seq     int64
		id, op  string
		version int64
	}
	all := []want{{1, "r1", "create", 1}, {2, "r2", "create", 1}, {3, "r3", "create", 1}, {4, "r4", "create", 1},
		{5, "r2", "update", 2}, {6, "r2", "delete", 3}, {7, "r5", "create", 1}}
	check := func(t *testing.T, what string, got []records.ChangeEvent, want []want) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d events %+v, want %d", what, len(got), got, len(want))
		}
		for i, w := range want {
			g := got[i]
			if g.Seq != w.seq || g.ID != w.id || g.Op != w.op || g.Version != w.version || g.Collection != "n" || g.OutboxID == 0 || g.At.IsZero() {
				t.Fatalf("%s: event %d is %+v, want %+v", what, i, g, w)
			}
		}
	}
	for _, tc := range []struct {
		name        string
		after, upto int64
		want        []want
	}{
		{"everything", 0, 0, all},
		{"from -1", -1, 0, all},
		{"after 2", 2, 0, all[2:]},
		{"after 2 up to 4", 2, 4, all[2:4]},
		{"up to past the end", 5, 100, all[5:]},
		{"after the end", 7, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := se.local.Changes(ctx, "acme", "s1", tc.after, tc.upto)
			if err != nil {
				t.Fatal(err)
			}
			check(t, tc.name, got, tc.want)
		})
	}
	if seq, err := se.local.ChangeSeq(ctx, target("acme")); err != nil || seq != 7 {
		t.Fatalf("ChangeSeq: %d %v, want 7", seq, err)
	}
	if seq, err := se.local.ChangeSeq(ctx, target("other")); err != nil || seq != 4 {
		t.Fatalf("other's ChangeSeq: %d %v, want 4", seq, err)
	}
	if _, err := se.local.Changes(ctx, "ghost", "s1", 0, 0); !errors.Is(err, records.ErrTenantNotFound) {
		t.Fatalf("ghost Changes: %v, want ErrTenantNotFound", err)
	}
	if _, err := se.local.ChangeSeq(ctx, target("ghost")); !errors.Is(err, records.ErrTenantNotFound) {
		t.Fatalf("ghost ChangeSeq: %v, want ErrTenantNotFound", err)
	}

	// With replay paused the standby lacks seqs 8 and 9: without an upper bound the answer is
	// the standby's (a prefix); asked for up to 9, the primary adds the rest.
	setReplay(t, se, true)
	t.Cleanup(func() { setReplay(t, se, false) })
	put(t, se.home, "acme", "n", "r6", `{"v":1}`)
	put(t, se.home, "acme", "n", "r7", `{"v":1}`)
	got, err := se.local.Changes(ctx, "acme", "s1", 6, 0)
	if err != nil {
		t.Fatal(err)
	}
	check(t, "standby only", got, all[6:])
	if seq, err := se.local.ChangeSeq(ctx, target("acme")); err != nil || seq != 7 {
		t.Fatalf("ChangeSeq from the paused standby: %d %v, want 7", seq, err)
	}
	tail := append(all[6:], want{8, "r6", "create", 1}, want{9, "r7", "create", 1})
	got, err = se.local.Changes(ctx, "acme", "s1", 6, 9)
	if err != nil {
		t.Fatal(err)
	}
	check(t, "standby then primary", got, tail)
	got, err = se.local.Changes(ctx, "acme", "s1", 7, 8)
	if err != nil {
		t.Fatal(err)
	}
	check(t, "primary only, bounded", got, tail[1:2])
}

// TestChangesLimit: one call returns at most ChangesLimit rows; the next call continues.
func TestChangesLimit(t *testing.T) {
	e := newEnv(t, shards.Config{})
	createTenant(t, e.store, "acme")
	ctx := context.Background()
	// Outbox rows made directly (superuser), as many writes would.
	conn, err := e.pg.Connect(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	n := ChangesLimit + 5
	if _, err := conn.Exec(ctx, `INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version)
		SELECT 'acme', g, 'n', 'r' || g, 'create', 1 FROM generate_series(1, $1::int) g`, n); err != nil {
		t.Fatal(err)
	}
	for _, upto := range []int64{0, int64(n)} {
		first, err := e.store.Changes(ctx, "acme", "s1", 0, upto)
		if err != nil || len(first) != ChangesLimit || first[len(first)-1].Seq != ChangesLimit {
			t.Fatalf("upto %d: first call %d rows %v", upto, len(first), err)
		}
		rest, err := e.store.Changes(ctx, "acme", "s1", first[len(first)-1].Seq, upto)
		if err != nil || len(rest) != 5 || rest[0].Seq != ChangesLimit+1 || rest[4].Seq != int64(n) {
			t.Fatalf("upto %d: second call %+v %v", upto, rest, err)
		}
	}
}

// setReplay pauses or resumes WAL replay on the standby (superuser).
func setReplay(t *testing.T, se *standbyEnv, paused bool) {
	t.Helper()
	fn := "pg_wal_replay_resume()"
	if paused {
		fn = "pg_wal_replay_pause()"
	}
	if err := se.standby.Exec(context.Background(), "SELECT "+fn); err != nil {
		t.Fatal(err)
	}
}
