package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

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
// while the shard's freshness is within MaxStaleness.

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
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
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
	// Redis is the region's Redis, the one its API nodes cache in (required).
	Redis *redis.Client
	// MaxStaleness is how old a shard's published freshness may be for its entries to be
	// served, as the nodes' Config.MaxStaleness. 0: 1 s (cmd/api's -cache-max-lag default).
	MaxStaleness time.Duration
	// Timeout bounds the lookup. 0: 50 ms.
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

// Edge reads record entries for a router. It never writes to Redis. Safe for concurrent use.
type Edge struct {
	rdb          *redis.Client
	maxStaleness time.Duration
	timeout      time.Duration
	now          func() time.Time
	log          *slog.Logger
	requests     *prometheus.CounterVec
}

// Results of an edge lookup (the result label of meridian_edge_cache_requests_total).
const (
	EdgeHit    = "hit"    // answered from the entry
	EdgeMiss   = "miss"   // no entry (or the tenant has no cache state yet)
	EdgeStale  = "stale"  // the shard's freshness is missing or older than MaxStaleness
	EdgeEpoch  = "epoch"  // the tenant's entries were filled on another write epoch
	EdgeShard  = "shard"  // the entry was read from another shard
	EdgeError  = "error"  // Redis failed or timed out, or the entry did not decode
	EdgeBypass = "bypass" // the request is not one the edge answers (counted by the router)
)

// NewEdge returns an Edge.
func NewEdge(cfg EdgeConfig) (*Edge, error) {
	if cfg.Redis == nil {
		return nil, ErrNoRedis
	}
	e := &Edge{rdb: cfg.Redis, maxStaleness: cmp0(cfg.MaxStaleness, DefaultEdgeMaxStaleness),
		timeout: cmp0(cfg.Timeout, DefaultTimeout), now: cfg.Now, log: cfg.Logger}
	if e.now == nil {
		e.now = time.Now
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	e.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_edge_cache_requests_total",
		Help: "Record GETs the router looked up in the region's cache, by result: hit (answered by the router), miss, stale (shard's events not proven current), epoch (filled on another write epoch), shard (read from another shard), error (Redis failed); bypass (not a plain record GET: forwarded without a lookup).",
	}, []string{"result"})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(e.requests); err != nil {
			return nil, fmt.Errorf("cache: register edge metrics: %w", err)
		}
	}
	return e, nil
}

// Count counts a request the caller did not look up (result EdgeBypass).
func (e *Edge) Count(result string) { e.requests.WithLabelValues(result).Inc() }

// edgeLookupScript reads, without creating anything, a record's entry under the current
// generations, the tenant's write epoch and the shard's freshness. KEYS: epoch, tenant state,
// shard's fresh key. ARGV: tenant prefix, collection, id. Returns {} when the region or the
// tenant has no generation yet, else {fresh or ”, we or ”, value or nil}.
var edgeLookupScript = redis.NewScript(`
local e = redis.call('GET', KEYS[1])
if not e then return {} end
local h = redis.call('HMGET', KEYS[2], 'g', 'we')
if not h[1] then return {} end
local f = redis.call('GET', KEYS[3]) or ''
return {f, h[2] or '', redis.call('GET', ARGV[1] .. e .. ':' .. h[1] .. ':r:' .. ARGV[2] .. ':' .. ARGV[3])}
`)

// Record looks up record coll/id of tenant for a read routed to shard on write epoch epoch. It
// returns the record and EdgeHit when the edge may answer with it, else a zero record and the
// reason it may not. The record's Data shares the lookup's memory; it must not be modified.
func (e *Edge) Record(ctx context.Context, tenant, shard string, epoch uint64, coll, id string) (records.Record, string) {
	r, res := e.record(ctx, tenant, shard, epoch, coll, id)
	e.requests.WithLabelValues(res).Inc()
	return r, res
}

func (e *Edge) record(ctx context.Context, tenant, shard string, epoch uint64, coll, id string) (records.Record, string) {
	if epoch == 0 {
		return records.Record{}, EdgeEpoch
	}
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	vals, err := edgeLookupScript.Run(ctx, e.rdb, []string{epochKey, stateKey(tenant), freshKey(shard)},
		tenantPrefix(tenant), coll, id).Slice()
	if err != nil {
		return records.Record{}, EdgeError
	}
	if len(vals) == 0 {
		return records.Record{}, EdgeMiss
	}
	if len(vals) < 2 {
		return records.Record{}, EdgeError
	}
	fs, _ := vals[0].(string)
	asOf, err := strconv.ParseInt(fs, 10, 64)
	if err != nil || e.now().Sub(time.UnixMicro(asOf)) >= e.maxStaleness {
		return records.Record{}, EdgeStale
	}
	if we, _ := vals[1].(string); we != strconv.FormatUint(epoch, 10) {
		return records.Record{}, EdgeEpoch
	}
	if len(vals) < 3 {
		return records.Record{}, EdgeMiss
	}
	v, ok := vals[2].(string)
	if !ok {
		return records.Record{}, EdgeMiss
	}
	entryShard, _, r, err := decodeEntry[records.Record]([]byte(v))
	switch {
	case err != nil || r.Collection != coll || r.ID != id:
		return records.Record{}, EdgeError
	case entryShard != shard:
		return records.Record{}, EdgeShard
	}
	return r, EdgeHit
}
