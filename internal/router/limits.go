package router

import (
	"context"
	"hash/maphash"
	"strings"
	"sync"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-dev/meridian/internal/problem"
)

// This file holds the router's admission step (DESIGN.md §4 "Per-tenant concurrency",
// docs/router.md "Concurrency and load shedding"): a per-tenant bound on requests in flight
// through this router, and load shedding by route class when the API nodes a request would go
// to are busy. Both decide before any upstream work, so a refused request costs the router a
// map lookup and a counter, and nothing upstream. Change streams (GET/HEAD /v1/changes) take a
// slot of a separate per-tenant bound on open streams instead of a request slot: a stream lives
// for minutes or hours, and a tenant's open streams must neither eat its request concurrency
// nor be bounded like short requests.

// Shed classes, least critical first. Admin traffic never reaches the admission step (it is
// served by the admin handlers), so it keeps whatever capacity the thresholds leave: the reserve.
const (
	shedList  = "list"  // lists, batch reads (?ids=) and change streams
	shedRead  = "read"  // single reads (and any other GET or HEAD)
	shedWrite = "write" // POST, PUT, PATCH, DELETE
)

// ShedPolicy holds the load-shedding thresholds: a request of a class is admitted only while
// the fraction of the target region's upstream capacity in use (upstream.Pool.Load: requests in
// flight over MaxInFlight × admitted nodes) is below that class's threshold. A zero field means
// its default: List 0.5, Read 0.8, Write 0.95. What lies above Write is the admin reserve.
type ShedPolicy struct {
	List  float64
	Read  float64
	Write float64
}

func (p ShedPolicy) withDefaults() ShedPolicy {
	if p.List == 0 {
		p.List = 0.5
	}
	if p.Read == 0 {
		p.Read = 0.8
	}
	if p.Write == 0 {
		p.Write = 0.95
	}
	return p
}

// Admit reports whether a request of shed class class may go on while inFlight of capacity is
// in use. A region without capacity (no admitted node) sheds nothing: forwarding answers that
// case itself (503, or a read served by the home region). An unknown class is admitted.
func (p ShedPolicy) Admit(class string, inFlight, capacity int) bool {
	if capacity <= 0 {
		return true
	}
	var th float64
	switch class {
	case shedList:
		th = p.List
	case shedRead:
		th = p.Read
	case shedWrite:
		th = p.Write
	default:
		return true
	}
	return float64(inFlight) < th*float64(capacity)
}

// shedClass is the shed class of a /v1 request.
func shedClass(method, path string) string {
	if IsWrite(method) {
		return shedWrite
	}
	if path == "/v1/changes" || isListPath(path) {
		return shedList
	}
	return shedRead
}

// isListPath reports whether path is /v1/collections/{c}/records, the list and batch-read route.
func isListPath(path string) bool {
	rest, ok := strings.CutPrefix(path, "/v1/collections/")
	if !ok {
		return false
	}
	c, tail, ok := strings.Cut(rest, "/")
	return ok && c != "" && tail == "records"
}

// tenantSlots counts requests in flight per tenant. It is sharded so that tenants rarely share
// a lock; an entry exists only while its tenant has a request in flight.
type tenantSlots struct {
	seed   maphash.Seed
	shards [64]slotShard
	total  prometheus.Gauge
}

type slotShard struct {
	mu sync.Mutex // guards n
	n  map[string]int
}

func newTenantSlots(total prometheus.Gauge) *tenantSlots {
	t := &tenantSlots{seed: maphash.MakeSeed(), total: total}
	for i := range t.shards {
		t.shards[i].n = map[string]int{}
	}
	return t
}

func (t *tenantSlots) shard(tenant string) *slotShard {
	return &t.shards[maphash.String(t.seed, tenant)%uint64(len(t.shards))]
}

// acquire takes a slot for tenant unless it already holds limit.
func (t *tenantSlots) acquire(tenant string, limit int) bool {
	sh := t.shard(tenant)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.n[tenant] >= limit {
		return false
	}
	sh.n[tenant]++
	t.total.Inc()
	return true
}

// release gives back a slot acquire took.
func (t *tenantSlots) release(tenant string) {
	sh := t.shard(tenant)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if n := sh.n[tenant]; n > 1 {
		sh.n[tenant] = n - 1
	} else {
		delete(sh.n, tenant)
	}
	t.total.Dec()
}

// inFlight is the tenant's requests in flight (tests).
func (t *tenantSlots) inFlight(tenant string) int {
	sh := t.shard(tenant)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.n[tenant]
}

// streamRetryAfter is the Retry-After of a change stream refused at the tenant's bound on open
// streams: a slot comes back only when one of the tenant's streams ends, which may be hours
// away, so clients reconnecting in a loop are asked to wait longer than for a request slot.
const streamRetryAfter = "5"

// limits is the Server's admission state and its metrics.
type limits struct {
	slots   *tenantSlots
	streams *tenantSlots // open change streams per tenant (gauge meridian_router_streams_open)
	// streamsRejected counts change streams refused at the tenant's bound on open streams.
	streamsRejected prometheus.Counter
	rejected        map[string]prometheus.Counter // shed class → concurrency rejections
	shed            map[string]prometheus.Counter // shed class → shed requests
	admitted        map[string]prometheus.Counter // shed class → admitted requests
	// defaults reports the rate limiter's default tenant rule (nil: unknown).
	defaults tenantDefaulter
}

func newLimits(reg prometheus.Registerer) *limits {
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_router_concurrency_rejected_total",
		Help: "Requests answered 429 because their tenant had its limit of requests in flight through this router, by shed class (list, read, write).",
	}, []string{"class"})
	shed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_router_shed_total",
		Help: "Requests answered 503 by load shedding (upstream capacity in use at or above the class's threshold), by shed class.",
	}, []string{"class"})
	admitted := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_router_admitted_total",
		Help: "Requests that passed the concurrency and shedding step, by shed class.",
	}, []string{"class"})
	inflight := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "meridian_router_tenant_inflight",
		Help: "Requests holding a tenant concurrency slot in this router (all tenants).",
	})
	streamsOpen := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "meridian_router_streams_open",
		Help: "Change streams (/v1/changes) open through this router (all tenants).",
	})
	streamsRejected := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meridian_router_streams_rejected_total",
		Help: "Change streams answered 429 because their tenant had its limit of open streams through this router.",
	})
	reg.MustRegister(rejected, shed, admitted, inflight, streamsOpen, streamsRejected)
	l := &limits{slots: newTenantSlots(inflight), streams: newTenantSlots(streamsOpen),
		streamsRejected: streamsRejected, rejected: map[string]prometheus.Counter{},
		shed: map[string]prometheus.Counter{}, admitted: map[string]prometheus.Counter{}}
	// Children resolved once: the request path then only increments.
	for _, c := range []string{shedList, shedRead, shedWrite} {
		l.rejected[c] = rejected.WithLabelValues(c)
		l.shed[c] = shed.WithLabelValues(c)
		l.admitted[c] = admitted.WithLabelValues(c)
	}
	return l
}

// initLimits sets up the admission step and makes the rate limiter see each tenant's
// overrides from the map.
func (s *Server) initLimits() {
	s.lim = newLimits(s.cfg.Registry)
	s.lim.defaults, _ = s.cfg.Limiter.(tenantDefaulter)
	if s.cfg.Limiter != nil {
		s.cfg.Limiter = overridingLimiter{Limiter: s.cfg.Limiter, m: s.cfg.Map}
	}
}

// overridingLimiter fills a request's tenant overrides from the map before asking the Limiter,
// so a PATCHed rate applies at this router's next request once its map copy has it.
type overridingLimiter struct {
	Limiter
	m ShardMap
}

func (o overridingLimiter) Check(ctx context.Context, req LimitRequest) (LimitResult, error) {
	if l, ok := o.m.TenantLimits(req.Tenant); ok {
		req.TenantRate, req.TenantBurst = l.RPS, l.Burst
	}
	return o.Limiter.Check(ctx, req)
}

// CheckNoWait is Check without waiting, when the Limiter can (NoWaitLimiter).
func (o overridingLimiter) CheckNoWait(req LimitRequest) (LimitResult, bool, error) {
	nw, ok := o.Limiter.(NoWaitLimiter)
	if !ok {
		return LimitResult{}, false, nil
	}
	if l, ok := o.m.TenantLimits(req.Tenant); ok {
		req.TenantRate, req.TenantBurst = l.RPS, l.Burst
	}
	return nw.CheckNoWait(req)
}

// tenantConcurrency is the tenant's bound on requests in flight through this router.
func (s *Server) tenantConcurrency(tenant string) int {
	if l, ok := s.cfg.Map.TenantLimits(tenant); ok && l.Concurrency > 0 {
		return l.Concurrency
	}
	return s.cfg.TenantConcurrency
}

// admit is the admission step of a /v1 request from tenant, already routed (route says which
// region a write loads): it takes one of the tenant's slots — a request slot (429 when all are
// taken), or for a change stream a slot of the tenant's open streams (429 likewise) — then
// sheds the request if the API nodes it would go to are too busy for its class (503, slot
// given back). Shedding decides only here, as a stream opens: an open stream has given its
// upstream slot back (copyResponse) and is never cut for load. On ok the caller must call
// slots.release(tenant) once the answer is done (the stream has ended); on !ok the answer has
// been written.
func (s *Server) admit(c *gin.Context, tenant string, route Route) (slots *tenantSlots, ok bool) {
	r := c.Request
	class := shedClass(r.Method, r.URL.Path)
	stream := Classify(r.Method, r.URL.Path) == ClassStream
	slots, limit := s.lim.slots, s.tenantConcurrency(tenant)
	if stream {
		slots, limit = s.lim.streams, s.cfg.TenantStreams
	}
	if !slots.acquire(tenant, limit) {
		if stream {
			s.lim.streamsRejected.Inc()
			c.Header("Retry-After", streamRetryAfter)
			s.kindProblem(c, problem.ConcurrencyLimited,
				"too many change streams of this tenant open; retry when one has ended")
			return nil, false
		}
		s.lim.rejected[class].Inc()
		c.Header("Retry-After", "1")
		s.kindProblem(c, problem.ConcurrencyLimited,
			"too many requests of this tenant in flight; retry when one has finished")
		return nil, false
	}
	// The region whose nodes the request will load: writes go to the tenant's home region,
	// reads to this one (a read this region cannot serve goes home, and this region's capacity
	// is then 0, which sheds nothing).
	region := s.cfg.Region
	if class == shedWrite {
		region = route.HomeRegion
	}
	inFlight, capacity := s.cfg.Upstreams.Load(region)
	if !s.cfg.Shed.Admit(class, inFlight, capacity) {
		slots.release(tenant)
		s.lim.shed[class].Inc()
		c.Header("Retry-After", "1")
		s.kindProblem(c, problem.Overloaded,
			"API nodes of region "+region+" are too busy for "+class+" requests; retry shortly")
		return nil, false
	}
	s.lim.admitted[class].Inc()
	return slots, true
}
