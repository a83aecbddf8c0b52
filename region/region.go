// Package region owns Meridian's region identity and the gossip layer that tells every process
// which routers and API nodes exist, in which region, at which HTTP address, and how healthy
// they are (DESIGN.md §1, §5).
//
// A Cluster wraps one hashicorp/memberlist instance. Each member publishes a typed Meta
// (region, role, HTTP address, health, replica lag, shard-map version) encoded as JSON in
// memberlist's node metadata (at most 512 bytes); every member decodes the others' metadata
// and keeps them indexed by region and role, so Peers("eu-west", RoleAPI) is a map lookup.
// Membership changes are announced on a coalescing channel (Changes) and, optionally, to a
// callback (Config.OnChange).
//
// Join is how every node takes part: routers and API nodes alike call it with their role, their
// advertised URL and a Status callback; a publisher inside the Cluster then refreshes the node's
// replica lag and shard-map version in its metadata (only when they changed, since every
// metadata update is broadcast), and Depart drains, leaves and shuts the membership down.
//
// The package must never decide routing: it reports who is there and what they say about
// themselves; upstream selection, ejection and retries live in internal/upstream.
// It imports only memberlist, shardmap/ids (the region id rule) and the standard library.
//
// Tests should build members with TestConfig, which binds 127.0.0.1 on a kernel-chosen port and
// cuts memberlist's probe and gossip intervals to tens of milliseconds.
//
// Defaults (zero values of Config):
//   - Name "": "<region>/<role>/<http addr>", unique as long as HTTP addresses are.
//   - BindAddr "": "0.0.0.0"; BindPort 0: a free port picked by the kernel (see Addr).
//   - AdvertiseAddr/AdvertisePort zero: memberlist's choice (the bind address, or the first
//     private IP when bound to 0.0.0.0).
//   - Memberlist nil: memberlist.DefaultLANConfig() (probe 1 s, gossip 200 ms, push/pull 30 s)
//     without compression: memberlist compresses every message with a newly allocated LZW
//     writer, about an eighth of an idle router's CPU profile, to shrink messages of a few
//     hundred bytes (a member's meta is at most MetaMaxSize) on a LAN. A member decodes
//     compressed messages whatever its own setting, so members of either kind mix.
//   - Logger nil: slog.Default(); memberlist's own log lines are forwarded to it.
//   - Meta.Health "": HealthOK.
//   - OnChange nil: no callback; Changes() still works.
package region

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/meridian-dev/meridian/shardmap/ids"
)

// Errors returned by this package.
var (
	// ErrBadMeta means member metadata is invalid (missing region, unknown role or health)
	// or does not fit memberlist's 512-byte limit once encoded.
	ErrBadMeta = errors.New("region: invalid member metadata")
	// ErrNoPeersJoined means Join could not reach any of the given addresses before its
	// context ended.
	ErrNoPeersJoined = errors.New("region: could not join any peer")
	// ErrShutdown means the Cluster has been shut down.
	ErrShutdown = errors.New("region: cluster is shut down")
	// ErrBadAddr means a gossip address is not "host:port" with a port in [0, 65535].
	ErrBadAddr = errors.New("region: invalid gossip address")
)

// Role is what a member does.
type Role string

// Roles of members.
const (
	RoleRouter Role = "router"
	RoleAPI    Role = "api"
)

// Health is what a member says about itself.
type Health string

// Health values. Only HealthOK members should receive new traffic; HealthDraining members
// finish what they have; HealthDown members are alive in gossip but cannot serve.
const (
	HealthOK       Health = "ok"
	HealthDraining Health = "draining"
	HealthDown     Health = "down"
)

// Meta is the typed metadata a member gossips about itself.
type Meta struct {
	Region     string `json:"region"`
	Role       Role   `json:"role"`
	HTTPAddr   string `json:"http"`                  // base URL or host:port of the member's HTTP server
	Health     Health `json:"health"`                // "" is read as HealthOK
	LagMS      int64  `json:"lag_ms,omitempty"`      // replica replay lag of the member's standby, ms
	MapVersion uint64 `json:"map_version,omitempty"` // version of the member's shard-map copy
}

// Validate reports whether m is acceptable to publish.
func (m Meta) Validate() error {
	if !ids.ValidRegion(m.Region) {
		return fmt.Errorf("%w: region %q does not match %s", ErrBadMeta, m.Region, ids.NamePattern)
	}
	switch m.Role {
	case RoleRouter, RoleAPI:
	default:
		return fmt.Errorf("%w: role %q", ErrBadMeta, m.Role)
	}
	switch m.Health {
	case "", HealthOK, HealthDraining, HealthDown:
	default:
		return fmt.Errorf("%w: health %q", ErrBadMeta, m.Health)
	}
	if m.LagMS < 0 {
		return fmt.Errorf("%w: negative lag %d", ErrBadMeta, m.LagMS)
	}
	return nil
}

// encodeMeta validates and encodes m, enforcing memberlist's size limit.
func encodeMeta(m Meta) ([]byte, error) {
	if m.Health == "" {
		m.Health = HealthOK
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadMeta, err)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("%w: %d bytes encoded, limit %d", ErrBadMeta, len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

// DecodeMeta parses metadata received from another member. It is outside input: unknown
// fields are ignored (newer members may add some), but the result must validate.
func DecodeMeta(b []byte) (Meta, error) {
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, fmt.Errorf("%w: %v", ErrBadMeta, err)
	}
	if m.Health == "" {
		m.Health = HealthOK
	}
	if err := m.Validate(); err != nil {
		return Meta{}, err
	}
	return m, nil
}

// State is a member's liveness as seen by gossip.
type State string

// States of members. Dead and left members are removed from the index, so callers normally
// only see StateAlive and StateSuspect.
const (
	StateAlive   State = "alive"
	StateSuspect State = "suspect"
)

// Member is one process in the gossip cluster.
type Member struct {
	Name       string
	GossipAddr string // host:port of the member's memberlist transport
	State      State
	Meta
}

// Serving reports whether the member should receive new traffic: alive and healthy.
func (m Member) Serving() bool {
	return m.State == StateAlive && m.Health == HealthOK
}

// EventType says what happened to a member.
type EventType int

// Event types.
const (
	EventJoin EventType = iota + 1
	EventUpdate
	EventLeave
)

func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventLeave:
		return "leave"
	}
	return "unknown"
}

// Event is one membership change.
type Event struct {
	Type   EventType
	Member Member
}

// Config configures a Cluster. The package doc lists every default.
type Config struct {
	// Name is the unique member name. "" = "<region>/<role>/<http addr>".
	Name string
	// Meta is the initial metadata; Region and Role are required.
	Meta Meta
	// BindAddr is the gossip listen address. "" = "0.0.0.0".
	BindAddr string
	// BindPort is the gossip port (TCP and UDP). 0 = a free port chosen by the kernel.
	BindPort int
	// AdvertiseAddr and AdvertisePort are what others dial. Zero = memberlist's choice.
	AdvertiseAddr string
	AdvertisePort int
	// Memberlist, if non-nil, is the base memberlist configuration (timings, keyring, label).
	// Its Name, Bind*, Advertise*, Delegate, Events and Logger fields are overwritten.
	// nil = memberlist.DefaultLANConfig().
	Memberlist *memberlist.Config
	// Logger receives this package's and memberlist's logs. nil = slog.Default().
	Logger *slog.Logger
	// OnChange, if non-nil, is called for every join, update and leave, after the index is
	// updated. It runs on memberlist's goroutine with memberlist's locks held: it must not
	// block and must not call Join, Leave, UpdateMeta or Shutdown (reading Members and Peers
	// is fine).
	OnChange func(Event)
}

// defaultMemberlist is the memberlist configuration of a Config without one (the package doc
// says why compression is off).
func defaultMemberlist() *memberlist.Config {
	ml := memberlist.DefaultLANConfig()
	ml.EnableCompression = false
	return ml
}

// TestConfig returns a Config for tests: loopback, kernel-chosen port, and memberlist timings
// cut so that joins propagate in tens of milliseconds and a dead member is removed within
// about a second.
func TestConfig(name string, meta Meta) Config {
	ml := memberlist.DefaultLocalConfig()
	ml.ProbeInterval = 100 * time.Millisecond
	ml.ProbeTimeout = 50 * time.Millisecond
	ml.GossipInterval = 10 * time.Millisecond
	ml.PushPullInterval = 200 * time.Millisecond
	ml.SuspicionMult = 3
	ml.SuspicionMaxTimeoutMult = 2
	ml.TCPTimeout = 200 * time.Millisecond
	ml.GossipToTheDeadTime = 500 * time.Millisecond
	ml.DeadNodeReclaimTime = 10 * time.Millisecond
	return Config{
		Name:       name,
		Meta:       meta,
		BindAddr:   "127.0.0.1",
		Memberlist: ml,
	}
}

// Cluster is this process's membership in the gossip cluster. All methods are safe for
// concurrent use.
type Cluster struct {
	ml       *memberlist.Memberlist
	name     string // this member's name, fixed at New
	addr     string // this member's gossip host:port, fixed at New
	log      *slog.Logger
	onChange func(Event)
	changes  chan struct{}

	// metaMu guards local.
	metaMu sync.Mutex
	local  Meta
	// metaSent counts the metadata updates gossiped after the first announcement; tests read it
	// to prove that an unchanged Status is not broadcast.
	metaSent atomic.Uint64

	// stopPublish ends the Status publisher started by Join (nil without one); published is
	// closed when it has returned.
	stopPublish context.CancelFunc
	published   chan struct{}

	// mu guards the fields below.
	mu       sync.RWMutex
	members  map[string]Member            // by name
	byRegion map[string]map[Role][]Member // rebuilt on every change; slices sorted by name
	shutdown bool
}

// New starts gossiping on the configured address. It does not contact anyone: call Join.
func New(cfg Config) (*Cluster, error) {
	if cfg.Meta.Health == "" {
		cfg.Meta.Health = HealthOK
	}
	if _, err := encodeMeta(cfg.Meta); err != nil {
		return nil, err
	}
	c := &Cluster{
		log:      cfg.Logger,
		onChange: cfg.OnChange,
		changes:  make(chan struct{}, 1),
		local:    cfg.Meta,
		members:  make(map[string]Member),
		byRegion: make(map[string]map[Role][]Member),
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	ml := cfg.Memberlist
	if ml == nil {
		ml = defaultMemberlist()
	} else {
		cp := *ml // the caller's config may be shared between members in tests
		ml = &cp
	}
	ml.Name = cfg.Name
	if ml.Name == "" {
		ml.Name = cfg.Meta.Region + "/" + string(cfg.Meta.Role) + "/" + cfg.Meta.HTTPAddr
	}
	ml.BindAddr = cfg.BindAddr
	if ml.BindAddr == "" {
		ml.BindAddr = "0.0.0.0"
	}
	ml.BindPort = cfg.BindPort
	ml.AdvertiseAddr = cfg.AdvertiseAddr
	ml.AdvertisePort = cfg.AdvertisePort
	if ml.AdvertisePort == 0 {
		ml.AdvertisePort = cfg.BindPort // memberlist replaces both when BindPort is 0
	}
	ml.Delegate = (*delegate)(c)
	ml.Events = (*events)(c)
	ml.LogOutput = nil
	ml.Logger = log.New(&slogWriter{log: c.log.With("component", "memberlist")}, "", 0)

	m, err := memberlist.Create(ml)
	if err != nil {
		return nil, fmt.Errorf("region: start memberlist: %w", err)
	}
	c.ml = m
	// Read once: memberlist rewrites its local node's fields when metadata is updated, so
	// reading them later would race the Status publisher.
	local := m.LocalNode()
	c.name, c.addr = local.Name, local.Address()
	return c, nil
}

// Join contacts the given gossip addresses ("host:port"), retrying until at least one
// answers or ctx ends, so members can start in any order. It returns how many were reached.
// Joining nobody (empty addrs) is not an error: the member forms a cluster of one.
func (c *Cluster) Join(ctx context.Context, addrs []string) (int, error) {
	if len(addrs) == 0 {
		return 0, nil
	}
	backoff := 50 * time.Millisecond
	for {
		if c.isShutdown() {
			return 0, ErrShutdown
		}
		n, err := c.ml.Join(addrs)
		if n > 0 {
			return n, nil
		}
		c.log.Debug("region: join attempt failed", "addrs", addrs, "err", err)
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: %v (last error: %v)", ErrNoPeersJoined, ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

// Addr is the host:port others use to Join this member.
func (c *Cluster) Addr() string { return c.addr }

// Name is this member's unique name.
func (c *Cluster) Name() string { return c.name }

// LocalMeta returns the metadata this member currently publishes.
func (c *Cluster) LocalMeta() Meta {
	c.metaMu.Lock()
	defer c.metaMu.Unlock()
	return c.local
}

// UpdateMeta changes this member's metadata with f and gossips it, waiting for the update to
// be sent (bounded by ctx's deadline, 1 s without one). If f changes nothing, nothing is sent.
// If the new metadata is invalid the old one stays published and ErrBadMeta is returned.
func (c *Cluster) UpdateMeta(ctx context.Context, f func(*Meta)) error {
	if c.isShutdown() {
		return ErrShutdown
	}
	c.metaMu.Lock()
	next := c.local
	f(&next)
	if next.Health == "" {
		next.Health = HealthOK
	}
	if next == c.local {
		// Every update is broadcast to the whole cluster: send none when nothing changed.
		c.metaMu.Unlock()
		return nil
	}
	if _, err := encodeMeta(next); err != nil {
		c.metaMu.Unlock()
		return err
	}
	c.local = next
	c.metaMu.Unlock()

	timeout := time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c.metaSent.Add(1)
	if err := c.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("region: gossip metadata update: %w", err)
	}
	return nil
}

// Members returns every known live member (alive or suspect), this one included, sorted by
// name.
func (c *Cluster) Members() []Member {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Member, 0, len(c.members))
	for _, m := range c.members {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Member) int { return cmpString(a.Name, b.Name) })
	return out
}

// Peers returns the live members of region with role, whatever their health (see
// Member.Serving), sorted by name. The slice is a copy.
func (c *Cluster) Peers(region string, role Role) []Member {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Clone(c.byRegion[region][role])
}

// Regions returns the regions that have at least one live member, sorted.
func (c *Cluster) Regions() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]string, 0, len(c.byRegion))
	for r := range c.byRegion {
		out = append(out, r)
	}
	slices.Sort(out)
	return out
}

// Changes returns a channel that receives a value after membership or metadata changed.
// Notifications coalesce: one value may stand for many changes, so a reader re-reads
// Members or Peers on every receive.
func (c *Cluster) Changes() <-chan struct{} {
	return c.changes
}

// Leave announces this member's departure and waits for it to be gossiped (bounded by ctx's
// deadline, 1 s without one). The member stays reachable until Shutdown.
func (c *Cluster) Leave(ctx context.Context) error {
	if c.isShutdown() {
		return ErrShutdown
	}
	timeout := time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := c.ml.Leave(timeout); err != nil {
		return fmt.Errorf("region: leave: %w", err)
	}
	return nil
}

// Shutdown stops the Status publisher and gossiping, and closes the listeners without
// announcing a leave (others will detect the member as dead). It is idempotent.
func (c *Cluster) Shutdown() error {
	c.mu.Lock()
	if c.shutdown {
		c.mu.Unlock()
		return nil
	}
	c.shutdown = true
	c.mu.Unlock()
	c.stopPublisher()
	return c.ml.Shutdown()
}

func (c *Cluster) isShutdown() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.shutdown
}

// apply records a membership event from memberlist and notifies listeners.
func (c *Cluster) apply(typ EventType, n *memberlist.Node) {
	meta, err := DecodeMeta(n.Meta)
	if err != nil && typ != EventLeave {
		c.log.Warn("region: ignoring member with bad metadata", "member", n.Name, "err", err)
		return
	}
	m := Member{Name: n.Name, GossipAddr: n.Address(), State: StateAlive, Meta: meta}
	if n.State == memberlist.StateSuspect {
		m.State = StateSuspect
	}

	c.mu.Lock()
	if typ == EventLeave {
		if old, ok := c.members[n.Name]; ok {
			m = old
		}
		delete(c.members, n.Name)
	} else {
		c.members[n.Name] = m
	}
	c.reindexLocked()
	c.mu.Unlock()

	c.log.Info("region: member "+typ.String(), "member", m.Name, "region", m.Region,
		"role", string(m.Role), "http", m.HTTPAddr, "health", string(m.Health))
	select {
	case c.changes <- struct{}{}:
	default: // a notification is already pending
	}
	if c.onChange != nil {
		c.onChange(Event{Type: typ, Member: m})
	}
}

// reindexLocked rebuilds byRegion from members; c.mu must be held for writing.
// Rebuilding is O(members) and members change rarely, so reads stay simple map lookups.
func (c *Cluster) reindexLocked() {
	idx := make(map[string]map[Role][]Member)
	for _, m := range c.members {
		byRole := idx[m.Region]
		if byRole == nil {
			byRole = make(map[Role][]Member)
			idx[m.Region] = byRole
		}
		byRole[m.Role] = append(byRole[m.Role], m)
	}
	for _, byRole := range idx {
		for _, ms := range byRole {
			slices.SortFunc(ms, func(a, b Member) int { return cmpString(a.Name, b.Name) })
		}
	}
	c.byRegion = idx
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// delegate is the Cluster seen as a memberlist.Delegate; kept unexported so the memberlist
// callbacks are not part of the public API.
type delegate Cluster

var _ memberlist.Delegate = (*delegate)(nil)

func (d *delegate) NodeMeta(limit int) []byte {
	c := (*Cluster)(d)
	b, err := encodeMeta(c.LocalMeta())
	if err != nil || len(b) > limit {
		// Unreachable: UpdateMeta and New validate before publishing.
		c.log.Error("region: local metadata cannot be encoded", "err", err, "limit", limit)
		return nil
	}
	return b
}

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// events is the Cluster seen as a memberlist.EventDelegate.
type events Cluster

var _ memberlist.EventDelegate = (*events)(nil)

func (e *events) NotifyJoin(n *memberlist.Node)   { (*Cluster)(e).apply(EventJoin, n) }
func (e *events) NotifyUpdate(n *memberlist.Node) { (*Cluster)(e).apply(EventUpdate, n) }
func (e *events) NotifyLeave(n *memberlist.Node)  { (*Cluster)(e).apply(EventLeave, n) }

// slogWriter forwards memberlist's "[LEVEL] memberlist: ..." log lines to slog.
type slogWriter struct{ log *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{
		"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo,
		"[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError,
	} {
		if len(line) >= len(prefix) && line[:len(prefix)] == prefix {
			level = l
			line = string(bytes.TrimSpace([]byte(line[len(prefix):])))
			break
		}
	}
	w.log.Log(context.Background(), level, line)
	return len(p), nil
}

var _ io.Writer = (*slogWriter)(nil)
