package moves

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/shardmap"
)

// The delta verify keeps the cutover's pause independent of the tenant's size.
//
// A verify pass that begins when the source's committed change sequence is M leaves every key
// whose last write has a sequence <= M equal on both sides: the pass reads such a key after
// that write committed and repairs any difference, a later mirror of an older write is
// version-guarded, and a repair touches only the keys it was given. So the next pass need only
// compare the keys written in (M, now], which the source's outbox lists (ChangedKeys). Under
// the fence the delta is the writes since the last pass, a handful when the passes before the
// fence kept up, and the final verify costs a few round trips instead of a scan of the tenant.

// catchUp runs after a full verify pass that began at mark: delta passes, and PrecopyTarget,
// until the last pass found at most VerifyThreshold differences (the lag pre-check) with at most
// MaxFinalDelta writes pending. Where the passes cannot get the pending writes that low — each
// pass takes round trips to a distant target while the tenant keeps writing, so the pending
// count settles where the write rate times a pass's time puts it — it cuts over once that count
// has stopped shrinking for stallPasses passes, if it is at most stallFactor × MaxFinalDelta
// (the pause is then that many keys' worth longer; beyond that it keeps trying and logs each
// pass, the "verify never converges" case of docs/moves.md). PrecopyTarget runs first and again
// whenever it trails by more than copyFactor × MaxFinalDelta writes. It returns the mark the
// next delta starts from, and the mark of the last PrecopyTarget (the importing copy's
// change_seq, for FinishTargetFrom).
func (c *Controller) catchUp(ctx context.Context, log *slog.Logger, mv shardmap.Move, mark int64, diffs int) (next, copied int64, err error) {
	copied = -1
	best, stalls := int64(math.MaxInt64), 0
	for pass := 2; ; pass++ {
		if err := c.stillIn(mv.ID, shardmap.PhaseVerify); err != nil {
			return mark, copied, err
		}
		var upto int64
		upto, err = c.cfg.Store.CommittedSeq(ctx, mv.Tenant, mv.From)
		if err != nil {
			return mark, copied, fmt.Errorf("read the source's change sequence: %w", err)
		}
		if copied < 0 || upto-copied > copyFactor*c.cfg.MaxFinalDelta {
			// Not `continue` after it: writes during the copy must not keep the delta passes
			// from running (a livelock found by `bench -scenario moves`).
			if copied, err = c.cfg.Store.PrecopyTarget(ctx, mv.Tenant, mv.From, mv.To); err != nil {
				return mark, copied, fmt.Errorf("precopy outbox and idempotency keys: %w", err)
			}
			log.Info("outbox and idempotency keys copied ahead of the fence", "change_seq", copied)
			// The copy took time: judge what is pending by the sequence now.
			if upto, err = c.cfg.Store.CommittedSeq(ctx, mv.Tenant, mv.From); err != nil {
				return mark, copied, fmt.Errorf("read the source's change sequence: %w", err)
			}
		}
		pending := upto - mark
		if diffs <= c.cfg.VerifyThreshold && pending <= c.cfg.MaxFinalDelta {
			return mark, copied, nil
		}
		if pending <= stallFactor*c.cfg.MaxFinalDelta {
			if pending < best {
				best, stalls = pending, 0
			} else if stalls++; stalls >= stallPasses {
				log.Info("pending writes no longer shrink; cutting over with them", "pending", pending, "max_final_delta", c.cfg.MaxFinalDelta)
				return mark, copied, nil
			}
		}
		var checked, d int
		checked, d, err = c.deltaPass(ctx, mv, mark, upto)
		if errors.Is(err, records.ErrChangesPruned) {
			log.Warn("the source's outbox no longer holds the delta; a full pass instead", "after", mark, "upto", upto)
			if d, err = c.verifyPass(ctx, mv, true); err != nil {
				return mark, copied, err
			}
			mark, diffs = upto, d
			continue
		}
		if err != nil {
			return mark, copied, err
		}
		log.Info("verify pass", "pass", pass, "kind", "delta", "after", mark, "upto", upto, "keys", checked, "differences", d)
		mark, diffs = upto, d
	}
}

// The catch-up's bounds, in multiples of MaxFinalDelta (see catchUp).
const (
	copyFactor  = 4
	stallFactor = 20
	stallPasses = 3
)

// deltaPass compares the keys written in (after, upto] on the source, repairing differences,
// and returns how many keys it compared and how many differed.
func (c *Controller) deltaPass(ctx context.Context, mv shardmap.Move, after, upto int64) (checked, diffs int, err error) {
	keys, err := c.cfg.Store.ChangedKeys(ctx, mv.Tenant, mv.From, after, upto)
	if err != nil {
		return 0, 0, fmt.Errorf("changed keys in (%d, %d]: %w", after, upto, err)
	}
	d, err := c.cfg.Store.VerifyKeys(ctx, mv.Tenant, mv.From, mv.To, keys)
	if err != nil {
		return len(keys), 0, fmt.Errorf("verify keys: %w", err)
	}
	if err := c.repair(ctx, mv, d); err != nil {
		return len(keys), len(d), err
	}
	return len(keys), len(d), nil
}

// finalDelta runs under the fence: keys are the ones the writes since the last pass wrote
// (FenceDelta). It compares them, then the repaired keys again, until a comparison finds
// nothing (at most FinalVerifyPasses of them). Nothing writes the source now, so a repair
// cannot race with a write and one round normally suffices; the second comparison confirms it.
// The rows it repairs are returned, not recorded in the map: a Raft command under the fence
// would lengthen the pause; the caller records them after the cutover.
func (c *Controller) finalDelta(ctx context.Context, mv shardmap.Move, keys []Key) (repaired int, err error) {
	for pass := 1; pass <= c.cfg.FinalVerifyPasses; pass++ {
		diffs, err := c.cfg.Store.VerifyKeys(ctx, mv.Tenant, mv.From, mv.To, keys)
		if err != nil {
			return repaired, fmt.Errorf("verify keys: %w", err)
		}
		if len(diffs) == 0 {
			return repaired, nil
		}
		c.log.Info("final verify pass repaired differences", "move_id", mv.ID, "pass", pass, "kind", "delta", "differences", len(diffs))
		n, err := c.repairRows(ctx, mv, diffs)
		repaired += n
		if err != nil {
			return repaired, err
		}
		keys = diffs
	}
	return repaired, fmt.Errorf("%w: differences remain after %d passes under the fence", ErrNotConverging, c.cfg.FinalVerifyPasses)
}

// finalFull is the final verify as full passes, for when the outbox cannot give the delta.
func (c *Controller) finalFull(ctx context.Context, mv shardmap.Move) error {
	for pass := 1; pass <= c.cfg.FinalVerifyPasses; pass++ {
		diffs, err := c.verifyPass(ctx, mv, true)
		if err != nil {
			return err
		}
		if diffs == 0 {
			return nil
		}
		c.log.Info("final verify pass repaired differences", "move_id", mv.ID, "pass", pass, "kind", "full", "differences", diffs)
	}
	return fmt.Errorf("%w: differences remain after %d passes under the fence", ErrNotConverging, c.cfg.FinalVerifyPasses)
}

// repair makes the target's rows of keys equal to the source's and records the rows it
// changed in the map.
func (c *Controller) repair(ctx context.Context, mv shardmap.Move, keys []Key) error {
	n, err := c.repairRows(ctx, mv, keys)
	if err != nil || n == 0 {
		return err
	}
	return c.addRepairs(ctx, mv, n)
}

// repairRows makes the target's rows of keys equal to the source's and counts them in the
// metric; it does not touch the map.
func (c *Controller) repairRows(ctx context.Context, mv shardmap.Move, keys []Key) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	n, err := c.cfg.Store.Repair(ctx, mv.Tenant, mv.From, mv.To, keys)
	if err != nil {
		return 0, fmt.Errorf("repair: %w", err)
	}
	c.m.repairs.Add(float64(n))
	return n, nil
}

// addRepairs adds n repaired rows to the move's count in the map.
func (c *Controller) addRepairs(ctx context.Context, mv shardmap.Move, n int) error {
	cur, ok := c.cfg.Map.Map().Move(mv.ID)
	if !ok {
		return errMapMovedOn
	}
	total := cur.Repairs + int64(n)
	return c.apply(ctx, shardmap.MoveProgress{ID: mv.ID, Repairs: &total})
}
