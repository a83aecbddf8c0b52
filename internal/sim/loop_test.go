package sim

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meridian-dev/meridian/internal/topology"
)

// TestRouterLoopListen: with the topology's router_loop_listen on, every router is started with
// -loop-listen on its loop port and cluster.json records each loop URL (router_loop: the first
// router's, router_loops: all, in routers' order); off (the repository's default), no router
// gets the flag (a router that predates the loop would refuse it) and cluster.json has neither
// key.
func TestRouterLoopListen(t *testing.T) {
	off, err := topology.Load(filepath.Join(repoRoot(t), "deploy", "multi-region", "topology.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	f := off.File()
	f.RouterLoopListen = true
	f.RoutersPerRegion = 2
	on, err := topology.New(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		topo *topology.Topology
		loop bool
	}{{"off", off, false}, {"on", on, true}} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Cluster{topo: tc.topo}
			first := tc.topo.Routers(tc.topo.Regions()[0])[0]
			for _, r := range tc.topo.Regions() {
				var want []string
				for _, n := range tc.topo.Routers(r) {
					args := c.routerArgs(n, first, "/data/raft")
					got, has := flagValue(args, "-loop-listen")
					if has != tc.loop {
						t.Errorf("%s: -loop-listen given %v, want %v: %q", n.ID, has, tc.loop, args)
					}
					if tc.loop {
						addr := fmt.Sprintf("%s:%d", tc.topo.Host(), n.Loop)
						if n.Loop == 0 || got != addr {
							t.Errorf("%s: -loop-listen %q, want %q", n.ID, got, addr)
						}
						if l, _ := flagValue(args, "-listen"); l == got {
							t.Errorf("%s: the loop listens on the HTTP address %s", n.ID, l)
						}
						want = append(want, "http://"+addr)
					}
				}
				e := c.Info().Regions[r]
				if !slices.Equal(e.RouterLoops, want) {
					t.Errorf("%s: router_loops %v, want %v", r, e.RouterLoops, want)
				}
				if tc.loop && (e.RouterLoop != want[0] || len(e.RouterLoops) != len(e.Routers)) {
					t.Errorf("%s: router_loop %q, router_loops %v for routers %v", r, e.RouterLoop, e.RouterLoops, e.Routers)
				}
				if !tc.loop && e.RouterLoop != "" {
					t.Errorf("%s: router_loop %q with the setting off", r, e.RouterLoop)
				}
			}

			dir := t.TempDir()
			if err := WriteClusterFile(dir, c.Info()); err != nil {
				t.Fatal(err)
			}
			back, err := ReadClusterFile(dir)
			if err != nil {
				t.Fatal(err)
			}
			for r, e := range back.Regions {
				if !slices.Equal(e.RouterLoops, c.Info().Regions[r].RouterLoops) || e.RouterLoop != c.Info().Regions[r].RouterLoop {
					t.Errorf("%s: cluster.json read back router_loop %q %v", r, e.RouterLoop, e.RouterLoops)
				}
			}
			b, err := os.ReadFile(filepath.Join(dir, "cluster.json"))
			if err != nil {
				t.Fatal(err)
			}
			raw := string(b)
			both := strings.Contains(raw, `"router_loop"`) && strings.Contains(raw, `"router_loops"`)
			if tc.loop && !both || !tc.loop && strings.Contains(raw, "router_loop") {
				t.Errorf("router_loop_listen %v, cluster.json:\n%s", tc.loop, raw)
			}
		})
	}
}

// flagValue is the value following name in args, and whether name is there.
func flagValue(args []string, name string) (string, bool) {
	i := slices.Index(args, name)
	if i < 0 || i+1 >= len(args) {
		return "", i >= 0
	}
	return args[i+1], true
}

// TestRouterFront: the topology's router_front reaches every router as -front; empty (the
// repository's default) passes no flag, and the router takes its own default.
func TestRouterFront(t *testing.T) {
	base, err := topology.Load(filepath.Join(repoRoot(t), "deploy", "multi-region", "topology.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, front := range []string{"", "loop", "http"} {
		f := base.File()
		f.RouterFront = front
		topo, err := topology.New(f)
		if err != nil {
			t.Fatal(err)
		}
		c := &Cluster{topo: topo}
		first := topo.Routers(topo.Regions()[0])[0]
		for _, r := range topo.Regions() {
			for _, n := range topo.Routers(r) {
				args := c.routerArgs(n, first, "/data/raft")
				got, has := flagValue(args, "-front")
				if has != (front != "") || got != front {
					t.Errorf("router_front %q: %s has -front %q (given %v): %q", front, n.ID, got, has, args)
				}
			}
		}
	}
}
