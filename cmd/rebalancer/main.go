// Command rebalancer runs tenant moves (DESIGN.md §8) and is the operator's CLI for them.
//
//	rebalancer serve                      the move controller (one active, others standby)
//	rebalancer move TENANT --to SHARD [--wait]
//	rebalancer status [ID]                moves newest first, or one move with a live progress bar
//	rebalancer cancel ID
//	rebalancer verify TENANT              compare a tenant's rows on two shards (no repair)
//	rebalancer plan                       propose moves that even out rows per shard
//
// The operator commands talk to a router's admin API, found from the cluster file
// (--cluster, default .meridian/cluster.json) or MERIDIAN_ROUTER_URL with MERIDIAN_ADMIN_TOKEN
// (or MERIDIAN_ADMIN_TOKEN_FILE). Exit status: 0 success, 1 a failure (an unreachable router,
// a refused request, a move that ended failed or cancelled under --wait), 2 bad input.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/meridian-dev/meridian/internal/envflag"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

const usage = `usage: rebalancer COMMAND [flags]

commands:
  serve                         run the move controller (flags: rebalancer serve -h)
  move TENANT --to SHARD        request a move; --wait follows it with a progress bar
  status [ID]                   list moves (--tenant, --phase), or follow one move
  cancel ID                     cancel a move before its cutover
  verify TENANT                 compare a tenant's rows on two shards, without repairing
  plan                          propose moves that even out rows per shard (applies nothing)
  --version                     print the version

The operator commands find a router from --cluster FILE (default .meridian/cluster.json) or
MERIDIAN_ROUTER_URL with MERIDIAN_ADMIN_TOKEN or MERIDIAN_ADMIN_TOKEN_FILE.
`

// run is main without the process: it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "-version", "--version", "version":
		fmt.Fprintln(stdout, "rebalancer", version())
		return 0
	case "serve":
		err = serve(ctx, args[1:], stdout, stderr, env)
	case "move":
		err = moveCmd(ctx, args[1:], stdout, stderr, env)
	case "status":
		err = statusCmd(ctx, args[1:], stdout, stderr, env)
	case "cancel":
		err = cancelCmd(ctx, args[1:], stdout, stderr, env)
	case "verify":
		err = verifyCmd(ctx, args[1:], stdout, stderr, env)
	case "plan":
		err = planCmd(ctx, args[1:], stdout, stderr, env)
	default:
		fmt.Fprintf(stderr, "rebalancer: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "rebalancer %s: %v\n", args[0], strings.TrimPrefix(err.Error(), errUsage.Error()+": "))
		return 2
	default:
		fmt.Fprintf(stderr, "rebalancer %s: %v\n", args[0], err)
		return 1
	}
}

// version is the module version and VCS revision the binary was built from.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v += " " + s.Value
		case "vcs.modified":
			if s.Value == "true" {
				v += " (modified)"
			}
		}
	}
	return v + " " + bi.GoVersion
}

// parseArgs parses flags that may come before or after the positional arguments
// ("move acme --to euw-1"), and checks the positional count is between min and max.
func parseArgs(fs *flag.FlagSet, args []string, min, max int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageErr("%v", err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) < min || len(pos) > max {
		want := fmt.Sprintf("%d", min)
		if max != min {
			want = fmt.Sprintf("%d to %d", min, max)
		}
		return nil, usageErr("want %s arguments, got %d (%s -h for help)", want, len(pos), fs.Name())
	}
	return pos, nil
}

// newFlagSet returns a flag set whose errors and help go to stderr.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: rebalancer %s\n\nflags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// secret returns the variable name, or the trimmed contents of the file named by name_FILE.
func secret(env func(string) string, name string) (string, error) {
	if v := env(name); v != "" {
		return v, nil
	}
	if f := env(name + "_FILE"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", usageErr("%s_FILE: %v", name, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", nil
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// findTarget reads MERIDIAN_ROUTER_URL + MERIDIAN_ADMIN_TOKEN (or MERIDIAN_ADMIN_TOKEN_FILE)
// when set, else the cluster file.
func findTarget(env func(string) string, clusterPath string) (*target, error) {
	token := env("MERIDIAN_ADMIN_TOKEN")
	if f := env("MERIDIAN_ADMIN_TOKEN_FILE"); f != "" && token == "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, usageErr("MERIDIAN_ADMIN_TOKEN_FILE: %v", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if u := env("MERIDIAN_ROUTER_URL"); u != "" {
		if token == "" {
			return nil, usageErr("MERIDIAN_ROUTER_URL is set but neither MERIDIAN_ADMIN_TOKEN nor MERIDIAN_ADMIN_TOKEN_FILE")
		}
		var routers []string
		for _, r := range strings.Split(u, ",") {
			if r = strings.TrimRight(strings.TrimSpace(r), "/"); r != "" {
				routers = append(routers, r)
			}
		}
		return &target{routers: routers, token: token}, nil
	}
	b, err := os.ReadFile(clusterPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, usageErr("no cluster file %s and no MERIDIAN_ROUTER_URL; start a cluster (make up) or set MERIDIAN_ROUTER_URL and MERIDIAN_ADMIN_TOKEN", clusterPath)
		}
		return nil, usageErr("%v", err)
	}
	var cf clusterFile
	if err := json.Unmarshal(b, &cf); err != nil {
		return nil, usageErr("%s: %v", filepath.Clean(clusterPath), err)
	}
	t := &target{token: cf.AdminToken, cluster: &cf}
	if token != "" {
		t.token = token
	}
	for _, r := range sortedKeys(cf.Regions) {
		if u := cf.Regions[r].Router; u != "" {
			t.routers = append(t.routers, strings.TrimRight(u, "/"))
		}
	}
	if len(t.routers) == 0 || t.token == "" {
		return nil, usageErr("%s has no router or no admin_token", clusterPath)
	}
	return t, nil
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
	fs.StringVar(&d.region, "region", env.String("MERIDIAN_REGION", ""), "this process's region: reads are served from it (MERIDIAN_REGION; serve and verify need it)")
	fs.StringVar(&d.mapAddrs, "map-addrs", env.String("MERIDIAN_MAP_ADDRS", ""), "comma-separated base URLs of shard-map nodes (routers) (MERIDIAN_MAP_ADDRS; serve and verify need it)")
	fs.StringVar(&d.clusterToken, "cluster-token", env.String("MERIDIAN_CLUSTER_TOKEN", ""), "cluster token for the map (MERIDIAN_CLUSTER_TOKEN; or MERIDIAN_CLUSTER_TOKEN_FILE; serve and verify need it)")
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
	fs.IntVar(&c.ctl.ScanStreams, "scan-streams", env.Int("MERIDIAN_MOVE_SCAN_STREAMS", 4), "key ranges a backfill or full verify pass works on at once, per move; each holds up to one connection per shard (MERIDIAN_MOVE_SCAN_STREAMS)")
	fs.IntVar(&c.ctl.VerifyThreshold, "verify-threshold", env.Int("MERIDIAN_MOVE_VERIFY_THRESHOLD", 10), "most differences a verify pass may find before the cutover; -1 = none (MERIDIAN_MOVE_VERIFY_THRESHOLD)")
	fs.IntVar(&c.ctl.FinalVerifyPasses, "final-verify-passes", env.Int("MERIDIAN_MOVE_FINAL_VERIFY_PASSES", 3), "verify passes under the fence before the move fails (MERIDIAN_MOVE_FINAL_VERIFY_PASSES)")
	fs.Int64Var(&c.ctl.MaxFinalDelta, "max-final-delta", int64(env.Int("MERIDIAN_MOVE_MAX_FINAL_DELTA", 50)), "most writes left to compare when the source is fenced; the pause grows with it (MERIDIAN_MOVE_MAX_FINAL_DELTA)")
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
