package moves

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/shardmap"
)

// step runs the one step of mv's current phase and records its outcome in the map (the next
// phase, or progress). Every step is idempotent: a controller that dies anywhere inside it
// repeats it from the start, and the store's primitives make the repeat harmless.
func (c *Controller) step(ctx context.Context, log *slog.Logger, mv shardmap.Move) error {
	start := c.now()
	observe := func(phase shardmap.Phase, err error) error {
		if err == nil {
			c.m.phaseSeconds.WithLabelValues(string(phase)).Observe(c.now().Sub(start).Seconds())
		}
		return err
	}
	switch mv.Phase {
	case shardmap.PhaseRequested:
		if err := c.checkSchemas(ctx, mv); err != nil {
			return err
		}
		// The target's tenant row exists, importing and fenced for clients, before any API
		// node mirrors to it.
		if err := c.cfg.Store.PrepareTarget(ctx, mv.Tenant, mv.From, mv.To); err != nil {
			return fmt.Errorf("prepare target: %w", err)
		}
		log.Info("target prepared; dual write")
		return observe(mv.Phase, c.apply(ctx, shardmap.SetMovePhase{ID: mv.ID, Phase: shardmap.PhaseDualWrite}))
	case shardmap.PhaseDualWrite:
		// API nodes learn of the move from their map copies; the backfill starts once they
		// have had time to (a write committed before a node mirrors is caught by verify).
		if c.cfg.PropagationDelay > 0 {
			if err := c.waitUntil(ctx, mv.UpdatedAt.Add(c.cfg.PropagationDelay)); err != nil {
				return err
			}
		}
		log.Info("backfill")
		return observe(mv.Phase, c.apply(ctx, shardmap.SetMovePhase{ID: mv.ID, Phase: shardmap.PhaseBackfill}))
	case shardmap.PhaseBackfill:
		return observe(mv.Phase, c.backfill(ctx, log, mv))
	case shardmap.PhaseVerify:
		return c.verifyAndCutover(ctx, log, mv)
	case shardmap.PhaseCutover:
		// The Cutover command is applied: the tenant is pinned to the target with its new
		// epoch. Record the pause if this process measured it (a restarted one did not).
		if at, ok := c.fenced(mv.ID); ok && mv.PauseMS == 0 {
			pause := c.now().Sub(at)
			ms := max(pause.Milliseconds(), 1)
			if err := c.apply(ctx, shardmap.MoveProgress{ID: mv.ID, PauseMS: &ms}); err != nil {
				return err
			}
			c.m.pause.Observe(pause.Seconds())
		} else if !ok {
			log.Warn("cutover pause unknown: the fence was set by an earlier controller; pause_ms stays 0")
		}
		log.Info("cut over; cleanup after the grace period", "grace", c.cfg.Grace)
		return c.apply(ctx, shardmap.SetMovePhase{ID: mv.ID, Phase: shardmap.PhaseCleanup})
	case shardmap.PhaseCleanup:
		// Requests routed on the old map have drained from the source by now; the epoch check
		// refuses any that have not.
		if err := c.waitUntil(ctx, mv.UpdatedAt.Add(c.cfg.Grace)); err != nil {
			return err
		}
		c.recordFirstWrite(ctx, log, mv)
		if err := c.cfg.Store.DropTenant(ctx, mv.Tenant, mv.From); err != nil {
			return fmt.Errorf("drop tenant on source: %w", err)
		}
		if err := c.apply(ctx, shardmap.SetMovePhase{ID: mv.ID, Phase: shardmap.PhaseDone}); err != nil {
			return err
		}
		c.markSettled(mv.ID)
		log.Info("move done", "rows_copied", mv.RowsCopied, "repairs", mv.Repairs, "pause_ms", mv.PauseMS,
			"duration", c.now().Sub(mv.CreatedAt).String())
		return observe(mv.Phase, nil)
	}
	return fmt.Errorf("moves: phase %q has no step", mv.Phase)
}

// verifyAndCutover runs a full verify pass (repairing what it finds), then delta passes over
// the keys written since (catchUp) until the target is caught up, then cuts over: fence the
// source, compare the keys written since the last pass until clean, finish the target, and
// apply the Cutover command. The map shows verify until that command, so a controller that
// dies anywhere in here repeats all of it: Fence, the passes, PrecopyTarget and FinishTarget
// are idempotent.
func (c *Controller) verifyAndCutover(ctx context.Context, log *slog.Logger, mv shardmap.Move) error {
	// An earlier attempt may have finished the target and not applied the Cutover (its lease
	// lapsed, it died, the command failed): then only the command is missing.
	route, err := c.cfg.Map.Map().Lookup(mv.Tenant)
	if err != nil {
		return fmt.Errorf("lookup %s: %w", mv.Tenant, err)
	}
	switch state, err := c.cfg.Store.ResumeTarget(ctx, mv.Tenant, mv.From, mv.To, route.Epoch+1); {
	case err != nil:
		return fmt.Errorf("resume target: %w", err)
	case state == records.TargetAhead:
		return errMapMovedOn // the Cutover committed; our map copy is behind
	case state == records.TargetFinished:
		log.Info("the target was finished by an earlier attempt; applying the cutover")
		return c.apply(ctx, shardmap.Cutover{ID: mv.ID})
	}
	start := c.now()
	// The mark before the pass: the pass covers every write up to it (delta.go).
	mark, err := c.cfg.Store.CommittedSeq(ctx, mv.Tenant, mv.From)
	if err != nil {
		return fmt.Errorf("read the source's change sequence: %w", err)
	}
	diffs, err := c.verifyPass(ctx, mv, true)
	if err != nil {
		return err
	}
	log.Info("verify pass", "pass", 1, "kind", "full", "differences", diffs, "mark", mark)
	mark, copied, err := c.catchUp(ctx, log, mv, mark, diffs)
	if err != nil {
		return err
	}
	c.m.phaseSeconds.WithLabelValues(string(shardmap.PhaseVerify)).Observe(c.now().Sub(start).Seconds())

	start = c.now()
	// The fence and the keys written since the last pass, in one round trip.
	seq, keys, err := c.cfg.Store.FenceDelta(ctx, mv.Tenant, mv.From, mark)
	pruned := errors.Is(err, records.ErrChangesPruned)
	if err != nil && !pruned {
		return fmt.Errorf("fence source: %w", err)
	}
	c.noteFence(mv.ID, start)
	fenced := c.now()
	repaired, err := c.finishUnderFence(ctx, mv, keys, pruned, seq, copied)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, errMapMovedOn) {
			// Lift the fence before retrying or failing, so held writes go back to the source
			// instead of timing out; the retry fences again. (A cancel is settled by settle.)
			if uerr := c.cfg.Store.Unfence(ctx, mv.Tenant, mv.From); uerr != nil {
				log.Warn("unfencing the source after a failed cutover failed", "err", uerr)
			} else {
				c.clearFence(mv.ID)
			}
		}
		return err
	}
	finished := c.now()
	if err := c.apply(ctx, shardmap.Cutover{ID: mv.ID}); err != nil {
		// Not unfenced: the command's outcome may be unknown, and a source unfenced after the
		// pin moved would take writes from nodes on the old epoch.
		return err
	}
	pause := c.now().Sub(start)
	c.m.phaseSeconds.WithLabelValues(string(shardmap.PhaseCutover)).Observe(pause.Seconds())
	// Where the pause went: the fence's transaction, the final delta and FinishTarget, the
	// Cutover command (Raft) until the controller's own map copy shows it.
	log.Info("cutover applied", "change_seq", seq, "delta", seq-mark, "repaired", repaired, "pause", pause.String(),
		"fence", fenced.Sub(start).String(), "verify_finish", finished.Sub(fenced).String(), "map", c.now().Sub(finished).String())
	if repaired > 0 {
		// A figure, not state: a controller that dies before this line loses these rows from
		// the count (the repairs themselves are done).
		if err := c.addRepairs(ctx, mv, repaired); err != nil && !errors.Is(err, errMapMovedOn) {
			log.Warn("recording the final delta's repairs failed", "repaired", repaired, "err", err)
		}
	}
	return nil
}

// finishUnderFence runs the final verify under the fence at change sequence seq — the delta
// over keys, or full passes when the source's outbox no longer held it (pruned) — and finishes
// the target with the epoch the Cutover command will give the tenant; copied is the mark of
// this process's last PrecopyTarget (-1: none).
// It returns the rows the final delta repaired, which the caller records after the cutover.
func (c *Controller) finishUnderFence(ctx context.Context, mv shardmap.Move, keys []Key, pruned bool, seq, copied int64) (repaired int, err error) {
	if pruned {
		if err := c.finalFull(ctx, mv); err != nil {
			return 0, err
		}
	} else if repaired, err = c.finalDelta(ctx, mv, keys); err != nil {
		return repaired, err
	}
	route, err := c.cfg.Map.Map().Lookup(mv.Tenant)
	if err != nil {
		return repaired, fmt.Errorf("lookup %s: %w", mv.Tenant, err)
	}
	epoch := route.Epoch + 1 // what the Cutover command will give the tenant
	finish := func() error { return c.cfg.Store.FinishTarget(ctx, mv.Tenant, mv.From, mv.To, epoch, seq) }
	if copied >= 0 {
		finish = func() error { return c.cfg.Store.FinishTargetFrom(ctx, mv.Tenant, mv.From, mv.To, epoch, seq, copied) }
	}
	if err := finish(); err != nil {
		return repaired, fmt.Errorf("finish target: %w", err)
	}
	return repaired, nil
}

// settle cleans up after a cancelled or failed move, once per process (and again after a
// restart: every step is idempotent). It touches nothing when the tenant no longer lives on the
// move's source or a newer move of the tenant exists, since the target may then hold live data.
func (c *Controller) settle(ctx context.Context, log *slog.Logger, mv shardmap.Move) error {
	m := c.cfg.Map.Map()
	route, err := m.Lookup(mv.Tenant)
	if err != nil {
		return err
	}
	newer := false
	for _, o := range m.Moves() {
		if o.Tenant == mv.Tenant && o.ID != mv.ID && o.CreatedAt.After(mv.CreatedAt) {
			newer = true
		}
	}
	if route.Shard != mv.From || newer {
		c.markSettled(mv.ID)
		return nil
	}
	// The source stays authoritative: lift a fence this or an earlier controller set.
	if err := c.cfg.Store.Unfence(ctx, mv.Tenant, mv.From); err != nil {
		return fmt.Errorf("unfence source: %w", err)
	}
	if err := c.cfg.Store.DropTenant(ctx, mv.Tenant, mv.To); err != nil {
		return fmt.Errorf("drop tenant on target: %w", err)
	}
	c.markSettled(mv.ID)
	log.Info("source authoritative, target dropped", "error", mv.Error)
	return nil
}

func (c *Controller) noteFence(id string, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.fenceAt[id]; !ok {
		// A repeated cutover step keeps the first fence: the pause began then.
		c.fenceAt[id] = at
	}
}

func (c *Controller) clearFence(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.fenceAt, id)
}

func (c *Controller) fenced(id string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.fenceAt[id]
	return at, ok
}

// Verify compares a tenant's rows on shards from and to once, without repairing, and returns
// the differing keys found (at most limit of them are kept; all are counted) and the keys
// compared. It is `rebalancer verify`, usable on any tenant at any time.
func Verify(ctx context.Context, st Store, tenant, from, to string, batch, limit int) (diffs int, sample []Key, checked int64, err error) {
	if batch <= 0 {
		batch = 1000
	}
	var after Key
	for {
		next, d, n, err := st.VerifyBatch(ctx, tenant, from, to, after, batch)
		if err != nil {
			return diffs, sample, checked, fmt.Errorf("verify batch after %v: %w", after, err)
		}
		if n == 0 {
			return diffs, sample, checked, nil
		}
		after = next
		checked += int64(n)
		diffs += len(d)
		for _, k := range d {
			if len(sample) < limit {
				sample = append(sample, k)
			}
		}
	}
}

// recordFirstWrite records the pause as clients saw it (fence -> first write accepted on the
// target) while the fenced source still exists to say when the fence was set. A failure only
// leaves the figure unknown.
func (c *Controller) recordFirstWrite(ctx context.Context, log *slog.Logger, mv shardmap.Move) {
	if mv.FirstWriteMS > 0 {
		return
	}
	pause, ok, err := c.cfg.Store.FirstWrite(ctx, mv.Tenant, mv.From, mv.To)
	switch {
	case err != nil:
		log.Warn("first write after the cutover unknown", "err", err)
		return
	case !ok:
		log.Info("no client write on the target yet: first_write_ms stays unknown")
		return
	}
	ms := max(pause.Milliseconds(), 1)
	if err := c.apply(ctx, shardmap.MoveProgress{ID: mv.ID, FirstWriteMS: &ms}); err != nil {
		log.Warn("recording first_write_ms failed", "err", err)
		return
	}
	c.m.firstWrite.Observe(pause.Seconds())
	log.Info("first write on the target", "after_fence", pause.String())
}

// checkSchemas refuses a move between databases at different schema versions (DESIGN.md §8):
// the copy, verify and mirror statements assume the same columns on both sides. It fails the
// move at once (ErrSchemaMismatch), before the target is prepared; the operator migrates the
// shard that is behind and requests the move again.
func (c *Controller) checkSchemas(ctx context.Context, mv shardmap.Move) error {
	from, err := c.cfg.Store.SchemaVersion(ctx, mv.From)
	if err != nil {
		return fmt.Errorf("schema version of %s: %w", mv.From, err)
	}
	to, err := c.cfg.Store.SchemaVersion(ctx, mv.To)
	if err != nil {
		return fmt.Errorf("schema version of %s: %w", mv.To, err)
	}
	if from != to {
		return fmt.Errorf("%w: %s is at version %d, %s at %d; migrate both to the same version and request the move again",
			ErrSchemaMismatch, mv.From, from, mv.To, to)
	}
	return nil
}
