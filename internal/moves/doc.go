// Package moves drives online tenant moves (DESIGN.md §8): the controller that takes each move
// recorded in the shard map through requested → dual_write → backfill → verify → cutover →
// cleanup → done, a standalone verify, and the planner that proposes moves.
//
// The controller owns the order of the steps, never their mechanics: every database step is a
// call on Store (the records store's move primitives), every state change is a command applied
// to the shard map through MapClient, and only the holder of the map lease "rebalancer" drives
// moves. Each step is idempotent and its outcome is recorded in the map before the next step
// starts, so a controller killed at any point and restarted (or a standby taking over) resumes
// from the map alone. The package must never write to Postgres itself, hold state that a
// restart needs, or decide routing.
//
// Tests use a real single-node shard map and fakes of Store and Lease (the package's own
// interfaces); system tests use pgstore and the map lease.
package moves

import "errors"

var (
	// ErrLeaseHeld is returned by Lease.Acquire when another holder has an unexpired lease.
	// Adapters wrap the map's own error with it.
	ErrLeaseHeld = errors.New("moves: lease held by another controller")
	// ErrNotConverging is recorded as a move's error when the final verify under the fence
	// still finds differences after Config.FinalVerifyPasses passes.
	ErrNotConverging = errors.New("moves: final verify did not converge")
	// ErrSchemaMismatch is recorded as a move's error when the source's and the target's
	// databases are at different schema versions (DESIGN.md §8): the move fails at once,
	// before the target is touched.
	ErrSchemaMismatch = errors.New("moves: source and target schema versions differ")
	// ErrBadConfig is returned by New for a config without its required parts.
	ErrBadConfig = errors.New("moves: bad config")
)

// errMapMovedOn says the move's phase in the map is no longer the one the step started in (the
// admin API cancelled it, another controller advanced it, it was pruned): the driver re-reads
// the map and continues from whatever it says.
var errMapMovedOn = errors.New("moves: move changed in the map")
