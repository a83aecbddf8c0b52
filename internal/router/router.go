// Package router is Meridian's regional front door (DESIGN.md §5): it authenticates a request,
// rate-limits it, resolves the tenant from the shard map node embedded in the router process,
// and forwards it to an API node — writes to the tenant's home region, reads to its own region —
// with retries for idempotent requests, a 421 correction path for stale maps, and a write lease
// that stops writes when the router has lost the Raft leader. It also serves the admin API
// (DESIGN.md §4a), the shard map's internal endpoints, and /healthz, /readyz and /metrics.
//
// The router owns no data and must never write to Postgres or the map except through the
// ShardMap and the API node's internal endpoints. Everything it needs from other packages is a
// small interface declared here (ShardMap, Authenticator, Limiter, Upstreams, Membership);
// adapters for the real parts live next to them in this package. Unit tests use fakes of these
// interfaces with httptest API nodes; the system tests under ./systemtest run real routers,
// API nodes, Postgres and Redis.
package router

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-dev/meridian/internal/upstream"
)

// Errors the router's interfaces report and the router maps to HTTP answers.
var (
	// ErrNoUpstream means a region has no healthy API node to send a request to.
	ErrNoUpstream = errors.New("router: no healthy upstream in region")
	// ErrSaturated means every candidate upstream is at its concurrency bound.
	ErrSaturated = errors.New("router: upstream saturated")
	// ErrUnauthenticated means a request carries no valid bearer token.
	ErrUnauthenticated = errors.New("router: invalid or missing token")
	// ErrTenantExists means a tenant being created already exists.
	ErrTenantExists = errors.New("router: tenant already exists")
	// ErrTenantNotFound means the tenant was never created on its shard.
	ErrTenantNotFound = errors.New("router: tenant not found")
	// ErrUnknownRegion means a region named by a request is not in the map.
	ErrUnknownRegion = errors.New("router: unknown region")
	// ErrBadTenantID means a tenant id does not match ids.TenantPattern (DESIGN.md §2).
	ErrBadTenantID = errors.New("router: bad tenant id")
	// ErrBadLimits means tenant limit overrides are out of bounds or name an unknown field.
	ErrBadLimits = errors.New("router: bad tenant limits")
	// ErrNoVerdict marks an attempt's outcome that says nothing about the API node (the client
	// went away, or the request could not be sent as it was): Upstream.Done releases the node's
	// slot without counting the attempt for or against it.
	ErrNoVerdict = errors.New("router: attempt says nothing about the API node")
)

// Route is where the local map says a tenant lives (a copy of shardmap.Route, so the routing
// logic compiles and tests without the Raft machinery).
type Route struct {
	Shard      string
	HomeRegion string
	Epoch      uint64
	Version    uint64
	Pinned     bool
	Moving     bool
}

// ShardMap is what the router needs from the shard map node it embeds.
type ShardMap interface {
	// Lookup resolves a tenant against the local map copy (never blocks on Raft).
	Lookup(tenant string) (Route, error)
	// Version is the version of the local map copy.
	Version() uint64
	// WaitVersion blocks until the local copy has reached at least version v.
	WaitVersion(ctx context.Context, v uint64) error
	// LeaderContact is the last time this node heard from (or was) the Raft leader.
	LeaderContact() time.Time
	// Leader is the Raft leader's address, "" when unknown.
	Leader() string
	// CreateTenant records a tenant's placement in the map (pinned to a shard of region when
	// region is not ""), waits until the local copy has it, and returns its route.
	// ErrTenantExists, ErrUnknownRegion and ErrBadTenantID are reported as such.
	CreateTenant(ctx context.Context, id, region string) (Route, error)
	// Summary is the admin view of the local map copy (GET /admin/v1/shardmap).
	Summary() MapSummary
	// TenantLimits returns the tenant's limit overrides from the local copy (ok false: none).
	// It is called on every request and must not allocate or block.
	TenantLimits(tenant string) (l TenantLimits, ok bool)
	// SetTenantLimits records a change of the tenant's overrides in the map, waits until the
	// local copy has it, and returns the tenant's overrides from then on. ErrBadLimits and
	// ErrBadTenantID are reported as such.
	SetTenantLimits(ctx context.Context, tenant string, patch LimitsPatch) (TenantLimits, error)
	// MoveMap serves the move routes and the tenants list (admin_moves.go).
	MoveMap
}

// TenantLimits are a tenant's overrides of the router's defaults (a copy of
// shardmap.TenantLimits); a zero field is not overridden.
type TenantLimits struct {
	RPS         float64
	Burst       int
	Concurrency int
}

// LimitsPatch is a change of a tenant's overrides: the non-zero fields of Set replace those
// overrides, the fields named in Reset ("rps", "burst", "concurrency") return to the default.
type LimitsPatch struct {
	Set   TenantLimits
	Reset []string
}

// MapSummary is the shape of GET /admin/v1/shardmap (DESIGN.md §4a).
type MapSummary struct {
	Version   uint64            `json:"version"`
	Regions   []RegionRef       `json:"regions"`
	Shards    []ShardSummary    `json:"shards"`
	SlotCount int               `json:"slot_count"`
	Pins      map[string]string `json:"pins"`
	Moves     []any             `json:"moves"`
}

// RegionRef names a region in MapSummary.
type RegionRef struct {
	ID string `json:"id"`
}

// ShardSummary is one shard in MapSummary.
type ShardSummary struct {
	ID         string `json:"id"`
	HomeRegion string `json:"home_region"`
	State      string `json:"state"`
}

// Principal is an authenticated caller.
type Principal struct {
	Subject string
	Tenant  string
	Scopes  []string
}

// HasScope reports whether p holds scope s.
func (p Principal) HasScope(s string) bool {
	for _, x := range p.Scopes {
		if x == s {
			return true
		}
	}
	return false
}

// Authenticator validates a bearer token (the same rules as the API node, internal/auth).
type Authenticator interface {
	// Authenticate returns the token's principal, or an error wrapping ErrUnauthenticated.
	Authenticate(ctx context.Context, token string) (Principal, error)
}

// LimitRequest names the dimensions a request is limited by (DESIGN.md §7).
type LimitRequest struct {
	Tenant  string
	Subject string
	IP      string
	Class   string
	// TenantRate and TenantBurst are the tenant's overrides from the map (0: the limiter's
	// default tenant rule); the Server fills them in before calling the Limiter.
	TenantRate  float64
	TenantBurst int
}

// LimitResult is the most restrictive limit that applied to a request.
type LimitResult struct {
	Allowed    bool
	Limit      int
	Remaining  int
	Reset      time.Duration
	RetryAfter time.Duration
	// Local is true when the decision came from the in-memory fallback (Redis down).
	Local bool
}

// Limiter decides whether a request may proceed.
type Limiter interface {
	Check(ctx context.Context, req LimitRequest) (LimitResult, error)
}

// NoWaitLimiter is a Limiter that can say, without blocking, whether it can decide a request at
// once: CheckNoWait is Check when decided, and spends or changes nothing when not (the
// decision needs a network call). The event-loop front (loop.go) asks it on its loops.
type NoWaitLimiter interface {
	CheckNoWait(req LimitRequest) (res LimitResult, decided bool, err error)
}

// Upstream is one reserved API node; Done must be called exactly once.
type Upstream interface {
	// ID names the node (unique within the router's view), for Pick's avoid list.
	ID() string
	// URL is the node's base URL, e.g. "http://127.0.0.1:8080".
	URL() string
	// Done releases the node's concurrency slot and reports the attempt's outcome to its
	// breaker and ejection logic: nil, the node answered; an error wrapping ErrNoVerdict, no
	// outcome; any other error, the node failed (a transport failure or its own server error).
	Done(err error)
}

// Upstreams picks API nodes per region.
type Upstreams interface {
	// Pick reserves a healthy node of region, avoiding the node IDs in avoid when it can.
	// It returns ErrNoUpstream or ErrSaturated (wrapped) when it cannot.
	Pick(region string, avoid []string) (Upstream, error)
	// Healthy reports whether region has at least one node that could take a request.
	Healthy(region string) bool
	// Nodes reports every known node, for /admin/v1/regions and breaker metrics.
	Nodes() []NodeState
	// Load reports the requests in flight on region's admitted nodes and their capacity (0
	// when no node is admitted), for load shedding.
	Load(region string) (inFlight, capacity int)
}

// NodeState is one upstream node's state as the router sees it.
type NodeState struct {
	ID      string `json:"id"`
	Region  string `json:"region"`
	URL     string `json:"address"`
	Healthy bool   `json:"healthy"`
	Breaker string `json:"breaker"` // "closed", "open" or "half-open"
}

// Member is one gossip member (router or API node), as /admin/v1/regions reports it.
type Member struct {
	Name    string `json:"name"`
	Region  string `json:"-"`
	Role    string `json:"role"`
	Address string `json:"address"`
	// Health is what the member says about itself ("ok", "draining", "down"; an API node
	// known only from the static list: "ok", or "down" while its breaker is open); Healthy is
	// whether the router would send it new requests.
	Health  string `json:"health"`
	Healthy bool   `json:"healthy"`
	// ReplicaLagMS is the replay lag of the standbys the member reads from (0 for a router);
	// MapVersion is its shard-map copy's version (0 = not published).
	ReplicaLagMS int64  `json:"replica_lag_ms"`
	MapVersion   uint64 `json:"map_version"`
}

// Membership lists the members the router knows of (region/ gossip).
type Membership interface {
	Members() []Member
}

// Config configures a Server. Zero values mean the documented defaults.
type Config struct {
	// Region is the router's own region (required).
	Region string
	// Map is the embedded shard map node (required).
	Map ShardMap
	// MapHandler serves /internal/v1/... (the shard map node's Handler); nil: not served.
	MapHandler http.Handler
	// Auth validates tokens (required).
	Auth Authenticator
	// Limiter rate-limits requests; nil: no limits.
	Limiter Limiter
	// Upstreams picks API nodes (required).
	Upstreams Upstreams
	// Edge answers plain record GETs from the region's cache (edge.go, internal/cache.Edge);
	// nil: every read is forwarded.
	Edge EdgeCache
	// Members lists gossip members for /admin/v1/regions; nil: upstream nodes only.
	Members Membership
	// ClusterToken authenticates the router to API nodes' internal endpoints.
	ClusterToken string
	// Transport sends requests to API nodes; nil: an upstream.HopTransport (keep-alive, 256 idle
	// connections per node, response headers within UpstreamTimeout).
	Transport http.RoundTripper
	// Lease is how long after the last leader contact writes are still routed; 0: 2 s.
	Lease time.Duration
	// UpstreamTimeout is the request deadline: from the moment the router holds a request's
	// body, it bounds the wait for an API node's response headers, all attempts and retries
	// together (504 after it), and each attempt tells its API node the time left
	// (HeaderRequestTimeout). An answer's body may stream for longer: a change stream has no
	// deadline once its headers arrived (and its API node is told none). 0: 5 s.
	UpstreamTimeout time.Duration
	// MapWait bounds the wait for a newer map after a 421; 0: 1 s.
	MapWait time.Duration
	// MaxBody is the largest request body accepted; 0: 1 MiB.
	MaxBody int64
	// TrustedProxies are the addresses or CIDRs of load balancers in front of the router whose
	// X-Forwarded-For is believed. nil: none — the client IP (per-IP rate limits, the address
	// appended to X-Forwarded-For upstream) is the TCP peer's, so a client cannot choose it.
	TrustedProxies []string
	// Retry is the retry policy for requests to API nodes; its zero value is the default
	// (upstream.RetryPolicy: at most 2 retries, full jitter between 10 ms and 200 ms).
	Retry upstream.RetryPolicy
	// TenantConcurrency bounds each tenant's requests in flight through this router (a tenant's
	// override in the map takes precedence); 0: 100.
	TenantConcurrency int
	// TenantStreams bounds each tenant's open change streams (GET/HEAD /v1/changes) through
	// this router; a stream takes a slot of this bound instead of a TenantConcurrency slot and
	// holds it until it ends. Above it: 429. 0: 20.
	TenantStreams int
	// Shed holds the load-shedding thresholds (limits.go); its zero value is the default.
	Shed ShedPolicy
	// Hold bounds the writes held while a tenant's cutover fences them (hold.go); its zero
	// value is the default (1000 writes, 5 s each).
	Hold HoldPolicy
	// ReadyStaleness is how old the last leader contact may be for /readyz; 0: 30 s.
	ReadyStaleness time.Duration
	// Registry receives the router's metrics; nil: a new registry (served on /metrics).
	Registry *prometheus.Registry
	// Logger logs requests; nil: slog.Default(). When its handler is an internal/jsonlog
	// Handler (cmd/router's), the request line is written by jsonlog's Line: the same JSON at
	// the same level to the same writer, without a slog.Record; any other handler gets it
	// through slog.
	Logger *slog.Logger
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() error {
	if c.Region == "" || c.Map == nil || c.Auth == nil || c.Upstreams == nil {
		return errors.New("router: Config needs Region, Map, Auth and Upstreams")
	}
	if c.Lease == 0 {
		c.Lease = 2 * time.Second
	}
	if c.UpstreamTimeout == 0 {
		c.UpstreamTimeout = 5 * time.Second
	}
	if c.MapWait == 0 {
		c.MapWait = time.Second
	}
	if c.MaxBody == 0 {
		c.MaxBody = 1 << 20
	}
	if c.TenantConcurrency == 0 {
		c.TenantConcurrency = 100
	}
	if c.TenantStreams == 0 {
		c.TenantStreams = 20
	}
	c.Shed = c.Shed.withDefaults()
	c.Hold = c.Hold.withDefaults()
	if c.ReadyStaleness == 0 {
		c.ReadyStaleness = 30 * time.Second
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Transport == nil {
		// The caller's goroutine does the hop's I/O (no per-connection goroutines); it never
		// adds Accept-Encoding, so the client's and the encoded body pass through untouched.
		c.Transport = &upstream.HopTransport{ResponseHeaderTimeout: c.UpstreamTimeout, MaxIdlePerHost: 256}
	}
	return nil
}
