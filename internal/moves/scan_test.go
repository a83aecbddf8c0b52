package moves

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/shardmap"
)

// scanSetup is a move of acme (rows rows on use-1) to a prepared euw-1, recorded in the map up
// to phase, and a controller of cfg's with streams streams and batches of batch rows.
func scanSetup(t *testing.T, rows, batch, streams int, phase shardmap.Phase, mutate func(*Config)) (*Controller, *fakeStore, *shardmap.Client, shardmap.Move) {
	t.Helper()
	client := newTestMap(t)
	st := newFakeStore()
	st.seed("use-1", "acme", rows)
	if err := st.PrepareTarget(context.Background(), "acme", "use-1", "euw-1"); err != nil {
		t.Fatal(err)
	}
	id := requestMove(t, client, "acme", "euw-1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, p := range []shardmap.Phase{shardmap.PhaseDualWrite, shardmap.PhaseBackfill, shardmap.PhaseVerify} {
		mustApply(t, ctx, client, shardmap.SetMovePhase{ID: id, Phase: p})
		if p == phase {
			break
		}
	}
	cfg := testConfig(t, client, st, newFakeLease(), "c1")
	cfg.BatchSize, cfg.ScanStreams = batch, streams
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mv, _ := client.Map().Move(id)
	return c, st, client, mv
}

// TestBackfillStreams: a backfill over 4 streams copies every row once, tombstones included,
// records its progress, and moves on to verify.
func TestBackfillStreams(t *testing.T) {
	c, st, client, mv := scanSetup(t, 2345, 100, 4, shardmap.PhaseBackfill, nil)
	k := Key{Collection: "items", ID: "r00042"}
	if err := st.clientWrite("use-1", "acme", k, "", true); err != nil {
		t.Fatal(err)
	}
	if err := c.backfill(context.Background(), c.log, mv); err != nil {
		t.Fatal(err)
	}
	src, dst := st.snapshot("use-1", "acme"), st.snapshot("euw-1", "acme")
	if len(src) != len(dst) || dst[k] != (frow{version: 2, deleted: true}) {
		t.Fatalf("target has %d rows (tombstone %+v), source %d", len(dst), dst[k], len(src))
	}
	for key, r := range src {
		if dst[key] != r {
			t.Fatalf("%v: target %+v, source %+v", key, dst[key], r)
		}
	}
	got, _ := client.Map().Move(mv.ID)
	if got.Phase != shardmap.PhaseVerify || got.RowsCopied != 2345 || got.RowsTotal != 2345 {
		t.Fatalf("after backfill: %s, %d/%d rows", got.Phase, got.RowsCopied, got.RowsTotal)
	}
	// 24 ranges (23 of 100 rows, 45 in the last), one batch each.
	if n := st.count("CopyBatch"); n != 24 {
		t.Errorf("%d copy batches, want 24", n)
	}
}

// TestBackfillThrottleStreams: the rate cap holds across streams. With the fake clock, sleeps
// are the only time that passes: 5,000 rows at 1,000 rows/s must sleep exactly 5 s in all,
// however the 8 streams interleave.
func TestBackfillThrottleStreams(t *testing.T) {
	clock := &fakeClock{now: time.Now()}
	c, _, client, mv := scanSetup(t, 5000, 100, 8, shardmap.PhaseBackfill, func(cfg *Config) {
		cfg.RowsPerSecond = 1000
		cfg.Now = clock.Now
	})
	c.sleep = clock.sleep
	if err := c.backfill(context.Background(), c.log, mv); err != nil {
		t.Fatal(err)
	}
	if clock.slept != 5*time.Second {
		t.Errorf("throttle slept %s, want 5s", clock.slept)
	}
	if got, _ := client.Map().Move(mv.ID); got.RowsCopied != 5000 {
		t.Errorf("rows copied %d", got.RowsCopied)
	}
}

// TestBackfillStopsOnCancel: a move cancelled mid-backfill stops every stream before its next
// batch, and so does a cancelled context; a store error surfaces, wrapped.
func TestBackfillStopsOnCancel(t *testing.T) {
	t.Run("move cancelled", func(t *testing.T) {
		c, st, client, mv := scanSetup(t, 20000, 100, 4, shardmap.PhaseBackfill, nil)
		st.before = func(method string, n int) error {
			if method == "CopyBatch" && n == 20 {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				mustApply(t, ctx, client, shardmap.SetMovePhase{ID: mv.ID, Phase: shardmap.PhaseCancelled})
			}
			return nil
		}
		err := c.backfill(context.Background(), c.log, mv)
		if !errors.Is(err, errMapMovedOn) {
			t.Fatalf("backfill of a cancelled move: %v", err)
		}
		// The streams in flight finish their batch (at most one each) and stop.
		if n := st.count("CopyBatch"); n > 20+4 {
			t.Errorf("%d copy batches after the cancel at the 20th", n)
		}
	})
	t.Run("context cancelled", func(t *testing.T) {
		c, st, _, mv := scanSetup(t, 20000, 100, 4, shardmap.PhaseBackfill, nil)
		ctx, cancel := context.WithCancel(context.Background())
		st.before = func(method string, n int) error {
			if method == "CopyBatch" && n == 10 {
				cancel()
			}
			return ctx.Err()
		}
		if err := c.backfill(ctx, c.log, mv); !errors.Is(err, context.Canceled) {
			t.Fatalf("backfill with its context cancelled: %v", err)
		}
		if n := st.count("CopyBatch"); n > 10+4 {
			t.Errorf("%d copy batches after the cancel at the 10th", n)
		}
	})
	t.Run("store error", func(t *testing.T) {
		c, st, client, mv := scanSetup(t, 20000, 100, 4, shardmap.PhaseBackfill, nil)
		boom := errors.New("target unreachable")
		st.before = func(method string, n int) error {
			if method == "CopyBatch" && n == 7 {
				return boom
			}
			return nil
		}
		if err := c.backfill(context.Background(), c.log, mv); !errors.Is(err, boom) {
			t.Fatalf("backfill: %v, want the store's error", err)
		}
		if got, _ := client.Map().Move(mv.ID); got.Phase != shardmap.PhaseBackfill {
			t.Errorf("phase %s after a failed backfill", got.Phase)
		}
	})
}

// TestVerifyPassStreams: a verify pass over 4 streams finds every difference (changed, missing,
// extra on the target past the source's last key, a tombstone), repairs them, records the
// repairs, and the next pass is clean; a store error surfaces.
func TestVerifyPassStreams(t *testing.T) {
	c, st, client, mv := scanSetup(t, 3000, 100, 4, shardmap.PhaseVerify, nil)
	st.seed("euw-1", "acme", 3000)
	st.mu.Lock()
	for _, i := range []int{0, 999, 1500} {
		st.set("euw-1", "acme", Key{Collection: "items", ID: fmt.Sprintf("r%05d", i)}, frow{version: 1, data: "x"})
	}
	delete(st.rows["euw-1"]["acme"], Key{Collection: "items", ID: "r02999"})
	st.set("euw-1", "acme", Key{Collection: "zzz", ID: "extra"}, frow{version: 1, data: "v1"})
	st.set("euw-1", "acme", Key{Collection: "items", ID: "r01234"}, frow{version: 1, deleted: true})
	st.mu.Unlock()
	found, err := c.verifyPass(context.Background(), mv, true)
	if err != nil || found != 6 {
		t.Fatalf("verify pass: %d differences, %v; want 6", found, err)
	}
	if got, _ := client.Map().Move(mv.ID); got.Repairs != 6 {
		t.Errorf("repairs recorded %d, want 6", got.Repairs)
	}
	if found, err := c.verifyPass(context.Background(), mv, false); err != nil || found != 0 {
		t.Fatalf("second pass: %d, %v", found, err)
	}
	boom := errors.New("source unreachable")
	st.before = func(method string, n int) error {
		if method == "VerifyBatch" {
			return boom
		}
		return nil
	}
	if _, err := c.verifyPass(context.Background(), mv, false); !errors.Is(err, boom) {
		t.Fatalf("verify pass: %v, want the store's error", err)
	}
}
