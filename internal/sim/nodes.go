package sim

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/meridian-dev/meridian/internal/topology"
	"github.com/meridian-dev/meridian/shardmap"
)

// startRouters starts every router. The first router of the first region bootstraps the
// shard-map Raft group; the others join through it and become voters (non-voters beyond three).
func (c *Cluster) startRouters(ctx context.Context) error {
	host := c.topo.Host()
	first := c.topo.Routers(c.regions()[0])[0]
	for _, r := range c.regions() {
		for _, n := range c.topo.Routers(r) {
			dir, err := c.regionDir(r, n.ID)
			if err != nil {
				return err
			}
			args := c.routerArgs(n, first, filepath.Join(dir, "raft"))
			env := []string{"MERIDIAN_JWT_SECRET=" + c.jwtSecret, "MERIDIAN_CLUSTER_TOKEN=" + c.clusterToken}
			ch, err := startChild(n.ID, filepath.Join(c.opts.BinDir, "router"), args, env, filepath.Join(dir, "router.log"))
			if err != nil {
				return err
			}
			c.mu.Lock()
			c.routers[r] = append(c.routers[r], ch)
			c.mu.Unlock()
			c.onStop(func() { ch.stop(10 * time.Second) })
			// Each router must answer before the next joins through the first.
			if err := waitHTTP(ctx, ch, fmt.Sprintf("http://%s:%d/healthz", host, n.HTTP)); err != nil {
				return err
			}
		}
	}
	return nil
}

// routerArgs are router n's flags, its Raft data in raftDir; first is the router that
// bootstraps the shard map, which the others join.
func (c *Cluster) routerArgs(n, first topology.Node, raftDir string) []string {
	host, r := c.topo.Host(), n.Region
	args := []string{
		"-region", r,
		"-id", n.ID,
		"-listen", fmt.Sprintf("%s:%d", host, n.HTTP),
		"-raft-addr", fmt.Sprintf("%s:%d", host, n.Raft),
		"-gossip-addr", fmt.Sprintf("%s:%d", host, n.Gossip),
		"-data-dir", raftDir,
		"-redis-addr", fmt.Sprintf("%s:%d", host, c.ports(r).Redis),
		"-api-nodes", c.apiNodeList(r),
		"-tenant-rate", fmt.Sprint(c.topo.RateLimits().TenantRPS),
		"-tenant-burst", fmt.Sprint(c.topo.RateLimits().TenantBurst),
		"-ip-rate", fmt.Sprint(c.topo.RateLimits().IPRPS),
		"-ip-burst", fmt.Sprint(c.topo.RateLimits().IPBurst),
		"-debug-addr", host + ":0", // pprof; the log says where
	}
	// Only when set: a router that predates -front does not know the flag.
	if f := c.topo.RouterFront(); f != "" {
		args = append(args, "-front", f)
	}
	// Only with router_loop_listen: a router that predates the loop does not know the flag.
	if n.Loop != 0 {
		args = append(args, "-loop-listen", fmt.Sprintf("%s:%d", host, n.Loop))
	}
	if n.ID == first.ID {
		args = append(args, "-bootstrap")
	} else {
		args = append(args, "-join", fmt.Sprintf("http://%s:%d", host, first.HTTP),
			"-gossip-join", fmt.Sprintf("%s:%d", host, first.Gossip))
	}
	return args
}

// apiNodeList is the router flag value naming every region's API nodes, as
// "region=url|url;region=url", seen from region from (through the latency proxies in latency
// mode).
func (c *Cluster) apiNodeList(from string) string {
	var parts []string
	for _, r := range c.regions() {
		var urls []string
		for _, n := range c.topo.APINodes(r) {
			urls = append(urls, "http://"+c.addr(from, r, n.HTTP))
		}
		parts = append(parts, r+"="+strings.Join(urls, "|"))
	}
	return strings.Join(parts, ";")
}

// routerLoopURLs are the base URLs of a region's routers' loop listeners (nil when
// router_loop_listen is off).
func (c *Cluster) routerLoopURLs(region string) []string {
	var out []string
	for _, n := range c.topo.Routers(region) {
		if n.Loop != 0 {
			out = append(out, fmt.Sprintf("http://%s:%d", c.topo.Host(), n.Loop))
		}
	}
	return out
}

// routerURLs are the HTTP base URLs of a region's routers.
func (c *Cluster) routerURLs(region string) []string {
	var out []string
	for _, n := range c.topo.Routers(region) {
		out = append(out, fmt.Sprintf("http://%s:%d", c.topo.Host(), n.HTTP))
	}
	return out
}

// bootstrapMap records the topology in the shard map: regions, shards with the address of
// each region's copy (the primary at home, the region's standby elsewhere), and the slot table.
func (c *Cluster) bootstrapMap(ctx context.Context) error {
	host := c.topo.Host()
	cmd := shardmap.Bootstrap{Regions: c.regions(), SlotCount: c.topo.SlotCount()}
	for _, s := range c.topo.Shards() {
		sh := shardmap.Shard{ID: s.ID, HomeRegion: s.HomeRegion, Database: s.Database, Endpoints: map[string]string{}}
		for _, r := range c.regions() {
			if r == s.HomeRegion {
				sh.Endpoints[r] = fmt.Sprintf("%s:%d", host, c.ports(r).Postgres)
			} else {
				sh.Endpoints[r] = fmt.Sprintf("%s:%d", host, c.ports(r).Standby[s.HomeRegion])
			}
		}
		cmd.Shards = append(cmd.Shards, sh)
	}
	var all []string
	for _, r := range c.regions() {
		all = append(all, c.routerURLs(r)...)
	}
	client := shardmap.NewClient(shardmap.ClientConfig{Addrs: all, Token: c.clusterToken, Logger: c.log})
	// The group may still be electing or the others joining: retry until the deadline.
	var last error
	for {
		_, err := client.Apply(ctx, cmd)
		if err == nil || errors.Is(err, shardmap.ErrAlreadyBootstrapped) {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("bootstrap: %w (last: %v)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// startAPIs starts every API node; each watches the map through its own region's routers.
func (c *Cluster) startAPIs(ctx context.Context) error {
	host := c.topo.Host()
	for _, r := range c.regions() {
		for _, n := range c.topo.APINodes(r) {
			dir, err := c.regionDir(r, n.ID)
			if err != nil {
				return err
			}
			args := []string{
				"-region", r,
				"-listen", fmt.Sprintf("%s:%d", host, n.HTTP),
				"-map-addrs", strings.Join(c.routerURLs(r), ","),
				"-db-user", "meridian_app",
				"-worker-db-user", "meridian_worker",
				"-nats-url", c.natsURL(r),
				"-redis-addr", fmt.Sprintf("%s:%d", host, c.ports(r).Redis),
				"-debug-addr", host + ":0", // pprof; the log says where
			}
			// Gossip lets routers learn the node and its health, but it advertises the node's
			// own address: in latency mode routers would then reach remote API nodes around
			// the proxies, so there they use only their (proxied) static lists.
			if !c.opts.Latency {
				args = append(args,
					"-gossip-addr", fmt.Sprintf("%s:%d", host, n.Gossip),
					"-gossip-join", fmt.Sprintf("%s:%d", host, c.topo.Routers(r)[0].Gossip))
			}
			if via := c.primaryDialVia(r); via != "" {
				args = append(args, "-pg-dial-via", via)
			}
			env := []string{"MERIDIAN_JWT_SECRET=" + c.jwtSecret, "MERIDIAN_CLUSTER_TOKEN=" + c.clusterToken}
			ch, err := startChild(n.ID, filepath.Join(c.opts.BinDir, "api"), args, env, filepath.Join(dir, "api.log"))
			if err != nil {
				return err
			}
			c.mu.Lock()
			c.apis[r] = append(c.apis[r], ch)
			c.mu.Unlock()
			c.onStop(func() { ch.stop(10 * time.Second) })
		}
	}
	return nil
}

// primaryDialVia maps every other region's primary to the latency proxy that region from
// dials it through, in the API node's -pg-dial-via format ("" without latency mode), so strong
// and fallback reads of a remote primary pay the round trip too.
func (c *Cluster) primaryDialVia(from string) string {
	if !c.opts.Latency {
		return ""
	}
	var pairs []string
	for _, r := range c.regions() {
		if r == from {
			continue
		}
		port := c.ports(r).Postgres
		pairs = append(pairs, fmt.Sprintf("%s:%d=%s", c.topo.Host(), port, c.addr(from, r, port)))
	}
	return strings.Join(pairs, ",")
}
