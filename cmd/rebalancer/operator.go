package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/meridian-dev/meridian/shardmap"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

// common are the flags every operator command has.
type common struct {
	cluster  string
	timeout  time.Duration
	interval time.Duration
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.cluster, "cluster", ".meridian/cluster.json", "cluster file; MERIDIAN_ROUTER_URL and MERIDIAN_ADMIN_TOKEN(_FILE) take precedence")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "give up on one request after this long")
	fs.DurationVar(&c.interval, "interval", 500*time.Millisecond, "how often a followed move is polled")
}

func (c *common) client(env func(string) string) (*client, error) {
	t, err := findTarget(env, c.cluster)
	if err != nil {
		return nil, err
	}
	return &client{t: t, http: &http.Client{Timeout: c.timeout}}, nil
}

func moveCmd(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) error {
	fs := newFlagSet("move", "move TENANT --to SHARD [--wait]", stderr)
	var cm common
	cm.register(fs)
	to := fs.String("to", "", "target shard (required)")
	wait := fs.Bool("wait", false, "follow the move with a progress bar until it ends")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	tenant := pos[0]
	if !ids.ValidTenant(tenant) {
		return usageErr("%q is not a tenant id (%s)", tenant, ids.TenantPattern)
	}
	if *to == "" {
		return usageErr("--to SHARD is required")
	}
	if !ids.ValidShard(*to) {
		return usageErr("%q is not a shard id (%s)", *to, ids.NamePattern)
	}
	c, err := cm.client(env)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, cm.timeout)
	mv, err := c.createMove(rctx, tenant, *to)
	cancel()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "move %s requested: %s -> %s (%s)\n", mv.ID, tenant, *to, mv.Phase)
	if !*wait {
		return nil
	}
	final, err := follow(ctx, c, mv.ID, cm, stdout, stderr)
	if err != nil {
		return err
	}
	if final.Phase != "done" {
		return fmt.Errorf("move %s ended %s", final.ID, final.Phase)
	}
	return nil
}

func statusCmd(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) error {
	fs := newFlagSet("status", "status [ID]", stderr)
	var cm common
	cm.register(fs)
	tenant := fs.String("tenant", "", "list only this tenant's moves")
	phase := fs.String("phase", "", "list only moves in this phase")
	once := fs.Bool("once", false, "with ID: print the move's figures now instead of following it")
	mapAddrs := fs.String("map", env("MERIDIAN_MAP_ADDRS"), "without an admin API (no cluster file, no MERIDIAN_ROUTER_URL): print the shard map read from these map nodes (MERIDIAN_MAP_ADDRS)")
	clusterToken := fs.String("cluster-token", env("MERIDIAN_CLUSTER_TOKEN"), "cluster token for -map (MERIDIAN_CLUSTER_TOKEN)")
	pos, err := parseArgs(fs, args, 0, 1)
	if err != nil {
		return err
	}
	c, err := cm.client(env)
	if err != nil && len(pos) == 0 && *mapAddrs != "" && *clusterToken != "" {
		// The compose tool service's way: the map itself, from the map nodes.
		return mapStatus(ctx, *mapAddrs, *clusterToken, cm.timeout, stdout)
	}
	if err != nil {
		return err
	}
	if len(pos) == 1 {
		if *once {
			rctx, cancel := context.WithTimeout(ctx, cm.timeout)
			defer cancel()
			mv, err := c.getMove(rctx, pos[0])
			if err != nil {
				return err
			}
			printFigures(stdout, mv, 0)
			return nil
		}
		_, err := follow(ctx, c, pos[0], cm, stdout, stderr)
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, cm.timeout)
	defer cancel()
	moves, err := c.listMoves(rctx, *tenant, *phase)
	if err != nil {
		return err
	}
	if len(moves) == 0 {
		fmt.Fprintln(stdout, "no moves")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTENANT\tFROM\tTO\tPHASE\tROWS\tREPAIRS\tPAUSE_MS\tERROR")
	for _, mv := range moves {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%d\t%d\t%s\n", mv.ID, mv.Tenant, mv.From, mv.To, mv.Phase,
			mv.RowsCopied, mv.RowsTotal, mv.Repairs, mv.PauseMS, mv.Error)
	}
	return tw.Flush()
}

func cancelCmd(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) error {
	fs := newFlagSet("cancel", "cancel ID", stderr)
	var cm common
	cm.register(fs)
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	c, err := cm.client(env)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, cm.timeout)
	defer cancel()
	if err := c.cancelMove(rctx, pos[0]); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "move %s: cancel requested (the controller drops the target's copy; the source stays authoritative)\n", pos[0])
	return nil
}

// follow polls move id and draws its rows_copied/rows_total as a progress bar on stderr, with
// the phase as the description, until the move ends or ctx does; then it prints the move's
// figures on stdout.
func follow(ctx context.Context, c *client, id string, cm common, stdout, stderr io.Writer) (moveView, error) {
	bar := progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(stderr),
		progressbar.OptionSetDescription(id),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("rows"),
		progressbar.OptionSetWidth(30),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(stderr) }),
	)
	var (
		mv                    moveView
		total                 int64 = -1
		phase                 string
		rateFrom, rateTo      time.Time
		rowsFrom, rowsTo      int64
		sawBackfill, rateDone bool
	)
	for {
		rctx, cancel := context.WithTimeout(ctx, cm.timeout)
		got, err := c.getMove(rctx, id)
		cancel()
		if err != nil {
			_ = bar.Exit()
			return mv, err
		}
		mv = got
		if mv.RowsTotal != total && mv.RowsTotal > 0 {
			total = mv.RowsTotal
			bar.ChangeMax64(total)
		}
		if mv.Phase != phase {
			phase = mv.Phase
			bar.Describe(fmt.Sprintf("%s %s %-10s", mv.ID, mv.Tenant, phase))
		}
		_ = bar.Set64(min(mv.RowsCopied, max(total, mv.RowsCopied)))
		// The copy rate as seen from here: rows copied between the first and last sample
		// taken in backfill.
		now := time.Now()
		if mv.Phase == "backfill" {
			if !sawBackfill {
				sawBackfill, rateFrom, rowsFrom = true, now, mv.RowsCopied
			}
			rateTo, rowsTo = now, mv.RowsCopied
		} else if sawBackfill && !rateDone {
			// The first sample after the backfill has its final count.
			rateTo, rowsTo, rateDone = now, mv.RowsCopied, true
		}
		if mv.terminal() {
			_ = bar.Finish()
			break
		}
		select {
		case <-ctx.Done():
			_ = bar.Exit()
			return mv, ctx.Err()
		case <-time.After(cm.interval):
		}
	}
	rate := 0.0
	if d := rateTo.Sub(rateFrom); d > 0 {
		rate = float64(rowsTo-rowsFrom) / d.Seconds()
	}
	printFigures(stdout, mv, rate)
	return mv, nil
}

// printFigures prints a move's figures; observedRate is the copy rate seen while following it
// (0 = not observed: the average over the whole move is printed instead).
func printFigures(w io.Writer, mv moveView, observedRate float64) {
	fmt.Fprintf(w, "move %s: %s %s -> %s: %s\n", mv.ID, mv.Tenant, mv.From, mv.To, mv.Phase)
	fmt.Fprintf(w, "  rows      %d/%d\n", mv.RowsCopied, mv.RowsTotal)
	if mv.CopiedUpTo != nil && mv.Phase == "backfill" {
		fmt.Fprintf(w, "  cursor    %s/%s (every key up to it copied; a restarted backfill resumes after it)\n", mv.CopiedUpTo.Collection, mv.CopiedUpTo.ID)
	}
	var dur time.Duration
	if !mv.CreatedAt.IsZero() && !mv.UpdatedAt.IsZero() {
		dur = mv.UpdatedAt.Sub(mv.CreatedAt)
	}
	switch {
	case observedRate > 0:
		fmt.Fprintf(w, "  rate      %.0f rows/s (backfill)\n", observedRate)
	case dur > 0:
		fmt.Fprintf(w, "  rate      %.0f rows/s (over the whole move)\n", float64(mv.RowsCopied)/dur.Seconds())
	default:
		fmt.Fprintf(w, "  rate      unknown\n")
	}
	fmt.Fprintf(w, "  repairs   %d\n", mv.Repairs)
	fmt.Fprintf(w, "  pause_ms  %d (fence to the cutover applied, the controller's clock)\n", mv.PauseMS)
	if mv.FirstWrite > 0 {
		fmt.Fprintf(w, "  first write on the target %d ms after the fence (the databases' clocks)\n", mv.FirstWrite)
	} else if mv.Phase == "done" {
		fmt.Fprintf(w, "  first write on the target: none before the cleanup\n")
	}
	if dur > 0 {
		fmt.Fprintf(w, "  duration  %s\n", dur.Round(time.Millisecond))
	} else {
		fmt.Fprintf(w, "  duration  unknown\n")
	}
	if mv.Error != "" {
		fmt.Fprintf(w, "  error     %s\n", mv.Error)
	}
}

// mapStatus prints the shard map's shards, slot counts, pins and moves, read from map nodes
// with the cluster token (what `rebalancer status` printed before the admin API had moves).
func mapStatus(ctx context.Context, addrs, token string, timeout time.Duration, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := shardmap.NewClient(shardmap.ClientConfig{Addrs: strings.Split(addrs, ","), Token: token,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	go func() { _ = c.Run(ctx) }()
	if err := c.WaitVersion(ctx, 1); err != nil {
		return fmt.Errorf("no shard map from %s: %w", addrs, err)
	}
	m := c.Map()
	slots := map[string]int{}
	for i := 0; i < m.SlotCount(); i++ {
		slots[m.SlotShard(i)]++
	}
	pins := map[string]int{}
	for _, sh := range m.Pins() {
		pins[sh]++
	}
	fmt.Fprintf(stdout, "shard map version %d, %d slots\n\n", m.Version(), m.SlotCount())
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tHOME\tSTATE\tSLOTS\tPINNED TENANTS")
	for _, s := range m.Shards() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", s.ID, s.HomeRegion, s.State, slots[s.ID], pins[s.ID])
	}
	tw.Flush()
	mvs := m.Moves()
	fmt.Fprintf(stdout, "\n%d moves\n", len(mvs))
	for _, mv := range mvs {
		fmt.Fprintf(stdout, "  %s %s %s->%s %s rows %d/%d\n", mv.ID, mv.Tenant, mv.From, mv.To, mv.Phase, mv.RowsCopied, mv.RowsTotal)
	}
	return nil
}
