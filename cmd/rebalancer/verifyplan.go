package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/internal/api/mapsource"
	"github.com/meridian-dev/meridian/internal/envflag"
	"github.com/meridian-dev/meridian/internal/moves"
	"github.com/meridian-dev/meridian/internal/records/pgstore"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/shardmap"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

// verifyCmd compares a tenant's rows on two shards once, without repairing: by default the
// source and target of its active move. Differences found → exit status 1.
func verifyCmd(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	env := envflag.New(func(k string) (string, bool) { v := getenv(k); return v, v != "" })
	fs := newFlagSet("verify", "verify TENANT [--from SHARD] [--to SHARD]", stderr)
	var db dbFlags
	db.register(fs, env)
	cluster := fs.String("cluster", ".meridian/cluster.json", "cluster file: -map-addrs and -cluster-token default to its routers and token")
	from := fs.String("from", "", "shard to compare from (default: the active move's source, else the tenant's shard)")
	to := fs.String("to", "", "shard to compare with (default: the active move's target)")
	batch := fs.Int("batch-size", 1000, "keys per verify batch")
	show := fs.Int("show", 20, "differing keys to print")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	tenant := pos[0]
	if !ids.ValidTenant(tenant) {
		return usageErr("%q is not a tenant id (%s)", tenant, ids.TenantPattern)
	}
	if err := env.Err(); err != nil {
		return usageErr("%v", err)
	}
	if db.mapAddrs == "" || db.clusterToken == "" {
		if t, err := findTarget(func(string) string { return "" }, *cluster); err == nil && t.cluster != nil {
			if db.mapAddrs == "" {
				db.mapAddrs = strings.Join(t.routers, ",")
			}
			if db.clusterToken == "" {
				db.clusterToken = t.cluster.ClusterToken
			}
		}
	}
	via, err := db.finish(getenv)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	client := shardmap.NewClient(shardmap.ClientConfig{Addrs: strings.Split(db.mapAddrs, ","), Token: db.clusterToken, Logger: log})
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go func() { _ = client.Run(wctx) }()
	if err := client.WaitVersion(ctx, 1); err != nil {
		return fmt.Errorf("no shard map from %s: %w", db.mapAddrs, err)
	}
	m := client.Map()
	for _, mv := range m.Moves() {
		if mv.Tenant == tenant && !mv.Phase.Terminal() {
			if *from == "" {
				*from = mv.From
			}
			if *to == "" {
				*to = mv.To
			}
		}
	}
	if *from == "" {
		r, err := m.Lookup(tenant)
		if err != nil {
			return err
		}
		*from = r.Shard
	}
	if *to == "" {
		return usageErr("tenant %s is not moving: give --to SHARD to compare its shard %s with", tenant, *from)
	}
	for _, s := range []string{*from, *to} {
		if _, ok := m.Shard(s); !ok {
			return usageErr("unknown shard %q", s)
		}
	}
	pools := shards.New(shards.Config{User: db.dbUser, Password: db.dbPassword, MaxConns: 2, DialVia: via, StatementTimeout: db.statementTimeout, AppName: "meridian-rebalancer"})
	defer pools.Close()
	records, err := pgstore.New(pgstore.Config{Region: db.region, Map: mapsource.Adapter{Src: client}, Conns: pools, Logger: log})
	if err != nil {
		return err
	}
	store, err := newMovesStore(records)
	if err != nil {
		return err
	}
	start := time.Now()
	diffs, sample, checked, err := moves.Verify(ctx, store, tenant, *from, *to, *batch, *show)
	if err != nil {
		return err
	}
	el := time.Since(start)
	fmt.Fprintf(stdout, "verify %s: %s vs %s: %d keys checked in %s (%.0f keys/s), %d differences\n",
		tenant, *from, *to, checked, el.Round(time.Millisecond), float64(checked)/max(el.Seconds(), 1e-9), diffs)
	for _, k := range sample {
		fmt.Fprintf(stdout, "  %s/%s\n", k.Collection, k.ID)
	}
	if diffs > 0 {
		return fmt.Errorf("%d differences", diffs)
	}
	return nil
}

// planCmd reads the map from the admin API and each tenant's live rows from every shard's
// primary, and prints the moves moves.Plan proposes. It applies nothing.
func planCmd(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) error {
	fs := newFlagSet("plan", "plan [--dsn shard=DSN,...] [--max-moves N]", stderr)
	var cm common
	cm.register(fs)
	dsns := fs.String("dsn", env("MERIDIAN_PLAN_DSNS"), "shard=DSN,... of each shard's primary, as a role that sees every tenant's rows (MERIDIAN_PLAN_DSNS; default: the cluster file's development DSNs)")
	maxMoves := fs.Int("max-moves", 10, "most moves to propose; 0 = no limit")
	window := fs.Duration("rate-window", time.Hour, "write rates are the tenants' writes (outbox rows) over this last window")
	if _, err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	if *maxMoves < 0 {
		return usageErr("--max-moves must be >= 0")
	}
	if *window < time.Second {
		return usageErr("--rate-window must be at least 1s")
	}
	c, err := cm.client(env)
	if err != nil {
		return err
	}
	byShard := map[string]string{}
	if *dsns != "" {
		for _, pair := range strings.Split(*dsns, ",") {
			s, d, ok := strings.Cut(pair, "=")
			if !ok || s == "" || d == "" {
				return usageErr("--dsn: %q is not shard=DSN", pair)
			}
			byShard[s] = d
		}
	} else if c.t.cluster != nil {
		for _, r := range c.t.cluster.Regions {
			for s, d := range r.Postgres.Shards {
				byShard[s] = d
			}
		}
	}
	rctx, cancel := context.WithTimeout(ctx, cm.timeout)
	sm, err := c.shardMap(rctx)
	cancel()
	if err != nil {
		return err
	}
	var pshards []moves.PlanShard
	home := map[string]string{}
	for _, s := range sm.Shards {
		pshards = append(pshards, moves.PlanShard{ID: s.ID, HomeRegion: s.HomeRegion, Active: s.State == shardmap.ShardActive})
		home[s.ID] = s.HomeRegion
		if byShard[s.ID] == "" {
			return usageErr("no DSN for shard %s: give --dsn shard=DSN,...", s.ID)
		}
	}
	moving := map[string]bool{}
	for _, mv := range sm.Moves {
		if !mv.terminal() {
			moving[mv.Tenant] = true
		}
	}
	var tenants []moves.PlanTenant
	for _, s := range sm.Shards {
		rows, writes, err := tenantLoad(ctx, byShard[s.ID], *window, cm.timeout)
		if err != nil {
			return fmt.Errorf("shard %s: %w", s.ID, err)
		}
		for t := range writes {
			if _, ok := rows[t]; !ok {
				rows[t] = 0 // writes, but no live record now
			}
		}
		for t, n := range rows {
			// A tenant placed by region may only live in that region. Where the map does not
			// say how a tenant was placed, a pinned tenant keeps its current region.
			region := sm.TenantRegions[t]
			if region == "" && sm.Pins[t] != "" {
				region = home[sm.Pins[t]]
			}
			tenants = append(tenants, moves.PlanTenant{Tenant: t, Shard: s.ID, Rows: n, Writes: writes[t], Region: region, Moving: moving[t]})
		}
	}
	load := map[string]int64{}
	wload := map[string]float64{}
	for _, t := range tenants {
		load[t.Shard] += t.Rows
		wload[t.Shard] += t.Writes
	}
	if len(tenants) == 0 {
		fmt.Fprintln(stderr, "rebalancer plan: no records visible on any shard; a role under row-level security sees none (use the owner or a role that bypasses it)")
	}
	props := moves.Plan(pshards, tenants, *maxMoves)
	after := maps.Clone(load)
	wafter := maps.Clone(wload)
	for _, p := range props {
		after[p.From] -= p.Rows
		after[p.To] += p.Rows
		wafter[p.From] -= p.Writes
		wafter[p.To] += p.Writes
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tREGION\tSTATE\tROWS NOW\tROWS AFTER\tWRITES/S NOW\tWRITES/S AFTER")
	sort.Slice(sm.Shards, func(i, j int) bool { return sm.Shards[i].ID < sm.Shards[j].ID })
	for _, s := range sm.Shards {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%.2f\t%.2f\n", s.ID, s.HomeRegion, s.State, load[s.ID], after[s.ID], wload[s.ID], max(wafter[s.ID], 0))
	}
	tw.Flush()
	if len(props) == 0 {
		fmt.Fprintln(stdout, "\nno moves proposed: the shards are as even as moving whole tenants makes them")
		return nil
	}
	fmt.Fprintf(stdout, "\n%d moves proposed (rows and write rates over the last %s; reads are not counted):\n", len(props), *window)
	for _, p := range props {
		fmt.Fprintf(stdout, "  rebalancer move %s --to %s    # %d rows, %.2f writes/s from %s\n", p.Tenant, p.To, p.Rows, p.Writes, p.From)
	}
	return nil
}

// tenantLoad counts each tenant's live records on one shard's primary, and its writes per
// second over the last window (its outbox rows created since: one per committed write).
func tenantLoad(ctx context.Context, dsn string, window, timeout time.Duration) (rows map[string]int64, writes map[string]float64, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close(context.Background())
	rows = map[string]int64{}
	if err := scanCounts(ctx, conn, func(t string, n int64) { rows[t] = n },
		`SELECT tenant_id, count(*) FROM records WHERE NOT deleted GROUP BY tenant_id`); err != nil {
		return nil, nil, err
	}
	writes = map[string]float64{}
	if err := scanCounts(ctx, conn, func(t string, n int64) { writes[t] = float64(n) / window.Seconds() },
		`SELECT tenant_id, count(*) FROM outbox WHERE created_at > now() - $1::interval GROUP BY tenant_id`, window.String()); err != nil {
		return nil, nil, err
	}
	return rows, writes, nil
}

// scanCounts runs a (tenant, count) query and hands each row to add.
func scanCounts(ctx context.Context, conn *pgx.Conn, add func(string, int64), sql string, args ...any) error {
	rs, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	for rs.Next() {
		var t string
		var n int64
		if err := rs.Scan(&t, &n); err != nil {
			return err
		}
		add(t, n)
	}
	return rs.Err()
}
