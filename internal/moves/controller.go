package moves

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-dev/meridian/shardmap"
)

// LeaseName is the map lease the active controller holds.
const LeaseName = "rebalancer"

// Config configures a Controller. Durations and counts document what their zero value means.
type Config struct {
	Map   MapClient // required
	Store Store     // required
	Lease Lease     // required
	// Pruner removes finished moves older than Retention; nil = this controller prunes nothing.
	Pruner Pruner
	// Holder names this controller in the lease; "" = "<hostname>-<pid>".
	Holder string

	// BatchSize is the rows per CopyBatch and VerifyBatch; 0 = 1000.
	BatchSize int
	// ScanStreams is how many key ranges the backfill and a full verify pass work on at once
	// (a backfill range is about BatchSize keys, a verify range VerifyRangeRows); 0 = 4. Each
	// stream holds up to one connection to each shard of the move.
	ScanStreams int
	// VerifyRangeRows is about how many keys a full verify pass compares in one streamed
	// CompareRange; 0 = 10 × BatchSize.
	VerifyRangeRows int
	// RowsPerSecond caps a move's backfill rate; 0 = unlimited. Verify passes are not capped.
	RowsPerSecond float64
	// VerifyThreshold is the most differences a verify pass may find for the move to cut over
	// (the lag pre-check); 0 = 10, < 0 = the pass must be clean.
	VerifyThreshold int
	// FinalVerifyPasses bounds the verify passes under the fence (each repairs what it finds;
	// one must find nothing) before the move fails; 0 = 3.
	FinalVerifyPasses int
	// MaxFinalDelta is the most writes of the tenant that may be left to compare when the
	// source is fenced (the delta passes before the fence run until no more are pending, and
	// PrecopyTarget is repeated until it trails by no more); 0 = 50. The pause grows with it.
	MaxFinalDelta int64
	// PropagationDelay is how long after dual_write is recorded the backfill starts, so every
	// API node's map shows the move and mirrors writes; 0 = 2 s, < 0 = no wait.
	PropagationDelay time.Duration
	// Grace is the wait between the cutover and dropping the tenant on the source; 0 = 10 s.
	Grace time.Duration
	// Retention is how long finished moves stay in the map; 0 = 7 days.
	Retention time.Duration
	// LeaseTTL is the lease's lifetime per renewal; 0 = 10 s. RenewEvery is the renewal
	// interval; 0 = 3 s. A controller stops driving moves when LeaseTTL - RenewEvery has passed
	// since its last successful renewal, before a standby can take the lease over.
	LeaseTTL, RenewEvery time.Duration
	// PollInterval is the longest the scheduler waits for a map change; 0 = 1 s.
	PollInterval time.Duration
	// MaxConcurrent is how many tenants' moves are driven at once; 0 = 4. A tenant's moves are
	// always driven one at a time, oldest first.
	MaxConcurrent int
	// MaxAttempts is how many times a failing step before the cutover is tried before the
	// move fails; 0 = 5. After the Cutover command, steps are retried without limit.
	MaxAttempts int
	// RetryBackoff is the wait after a failed step, growing linearly to 10×; 0 = 1 s.
	RetryBackoff time.Duration

	Logger     *slog.Logger          // nil = slog.Default()
	Registerer prometheus.Registerer // nil = no metrics registered
	Now        func() time.Time      // nil = time.Now
}

// Controller drives the moves recorded in the shard map while it holds the lease.
type Controller struct {
	cfg   Config
	log   *slog.Logger
	m     *metrics
	sleep func(context.Context, time.Duration) error // replaced by tests with a fake clock

	// mu guards the fields below: per-process bookkeeping that a restart may lose.
	mu      sync.Mutex
	tenants map[string]string    // tenant -> id of the move being driven or settled
	settled map[string]bool      // terminal moves whose leftovers this process cleaned up
	fenceAt map[string]time.Time // move -> when this process set its fence (for the pause)
}

// New checks cfg, fills in defaults and returns a Controller; call Run.
func New(cfg Config) (*Controller, error) {
	if cfg.Map == nil || cfg.Store == nil || cfg.Lease == nil {
		return nil, fmt.Errorf("%w: Map, Store and Lease are required", ErrBadConfig)
	}
	if cfg.Holder == "" {
		host, _ := os.Hostname()
		cfg.Holder = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 1000
	}
	if cfg.VerifyThreshold == 0 {
		cfg.VerifyThreshold = 10
	} else if cfg.VerifyThreshold < 0 {
		cfg.VerifyThreshold = 0
	}
	if cfg.FinalVerifyPasses <= 0 {
		cfg.FinalVerifyPasses = 3
	}
	if cfg.MaxFinalDelta <= 0 {
		cfg.MaxFinalDelta = 50
	}
	def(&cfg.PropagationDelay, 2*time.Second)
	def(&cfg.Grace, 10*time.Second)
	def(&cfg.Retention, 7*24*time.Hour)
	def(&cfg.LeaseTTL, 10*time.Second)
	def(&cfg.RenewEvery, 3*time.Second)
	def(&cfg.PollInterval, time.Second)
	def(&cfg.RetryBackoff, time.Second)
	if cfg.RenewEvery >= cfg.LeaseTTL {
		return nil, fmt.Errorf("%w: RenewEvery %s must be shorter than LeaseTTL %s", ErrBadConfig, cfg.RenewEvery, cfg.LeaseTTL)
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 4
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger.With("component", "moves", "holder", cfg.Holder)
	return &Controller{cfg: cfg, log: log, m: newMetrics(cfg.Registerer, log), sleep: sleepCtx,
		tenants: map[string]string{}, settled: map[string]bool{}, fenceAt: map[string]time.Time{}}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (c *Controller) now() time.Time { return c.cfg.Now() }

// Run waits for the lease, drives moves while it holds it, and goes back to waiting when it
// loses it, until ctx ends; then it releases the lease and returns ctx.Err().
func (c *Controller) Run(ctx context.Context) error {
	for {
		acquired, err := c.waitLease(ctx)
		if err != nil {
			return err
		}
		c.lead(ctx, acquired)
		if ctx.Err() != nil {
			// A clean stop hands over at once instead of after the TTL.
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if err := c.cfg.Lease.Release(rctx, LeaseName, c.cfg.Holder); err != nil {
				c.log.Warn("lease not released", "err", err)
			}
			cancel()
			return ctx.Err()
		}
	}
}

// waitLease tries to take the lease every RenewEvery and returns when it has it; the time is
// when the successful request was sent (the lease runs from no earlier than that).
func (c *Controller) waitLease(ctx context.Context) (time.Time, error) {
	standby := false
	for {
		sent := c.now()
		actx, cancel := context.WithTimeout(ctx, c.cfg.RenewEvery)
		err := c.cfg.Lease.Acquire(actx, LeaseName, c.cfg.Holder, c.cfg.LeaseTTL)
		cancel()
		if err == nil {
			c.log.Info("lease acquired; driving moves")
			return sent, nil
		}
		if ctx.Err() != nil {
			return time.Time{}, ctx.Err()
		}
		if errors.Is(err, ErrLeaseHeld) {
			if !standby {
				c.log.Info("standby: another controller holds the lease", "err", err)
				standby = true
			}
		} else {
			c.log.Warn("lease not acquired", "err", err)
		}
		if err := sleepCtx(ctx, c.cfg.RenewEvery); err != nil {
			return time.Time{}, err
		}
	}
}

// lead drives moves until ctx ends or the lease is lost, and returns once every driver it
// started has stopped (so a lost lease never overlaps with this controller's own work).
func (c *Controller) lead(ctx context.Context, acquired time.Time) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.m.leaseHeld.Set(1)
	defer c.m.leaseHeld.Set(0)
	defer c.m.active.Set(0)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer cancel()
		c.renew(lctx, acquired)
	}()
	c.schedule(lctx, &wg)
	wg.Wait()
}

// renew renews the lease every RenewEvery and returns when it is lost or about to expire
// unrenewed.
func (c *Controller) renew(ctx context.Context, last time.Time) {
	t := time.NewTicker(c.cfg.RenewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sent := c.now()
		actx, cancel := context.WithTimeout(ctx, c.cfg.RenewEvery)
		err := c.cfg.Lease.Acquire(actx, LeaseName, c.cfg.Holder, c.cfg.LeaseTTL)
		cancel()
		switch {
		case err == nil:
			last = sent
		case ctx.Err() != nil:
			return
		case errors.Is(err, ErrLeaseHeld):
			c.log.Warn("lease lost; back to standby", "err", err)
			return
		default:
			// Stop with one renewal interval to spare: the lease runs from when the map node
			// stamped the command, which is no earlier than sent, give or take clock skew.
			if c.now().Sub(last) >= c.cfg.LeaseTTL-c.cfg.RenewEvery {
				c.log.Warn("lease not renewed in time; back to standby", "err", err)
				return
			}
			c.log.Warn("lease renewal failed", "err", err)
		}
	}
}

// schedule starts a driver for every move that needs one, oldest first, at most one per tenant
// and MaxConcurrent in all, and prunes finished moves, until ctx ends.
func (c *Controller) schedule(ctx context.Context, wg *sync.WaitGroup) {
	var lastPrune time.Time
	for ctx.Err() == nil {
		m := c.cfg.Map.Map()
		moves := m.Moves()
		slices.SortFunc(moves, func(a, b shardmap.Move) int {
			if d := a.CreatedAt.Compare(b.CreatedAt); d != 0 {
				return d
			}
			return compareIDs(a.ID, b.ID)
		})
		active := 0
		for _, mv := range moves {
			if !mv.Phase.Terminal() {
				active++
			}
			if mv.Phase == shardmap.PhaseDone || c.isSettled(mv.ID) {
				continue
			}
			if !c.claim(mv) {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.unclaim(mv)
				c.drive(ctx, mv.ID)
			}()
		}
		c.m.active.Set(float64(active))
		if c.cfg.Pruner != nil && c.now().Sub(lastPrune) >= pruneEvery {
			before := c.now().Add(-c.cfg.Retention)
			if err := c.cfg.Pruner.PruneMoves(ctx, before); err != nil && ctx.Err() == nil {
				c.log.Warn("pruning finished moves failed", "err", err)
			} else {
				lastPrune = c.now()
			}
		}
		wctx, cancel := context.WithTimeout(ctx, c.cfg.PollInterval)
		_ = c.cfg.Map.WaitVersion(wctx, m.Version()+1)
		cancel()
	}
}

// pruneEvery is how often the leading controller prunes finished moves.
const pruneEvery = 10 * time.Minute

// compareIDs orders move ids "mv-<index>" by index when both have that form.
func compareIDs(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// claim reserves mv's tenant for one driver; false when its tenant already has one or the
// concurrency limit is reached.
func (c *Controller) claim(mv shardmap.Move) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, busy := c.tenants[mv.Tenant]; busy || len(c.tenants) >= c.cfg.MaxConcurrent {
		return false
	}
	c.tenants[mv.Tenant] = mv.ID
	return true
}

func (c *Controller) unclaim(mv shardmap.Move) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.tenants, mv.Tenant)
}

func (c *Controller) isSettled(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.settled[id]
}

func (c *Controller) markSettled(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.settled[id] = true
	delete(c.fenceAt, id)
}

// drive runs move id's steps until it is terminal and settled, or ctx ends.
func (c *Controller) drive(ctx context.Context, id string) {
	attempts := 0
	for ctx.Err() == nil {
		m := c.cfg.Map.Map()
		mv, ok := m.Move(id)
		if !ok {
			return // pruned
		}
		log := c.log.With("move_id", mv.ID, "tenant", mv.Tenant, "from", mv.From, "to", mv.To, "phase", string(mv.Phase))
		if mv.Phase.Terminal() {
			if err := c.settle(ctx, log, mv); err != nil {
				if ctx.Err() == nil {
					log.Warn("cleaning up after the move failed; retrying", "err", err)
					_ = c.sleep(ctx, c.cfg.RetryBackoff)
				}
				return // the scheduler starts a new driver on its next pass
			}
			return
		}
		err := c.step(ctx, log, mv)
		if err == nil {
			attempts = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errMapMovedOn) {
			// Our copy of the map may lag the command that moved it on: wait for a newer one.
			wctx, cancel := context.WithTimeout(ctx, c.cfg.PollInterval)
			_ = c.cfg.Map.WaitVersion(wctx, m.Version()+1)
			cancel()
			continue
		}
		attempts++
		c.m.stepErrors.WithLabelValues(string(mv.Phase)).Inc()
		log.Warn("move step failed", "err", err, "attempt", attempts)
		if beforeCutover(mv.Phase) && (attempts >= c.cfg.MaxAttempts || errors.Is(err, ErrNotConverging) || errors.Is(err, ErrSchemaMismatch)) {
			c.fail(ctx, log, mv, err)
			attempts = 0
			continue
		}
		_ = c.sleep(ctx, c.cfg.RetryBackoff*time.Duration(min(attempts, 10)))
	}
}

func beforeCutover(p shardmap.Phase) bool {
	switch p {
	case shardmap.PhaseRequested, shardmap.PhaseDualWrite, shardmap.PhaseBackfill, shardmap.PhaseVerify:
		return true
	}
	return false
}

// fail records the move as failed; settle then restores the source.
func (c *Controller) fail(ctx context.Context, log *slog.Logger, mv shardmap.Move, cause error) {
	log.Error("move failed", "err", cause)
	if err := c.apply(ctx, shardmap.SetMovePhase{ID: mv.ID, Phase: shardmap.PhaseFailed, Error: cause.Error()}); err != nil && !errors.Is(err, errMapMovedOn) {
		log.Warn("recording the failure failed", "err", err)
	}
}

// apply applies cmd and waits until the local map shows it. A rule violation about the move
// (its phase changed, it is gone) is errMapMovedOn.
func (c *Controller) apply(ctx context.Context, cmd shardmap.Command) error {
	idx, err := c.cfg.Map.Apply(ctx, cmd)
	if errors.Is(err, shardmap.ErrBadPhaseTransition) || errors.Is(err, shardmap.ErrUnknownMove) {
		return fmt.Errorf("%w: %v", errMapMovedOn, err)
	}
	if err != nil {
		return fmt.Errorf("map: %T: %w", cmd, err)
	}
	return c.cfg.Map.WaitVersion(ctx, idx)
}

// stillIn returns errMapMovedOn when the local map no longer shows move id in phase p.
func (c *Controller) stillIn(id string, p shardmap.Phase) error {
	mv, ok := c.cfg.Map.Map().Move(id)
	if !ok || mv.Phase != p {
		return errMapMovedOn
	}
	return nil
}

// waitUntil sleeps until t by the controller's clock.
func (c *Controller) waitUntil(ctx context.Context, t time.Time) error {
	return c.sleep(ctx, t.Sub(c.now()))
}
