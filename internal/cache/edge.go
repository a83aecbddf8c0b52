package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/meridian-dev/meridian/internal/records"
)

// The edge: a router answers a plain record GET from its region's Redis itself when the entry
// is there and provably no staler than the API node would serve it (docs/cache.md, "The edge").
// The API nodes stay the only writers of the cache — they fill it and, as the events consumer's
// Applier, invalidate it — and publish two things for the edge:
//
//   - a shard's freshness, m:F:<shard>: the newest heartbeat AsOf (Unix µs) any node's consumer
//     applied with its cache in order (Cache.PublishFresh), the edge's stand-in for
//     Config.Fresh;
//   - a tenant's write epoch, field we of its state hash: the newest epoch a fill was read
//     under, so that the edge serves a tenant's entries only on the route they were filled on
//     (after a move the first read goes to a node, whose guard resets the tenant).
//
// The edge serves no read the node would not serve from the same entry: never a strong, a
// no-cache or a token read (those are forwarded), never an entry of another shard, and only
// while the shard's freshness is within MaxStaleness. It reads those keys through a copy in
// the router's memory that Redis keeps current by pushing invalidations (edgeClientOption), so
// a hit usually costs the router no round trip; the copy learns of a change when Redis's push
// reaches it, at most a round trip after the change (docs/cache.md, "The edge").

func freshKey(shard string) string { return "m:F:" + shard }

// freshTTL is how long a published freshness outlives its last publication: long past
// MaxStaleness, so that a key that expired only ever means "stale".
const freshTTL = time.Minute

// publishFreshScript raises a shard's published freshness. KEYS: fresh key. ARGV: AsOf (Unix
// µs, decimal), TTL ms.
var publishFreshScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v or tonumber(v) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
`)

// PublishFresh publishes, for each shard, the AsOf of the newest heartbeat the consumer applied
// (Config.Fresh), so that routers can prove the shard's events current before they serve an
// entry of it. Nothing is published while the cache is dirty (an invalidation may not have
// reached Redis): the edge then stops serving the region's entries once the published AsOf is
// MaxStaleness old, and a best-effort delete of the keys stops it at once.
func (c *Cache) PublishFresh(ctx context.Context, shards []string) error {
	ctx, cancel := context.WithTimeout(ctx, c.applyTimeout)
	defer cancel()
	type pub struct {
		shard string
		asOf  time.Time
	}
	var pubs []pub
	for _, sh := range shards {
		if asOf, ok := c.fresh(sh); ok {
			pubs = append(pubs, pub{sh, asOf})
		}
	}
	// Fresh is read before dirty: every event before those AsOfs has been applied, each
	// either in Redis or marking the cache dirty (which only an epoch bump, dropping every
	// entry, clears).
	if c.dirty.Load() {
		keys := make([]string, len(shards))
		for i, sh := range shards {
			keys[i] = freshKey(sh)
		}
		if len(keys) > 0 {
			_ = c.rdb.Del(ctx, keys...).Err()
		}
		return errDirty
	}
	if len(pubs) == 0 {
		return nil
	}
	p := c.rdb.Pipeline()
	for _, pb := range pubs {
		// Eval, not EvalSha: a pipeline cannot fall back on NOSCRIPT (and this runs every
		// 100 ms, not per request).
		publishFreshScript.Eval(ctx, p, []string{freshKey(pb.shard)},
			strconv.FormatInt(pb.asOf.UnixMicro(), 10), freshTTL.Milliseconds())
	}
	if _, err := p.Exec(ctx); err != nil {
		c.redisErr("publish-fresh", err)
		return err
	}
	return nil
}

var errDirty = errors.New("cache: dirty (an invalidation did not reach Redis); freshness not published")

// RunPublisher calls PublishFresh for shards() every interval (0: 100 ms) until ctx is done,
// and returns ctx.Err().
func (c *Cache) RunPublisher(ctx context.Context, shards func() []string, every time.Duration) error {
	if every <= 0 {
		every = 100 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			_ = c.PublishFresh(ctx, shards()) // failures are counted and logged by redisErr
		}
	}
}

// EdgeConfig configures an Edge.
type EdgeConfig struct {
	// Addr is the region's Redis, the one its API nodes cache in (required).
	Addr string
	// Memory is the most the router keeps of Redis's keys in its own memory (least recently
	// used first out). 0: DefaultEdgeMemory (64 MiB).
	Memory int
	// MaxStaleness is how old a shard's published freshness may be for its entries to be
	// served, as the nodes' Config.MaxStaleness. 0: 1 s (cmd/api's -cache-max-lag default).
	MaxStaleness time.Duration
	// Timeout bounds the lookup's Redis round trips. 0: 50 ms.
	Timeout time.Duration
	// Now is the clock compared with the published AsOf. nil: time.Now.
	Now func() time.Time
	// Logger nil: slog.Default().
	Logger *slog.Logger
	// Registerer nil: metrics are kept but not registered.
	Registerer prometheus.Registerer
}

// DefaultEdgeMaxStaleness is EdgeConfig.MaxStaleness's default.
const DefaultEdgeMaxStaleness = time.Second

// DefaultEdgeMemory is EdgeConfig.Memory's default: the most the router keeps of Redis's keys
// in its own memory (least recently used first out).
const DefaultEdgeMemory = 64 << 20

// edgeLocalTTL bounds how long the router keeps a key of Redis in its memory without Redis
// saying it changed; Redis's own expiry of the key bounds it too, so an entry's copy lives as
// long as the entry (the nodes' TTL, 60 s by default) and this bounds the region epoch and the
// tenants' state. Redis tells of every change (CLIENT TRACKING) or the connection breaks and
// the copy goes with it, so this only ages out keys nobody changes; it was 30 s, which sent a
// lookup of every key still in Redis off the router's loop to fetch it again twice a minute.
const edgeLocalTTL = 5 * time.Minute

// edgeClientOption is the option of the router's client of the region's Redis for the edge:
// client-side caching (Redis 6+'s CLIENT TRACKING over RESP3: Redis pushes an invalidation
// for every key the client read once the key changes, on the connection the read came on, so
// a reply can never be cached after the invalidation that followed it) in up to memory bytes
// (0: DefaultEdgeMemory), no retries.
func edgeClientOption(addr string, memory int) rueidis.ClientOption {
	if memory <= 0 {
		memory = DefaultEdgeMemory
	}
	// One connection (PipelineMultiplex -1): a lookup's keys would otherwise be spread over
	// several, and DoMultiCache ask them in parallel goroutines (9 % of an edge hit's CPU).
	return rueidis.ClientOption{InitAddress: []string{addr}, CacheSizeEachConn: memory, DisableRetry: true,
		PipelineMultiplex: -1, Dialer: net.Dialer{Timeout: time.Second}, ConnWriteTimeout: 200 * time.Millisecond}
}

// Edge reads record entries for a router, through a copy of the keys it reads that Redis keeps
// current by invalidation (edgeClientOption): an edge hit usually costs no round trip. It never
// writes to Redis. Safe for concurrent use.
type Edge struct {
	opt          rueidis.ClientOption
	rdb          atomic.Pointer[rueidis.Client] // nil until Run has connected
	maxStaleness time.Duration
	timeout      time.Duration
	now          func() time.Time
	log          *slog.Logger
	requests     *prometheus.CounterVec
	counters     sync.Map // result → requests' child
	roundTrips   prometheus.Counter
	fresh        sync.Map // shard → *shardFresh
	warms        chan warmReq
	warmed       *prometheus.CounterVec
}

// warmReq is an entry Warm fetches into the router's copy.
type warmReq struct {
	tenant, coll, id string
}

// warmQueue bounds the entries waiting to be warmed; a Warm that finds it full is dropped (the
// entry's next read is cold again and warms it then). warmBatch is how many one round trip
// fetches.
const (
	warmQueue = 1024
	warmBatch = 64
)

// shardFresh is what the edge last read of a shard's freshness key. A node rewrites the key
// every 100 ms, and Redis's push of each rewrite drops it from the router's copy; until the copy
// holds it again, a lookup that must not wait decides with the AsOf read last. That is only ever
// more cautious than the key's current value — a published AsOf only rises (publishFreshScript)
// and proves the shard's events applied up to it, and the edge serves only while it is within
// MaxStaleness — except after a dirty node deleted the key, a stop that is best-effort anyway
// (PublishFresh): the fetch started at once (fetchFresh) ends it a Redis round trip later.
type shardFresh struct {
	asOf     atomic.Int64 // Unix µs; 0: none read yet, or the key was gone
	fetching atomic.Bool  // a fetchFresh is running
}

// freshOf is shard's shardFresh (shards are the shard map's, not a client's: a bounded set).
func (e *Edge) freshOf(shard string) *shardFresh {
	if v, ok := e.fresh.Load(shard); ok {
		return v.(*shardFresh)
	}
	v, _ := e.fresh.LoadOrStore(shard, &shardFresh{})
	return v.(*shardFresh)
}

// note records asOf (0: the key was gone) as the newest read of the key.
func (f *shardFresh) note(asOf int64) {
	if f.asOf.Load() != asOf {
		f.asOf.Store(asOf)
	}
}

// fetchFresh reads shard's freshness key into the client's copy and f, off the caller's
// goroutine, unless a fetch of it is already running. A fetch that joined a RecordNoWait's,
// which that probe's ended context fails for every waiter, is tried again.
func (e *Edge) fetchFresh(c rueidis.Client, shard string, f *shardFresh) {
	if !f.fetching.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer f.fetching.Store(false)
		for range 3 {
			ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
			v, err := c.DoCache(ctx, c.B().Get().Key(freshKey(shard)).Cache(), edgeLocalTTL).ToString()
			cancel()
			switch {
			case err == nil:
				n, perr := strconv.ParseInt(v, 10, 64)
				if perr != nil {
					n = 0
				}
				f.note(n)
				return
			case rueidis.IsRedisNil(err):
				f.note(0)
				return
			case !errors.Is(err, context.Canceled):
				return // Redis failed: the AsOf held ages out within MaxStaleness
			}
		}
	}()
}

// Results of an edge lookup (the result label of meridian_edge_cache_requests_total).
const (
	EdgeHit    = "hit"    // answered from the entry
	EdgeMiss   = "miss"   // no entry (or the tenant has no cache state yet)
	EdgeStale  = "stale"  // the shard's freshness is missing or older than MaxStaleness
	EdgeEpoch  = "epoch"  // the tenant's entries were filled on another write epoch
	EdgeShard  = "shard"  // the entry was read from another shard
	EdgeError  = "error"  // Redis failed or timed out, or the entry did not decode
	EdgeCold   = "cold"   // the copy lacks the entry (RecordNoWait): forwarded, then Warm
	EdgeBypass = "bypass" // the request is not one the edge answers (counted by the router)
)

// NewEdge returns an Edge.
func NewEdge(cfg EdgeConfig) (*Edge, error) {
	if cfg.Addr == "" {
		return nil, ErrNoRedis
	}
	e := &Edge{opt: edgeClientOption(cfg.Addr, cfg.Memory), maxStaleness: cmp0(cfg.MaxStaleness, DefaultEdgeMaxStaleness),
		timeout: cmp0(cfg.Timeout, DefaultTimeout), now: cfg.Now, log: cfg.Logger, warms: make(chan warmReq, warmQueue)}
	if e.now == nil {
		e.now = time.Now
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	e.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_edge_cache_requests_total",
		Help: "Record GETs the router looked up in the region's cache, by result: hit (answered by the router), miss, cold (not in the router's copy: forwarded at once, fetched after the node's answer), stale (shard's events not proven current), epoch (filled on another write epoch), shard (read from another shard), error (Redis failed); bypass (not a plain record GET: forwarded without a lookup).",
	}, []string{"result"})
	e.warmed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_edge_cache_warms_total",
		Help: "Entries the router fetched into its copy after a node answered a cold read, by result: fetched (the entry, or its absence, is in the copy), dropped (the queue was full or Redis not connected), error (the fetch failed).",
	}, []string{"result"})
	e.roundTrips = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meridian_edge_cache_redis_lookups_total",
		Help: "Edge lookups that asked Redis for something the router did not hold (the rest were answered from the router's copy of Redis's keys).",
	})
	if cfg.Registerer != nil {
		for _, col := range []prometheus.Collector{e.requests, e.roundTrips, e.warmed} {
			if err := cfg.Registerer.Register(col); err != nil {
				return nil, fmt.Errorf("cache: register edge metrics: %w", err)
			}
		}
	}
	return e, nil
}

// Run connects to Redis, trying again every second until it can (lookups answer EdgeError
// until then: every read is forwarded), keeps the client until ctx is done, closes it and
// returns ctx.Err(). Once connected, the client reconnects by itself, and a connection that
// breaks takes its copy of Redis's keys with it.
func (e *Edge) Run(ctx context.Context) error {
	logged := false
	for {
		c, err := rueidis.NewClient(e.opt)
		if err == nil {
			e.rdb.Store(&c)
			e.log.Info("edge cache: connected to redis", "addr", e.opt.InitAddress[0])
			done := make(chan struct{})
			go func() { defer close(done); e.runWarms(ctx, c) }()
			<-ctx.Done()
			<-done
			e.rdb.Store(nil)
			c.Close()
			return ctx.Err()
		}
		if !logged {
			e.log.Warn("edge cache: redis not reachable; reads are forwarded until it is", "addr", e.opt.InitAddress[0], "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// Connected reports whether Run has connected.
func (e *Edge) Connected() bool { return e.rdb.Load() != nil }

// Count counts a request by result: EdgeHit for a hit the caller answered with, EdgeBypass
// for one it did not look up, EdgeError for a hit it could not answer with.
func (e *Edge) Count(result string) { e.counter(result).Inc() }

// counter is requests' child for result, looked up once (a vector's lookup hashes the label
// and takes its lock: one per request).
func (e *Edge) counter(result string) prometheus.Counter {
	if c, ok := e.counters.Load(result); ok {
		return c.(prometheus.Counter)
	}
	c := e.requests.WithLabelValues(result)
	e.counters.Store(result, c)
	return c
}

// Record looks up record coll/id of tenant for a read routed to shard on write epoch epoch. It
// returns the record and EdgeHit when the edge may answer with it, else a zero record and the
// reason it may not, which it counts. A hit is the caller's to count (Count(EdgeHit)) once it
// has answered with it.
func (e *Edge) Record(ctx context.Context, tenant, shard string, epoch uint64, coll, id string) (records.Record, string) {
	r, res, err := e.record(ctx, tenant, shard, epoch, coll, id)
	if res == EdgeError && errors.Is(err, context.Canceled) && ctx.Err() == nil {
		// A fetch of the key by a RecordNoWait, which ends before it starts, was in flight and
		// this lookup waited on it: nothing failed, the key was not in the copy.
		res = EdgeMiss
	}
	if res != EdgeHit {
		e.counter(res).Inc()
	}
	return r, res
}

// RecordNoWait is Record when the router's copy holds every key the lookup reads: it never
// waits on Redis (its context is ended before it starts, so a key the copy lacks fails at
// once). ok is false, and nothing is counted, when the copy could not answer: the caller asks
// Record then, off any thread that must not block (the router's event loops). An entry the
// copy lacks while it holds the tenant's state is no reason to wait: the result is EdgeCold
// (ok true), the caller forwards the read, and once the node has answered it calls Warm.
//
// Why not fetch the entry first, as Record does: a node's lookup asks Redis anyway, and an
// entry the router fetched before the node filled it is a cached absence that the fill's
// invalidation then drops, so the next read had to fetch it again — two round trips off the
// router's loop per miss, where Warm after the answer takes one, off the request's path.
func (e *Edge) RecordNoWait(tenant, shard string, epoch uint64, coll, id string) (r records.Record, result string, ok bool) {
	r, res, err := e.record(canceledCtx, tenant, shard, epoch, coll, id)
	if res == EdgeError && errors.Is(err, context.Canceled) {
		return records.Record{}, "", false
	}
	if res != EdgeHit {
		e.counter(res).Inc()
	}
	return r, res, true
}

// Warm fetches record coll/id of tenant into the router's copy, after a node has
// answered a read of it that RecordNoWait found cold: the node's fill, if it made one, is in
// Redis by then, so the fetch brings the entry (or its absence) into the copy, and Redis's
// push keeps it current from there as it does every key the copy holds. It never blocks: the
// fetch runs off the caller, with others in one round trip, and is dropped (counted) when
// warmQueue entries already wait or Redis is not connected.
func (e *Edge) Warm(tenant, coll, id string) {
	if e.rdb.Load() == nil {
		e.warmed.WithLabelValues("dropped").Inc()
		return
	}
	select {
	case e.warms <- warmReq{tenant: tenant, coll: coll, id: id}:
	default:
		e.warmed.WithLabelValues("dropped").Inc()
	}
}

// runWarms does Warm's fetches until ctx ends: whatever waits, up to warmBatch entries, in one
// round trip. An entry's key is spelled with the generations the copy holds; an entry whose
// tenant state the copy does not hold is left to its next read (Record fetches all of it).
func (e *Edge) runWarms(ctx context.Context, c rueidis.Client) {
	batch := make([]warmReq, 0, warmBatch)
	for {
		select {
		case <-ctx.Done():
			return
		case w := <-e.warms:
			batch = append(batch[:0], w)
		}
	more:
		for len(batch) < warmBatch {
			select {
			case w := <-e.warms:
				batch = append(batch, w)
			default:
				break more
			}
		}
		e.warmBatch(ctx, c, batch)
	}
}

func (e *Edge) warmBatch(ctx context.Context, c rueidis.Client, batch []warmReq) {
	cmds := make([]rueidis.CacheableTTL, 0, len(batch))
	seen := make(map[string]bool, len(batch))
	for _, w := range batch {
		res := c.DoMultiCache(canceledCtx,
			rueidis.CT(c.B().Get().Key(epochKey).Cache(), edgeLocalTTL),
			rueidis.CT(c.B().Hmget().Key(stateKey(w.tenant)).Field("g", "we").Cache(), edgeLocalTTL))
		regionEpoch, err := res[0].ToString()
		if err != nil {
			continue
		}
		state, err := res[1].ToArray()
		if err != nil || len(state) != 2 {
			continue
		}
		gen, err := state[0].ToString()
		if err != nil {
			continue
		}
		key := recordKey(w.tenant, regionEpoch, gen, w.coll, w.id)
		if !seen[key] {
			seen[key] = true
			cmds = append(cmds, rueidis.CT(c.B().Get().Key(key).Cache(), edgeLocalTTL))
		}
	}
	if len(cmds) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	for _, r := range c.DoMultiCache(ctx, cmds...) {
		if err := r.Error(); err == nil || rueidis.IsRedisNil(err) {
			e.warmed.WithLabelValues("fetched").Inc()
		} else {
			e.warmed.WithLabelValues("error").Inc()
		}
	}
}

// canceledCtx is RecordNoWait's context: ended before any lookup.
var canceledCtx = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// record reads what lookupScript reads, each key through the client's copy: the region epoch,
// the tenant's generation and write epoch, the shard's freshness, then the entry under those
// generations. Each value is one Redis held at some moment no earlier than the last
// invalidation of it the client received; a change (an entry deleted, a generation bumped)
// reaches the copy as Redis's push does, on the connection that read it.
func (e *Edge) record(ctx context.Context, tenant, shard string, epoch uint64, coll, id string) (records.Record, string, error) {
	if epoch == 0 {
		return records.Record{}, EdgeEpoch, nil
	}
	cp := e.rdb.Load()
	if cp == nil {
		return records.Record{}, EdgeError, nil
	}
	c := *cp
	probe := ctx.Err() != nil // RecordNoWait's, ended before it began: it waits on nothing
	if !probe {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.timeout)
		defer cancel()
	}
	res := c.DoMultiCache(ctx,
		rueidis.CT(c.B().Get().Key(epochKey).Cache(), edgeLocalTTL),
		rueidis.CT(c.B().Hmget().Key(stateKey(tenant)).Field("g", "we").Cache(), edgeLocalTTL),
		rueidis.CT(c.B().Get().Key(freshKey(shard)).Cache(), edgeLocalTTL))
	asked := false
	for _, r := range res {
		asked = asked || !r.IsCacheHit()
	}
	defer func() {
		if asked && !probe {
			e.roundTrips.Inc()
		}
	}()
	regionEpoch, err := res[0].ToString()
	if rueidis.IsRedisNil(err) {
		return records.Record{}, EdgeMiss, nil
	} else if err != nil {
		return records.Record{}, EdgeError, err
	}
	state, err := res[1].ToArray()
	if err != nil || len(state) != 2 {
		return records.Record{}, EdgeError, err
	}
	gen, err := state[0].ToString()
	if rueidis.IsRedisNil(err) {
		return records.Record{}, EdgeMiss, nil
	} else if err != nil {
		return records.Record{}, EdgeError, err
	}
	sf := e.freshOf(shard)
	var asOf int64
	switch fs, err := res[2].ToString(); {
	case err == nil:
		if asOf, err = strconv.ParseInt(fs, 10, 64); err != nil {
			asOf = 0
		}
		sf.note(asOf)
	case rueidis.IsRedisNil(err):
		sf.note(0)
	case probe && errors.Is(err, context.Canceled):
		// Rewritten since the copy held it: decide with the AsOf read last, fetch it again.
		if asOf = sf.asOf.Load(); asOf == 0 {
			return records.Record{}, EdgeError, err
		}
		e.fetchFresh(c, shard, sf)
	default:
		return records.Record{}, EdgeError, err
	}
	if asOf == 0 || e.now().Sub(time.UnixMicro(asOf)) >= e.maxStaleness {
		return records.Record{}, EdgeStale, nil
	}
	we, err := state[1].ToString()
	switch {
	case rueidis.IsRedisNil(err):
		return records.Record{}, EdgeMiss, nil // no fill yet under this state: no entry either
	case we != strconv.FormatUint(epoch, 10):
		return records.Record{}, EdgeEpoch, nil
	}
	key := recordKey(tenant, regionEpoch, gen, coll, id)
	er := c.DoCache(ctx, c.B().Get().Key(key).Cache(), edgeLocalTTL)
	asked = asked || !er.IsCacheHit()
	v, err := er.ToString()
	if rueidis.IsRedisNil(err) {
		return records.Record{}, EdgeMiss, nil
	} else if probe && errors.Is(err, context.Canceled) {
		return records.Record{}, EdgeCold, nil
	} else if err != nil {
		return records.Record{}, EdgeError, err
	}
	entryShard, _, r, err := decodeEntry[records.Record]([]byte(v))
	switch {
	case err != nil || r.Collection != coll || r.ID != id:
		return records.Record{}, EdgeError, err
	case entryShard != shard:
		return records.Record{}, EdgeShard, nil
	}
	return r, EdgeHit, nil
}
