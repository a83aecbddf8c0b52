package moves

import (
	"context"
	"github.com/meridian-dev/meridian/internal/records"
	"time"

	"github.com/meridian-dev/meridian/shardmap"
)

// Key is a record's primary key within a tenant, ordered by (Collection, ID) in "C" collation:
// the records store's key, so *pgstore.Store is a Store as it is. The zero Key sorts before
// every record.
type Key = records.Key

// MapClient is what the controller needs of the shard map: *shardmap.Client satisfies it.
type MapClient interface {
	// Map is the latest known map; never nil.
	Map() *shardmap.Map
	// Apply sends a command and returns the Raft index it was applied at.
	Apply(ctx context.Context, cmd shardmap.Command) (uint64, error)
	// WaitVersion blocks until Map().Version() >= v.
	WaitVersion(ctx context.Context, v uint64) error
}

var _ MapClient = (*shardmap.Client)(nil)

// Store is the records store's move primitives (docs/internal-contracts.md, "Records store").
// It has more methods than an interface here usually does because it is one contract with one
// implementation (pgstore) whose steps the controller sequences; splitting it would only spread
// that contract over several names. Every method must be idempotent: the controller repeats a
// step whose outcome it did not record.
//
// A scan (CopyBatch, VerifyBatch) starts after the zero Key and continues after the returned
// next key; a batch that returns 0 rows (copied or checked) ends it.
type Store interface {
	// Scanner's range methods run the backfill and full verify passes as parallel streams.
	Scanner
	// PrepareTarget creates the tenant's row on shard to: status importing, fenced for clients.
	PrepareTarget(ctx context.Context, tenant, from, to string) error
	// SchemaVersion is the schema version (the highest migration applied) of shard's database,
	// read on its primary.
	SchemaVersion(ctx context.Context, shard string) (int64, error)
	// CountRows counts the tenant's rows (tombstones included) on shard.
	CountRows(ctx context.Context, tenant, shard string) (int64, error)
	// CopyBatch copies up to limit rows after key after, version-guarded.
	CopyBatch(ctx context.Context, tenant, from, to string, after Key, limit int) (next Key, copied int, err error)
	// VerifyBatch compares up to limit keys after after on both sides and returns the differing
	// ones; checked counts the keys compared (from either side).
	VerifyBatch(ctx context.Context, tenant, from, to string, after Key, limit int) (next Key, diffs []Key, checked int, err error)
	// Repair makes the target's rows of keys equal to the source's, deleting target rows the
	// source lacks, and returns how many rows it changed.
	Repair(ctx context.Context, tenant, from, to string, keys []Key) (int, error)
	// Fence stops client writes of the tenant on shard (in a transaction) and returns the
	// tenant's change sequence there; a fenced tenant answers the same sequence again.
	Fence(ctx context.Context, tenant, shard string) (changeSeq int64, err error)
	// FenceDelta is Fence and then ChangedKeys(after, the fenced change sequence) in one round
	// trip; on an error wrapping records.ErrChangesPruned the fence is set and changeSeq valid.
	FenceDelta(ctx context.Context, tenant, shard string, after int64) (changeSeq int64, keys []Key, err error)
	// Unfence lets client writes of the tenant on shard through again.
	Unfence(ctx context.Context, tenant, shard string) error
	// FinishTarget makes the target row active with write epoch epoch and change sequence
	// changeSeq, and copies the tenant's idempotency keys and outbox rows.
	FinishTarget(ctx context.Context, tenant, from, to string, epoch uint64, changeSeq int64) error
	// ResumeTarget says what an earlier cutover attempt left on the target (the map still
	// before the Cutover command): records.TargetFinished when only the Cutover is missing,
	// records.TargetAhead when the Cutover committed, else records.TargetImporting (a finished
	// target the source moved on from is turned back into an importing copy).
	ResumeTarget(ctx context.Context, tenant, from, to string, epoch uint64) (records.TargetState, error)
	// FinishTargetFrom is FinishTarget for a caller that knows the mark its PrecopyTarget
	// returned (fewer round trips); the store falls back to FinishTarget when the mark is stale.
	FinishTargetFrom(ctx context.Context, tenant, from, to string, epoch uint64, changeSeq, mark int64) error
	// DropTenant deletes the tenant's rows (and its tenant row) on shard.
	DropTenant(ctx context.Context, tenant, shard string) error

	// The delta verify (docs/moves.md, "The cutover"):

	// CommittedSeq is the tenant's committed change sequence on shard's primary.
	CommittedSeq(ctx context.Context, tenant, shard string) (int64, error)
	// ChangedKeys returns the distinct keys the tenant's writes with change sequence in
	// (after, upto] wrote on shard, in key order; an error wrapping records.ErrChangesPruned
	// when the shard no longer holds every one of those changes.
	ChangedKeys(ctx context.Context, tenant, shard string, after, upto int64) ([]Key, error)
	// VerifyKeys compares keys on both sides and returns the differing ones.
	VerifyKeys(ctx context.Context, tenant, from, to string, keys []Key) ([]Key, error)
	// PrecopyTarget copies the tenant's outbox and Idempotency-Key rows up to the source's
	// change sequence (returned) to the importing target, so FinishTarget copies only newer ones.
	PrecopyTarget(ctx context.Context, tenant, from, to string) (mark int64, err error)
	// FirstWrite is the time from the source's fence to the first client write on the target
	// (ok false while either is unknown).
	FirstWrite(ctx context.Context, tenant, from, to string) (pause time.Duration, ok bool, err error)
}

// Lease is the map lease that makes one controller the active one.
type Lease interface {
	// Acquire takes or renews the lease name for holder until ttl from now. It returns an error
	// wrapping ErrLeaseHeld while another holder's lease has not expired.
	Acquire(ctx context.Context, name, holder string, ttl time.Duration) error
	// Release gives the lease up if holder has it, so a standby need not wait for the TTL.
	Release(ctx context.Context, name, holder string) error
}

// Pruner removes terminal moves last updated before a time (the map's PruneMoves command).
type Pruner interface {
	PruneMoves(ctx context.Context, before time.Time) error
}

// Scanner is the part of Store the two full scans of a move (backfill, full verify pass) use to
// run as parallel key-range streams. SplitKeys's keys cut the key space into ranges
// (zero, k1], (k1, k2], …, (kn, ∞) that cover every key exactly once; CopyRange and
// CompareRange keep CopyBatch's and VerifyBatch's contracts (version guard, tombstones, both
// sides compared over the same keys) within one range. A zero upto is no upper bound.
type Scanner interface {
	// SplitKeys returns the key of every every-th row of tenant on shard (tombstones
	// included), ascending.
	SplitKeys(ctx context.Context, tenant, shard string, every int) ([]Key, error)
	// CopyRange copies up to limit rows in (after, upto], version-guarded; copied < limit means
	// the range is done.
	CopyRange(ctx context.Context, tenant, from, to string, after, upto Key, limit int) (next Key, copied int, err error)
	// CompareRange compares every key in (after, upto] on both sides, each side read as one
	// stream, and returns the differing ones in key order and how many distinct keys it
	// compared.
	CompareRange(ctx context.Context, tenant, from, to string, after, upto Key) (diffs []Key, checked int, err error)
}
