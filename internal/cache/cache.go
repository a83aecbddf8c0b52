// Package cache keeps record reads and list pages in the region's Redis (DESIGN.md §7): a
// Reader wrapped by (*Cache).Wrap answers Get and List from Redis when that is provably no
// staler than the read asked for, and the Cache, as the events consumer's Applier, drops
// entries as change events arrive; an Edge reads the same entries for a router, which answers
// plain record GETs with them (edge.go). docs/cache.md explains keys, generations, the fill
// guard and the edge.
//
// The cache serves an entry only when the read is not strong, the consumer has proven the
// shard's events current (Config.Fresh within MaxStaleness) and, for a read with a
// Consistency-Token, the entry's LSN covers the token. Every other read goes to the inner
// reader unchanged. A fill (storing what a miss read) is admitted by the fill guard, so that a
// value older than an applied invalidation is never stored: that is the one property this
// package must never lose. It must never fail a read because of Redis: Redis errors and
// timeouts send the read to the inner reader.
//
// It never decides where a read goes inside the store (replication does) and never talks to
// Postgres itself. Tests run against a real redis-server (internal/testenv) with a fake inner
// Reader.
package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/replication"
)

// Errors returned by New.
var (
	// ErrNoRedis: Config.Redis is nil.
	ErrNoRedis = errors.New("cache: no redis client")
	// ErrNoFresh: Config.Fresh is nil (without it no entry could ever be proven fresh).
	ErrNoFresh = errors.New("cache: no freshness source")
)

// Defaults of the zero Config values.
const (
	DefaultTTL          = 60 * time.Second
	DefaultMaxStaleness = 5 * time.Second
	DefaultTimeout      = 50 * time.Millisecond
	DefaultApplyTimeout = 200 * time.Millisecond
	// stateTTL is how long a tenant's state hash (generation, list generations, newest event
	// LSN) outlives its last event. It must exceed TTL plus the longest read by far: an entry
	// is written under the state it was read with. A state that expires comes back at a new
	// generation (see luaNow), so expiry only ever costs misses.
	stateTTL = 24 * time.Hour
	// repairEvery spaces the attempts to bump the epoch after an Applier call failed.
	repairEvery = time.Second
)

// Config configures a Cache.
type Config struct {
	// Redis is the region's Redis (required). The scripts name the epoch key and a tenant's
	// keys together, so it must be a single Redis, not a cluster.
	Redis *redis.Client
	// TTL bounds every entry's life. 0: 60 s.
	TTL time.Duration
	// MaxStaleness is how old the newest heartbeat of a shard may be for its entries to be
	// served: the most a cached read may lag its shard's writes when events stop flowing.
	// 0: 5 s (cmd/api passes -cache-max-lag, 1 s).
	MaxStaleness time.Duration
	// StandbyLag is the most a standby the store reads may lag (its max_staleness): after a
	// reset, standby reads are stored only once they began this long after it. 0: 5 s.
	StandbyLag time.Duration
	// Fresh is the consumer's Fresh: the AsOf of the newest heartbeat applied for the shard
	// (required).
	Fresh func(shard string) (asOf time.Time, ok bool)
	// Now is the clock compared with Fresh's AsOf. nil: time.Now.
	Now func() time.Time
	// Timeout bounds each Redis call of a read (lookup, fill, the repair a read tries). 0: 50 ms.
	Timeout time.Duration
	// ApplyTimeout bounds each Redis call of the Applier methods and of PublishFresh, which run
	// off any request's path: a call that times out leaves the cache dirty and costs the region
	// a reset (every entry dropped), so on a busy machine the read's 50 ms made whole-region
	// resets of slow invalidations (7 while 10,000 records were written in a bench's seeding).
	// 0: the larger of Timeout and 200 ms. The client's socket timeouts cap it (RedisOptions:
	// 200 ms).
	ApplyTimeout time.Duration
	// Logger nil: slog.Default().
	Logger *slog.Logger
	// Registerer nil: metrics are kept but not registered.
	Registerer prometheus.Registerer
}

// Cache is the region's Redis cache of record reads and list pages, and the Applier of change
// events that keeps it honest. Its methods are safe for concurrent use; the Applier methods
// are meant to be called from one goroutine in stream order.
type Cache struct {
	rdb          *redis.Client
	ttl          time.Duration
	maxStaleness time.Duration
	standbyLag   time.Duration
	timeout      time.Duration
	applyTimeout time.Duration
	fresh        func(string) (time.Time, bool)
	now          func() time.Time
	log          *slog.Logger

	guard  *guard
	flight singleflight.Group
	// flightJoined, when set (tests only), is called once a miss has joined or started its
	// collapsed read.
	flightJoined func()

	// dirty is set when an Applier call could not reach Redis: an entry it should have
	// deleted may still be there, so nothing is served until an epoch bump succeeds.
	dirty      atomic.Bool
	lastRepair atomic.Int64 // unix nanos of the last repair attempt
	failing    atomic.Bool  // Redis is failing (logged once per transition)

	requests      *prometheus.CounterVec
	fillSkipped   *prometheus.CounterVec
	invalidations prometheus.Counter
	resets        *prometheus.CounterVec
	errs          *prometheus.CounterVec
}

// New returns a Cache. The Config doc lists every default.
func New(cfg Config) (*Cache, error) {
	if cfg.Redis == nil {
		return nil, ErrNoRedis
	}
	if cfg.Fresh == nil {
		return nil, ErrNoFresh
	}
	c := &Cache{
		rdb:          cfg.Redis,
		ttl:          cmp0(cfg.TTL, DefaultTTL),
		maxStaleness: cmp0(cfg.MaxStaleness, DefaultMaxStaleness),
		standbyLag:   cmp0(cfg.StandbyLag, DefaultMaxStaleness),
		timeout:      cmp0(cfg.Timeout, DefaultTimeout),
		applyTimeout: cfg.ApplyTimeout,
		fresh:        cfg.Fresh,
		now:          cfg.Now,
		log:          cfg.Logger,
		guard:        newGuard(),
	}
	if c.applyTimeout <= 0 {
		c.applyTimeout = max(c.timeout, DefaultApplyTimeout)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_cache_requests_total",
		Help: "Cacheable reads by kind (record, list) and result: hit (answered from Redis), miss (read from the store, maybe stored), bypass (not eligible, or Redis failed).",
	}, []string{"kind", "result"})
	c.fillSkipped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_cache_fill_skipped_total",
		Help: "Misses whose answer was not stored, by reason (the fill guard's, or not-found, error).",
	}, []string{"reason"})
	c.invalidations = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meridian_cache_invalidations_total",
		Help: "Record invalidations applied (change events).",
	})
	c.resets = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_cache_resets_total",
		Help: "Generation bumps applied, by scope (tenant, all).",
	}, []string{"scope"})
	c.errs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_cache_errors_total",
		Help: "Redis calls that failed or timed out (and entries that did not decode), by operation.",
	}, []string{"op"})
	if cfg.Registerer != nil {
		for _, col := range []prometheus.Collector{c.requests, c.fillSkipped, c.invalidations, c.resets, c.errs} {
			if err := cfg.Registerer.Register(col); err != nil {
				return nil, fmt.Errorf("cache: register metrics: %w", err)
			}
		}
	}
	return c, nil
}

func cmp0(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// redisErr counts a failed Redis call and logs once per transition into failure.
func (c *Cache) redisErr(op string, err error) {
	c.errs.WithLabelValues(op).Inc()
	if !c.failing.Swap(true) {
		c.log.Warn("cache: redis failing; reads go to the store", "op", op, "err", err)
	}
}

func (c *Cache) redisOK() {
	if c.failing.Load() && c.failing.Swap(false) {
		c.log.Info("cache: redis answering again")
	}
}

// Invalidate applies one change event: the record's entry is deleted and the collection's
// list pages are dropped (its list generation is bumped). lsn is the event's LSN; standby
// reads older than the newest one are not stored afterwards. An error leaves the cache off
// (every read bypasses) until an epoch bump succeeds, which the next Applier call or a read
// retries.
func (c *Cache) Invalidate(ctx context.Context, tenant, shard, collection, id string, lsn uint64) error {
	c.guard.invalidate(tenant, shard, lsn) // before Redis: fills in flight must see it
	c.invalidations.Inc()
	err := c.apply(ctx, "invalidate", func(ctx context.Context) error {
		return invalidateScript.Run(ctx, c.rdb, []string{epochKey, stateKey(tenant)},
			tenantPrefix(tenant), collection, id, lsnHex(lsn), stateTTL.Milliseconds(), shard).Err()
	})
	if err != nil {
		return fmt.Errorf("cache: invalidate %s/%s/%s: %w", tenant, collection, id, err)
	}
	return nil
}

// ResetTenant drops everything cached for tenant (its generation is bumped).
func (c *Cache) ResetTenant(ctx context.Context, tenant string) error {
	c.guard.resetTenant(tenant, c.now())
	c.resets.WithLabelValues("tenant").Inc()
	err := c.apply(ctx, "reset-tenant", func(ctx context.Context) error {
		return resetTenantScript.Run(ctx, c.rdb, []string{epochKey, stateKey(tenant)}, stateTTL.Milliseconds()).Err()
	})
	if err != nil {
		return fmt.Errorf("cache: reset tenant %s: %w", tenant, err)
	}
	return nil
}

// ResetAll drops everything cached in the region (the region epoch is bumped).
func (c *Cache) ResetAll(ctx context.Context) error {
	c.guard.resetAll(c.now())
	c.resets.WithLabelValues("all").Inc()
	ctx, cancel := context.WithTimeout(ctx, c.applyTimeout)
	defer cancel()
	if err := c.bumpEpoch(ctx); err != nil {
		c.redisErr("reset-all", err)
		c.dirty.Store(true)
		return fmt.Errorf("cache: reset all: %w", err)
	}
	return nil
}

// bumpEpoch bumps the region epoch; success also clears dirty (every older entry is gone).
func (c *Cache) bumpEpoch(ctx context.Context) error {
	if err := resetAllScript.Run(ctx, c.rdb, []string{epochKey}).Err(); err != nil {
		return err
	}
	c.dirty.Store(false)
	c.redisOK()
	return nil
}

// apply runs an Applier's Redis step: first the epoch bump a failed earlier step owes, then
// the step. A failure marks the cache dirty.
func (c *Cache) apply(ctx context.Context, op string, step func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.applyTimeout)
	defer cancel()
	if c.dirty.Load() {
		if err := c.bumpEpoch(ctx); err != nil {
			c.redisErr("repair", err)
			return err
		}
	}
	if err := step(ctx); err != nil {
		c.redisErr(op, err)
		c.dirty.Store(true)
		return err
	}
	c.redisOK()
	return nil
}

// usable reports whether the cache may be used at all, trying the owed epoch bump at most
// once per repairEvery when it is dirty.
func (c *Cache) usable(ctx context.Context) bool {
	if !c.dirty.Load() {
		return true
	}
	now := c.now().UnixNano()
	last := c.lastRepair.Load()
	if now-last < int64(repairEvery) || !c.lastRepair.CompareAndSwap(last, now) {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := c.bumpEpoch(ctx); err != nil {
		c.redisErr("repair", err)
		return false
	}
	return true
}

// Reader is what the cache wraps and what it offers: the records store's reads
// (pgstore.Store's signatures).
type Reader interface {
	Get(ctx context.Context, t records.Target, ro records.ReadOptions, coll, id string) (records.Record, records.ReadInfo, error)
	List(ctx context.Context, t records.Target, ro records.ReadOptions, coll string, q records.ListQuery) (records.Page, records.ReadInfo, error)
	GetMany(ctx context.Context, t records.Target, ro records.ReadOptions, coll string, ids, fields []string) ([]records.Record, records.ReadInfo, error)
}

// Wrap returns a Reader that serves Get and List through the cache and passes GetMany to
// inner. Values a hit or a collapsed miss returns may be shared between callers: they must not
// be modified.
func (c *Cache) Wrap(inner Reader) Reader { return &wrapped{c: c, inner: inner} }

type wrapped struct {
	c     *Cache
	inner Reader
}

var _ Reader = (*wrapped)(nil)

func (w *wrapped) Get(ctx context.Context, t records.Target, ro records.ReadOptions, coll, id string) (records.Record, records.ReadInfo, error) {
	return cached(ctx, w.c, kindRecord, t, ro, coll, id, func(ctx context.Context) (records.Record, records.ReadInfo, error) {
		return w.inner.Get(ctx, t, ro, coll, id)
	})
}

func (w *wrapped) List(ctx context.Context, t records.Target, ro records.ReadOptions, coll string, q records.ListQuery) (records.Page, records.ReadInfo, error) {
	return cached(ctx, w.c, kindList, t, ro, coll, queryHash(q), func(ctx context.Context) (records.Page, records.ReadInfo, error) {
		return w.inner.List(ctx, t, ro, coll, q)
	})
}

func (w *wrapped) GetMany(ctx context.Context, t records.Target, ro records.ReadOptions, coll string, ids, fields []string) ([]records.Record, records.ReadInfo, error) {
	return w.inner.GetMany(ctx, t, ro, coll, ids, fields)
}

// lookup is what lookupScript found.
type lookup struct {
	key, epoch, gen, ic string
	newest              uint64 // the tenant's newest event LSN in Redis
	value               []byte // nil: no entry
}

// eligible reports whether a read may use the cache at all, and the LSN an entry must have
// (the token's; 0 without one).
func (c *Cache) eligible(t records.Target, ro records.ReadOptions) (minLSN uint64, ok bool) {
	if ro.Strong || ro.NoCache {
		return 0, false
	}
	asOf, fresh := c.fresh(t.Shard)
	if !fresh || c.now().Sub(asOf) >= c.maxStaleness {
		return 0, false
	}
	if ro.Token == "" {
		return 0, true
	}
	tok, err := replication.DecodeToken(ro.Token)
	if err != nil || tok.Shard != t.Shard {
		// A bad token is the store's to refuse (ErrBadToken); a token of another shard (a
		// move) is the store's to judge. No entry of this shard can serve either.
		return 0, false
	}
	return uint64(tok.LSN), true
}

func (c *Cache) lookup(ctx context.Context, kind string, tenant, shard, coll, suffix string) (lookup, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	vals, err := lookupScript.Run(ctx, c.rdb, []string{epochKey, stateKey(tenant)},
		tenantPrefix(tenant), keyKind(kind), coll, suffix, stateTTL.Milliseconds(), shard).Slice()
	if err != nil {
		return lookup{}, err
	}
	if len(vals) < 5 {
		return lookup{}, fmt.Errorf("cache: lookup returned %d values", len(vals))
	}
	var lk lookup
	for i, p := range []*string{&lk.key, &lk.epoch, &lk.gen, &lk.ic} {
		s, ok := vals[i].(string)
		if !ok {
			return lookup{}, fmt.Errorf("cache: lookup value %d is %T", i, vals[i])
		}
		*p = s
	}
	if nl, _ := vals[4].(string); nl != "" {
		if lk.newest, err = strconv.ParseUint(nl, 16, 64); err != nil {
			return lookup{}, fmt.Errorf("cache: tenant's newest LSN %q: %w", nl, err)
		}
	}
	if len(vals) > 5 {
		if s, ok := vals[5].(string); ok {
			lk.value = []byte(s)
		}
	}
	return lk, nil
}

// flightResult is what one collapsed miss hands every caller.
type flightResult[T any] struct {
	v    T
	info records.ReadInfo
}

// cached is Get and List: serve a covering entry, else read inner and maybe store the answer.
func cached[T any](ctx context.Context, c *Cache, kind string, t records.Target, ro records.ReadOptions,
	coll, suffix string, inner func(context.Context) (T, records.ReadInfo, error)) (T, records.ReadInfo, error) {
	minLSN, ok := c.eligible(t, ro)
	if !ok || !c.usable(ctx) {
		c.requests.WithLabelValues(kind, "bypass").Inc()
		return inner(ctx)
	}
	// A newer write epoch than this node has seen for the tenant is a move's cutover: drop
	// the tenant's entries and open the after-reset window (guard.epochSeen).
	if c.guard.epochSeen(t.Tenant, t.Epoch) {
		_ = c.ResetTenant(ctx, t.Tenant) // a failure leaves the cache off (apply)
	}
	// The snapshot precedes the lookup, which precedes the inner read.
	snap := c.guard.snapshot(t.Tenant, t.Shard, c.now())
	lk, err := c.lookup(ctx, kind, t.Tenant, t.Shard, coll, suffix)
	if err != nil {
		c.redisErr("lookup", err)
		c.requests.WithLabelValues(kind, "bypass").Inc()
		return inner(ctx)
	}
	c.redisOK()
	if lk.value != nil {
		shard, lsn, v, err := decodeEntry[T](lk.value)
		if err != nil {
			c.errs.WithLabelValues("decode").Inc()
		} else if shard == t.Shard && lsn >= minLSN {
			c.requests.WithLabelValues(kind, "hit").Inc()
			return v, records.ReadInfo{Source: records.SourceCache, Reason: "cache", LSN: lsn}, nil
		}
	}
	c.requests.WithLabelValues(kind, "miss").Inc()
	read := func(ctx context.Context) (T, records.ReadInfo, error) {
		v, info, err := inner(ctx)
		c.fill(ctx, t, snap, lk, v, info, err)
		return v, info, err
	}
	if ro.Token != "" {
		// A collapsed read would answer at the LSN of whoever started it, which need not
		// cover this token.
		return read(ctx)
	}
	// The flight key holds the generations and both invalidation counts: a read that begins
	// after an event never joins a read that began before it.
	fkey := t.Shard + "|" + lk.key + "|" + lk.ic + "|" + strconv.FormatUint(snap.resets, 10) + "|" + strconv.FormatUint(snap.events, 10)
	ch := c.flight.DoChan(fkey, func() (any, error) {
		v, info, err := read(ctx)
		return flightResult[T]{v, info}, err
	})
	if c.flightJoined != nil {
		c.flightJoined()
	}
	select {
	case res := <-ch:
		fr, _ := res.Val.(flightResult[T])
		if res.Err != nil && res.Shared && ctx.Err() == nil && (errors.Is(res.Err, context.Canceled) || errors.Is(res.Err, context.DeadlineExceeded)) {
			// The read this one joined was cut short by its own caller's context.
			return inner(ctx)
		}
		return fr.v, fr.info, res.Err
	case <-ctx.Done():
		var zero T
		return zero, records.ReadInfo{}, ctx.Err()
	}
}

// fill stores a miss's answer if the fill guard admits it (see docs/cache.md).
func (c *Cache) fill(ctx context.Context, t records.Target, snap snapshot, lk lookup, v any, info records.ReadInfo, err error) {
	skip := func(reason string) { c.fillSkipped.WithLabelValues(reason).Inc() }
	switch {
	case errors.Is(err, records.ErrRecordNotFound):
		skip(skipNotFound)
		return
	case err != nil:
		skip(skipError)
		return
	}
	if reason := c.guard.admit(t.Tenant, snap, info, lk.newest, c.standbyLag); reason != "" {
		skip(reason)
		return
	}
	// The entry's LSN answers "does this entry include a write whose token is LSN?". A
	// standby's replay position does (replay makes a commit visible); a primary's WAL position
	// read before the read's snapshot need not (a commit's record can precede its visibility),
	// so an entry filled on a primary serves no token read: LSN 0.
	lsn := info.LSN
	if info.Source != records.SourceReplica {
		lsn = 0
	}
	b, jerr := encodeEntry(t.Shard, lsn, v)
	if jerr != nil {
		c.errs.WithLabelValues("encode").Inc()
		return
	}
	// The answer is the caller's already; storing it should not die with the caller.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	stored, rerr := fillScript.Run(ctx, c.rdb, []string{epochKey, stateKey(t.Tenant), lk.key},
		lk.epoch, lk.gen, lk.ic, b, c.ttl.Milliseconds(), strconv.FormatUint(t.Epoch, 10)).Int()
	if rerr != nil {
		c.redisErr("fill", rerr)
		skip(skipRedisError)
		// The SET may have happened: remove it if an event landed meanwhile.
		if c.guard.moved(t.Tenant, snap) {
			c.rdb.Del(ctx, lk.key)
		}
		return
	}
	if stored == 0 {
		skip(skipRedisRace)
		return
	}
	if c.guard.moved(t.Tenant, snap) {
		// An event was applied while the entry was being stored. Its own script deletes the
		// entry too (it runs after the fill's, or the fill would have been refused), but this
		// DEL keeps the in-memory guard true on its own.
		skip(skipAfterSet)
		if err := c.rdb.Del(ctx, lk.key).Err(); err != nil {
			c.redisErr("fill-del", err)
		}
	}
}
