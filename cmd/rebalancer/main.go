// Command rebalancer will execute tenant moves recorded in the shard map (DESIGN.md §8) and is
// the operator's CLI for them. Today it only reads: `rebalancer status` prints the shard map's
// shards, slot counts, pins and moves. The move controller and the move, plan and cancel
// commands are not built yet, and say so instead of pretending.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meridian-dev/meridian/shardmap"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rebalancer status [-map URL,...] [-cluster-token T]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "status":
		if err := status(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "rebalancer:", err)
			os.Exit(1)
		}
	case "move", "plan", "cancel", "run":
		fmt.Fprintf(os.Stderr, "rebalancer: %q is not built yet (tenant moves, DESIGN.md §8, are a later issue)\n", os.Args[1])
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "rebalancer: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

func status(args []string) error {
	fs := flag.NewFlagSet("status", flag.ExitOnError)
	addrs := fs.String("map", os.Getenv("MERIDIAN_MAP_ADDRS"), "comma-separated router base URLs (MERIDIAN_MAP_ADDRS)")
	token := fs.String("cluster-token", os.Getenv("MERIDIAN_CLUSTER_TOKEN"), "cluster token (MERIDIAN_CLUSTER_TOKEN)")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	_ = fs.Parse(args)
	if *addrs == "" || *token == "" {
		return fmt.Errorf("-map and -cluster-token are required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	c := shardmap.NewClient(shardmap.ClientConfig{Addrs: strings.Split(*addrs, ","), Token: *token})
	go func() { _ = c.Run(ctx) }()
	if err := c.WaitVersion(ctx, 1); err != nil {
		return fmt.Errorf("no shard map from %s: %w", *addrs, err)
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
	fmt.Printf("shard map version %d, %d slots\n\n", m.Version(), m.SlotCount())
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tHOME\tSTATE\tSLOTS\tPINNED TENANTS")
	shards := m.Shards()
	sort.Slice(shards, func(i, j int) bool { return shards[i].ID < shards[j].ID })
	for _, s := range shards {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", s.ID, s.HomeRegion, s.State, slots[s.ID], pins[s.ID])
	}
	tw.Flush()
	moves := m.Moves()
	fmt.Printf("\n%d moves\n", len(moves))
	for _, mv := range moves {
		fmt.Printf("  %s %s %s->%s %s rows %d/%d\n", mv.ID, mv.Tenant, mv.From, mv.To, mv.Phase, mv.RowsCopied, mv.RowsTotal)
	}
	return nil
}
