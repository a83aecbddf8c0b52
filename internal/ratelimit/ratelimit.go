// Package ratelimit decides whether the router admits a request, per tenant, per token
// subject and per client IP, separately for each route class (DESIGN.md §7).
//
// The algorithm is GCRA (the generic cell rate algorithm, a token bucket stored as one
// "theoretical arrival time" per key). All buckets a request touches are checked and updated by
// one atomic Lua script in Redis (EVALSHA, falling back to EVAL when the script is not cached),
// and a request is admitted only if every bucket admits it — a denied request consumes nothing.
// The script reads Redis's own clock (TIME), so routers sharing one Redis agree on time however
// their clocks drift (a router whose clock ran d ahead would otherwise find a bucket refilled by
// d×rate). A Limiter given Config.Now (tests) passes that clock into the script instead, so the
// Redis and the in-process paths compute exactly the same thing and tests can move time. Leases
// and remembered denials are kept on the Limiter's own clock; the script's answers are durations,
// so the two clocks never mix.
//
// Leases. Asking Redis on every request costs a round trip and a Lua call per request, which
// on a busy router is most of the limiter's cost. So a Limiter takes tokens ahead of need: when
// a bucket it uses often runs dry, it asks Redis for a batch (the same script, taking up to n
// tokens at once: GCRA advances the bucket's TAT by n emission intervals) and spends them
// locally for at most Config.Lease. The batch adapts per bucket: it doubles while a lease runs
// out before it expires and halves when one expires unused, and never exceeds
// max(1, min(burst/10, rate×Lease)), so one router holds at most a tenth of a bucket. The global
// limit is never exceeded (every admitted request spent a token Redis granted). Tokens still
// held when a lease ends are given back to the bucket by the next call for it (the TAT moves
// back) — only those whose emission slots are still in the future: a slot already past has
// been refilled, and another router may have spent it. So leasing withholds at most one batch
// per router and bucket, for at most one lease, from the others — a bucket that goes idle
// keeps its last unspent batch withheld until it refills. A bucket whose cap is 1 (small
// limits) is decided exactly, one Redis call per request. AllowNoWait's decisions (the
// router's event loop) renew a lease ahead of need, in the background, when less than a
// quarter of its batch or of its time is left, so that they need not wait for Redis
// (renewAhead in lease.go); a renewed lease gives back at most its latest batch, and a busy
// Limiter withholds up to the cap, a tenth of the bucket, while it stays busy. A denial is
// remembered until its Retry-After, since no other router can make the bucket admit earlier;
// while it lasts, requests on that bucket are denied without asking Redis (if Redis loses its
// state, a denial can outlive it by at most that Retry-After).
// RateLimit-Remaining of a request served from a lease is Redis's count at the grant plus the
// tokens still held, so it is approximate by at most what other routers spent since.
//
// If Redis fails or does not answer within Config.RedisTimeout, the decision is made by an
// in-process limiter with the same algorithm; the package logs once per transition (slog) and
// sets the gauge meridian_ratelimit_fallback to 1. While in fallback, at most one request per
// Config.ProbeInterval tries Redis again; the first success switches back. The local limiter
// starts with full buckets and is per process, so during an outage each router enforces the
// limits on its own.
//
// The package never writes HTTP responses; Result.SetHeaders fills RateLimit-Limit,
// RateLimit-Remaining, RateLimit-Reset and Retry-After for the router.
//
// Limits: Config.Limits maps (scope, class) to a rate and a burst. A rule for class "" applies
// to every class of that scope through one shared bucket; a rule for a specific class takes
// precedence and has its own bucket. A scope without any rule is not limited.
//
// Per-tenant overrides: Request.TenantRate and Request.TenantBurst (the tenant's overrides from
// the shard map, which the router reads on every request) replace the rate and burst of the
// tenant rule that applies to the request. A field left 0 keeps the rule's value; with no tenant
// rule at all, a TenantRate limits the tenant through one bucket shared by every class. The
// effective numbers are part of an overridden bucket's key, so a changed override starts a
// fresh bucket of its new size on every router at its next request: a GCRA bucket remembers its
// debt in time, and debt run up at a tiny rate would otherwise hold back a raised limit for as
// long as the old rate needed to repay it (as would a denial remembered under the old numbers).
// The old bucket's key expires in Redis once it would have been full.
//
// Defaults (zero values):
//   - Config.Redis nil: in-process only (the fallback gauge stays 0: nothing fell back).
//   - Config.Limits nil: DefaultLimits() — tenant 500/s burst 1000, client IP 2000/s burst
//     2000, subject unlimited (DESIGN.md §4 development defaults).
//   - Config.RedisTimeout 0: 50 ms per decision.
//   - Config.ProbeInterval 0: 1 s between Redis probes while in fallback.
//   - Config.KeyPrefix "": "meridian:rl:".
//   - Config.Lease 0: 100 ms; negative: no leases and no remembered denials (every decision
//     asks Redis).
//   - Config.Now nil: time.Now for the Limiter's own bookkeeping, Redis's TIME in the script.
//   - Config.Logger nil: slog.Default().
//   - Config.Registerer nil: metrics are kept but not registered anywhere.
//   - Limit.Burst 0: max(1, ceil(Rate)).
//
// Tests run against a real redis-server from internal/testenv.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Errors returned by this package.
var (
	// ErrBadClass means a Request named a route class other than read, write or admin.
	ErrBadClass = errors.New("ratelimit: unknown route class")
	// ErrBadLimit means a configured limit has a non-positive or non-finite rate or a negative burst.
	ErrBadLimit = errors.New("ratelimit: invalid limit")
)

// Class is a route class.
type Class string

// Route classes.
const (
	ClassRead  Class = "read"
	ClassWrite Class = "write"
	ClassAdmin Class = "admin"
)

// Scope is what a bucket is keyed by.
type Scope string

// Scopes, in the order they are checked.
const (
	ScopeTenant  Scope = "tenant"
	ScopeSubject Scope = "sub"
	ScopeIP      Scope = "ip"
)

var scopes = [...]Scope{ScopeTenant, ScopeSubject, ScopeIP}

// MinRate is the smallest rate a Limit may have: one request per 11.6 days. Rates above 10⁶/s
// are honoured as 10⁶/s (the emission interval is at least 1 µs).
const MinRate = 1e-6

// Limit is a sustained rate and the number of requests allowed at once.
type Limit struct {
	Rate  float64 `json:"rate" yaml:"rate"`   // requests per second, > 0
	Burst int     `json:"burst" yaml:"burst"` // 0 = max(1, ceil(Rate))
}

func (l Limit) burst() int64 {
	if l.Burst > 0 {
		return int64(l.Burst)
	}
	return max(1, int64(math.Ceil(l.Rate)))
}

// check reports whether the limit is representable: a positive finite rate of at least
// MinRate and a non-negative burst. The bucket lives in integer microseconds: one interval
// (1e6/rate) and a whole burst of them must fit, or a tiny rate would wrap into a huge one.
func (l Limit) check() error {
	if !(l.Rate > 0) || math.IsInf(l.Rate, 0) || l.Burst < 0 {
		return fmt.Errorf("%w: rate %v burst %d", ErrBadLimit, l.Rate, l.Burst)
	}
	if l.Rate < MinRate || float64(l.burst())*1e6/l.Rate > 1<<62 {
		return fmt.Errorf("%w: rate %v burst %d: rate must be at least %v/s and burst/rate at most 2^62 µs",
			ErrBadLimit, l.Rate, l.Burst, MinRate)
	}
	return nil
}

// interval is the GCRA emission interval in microseconds (at least 1).
func (l Limit) interval() int64 {
	return max(1, int64(math.Round(1e6/l.Rate)))
}

// Rule selects the requests a Limit applies to. Class "" means every class, sharing one bucket.
type Rule struct {
	Scope Scope
	Class Class
}

// DefaultLimits returns DESIGN.md's development defaults.
func DefaultLimits() map[Rule]Limit {
	return map[Rule]Limit{
		{Scope: ScopeTenant}: {Rate: 500, Burst: 1000},
		{Scope: ScopeIP}:     {Rate: 2000, Burst: 2000},
	}
}

// Config configures a Limiter. The package doc lists every default.
type Config struct {
	Redis         redis.Scripter
	Limits        map[Rule]Limit
	RedisTimeout  time.Duration
	ProbeInterval time.Duration
	KeyPrefix     string
	Lease         time.Duration
	Now           func() time.Time
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
}

// Request is what one HTTP request is limited by. Empty Tenant, Subject or IP skip that scope.
type Request struct {
	Class   Class
	Tenant  string
	Subject string
	IP      string
	// TenantRate and TenantBurst override the tenant rule's rate and burst for this tenant
	// (see "Per-tenant overrides" in the package doc); 0 keeps the rule's value.
	TenantRate  float64
	TenantBurst int
}

// Result is one decision. When several buckets apply, the fields describe the binding one:
// for a denied request the one that must wait longest, otherwise the one with the fewest
// requests remaining.
type Result struct {
	Allowed    bool
	Limit      int64         // the binding bucket's burst (RateLimit-Limit)
	Remaining  int64         // requests still admitted at once (RateLimit-Remaining)
	Reset      time.Duration // until the binding bucket is full again (RateLimit-Reset)
	RetryAfter time.Duration // until a retry can succeed; 0 when allowed
	Scope      Scope         // the binding scope; "" when nothing applied
	Local      bool          // decided by the in-process fallback
}

// SetHeaders writes the RateLimit-* headers, and Retry-After when denied, in whole seconds
// rounded up. It writes nothing when no limit applied.
func (r Result) SetHeaders(h http.Header) {
	if r.Scope == "" {
		return
	}
	h.Set("RateLimit-Limit", strconv.FormatInt(r.Limit, 10))
	h.Set("RateLimit-Remaining", strconv.FormatInt(r.Remaining, 10))
	h.Set("RateLimit-Reset", strconv.FormatInt(ceilSeconds(r.Reset), 10))
	if !r.Allowed {
		h.Set("Retry-After", strconv.FormatInt(max(1, ceilSeconds(r.RetryAfter)), 10))
	}
}

func ceilSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

// Limiter makes rate-limit decisions. It is safe for concurrent use.
type Limiter struct {
	redis         redis.Scripter
	limits        map[Rule]Limit
	timeout       time.Duration
	probeInterval time.Duration
	prefix        string
	now           func() time.Time
	log           *slog.Logger
	local         *localLimiter
	lease         time.Duration // ≤ 0: off
	redisClock    bool          // the script reads Redis's TIME (Config.Now was nil)
	leases        *leaseTable
	// rules is limits resolved per scope and class (indexed as scopes and classIndex), so that
	// a request does not hash Rule keys: limits never changes after New.
	rules [len(scopes)][len(classes)]rule

	fallback  atomic.Bool  // true while decisions are local because Redis failed
	lastProbe atomic.Int64 // unix nanoseconds of the last Redis attempt while in fallback
	probing   atomic.Bool  // one prober at a time
	// transMu serialises fallback transitions so each is logged exactly once.
	transMu sync.Mutex

	fallbackGauge prometheus.Gauge
	decisions     *prometheus.CounterVec
	// decisionCs holds decisions' children by class, decision and backend (see count),
	// created at first use.
	decisionCs  [len(classes)][2][len(backends)]atomic.Pointer[prometheus.Counter]
	redisCalls  prometheus.Counter
	redisErrors prometheus.Counter
	renewals    *prometheus.CounterVec // leases renewed ahead of need (lease.go, renewAhead)
}

// New builds a Limiter and registers its metrics with cfg.Registerer when non-nil.
func New(cfg Config) (*Limiter, error) {
	l := &Limiter{
		redis:         cfg.Redis,
		limits:        cfg.Limits,
		timeout:       cfg.RedisTimeout,
		probeInterval: cfg.ProbeInterval,
		prefix:        cfg.KeyPrefix,
		now:           cfg.Now,
		log:           cfg.Logger,
		local:         newLocalLimiter(),
		lease:         cfg.Lease,
		leases:        &leaseTable{m: make(map[string]*leaseState)},
	}
	if l.lease == 0 {
		l.lease = 100 * time.Millisecond
	}
	if l.limits == nil {
		l.limits = DefaultLimits()
	}
	for r, lim := range l.limits {
		if err := lim.check(); err != nil {
			return nil, fmt.Errorf("%w (rule %s/%s)", err, r.Scope, r.Class)
		}
		switch r.Scope {
		case ScopeTenant, ScopeSubject, ScopeIP:
		default:
			return nil, fmt.Errorf("%w: unknown scope %q", ErrBadLimit, r.Scope)
		}
		switch r.Class {
		case "", ClassRead, ClassWrite, ClassAdmin:
		default:
			return nil, fmt.Errorf("%w: %q", ErrBadClass, r.Class)
		}
	}
	for si, sc := range scopes {
		shared, sharedOK := l.limits[Rule{Scope: sc}]
		for ci, c := range classes {
			if lim, ok := l.limits[Rule{Scope: sc, Class: c}]; ok {
				l.rules[si][ci] = rule{limit: lim, class: c, ok: true}
			} else {
				l.rules[si][ci] = rule{limit: shared, ok: sharedOK}
			}
		}
	}
	if l.timeout <= 0 {
		l.timeout = 50 * time.Millisecond
	}
	if l.probeInterval <= 0 {
		l.probeInterval = time.Second
	}
	if l.prefix == "" {
		l.prefix = "meridian:rl:"
	}
	if l.now == nil {
		l.now = time.Now
		l.redisClock = true
	}
	if l.log == nil {
		l.log = slog.Default()
	}
	l.fallbackGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "meridian_ratelimit_fallback",
		Help: "1 while rate-limit decisions are made by the in-process limiter because Redis is unreachable.",
	})
	l.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_ratelimit_decisions_total",
		Help: "Rate-limit decisions by route class, decision (allowed, limited) and backend (redis: asked Redis; lease: tokens or a denial Redis gave earlier; local: the fallback).",
	}, []string{"class", "decision", "backend"})
	l.redisCalls = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meridian_ratelimit_redis_calls_total",
		Help: "Script calls sent to Redis (each decides one request or takes a batch of tokens).",
	})
	l.redisErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meridian_ratelimit_redis_errors_total",
		Help: "Rate-limit decisions that fell back because Redis failed or timed out.",
	})
	l.renewals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_ratelimit_lease_renewals_total",
		Help: "Leases renewed ahead of need for decisions that may not wait (the router's event loop), by result: granted (tokens added), failed (Redis failed or denied: the lease runs on as it was).",
	}, []string{"result"})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{l.fallbackGauge, l.decisions, l.redisCalls, l.redisErrors, l.renewals} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("ratelimit: register metrics: %w", err)
			}
		}
	}
	return l, nil
}

// TenantDefault returns the tenant rule that applies to every class (Rule{Scope: ScopeTenant}),
// with its burst resolved; ok is false when there is none. Admin views report it as the
// effective limit of tenants without overrides.
func (l *Limiter) TenantDefault() (lim Limit, ok bool) {
	lim, ok = l.limits[Rule{Scope: ScopeTenant}]
	if ok {
		lim.Burst = int(lim.burst())
	}
	return lim, ok
}

// Fallback reports whether decisions are currently made in-process.
func (l *Limiter) Fallback() bool { return l.fallback.Load() }

// classes are the route classes, in the order rules and decisionCs index them.
var classes = [...]Class{ClassRead, ClassWrite, ClassAdmin}

// classIndex is c's index in classes, or -1 for an unknown class.
func classIndex(c Class) int {
	switch c {
	case ClassRead:
		return 0
	case ClassWrite:
		return 1
	case ClassAdmin:
		return 2
	}
	return -1
}

// rule is the Limit that applies to one scope and class, and the class of the Rule it came
// from ("" for a rule shared by every class).
type rule struct {
	limit Limit
	class Class
	ok    bool // false: no rule, the scope is not limited for this class
}

// bucket is one GCRA key with its limit.
type bucket struct {
	// key is the bucket's Redis key (see appendKey), or "" until a path that needs it as a
	// string sets it: the leased path looks its state up without building a string and takes
	// the key from the state (see allowLeasedOr), the others call keyed.
	key        string
	scope      Scope
	class      Class // the rule's class: "" for a rule every class shares
	id         string
	limit      Limit
	overridden bool // limit is the tenant's override: its numbers are part of the key
}

// appendKey appends b's Redis key to dst: prefix, scope, the rule's class, the override's
// numbers when overridden, and the id. The id goes last so that colons in it (IPv6) cannot
// collide with another key.
func (b *bucket) appendKey(dst []byte, prefix string) []byte {
	dst = append(dst, prefix...)
	dst = append(dst, b.scope...)
	dst = append(dst, ':')
	dst = append(dst, b.class...)
	dst = append(dst, ':')
	if b.overridden {
		dst = strconv.AppendFloat(dst, b.limit.Rate, 'g', -1, 64)
		dst = append(dst, '/')
		dst = strconv.AppendInt(dst, int64(b.limit.Burst), 10)
		dst = append(dst, ':')
	}
	return append(dst, b.id...)
}

// keyBufSize is the room on the stack for the keys of one request's buckets; longer keys
// still work, on the heap.
const keyBufSize = 256

// keyed sets the key of every bucket in bs that has none.
func (l *Limiter) keyed(bs []bucket) {
	for i := range bs {
		if bs[i].key == "" {
			var buf [keyBufSize]byte
			bs[i].key = string(bs[i].appendKey(buf[:0], l.prefix))
		}
	}
}

// resolve puts the buckets req touches in arr and returns them, keys not set (see bucket.key).
// It neither allocates nor hashes anything unless req is invalid: a request's buckets live in
// the caller's array (there are at most len(scopes)).
func (l *Limiter) resolve(req Request, arr *[len(scopes)]bucket) ([]bucket, error) {
	ci := classIndex(req.Class)
	if ci < 0 {
		return nil, fmt.Errorf("%w: %q", ErrBadClass, req.Class)
	}
	ids := [...]string{req.Tenant, req.Subject, req.IP}
	n := 0
	for i, s := range scopes {
		if ids[i] == "" {
			continue
		}
		r := l.rules[i][ci]
		lim, ok := r.limit, r.ok
		overridden := s == ScopeTenant && (req.TenantRate != 0 || req.TenantBurst != 0)
		if overridden {
			if !ok {
				if req.TenantRate == 0 {
					continue // a burst alone, with no rule to take a rate from, limits nothing
				}
				lim, ok = Limit{}, true
			}
			if req.TenantRate != 0 {
				lim.Rate = req.TenantRate
			}
			if req.TenantBurst != 0 {
				lim.Burst = req.TenantBurst
			}
			if err := lim.check(); err != nil {
				return nil, fmt.Errorf("tenant override: %w", err)
			}
		}
		if !ok {
			continue
		}
		// Field by field: a composite literal is built on the stack and copied, and its
		// 16-byte loads of the fields just stored stall (store forwarding fails).
		b := &arr[n]
		b.key, b.scope, b.class, b.id, b.limit, b.overridden = "", s, r.class, ids[i], lim, overridden
		n++
	}
	return arr[:n], nil
}

// buckets is resolve with every key set, on the heap.
func (l *Limiter) buckets(req Request) ([]bucket, error) {
	bs, err := l.resolve(req, new([len(scopes)]bucket))
	if err != nil {
		return nil, err
	}
	l.keyed(bs)
	return bs, nil
}

// Allow decides req and, if allowed, consumes one request from every bucket it touches.
// An error is returned only for an invalid request (an unknown class, an override that is not
// a valid Limit) or when ctx itself has ended; Redis failures are absorbed by the fallback.
func (l *Limiter) Allow(ctx context.Context, req Request) (Result, error) {
	var arr [len(scopes)]bucket
	bs, err := l.resolve(req, &arr)
	if err != nil {
		return Result{}, err
	}
	if len(bs) == 0 {
		return Result{Allowed: true}, nil
	}
	now := l.now().UnixMicro()

	if l.redis != nil && l.lease > 0 && !l.fallback.Load() {
		res, backend, done, err := l.allowLeased(ctx, bs, now)
		if done {
			if err != nil {
				return Result{}, err
			}
			l.count(req.Class, res.Allowed, backend)
			return res, nil
		}
	}
	l.keyed(bs)
	if l.redis != nil && l.tryRedis() {
		res, err := l.allowRedis(ctx, bs, now, ones(len(bs)), nil)
		l.probing.Store(false)
		if err == nil {
			l.leaveFallback()
			l.count(req.Class, res.Allowed, backendRedis)
			return res.Result, nil
		}
		if ctx.Err() != nil {
			return Result{}, ctx.Err()
		}
		l.redisErrors.Inc()
		l.enterFallback(err)
	}
	res := l.local.allow(bs, now)
	res.Local = l.redis != nil
	l.count(req.Class, res.Allowed, backendLocal)
	return res, nil
}

// AllowNoWait decides req as Allow does when that needs no call to Redis: from tokens leased
// earlier, a remembered denial, or the local limiter while Redis is failing and no probe is
// due. ok is false, and nothing is spent or changed, when the decision needs Redis: the
// caller then asks Allow, off any thread that must not block (the router's event loops).
func (l *Limiter) AllowNoWait(req Request) (res Result, ok bool, err error) {
	var arr [len(scopes)]bucket
	bs, err := l.resolve(req, &arr)
	if err != nil {
		return Result{}, true, err
	}
	if len(bs) == 0 {
		return Result{Allowed: true}, true, nil
	}
	now := l.now().UnixMicro()
	if l.redis != nil {
		if !l.fallback.Load() {
			if l.lease <= 0 {
				return Result{}, false, nil
			}
			res, backend, _, err := l.allowLeasedOr(context.Background(), bs, now, true)
			if errors.Is(err, errWouldWait) {
				return Result{}, false, nil
			}
			l.count(req.Class, res.Allowed, backend)
			return res, true, err
		}
		if time.Now().UnixNano()-l.lastProbe.Load() >= int64(l.probeInterval) {
			return Result{}, false, nil // a probe of Redis is due: Allow makes it
		}
	}
	l.keyed(bs)
	res = l.local.allow(bs, now)
	res.Local = l.redis != nil
	l.count(req.Class, res.Allowed, backendLocal)
	return res, true, nil
}

// tryRedis says whether this decision should go to Redis: always outside fallback, and for one
// request per probe interval inside it.
func (l *Limiter) tryRedis() bool {
	if !l.fallback.Load() {
		return true
	}
	now := time.Now().UnixNano() // real time: probing paces real network attempts
	if now-l.lastProbe.Load() < int64(l.probeInterval) {
		return false
	}
	if !l.probing.CompareAndSwap(false, true) {
		return false
	}
	l.lastProbe.Store(now)
	return true
}

func (l *Limiter) enterFallback(err error) {
	l.transMu.Lock()
	defer l.transMu.Unlock()
	if l.fallback.Load() {
		return
	}
	l.lastProbe.Store(time.Now().UnixNano())
	l.fallback.Store(true)
	l.fallbackGauge.Set(1)
	l.log.Warn("ratelimit: Redis unreachable, using in-process limiter", "err", err)
}

func (l *Limiter) leaveFallback() {
	if !l.fallback.Load() {
		return
	}
	l.transMu.Lock()
	defer l.transMu.Unlock()
	if !l.fallback.Load() {
		return
	}
	l.fallback.Store(false)
	l.fallbackGauge.Set(0)
	l.log.Info("ratelimit: Redis reachable again, using Redis")
}

// Backends, as count and the decisions metric name them.
const (
	backendRedis = iota // asked Redis
	backendLease        // tokens or a denial Redis gave earlier
	backendLocal        // the in-process fallback
	numBackends
)

var backends = [numBackends]string{backendRedis: "redis", backendLease: "lease", backendLocal: "local"}

// count counts a decision of class c (a valid class: resolve checked it) by backend. The
// children of decisions are kept in an array, since a vector's lookup per request hashes three
// labels under a lock (and a map keyed by them would box the key on every lookup).
func (l *Limiter) count(c Class, allowed bool, backend int) {
	d := 0
	if allowed {
		d = 1
	}
	slot := &l.decisionCs[classIndex(c)][d][backend]
	if ctr := slot.Load(); ctr != nil {
		(*ctr).Inc()
		return
	}
	ctr := l.decisions.WithLabelValues(string(c), [2]string{"limited", "allowed"}[d], backends[backend])
	slot.Store(&ctr) // another goroutine may store the same child: harmless
	ctr.Inc()
}

// gcraScript checks every bucket and takes tokens from them all only if all admit the request.
// KEYS: bucket keys. ARGV[1]: now (µs), or -1 for Redis's own clock. Then per key i, from
// ARGV[4i-2]: emission interval (µs), burst, tokens wanted (≥ 1; a bucket with fewer grants
// what it has), and tokens given back (taken earlier and not spent: the TAT moves back by that
// many intervals first, and stays moved back even when the request is denied).
// Returns {allowed, then per key: granted, remaining, retry_after_µs, reset_µs}.
// TATs are stored as integer microseconds formatted with %.0f: Lua's default number format
// keeps only 14 digits, which would corrupt a 16-digit timestamp.
const gcraScript = `
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local allowed = 1
local out = {}
local base = {}
local tats = {}
local refunded = {}
for i = 1, #KEYS do
  local t = tonumber(ARGV[4*i-2])
  local burst = tonumber(ARGV[4*i-1])
  local want = tonumber(ARGV[4*i])
  local refund = tonumber(ARGV[4*i+1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if refund > 0 and tat > 0 then
    tat = tat - refund * t
    refunded[i] = true
  end
  if tat < now then tat = now end
  base[i] = tat
  local diff = now - (tat + t - t * burst)
  if diff < 0 then
    allowed = 0
    out[#out+1] = 0
    out[#out+1] = 0
    out[#out+1] = -diff
    out[#out+1] = tat - now
  else
    local avail = math.floor(diff / t) + 1
    local g = math.min(want, avail)
    tats[i] = tat + g * t
    out[#out+1] = g
    out[#out+1] = avail - g
    out[#out+1] = 0
    out[#out+1] = tats[i] - now
  end
end
for i = 1, #KEYS do
  local tat = nil
  if allowed == 1 then tat = tats[i] elseif refunded[i] then tat = base[i] end
  if tat ~= nil then
    if tat > now then
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
table.insert(out, 1, allowed)
return out
`

var script = redis.NewScript(gcraScript)

// redisResult is a Redis decision with the tokens granted per bucket (all zero when denied).
type redisResult struct {
	Result
	granted []int64
	outs    []outcome
}

// allowRedis runs the script for bs, asking for want[i] tokens of bucket i and giving back
// refund[i] (nil: none).
func (l *Limiter) allowRedis(ctx context.Context, bs []bucket, now int64, want, refund []int64) (redisResult, error) {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	keys := make([]string, len(bs))
	args := make([]any, 0, 1+4*len(bs))
	if l.redisClock {
		args = append(args, -1)
	} else {
		args = append(args, now)
	}
	for i, b := range bs {
		keys[i] = b.key
		var back int64
		if refund != nil {
			back = refund[i]
		}
		args = append(args, b.limit.interval(), b.limit.burst(), max(1, want[i]), max(0, back))
	}
	l.redisCalls.Inc()
	// Run uses EVALSHA and falls back to EVAL when Redis answers NOSCRIPT.
	vals, err := script.Run(ctx, l.redis, keys, args...).Int64Slice()
	if err != nil {
		return redisResult{}, fmt.Errorf("ratelimit: redis: %w", err)
	}
	if len(vals) != 1+4*len(bs) {
		return redisResult{}, fmt.Errorf("ratelimit: redis script returned %d values, want %d", len(vals), 1+4*len(bs))
	}
	rr := redisResult{granted: make([]int64, len(bs)), outs: make([]outcome, len(bs))}
	for i := range bs {
		v := vals[1+4*i:]
		rr.granted[i] = v[0]
		rr.outs[i] = outcome{remaining: v[1], retryAfter: v[2], reset: v[3]}
	}
	// The request itself spends one granted token: the caller keeps the rest.
	outs := make([]outcome, len(bs))
	copy(outs, rr.outs)
	for i := range outs {
		if rr.granted[i] > 1 {
			outs[i].remaining += rr.granted[i] - 1
		}
	}
	rr.Result = combine(bs, vals[0] == 1, outs)
	return rr, nil
}

func ones(n int) []int64 {
	w := make([]int64, n)
	for i := range w {
		w[i] = 1
	}
	return w
}

// outcome is one bucket's part of a decision, in microseconds.
type outcome struct {
	remaining, retryAfter, reset int64
}

// combine picks the binding bucket's numbers.
func combine(bs []bucket, allowed bool, outs []outcome) Result {
	best := -1
	for i, o := range outs {
		if best < 0 {
			best = i
			continue
		}
		b := outs[best]
		if allowed && o.remaining < b.remaining || !allowed && o.retryAfter > b.retryAfter {
			best = i
		}
	}
	o := outs[best]
	r := Result{
		Allowed:   allowed,
		Limit:     bs[best].limit.burst(),
		Remaining: max(0, o.remaining),
		Reset:     time.Duration(max(0, o.reset)) * time.Microsecond,
		Scope:     bs[best].scope,
	}
	if !allowed {
		r.Remaining = 0
		r.RetryAfter = time.Duration(max(1, o.retryAfter)) * time.Microsecond
	}
	return r
}

// localLimiter is the in-process GCRA used while Redis is unreachable; same arithmetic as
// gcraScript.
type localLimiter struct {
	// mu guards the fields below.
	mu        sync.Mutex
	tats      map[string]int64 // key -> theoretical arrival time, µs
	lastSweep int64
}

func newLocalLimiter() *localLimiter {
	return &localLimiter{tats: make(map[string]int64)}
}

// sweepEvery bounds how often expired keys are dropped, so memory follows active keys only.
const sweepEvery = int64(10 * time.Second / time.Microsecond)

func (ll *localLimiter) allow(bs []bucket, now int64) Result {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	if now-ll.lastSweep > sweepEvery {
		for k, tat := range ll.tats {
			if tat <= now {
				delete(ll.tats, k)
			}
		}
		ll.lastSweep = now
	}
	allowed := true
	outs := make([]outcome, len(bs))
	newTats := make([]int64, len(bs))
	for i, b := range bs {
		t, burst := b.limit.interval(), b.limit.burst()
		tat := max(ll.tats[b.key], now)
		newTat := tat + t
		diff := now - (newTat - t*burst)
		remaining := floorDiv(diff, t)
		if remaining < 0 {
			allowed = false
			outs[i] = outcome{remaining: 0, retryAfter: -diff, reset: tat - now}
			continue
		}
		newTats[i] = newTat
		outs[i] = outcome{remaining: remaining, reset: newTat - now}
	}
	if allowed {
		for i, b := range bs {
			ll.tats[b.key] = newTats[i]
		}
	}
	return combine(bs, allowed, outs)
}

// floorDiv is math.floor(a/b) for b > 0, matching the Lua script for negative a.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}
