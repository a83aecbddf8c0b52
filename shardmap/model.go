package shardmap

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/meridian-dev/meridian/shardmap/ids"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Shard states.
const (
	ShardActive   = "active"
	ShardDraining = "draining"
)

// Phase is a tenant move phase (DESIGN.md §8).
type Phase string

// Move phases, in order; Done, Cancelled and Failed are terminal.
const (
	PhaseRequested Phase = "requested"
	PhaseDualWrite Phase = "dual_write"
	PhaseBackfill  Phase = "backfill"
	PhaseVerify    Phase = "verify"
	PhaseCutover   Phase = "cutover"
	PhaseCleanup   Phase = "cleanup"
	PhaseDone      Phase = "done"
	PhaseCancelled Phase = "cancelled"
	PhaseFailed    Phase = "failed"
)

// Terminal reports whether no further transition is possible from p.
func (p Phase) Terminal() bool {
	return p == PhaseDone || p == PhaseCancelled || p == PhaseFailed
}

// Shard is one Postgres database. Endpoints maps a region to the host:port of that region's copy
// (the primary in HomeRegion, hot standbys elsewhere). Values returned by a Map are copies.
type Shard struct {
	ID         string            `json:"id"`
	HomeRegion string            `json:"home_region"`
	Database   string            `json:"database"`
	Endpoints  map[string]string `json:"endpoints"`
	State      string            `json:"state"`
}

func (s Shard) clone() Shard {
	s.Endpoints = maps.Clone(s.Endpoints)
	return s
}

// Move is a tenant move and its progress, as recorded in the map.
type Move struct {
	ID         string `json:"id"`
	Tenant     string `json:"tenant"`
	From       string `json:"from_shard"`
	To         string `json:"to_shard"`
	Phase      Phase  `json:"phase"`
	RowsCopied int64  `json:"rows_copied"`
	RowsTotal  int64  `json:"rows_total"`
	Repairs    int64  `json:"repairs"`
	PauseMS    int64  `json:"pause_ms"`
	// FirstWriteMS is the pause as a client sees it: from the fence to the first write the
	// target accepted (both by the databases' clocks), 0 until known or if no write came
	// before the cleanup (then absent in JSON, so older snapshots re-encode byte for byte).
	FirstWriteMS int64 `json:"first_write_ms,omitempty"`
	// CopiedUpTo is the backfill's cursor: every source key <= it has been copied by this
	// move's backfill (the contiguous prefix of finished key ranges, not the furthest batch of
	// any stream), so a restarted backfill copies only the keys after it. Only the backfill
	// phase sets it; it means nothing after. The zero MoveKey (no cursor) sorts before every
	// key and is absent in JSON (omitzero: omitempty never omits a struct), so older snapshots
	// re-encode byte for byte. A value, not a pointer, so a Move copied out of a Map shares
	// nothing with it.
	CopiedUpTo MoveKey   `json:"copied_up_to,omitzero"`
	Error      string    `json:"error"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// MoveKey is a record key as a move records it: a tenant's (collection, id) primary key,
// ordered by bytes (the records table's "C" collation). It mirrors the records store's key;
// shardmap does not import the store.
type MoveKey struct {
	Collection string `json:"collection"`
	ID         string `json:"id"`
}

// maxMoveKeyPart bounds each part of a MoveKey in a command, so a command cannot grow the map
// unbounded. It is a size bound, not a validation of the key (record ids are at most 128
// bytes, collection names 63): the store's keys are recorded as they are.
const maxMoveKeyPart = 1024

// Route is the answer of Map.Lookup: where a tenant lives and under which map version.
type Route struct {
	Shard      string
	HomeRegion string
	Epoch      uint64
	Version    uint64
	Pinned     bool
	Moving     bool
}

// state is the mutable model the FSM works on. The FSM never mutates a published state: it
// clones, applies, and publishes the clone only when the command succeeded.
type state struct {
	version   uint64
	slotCount int
	regions   []string          // sorted
	shards    map[string]Shard  // values are treated as immutable; replace, never edit
	slots     []string          // shard id per slot; empty before bootstrap
	pins      map[string]string // tenant -> shard
	epochs    map[string]uint64 // tenant -> write epoch, only when > 1
	moves     map[string]Move
	nodes     map[string]string       // raft server id -> HTTP base URL of that node's Handler
	limits    map[string]TenantLimits // tenant -> limit overrides, only while one is set
	homes     map[string]string       // tenant -> region it was created in (CreateTenant with a region)
	leases    map[string]Lease        // lease name -> holder and expiry
}

func newState() *state {
	return &state{
		shards: map[string]Shard{},
		pins:   map[string]string{},
		epochs: map[string]uint64{},
		moves:  map[string]Move{},
		nodes:  map[string]string{},
		limits: map[string]TenantLimits{},
		homes:  map[string]string{},
		leases: map[string]Lease{},
	}
}

func (s *state) clone() *state {
	return &state{
		version:   s.version,
		slotCount: s.slotCount,
		regions:   slices.Clone(s.regions),
		shards:    maps.Clone(s.shards),
		slots:     slices.Clone(s.slots),
		pins:      maps.Clone(s.pins),
		epochs:    maps.Clone(s.epochs),
		moves:     maps.Clone(s.moves),
		nodes:     maps.Clone(s.nodes),
		limits:    maps.Clone(s.limits),
		homes:     maps.Clone(s.homes),
		leases:    maps.Clone(s.leases),
	}
}

// wireState is the canonical encoding of a state: JSON with sorted lists, and maps (which
// encoding/json writes with sorted keys). Snapshots, the watch API and equality tests use it.
type wireState struct {
	Version   uint64            `json:"version"`
	SlotCount int               `json:"slot_count"`
	Regions   []string          `json:"regions"`
	Shards    []Shard           `json:"shards"`
	Slots     []string          `json:"slots"`
	Pins      map[string]string `json:"pins"`
	Epochs    map[string]uint64 `json:"epochs"`
	Moves     []Move            `json:"moves"`
	Nodes     map[string]string `json:"nodes"`
	// Limits is omitted while empty, so maps without overrides encode as they always did.
	Limits map[string]TenantLimits `json:"tenant_limits,omitempty"`
	// Homes and Leases are omitted while empty for the same reason; a snapshot written before
	// they existed has neither key and loads with none.
	Homes  map[string]string `json:"tenant_regions,omitempty"`
	Leases map[string]Lease  `json:"leases,omitempty"`
}

func (s *state) wire() wireState {
	w := wireState{
		Version:   s.version,
		SlotCount: s.slotCount,
		Regions:   nonNil(s.regions),
		Shards:    make([]Shard, 0, len(s.shards)),
		Slots:     nonNil(s.slots),
		Pins:      s.pins,
		Epochs:    s.epochs,
		Moves:     make([]Move, 0, len(s.moves)),
		Nodes:     s.nodes,
		Limits:    s.limits,
		Homes:     s.homes,
		Leases:    s.leases,
	}
	for _, id := range slices.Sorted(maps.Keys(s.shards)) {
		w.Shards = append(w.Shards, s.shards[id])
	}
	for _, id := range slices.Sorted(maps.Keys(s.moves)) {
		w.Moves = append(w.Moves, s.moves[id])
	}
	return w
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func (s *state) canonical() []byte {
	b, err := json.Marshal(s.wire())
	if err != nil {
		// Only plain strings, numbers and times are encoded; this cannot fail.
		panic(fmt.Sprintf("shardmap: encode state: %v", err))
	}
	return b
}

// decodeState parses a canonical encoding and checks it is internally consistent, so a bad
// snapshot or watch answer is an error, not a panic later in Lookup.
func decodeState(b []byte) (*state, error) {
	var w wireState
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("shardmap: decode state: %w", err)
	}
	s := newState()
	s.version = w.Version
	s.slotCount = w.SlotCount
	s.regions = w.Regions
	if len(s.regions) == 0 {
		s.regions = nil
	}
	slices.Sort(s.regions)
	for _, sh := range w.Shards {
		if sh.Endpoints == nil {
			sh.Endpoints = map[string]string{}
		}
		s.shards[sh.ID] = sh
	}
	if len(w.Slots) > 0 {
		s.slots = w.Slots
	}
	if len(s.slots) != s.slotCount {
		return nil, fmt.Errorf("shardmap: decode state: %d slots, slot_count %d", len(s.slots), s.slotCount)
	}
	for i, id := range s.slots {
		if _, ok := s.shards[id]; !ok {
			return nil, fmt.Errorf("shardmap: decode state: slot %d on unknown shard %q", i, id)
		}
	}
	for t, id := range w.Pins {
		if _, ok := s.shards[id]; !ok {
			return nil, fmt.Errorf("shardmap: decode state: tenant %q pinned to unknown shard %q", t, id)
		}
		s.pins[t] = id
	}
	maps.Copy(s.epochs, w.Epochs)
	for _, m := range w.Moves {
		s.moves[m.ID] = m
	}
	maps.Copy(s.nodes, w.Nodes)
	if err := checkLimits(w.Limits); err != nil {
		return nil, fmt.Errorf("shardmap: decode state: %w", err)
	}
	maps.Copy(s.limits, w.Limits)
	if err := checkHomesAndLeases(s.regions, w.Homes, w.Leases); err != nil {
		return nil, fmt.Errorf("shardmap: decode state: %w", err)
	}
	maps.Copy(s.homes, w.Homes)
	maps.Copy(s.leases, w.Leases)
	if len(s.shards) >= ids.MaxSlotCount {
		return nil, fmt.Errorf("shardmap: decode state: too many shards")
	}
	return s, nil
}

// tenantEntry is what a Map knows about a tenant beyond its slot.
type tenantEntry struct {
	shard  int32 // index into Map.shards; -1 = not pinned
	epoch  uint64
	moving bool
}

// Map is an immutable snapshot of the shard map. It is never mutated after it is published;
// all methods are safe for concurrent use.
type Map struct {
	st      *state
	shards  []Shard // sorted by id
	routes  []Route // precomputed route per shard index
	slots   []uint16
	tenants map[string]tenantEntry
	shardIx map[string]int
	active  map[string]string // tenant -> id of its non-terminal move

	encOnce sync.Once
	enc     []byte
}

// encoded returns the canonical encoding, computed once per Map (the watch API serves it to
// every client).
func (m *Map) encoded() []byte {
	m.encOnce.Do(func() { m.enc = m.st.canonical() })
	return m.enc
}

// emptyMap is what a node or client serves before it knows anything.
var emptyMap = buildMap(newState())

func buildMap(s *state) *Map {
	m := &Map{st: s, shardIx: make(map[string]int, len(s.shards))}
	ids := slices.Sorted(maps.Keys(s.shards))
	for i, id := range ids {
		sh := s.shards[id]
		m.shards = append(m.shards, sh)
		m.shardIx[id] = i
		m.routes = append(m.routes, Route{Shard: sh.ID, HomeRegion: sh.HomeRegion, Epoch: 1, Version: s.version})
	}
	m.slots = make([]uint16, len(s.slots))
	for i, id := range s.slots {
		m.slots[i] = uint16(m.shardIx[id])
	}
	m.tenants = make(map[string]tenantEntry, len(s.pins)+len(s.epochs))
	entry := func(t string) tenantEntry {
		if e, ok := m.tenants[t]; ok {
			return e
		}
		return tenantEntry{shard: -1, epoch: 1}
	}
	for t, id := range s.pins {
		e := entry(t)
		e.shard = int32(m.shardIx[id])
		m.tenants[t] = e
	}
	for t, ep := range s.epochs {
		e := entry(t)
		e.epoch = ep
		m.tenants[t] = e
	}
	m.active = map[string]string{}
	for _, mv := range s.moves {
		if !mv.Phase.Terminal() {
			e := entry(mv.Tenant)
			e.moving = true
			m.tenants[mv.Tenant] = e
			m.active[mv.Tenant] = mv.ID
		}
	}
	return m
}

// Version is the Raft index of the last applied change (0 = nothing known yet).
func (m *Map) Version() uint64 { return m.st.version }

// SlotCount is the size of the slot table (0 before bootstrap).
func (m *Map) SlotCount() int { return m.st.slotCount }

// Lookup resolves a tenant to its shard, home region and write epoch. It is a pure function of
// the map and does not allocate. It returns ErrBadTenantID for an invalid id and
// ErrNotBootstrapped for a map without topology.
func (m *Map) Lookup(tenant string) (Route, error) {
	if !ids.ValidTenant(tenant) {
		return Route{}, ErrBadTenantID
	}
	if len(m.slots) == 0 {
		return Route{}, ErrNotBootstrapped
	}
	e, ok := m.tenants[tenant]
	var r Route
	if ok && e.shard >= 0 {
		r = m.routes[e.shard]
		r.Pinned = true
	} else {
		r = m.routes[m.slots[xxhash.Sum64String(tenant)%uint64(len(m.slots))]]
	}
	if ok {
		r.Epoch = e.epoch
		r.Moving = e.moving
	}
	return r, nil
}

// SlotOf returns the slot of a tenant id for a table of n slots.
func SlotOf(tenant string, n int) int {
	return int(xxhash.Sum64String(tenant) % uint64(n))
}

// Shard returns a copy of the shard with that id.
func (m *Map) Shard(id string) (Shard, bool) {
	i, ok := m.shardIx[id]
	if !ok {
		return Shard{}, false
	}
	return m.shards[i].clone(), true
}

// Shards returns copies of all shards, sorted by id.
func (m *Map) Shards() []Shard {
	out := make([]Shard, len(m.shards))
	for i, s := range m.shards {
		out[i] = s.clone()
	}
	return out
}

// Regions returns the region ids, sorted.
func (m *Map) Regions() []string { return slices.Clone(m.st.regions) }

// Pins returns a copy of the tenant → shard pins.
func (m *Map) Pins() map[string]string { return maps.Clone(m.st.pins) }

// SlotShard returns the shard that owns slot i ("" when out of range).
func (m *Map) SlotShard(i int) string {
	if i < 0 || i >= len(m.st.slots) {
		return ""
	}
	return m.st.slots[i]
}

// Moves returns all moves (including finished ones), sorted by id.
func (m *Map) Moves() []Move {
	out := make([]Move, 0, len(m.st.moves))
	for _, id := range slices.Sorted(maps.Keys(m.st.moves)) {
		out = append(out, m.st.moves[id])
	}
	return out
}

// Move returns the move with that id.
func (m *Map) Move(id string) (Move, bool) {
	mv, ok := m.st.moves[id]
	return mv, ok
}

// Nodes returns a copy of the map nodes' HTTP base URLs by Raft server id.
func (m *Map) Nodes() map[string]string { return maps.Clone(m.st.nodes) }

// Canonical returns the canonical encoding of the map's state (sorted JSON). Two maps with the
// same state have byte-equal encodings.
func (m *Map) Canonical() []byte { return bytes.Clone(m.encoded()) }

// MarshalJSON encodes the map canonically; it is the body of GET /internal/v1/shardmap.
func (m *Map) MarshalJSON() ([]byte, error) { return m.Canonical(), nil }

// DecodeMap parses a canonical encoding (as served by the watch API) into a Map.
func DecodeMap(b []byte) (*Map, error) {
	s, err := decodeState(b)
	if err != nil {
		return nil, err
	}
	return buildMap(s), nil
}
