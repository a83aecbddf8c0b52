package shardmap

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/meridian-dev/meridian/shardmap/ids"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/raft"
)

// transitions lists the phases SetMovePhase may move to from each phase. Cutover is reached
// only through the Cutover command (from verify).
var transitions = map[Phase][]Phase{
	PhaseRequested: {PhaseDualWrite, PhaseCancelled, PhaseFailed},
	PhaseDualWrite: {PhaseBackfill, PhaseCancelled, PhaseFailed},
	PhaseBackfill:  {PhaseVerify, PhaseCancelled, PhaseFailed},
	PhaseVerify:    {PhaseCancelled, PhaseFailed},
	PhaseCutover:   {PhaseCleanup, PhaseFailed},
	PhaseCleanup:   {PhaseDone, PhaseFailed},
}

// apply validates cmd against s and, when every guard passes, mutates s. It is deterministic:
// at and index come from the log entry. On error s may be partly changed, so callers apply to
// a clone and drop it on error.
func (s *state) apply(cmd Command, index uint64, at time.Time) error {
	if err := s.applyCmd(cmd, index, at); err != nil {
		return err
	}
	s.version = index
	return nil
}

func (s *state) applyCmd(cmd Command, index uint64, at time.Time) error {
	if _, ok := cmd.(RegisterNode); !ok {
		if _, ok := cmd.(Bootstrap); !ok && s.slotCount == 0 {
			return ErrNotBootstrapped
		}
	}
	switch c := cmd.(type) {
	case Bootstrap:
		return s.bootstrap(c)
	case AddRegion:
		if !ids.ValidRegion(c.Region) {
			return fmt.Errorf("%w: bad region id %q", ErrBadCommand, c.Region)
		}
		if slices.Contains(s.regions, c.Region) {
			return fmt.Errorf("%w: %s", ErrRegionExists, c.Region)
		}
		s.regions = append(s.regions, c.Region)
		slices.Sort(s.regions)
		return nil
	case AddShard:
		if _, ok := s.shards[c.Shard.ID]; ok {
			return fmt.Errorf("%w: %s", ErrShardExists, c.Shard.ID)
		}
		sh, err := s.checkShard(c.Shard)
		if err != nil {
			return err
		}
		s.shards[sh.ID] = sh
		return nil
	case DrainShard:
		sh, ok := s.shards[c.Shard]
		if !ok {
			return fmt.Errorf("%w: %q", ErrUnknownShard, c.Shard)
		}
		if sh.State == ShardDraining {
			return fmt.Errorf("%w: %s already draining", ErrShardDraining, c.Shard)
		}
		if slices.Contains(s.slots, c.Shard) {
			return fmt.Errorf("%w: %s", ErrShardHasSlots, c.Shard)
		}
		sh = sh.clone()
		sh.State = ShardDraining
		s.shards[sh.ID] = sh
		return nil
	case AssignSlots:
		if err := s.activeShard(c.Shard); err != nil {
			return err
		}
		if len(c.Slots) == 0 {
			return fmt.Errorf("%w: no slots", ErrBadCommand)
		}
		for _, i := range c.Slots {
			if i < 0 || i >= s.slotCount {
				return fmt.Errorf("%w: %d not in [0,%d)", ErrBadSlot, i, s.slotCount)
			}
		}
		for _, i := range c.Slots {
			s.slots[i] = c.Shard
		}
		return nil
	case CreateTenant:
		return s.createTenant(c)
	case RequestMove:
		return s.requestMove(c, index, at)
	case SetMovePhase:
		mv, ok := s.moves[c.ID]
		if !ok {
			return fmt.Errorf("%w: %q", ErrUnknownMove, c.ID)
		}
		if !slices.Contains(transitions[mv.Phase], c.Phase) {
			return fmt.Errorf("%w: %s -> %q", ErrBadPhaseTransition, mv.Phase, c.Phase)
		}
		mv.Phase = c.Phase
		if c.Phase == PhaseFailed {
			mv.Error = c.Error
			if mv.Error == "" {
				mv.Error = "unspecified"
			}
		}
		mv.UpdatedAt = at
		s.moves[mv.ID] = mv
		return nil
	case MoveProgress:
		mv, ok := s.moves[c.ID]
		if !ok {
			return fmt.Errorf("%w: %q", ErrUnknownMove, c.ID)
		}
		if mv.Phase.Terminal() {
			return fmt.Errorf("%w: progress on %s move", ErrBadPhaseTransition, mv.Phase)
		}
		for _, p := range []*int64{c.RowsCopied, c.RowsTotal, c.Repairs, c.PauseMS, c.FirstWriteMS} {
			if p != nil && *p < 0 {
				return fmt.Errorf("%w: negative progress counter", ErrBadCommand)
			}
		}
		if k := c.CopiedUpTo; k != nil {
			if mv.Phase != PhaseBackfill {
				return fmt.Errorf("%w: backfill cursor on a move in %s", ErrBadPhaseTransition, mv.Phase)
			}
			if len(k.Collection) > maxMoveKeyPart || len(k.ID) > maxMoveKeyPart {
				return fmt.Errorf("%w: backfill cursor parts must be at most %d bytes", ErrBadCommand, maxMoveKeyPart)
			}
			mv.CopiedUpTo = *k
		}
		set := func(dst *int64, src *int64) {
			if src != nil {
				*dst = *src
			}
		}
		set(&mv.RowsCopied, c.RowsCopied)
		set(&mv.RowsTotal, c.RowsTotal)
		set(&mv.Repairs, c.Repairs)
		set(&mv.PauseMS, c.PauseMS)
		set(&mv.FirstWriteMS, c.FirstWriteMS)
		mv.UpdatedAt = at
		s.moves[mv.ID] = mv
		return nil
	case Cutover:
		mv, ok := s.moves[c.ID]
		if !ok {
			return fmt.Errorf("%w: %q", ErrUnknownMove, c.ID)
		}
		if mv.Phase != PhaseVerify {
			return fmt.Errorf("%w: cutover from %s", ErrBadPhaseTransition, mv.Phase)
		}
		if _, ok := s.shards[mv.To]; !ok {
			return fmt.Errorf("%w: %q", ErrUnknownShard, mv.To)
		}
		s.pins[mv.Tenant] = mv.To
		s.epochs[mv.Tenant] = s.epoch(mv.Tenant) + 1
		mv.Phase = PhaseCutover
		mv.UpdatedAt = at
		s.moves[mv.ID] = mv
		return nil
	case SetTenantLimits:
		return s.setTenantLimits(c)
	case AcquireLease:
		return s.acquireLease(c, at)
	case ReleaseLease:
		return s.releaseLease(c)
	case PruneMoves:
		return s.pruneMoves(c)
	case RegisterNode:
		if c.ID == "" || c.HTTPAddr == "" {
			return fmt.Errorf("%w: register node needs id and http_addr", ErrBadCommand)
		}
		s.nodes[c.ID] = c.HTTPAddr
		return nil
	}
	return fmt.Errorf("%w: unknown command %T", ErrBadCommand, cmd)
}

func (s *state) bootstrap(c Bootstrap) error {
	if s.slotCount != 0 {
		return ErrAlreadyBootstrapped
	}
	if len(c.Regions) == 0 || len(c.Shards) == 0 {
		return fmt.Errorf("%w: bootstrap needs regions and shards", ErrBadCommand)
	}
	n := c.SlotCount
	if n == 0 {
		n = ids.DefaultSlotCount
	}
	if n < 1 || n > ids.MaxSlotCount {
		return fmt.Errorf("%w: slot_count %d not in [1,%d]", ErrBadCommand, c.SlotCount, ids.MaxSlotCount)
	}
	if len(c.Shards) >= ids.MaxSlotCount {
		return fmt.Errorf("%w: too many shards", ErrBadCommand)
	}
	for _, r := range c.Regions {
		if !ids.ValidRegion(r) {
			return fmt.Errorf("%w: bad region id %q", ErrBadCommand, r)
		}
		if slices.Contains(s.regions, r) {
			return fmt.Errorf("%w: %s", ErrRegionExists, r)
		}
		s.regions = append(s.regions, r)
	}
	slices.Sort(s.regions)
	for _, sh := range c.Shards {
		if _, ok := s.shards[sh.ID]; ok {
			return fmt.Errorf("%w: %s", ErrShardExists, sh.ID)
		}
		sh, err := s.checkShard(sh)
		if err != nil {
			return err
		}
		s.shards[sh.ID] = sh
	}
	s.slotCount = n
	s.slots = make([]string, n)
	for i := range s.slots {
		s.slots[i] = c.Shards[i%len(c.Shards)].ID
	}
	return nil
}

// checkShard validates a new shard and returns the copy to store (active, own endpoint map).
func (s *state) checkShard(sh Shard) (Shard, error) {
	if !ids.ValidShard(sh.ID) {
		return Shard{}, fmt.Errorf("%w: bad shard id %q", ErrBadCommand, sh.ID)
	}
	if sh.Database == "" {
		return Shard{}, fmt.Errorf("%w: shard %s has no database", ErrBadCommand, sh.ID)
	}
	if !slices.Contains(s.regions, sh.HomeRegion) {
		return Shard{}, fmt.Errorf("%w: %q (home of shard %s)", ErrUnknownRegion, sh.HomeRegion, sh.ID)
	}
	for r, ep := range sh.Endpoints {
		if !slices.Contains(s.regions, r) {
			return Shard{}, fmt.Errorf("%w: %q (endpoint of shard %s)", ErrUnknownRegion, r, sh.ID)
		}
		if ep == "" {
			return Shard{}, fmt.Errorf("%w: shard %s has an empty endpoint for %s", ErrBadCommand, sh.ID, r)
		}
	}
	sh = sh.clone()
	if sh.Endpoints == nil {
		sh.Endpoints = map[string]string{}
	}
	sh.State = ShardActive
	return sh, nil
}

func (s *state) activeShard(id string) error {
	sh, ok := s.shards[id]
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownShard, id)
	}
	if sh.State != ShardActive {
		return fmt.Errorf("%w: %s", ErrShardDraining, id)
	}
	return nil
}

func (s *state) epoch(tenant string) uint64 {
	if e, ok := s.epochs[tenant]; ok {
		return e
	}
	return 1
}

// shardOf is the tenant's current shard: its pin, else its slot's shard.
func (s *state) shardOf(tenant string) string {
	if id, ok := s.pins[tenant]; ok {
		return id
	}
	return s.slots[SlotOf(tenant, s.slotCount)]
}

func (s *state) moving(tenant string) bool {
	for _, mv := range s.moves {
		if mv.Tenant == tenant && !mv.Phase.Terminal() {
			return true
		}
	}
	return false
}

func (s *state) createTenant(c CreateTenant) error {
	if !ids.ValidTenant(c.Tenant) {
		return fmt.Errorf("%w: %q", ErrBadTenantID, c.Tenant)
	}
	if _, ok := s.pins[c.Tenant]; ok {
		return fmt.Errorf("%w: %s", ErrTenantExists, c.Tenant)
	}
	if s.moving(c.Tenant) {
		return fmt.Errorf("%w: %s", ErrTenantMoving, c.Tenant)
	}
	if c.Region == "" {
		return nil // slot placement: nothing to store
	}
	if !slices.Contains(s.regions, c.Region) {
		return fmt.Errorf("%w: %q", ErrUnknownRegion, c.Region)
	}
	counts := map[string]int{}
	for _, id := range s.pins {
		counts[id]++
	}
	best := ""
	for _, id := range slices.Sorted(maps.Keys(s.shards)) {
		sh := s.shards[id]
		if sh.HomeRegion != c.Region || sh.State != ShardActive {
			continue
		}
		if best == "" || counts[id] < counts[best] {
			best = id
		}
	}
	if best == "" {
		return fmt.Errorf("%w: %s", ErrNoShardInRegion, c.Region)
	}
	s.pins[c.Tenant] = best
	// The region is kept apart from the pin: a move's cutover pins too, and the residency
	// rule (a tenant created with a region stays in it) must outlive any number of moves.
	s.homes[c.Tenant] = c.Region
	return nil
}

func (s *state) requestMove(c RequestMove, index uint64, at time.Time) error {
	if !ids.ValidTenant(c.Tenant) {
		return fmt.Errorf("%w: %q", ErrBadTenantID, c.Tenant)
	}
	id := c.ID
	if id == "" {
		id = MoveIDForIndex(index)
	}
	if len(id) > 128 {
		return fmt.Errorf("%w: move id too long", ErrBadCommand)
	}
	if _, ok := s.moves[id]; ok {
		return fmt.Errorf("%w: %s", ErrMoveExists, id)
	}
	if s.moving(c.Tenant) {
		return fmt.Errorf("%w: %s", ErrTenantMoving, c.Tenant)
	}
	if err := s.activeShard(c.To); err != nil {
		return err
	}
	from := s.shardOf(c.Tenant)
	if from == c.To {
		return fmt.Errorf("%w: %s on %s", ErrSameShard, c.Tenant, c.To)
	}
	s.moves[id] = Move{ID: id, Tenant: c.Tenant, From: from, To: c.To, Phase: PhaseRequested, CreatedAt: at, UpdatedAt: at}
	return nil
}

// fsm is the Raft state machine of a Node. Its methods are kept off Node's public API.
type fsm Node

var _ raft.FSM = (*fsm)(nil)

// applyResult is the response of fsm.Apply: nil on success, or the business-rule error.
type applyResult struct{ err error }

// Apply applies one log entry. An entry that does not decode panics: continuing would let
// this node's state diverge from the others.
func (f *fsm) Apply(l *raft.Log) any {
	cmd, at, err := decodeEntry(l.Data)
	if errors.Is(err, errIgnored) {
		return applyResult{}
	}
	if err != nil {
		panic(fmt.Sprintf("shardmap: undecodable log entry %d: %v", l.Index, err))
	}
	cur := (*Node)(f).current()
	next := cur.st.clone()
	if err := next.apply(cmd, l.Index, at); err != nil {
		return applyResult{err: err}
	}
	(*Node)(f).publish(buildMap(next))
	return applyResult{}
}

// Snapshot captures the current map; it is immutable, so no copy is needed.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{m: (*Node)(f).current()}, nil
}

// Restore replaces the state with a snapshot's.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, err := readSnapshot(rc)
	if err != nil {
		return err
	}
	(*Node)(f).publish(buildMap(s))
	return nil
}

// snapshotHeader is the first line of a snapshot.
type snapshotHeader struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
}

const snapshotFormat = "meridian-shardmap"

type fsmSnapshot struct{ m *Map }

// Persist writes a header line then the canonical state line; every error path cancels the sink.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := writeSnapshot(sink, s.m.st); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

func writeSnapshot(w io.Writer, st *state) error {
	h, _ := json.Marshal(snapshotHeader{Format: snapshotFormat, Version: 1})
	var buf bytes.Buffer
	buf.Write(h)
	buf.WriteByte('\n')
	buf.Write(st.canonical())
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

func readSnapshot(r io.Reader) (*state, error) {
	br := bufio.NewReader(r)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("shardmap: snapshot header: %w", err)
	}
	var h snapshotHeader
	if err := json.Unmarshal(line, &h); err != nil || h.Format != snapshotFormat || h.Version != 1 {
		return nil, fmt.Errorf("shardmap: snapshot header %q not understood", bytes.TrimSpace(line))
	}
	body, err := io.ReadAll(br)
	if err != nil {
		return nil, fmt.Errorf("shardmap: snapshot body: %w", err)
	}
	return decodeState(bytes.TrimSpace(body))
}
