// Package shardmap owns Meridian's shard map: the model (regions, shards, the slot table,
// tenant pins, the region of every tenant created with one, per-tenant write epochs, per-tenant
// limit overrides, tenant moves and named leases), the typed commands that change it, the
// deterministic Raft FSM that applies them, snapshots, the watch API every map node serves, and
// the watching Client that API nodes, the rebalancer and the CLI use to keep a read-only copy.
//
// A Map is an immutable snapshot: it is built once per applied command and swapped in
// atomically, so readers never lock, and Map.Lookup is allocation-free. Every change goes through
// Node.Apply (or Client.Apply), which forwards to the Raft leader; a command that breaks a rule
// is rejected with one of the sentinel errors below and never changes the state.
//
// This package must never import gin, pgx, redis or nats, and never reads a clock, the disk or
// randomness inside the FSM. Tests use real in-process Raft clusters on 127.0.0.1 with data in
// t.TempDir(); see DESIGN.md next to this file for the commands, guards, snapshot format and the
// watch protocol.
package shardmap

import "errors"

// Sentinel errors. Errors returned by Apply wrap one of them; compare with errors.Is.
var (
	// ErrNotLeader means the node is not the Raft leader and could not forward the command.
	ErrNotLeader = errors.New("shardmap: not the leader")
	// ErrNoLeader means no Raft leader is known at the moment (an election is running).
	ErrNoLeader = errors.New("shardmap: no leader")
	// ErrUnavailable means no map node could be reached.
	ErrUnavailable = errors.New("shardmap: no map node reachable")
	// ErrUnauthorized means the cluster token was missing or wrong.
	ErrUnauthorized = errors.New("shardmap: bad cluster token")
	// ErrShutdown means the node has been shut down.
	ErrShutdown = errors.New("shardmap: node shut down")
	// ErrBadCommand means a command is malformed (missing or invalid fields, unknown type).
	ErrBadCommand = errors.New("shardmap: bad command")
	// ErrNotBootstrapped means the topology has not been bootstrapped yet.
	ErrNotBootstrapped = errors.New("shardmap: topology not bootstrapped")
	// ErrAlreadyBootstrapped means a second bootstrap was attempted.
	ErrAlreadyBootstrapped = errors.New("shardmap: topology already bootstrapped")
	// ErrBadTenantID means a tenant id does not match ^[a-z0-9][a-z0-9-]{2,62}$.
	ErrBadTenantID = errors.New("shardmap: bad tenant id")
	// ErrUnknownRegion means a region is not part of the topology.
	ErrUnknownRegion = errors.New("shardmap: unknown region")
	// ErrRegionExists means a region is added twice.
	ErrRegionExists = errors.New("shardmap: region exists")
	// ErrUnknownShard means a shard id is not part of the topology.
	ErrUnknownShard = errors.New("shardmap: unknown shard")
	// ErrShardExists means a shard id is added twice.
	ErrShardExists = errors.New("shardmap: shard exists")
	// ErrShardDraining means a draining shard was asked to take new tenants or slots.
	ErrShardDraining = errors.New("shardmap: shard is draining")
	// ErrShardHasSlots means a shard still owns slots and cannot be drained.
	ErrShardHasSlots = errors.New("shardmap: shard still owns slots")
	// ErrBadSlot means a slot number is outside [0, slot_count).
	ErrBadSlot = errors.New("shardmap: bad slot")
	// ErrNoShardInRegion means no active shard is homed in the requested region.
	ErrNoShardInRegion = errors.New("shardmap: no active shard in region")
	// ErrTenantExists means the tenant is already pinned to a shard.
	ErrTenantExists = errors.New("shardmap: tenant exists")
	// ErrTenantMoving means the tenant already has a move in a non-terminal phase.
	ErrTenantMoving = errors.New("shardmap: tenant is moving")
	// ErrSameShard means a move targets the shard the tenant is already on.
	ErrSameShard = errors.New("shardmap: tenant is already on that shard")
	// ErrUnknownMove means a move id is not in the map.
	ErrUnknownMove = errors.New("shardmap: unknown move")
	// ErrMoveExists means a move id is used twice.
	ErrMoveExists = errors.New("shardmap: move exists")
	// ErrBadPhaseTransition means a move phase change is not allowed from the current phase.
	ErrBadPhaseTransition = errors.New("shardmap: bad move phase transition")
	// ErrBadLimits means a tenant limit override is out of bounds or names an unknown field.
	ErrBadLimits = errors.New("shardmap: bad tenant limits")
	// ErrLeaseHeld means a lease is held by another holder and has not expired.
	ErrLeaseHeld = errors.New("shardmap: lease held by another holder")
)

// errorCodes gives every sentinel a stable wire code, so typed errors survive forwarding over
// HTTP. Only append.
var errorCodes = []struct {
	code string
	err  error
}{
	{"not_leader", ErrNotLeader},
	{"no_leader", ErrNoLeader},
	{"unavailable", ErrUnavailable},
	{"unauthorized", ErrUnauthorized},
	{"shutdown", ErrShutdown},
	{"bad_command", ErrBadCommand},
	{"not_bootstrapped", ErrNotBootstrapped},
	{"already_bootstrapped", ErrAlreadyBootstrapped},
	{"bad_tenant_id", ErrBadTenantID},
	{"unknown_region", ErrUnknownRegion},
	{"region_exists", ErrRegionExists},
	{"unknown_shard", ErrUnknownShard},
	{"shard_exists", ErrShardExists},
	{"shard_draining", ErrShardDraining},
	{"shard_has_slots", ErrShardHasSlots},
	{"bad_slot", ErrBadSlot},
	{"no_shard_in_region", ErrNoShardInRegion},
	{"tenant_exists", ErrTenantExists},
	{"tenant_moving", ErrTenantMoving},
	{"same_shard", ErrSameShard},
	{"unknown_move", ErrUnknownMove},
	{"move_exists", ErrMoveExists},
	{"bad_phase_transition", ErrBadPhaseTransition},
	{"bad_limits", ErrBadLimits},
	{"lease_held", ErrLeaseHeld},
}

func codeOf(err error) string {
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return ""
}

func errOfCode(code string) error {
	for _, c := range errorCodes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}
