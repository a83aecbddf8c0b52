// Package upstream chooses which API node a router request goes to and keeps that choice
// resilient (DESIGN.md §4 guardrails, §5): region preference, power-of-two-choices balancing on
// in-flight requests, a circuit breaker per node (which is also how failing nodes are ejected),
// bounded concurrency per node, and the one retry policy for requests to API nodes
// (RetryPolicy: idempotent requests only, at most 2 retries, full jitter). HopTransport is the
// router's HTTP/1.1 client for the hop itself (see its doc).
//
// Nodes come from a Source (RegionSource adapts region.Cluster). A node is a candidate when
// the source reports it healthy (active health: gossip says "ok") and its breaker admits it.
// Breaker: closed → open after FailureThreshold consecutive failures (the node is ejected for
// EjectBase, doubling on each re-ejection up to EjectMax) → half-open when that time has passed
// (one probe request at a time) → closed on the probe's success (readmitted, backoff reset) or
// open again on its failure. The caller says what failed through Lease.Done, or that an attempt
// says nothing about the node through Lease.Release: the router counts a transport failure of
// the hop and the node's own 5xx answers (but 503 and 504, which speak of a tenant, a shard or
// the request's deadline) as failures, any other answer as a success, and releases without an
// outcome an attempt whose client went away or whose request could not be sent as it was
// (docs/router.md, "What counts against an API node").
//
// The package never queues: when every candidate is at MaxInFlight, Acquire returns
// ErrSaturated at once. It never writes HTTP responses either; the router forwards, applying
// RetryPolicy through Tries, and answers 503 with Retry-After when no node can take a request.
//
// Defaults (zero values of Config):
//   - MaxInFlight 0: 256 requests in flight per node.
//   - FailureThreshold 0: 5 consecutive failures open the breaker.
//   - EjectBase 0: 1 s; EjectMax 0: 30 s.
//   - Now nil: time.Now; Rand nil: math/rand/v2.
//   - Registerer nil: metrics are kept but not registered.
//
// RetryPolicy documents its own zero value. Tests use httptest servers as upstreams and a fake
// Source.
package upstream

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-dev/meridian/region"
	"github.com/prometheus/client_golang/prometheus"
)

// Errors returned by this package.
var (
	// ErrNoUpstream means no node of any requested region is healthy and admitted by its breaker.
	ErrNoUpstream = errors.New("upstream: no healthy upstream node")
	// ErrSaturated means every candidate node is at its concurrency limit.
	ErrSaturated = errors.New("upstream: all upstream nodes saturated")
)

// Target is one upstream node.
type Target struct {
	ID      string // unique, e.g. the memberlist name
	Region  string
	Addr    string // "host:port" or "http://host:port"
	Healthy bool   // what active health (gossip) says
}

// Source lists the nodes of a region.
type Source interface {
	Targets(region string) []Target
}

// Peerer is the part of region.Cluster RegionSource needs.
type Peerer interface {
	Peers(region string, role region.Role) []region.Member
}

// RegionSource adapts gossip membership to a Source of API nodes.
type RegionSource struct{ Cluster Peerer }

var _ Source = RegionSource{}
var _ Peerer = (*region.Cluster)(nil)

// Targets returns the region's API nodes; healthy means alive with health "ok".
func (s RegionSource) Targets(r string) []Target {
	ms := s.Cluster.Peers(r, region.RoleAPI)
	out := make([]Target, len(ms))
	for i, m := range ms {
		out[i] = Target{ID: m.Name, Region: m.Region, Addr: m.HTTPAddr, Healthy: m.Serving()}
	}
	return out
}

// BreakerState is a node's circuit-breaker state; its value is the Prometheus gauge value.
type BreakerState int

// Breaker states.
const (
	Closed BreakerState = iota
	HalfOpen
	Open
)

func (s BreakerState) String() string {
	return [...]string{"closed", "half-open", "open"}[s]
}

// Config configures a Pool. The package doc lists every default.
type Config struct {
	Source           Source
	MaxInFlight      int
	FailureThreshold int
	EjectBase        time.Duration
	EjectMax         time.Duration
	Now              func() time.Time
	Rand             func(n int64) int64
	Registerer       prometheus.Registerer
}

// node is the Pool's state for one upstream.
type node struct {
	inFlight    int
	consecutive int // failures in a row
	state       BreakerState
	openUntil   time.Time
	ejections   int // consecutive ejections, for backoff doubling
	probing     bool

	// The node's in-flight gauge and success counter, looked up once (for region): every
	// request sets the one and counts on the other, and a vector's lookup hashes the labels.
	region    string
	inflightG prometheus.Gauge
	successC  prometheus.Counter
}

// metrics returns n's per-request series for its target t.
func (p *Pool) metrics(n *node, t Target) (inflight prometheus.Gauge, success prometheus.Counter) {
	if n.inflightG == nil || n.region != t.Region {
		n.region = t.Region
		n.inflightG = p.inflight.WithLabelValues(t.ID, t.Region)
		n.successC = p.requests.WithLabelValues(t.ID, t.Region, "success")
	}
	return n.inflightG, n.successC
}

// Pool selects upstream nodes. It is safe for concurrent use.
type Pool struct {
	cfg Config

	// mu guards nodes. Selection is short and allocation-light, so one lock is enough at the
	// request rates of one router; shard it if profiles say otherwise.
	mu    sync.Mutex
	nodes map[string]*node

	requests  *prometheus.CounterVec // node, region, outcome
	ejections *prometheus.CounterVec // node, region
	state     *prometheus.GaugeVec   // node, region
	inflight  *prometheus.GaugeVec   // node, region
	saturated *prometheus.CounterVec // region
}

// New builds a Pool.
func New(cfg Config) (*Pool, error) {
	if cfg.Source == nil {
		return nil, errors.New("upstream: Config.Source is required")
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 256
	}
	if cfg.FailureThreshold <= 0 {
		cfg.FailureThreshold = 5
	}
	if cfg.EjectBase <= 0 {
		cfg.EjectBase = time.Second
	}
	if cfg.EjectMax <= 0 {
		cfg.EjectMax = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Int64N
	}
	p := &Pool{cfg: cfg, nodes: make(map[string]*node)}
	p.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_upstream_requests_total", Help: "Upstream attempts by node, region and outcome (success, failure, released: no verdict).",
	}, []string{"node", "region", "outcome"})
	p.ejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_upstream_ejections_total", Help: "Times a node's circuit breaker opened.",
	}, []string{"node", "region"})
	p.state = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meridian_upstream_breaker_state", Help: "Circuit-breaker state per node: 0 closed, 1 half-open, 2 open.",
	}, []string{"node", "region"})
	p.inflight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meridian_upstream_in_flight", Help: "Requests in flight per node.",
	}, []string{"node", "region"})
	p.saturated = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_upstream_saturated_total", Help: "Requests refused because every node of the region was at its concurrency limit.",
	}, []string{"region"})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{p.requests, p.ejections, p.state, p.inflight, p.saturated} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("upstream: register metrics: %w", err)
			}
		}
	}
	return p, nil
}

// State returns a node's breaker state (Closed for unknown nodes).
func (p *Pool) State(id string) BreakerState {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.nodes[id]; n != nil {
		if n.state == Open && !p.cfg.Now().Before(n.openUntil) {
			return HalfOpen
		}
		return n.state
	}
	return Closed
}

// Lease is one reserved slot on a node; call Done exactly once.
type Lease struct {
	Target Target
	p      *Pool
	probe  bool
	ended  atomic.Bool // Done or Release has counted
}

// Acquire reserves a slot on a node of the first region (in order) that has a candidate,
// skipping nodes for which skip returns true (nil = none). It never waits.
func (p *Pool) Acquire(regions []string, skip func(id string) bool) (*Lease, error) {
	saturated := false
	for _, r := range regions {
		ts := p.cfg.Source.Targets(r)
		l, sat := p.acquireIn(r, ts, skip)
		if l != nil {
			return l, nil
		}
		if sat {
			saturated = true
			p.saturated.WithLabelValues(r).Inc()
		}
	}
	if saturated {
		return nil, ErrSaturated
	}
	return nil, fmt.Errorf("%w in %s", ErrNoUpstream, strings.Join(regions, ", "))
}

func (p *Pool) acquireIn(r string, ts []Target, skip func(string) bool) (*Lease, bool) {
	now := p.cfg.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	type cand struct {
		t Target
		n *node
	}
	var candsBuf [8]cand // on the stack for a region of up to 8 nodes
	cands := candsBuf[:0]
	for _, t := range ts {
		if !t.Healthy || (skip != nil && skip(t.ID)) {
			continue
		}
		n := p.nodes[t.ID]
		if n == nil {
			n = &node{}
			p.nodes[t.ID] = n
		}
		switch {
		case n.state == Closed:
		case n.state == Open && now.Before(n.openUntil):
			continue
		case n.probing: // half-open (or open and due) with its one probe already out
			continue
		}
		cands = append(cands, cand{t, n})
	}
	if len(cands) == 0 {
		return nil, false
	}
	// Power of two choices: two random candidates, the less loaded wins; if both are full,
	// fall back to scanning so a free node is never missed.
	var orderBuf [10]int
	order := orderBuf[:0]
	i := int(p.cfg.Rand(int64(len(cands))))
	order = append(order, i)
	if len(cands) > 1 {
		j := int(p.cfg.Rand(int64(len(cands) - 1)))
		if j >= i {
			j++
		}
		if cands[j].n.inFlight < cands[i].n.inFlight {
			order[0], j = j, i
		}
		order = append(order, j)
	}
	for k := range cands {
		order = append(order, k)
	}
	for _, k := range order {
		c := cands[k]
		if c.n.inFlight >= p.cfg.MaxInFlight {
			continue
		}
		c.n.inFlight++
		l := &Lease{Target: c.t, p: p}
		if c.n.state != Closed {
			c.n.state = HalfOpen
			c.n.probing = true
			l.probe = true
			p.state.WithLabelValues(c.t.ID, r).Set(float64(HalfOpen))
		}
		g, _ := p.metrics(c.n, c.t)
		g.Set(float64(c.n.inFlight))
		return l, false
	}
	return nil, true
}

// Done releases the slot and records the attempt's outcome for the node's breaker.
func (l *Lease) Done(failed bool) {
	if !l.ended.Swap(true) {
		l.p.done(l, failed)
	}
}

// Release frees the slot without an outcome, for an attempt that says nothing about the node
// (the client went away, or the request could not be sent as it was): the breaker's count is
// left as it was, and a half-open node's probe slot is freed for the next request. Done or
// Release, whichever comes first, counts; the other does nothing.
func (l *Lease) Release() {
	if l.ended.Swap(true) {
		return
	}
	p := l.p
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.nodes[l.Target.ID]
	n.inFlight--
	g, _ := p.metrics(n, l.Target)
	g.Set(float64(n.inFlight))
	if l.probe {
		n.probing = false
	}
	p.requests.WithLabelValues(l.Target.ID, l.Target.Region, "released").Inc()
}

func (p *Pool) done(l *Lease, failed bool) {
	t := l.Target
	now := p.cfg.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.nodes[t.ID]
	n.inFlight--
	g, success := p.metrics(n, t)
	g.Set(float64(n.inFlight))
	if l.probe {
		n.probing = false
	}
	if !failed {
		success.Inc()
		n.consecutive = 0
		if l.probe || n.state != Closed {
			n.state, n.ejections = Closed, 0
			p.state.WithLabelValues(t.ID, t.Region).Set(float64(Closed))
		}
		return
	}
	p.requests.WithLabelValues(t.ID, t.Region, "failure").Inc()
	n.consecutive++
	if l.probe || (n.state == Closed && n.consecutive >= p.cfg.FailureThreshold) {
		d := p.cfg.EjectMax
		if n.ejections < 30 && p.cfg.EjectBase<<n.ejections < d {
			d = p.cfg.EjectBase << n.ejections
		}
		n.ejections++
		n.state, n.openUntil = Open, now.Add(d)
		p.ejections.WithLabelValues(t.ID, t.Region).Inc()
		p.state.WithLabelValues(t.ID, t.Region).Set(float64(Open))
	}
}
