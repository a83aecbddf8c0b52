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

func itemKey(id string) Key { return Key{Collection: "items", ID: id} }

// TestWatermark: the cursor is the upper bound of the longest prefix of finished ranges,
// whatever order the streams finish them in; the last range has no bound and leaves the
// cursor where it was; a resumed backfill's watermark starts at its cursor.
func TestWatermark(t *testing.T) {
	rs := rangesOf([]Key{itemKey("b"), itemKey("d"), itemKey("f"), itemKey("h")}) // (0,b] (b,d] (d,f] (f,h] (h,∞)
	w := newWatermark(rs, Key{})
	for _, step := range []struct {
		finish int
		want   Key
	}{
		{2, Key{}},        // (d,f] done, (0,b] and (b,d] not: nothing is a prefix yet
		{4, Key{}},        // the unbounded last range, out of order
		{0, itemKey("b")}, // (0,b]
		{3, itemKey("b")}, // (f,h]: (b,d] still holds it
		{1, itemKey("h")}, // (b,d]: the prefix runs through (f,h] and the last range
	} {
		if got := w.finish(step.finish); got != step.want || w.get() != step.want {
			t.Fatalf("after range %d: cursor %v (get %v), want %v", step.finish, got, w.get(), step.want)
		}
	}

	resumed := rangesAfter(rangesOf([]Key{itemKey("b"), itemKey("d"), itemKey("f")}), itemKey("c"))
	w = newWatermark(resumed, itemKey("c")) // (c,d] (d,f] (f,∞)
	if got := w.finish(1); got != itemKey("c") {
		t.Fatalf("resumed, a later range done: %v, want the starting cursor c", got)
	}
	if got := w.finish(0); got != itemKey("f") {
		t.Fatalf("resumed, the first two done: %v, want f", got)
	}
}

// TestRangesAfter: a resumed backfill's ranges cover every key after the cursor exactly once
// and no key at or below it, for a cursor before, on, between and after the split keys.
func TestRangesAfter(t *testing.T) {
	splits := []Key{itemKey("b"), itemKey("d"), itemKey("f")}
	all := []Key{itemKey("a"), itemKey("b"), itemKey("c"), itemKey("d"), itemKey("e"), itemKey("f"), itemKey("g"), {Collection: "zz", ID: "x"}}
	for _, cursor := range []Key{{}, itemKey("a"), itemKey("b"), itemKey("c"), itemKey("f"), itemKey("g"), {Collection: "zz", ID: "z"}} {
		rs := rangesAfter(rangesOf(splits), cursor)
		for _, key := range all {
			in := 0
			for _, r := range rs {
				if inRange(key, r.after, r.upto) {
					in++
				}
			}
			if want := map[bool]int{true: 1, false: 0}[cursor.Less(key)]; in != want {
				t.Errorf("cursor %v: key %v in %d ranges %v, want %d", cursor, key, in, rs, want)
			}
		}
	}
	if rs := rangesAfter(rangesOf(splits), itemKey("d")); len(rs) != 2 || rs[0] != (keyRange{after: itemKey("d"), upto: itemKey("f")}) {
		t.Errorf("cursor on a split key: %v, want (d,f] (f,∞)", rs)
	}
	if rs := rangesAfter(rangesOf(splits), itemKey("c")); len(rs) != 3 || rs[0] != (keyRange{after: itemKey("c"), upto: itemKey("d")}) {
		t.Errorf("cursor inside a range: %v, want (c,d] (d,f] (f,∞)", rs)
	}
}
