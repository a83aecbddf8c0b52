// Command faults runs Meridian's fault suite (issue 15, docs/RELIABILITY.md) against the local
// cluster: a workload through every region's router (cached reads and `/v1/changes` readers
// among it) while a seeded nemesis kills and restarts processes (NATS servers and outbox
// relays among them), partitions regions and pauses standby replay; then it heals everything,
// reads every set, lets the change readers catch up, judges the history with every checker,
// prints the summary table, writes the history for replay, and exits 1 on any violation.
//
//	faults [-duration 60s] [-seed N] [-faults kill-api,kill-nats,partition,...] [-history FILE]
//	       [-invalidation-bound 1s] [-changes-readers 2] [-changes-patience 60s]
//	faults -replay FILE        judge a saved history again, without a cluster
//
// It uses the cluster running from -dir (`make up LATENCY=1`; partitions need latency mode),
// or, when none runs there, starts one itself in -state on ports shifted down by -port-shift
// (so it never collides with `make up`'s), and stops it at the end.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/meridian-dev/meridian/internal/faults/check"
	"github.com/meridian-dev/meridian/internal/faults/nemesis"
	"github.com/meridian-dev/meridian/internal/faults/suite"
	"github.com/meridian-dev/meridian/internal/faults/workload"
	"github.com/meridian-dev/meridian/internal/sim"
	"github.com/meridian-dev/meridian/internal/topology"
)

func main() {
	code, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		if code == 0 {
			code = 2
		}
	}
	os.Exit(code)
}

func run() (int, error) {
	fs := flag.NewFlagSet("faults", flag.ExitOnError)
	duration := fs.Duration("duration", 60*time.Second, "how long the workload and the nemesis run")
	seed := fs.Int64("seed", 0, "seed of the workload and the fault schedule (0: from the clock, printed)")
	faults := fs.String("faults", strings.Join(nemesis.AllKinds, ","), "comma-separated fault kinds ('none' for none)")
	historyPath := fs.String("history", "", "history file to write (default: faults-<seed>.jsonl in the state dir)")
	replay := fs.String("replay", "", "judge this saved history file again (no cluster needed) and exit")
	keyBudget := fs.Duration("key-budget", check.DefaultKeyTimeout, "linearizability checker's time budget per register; a register that runs out is undecided (exit 1), so replay with a larger budget to decide it")
	dir := fs.String("dir", ".meridian", "state directory of a running cluster (`make up`) to use")
	state := fs.String("state", ".meridian-faults", "state directory of the cluster started when none runs in -dir")
	topo := fs.String("topology", "deploy/multi-region/topology.yaml", "topology of the cluster started when none runs")
	shift := fs.Int("port-shift", 5000, "the started cluster's port bases are this much below the topology's")
	tenants := fs.Int("tenants", workload.DefaultTenantsPerRegion, "tenants homed in each region")
	procs := fs.Int("procs", workload.DefaultProcsPerRegion, "clients per region")
	staleness := fs.Duration("max-staleness", check.DefaultMaxStaleness, "the plain-read bound the checker applies")
	invalidation := fs.Duration("invalidation-bound", workload.DefaultInvalidationBound,
		"how long after a write's acknowledgement its cache invalidation is due in every region (cached reads invoked later must not return an older version)")
	readers := fs.Int("changes-readers", workload.DefaultChangesTenants,
		"tenants whose /v1/changes is followed for the whole run, one reader per region each (0: none)")
	changesPatience := fs.Duration("changes-patience", 60*time.Second,
		"how long the change readers may take, after recovery, to catch up with every acknowledged write")
	minHold := fs.Duration("min-hold", 0, "shortest time a step's faults last (0: the nemesis's default, 3s)")
	maxHold := fs.Duration("max-hold", 0, "longest time a step's faults last (0: the nemesis's default, 8s)")
	markdown := fs.Bool("markdown", false, "print the summary as Markdown tables (every register listed)")
	_ = fs.Parse(os.Args[1:])
	cfg := check.Config{MaxStaleness: *staleness, KeyTimeout: *keyBudget}

	if *replay != "" {
		res, err := suite.Replay(*replay, cfg)
		if err != nil {
			return 2, err
		}
		return report(res, *markdown, *replay)
	}

	kinds := []string{}
	if *faults != "none" && *faults != "" {
		for _, k := range strings.Split(*faults, ",") {
			k = strings.TrimSpace(k)
			if !slices.Contains(nemesis.AllKinds, k) {
				return 2, fmt.Errorf("unknown fault kind %q (kinds: %s)", k, strings.Join(nemesis.AllKinds, ", "))
			}
			kinds = append(kinds, k)
		}
	}
	if *seed == 0 {
		*seed = time.Now().UnixNano() % 1_000_000
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	f, launcher, stateDir, down, err := cluster(ctx, *dir, *state, *topo, *shift)
	if err != nil {
		return 2, err
	}
	defer down()
	if *historyPath == "" {
		*historyPath = filepath.Join(stateDir, fmt.Sprintf("faults-%d.jsonl", *seed))
	}
	fmt.Printf("fault suite: seed %d, %v, history %s\n", *seed, *duration, *historyPath)
	res, err := suite.Run(ctx, suite.Options{
		Cluster: f, Launcher: launcher, Seed: *seed, Duration: *duration, Kinds: kinds,
		Plan: nemesis.PlanConfig{MinHold: *minHold, MaxHold: *maxHold},
		Workload: workload.Config{TenantsPerRegion: *tenants, ProcsPerRegion: *procs,
			InvalidationBound: *invalidation, ChangesTenants: changesTenants(*readers)},
		ChangesPatience: *changesPatience,
		HistoryPath:     *historyPath, Check: cfg, Log: os.Stdout,
	})
	if err != nil {
		return 2, err
	}
	return report(res, *markdown, *historyPath)
}

// changesTenants maps the flag (0: none) to workload.Config.ChangesTenants (0: the default,
// negative: none).
func changesTenants(n int) int {
	if n <= 0 {
		return -1
	}
	return n
}

// report prints the summary and every violation; 1 if there is one (or anything undecided).
func report(res suite.Result, markdown bool, historyPath string) (int, error) {
	fmt.Println()
	var err error
	if markdown {
		err = res.Summary.Markdown(os.Stdout)
	} else {
		err = res.Summary.Text(os.Stdout)
	}
	if err != nil {
		return 2, err
	}
	if !res.OK() {
		fmt.Println()
		fmt.Println(res.Report.String())
		if len(res.Report.Violations()) == 0 {
			fmt.Printf("\nINCONCLUSIVE: no violation, but not every check finished; replay it with a larger budget: faults -replay %s -key-budget 2m\n", historyPath)
		} else {
			fmt.Printf("\nFAIL: the history violates the guarantees; replay it with: faults -replay %s\n", historyPath)
		}
		return 1, nil
	}
	if strings.HasPrefix(res.Summary.ChangesVerdict, "unproven") {
		// Every checker accepted what it saw, but a change reader that did not end ok proves
		// no completeness: the guarantee was not shown.
		fmt.Printf("\nFAIL: change streams %s; the readers' last answers are in the history (%s)\n", res.Summary.ChangesVerdict, historyPath)
		return 1, nil
	}
	fmt.Printf("\nOK: every checker accepted the history (%s)\n", historyPath)
	return 0, nil
}

// cluster returns the cluster running from dir, or starts one in state. down stops what was
// started (nothing for a running cluster).
func cluster(ctx context.Context, dir, state, topoPath string, shift int) (*sim.ClusterFile, nemesis.Launcher, string, func(), error) {
	if f, err := sim.ReadClusterFile(dir); err == nil {
		if resp, err := http.Get(f.Control + "/status"); err == nil {
			resp.Body.Close()
			fmt.Printf("using the cluster running from %s\n", dir)
			return f, sim.Control{URL: f.Control}, dir, func() {}, nil
		}
	} else if !errors.Is(err, sim.ErrNoCluster) {
		return nil, nil, "", nil, err
	}
	t, err := topology.Load(topoPath)
	if err != nil {
		return nil, nil, "", nil, err
	}
	tf := t.File()
	for i := range tf.Regions {
		tf.Regions[i].PortBase -= shift
	}
	if t, err = topology.New(tf); err != nil {
		return nil, nil, "", nil, fmt.Errorf("port shift %d: %w", shift, err)
	}
	if err := os.MkdirAll(state, 0o755); err != nil {
		return nil, nil, "", nil, err
	}
	fmt.Printf("no cluster runs from %s: starting one in %s (latency mode, ports shifted by -%d)\n", dir, state, shift)
	logf, err := os.Create(filepath.Join(state, "sim.log"))
	if err != nil {
		return nil, nil, "", nil, err
	}
	logger := slog.New(slog.NewJSONHandler(logf, nil))
	// Libraries log through the default logger (migrations, for one): into the file too.
	slog.SetDefault(logger)
	c, err := sim.Up(ctx, sim.Options{Topology: t, Dir: state, Latency: true, Progress: os.Stdout, Logger: logger})
	if err != nil {
		logf.Close()
		return nil, nil, "", nil, err
	}
	down := func() {
		fmt.Println("stopping the cluster...")
		c.Down()
		logf.Close()
	}
	return c.Info(), nemesis.InProcess{C: c}, state, down, nil
}
