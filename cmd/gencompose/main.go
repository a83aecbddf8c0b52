// Command gencompose renders docker-compose.multiregion.yml from the topology file, so the
// compose file and the local launcher can never disagree about regions, ports or peers, and
// initialises the cluster that file describes.
//
//	go run ./cmd/gencompose [-topology deploy/multi-region/topology.yaml] [-out docker-compose.multiregion.yml]
//	gencompose init [-topology /etc/meridian/topology.yaml] [-timeout 3m]
//
// With -out - it writes to standard output. The output is deterministic.
//
// `init` is the compose file's one-shot `init` service: it migrates every shard database on its
// home primary (migrations.Apply), sets the passwords of the meridian_app role (the API nodes'
// requests) and the meridian_worker role (their outbox relay) on every primary, and bootstraps the shard map through the routers with each shard's compose endpoints (the primary
// at home, the region's standby elsewhere). Every step is idempotent, so it can run again; it
// retries until the timeout while Postgres and the routers come up. The launcher (cmd/sim) does
// the same steps in-process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/internal/topology"
	"github.com/meridian-dev/meridian/migrations"
	"github.com/meridian-dev/meridian/shardmap"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("component", "compose-init")
		if err := cmdInit(os.Args[2:], log); err != nil {
			fmt.Fprintln(os.Stderr, "gencompose init:", err)
			os.Exit(1)
		}
		return
	}
	in := flag.String("topology", topology.DefaultPath, "topology file")
	out := flag.String("out", "docker-compose.multiregion.yml", "output file, - for standard output")
	flag.Parse()
	if err := run(*in, *out); err != nil {
		fmt.Fprintln(os.Stderr, "gencompose:", err)
		os.Exit(1)
	}
}

func run(in, out string) error {
	topo, err := topology.Load(in)
	if err != nil {
		return err
	}
	data, err := topo.ComposeYAML()
	if err != nil {
		return err
	}
	if out == "-" {
		_, err = os.Stdout.Write(data)
		return err
	}
	return os.WriteFile(out, data, 0o644)
}

// initConfig is what initCluster needs. cmdInit fills it with compose service names; tests
// point it at loopback servers.
type initConfig struct {
	topo *topology.Topology
	// primaryDSN is a superuser DSN of region's Postgres primary, database db.
	primaryDSN   func(region, db string) string
	routerURLs   []string
	clusterToken string
	// appPassword and workerPassword are given to migrations.AppRole and migrations.WorkerRole.
	appPassword    string
	workerPassword string
	log            *slog.Logger
}

func cmdInit(args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	in := fs.String("topology", topology.DefaultPath, "topology file")
	timeout := fs.Duration("timeout", 3*time.Minute, "give up after this long")
	token := fs.String("cluster-token", os.Getenv("MERIDIAN_CLUSTER_TOKEN"), "cluster token of the routers (MERIDIAN_CLUSTER_TOKEN; required)")
	pgPassword := fs.String("pg-password", os.Getenv("MERIDIAN_PG_PASSWORD"), "password of the postgres superuser (MERIDIAN_PG_PASSWORD; required)")
	appPassword := fs.String("app-db-password", os.Getenv("MERIDIAN_APP_DB_PASSWORD"), "password to give the meridian_app role (MERIDIAN_APP_DB_PASSWORD; required)")
	workerPassword := fs.String("worker-db-password", os.Getenv("MERIDIAN_WORKER_DB_PASSWORD"), "password to give the meridian_worker role, the API nodes' outbox relay (MERIDIAN_WORKER_DB_PASSWORD; required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *token == "" || *pgPassword == "" || *appPassword == "" || *workerPassword == "" {
		return errors.New("-cluster-token, -pg-password, -app-db-password and -worker-db-password are required")
	}
	topo, err := topology.Load(*in)
	if err != nil {
		return err
	}
	var routers []string
	for _, r := range topo.Regions() {
		for _, n := range topo.Routers(r) {
			routers = append(routers, fmt.Sprintf("http://%s:%d", topology.ComposeServiceName(n), n.HTTP))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	return initCluster(ctx, initConfig{
		topo: topo,
		primaryDSN: func(region, db string) string {
			p, _ := topo.Ports(region)
			return composeDSN(topology.ComposePostgres(region), p.Postgres, *pgPassword, db)
		},
		routerURLs: routers, clusterToken: *token, appPassword: *appPassword, workerPassword: *workerPassword, log: log,
	})
}

// composeDSN is the postgres superuser's DSN of host:port, database db.
func composeDSN(host string, port int, password, db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("postgres", password),
		Host: host + ":" + strconv.Itoa(port), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// initCluster migrates the shards, sets meridian_app's and meridian_worker's passwords and
// bootstraps the shard map.
func initCluster(ctx context.Context, c initConfig) error {
	dsns := map[string]string{}
	for _, s := range c.topo.Shards() {
		dsns[s.ID] = c.primaryDSN(s.HomeRegion, s.Database)
	}
	if err := retry(ctx, c.log, "migrate", func() error { return migrate(ctx, dsns) }); err != nil {
		return err
	}
	c.log.Info("shards migrated", "shards", len(dsns))
	for _, r := range c.topo.Regions() {
		shards := c.topo.ShardsOf(r)
		if len(shards) == 0 {
			continue // no migrations ran here, so no role; standbys replicate theirs
		}
		dsn := c.primaryDSN(r, shards[0].Database)
		for _, rp := range []struct{ role, password string }{
			{migrations.AppRole, c.appPassword},
			{migrations.WorkerRole, c.workerPassword},
		} {
			if err := retry(ctx, c.log, "set "+rp.role+" password in "+r, func() error { return setPassword(ctx, dsn, rp.role, rp.password) }); err != nil {
				return err
			}
		}
	}
	c.log.Info("role passwords set", "roles", []string{migrations.AppRole, migrations.WorkerRole})

	cmd := shardmap.Bootstrap{Regions: c.topo.Regions(), SlotCount: c.topo.SlotCount()}
	for _, s := range c.topo.Shards() {
		cmd.Shards = append(cmd.Shards, shardmap.Shard{ID: s.ID, HomeRegion: s.HomeRegion, Database: s.Database,
			Endpoints: c.topo.ShardEndpoints(s)})
	}
	client := shardmap.NewClient(shardmap.ClientConfig{Addrs: c.routerURLs, Token: c.clusterToken, Logger: c.log})
	// Client.Apply retries while the group elects or the routers are unreachable.
	switch _, err := client.Apply(ctx, cmd); {
	case errors.Is(err, shardmap.ErrAlreadyBootstrapped):
		c.log.Info("shard map already bootstrapped")
	case err != nil:
		return fmt.Errorf("bootstrap shard map: %w", err)
	default:
		c.log.Info("shard map bootstrapped", "shards", len(cmd.Shards), "slots", cmd.SlotCount)
	}
	return nil
}

func migrate(ctx context.Context, dsns map[string]string) error {
	results, err := migrations.Apply(ctx, dsns)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range results {
		if r.Err != nil {
			errs = append(errs, fmt.Errorf("shard %s: %w", r.Shard, r.Err))
		}
	}
	return errors.Join(errs...)
}

// setPassword gives role (migrations.AppRole or migrations.WorkerRole) a password. ALTER ROLE
// takes no parameters, so the server quotes the identifier and the literal (format %I, %L).
func setPassword(ctx context.Context, dsn, role, password string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var stmt string
	if err := conn.QueryRow(ctx, "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", role, password).Scan(&stmt); err != nil {
		return err
	}
	_, err = conn.Exec(ctx, stmt)
	return err
}

// retry runs f until it succeeds or ctx ends, logging each failure.
func retry(ctx context.Context, log *slog.Logger, what string, f func() error) error {
	wait := 250 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		log.Warn("retrying", "step", what, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}
