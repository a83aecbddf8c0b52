package moves

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-dev/meridian/shardmap"
)

// The two scans of a move over all of a tenant's keys: the backfill and a full verify pass.
// Both cut the source's keys into ranges (Store.SplitKeys: about BatchSize keys a backfill
// range, VerifyRangeRows a verify range) and run ScanStreams streams over them at once, each
// taking the next range when it is done with one: one stream of round trips leaves both
// databases idle much of the time (docs/moves.md, "Throughput"). The ranges cover every key,
// the target's extra keys included, exactly once. A backfill range is copied in CopyRange
// batches; a verify range is one CompareRange, each side read as one stream.

// defaultScanStreams is ScanStreams's default.
const defaultScanStreams = 4

// scanStreams is how many ranges a scan works on at once.
func (c *Controller) scanStreams() int {
	if c.cfg.ScanStreams > 0 {
		return c.cfg.ScanStreams
	}
	return defaultScanStreams
}

// defaultVerifyRangeBatches is VerifyRangeRows's default in batches: each range is one
// streamed CompareRange, so larger ranges mean fewer queries to plan and fewer round trips;
// 10 (10,000 keys at the default BatchSize) still leaves 20 ranges for 4 streams in a
// 200,000-row tenant (docs/BENCHMARKS.md, "Tenant moves: backfill and verify (issue 14)").
const defaultVerifyRangeBatches = 10

// verifyRangeRows is how many keys a full verify pass's range holds (SplitKeys's every).
func (c *Controller) verifyRangeRows() int {
	if c.cfg.VerifyRangeRows > 0 {
		return c.cfg.VerifyRangeRows
	}
	return defaultVerifyRangeBatches * c.cfg.BatchSize
}

// keyRange is the keys in (after, upto]; a zero upto is no upper bound.
type keyRange struct{ after, upto Key }

// rangesOf turns SplitKeys's keys into the ranges they bound, in key order.
func rangesOf(splits []Key) []keyRange {
	out := make([]keyRange, 0, len(splits)+1)
	var prev Key
	for _, k := range splits {
		out = append(out, keyRange{after: prev, upto: k})
		prev = k
	}
	return append(out, keyRange{after: prev})
}

// rangesAfter is rs (in key order, covering every key) without the keys <= cursor: ranges
// wholly at or below it are dropped and the one that spans it starts after it. A zero cursor
// leaves rs as it is.
//
// A resumed backfill splits the whole source again and trims, rather than splitting only the
// keys after the cursor: SplitKeys has no lower bound (giving it one would change the records
// store's contract for a step that is one index-only scan of the tenant's keys, cheap next to
// copying the rows), and the trimmed ranges cover (cursor, ∞) exactly once, as the untrimmed
// ones cover everything. The new split's keys need not be the old one's: only the cursor is
// carried over.
func rangesAfter(rs []keyRange, cursor Key) []keyRange {
	if cursor == (Key{}) {
		return rs
	}
	out := make([]keyRange, 0, len(rs))
	for _, r := range rs {
		if r.upto != (Key{}) && r.upto.Compare(cursor) <= 0 {
			continue // every key of it is <= cursor: copied before the restart
		}
		if r.after.Compare(cursor) < 0 {
			r.after = cursor
		}
		out = append(out, r)
	}
	return out
}

// watermark is a backfill's cursor: the upper bound of the longest prefix of its ranges that
// have all finished, so every key <= it has been copied. Streams finish ranges out of order (a
// slow range holds the watermark while the others go on), so the furthest batch of any stream
// is not a cursor. The last range has no upper bound: when it finishes the cursor stays at the
// previous bound, and the backfill is over anyway.
type watermark struct {
	mu     sync.Mutex
	ranges []keyRange
	done   []bool
	next   int // ranges[:next] have all finished
	cursor Key
}

// newWatermark tracks rs (in key order), whose keys are all after from (the cursor the
// backfill started with; zero for none).
func newWatermark(rs []keyRange, from Key) *watermark {
	return &watermark{ranges: rs, done: make([]bool, len(rs)), cursor: from}
}

// finish records that range i has been copied and returns the cursor.
func (w *watermark) finish(i int) Key {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done[i] = true
	for w.next < len(w.done) && w.done[w.next] {
		if up := w.ranges[w.next].upto; up != (Key{}) {
			w.cursor = up
		}
		w.next++
	}
	return w.cursor
}

// get returns the cursor.
func (w *watermark) get() Key {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cursor
}

// moveKey is k as the shard map records it.
func moveKey(k Key) shardmap.MoveKey { return shardmap.MoveKey{Collection: k.Collection, ID: k.ID} }

// keyOf is the map's k as a records key.
func keyOf(k shardmap.MoveKey) Key { return Key{Collection: k.Collection, ID: k.ID} }

// scanRanges runs work over rs on up to streams goroutines, each taking the next range in
// order when it finishes one; work gets the range's index in rs too. The first error cancels
// the others' context and is returned once every stream has stopped.
func scanRanges(ctx context.Context, streams int, rs []keyRange, work func(context.Context, int, keyRange) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type indexed struct {
		i int
		r keyRange
	}
	todo := make(chan indexed)
	var wg sync.WaitGroup
	for range min(streams, len(rs)) {
		wg.Go(func() {
			for t := range todo {
				if err := work(ctx, t.i, t.r); err != nil {
					cancel(err) // the first cause wins
					return
				}
			}
		})
	}
feed:
	for i, r := range rs {
		select {
		case todo <- indexed{i, r}:
		case <-ctx.Done():
			break feed
		}
	}
	close(todo)
	wg.Wait()
	return context.Cause(ctx)
}

// errScanDone is the cause a finished scan's context is cancelled with.
var errScanDone = errors.New("moves: scan done")

// backfill counts the source's rows, copies them over parallel key-range streams with progress
// recorded in the map as batches finish, and moves on to verify. With its progress it records
// the cursor (Move.CopiedUpTo: every key <= it copied); a backfill that starts with one (a
// controller restarted, a lease taken over, a step retried) copies only the keys after it and
// counts rows on from the recorded rows_copied. Safe because the dual write was on before the
// backfill began: a key copied before the restart and written since was mirrored (or is
// caught by verify), and the full verify pass that follows compares every key.
func (c *Controller) backfill(ctx context.Context, log *slog.Logger, mv shardmap.Move) error {
	total, err := c.cfg.Store.CountRows(ctx, mv.Tenant, mv.From)
	if err != nil {
		return fmt.Errorf("count rows: %w", err)
	}
	from := keyOf(mv.CopiedUpTo)
	resumed := from != (Key{})
	// base is the rows a resumed backfill copied before: the map's count, which may include
	// rows past the cursor (ranges that finished out of order, batches of unfinished ones);
	// those are copied and counted again.
	var base int64
	start := shardmap.MoveProgress{ID: mv.ID, RowsTotal: &total}
	if resumed {
		base = mv.RowsCopied
		total = max(total, base)
	} else {
		start.RowsCopied = &base
	}
	if err := c.apply(ctx, start); err != nil {
		return err
	}
	batch := c.cfg.BatchSize
	splits, err := c.cfg.Store.SplitKeys(ctx, mv.Tenant, mv.From, batch)
	if err != nil {
		return fmt.Errorf("split keys: %w", err)
	}
	ranges := rangesAfter(rangesOf(splits), from)
	if resumed {
		log.Info("backfill resumed after its cursor", "copied_up_to", from, "rows_copied", base, "rows_total", total,
			"ranges_left", len(ranges), "ranges_skipped", len(splits)+1-len(ranges), "streams", c.scanStreams())
	} else {
		log.Info("backfill started", "rows_total", total, "streams", c.scanStreams())
	}
	began := c.now()
	wm := newWatermark(ranges, from)

	var copied atomic.Int64
	progress := make(chan struct{}, 1)
	// throttleMu makes the streams wait for the rate cap one at a time, each for the rows all
	// of them have copied: the cap holds across streams (overshooting by at most a batch per
	// stream), and a stream never sleeps for rows another already slept for.
	var throttleMu sync.Mutex
	wake := func() {
		select {
		case progress <- struct{}{}:
		default: // the recorder has a wake-up pending and will read the latest count
		}
	}
	copyRange := func(ctx context.Context, r keyRange) error {
		after := r.after
		for {
			if err := c.stillIn(mv.ID, shardmap.PhaseBackfill); err != nil {
				return err
			}
			next, n, err := c.cfg.Store.CopyRange(ctx, mv.Tenant, mv.From, mv.To, after, r.upto, batch)
			if err != nil {
				return fmt.Errorf("copy batch after %v: %w", after, err)
			}
			if n > 0 {
				done := copied.Add(int64(n))
				c.m.rowsCopied.Add(float64(n))
				wake()
				throttleMu.Lock()
				err := c.throttle(ctx, began, done)
				throttleMu.Unlock()
				if err != nil {
					return err
				}
			}
			if n < batch || next == r.upto {
				return nil
			}
			after = next
		}
	}

	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	scanned := make(chan error, 1)
	go func() {
		err := scanRanges(sctx, c.scanStreams(), ranges, func(ctx context.Context, i int, r keyRange) error {
			if err := copyRange(ctx, r); err != nil {
				return err
			}
			wm.finish(i)
			wake() // the cursor may have moved
			return nil
		})
		cancel(errScanDone)
		scanned <- err
	}()
	// Progress is recorded here, one map command at a time, each with the count and the cursor
	// when it was sent: the streams never wait for the map. The cursor is read before the
	// count (a range's rows are counted before it finishes), so the rows a command says were
	// copied include every row up to the cursor it carries.
	recorded, recordedCursor := base, from
	record := func() error {
		cur := wm.get()
		n := base + copied.Load()
		if n == recorded && cur == recordedCursor {
			return nil
		}
		p := shardmap.MoveProgress{ID: mv.ID, RowsCopied: &n}
		if cur != recordedCursor {
			k := moveKey(cur)
			p.CopiedUpTo = &k
		}
		if n > total {
			// Writes during the backfill added rows: keep done <= total for the progress bar.
			total = n
			p.RowsTotal = &total
		}
		if err := c.apply(ctx, p); err != nil {
			return err
		}
		recorded, recordedCursor = n, cur
		return nil
	}
	for sctx.Err() == nil {
		select {
		case <-progress:
			if err := record(); err != nil {
				cancel(err)
			}
		case <-sctx.Done():
		}
	}
	if err := <-scanned; err != nil && !errors.Is(err, errScanDone) {
		return err
	}
	if err := context.Cause(sctx); !errors.Is(err, errScanDone) {
		return err // the recorder's error, or ctx's
	}
	if err := record(); err != nil {
		return err
	}
	if recorded < total {
		// Only after a resume: its recount took in rows written at or below the cursor since
		// the first run (the dual write carried them; this run copies after the cursor only).
		// The backfill is over: done is the total.
		if err := c.apply(ctx, shardmap.MoveProgress{ID: mv.ID, RowsTotal: &recorded}); err != nil {
			return err
		}
	}
	elapsed := c.now().Sub(began)
	log.Info("backfill finished; verify", "rows_copied", recorded, "seconds", elapsed.Seconds(), "rows_per_second", rate(recorded-base, elapsed))
	return c.apply(ctx, shardmap.SetMovePhase{ID: mv.ID, Phase: shardmap.PhaseVerify})
}

func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// throttle sleeps until copying rows since began keeps to RowsPerSecond.
func (c *Controller) throttle(ctx context.Context, began time.Time, rows int64) error {
	if c.cfg.RowsPerSecond <= 0 {
		return nil
	}
	want := time.Duration(float64(rows) / c.cfg.RowsPerSecond * float64(time.Second))
	return c.sleep(ctx, want-c.now().Sub(began))
}

// verifyPass compares every key of the tenant on both shards once, over ScanStreams parallel
// key ranges of about verifyRangeRows keys each (SplitKeys on the source; the ranges cover the
// target's extra keys too), each range one streamed CompareRange. When repair is set each
// range's differences are repaired (BatchSize keys a Repair) and recorded in the map as they
// are made. It returns how many differences it found.
func (c *Controller) verifyPass(ctx context.Context, mv shardmap.Move, repair bool) (int, error) {
	batch := c.cfg.BatchSize
	splits, err := c.cfg.Store.SplitKeys(ctx, mv.Tenant, mv.From, c.verifyRangeRows())
	if err != nil {
		return 0, fmt.Errorf("split keys: %w", err)
	}
	var found atomic.Int64
	var repairMu sync.Mutex // one read-modify-write of the map's repair count at a time
	compare := func(ctx context.Context, _ int, r keyRange) error {
		if err := c.stillIn(mv.ID, shardmap.PhaseVerify); err != nil {
			return err
		}
		diffs, _, err := c.cfg.Store.CompareRange(ctx, mv.Tenant, mv.From, mv.To, r.after, r.upto)
		if err != nil {
			return fmt.Errorf("compare range (%v, %v]: %w", r.after, r.upto, err)
		}
		found.Add(int64(len(diffs)))
		if !repair {
			return nil
		}
		for len(diffs) > 0 {
			part := diffs[:min(len(diffs), batch)]
			diffs = diffs[len(part):]
			n, err := c.cfg.Store.Repair(ctx, mv.Tenant, mv.From, mv.To, part)
			if err != nil {
				return fmt.Errorf("repair: %w", err)
			}
			if n == 0 {
				continue
			}
			c.m.repairs.Add(float64(n))
			if err := c.recordRepairs(ctx, &repairMu, mv.ID, n); err != nil {
				return err
			}
		}
		return nil
	}
	err = scanRanges(ctx, c.scanStreams(), rangesOf(splits), compare)
	return int(found.Load()), err
}

// recordRepairs adds n to the move's repair count in the map, one stream at a time.
func (c *Controller) recordRepairs(ctx context.Context, mu *sync.Mutex, id string, n int) error {
	mu.Lock()
	defer mu.Unlock()
	cur, ok := c.cfg.Map.Map().Move(id)
	if !ok {
		return errMapMovedOn
	}
	total := cur.Repairs + int64(n)
	return c.apply(ctx, shardmap.MoveProgress{ID: id, Repairs: &total})
}
