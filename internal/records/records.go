// Package records is the vocabulary of the API node's records store: what a request asks of
// Postgres (a Target, ReadOptions, a ListQuery, a WriteOp) and what it gets back (Record, Page,
// ReadInfo, WriteResult, TenantRow), with the store's sentinel errors in one var block. The store
// itself — every pgx transaction and batch the node runs — is internal/records/pgstore.
//
// This package is deliberately free of pgx (and of replication, which imports it): the HTTP
// layer, internal/api, names these types and errors and must not depend on a database driver
// (its test checks `go list -deps`). It must never grow I/O, SQL or HTTP: it holds plain data
// and errors. The store's behaviour is tested in pgstore against real Postgres.
package records

import (
	"cmp"
	"encoding/json"
	"errors"
	"time"
)

// The store's errors. internal/api maps each to its problem; wrapped database errors stay
// reachable with errors.As.
var (
	// ErrTenantNotFound: the tenant has no row on its shard (never created there).
	ErrTenantNotFound = errors.New("records: tenant not found")
	// ErrTenantFenced: the tenant's writes are fenced on this shard (a move's cutover).
	ErrTenantFenced = errors.New("records: tenant is fenced for writes")
	// ErrRecordNotFound: no live record with that collection and id.
	ErrRecordNotFound = errors.New("records: record not found")
	// ErrPrecondition: If-Match does not match the record's current version (or there is
	// none), or If-None-Match matches the live record.
	ErrPrecondition = errors.New("records: precondition failed")
	// ErrDataTooLarge: a write would leave a record's data over WriteOp.MaxData.
	ErrDataTooLarge = errors.New("records: data too large")
	// ErrKeyReused: the Idempotency-Key was already used with a different request.
	ErrKeyReused = errors.New("records: idempotency key reused with a different request")
	// ErrBadToken: ReadOptions.Token is not a consistency token.
	ErrBadToken = errors.New("records: malformed consistency token")
	// ErrUnknownShard: the node's shard map has no such shard.
	ErrUnknownShard = errors.New("records: shard not in map")
	// ErrNotHome: a tenant row may only be created on a shard homed in the store's region.
	ErrNotHome = errors.New("records: shard is homed in another region")
	// ErrTimeout: the database did not answer in time (statement timeout or deadline).
	ErrTimeout = errors.New("records: database did not answer in time")
	// ErrConflict: a concurrent write conflicted (serialization failure, deadlock, lock not
	// available); the request may be retried.
	ErrConflict = errors.New("records: conflicting concurrent write")
	// ErrStaleEpoch: the write was routed on an older write epoch than the tenant's row on the
	// shard has (tenants.write_epoch > Target.Epoch): a move's cutover happened since the route
	// was decided. Nothing was written; the request belongs elsewhere (421).
	ErrStaleEpoch = errors.New("records: write routed on an older write epoch")
	// ErrTenantExists: a move's PrepareTarget or FinishTarget found a row for the tenant on the
	// target shard that is not the importing copy the move made (the shard already holds the
	// tenant, or the copy was activated with another epoch); drop it first.
	ErrTenantExists = errors.New("records: tenant already has a row on the shard that this move did not prepare")
	// ErrTenantLive: DropTenant refused to delete the tenant's active, unfenced copy on a shard
	// (the one clients write to); fence it first.
	ErrTenantLive = errors.New("records: tenant's copy on the shard is live (active and unfenced)")
	// ErrChangesPruned: a move's ChangedKeys found the outbox no longer holds every change of
	// the range asked for (pruned after its retention); the caller compares every key instead.
	ErrChangesPruned = errors.New("records: the outbox no longer holds every change of the range")
	// ErrDatabase: the database refused a statement for a reason that is not the request's
	// fault (a bug or a schema mismatch); the original *pgconn.PgError is wrapped.
	ErrDatabase = errors.New("records: database error")
	// ErrNoWorkerRole: the operation reads across tenants, which needs the worker role's
	// connections (pgstore.Config.Workers), and the store has none.
	ErrNoWorkerRole = errors.New("records: no cross-tenant (worker role) connections configured")
)

// ValueError is a value the database rejected (SQLSTATE classes 22 data exception and 54
// program limit exceeded, e.g. a filter value jsonb refuses): the request's own fault, a 400.
// Message is the database's message.
type ValueError struct {
	Message string
	Err     error
}

func (e *ValueError) Error() string { return "records: value rejected by the database: " + e.Message }

// Unwrap returns the database error.
func (e *ValueError) Unwrap() error { return e.Err }

// Target is the tenant a request is for and where the node's shard map places it.
type Target struct {
	Tenant string
	Shard  string // shard id; the store resolves it through its own map view
	// Epoch is the tenant's write epoch the request was routed on (X-Tenant-Epoch, else the
	// node's map). A write is refused with ErrStaleEpoch when the tenant's row on the shard has
	// a greater write_epoch; 0 = no check.
	Epoch uint64
	// MirrorTo is the target shard of the tenant's move while it is in dual_write, backfill or
	// verify ("" = none): a write committed on Shard is then applied to MirrorTo's primary too
	// (a version-guarded upsert; see pgstore.Store.Write).
	MirrorTo string
}

// Key is a record's primary key within a tenant. Keys order by (Collection, ID) in byte order
// (the "C" collation of the records table), the order of a move's batches.
type Key struct {
	Collection string
	ID         string
}

// Less reports whether k sorts before o.
func (k Key) Less(o Key) bool { return k.Compare(o) < 0 }

// Compare orders keys as the records primary key does (collation "C": by bytes), -1, 0 or +1.
func (k Key) Compare(o Key) int {
	return cmp.Or(cmp.Compare(k.Collection, o.Collection), cmp.Compare(k.ID, o.ID))
}

// MirrorResult is what became of a write's mirror to a move's target shard.
type MirrorResult string

// The mirror results; the empty MirrorResult means there was no mirror to make.
const (
	// MirrorOK: the change was applied to the target (or the target already had a newer
	// version of the record).
	MirrorOK MirrorResult = "ok"
	// MirrorFailed: the target could not be written (unreachable, an error, a timeout); the
	// move's verify finds and repairs the difference.
	MirrorFailed MirrorResult = "failed"
	// MirrorSkipped: the target shard has no row for the tenant (not prepared yet, or the move
	// was cancelled and the copy dropped), so there was nothing to mirror into.
	MirrorSkipped MirrorResult = "skipped"
)

// Record is one record as stored.
type Record struct {
	ID         string
	Collection string
	Version    int64
	CreatedAt  time.Time
	UpdatedAt  time.Time
	Data       json.RawMessage
}

// Source is where a read was served from, in the words of the X-Read-Source header.
type Source string

// The read sources.
const (
	SourcePrimary Source = "primary"
	SourceReplica Source = "replica"
	SourceCache   Source = "cache"
)

// ReadOptions is what a read asks of its source (DESIGN.md §6).
type ReadOptions struct {
	// Strong reads go to the primary (Prefer: consistency=strong).
	Strong bool
	// Token is the request's Consistency-Token as sent ("" = none); a value that does not
	// decode is ErrBadToken.
	Token string
	// NoCache skips the cache (request Cache-Control: no-cache); the read is served as if
	// there were none.
	NoCache bool
}

// ReadInfo says how a read was served.
type ReadInfo struct {
	Source Source
	// Reason is why the read-source decision picked the source it did, a stable word fit for
	// a log attribute or metric label (replication.Reason: "fresh", "strong", "too-stale", …).
	Reason string
	// FellBack is set when a standby read failed (or its standby was behind the token) and the
	// primary answered instead.
	FellBack bool
	// LSN is a WAL position the read's data is at least as new as: on a standby its replay
	// position read in the same batch before the read's statement, on a primary its current
	// WAL position. 0 when unknown. The cache stores it with an entry (DESIGN.md §7).
	LSN uint64
}

// ListQuery is one page of a list: keyset pagination on the record id.
type ListQuery struct {
	Limit  int      // page size, at least 1
	Desc   bool     // order by id descending
	After  string   // continue after this id ("" = first page)
	Fields []string // top-level data fields to return (nil = all of data)
	Filter string   // canonical JSON object records' data must contain ("" = none)
}

// Page is a list's answer.
type Page struct {
	Items []Record // at most ListQuery.Limit
	More  bool     // another page follows Items' last id
}

// Match is a parsed If-Match or If-None-Match header: Any for "*", else the versions of its
// entity tags (a tag that is not a version the store issues, or that the header's comparison
// never matches, is a version that never matches, e.g. -1).
type Match struct {
	Any      bool
	Versions []int64
}

// Op is the kind of a write.
type Op int

// The writes.
const (
	// Create inserts a record with an id the store makes (UUIDv7).
	Create Op = iota + 1
	// Put creates the record or replaces its data.
	Put
	// Patch merges WriteOp.Data into the live record's data (RFC 7396).
	Patch
	// Delete turns the live record into a tombstone.
	Delete
)

// WriteOp is one write, run by the store in one transaction.
type WriteOp struct {
	Op         Op
	Collection string
	ID         string // "" for Create
	// Data is the new data object for Create and Put, and the merge patch of the data object
	// for Patch (nil = a patch without "data", which changes only the version).
	Data json.RawMessage
	// IfMatch, when set, is checked against the live record (Put, Patch, Delete): no live
	// record, or none of its versions, is ErrPrecondition.
	IfMatch *Match
	// IfNoneMatch, when set, is checked against the live record (Put, Patch, Delete): a live
	// record that it matches (Any, or one of its versions) is ErrPrecondition. With Any a Put
	// only creates.
	IfNoneMatch *Match
	// MaxData bounds the size of a Patch's merged data in bytes, as compact JSON (0 = no
	// bound); over it is ErrDataTooLarge. Create and Put data is bounded by the body limit.
	MaxData int64
	// Key is the Idempotency-Key ("" = none) and RequestHash the request's identity under it.
	Key         string
	RequestHash []byte
	// Render makes the client's response from the change. The store calls it inside the
	// transaction and stores its result with Key, so a replay answers exactly the same bytes.
	Render func(Change) (Response, error)
}

// ChangeKind is what a write did to a record; its String is the outbox's op.
type ChangeKind int

// The change kinds.
const (
	Created ChangeKind = iota + 1
	Updated
	Deleted
)

// String returns the outbox op: "create", "update" or "delete".
func (k ChangeKind) String() string {
	switch k {
	case Created:
		return "create"
	case Updated:
		return "update"
	case Deleted:
		return "delete"
	}
	return "unknown"
}

// Change is what a write did: Created (also a Put of a new or deleted id), Updated or Deleted.
// For Deleted, Record has ID, Collection, the tombstone's Version and timestamps, no Data.
type Change struct {
	Kind   ChangeKind
	Record Record
}

// Response is a write's answer as the client gets it, stored verbatim with an Idempotency-Key.
type Response struct {
	Status  int
	Headers map[string]string
	Body    []byte
}

// WriteResult is the outcome of a committed (or replayed) write.
type WriteResult struct {
	Response Response
	// Replayed is set when Response is the stored answer of an earlier request with the same
	// Idempotency-Key; nothing was written.
	Replayed bool
	// Token is the Consistency-Token of the write ("" when the WAL position could not be read
	// after the commit).
	Token string
	// Mirror is what became of the mirror of the write to Target.MirrorTo ("" = none made:
	// no MirrorTo, or a replay). A failed mirror never fails the write, which has committed.
	Mirror MirrorResult
}

// ChangeEvent is one row of a tenant's outbox: the /v1/changes event with id Seq.
type ChangeEvent struct {
	Seq        int64
	OutboxID   int64
	Collection string
	ID         string
	Op         string // create, update or delete
	Version    int64
	At         time.Time
}

// TargetState is what an earlier cutover attempt left on a move's target (ResumeTarget).
type TargetState int

const (
	// TargetImporting: the target is an importing copy (no attempt finished it, or a finished
	// copy the source has moved on from was turned back into one): go through the cutover.
	TargetImporting TargetState = iota
	// TargetFinished: an attempt finished the target at the new epoch and the source is still
	// fenced at the same change_seq: only the Cutover command is missing.
	TargetFinished
	// TargetAhead: the target is active at the new epoch and has writes past the fenced
	// source, so the Cutover committed: the caller's map copy is behind.
	TargetAhead
)

// TenantStatus is a tenant's id and status on one shard, as a cross-tenant listing sees it.
type TenantStatus struct {
	ID     string
	Status string
}

// TenantRow is a tenant's row on one shard.
type TenantRow struct {
	ID         string
	Shard      string
	Status     string
	WriteEpoch int64
	Fenced     bool
	CreatedAt  time.Time
}
