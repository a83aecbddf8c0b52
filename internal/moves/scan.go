package moves

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/meridian-dev/meridian/shardmap"
)

// The two scans of a move over all of a tenant's keys: the backfill and a full verify pass.

// backfill counts the source's rows, copies them in key order with progress recorded after
// every batch, and moves on to verify. A restarted backfill starts again from the first key:
// the map keeps no cursor, and the version-guarded copy makes the repeat harmless.
func (c *Controller) backfill(ctx context.Context, log *slog.Logger, mv shardmap.Move) error {
	total, err := c.cfg.Store.CountRows(ctx, mv.Tenant, mv.From)
	if err != nil {
		return fmt.Errorf("count rows: %w", err)
	}
	var zero int64
	if err := c.apply(ctx, shardmap.MoveProgress{ID: mv.ID, RowsTotal: &total, RowsCopied: &zero}); err != nil {
		return err
	}
	log.Info("backfill started", "rows_total", total)
	began := c.now()
	var after Key
	var copied int64
	for {
		if err := c.stillIn(mv.ID, shardmap.PhaseBackfill); err != nil {
			return err
		}
		next, n, err := c.cfg.Store.CopyBatch(ctx, mv.Tenant, mv.From, mv.To, after, c.cfg.BatchSize)
		if err != nil {
			return fmt.Errorf("copy batch after %v: %w", after, err)
		}
		if n == 0 {
			break
		}
		after = next
		copied += int64(n)
		c.m.rowsCopied.Add(float64(n))
		p := shardmap.MoveProgress{ID: mv.ID, RowsCopied: &copied}
		if copied > total {
			// Writes during the backfill added rows: keep done <= total for the progress bar.
			total = copied
			p.RowsTotal = &total
		}
		if err := c.apply(ctx, p); err != nil {
			return err
		}
		if err := c.throttle(ctx, began, copied); err != nil {
			return err
		}
	}
	elapsed := c.now().Sub(began)
	log.Info("backfill finished; verify", "rows_copied", copied, "seconds", elapsed.Seconds(), "rows_per_second", rate(copied, elapsed))
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

// verifyPass compares every key of the tenant on both shards once, repairing differences
// batch by batch when repair is set, and returns how many it found. Repairs are recorded in the
// map after every batch that made some.
func (c *Controller) verifyPass(ctx context.Context, mv shardmap.Move, repair bool) (int, error) {
	var after Key
	found := 0
	for {
		if err := c.stillIn(mv.ID, shardmap.PhaseVerify); err != nil {
			return found, err
		}
		next, diffs, checked, err := c.cfg.Store.VerifyBatch(ctx, mv.Tenant, mv.From, mv.To, after, c.cfg.BatchSize)
		if err != nil {
			return found, fmt.Errorf("verify batch after %v: %w", after, err)
		}
		if checked == 0 {
			return found, nil
		}
		after = next
		found += len(diffs)
		if !repair || len(diffs) == 0 {
			continue
		}
		n, err := c.cfg.Store.Repair(ctx, mv.Tenant, mv.From, mv.To, diffs)
		if err != nil {
			return found, fmt.Errorf("repair: %w", err)
		}
		if n == 0 {
			continue
		}
		c.m.repairs.Add(float64(n))
		cur, ok := c.cfg.Map.Map().Move(mv.ID)
		if !ok {
			return found, errMapMovedOn
		}
		total := cur.Repairs + int64(n)
		if err := c.apply(ctx, shardmap.MoveProgress{ID: mv.ID, Repairs: &total}); err != nil {
			return found, err
		}
	}
}
