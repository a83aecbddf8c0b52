package shardmap

import (
	"encoding/json"
	"fmt"
	"time"
)

// CommandType is the first byte of a Raft log entry. Numbers are explicit and only ever
// appended; a type with the IgnoreIfUnknown bit set is skipped by a node that does not know it
// (forward compatibility), any other unknown type stops the node rather than diverge.
type CommandType uint8

// IgnoreIfUnknown marks a command type that older nodes may safely skip.
const IgnoreIfUnknown CommandType = 0x80

// Command types. Append only; never renumber.
const (
	CmdBootstrap    CommandType = 1
	CmdAddShard     CommandType = 2
	CmdDrainShard   CommandType = 3
	CmdAssignSlots  CommandType = 4
	CmdCreateTenant CommandType = 5
	CmdRequestMove  CommandType = 6
	CmdSetMovePhase CommandType = 7
	CmdMoveProgress CommandType = 8
	CmdCutover      CommandType = 9
	CmdAddRegion    CommandType = 10
	CmdSetLimits    CommandType = 11
	CmdAcquireLease CommandType = 12
	CmdReleaseLease CommandType = 13
	CmdPruneMoves   CommandType = 14
	CmdRegisterNode CommandType = IgnoreIfUnknown | 1
)

// Command is a typed change to the shard map.
type Command interface {
	Type() CommandType
}

// Bootstrap creates the topology: regions, shards (all active) and a slot table of SlotCount
// slots (0 = ids.DefaultSlotCount) assigned round-robin over Shards in the given order. Only once.
type Bootstrap struct {
	Regions   []string `json:"regions"`
	Shards    []Shard  `json:"shards"`
	SlotCount int      `json:"slot_count"`
}

// AddRegion adds a region.
type AddRegion struct {
	Region string `json:"region"`
}

// AddShard adds an active shard that owns no slots yet.
type AddShard struct {
	Shard Shard `json:"shard"`
}

// DrainShard marks a shard draining: no new tenants, slots or moves land on it. It must own
// no slots (reassign them first with AssignSlots); pinned tenants stay until moved off.
type DrainShard struct {
	Shard string `json:"shard"`
}

// AssignSlots gives slots to an active shard. It moves every slot-placed tenant of those slots
// without copying data, so it is meant for empty slots or bootstrap-time layout changes.
type AssignSlots struct {
	Slots []int  `json:"slots"`
	Shard string `json:"shard"`
}

// CreateTenant places a new tenant. With a Region it pins the tenant to the active shard homed
// there with the fewest pins (ties by id); without, the tenant follows its slot and nothing is
// stored (the command only validates and advances the version).
type CreateTenant struct {
	Tenant string `json:"tenant"`
	Region string `json:"region,omitempty"`
}

// RequestMove starts moving a tenant to shard To. An empty ID becomes MoveIDForIndex(index).
type RequestMove struct {
	ID     string `json:"id,omitempty"`
	Tenant string `json:"tenant"`
	To     string `json:"to_shard"`
}

// SetMovePhase advances a move (see DESIGN.md for allowed transitions). Error is recorded with
// PhaseFailed. PhaseCutover is reached only through Cutover.
type SetMovePhase struct {
	ID    string `json:"id"`
	Phase Phase  `json:"phase"`
	Error string `json:"error,omitempty"`
}

// MoveProgress records progress of a non-terminal move; nil fields are left unchanged.
type MoveProgress struct {
	ID         string `json:"id"`
	RowsCopied *int64 `json:"rows_copied,omitempty"`
	RowsTotal  *int64 `json:"rows_total,omitempty"`
	Repairs    *int64 `json:"repairs,omitempty"`
	PauseMS    *int64 `json:"pause_ms,omitempty"`
	// FirstWriteMS: see Move.FirstWriteMS.
	FirstWriteMS *int64 `json:"first_write_ms,omitempty"`
	// CopiedUpTo: see Move.CopiedUpTo. Only a move in backfill takes it
	// (ErrBadPhaseTransition otherwise).
	CopiedUpTo *MoveKey `json:"copied_up_to,omitempty"`
}

// Cutover pins the move's tenant to the target shard and bumps its write epoch, in one
// command, and sets the phase to cutover. Only from verify.
type Cutover struct {
	ID string `json:"id"`
}

// SetTenantLimits changes a tenant's limit overrides as a merge patch: each non-zero field of
// Set replaces that override, each field named in Reset (LimitRPS, LimitBurst,
// LimitConcurrency) returns to the routers' default, and the other fields keep their value.
// Applied in log order, two patches of different fields never undo each other.
type SetTenantLimits struct {
	Tenant string       `json:"tenant"`
	Set    TenantLimits `json:"set"`
	Reset  []string     `json:"reset,omitempty"`
}

// AcquireLease grants the lease Name to Holder until the entry's time plus TTL. It is granted
// when nobody holds the lease, when the holder's lease has expired (the entry's time is after
// its expiry), or when Holder already holds it (a renewal: the expiry becomes the entry's time
// plus TTL); otherwise it fails with ErrLeaseHeld. The entry's time is the proposer's clock
// (Apply reads none), so a lease is only as exclusive as the proposers' clocks agree: a holder
// renews well within TTL and stops acting as holder before its own clock reaches the expiry.
type AcquireLease struct {
	Name   string        `json:"name"`
	Holder string        `json:"holder"`
	TTL    time.Duration `json:"ttl"`
}

// ReleaseLease gives up Holder's lease Name at once. Releasing a lease nobody holds is a
// no-op (so a retried release succeeds); another holder's lease is ErrLeaseHeld.
type ReleaseLease struct {
	Name   string `json:"name"`
	Holder string `json:"holder"`
}

// PruneMoves removes the terminal moves (done, cancelled, failed) last updated before Before.
// Non-terminal moves are never pruned.
type PruneMoves struct {
	Before time.Time `json:"before"`
}

// RegisterNode records the HTTP base URL of a map node, so followers can forward to the
// leader. It is issued by the join protocol, not by operators.
type RegisterNode struct {
	ID       string `json:"id"`
	HTTPAddr string `json:"http_addr"`
}

func (Bootstrap) Type() CommandType       { return CmdBootstrap }
func (AddRegion) Type() CommandType       { return CmdAddRegion }
func (AddShard) Type() CommandType        { return CmdAddShard }
func (DrainShard) Type() CommandType      { return CmdDrainShard }
func (AssignSlots) Type() CommandType     { return CmdAssignSlots }
func (CreateTenant) Type() CommandType    { return CmdCreateTenant }
func (RequestMove) Type() CommandType     { return CmdRequestMove }
func (SetMovePhase) Type() CommandType    { return CmdSetMovePhase }
func (MoveProgress) Type() CommandType    { return CmdMoveProgress }
func (Cutover) Type() CommandType         { return CmdCutover }
func (RegisterNode) Type() CommandType    { return CmdRegisterNode }
func (SetTenantLimits) Type() CommandType { return CmdSetLimits }
func (AcquireLease) Type() CommandType    { return CmdAcquireLease }
func (ReleaseLease) Type() CommandType    { return CmdReleaseLease }
func (PruneMoves) Type() CommandType      { return CmdPruneMoves }

// MoveIDForIndex is the id given to a RequestMove without an id, applied at a Raft index.
func MoveIDForIndex(index uint64) string { return fmt.Sprintf("mv-%d", index) }

// envelope is the JSON body after the type byte. At is the proposer's clock, carried in the
// entry because Apply must not read a clock.
type envelope struct {
	At  int64           `json:"at"`
	Cmd json.RawMessage `json:"cmd"`
}

// encodeEntry builds a log entry: one type byte, then the JSON envelope.
func encodeEntry(cmd Command, at time.Time) ([]byte, error) {
	if cmd == nil {
		return nil, fmt.Errorf("%w: nil command", ErrBadCommand)
	}
	if newCommand(cmd.Type()) == nil {
		return nil, fmt.Errorf("%w: unknown command type %d", ErrBadCommand, cmd.Type())
	}
	body, err := json.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	env, err := json.Marshal(envelope{At: at.UnixNano(), Cmd: body})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	return append([]byte{byte(cmd.Type())}, env...), nil
}

// errIgnored is returned by decodeEntry for an unknown command type with IgnoreIfUnknown set.
var errIgnored = fmt.Errorf("shardmap: ignored command type")

// decodeEntry parses a log entry. It never panics; the FSM panics on its error.
func decodeEntry(b []byte) (Command, time.Time, error) {
	if len(b) < 1 {
		return nil, time.Time{}, fmt.Errorf("%w: empty entry", ErrBadCommand)
	}
	t := CommandType(b[0])
	cmd := newCommand(t)
	if cmd == nil {
		if t&IgnoreIfUnknown != 0 {
			return nil, time.Time{}, errIgnored
		}
		return nil, time.Time{}, fmt.Errorf("%w: unknown command type %d", ErrBadCommand, t)
	}
	var env envelope
	if err := json.Unmarshal(b[1:], &env); err != nil {
		return nil, time.Time{}, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	if len(env.Cmd) == 0 {
		return nil, time.Time{}, fmt.Errorf("%w: no command body", ErrBadCommand)
	}
	if err := json.Unmarshal(env.Cmd, cmd); err != nil {
		return nil, time.Time{}, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	return deref(cmd), time.Unix(0, env.At).UTC(), nil
}

// newCommand returns a pointer to a zero command of type t, or nil when t is unknown.
func newCommand(t CommandType) any {
	switch t {
	case CmdBootstrap:
		return &Bootstrap{}
	case CmdAddRegion:
		return &AddRegion{}
	case CmdAddShard:
		return &AddShard{}
	case CmdDrainShard:
		return &DrainShard{}
	case CmdAssignSlots:
		return &AssignSlots{}
	case CmdCreateTenant:
		return &CreateTenant{}
	case CmdRequestMove:
		return &RequestMove{}
	case CmdSetMovePhase:
		return &SetMovePhase{}
	case CmdMoveProgress:
		return &MoveProgress{}
	case CmdCutover:
		return &Cutover{}
	case CmdRegisterNode:
		return &RegisterNode{}
	case CmdSetLimits:
		return &SetTenantLimits{}
	case CmdAcquireLease:
		return &AcquireLease{}
	case CmdReleaseLease:
		return &ReleaseLease{}
	case CmdPruneMoves:
		return &PruneMoves{}
	}
	return nil
}

func deref(p any) Command {
	switch c := p.(type) {
	case *Bootstrap:
		return *c
	case *AddRegion:
		return *c
	case *AddShard:
		return *c
	case *DrainShard:
		return *c
	case *AssignSlots:
		return *c
	case *CreateTenant:
		return *c
	case *RequestMove:
		return *c
	case *SetMovePhase:
		return *c
	case *MoveProgress:
		return *c
	case *Cutover:
		return *c
	case *RegisterNode:
		return *c
	case *SetTenantLimits:
		return *c
	case *AcquireLease:
		return *c
	case *ReleaseLease:
		return *c
	case *PruneMoves:
		return *c
	}
	panic(fmt.Sprintf("shardmap: deref %T", p))
}
