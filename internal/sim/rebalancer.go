package sim

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/meridian-dev/meridian/internal/localsrv"
)

// KindRebalancer is the move controller (`rebalancer serve`), one per cluster.
const KindRebalancer = "rebalancer"

// startRebalancer starts the move controller in the first region (DESIGN.md §9: "then the
// rebalancer"), reaching every other region's primary through the latency proxies, like that
// region's API nodes. It knows every router as a map address, its own region's first (see
// mapAddrsFrom): its lease renewals must not stop because one region's routers are slow.
func (c *Cluster) startRebalancer(ctx context.Context) error {
	r := c.regions()[0]
	dir, err := c.regionDir(r, "rebalancer")
	if err != nil {
		return err
	}
	port, err := localsrv.FreePort()
	if err != nil {
		return err
	}
	host := c.topo.Host()
	args := []string{"serve",
		"-region", r,
		"-map-addrs", strings.Join(c.mapAddrsFrom(r), ","),
		"-db-user", "meridian_app",
		"-listen", fmt.Sprintf("%s:%d", host, port),
		"-holder", "sim-" + r,
	}
	if via := c.primaryDialVia(r); via != "" {
		args = append(args, "-pg-dial-via", via)
	}
	env := []string{"MERIDIAN_CLUSTER_TOKEN=" + c.clusterToken}
	ch, err := startChild("rebalancer", filepath.Join(c.opts.BinDir, "rebalancer"), args, env, filepath.Join(dir, "rebalancer.log"))
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.rebalancer, c.rebalancerURL = ch, fmt.Sprintf("http://%s:%d", host, port)
	c.mu.Unlock()
	c.onStop(func() { ch.stop(10 * time.Second) })
	return waitHTTP(ctx, ch, c.rebalancerURL+"/healthz")
}

// mapAddrsFrom lists every router as region from reaches it (through the latency proxies in
// latency mode), from's own routers first. The shard-map client uses the first that answers
// and moves on when one fails, so the local routers serve while they can and the others keep
// a controller's lease renewals and commands going when they cannot (an earlier run lost the
// lease for 36 s under a fence while its one region's router was overloaded).
func (c *Cluster) mapAddrsFrom(from string) []string {
	out := c.routerURLs(from)
	for _, r := range c.regions() {
		if r == from {
			continue
		}
		for _, n := range c.topo.Routers(r) {
			out = append(out, "http://"+c.addr(from, r, n.HTTP))
		}
	}
	return out
}
