// Package topology loads and validates the local multi-region topology file
// (deploy/multi-region/topology.yaml): regions, the inter-region round-trip table, shards,
// routers and API nodes per region, the deterministic port plan and the development limits.
//
// It is the single source the launcher (cmd/sim) and the compose generator (cmd/gencompose)
// derive every id, port and latency proxy from. It must never start processes or open
// sockets: it is pure data. A loaded *Topology is immutable and safe for concurrent use.
// Tests should load the real file with Load(DefaultPath relative to the repo root) or build
// small files with Parse.
package topology

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/meridian-dev/meridian/shardmap/ids"
)

// DefaultPath is the topology file's path relative to the repository root.
const DefaultPath = "deploy/multi-region/topology.yaml"

// Defaults applied when a field is omitted (or zero).
const (
	// DefaultSlotCount is the shard map's default (ids.DefaultSlotCount); slot_count must lie
	// in [1, ids.MaxSlotCount], the range the map accepts at bootstrap.
	DefaultSlotCount         = ids.DefaultSlotCount
	DefaultShardsPerRegion   = 2
	DefaultRoutersPerRegion  = 1
	DefaultAPINodesPerRegion = 1
	DefaultMaxStaleness      = 5 * time.Second
	DefaultHost              = "127.0.0.1"

	// ServiceSpan is the width of one block of service offsets: offsets are below it, and
	// proxies towards region j start at port_base + ServiceSpan*(j+1).
	ServiceSpan = 100
	// MaxInstances is how many instances a multi-instance service (routers, API nodes,
	// standbys) may have: it takes offset .. offset+MaxInstances-1.
	MaxInstances = 10
)

// Errors returned (wrapped, with the offending field) by Parse and Load.
var (
	// ErrInvalid is wrapped by every validation failure.
	ErrInvalid = errors.New("topology: invalid")
	// ErrUnknownRegion is returned by lookups of a region the topology does not have.
	ErrUnknownRegion = errors.New("topology: unknown region")
)

// maxNameLen bounds the names derived from a region id that are not shard-map ids: Postgres
// identifiers (database names) are cut to 63 bytes, so two long names could silently become
// one database, and a compose service name is a DNS label, at most 63 bytes.
const maxNameLen = 63

// Duration is a time.Duration written as a Go duration string ("5s", "66ms") in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: duration must be a string like \"66ms\": %w", n.Line, err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as a Go duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// File is the YAML document as written. Use Parse or Load to get a validated Topology.
type File struct {
	Version           int    `yaml:"version"`
	Host              string `yaml:"host"`
	SlotCount         int    `yaml:"slot_count"`
	ShardsPerRegion   int    `yaml:"shards_per_region"`
	RoutersPerRegion  int    `yaml:"routers_per_region"`
	APINodesPerRegion int    `yaml:"api_nodes_per_region"`
	// RouterLoopListen gives every router a second listener, served through its event-loop
	// front (cmd/router -loop-listen), on ports.offsets.router_loop (+k per router). false (the
	// default) = routers listen on their HTTP port only.
	RouterLoopListen bool `yaml:"router_loop_listen"`
	// RouterFront is what serves every router's HTTP port (cmd/router -front): "loop" (the
	// event-loop front) or "http" (net/http alone); "" (the default) = the router's own default,
	// "loop", with no flag passed (a router that predates the flag would refuse it).
	RouterFront  string       `yaml:"router_front"`
	MaxStaleness Duration     `yaml:"max_staleness"`
	RateLimits   RateLimits   `yaml:"rate_limits"`
	DevJWTSecret string       `yaml:"dev_jwt_secret"`
	Ports        PortsSection `yaml:"ports"`
	Regions      []RegionSpec `yaml:"regions"`
	RTT          []RTTSpec    `yaml:"rtt"`
}

// RateLimits are the routers' development rate limits. Zero fields take the defaults
// (500 rps per tenant, burst 1000, 2000 rps per client IP, burst 2000).
type RateLimits struct {
	TenantRPS   int `yaml:"tenant_rps"`
	TenantBurst int `yaml:"tenant_burst"`
	IPRPS       int `yaml:"ip_rps"`
	IPBurst     int `yaml:"ip_burst"`
}

// PortsSection holds the port offsets. A nil Offsets means DefaultOffsets.
type PortsSection struct {
	Offsets *Offsets `yaml:"offsets"`
}

// Offsets are per-service offsets from a region's port_base. Every field is used as given
// (0 is a valid offset); collisions are reported by validation.
type Offsets struct {
	RouterHTTP   int `yaml:"router_http"`
	RouterRaft   int `yaml:"router_raft"`
	RouterGossip int `yaml:"router_gossip"`
	APIHTTP      int `yaml:"api_http"`
	APIGossip    int `yaml:"api_gossip"`
	Postgres     int `yaml:"postgres"`
	Standby      int `yaml:"standby"`
	Redis        int `yaml:"redis"`
	NATSClient   int `yaml:"nats_client"`
	NATSGateway  int `yaml:"nats_gateway"`
	NATSMonitor  int `yaml:"nats_monitor"`
	// RouterLoop is the routers' event-loop listener (+k per router), claimed only when
	// router_loop_listen is on.
	RouterLoop int `yaml:"router_loop"`
}

// DefaultOffsets is the port plan used when the file has no ports.offsets.
var DefaultOffsets = Offsets{
	RouterHTTP: 0, RouterRaft: 10, RouterGossip: 20, APIHTTP: 30, APIGossip: 40,
	Postgres: 50, Standby: 60, Redis: 70, NATSClient: 80, NATSGateway: 81, NATSMonitor: 82,
	RouterLoop: 90,
}

// RegionSpec is one entry of the regions list.
type RegionSpec struct {
	ID       string `yaml:"id"`
	PortBase int    `yaml:"port_base"`
	// Shards overrides shards_per_region when non-zero.
	Shards int `yaml:"shards"`
}

// RTTSpec is the round trip between two distinct regions.
type RTTSpec struct {
	Between []string `yaml:"between"`
	RTT     Duration `yaml:"rtt"`
}

// Topology is a validated topology. Its methods return copies; it is never mutated.
type Topology struct {
	file    File
	offsets Offsets
	regions []Region
	index   map[string]int
	shards  []Shard
	rtt     map[[2]string]time.Duration
}

// Region is one region with its derived nodes.
type Region struct {
	ID       string
	Index    int
	PortBase int
	Shards   int
}

// Shard is one shard (a Postgres database) homed in a region.
type Shard struct {
	ID         string // "<region>-<n>"
	HomeRegion string
	Database   string // "meridian_<region>_<n>" with '-' turned into '_'
}

// Node is one router or API node.
type Node struct {
	ID     string // "<region>-router-<k>" or "<region>-api-<k>", k from 1
	Region string
	Index  int // k-1
	HTTP   int
	Raft   int // routers only; 0 for API nodes
	Gossip int
	// Loop is a router's event-loop listener; 0 for API nodes and when router_loop_listen is off.
	Loop int
}

// RegionPorts is a region's own service ports.
type RegionPorts struct {
	RouterHTTP   []int
	RouterRaft   []int
	RouterGossip []int
	// RouterLoop is nil when router_loop_listen is off.
	RouterLoop []int
	APIHTTP    []int
	APIGossip  []int
	Postgres   int
	// Standby maps a source region to the port of this region's standby of it.
	Standby     map[string]int
	Redis       int
	NATSClient  int
	NATSGateway int
	NATSMonitor int
}

// Proxy is one latency proxy of the plan: it listens in region From and forwards to a
// service of region To. Every cross-region TCP connection dials the proxy instead of the target.
type Proxy struct {
	Name    string // "<from>-><to>/<service>"
	From    string
	To      string
	Service string // "router-http-1", "router-raft-1", "api-http-1", "postgres", "nats-gateway"
	Listen  int
	Target  int
	RTT     time.Duration
}

// Load reads and validates the topology file at path.
func Load(path string) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("topology: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Parse decodes and validates a topology document. Unknown fields, a second document,
// missing round trips, duplicate ports and invalid ids are errors wrapping ErrInvalid.
func Parse(data []byte) (*Topology, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty document", ErrInvalid)
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: more than one YAML document", ErrInvalid)
	}
	return New(f)
}

// New validates f, applies defaults and derives the plan.
func New(f File) (*Topology, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
	}
	if f.Version != 1 {
		return nil, bad("version: want 1, got %d", f.Version)
	}
	if f.Host == "" {
		f.Host = DefaultHost
	}
	if strings.ContainsAny(f.Host, " :/") {
		return nil, bad("host %q: want a bare host name or IP", f.Host)
	}
	def := func(field string, v *int, d, max int) error {
		if *v < 0 {
			return bad("%s: must not be negative, got %d", field, *v)
		}
		if *v == 0 {
			*v = d
		}
		if *v > max {
			return bad("%s: at most %d, got %d", field, max, *v)
		}
		return nil
	}
	switch f.RouterFront {
	case "", "loop", "http":
	default:
		return nil, bad("router_front: want \"loop\" or \"http\" (or none: the router's default), got %q", f.RouterFront)
	}
	// slot_count has the shard map's range: a file the map would refuse at bootstrap fails here.
	if f.SlotCount == 0 {
		f.SlotCount = DefaultSlotCount
	}
	if f.SlotCount < 1 || f.SlotCount > ids.MaxSlotCount {
		return nil, bad("slot_count: must be in [1,%d] (the shard map's limit), got %d", ids.MaxSlotCount, f.SlotCount)
	}
	for _, c := range []struct {
		name   string
		v      *int
		d, max int
	}{
		{"shards_per_region", &f.ShardsPerRegion, DefaultShardsPerRegion, 99},
		{"routers_per_region", &f.RoutersPerRegion, DefaultRoutersPerRegion, MaxInstances},
		{"api_nodes_per_region", &f.APINodesPerRegion, DefaultAPINodesPerRegion, MaxInstances},
		{"rate_limits.tenant_rps", &f.RateLimits.TenantRPS, 500, 1 << 30},
		{"rate_limits.tenant_burst", &f.RateLimits.TenantBurst, 1000, 1 << 30},
		{"rate_limits.ip_rps", &f.RateLimits.IPRPS, 2000, 1 << 30},
		{"rate_limits.ip_burst", &f.RateLimits.IPBurst, 2000, 1 << 30},
	} {
		if err := def(c.name, c.v, c.d, c.max); err != nil {
			return nil, err
		}
	}
	switch {
	case f.MaxStaleness < 0:
		return nil, bad("max_staleness: must not be negative")
	case f.MaxStaleness == 0:
		f.MaxStaleness = Duration(DefaultMaxStaleness)
	}

	t := &Topology{file: f, index: map[string]int{}, rtt: map[[2]string]time.Duration{}}
	t.offsets = DefaultOffsets
	if f.Ports.Offsets != nil {
		t.offsets = *f.Ports.Offsets
	}
	for _, o := range t.offsets.list() {
		if o.off < 0 || o.off >= ServiceSpan {
			return nil, bad("ports.offsets.%s: must be in [0,%d), got %d", o.name, ServiceSpan, o.off)
		}
	}

	if len(f.Regions) == 0 {
		return nil, bad("regions: at least one region is required")
	}
	if len(f.Regions) > MaxInstances {
		return nil, bad("regions: at most %d, got %d", MaxInstances, len(f.Regions))
	}
	for i, rs := range f.Regions {
		if !ids.ValidRegion(rs.ID) {
			return nil, bad("regions[%d].id %q: want %s (the shard map's region id rule)", i, rs.ID, ids.NamePattern)
		}
		if _, dup := t.index[rs.ID]; dup {
			return nil, bad("regions[%d].id %q: duplicate region", i, rs.ID)
		}
		if rs.Shards < 0 || rs.Shards > 99 {
			return nil, bad("regions[%d].shards: must be in [0,99], got %d", i, rs.Shards)
		}
		shards := rs.Shards
		if shards == 0 {
			shards = f.ShardsPerRegion
		}
		blockEnd := rs.PortBase + ServiceSpan*(len(f.Regions)+1) - 1
		if rs.PortBase < 1024 || blockEnd > 65535 {
			return nil, bad("regions[%d].port_base %d: the region's ports %d..%d must lie in 1024..65535",
				i, rs.PortBase, rs.PortBase, blockEnd)
		}
		t.index[rs.ID] = i
		t.regions = append(t.regions, Region{ID: rs.ID, Index: i, PortBase: rs.PortBase, Shards: shards})
		for n := 1; n <= shards; n++ {
			id := fmt.Sprintf("%s-%d", rs.ID, n)
			if !ids.ValidShard(id) {
				return nil, bad("regions[%d].id %q: its shard id %q is not a valid shard id (%s); use a shorter region id",
					i, rs.ID, id, ids.NamePattern)
			}
			t.shards = append(t.shards, Shard{
				ID:         id,
				HomeRegion: rs.ID,
				Database:   "meridian_" + strings.ReplaceAll(id, "-", "_"),
			})
		}
	}
	if err := t.checkDerivedNames(); err != nil {
		return nil, err
	}

	for i, r := range f.RTT {
		if len(r.Between) != 2 {
			return nil, bad("rtt[%d].between: want exactly two regions, got %d", i, len(r.Between))
		}
		a, b := r.Between[0], r.Between[1]
		for _, id := range r.Between {
			if _, ok := t.index[id]; !ok {
				return nil, bad("rtt[%d].between: region %q is not in regions", i, id)
			}
		}
		if a == b {
			return nil, bad("rtt[%d].between: a region has no round trip to itself (%q)", i, a)
		}
		if r.RTT < 0 || time.Duration(r.RTT) > 10*time.Second {
			return nil, bad("rtt[%d].rtt: must be in [0,10s], got %s", i, time.Duration(r.RTT))
		}
		k := pairKey(a, b)
		if _, dup := t.rtt[k]; dup {
			return nil, bad("rtt[%d]: duplicate round trip for %s<->%s", i, a, b)
		}
		t.rtt[k] = time.Duration(r.RTT)
	}
	for i, a := range t.regions {
		for _, b := range t.regions[i+1:] {
			if _, ok := t.rtt[pairKey(a.ID, b.ID)]; !ok {
				return nil, bad("rtt: no round trip for %s<->%s; every region pair needs one", a.ID, b.ID)
			}
		}
	}

	if err := t.checkPorts(); err != nil {
		return nil, err
	}
	return t, nil
}

// checkDerivedNames checks the names built from region ids that no shard-map rule covers:
// database names, node ids (Raft ids, gossip names) and compose service names must be unique
// and at most maxNameLen bytes. Permissive region ids can collide once joined ("a-of-b"'s
// standby of "c" and "a"'s standby of "b-of-c" are both standby-a-of-b-of-c).
func (t *Topology) checkDerivedNames() error {
	seen := map[string]string{}
	check := func(name, what string) error {
		if len(name) > maxNameLen {
			return fmt.Errorf("%w: %s %q is longer than %d bytes; use shorter region ids", ErrInvalid, what, name, maxNameLen)
		}
		if prev, dup := seen[name]; dup {
			return fmt.Errorf("%w: %s %q is also the name of %s", ErrInvalid, what, name, prev)
		}
		seen[name] = what
		return nil
	}
	for _, s := range t.shards {
		if err := check(s.Database, "database of shard "+s.ID); err != nil {
			return err
		}
	}
	for _, r := range t.regions {
		names := []string{ComposePostgres(r.ID), ComposeRedis(r.ID), ComposeNATS(r.ID)}
		for _, n := range t.Routers(r.ID) {
			names = append(names, composeRouter(n))
			if err := check(n.ID, "node id"); err != nil {
				return err
			}
		}
		for _, n := range t.APINodes(r.ID) {
			names = append(names, composeAPI(n))
			if err := check(n.ID, "node id"); err != nil {
				return err
			}
		}
		for _, src := range t.regions {
			if src.ID != r.ID {
				names = append(names, ComposeStandby(r.ID, src.ID))
			}
		}
		for _, name := range names {
			if err := check(name, "compose service"); err != nil {
				return err
			}
		}
	}
	return nil
}

type namedOffset struct {
	name string
	off  int
	n    int // instances
}

func (o Offsets) list() []namedOffset {
	return []namedOffset{
		{"router_http", o.RouterHTTP, 0}, {"router_raft", o.RouterRaft, 0},
		{"router_gossip", o.RouterGossip, 0}, {"api_http", o.APIHTTP, 0},
		{"api_gossip", o.APIGossip, 0}, {"postgres", o.Postgres, 1}, {"standby", o.Standby, 0},
		{"redis", o.Redis, 1}, {"nats_client", o.NATSClient, 1},
		{"nats_gateway", o.NATSGateway, 1}, {"nats_monitor", o.NATSMonitor, 1},
		{"router_loop", o.RouterLoop, 0},
	}
}

// checkPorts derives every port of the plan, proxies included, and fails on the first
// port used twice, naming both users.
func (t *Topology) checkPorts() error {
	used := map[int]string{}
	claim := func(port int, who string) error {
		if port < 1024 || port > 65535 {
			return fmt.Errorf("%w: ports: %s would be port %d, outside 1024..65535", ErrInvalid, who, port)
		}
		if prev, ok := used[port]; ok {
			return fmt.Errorf("%w: ports: port %d is used by both %s and %s", ErrInvalid, port, prev, who)
		}
		used[port] = who
		return nil
	}
	for _, r := range t.regions {
		p := t.mustPorts(r.ID)
		for name, ports := range map[string][]int{
			"router_http": p.RouterHTTP, "router_raft": p.RouterRaft, "router_gossip": p.RouterGossip,
			"router_loop": p.RouterLoop, "api_http": p.APIHTTP, "api_gossip": p.APIGossip,
		} {
			for k, port := range ports {
				if err := claim(port, fmt.Sprintf("%s %s[%d]", r.ID, name, k)); err != nil {
					return err
				}
			}
		}
		for src, port := range p.Standby {
			if err := claim(port, fmt.Sprintf("%s standby of %s", r.ID, src)); err != nil {
				return err
			}
		}
		for name, port := range map[string]int{
			"postgres": p.Postgres, "redis": p.Redis, "nats_client": p.NATSClient,
			"nats_gateway": p.NATSGateway, "nats_monitor": p.NATSMonitor,
		} {
			if err := claim(port, r.ID+" "+name); err != nil {
				return err
			}
		}
	}
	for _, px := range t.Proxies() {
		if err := claim(px.Listen, "proxy "+px.Name); err != nil {
			return err
		}
	}
	return nil
}

func pairKey(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

// Host is the address every local process binds and dials.
func (t *Topology) Host() string { return t.file.Host }

// SlotCount is the number of hash slots.
func (t *Topology) SlotCount() int { return t.file.SlotCount }

// MaxStaleness is the default staleness bound for standby reads.
func (t *Topology) MaxStaleness() time.Duration { return time.Duration(t.file.MaxStaleness) }

// RateLimits returns the development rate limits, defaults applied.
func (t *Topology) RateLimits() RateLimits { return t.file.RateLimits }

// RouterLoopListen says whether every router gets an event-loop listener (Node.Loop).
func (t *Topology) RouterLoopListen() bool { return t.file.RouterLoopListen }

// RouterFront is what serves every router's HTTP port ("loop", "http"), or "" for the router's
// default.
func (t *Topology) RouterFront() string { return t.file.RouterFront }

// DevJWTSecret is the pinned development secret, or "" when the launcher should generate one.
func (t *Topology) DevJWTSecret() string { return t.file.DevJWTSecret }

// Offsets returns the port offsets in use.
func (t *Topology) Offsets() Offsets { return t.offsets }

// File returns the document with defaults applied.
func (t *Topology) File() File {
	f := t.file
	o := t.offsets
	f.Ports.Offsets = &o
	f.Regions = slices.Clone(f.Regions)
	f.RTT = slices.Clone(f.RTT)
	return f
}

// Regions returns the region ids in file order.
func (t *Topology) Regions() []string {
	ids := make([]string, len(t.regions))
	for i, r := range t.regions {
		ids[i] = r.ID
	}
	return ids
}

// Region returns one region.
func (t *Topology) Region(id string) (Region, bool) {
	i, ok := t.index[id]
	if !ok {
		return Region{}, false
	}
	return t.regions[i], true
}

// Shards returns every shard, grouped by region in file order.
func (t *Topology) Shards() []Shard { return slices.Clone(t.shards) }

// ShardsOf returns the shards homed in region (nil for an unknown region).
func (t *Topology) ShardsOf(region string) []Shard {
	var out []Shard
	for _, s := range t.shards {
		if s.HomeRegion == region {
			out = append(out, s)
		}
	}
	return out
}

// RTT returns the round trip between two regions: 0 when a == b, and 0 for an unknown
// region (a validated topology has every pair of its own regions).
func (t *Topology) RTT(a, b string) time.Duration {
	if a == b {
		return 0
	}
	return t.rtt[pairKey(a, b)]
}

// Ports returns a region's own service ports.
func (t *Topology) Ports(region string) (RegionPorts, error) {
	if _, ok := t.index[region]; !ok {
		return RegionPorts{}, fmt.Errorf("%w: %q", ErrUnknownRegion, region)
	}
	return t.mustPorts(region), nil
}

func (t *Topology) mustPorts(region string) RegionPorts {
	r := t.regions[t.index[region]]
	o, b := t.offsets, r.PortBase
	seq := func(off, n int) []int {
		out := make([]int, n)
		for k := range out {
			out[k] = b + off + k
		}
		return out
	}
	p := RegionPorts{
		RouterHTTP:   seq(o.RouterHTTP, t.file.RoutersPerRegion),
		RouterRaft:   seq(o.RouterRaft, t.file.RoutersPerRegion),
		RouterGossip: seq(o.RouterGossip, t.file.RoutersPerRegion),
		APIHTTP:      seq(o.APIHTTP, t.file.APINodesPerRegion),
		APIGossip:    seq(o.APIGossip, t.file.APINodesPerRegion),
		Postgres:     b + o.Postgres,
		Standby:      map[string]int{},
		Redis:        b + o.Redis,
		NATSClient:   b + o.NATSClient,
		NATSGateway:  b + o.NATSGateway,
		NATSMonitor:  b + o.NATSMonitor,
	}
	if t.file.RouterLoopListen {
		p.RouterLoop = seq(o.RouterLoop, t.file.RoutersPerRegion)
	}
	for _, src := range t.regions {
		if src.ID != region {
			p.Standby[src.ID] = b + o.Standby + src.Index
		}
	}
	return p
}

// Routers returns the routers of a region (nil for an unknown region).
func (t *Topology) Routers(region string) []Node {
	if _, ok := t.index[region]; !ok {
		return nil
	}
	p := t.mustPorts(region)
	out := make([]Node, t.file.RoutersPerRegion)
	for k := range out {
		out[k] = Node{
			ID: fmt.Sprintf("%s-router-%d", region, k+1), Region: region, Index: k,
			HTTP: p.RouterHTTP[k], Raft: p.RouterRaft[k], Gossip: p.RouterGossip[k],
		}
		if p.RouterLoop != nil {
			out[k].Loop = p.RouterLoop[k]
		}
	}
	return out
}

// APINodes returns the API nodes of a region (nil for an unknown region).
func (t *Topology) APINodes(region string) []Node {
	if _, ok := t.index[region]; !ok {
		return nil
	}
	p := t.mustPorts(region)
	out := make([]Node, t.file.APINodesPerRegion)
	for k := range out {
		out[k] = Node{
			ID: fmt.Sprintf("%s-api-%d", region, k+1), Region: region, Index: k,
			HTTP: p.APIHTTP[k], Gossip: p.APIGossip[k],
		}
	}
	return out
}

// ProxyPort is the port of the proxy in region from that forwards to target, a port of
// region to: from's port_base + 100*(index(to)+1) + (target - to's port_base).
func (t *Topology) ProxyPort(from, to string, target int) (int, error) {
	f, ok := t.index[from]
	if !ok {
		return 0, fmt.Errorf("%w: %q", ErrUnknownRegion, from)
	}
	tt, ok := t.index[to]
	if !ok {
		return 0, fmt.Errorf("%w: %q", ErrUnknownRegion, to)
	}
	off := target - t.regions[tt].PortBase
	if off < 0 || off >= ServiceSpan {
		return 0, fmt.Errorf("%w: port %d is not a service port of %s", ErrInvalid, target, to)
	}
	return t.regions[f].PortBase + ServiceSpan*(tt+1) + off, nil
}

// Proxies returns every latency proxy of the plan: for each ordered pair of distinct
// regions (from, to), one proxy per TCP service of to that other regions dial — routers'
// HTTP and Raft, API nodes' HTTP, the Postgres primary (WAL streaming, primary reads, the
// rebalancer) and the NATS gateway. Gossip is not proxied: memberlist also uses UDP, which
// Toxiproxy cannot carry; nor are routers' loop listeners, which only local clients (bench)
// dial. The order is deterministic.
func (t *Topology) Proxies() []Proxy {
	var out []Proxy
	for _, from := range t.regions {
		for _, to := range t.regions {
			if from.ID == to.ID {
				continue
			}
			p := t.mustPorts(to.ID)
			type svc struct {
				name string
				port int
			}
			var svcs []svc
			for k := range p.RouterHTTP {
				svcs = append(svcs, svc{fmt.Sprintf("router-http-%d", k+1), p.RouterHTTP[k]},
					svc{fmt.Sprintf("router-raft-%d", k+1), p.RouterRaft[k]})
			}
			for k := range p.APIHTTP {
				svcs = append(svcs, svc{fmt.Sprintf("api-http-%d", k+1), p.APIHTTP[k]})
			}
			svcs = append(svcs, svc{"postgres", p.Postgres}, svc{"nats-gateway", p.NATSGateway})
			for _, s := range svcs {
				off := s.port - to.PortBase
				out = append(out, Proxy{
					Name:    from.ID + "->" + to.ID + "/" + s.name,
					From:    from.ID,
					To:      to.ID,
					Service: s.name,
					Listen:  from.PortBase + ServiceSpan*(to.Index+1) + off,
					Target:  s.port,
					RTT:     t.RTT(from.ID, to.ID),
				})
			}
		}
	}
	return out
}
