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
// rebalancer"), watching the map through that region's routers and reaching every other
// region's primary through the latency proxies, like that region's API nodes.
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
		"-map-addrs", strings.Join(c.routerURLs(r), ","),
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
