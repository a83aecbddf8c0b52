package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meridian-dev/meridian/internal/api/mapsource"
	"github.com/meridian-dev/meridian/internal/daemon"
	"github.com/meridian-dev/meridian/internal/envflag"
	"github.com/meridian-dev/meridian/internal/moves"
	"github.com/meridian-dev/meridian/internal/records/pgstore"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/shardmap"
)

// serveConfig is `rebalancer serve`'s configuration. Every flag can also be set by the
// environment variable named in its help text (internal/envflag); secrets also from *_FILE.
type serveConfig struct {
	region, listen, mapAddrs, clusterToken, holder string
	dbUser, dbPassword, debugAddr                  string
	dialVia                                        map[string]string
	maxConns                                       int
	statementTimeout, shutdownGrace                time.Duration
	ctl                                            moves.Config
}

// dbFlags are the database flags serve and verify share (as cmd/api names them).
type dbFlags struct {
	region, mapAddrs, clusterToken, dbUser, dbPassword, dialVia string
	maxConns                                                    int
	statementTimeout                                            time.Duration
}

func (d *dbFlags) register(fs interface {
	StringVar(*string, string, string, string)
	IntVar(*int, string, int, string)
	DurationVar(*time.Duration, string, time.Duration, string)
}, env *envflag.Env) {
	fs.StringVar(&d.region, "region", env.String("MERIDIAN_REGION", ""), "this process's region: reads are served from it (MERIDIAN_REGION; required)")
	fs.StringVar(&d.mapAddrs, "map-addrs", env.String("MERIDIAN_MAP_ADDRS", ""), "comma-separated base URLs of shard-map nodes (routers) (MERIDIAN_MAP_ADDRS; required)")
	fs.StringVar(&d.clusterToken, "cluster-token", env.String("MERIDIAN_CLUSTER_TOKEN", ""), "cluster token for the map (MERIDIAN_CLUSTER_TOKEN or MERIDIAN_CLUSTER_TOKEN_FILE; required)")
	fs.StringVar(&d.dbUser, "db-user", env.String("MERIDIAN_DB_USER", "meridian_app"), "Postgres role (MERIDIAN_DB_USER)")
	fs.StringVar(&d.dbPassword, "db-password", env.String("MERIDIAN_DB_PASSWORD", ""), "Postgres password (MERIDIAN_DB_PASSWORD or MERIDIAN_DB_PASSWORD_FILE; empty = none)")
	fs.IntVar(&d.maxConns, "pool-max-conns", env.Int("MERIDIAN_POOL_MAX_CONNS", 4), "max connections per shard pool (MERIDIAN_POOL_MAX_CONNS)")
	fs.DurationVar(&d.statementTimeout, "statement-timeout", env.Duration("MERIDIAN_STATEMENT_TIMEOUT", 30*time.Second), "Postgres statement_timeout of a batch (MERIDIAN_STATEMENT_TIMEOUT)")
	fs.StringVar(&d.dialVia, "pg-dial-via", env.String("MERIDIAN_PG_DIAL_VIA", ""), "shard endpoints to reach through another address, endpoint=addr,... (MERIDIAN_PG_DIAL_VIA)")
}

// finish fills secrets from *_FILE and checks the required flags.
func (d *dbFlags) finish(env func(string) string) (map[string]string, error) {
	if d.clusterToken == "" {
		t, err := secret(env, "MERIDIAN_CLUSTER_TOKEN")
		if err != nil {
			return nil, err
		}
		d.clusterToken = t
	}
	if d.dbPassword == "" {
		p, err := secret(env, "MERIDIAN_DB_PASSWORD")
		if err != nil {
			return nil, err
		}
		d.dbPassword = p
	}
	if d.region == "" || d.mapAddrs == "" || d.clusterToken == "" {
		return nil, usageErr("-region, -map-addrs and -cluster-token are required")
	}
	var via map[string]string
	if d.dialVia != "" {
		via = map[string]string{}
		for _, pair := range strings.Split(d.dialVia, ",") {
			from, to, ok := strings.Cut(pair, "=")
			if !ok || from == "" || to == "" {
				return nil, usageErr("-pg-dial-via: %q is not endpoint=addr", pair)
			}
			via[from] = to
		}
	}
	return via, nil
}

func parseServe(args []string, stderr io.Writer, getenv func(string) string) (serveConfig, error) {
	var c serveConfig
	env := envflag.New(func(k string) (string, bool) { v := getenv(k); return v, v != "" })
	fs := newFlagSet("serve", "serve [flags]", stderr)
	var db dbFlags
	db.register(fs, env)
	fs.StringVar(&c.listen, "listen", env.String("MERIDIAN_REBALANCER_LISTEN", "127.0.0.1:8095"), "serves /metrics and /healthz (MERIDIAN_REBALANCER_LISTEN)")
	fs.StringVar(&c.holder, "holder", env.String("MERIDIAN_REBALANCER_HOLDER", ""), "this controller's name in the lease (MERIDIAN_REBALANCER_HOLDER; default host-pid)")
	fs.StringVar(&c.debugAddr, "debug-addr", env.String("MERIDIAN_DEBUG_ADDR", ""), "serve Go profiles on this private host:port (MERIDIAN_DEBUG_ADDR; empty = off)")
	fs.DurationVar(&c.shutdownGrace, "shutdown-grace", env.Duration("MERIDIAN_SHUTDOWN_GRACE", 5*time.Second), "time to finish the metrics server's requests on shutdown (MERIDIAN_SHUTDOWN_GRACE)")
	fs.IntVar(&c.ctl.BatchSize, "batch-size", env.Int("MERIDIAN_MOVE_BATCH_SIZE", 1000), "rows per copy and verify batch (MERIDIAN_MOVE_BATCH_SIZE)")
	fs.Float64Var(&c.ctl.RowsPerSecond, "rows-per-second", env.Float64("MERIDIAN_MOVE_ROWS_PER_SECOND", 0), "backfill rate cap per move; 0 = unlimited (MERIDIAN_MOVE_ROWS_PER_SECOND)")
	fs.IntVar(&c.ctl.VerifyThreshold, "verify-threshold", env.Int("MERIDIAN_MOVE_VERIFY_THRESHOLD", 10), "most differences a verify pass may find before the cutover; -1 = none (MERIDIAN_MOVE_VERIFY_THRESHOLD)")
	fs.IntVar(&c.ctl.FinalVerifyPasses, "final-verify-passes", env.Int("MERIDIAN_MOVE_FINAL_VERIFY_PASSES", 3), "verify passes under the fence before the move fails (MERIDIAN_MOVE_FINAL_VERIFY_PASSES)")
	fs.DurationVar(&c.ctl.PropagationDelay, "propagation-delay", env.Duration("MERIDIAN_MOVE_PROPAGATION_DELAY", 2*time.Second), "wait after dual_write before the backfill; <0 = none (MERIDIAN_MOVE_PROPAGATION_DELAY)")
	fs.DurationVar(&c.ctl.Grace, "grace", env.Duration("MERIDIAN_MOVE_GRACE", 10*time.Second), "wait after the cutover before the source's rows are dropped (MERIDIAN_MOVE_GRACE)")
	fs.DurationVar(&c.ctl.Retention, "retention", env.Duration("MERIDIAN_MOVE_RETENTION", 7*24*time.Hour), "finished moves are pruned from the map after this long (MERIDIAN_MOVE_RETENTION)")
	fs.DurationVar(&c.ctl.LeaseTTL, "lease-ttl", env.Duration("MERIDIAN_MOVE_LEASE_TTL", 10*time.Second), "controller lease lifetime (MERIDIAN_MOVE_LEASE_TTL)")
	fs.DurationVar(&c.ctl.RenewEvery, "lease-renew", env.Duration("MERIDIAN_MOVE_LEASE_RENEW", 3*time.Second), "controller lease renewal interval (MERIDIAN_MOVE_LEASE_RENEW)")
	fs.IntVar(&c.ctl.MaxConcurrent, "max-concurrent", env.Int("MERIDIAN_MOVE_MAX_CONCURRENT", 4), "tenants moved at once (MERIDIAN_MOVE_MAX_CONCURRENT)")
	fs.IntVar(&c.ctl.MaxAttempts, "max-attempts", env.Int("MERIDIAN_MOVE_MAX_ATTEMPTS", 5), "attempts of a failing step before the cutover before the move fails (MERIDIAN_MOVE_MAX_ATTEMPTS)")
	if _, err := parseArgs(fs, args, 0, 0); err != nil {
		return c, err
	}
	if err := env.Err(); err != nil {
		return c, usageErr("%v", err)
	}
	via, err := db.finish(getenv)
	if err != nil {
		return c, err
	}
	if c.ctl.RenewEvery >= c.ctl.LeaseTTL {
		return c, usageErr("-lease-renew must be shorter than -lease-ttl")
	}
	c.region, c.mapAddrs, c.clusterToken, c.dbUser, c.dbPassword, c.maxConns, c.statementTimeout, c.dialVia =
		db.region, db.mapAddrs, db.clusterToken, db.dbUser, db.dbPassword, db.maxConns, db.statementTimeout, via
	c.ctl.Holder = c.holder
	return c, nil
}

func serve(_ context.Context, args []string, stdout, stderr io.Writer, env func(string) string) error {
	cfg, err := parseServe(args, stderr, env)
	if err != nil {
		return err
	}
	if code := daemon.Main("rebalancer", cfg.debugAddr, func(ctx context.Context, log *slog.Logger) error {
		return runServe(ctx, cfg, log)
	}); code != 0 {
		return errors.New("stopped with an error (see the log)")
	}
	return nil
}

// runServe builds the controller's parts in order (pools, map watch, store, controller,
// metrics server), runs until ctx ends or a part fails, and stops them in reverse order.
func runServe(ctx context.Context, cfg serveConfig, log *slog.Logger) error {
	parts := daemon.NewParts(log)
	defer parts.Stop(context.Background())
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// Primary connections to every shard, as the app role (the store sets the tenant for RLS).
	pools := shards.New(shards.Config{User: cfg.dbUser, Password: cfg.dbPassword, MaxConns: int32(cfg.maxConns),
		DialVia: cfg.dialVia, StatementTimeout: cfg.statementTimeout, AppName: "meridian-rebalancer"})
	parts.Add("pools", func(context.Context) error { pools.Close(); return nil })
	reg.MustRegister(shards.Collector(pools))

	client := shardmap.NewClient(shardmap.ClientConfig{Addrs: strings.Split(cfg.mapAddrs, ","), Token: cfg.clusterToken, Logger: log, Registerer: reg})
	parts.Go("shard map watch", client.Run)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := client.WaitVersion(wctx, 1)
	cancel()
	if err != nil {
		return fmt.Errorf("no shard map from %s: %w", cfg.mapAddrs, err)
	}

	records, err := pgstore.New(pgstore.Config{Region: cfg.region, Map: mapsource.Adapter{Src: client}, Conns: pools, Logger: log})
	if err != nil {
		return err
	}
	store, err := newMovesStore(records)
	if err != nil {
		return err
	}
	lease, err := newMapLease(client)
	if err != nil {
		return err
	}
	ctlCfg := cfg.ctl
	ctlCfg.Map, ctlCfg.Store, ctlCfg.Lease, ctlCfg.Pruner = client, store, lease, newPruner(client)
	ctlCfg.Logger, ctlCfg.Registerer = log, reg
	ctl, err := moves.New(ctlCfg)
	if err != nil {
		return err
	}
	parts.Go("move controller", ctl.Run)

	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	parts.Go("http", func(ctx context.Context) error {
		return daemon.ServeHTTP(ctx, daemon.NewHTTPServer(mux, daemon.HTTPLimits{}), ln, cfg.shutdownGrace)
	})
	log.Info("rebalancer serving", "listen", cfg.listen, "region", cfg.region)

	err = parts.Wait(ctx)
	log.Info("shutting down", "err", err)
	return errors.Join(err, parts.Stop(context.Background()))
}

// errNotIntegrated is what the three adapters below return until the map lease (moves-map)
// and pgstore's move primitives (moves-store) are merged; serve then exits saying so.
var errNotIntegrated = errors.New("not integrated yet")

// newMovesStore adapts pgstore's move primitives (internal/records/pgstore/moves.go) to
// moves.Store. The integrator completes it once pgstore has them: a small type embedding
// *pgstore.Store whose methods convert moves.Key <-> records.Key
// (records.Key{Collection: k.Collection, ID: k.ID}) and call PrepareTarget, CountRows,
// CopyBatch, VerifyBatch, Repair, Fence, Unfence, FinishTarget and DropTenant.
func newMovesStore(*pgstore.Store) (moves.Store, error) {
	return nil, fmt.Errorf("moves store: pgstore's move primitives are %w (cmd/rebalancer/serve.go newMovesStore)", errNotIntegrated)
}

// newMapLease adapts the map's lease commands to moves.Lease. The integrator completes it once
// shardmap has them: Acquire applies shardmap.AcquireLease{Name, Holder, TTL} with
// client.Apply and wraps shardmap.ErrLeaseHeld as moves.ErrLeaseHeld; Release applies
// shardmap.ReleaseLease{Name, Holder}.
func newMapLease(*shardmap.Client) (moves.Lease, error) {
	return nil, fmt.Errorf("map lease: shardmap's AcquireLease is %w (cmd/rebalancer/serve.go newMapLease)", errNotIntegrated)
}

// newPruner adapts the map's PruneMoves command to moves.Pruner; nil until it exists (the
// controller then prunes nothing and finished moves stay in the map). The integrator returns
// a func type applying shardmap.PruneMoves{Before: before}.
func newPruner(*shardmap.Client) moves.Pruner { return nil }
