package router

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/ratelimit"
	"github.com/meridian-dev/meridian/internal/upstream"
	"github.com/meridian-dev/meridian/region"
	"github.com/meridian-dev/meridian/shardmap"
)

// This file adapts the real parts to the router's interfaces.

// NodeMap is the ShardMap of an embedded shardmap.Node.
type NodeMap struct {
	Node *shardmap.Node
	// Poll is how often WaitVersion re-reads the local copy; 0: 5 ms.
	Poll time.Duration
}

var _ ShardMap = NodeMap{}

// Lookup resolves a tenant on the node's local copy.
func (n NodeMap) Lookup(tenant string) (Route, error) {
	r, err := n.Node.Map().Lookup(tenant)
	if errors.Is(err, shardmap.ErrBadTenantID) {
		return Route{}, fmt.Errorf("%w: %q", ErrBadTenantID, tenant)
	}
	if err != nil {
		return Route{}, err
	}
	return Route(r), nil
}

// Version is the local copy's version.
func (n NodeMap) Version() uint64 { return n.Node.Map().Version() }

// WaitVersion polls the local copy until it reaches v (the node publishes on apply; polling
// keeps this independent of its notification internals).
func (n NodeMap) WaitVersion(ctx context.Context, v uint64) error {
	poll := n.Poll
	if poll == 0 {
		poll = 5 * time.Millisecond
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for n.Node.Map().Version() < v {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// LeaderContact is the node's last contact with the Raft leader (now on the leader).
func (n NodeMap) LeaderContact() time.Time { return n.Node.LeaderContact() }

// Leader is the leader's Raft id and, when the map knows it, its HTTP address.
func (n NodeMap) Leader() string {
	id := n.Node.Leader()
	if id == "" {
		return ""
	}
	if addr := n.Node.Map().Nodes()[id]; addr != "" {
		return id + " " + addr
	}
	return id
}

// CreateTenant applies shardmap.CreateTenant and waits for the local copy to include it.
func (n NodeMap) CreateTenant(ctx context.Context, id, region string) (Route, error) {
	idx, err := n.Node.Apply(ctx, shardmap.CreateTenant{Tenant: id, Region: region})
	switch {
	case errors.Is(err, shardmap.ErrTenantExists):
		return Route{}, fmt.Errorf("%w: %v", ErrTenantExists, err)
	case errors.Is(err, shardmap.ErrUnknownRegion), errors.Is(err, shardmap.ErrNoShardInRegion):
		return Route{}, fmt.Errorf("%w: %v", ErrUnknownRegion, err)
	case errors.Is(err, shardmap.ErrBadTenantID):
		return Route{}, fmt.Errorf("%w: %v", ErrBadTenantID, err)
	case err != nil:
		return Route{}, err
	}
	if err := n.WaitVersion(ctx, idx); err != nil {
		return Route{}, err
	}
	return n.Lookup(id)
}

// Summary is the admin view of the local copy.
func (n NodeMap) Summary() MapSummary {
	m := n.Node.Map()
	s := MapSummary{Version: m.Version(), SlotCount: m.SlotCount(), Pins: m.Pins(),
		Regions: []RegionRef{}, Shards: []ShardSummary{}, Moves: []any{}}
	if s.Pins == nil {
		s.Pins = map[string]string{}
	}
	for _, r := range m.Regions() {
		s.Regions = append(s.Regions, RegionRef{ID: r})
	}
	for _, sh := range m.Shards() {
		s.Shards = append(s.Shards, ShardSummary{ID: sh.ID, HomeRegion: sh.HomeRegion, State: sh.State})
	}
	for _, mv := range m.Moves() {
		s.Moves = append(s.Moves, mv)
	}
	return s
}

// TenantLimits reads the tenant's overrides from the local copy (allocation-free).
func (n NodeMap) TenantLimits(tenant string) (TenantLimits, bool) {
	l, ok := n.Node.Map().TenantLimits(tenant)
	return TenantLimits(l), ok
}

// SetTenantLimits applies shardmap.SetTenantLimits and waits for the local copy to include it.
func (n NodeMap) SetTenantLimits(ctx context.Context, tenant string, patch LimitsPatch) (TenantLimits, error) {
	idx, err := n.Node.Apply(ctx, shardmap.SetTenantLimits{Tenant: tenant, Set: shardmap.TenantLimits(patch.Set), Reset: patch.Reset})
	switch {
	case errors.Is(err, shardmap.ErrBadLimits):
		return TenantLimits{}, fmt.Errorf("%w: %v", ErrBadLimits, err)
	case errors.Is(err, shardmap.ErrBadTenantID):
		return TenantLimits{}, fmt.Errorf("%w: %v", ErrBadTenantID, err)
	case err != nil:
		return TenantLimits{}, err
	}
	if err := n.WaitVersion(ctx, idx); err != nil {
		return TenantLimits{}, err
	}
	l, _ := n.TenantLimits(tenant)
	return l, nil
}

// View is the node's local copy.
func (n NodeMap) View() *shardmap.Map { return n.Node.Map() }

// RequestMove applies shardmap.RequestMove (the move's id is the map's, from the Raft index)
// and waits for the local copy to include it.
func (n NodeMap) RequestMove(ctx context.Context, tenant, to string) (shardmap.Move, error) {
	idx, err := n.Node.Apply(ctx, shardmap.RequestMove{Tenant: tenant, To: to})
	if err != nil {
		return shardmap.Move{}, err
	}
	if err := n.WaitVersion(ctx, idx); err != nil {
		return shardmap.Move{}, err
	}
	id := shardmap.MoveIDForIndex(idx)
	mv, ok := n.Node.Map().Move(id)
	if !ok {
		// Only a PruneMoves between the apply and this read could remove it, and a move that
		// was just requested is not terminal, so it is never pruned.
		return shardmap.Move{}, fmt.Errorf("%w: %s not in the local copy", shardmap.ErrUnknownMove, id)
	}
	return mv, nil
}

// CancelMove applies shardmap.SetMovePhase to cancelled and waits for the local copy.
func (n NodeMap) CancelMove(ctx context.Context, id string) (shardmap.Move, error) {
	idx, err := n.Node.Apply(ctx, shardmap.SetMovePhase{ID: id, Phase: shardmap.PhaseCancelled})
	if err != nil {
		return shardmap.Move{}, err
	}
	if err := n.WaitVersion(ctx, idx); err != nil {
		return shardmap.Move{}, err
	}
	mv, ok := n.Node.Map().Move(id)
	if !ok {
		// Only a prune of moves updated before now could remove it, and PruneMoves is sent
		// with the retention period (days) behind the clock.
		return shardmap.Move{}, fmt.Errorf("%w: %s not in the local copy", shardmap.ErrUnknownMove, id)
	}
	return mv, nil
}

// JWTAuth is the Authenticator of internal/auth (the API node's rules).
type JWTAuth struct{ Verifier *auth.Verifier }

var _ Authenticator = JWTAuth{}

// Authenticate verifies the token.
func (a JWTAuth) Authenticate(_ context.Context, token string) (Principal, error) {
	c, err := a.Verifier.Verify(token)
	if err != nil {
		return Principal{}, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	return Principal{Subject: c.Subject, Tenant: c.Tenant, Scopes: c.Scopes}, nil
}

// RateLimiter is the Limiter of internal/ratelimit.
type RateLimiter struct{ L *ratelimit.Limiter }

var _ Limiter = RateLimiter{}

// Check asks the limiter; the stream class is limited as a read.
func (l RateLimiter) Check(ctx context.Context, req LimitRequest) (LimitResult, error) {
	res, err := l.L.Allow(ctx, ratelimit.Request{Class: limitClass(req.Class), Tenant: req.Tenant,
		Subject: req.Subject, IP: req.IP, TenantRate: req.TenantRate, TenantBurst: req.TenantBurst})
	if err != nil {
		return LimitResult{}, err
	}
	return limitResult(res), nil
}

// CheckNoWait is Check when the limiter can decide without a call to Redis (decided false
// otherwise, nothing spent): the event-loop front's rate limit (loop.go).
func (l RateLimiter) CheckNoWait(req LimitRequest) (LimitResult, bool, error) {
	res, ok, err := l.L.AllowNoWait(ratelimit.Request{Class: limitClass(req.Class), Tenant: req.Tenant,
		Subject: req.Subject, IP: req.IP, TenantRate: req.TenantRate, TenantBurst: req.TenantBurst})
	if !ok || err != nil {
		return LimitResult{}, ok, err
	}
	return limitResult(res), true, nil
}

func limitClass(c string) ratelimit.Class {
	switch c {
	case ClassWrite:
		return ratelimit.ClassWrite
	case ClassAdmin:
		return ratelimit.ClassAdmin
	}
	return ratelimit.ClassRead
}

func limitResult(res ratelimit.Result) LimitResult {
	out := LimitResult{Allowed: res.Allowed, Remaining: int(res.Remaining), Reset: res.Reset,
		RetryAfter: res.RetryAfter, Local: res.Local}
	if res.Scope != "" {
		out.Limit = int(res.Limit)
	}
	return out
}

// TenantDefault is the limiter's default tenant rule (see tenantDefaulter).
func (l RateLimiter) TenantDefault() (rate float64, burst int) {
	d, ok := l.L.TenantDefault()
	if !ok {
		return 0, 0
	}
	return d.Rate, d.Burst
}

// PoolUpstreams is the Upstreams of an upstream.Pool.
type PoolUpstreams struct {
	Pool   *upstream.Pool
	Source upstream.Source
	// Regions lists the regions to report in Nodes (e.g. the map's regions).
	Regions func() []string
}

var _ Upstreams = PoolUpstreams{}

type poolLease struct{ l *upstream.Lease }

func (p poolLease) ID() string { return p.l.Target.ID }
func (p poolLease) URL() string {
	if strings.Contains(p.l.Target.Addr, "://") {
		return p.l.Target.Addr
	}
	return "http://" + p.l.Target.Addr
}
func (p poolLease) Done(err error) {
	if errors.Is(err, ErrNoVerdict) {
		p.l.Release()
		return
	}
	p.l.Done(err != nil)
}

// Pick reserves a node of region, avoiding the given ids when another node is available.
func (u PoolUpstreams) Pick(region string, avoid []string) (Upstream, error) {
	l, err := u.Pool.Acquire([]string{region}, func(id string) bool { return slices.Contains(avoid, id) })
	if errors.Is(err, upstream.ErrNoUpstream) && len(avoid) > 0 {
		l, err = u.Pool.Acquire([]string{region}, nil) // only avoided nodes left: reuse one
	}
	switch {
	case errors.Is(err, upstream.ErrSaturated):
		return nil, fmt.Errorf("%w: %v", ErrSaturated, err)
	case errors.Is(err, upstream.ErrNoUpstream):
		return nil, fmt.Errorf("%w: %v", ErrNoUpstream, err)
	case err != nil:
		return nil, err
	}
	return poolLease{l}, nil
}

// Load is the pool's in-flight count and capacity for region (upstream.Pool.Load).
func (u PoolUpstreams) Load(region string) (inFlight, capacity int) { return u.Pool.Load(region) }

// Healthy reports whether region has a node that gossip calls healthy and whose breaker is not
// open.
func (u PoolUpstreams) Healthy(region string) bool {
	for _, t := range u.Source.Targets(region) {
		if t.Healthy && u.Pool.State(t.ID) != upstream.Open {
			return true
		}
	}
	return false
}

// Nodes reports every node of the known regions.
func (u PoolUpstreams) Nodes() []NodeState {
	var out []NodeState
	if u.Regions == nil {
		return nil
	}
	for _, r := range u.Regions() {
		for _, t := range u.Source.Targets(r) {
			st := u.Pool.State(t.ID)
			out = append(out, NodeState{ID: t.ID, Region: r, URL: t.Addr, Healthy: t.Healthy && st != upstream.Open, Breaker: st.String()})
		}
	}
	return out
}

// StaticSource is an upstream.Source from a fixed list of API node URLs per region (config,
// tests, and the launcher's fallback when gossip is off). Its nodes are always reported
// healthy; the pool's breakers eject the ones that fail.
type StaticSource map[string][]string

var _ upstream.Source = StaticSource{}

// Targets lists region's nodes; the id is the URL.
func (s StaticSource) Targets(r string) []upstream.Target {
	out := make([]upstream.Target, 0, len(s[r]))
	for _, u := range s[r] {
		out = append(out, upstream.Target{ID: u, Region: r, Addr: u, Healthy: true})
	}
	return out
}

// MultiSource merges sources; a node listed twice (same address) is reported once, by the
// first source that lists it.
type MultiSource []upstream.Source

var _ upstream.Source = MultiSource{}

// Targets merges the sources' targets for r.
func (ms MultiSource) Targets(r string) []upstream.Target {
	var out []upstream.Target
	seen := map[string]bool{}
	for _, s := range ms {
		for _, t := range s.Targets(r) {
			key := strings.TrimPrefix(strings.TrimPrefix(t.Addr, "http://"), "https://")
			if !seen[key] {
				seen[key] = true
				out = append(out, t)
			}
		}
	}
	return out
}

// GossipMembers is the Membership of a region.Cluster.
type GossipMembers struct{ Cluster *region.Cluster }

var _ Membership = GossipMembers{}

// Members lists the gossip members.
func (g GossipMembers) Members() []Member {
	var out []Member
	for _, m := range g.Cluster.Members() {
		out = append(out, Member{Name: m.Name, Region: m.Region, Role: string(m.Role), Address: m.HTTPAddr,
			Health: string(m.Health), Healthy: m.Serving(), ReplicaLagMS: m.LagMS, MapVersion: m.MapVersion})
	}
	return out
}
