// Command api is Meridian's regional data node: it serves the /v1 records API against the
// Postgres shards, following the shard map it watches on the routers.
//
// Every flag can also be set by the environment variable named in its help text; a flag on the
// command line wins. A malformed variable (a number or duration that does not parse) is refused
// with exit status 2, not ignored (internal/envflag). Defaults are the ones in DESIGN.md §4.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	apidoc "github.com/meridian-dev/meridian/api"
	"github.com/meridian-dev/meridian/internal/api"
	"github.com/meridian-dev/meridian/internal/api/mapsource"
	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/daemon"
	"github.com/meridian-dev/meridian/internal/envflag"
	"github.com/meridian-dev/meridian/internal/records/pgstore"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/region"
	"github.com/meridian-dev/meridian/shardmap"
)

type config struct {
	region, listen, mapAddrs, clusterToken, cursorKey string
	dbUser, dbPassword                                string
	dialVia                                           map[string]string
	workerUser, workerPassword                        string
	jwtSecret, jwksFile, jwtIssuer, jwtAudience       string
	maxConns                                          int
	connLifetime, connIdle, statementTimeout          time.Duration
	idleInTx, deadline, idemTTL, idemCleanup          time.Duration
	shutdownGrace                                     time.Duration
	httpLimits                                        daemon.HTTPLimits
	debugAddr                                         string
	maxStaleness, rywWait, standbyInterval            time.Duration
	standbyFailures                                   int
	maxBody                                           int64
	gossipAddr, advertiseURL                          string
	gossipJoin                                        []string
	natsURL, redisAddr                                string
	cacheTTL, cacheMaxLag, changesHeartbeat           time.Duration
	relayHeartbeat                                    time.Duration
	relayBatch                                        int
	outboxRetention                                   time.Duration
}

func parseConfig(args []string) (config, error) {
	var c config
	env := envflag.New(nil)
	fs := flag.NewFlagSet("api", flag.ContinueOnError)
	fs.StringVar(&c.region, "region", env.String("MERIDIAN_REGION", ""), "this node's region, e.g. us-east (MERIDIAN_REGION; required)")
	fs.StringVar(&c.listen, "listen", env.String("MERIDIAN_API_LISTEN", "127.0.0.1:8081"), "HTTP listen address (MERIDIAN_API_LISTEN)")
	fs.StringVar(&c.mapAddrs, "map-addrs", env.String("MERIDIAN_MAP_ADDRS", ""), "comma-separated base URLs of shard-map nodes (routers) (MERIDIAN_MAP_ADDRS; required)")
	fs.StringVar(&c.clusterToken, "cluster-token", env.String("MERIDIAN_CLUSTER_TOKEN", ""), "cluster token for internal endpoints and the map (MERIDIAN_CLUSTER_TOKEN; required)")
	fs.StringVar(&c.cursorKey, "cursor-key", env.String("MERIDIAN_CURSOR_KEY", ""), "HMAC key for list cursors, same on every node (MERIDIAN_CURSOR_KEY; default: the cluster token)")
	fs.StringVar(&c.dbUser, "db-user", env.String("MERIDIAN_DB_USER", "meridian_app"), "Postgres role (MERIDIAN_DB_USER)")
	fs.StringVar(&c.dbPassword, "db-password", env.String("MERIDIAN_DB_PASSWORD", ""), "Postgres password (MERIDIAN_DB_PASSWORD; empty = none)")
	fs.StringVar(&c.jwtSecret, "jwt-secret", env.String("MERIDIAN_JWT_SECRET", ""), "HS256 secret, raw bytes (MERIDIAN_JWT_SECRET)")
	fs.StringVar(&c.jwksFile, "jwks-file", env.String("MERIDIAN_JWKS_FILE", ""), "JWKS file with RS256/EdDSA keys (MERIDIAN_JWKS_FILE)")
	fs.StringVar(&c.jwtIssuer, "jwt-issuer", env.String("MERIDIAN_JWT_ISSUER", ""), "required iss claim; empty = not checked (MERIDIAN_JWT_ISSUER)")
	fs.StringVar(&c.jwtAudience, "jwt-audience", env.String("MERIDIAN_JWT_AUDIENCE", ""), "required aud claim; empty = not checked (MERIDIAN_JWT_AUDIENCE)")
	fs.IntVar(&c.maxConns, "pool-max-conns", env.Int("MERIDIAN_POOL_MAX_CONNS", 10), "max connections per shard pool (MERIDIAN_POOL_MAX_CONNS)")
	fs.DurationVar(&c.connLifetime, "pool-conn-lifetime", env.Duration("MERIDIAN_POOL_CONN_LIFETIME", 30*time.Minute), "max connection lifetime (MERIDIAN_POOL_CONN_LIFETIME)")
	fs.DurationVar(&c.connIdle, "pool-conn-idle", env.Duration("MERIDIAN_POOL_CONN_IDLE", 5*time.Minute), "max connection idle time (MERIDIAN_POOL_CONN_IDLE)")
	fs.DurationVar(&c.statementTimeout, "statement-timeout", env.Duration("MERIDIAN_STATEMENT_TIMEOUT", time.Second), "Postgres statement_timeout (MERIDIAN_STATEMENT_TIMEOUT)")
	fs.DurationVar(&c.idleInTx, "idle-in-tx-timeout", env.Duration("MERIDIAN_IDLE_IN_TX_TIMEOUT", 10*time.Second), "Postgres idle_in_transaction_session_timeout (MERIDIAN_IDLE_IN_TX_TIMEOUT)")
	fs.DurationVar(&c.deadline, "request-deadline", env.Duration("MERIDIAN_REQUEST_DEADLINE", 5*time.Second), "per-request deadline (MERIDIAN_REQUEST_DEADLINE)")
	daemon.HTTPLimitFlags(fs, env, &c.httpLimits)
	fs.StringVar(&c.debugAddr, "debug-addr", env.String("MERIDIAN_DEBUG_ADDR", ""), "serve Go profiles (/debug/pprof/) on this private host:port (MERIDIAN_DEBUG_ADDR; empty = off)")
	fs.DurationVar(&c.shutdownGrace, "shutdown-grace", env.Duration("MERIDIAN_SHUTDOWN_GRACE", 20*time.Second), "time to finish in-flight requests on shutdown (MERIDIAN_SHUTDOWN_GRACE)")
	fs.DurationVar(&c.idemTTL, "idempotency-ttl", env.Duration("MERIDIAN_IDEMPOTENCY_TTL", 24*time.Hour), "Idempotency-Key lifetime (MERIDIAN_IDEMPOTENCY_TTL)")
	fs.DurationVar(&c.idemCleanup, "idempotency-cleanup", env.Duration("MERIDIAN_IDEMPOTENCY_CLEANUP", 10*time.Minute), "expired-key cleanup interval (MERIDIAN_IDEMPOTENCY_CLEANUP)")
	fs.DurationVar(&c.maxStaleness, "max-staleness", env.Duration("MERIDIAN_MAX_STALENESS", 5*time.Second), "most a local standby may lag and still serve default reads (MERIDIAN_MAX_STALENESS)")
	fs.DurationVar(&c.rywWait, "ryw-wait", env.Duration("MERIDIAN_RYW_WAIT", 100*time.Millisecond), "how long a read with a Consistency-Token waits for the standby before using the primary; <0 = no wait (MERIDIAN_RYW_WAIT)")
	fs.DurationVar(&c.standbyInterval, "standby-check-interval", env.Duration("MERIDIAN_STANDBY_CHECK_INTERVAL", 250*time.Millisecond), "how often a standby's replay position and lag are re-read (MERIDIAN_STANDBY_CHECK_INTERVAL)")
	fs.IntVar(&c.standbyFailures, "standby-failures", env.Int("MERIDIAN_STANDBY_FAILURES", 3), "consecutive failed checks or reads that take a standby out of the read path (MERIDIAN_STANDBY_FAILURES)")
	fs.Int64Var(&c.maxBody, "max-body", env.Int64("MERIDIAN_MAX_BODY", 1<<20), "request body cap in bytes (MERIDIAN_MAX_BODY)")
	fs.StringVar(&c.workerUser, "worker-db-user", env.String("MERIDIAN_WORKER_DB_USER", ""), "Postgres role of the cross-tenant cleanup job, normally meridian_worker (MERIDIAN_WORKER_DB_USER; empty = purge only tenants this node has seen)")
	fs.StringVar(&c.workerPassword, "worker-db-password", env.String("MERIDIAN_WORKER_DB_PASSWORD", ""), "password of -worker-db-user (MERIDIAN_WORKER_DB_PASSWORD; empty = none)")
	fs.StringVar(&c.gossipAddr, "gossip-addr", env.String("MERIDIAN_GOSSIP_ADDR", ""), "memberlist bind host:port, so routers discover this node (MERIDIAN_GOSSIP_ADDR; empty = no gossip)")
	var gossipJoin string
	fs.StringVar(&gossipJoin, "gossip-join", env.String("MERIDIAN_GOSSIP_JOIN", ""), "comma-separated gossip addresses of existing members (MERIDIAN_GOSSIP_JOIN)")
	fs.StringVar(&c.advertiseURL, "advertise-url", env.String("MERIDIAN_API_URL", ""), "base URL routers use to reach this node (MERIDIAN_API_URL; default http://<listen>)")
	fs.StringVar(&c.natsURL, "nats-url", env.String("MERIDIAN_NATS_URL", ""), "this region's NATS server: change events, the outbox relay, cache invalidation and /v1/changes (MERIDIAN_NATS_URL; empty = none of them: reads are never cached and /v1/changes answers 503)")
	fs.StringVar(&c.redisAddr, "redis-addr", env.String("MERIDIAN_REDIS_ADDR", ""), "this region's Redis host:port for the read cache; needs -nats-url (MERIDIAN_REDIS_ADDR; empty = no cache)")
	fs.DurationVar(&c.cacheTTL, "cache-ttl", env.Duration("MERIDIAN_CACHE_TTL", 60*time.Second), "lifetime of a cached read (MERIDIAN_CACHE_TTL)")
	fs.DurationVar(&c.cacheMaxLag, "cache-max-lag", env.Duration("MERIDIAN_CACHE_MAX_LAG", time.Second), "most a cached read may lag its shard's writes: a shard whose newest relay heartbeat in this region is older serves no cached reads (MERIDIAN_CACHE_MAX_LAG)")
	fs.DurationVar(&c.relayHeartbeat, "relay-heartbeat", env.Duration("MERIDIAN_RELAY_HEARTBEAT", 250*time.Millisecond), "longest time between two heartbeats of an idle shard's relay; keep well under -cache-max-lag (MERIDIAN_RELAY_HEARTBEAT)")
	fs.DurationVar(&c.changesHeartbeat, "changes-heartbeat", env.Duration("MERIDIAN_CHANGES_HEARTBEAT", 15*time.Second), "interval of /v1/changes heartbeat comments (MERIDIAN_CHANGES_HEARTBEAT)")
	fs.IntVar(&c.relayBatch, "relay-batch", env.Int("MERIDIAN_RELAY_BATCH", 500), "outbox rows the relay publishes per batch (MERIDIAN_RELAY_BATCH)")
	fs.DurationVar(&c.outboxRetention, "outbox-retention", env.Duration("MERIDIAN_OUTBOX_RETENTION", 24*time.Hour), "how long published outbox rows stay for /v1/changes resumes and gap repair (MERIDIAN_OUTBOX_RETENTION)")
	var dialVia string
	fs.StringVar(&dialVia, "pg-dial-via", env.String("MERIDIAN_PG_DIAL_VIA", ""), "shard endpoints to reach through another address, endpoint=addr,... (the local launcher's latency proxies) (MERIDIAN_PG_DIAL_VIA; empty = dial endpoints directly)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if err := env.Err(); err != nil {
		return c, err
	}
	if dialVia != "" {
		c.dialVia = map[string]string{}
		for _, pair := range strings.Split(dialVia, ",") {
			from, to, ok := strings.Cut(pair, "=")
			if !ok || from == "" || to == "" {
				return c, fmt.Errorf("-pg-dial-via: %q is not endpoint=addr", pair)
			}
			c.dialVia[from] = to
		}
	}
	for _, a := range strings.Split(gossipJoin, ",") {
		if a = strings.TrimSpace(a); a != "" {
			c.gossipJoin = append(c.gossipJoin, a)
		}
	}
	if c.advertiseURL == "" {
		c.advertiseURL = "http://" + c.listen
	}
	if c.region == "" || c.mapAddrs == "" || c.clusterToken == "" {
		return c, errors.New("-region, -map-addrs and -cluster-token are required")
	}
	if c.jwtSecret == "" && c.jwksFile == "" {
		return c, errors.New("one of -jwt-secret and -jwks-file is required")
	}
	if c.cursorKey == "" {
		c.cursorKey = c.clusterToken
	}
	return c, nil
}

func main() {
	cfg, err := parseConfig(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "api:", err)
		os.Exit(2)
	}
	os.Exit(daemon.Main("api", cfg.debugAddr, func(ctx context.Context, log *slog.Logger) error {
		return run(ctx, cfg, log)
	}))
}

// run builds and starts the node's parts in order, serves until ctx ends (SIGINT/SIGTERM) or a
// part fails, then stops the parts in reverse order: gossip departs (draining first, so routers
// stop sending new requests), the HTTP server drains in-flight requests (up to the grace
// period), then the background jobs, the map watch and the pools the requests used stop.
func run(ctx context.Context, cfg config, log *slog.Logger) error {
	parts := daemon.NewParts(log)
	// A failed start stops what had started; after the final Stop below this does nothing.
	defer parts.Stop(context.Background())

	verifier, err := auth.NewVerifier(auth.Config{Secret: []byte(cfg.jwtSecret), JWKSFile: cfg.jwksFile, Issuer: cfg.jwtIssuer, Audience: cfg.jwtAudience})
	if err != nil {
		return err
	}

	// Connections to every shard: built first, closed last.
	pools := shards.New(shards.Config{User: cfg.dbUser, Password: cfg.dbPassword, MaxConns: int32(cfg.maxConns),
		DialVia: cfg.dialVia, MaxConnLifetime: cfg.connLifetime, MaxConnIdleTime: cfg.connIdle, StatementTimeout: cfg.statementTimeout, IdleInTxTimeout: cfg.idleInTx})
	parts.Add("pools", func(context.Context) error { pools.Close(); return nil })
	var workers *shards.Conns
	if cfg.workerUser != "" {
		// Only the cleanup job uses these, on home primaries: one connection per shard is plenty.
		workers = shards.New(shards.Config{User: cfg.workerUser, Password: cfg.workerPassword, MaxConns: 1, DialVia: cfg.dialVia})
		parts.Add("worker pools", func(context.Context) error { workers.Close(); return nil })
	}

	// Shard map: watch the routers.
	client := shardmap.NewClient(shardmap.ClientConfig{Addrs: strings.Split(cfg.mapAddrs, ","), Token: cfg.clusterToken, Logger: log})
	parts.Go("shard map watch", client.Run)
	maps := mapsource.Adapter{Src: client}

	// The records store: every transaction and read the node runs, and its background cleanup.
	store, err := pgstore.New(pgstore.Config{Region: cfg.region, Map: maps, Conns: pools, Workers: workers, IdemTTL: cfg.idemTTL,
		MaxStaleness: cfg.maxStaleness, RYWWait: cfg.rywWait, StandbyInterval: cfg.standbyInterval, StandbyFailures: cfg.standbyFailures, Logger: log})
	if err != nil {
		return err
	}
	parts.Go("idempotency cleanup", func(ctx context.Context) error {
		store.RunCleanup(ctx, cfg.idemCleanup)
		return ctx.Err()
	})

	// Change events: the relay, the consumer, the cache in front of the store's reads and the
	// feed of /v1/changes (none of them without -nats-url).
	served, changes, eventMetrics, err := eventParts(ctx, cfg, log, parts, client, maps, store)
	if err != nil {
		return err
	}
	var gatherers []prometheus.Gatherer
	if eventMetrics != nil {
		gatherers = append(gatherers, eventMetrics)
	}

	srv, err := api.New(api.Config{Region: cfg.region, CursorKey: []byte(cfg.cursorKey), ClusterToken: cfg.clusterToken,
		MaxBody: cfg.maxBody, Deadline: cfg.deadline, Logger: log,
		Collectors: []prometheus.Collector{shards.Collector(pools)}, Changes: changes, Heartbeat: cfg.changesHeartbeat, Gatherers: gatherers},
		maps, served, verifier, apidoc.OpenAPI)
	if err != nil {
		return err
	}

	// HTTP: on stop, the listener closes and in-flight requests get up to the grace period.
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	parts.Go("http", func(ctx context.Context) error {
		hs := daemon.NewHTTPServer(srv.Handler(), cfg.httpLimits)
		// Open change streams end at shutdown (clients resume elsewhere with Last-Event-ID)
		// instead of holding the drain for the whole grace period.
		hs.RegisterOnShutdown(srv.StopStreams)
		return daemon.ServeHTTP(ctx, hs, ln, cfg.shutdownGrace)
	})
	log.Info("listening", "addr", cfg.listen, "region", cfg.region)

	// Gossip: announce this node to the routers once it serves, with its map version and its
	// region's standby lag; stopped first.
	if cfg.gossipAddr != "" {
		gossip, err := region.Join(ctx, region.JoinConfig{Region: cfg.region, Role: region.RoleAPI, URL: cfg.advertiseURL,
			Addr: cfg.gossipAddr, Join: cfg.gossipJoin, Logger: log,
			Status: func(ctx context.Context) region.Status {
				return region.Status{Lag: store.ReplicaLag(ctx), MapVersion: client.Map().Version()}
			}})
		if err != nil {
			return err
		}
		parts.Add("gossip", gossip.Depart)
	}

	err = parts.Wait(ctx)
	log.Info("shutting down", "err", err)
	// No deadline: each part bounds its own stop (the HTTP drain by -shutdown-grace).
	return errors.Join(err, parts.Stop(context.Background()))
}
