package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/meridian-dev/meridian/internal/api"
	"github.com/meridian-dev/meridian/internal/api/mapsource"
	"github.com/meridian-dev/meridian/internal/cache"
	"github.com/meridian-dev/meridian/internal/daemon"
	"github.com/meridian-dev/meridian/internal/events"
	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/records/pgstore"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/shardmap"
)

// ensureStreamsEvery is how often a node re-creates its region's streams if they went away
// (a NATS store lost): CreateOrUpdate is idempotent and cheap.
const ensureStreamsEvery = 10 * time.Second

// eventParts builds the node's change-event parts when -nats-url is set: the NATS connection,
// the region's streams, the outbox relay (with -worker-db-user), the consumer, and the cache in
// front of the store's reads (with -redis-addr). It returns the store the HTTP layer serves
// (cached or not) and the change feed for /v1/changes (nil without NATS).
func eventParts(ctx context.Context, cfg config, log *slog.Logger, parts *daemon.Parts, client *shardmap.Client,
	maps mapsource.Adapter, store *pgstore.Store) (api.Store, api.ChangeFeed, prometheus.Gatherer, error) {
	if cfg.natsURL == "" {
		if cfg.redisAddr != "" {
			log.Warn("-redis-addr without -nats-url: no cache (nothing would invalidate it)")
		}
		log.Warn("no -nats-url: no outbox relay, no cache, /v1/changes answers 503")
		return store, nil, nil, nil
	}
	reg := prometheus.NewRegistry()

	// The relay needs an unbuffered reconnect (ReconnectBufSize(-1)): a publish during a
	// reconnect fails instead of being sent later behind lost ones, which could reorder a
	// tenant's events.
	nc, err := nats.Connect(cfg.natsURL, nats.Name("meridian-api-"+cfg.region), nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.ReconnectBufSize(-1), nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("nats disconnected", "err", err) }),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrl()) }))
	if err != nil {
		return nil, nil, nil, err
	}
	parts.Add("nats", func(context.Context) error { nc.Close(); return nil })
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, nil, nil, err
	}
	parts.Go("event streams", func(ctx context.Context) error {
		ok := false
		for {
			if regions := client.Map().Regions(); len(regions) > 0 {
				sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := events.EnsureStreams(sctx, js, cfg.region, regions, events.StreamLimits{})
				cancel()
				switch {
				case err != nil && ok:
					log.Warn("event streams", "err", err)
				case err != nil:
					log.Info("event streams not ready yet", "err", err)
				case !ok:
					log.Info("event streams ready", "region", cfg.region, "regions", regions)
				}
				ok = err == nil
			}
			wait := ensureStreamsEvery
			if !ok {
				wait = 500 * time.Millisecond // the map or the mesh is not there yet
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
	})

	if cfg.workerUser != "" {
		relay := events.NewRelay(events.RelayConfig{
			Region: cfg.region,
			Shards: func() []string {
				var out []string
				for _, s := range maps.Shards() {
					if s.HomeRegion == cfg.region {
						out = append(out, s.ID)
					}
				}
				return out
			},
			Connect: func(ctx context.Context, shard string) (*pgx.Conn, error) {
				sh, ok := maps.ShardInfo(shard)
				if !ok {
					return nil, errors.Join(records.ErrUnknownShard, errors.New(shard))
				}
				return shards.Dial(ctx, sh, shards.Config{User: cfg.workerUser, Password: cfg.workerPassword, AppName: "meridian-relay", DialVia: cfg.dialVia})
			},
			JS: js, Batch: cfg.relayBatch, Heartbeat: cfg.relayHeartbeat, Retention: cfg.outboxRetention, Logger: log, Registerer: reg,
		})
		parts.Go("outbox relay", relay.Run)
	} else {
		log.Warn("no -worker-db-user: this node runs no outbox relay")
	}

	var consumer *events.Consumer
	var applier events.Applier
	var served api.Store = store
	if cfg.redisAddr != "" {
		rdb := redis.NewClient(cache.RedisOptions(cfg.redisAddr))
		parts.Add("redis", func(context.Context) error { return rdb.Close() })
		c, err := cache.New(cache.Config{Redis: rdb, TTL: cfg.cacheTTL, MaxStaleness: cfg.cacheMaxLag, StandbyLag: cfg.maxStaleness, Logger: log, Registerer: reg,
			Fresh: func(shard string) (time.Time, bool) { return consumer.Fresh(shard) }})
		if err != nil {
			return nil, nil, nil, err
		}
		applier = c
		served = cachedStore{Store: store, r: c.Wrap(store)}
		// The routers' edge reads serve a shard's entries only while some node publishes
		// the shard's events current (cache.PublishFresh).
		parts.Go("cache freshness publisher", func(ctx context.Context) error {
			return c.RunPublisher(ctx, func() []string {
				var out []string
				for _, s := range maps.Shards() {
					out = append(out, s.ID)
				}
				return out
			}, 0)
		})
	}
	consumer = events.NewConsumer(events.ConsumerConfig{Region: cfg.region, JS: js, Replay: 2 * cfg.maxStaleness,
		Apply: applier, Outbox: store, Logger: log, Registerer: reg})
	parts.Go("event consumer", consumer.Run)
	return served, changeFeed{consumer}, reg, nil
}

// cachedStore is the records store with its reads served through the cache.
type cachedStore struct {
	*pgstore.Store
	r cache.Reader
}

func (s cachedStore) Get(ctx context.Context, t records.Target, ro records.ReadOptions, coll, id string) (records.Record, records.ReadInfo, error) {
	return s.r.Get(ctx, t, ro, coll, id)
}

func (s cachedStore) List(ctx context.Context, t records.Target, ro records.ReadOptions, coll string, q records.ListQuery) (records.Page, records.ReadInfo, error) {
	return s.r.List(ctx, t, ro, coll, q)
}

func (s cachedStore) GetMany(ctx context.Context, t records.Target, ro records.ReadOptions, coll string, ids, fields []string) ([]records.Record, records.ReadInfo, error) {
	return s.r.GetMany(ctx, t, ro, coll, ids, fields)
}

// changeFeed adapts the consumer's Follow to what /v1/changes asks for.
type changeFeed struct{ c *events.Consumer }

func (f changeFeed) Follow(ctx context.Context, t records.Target, after int64, buf int) (api.Feed, error) {
	feed, err := f.c.Follow(ctx, t, after, buf)
	if err != nil {
		return nil, err // a nil interface, not a typed nil
	}
	return feed, nil
}

var _ events.Applier = (*cache.Cache)(nil)
