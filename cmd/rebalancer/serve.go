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

// newMovesStore is pgstore's move primitives (internal/records/pgstore/moves.go) as moves.Store.
func newMovesStore(s *pgstore.Store) (moves.Store, error) { return s, nil }

// newMapLease is the map's lease commands as moves.Lease.
func newMapLease(c *shardmap.Client) (moves.Lease, error) { return mapLease{c}, nil }

type mapLease struct{ c *shardmap.Client }

func (l mapLease) Acquire(ctx context.Context, name, holder string, ttl time.Duration) error {
	_, err := l.c.Apply(ctx, shardmap.AcquireLease{Name: name, Holder: holder, TTL: ttl})
	if errors.Is(err, shardmap.ErrLeaseHeld) {
		return fmt.Errorf("%w: %w", moves.ErrLeaseHeld, err)
	}
	return err
}

func (l mapLease) Release(ctx context.Context, name, holder string) error {
	_, err := l.c.Apply(ctx, shardmap.ReleaseLease{Name: name, Holder: holder})
	return err
}

// newPruner is the map's PruneMoves command as moves.Pruner.
func newPruner(c *shardmap.Client) moves.Pruner { return mapPruner{c} }

type mapPruner struct{ c *shardmap.Client }

func (p mapPruner) PruneMoves(ctx context.Context, before time.Time) error {
	_, err := p.c.Apply(ctx, shardmap.PruneMoves{Before: before})
	return err
}
