package sim

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/meridian-dev/meridian/internal/latency"
	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/migrations"
)

// start brings the cluster up step by step; Up stops what it started on error.
func (c *Cluster) start(ctx context.Context) error {
	regions := c.regions()
	n := len(regions)
	// Steps: proxies, primaries, migrations, standbys, redis, nats, routers, map bootstrap,
	// api nodes, readiness, control endpoint.
	p := newProgress(c.opts.Progress, 11)
	if c.opts.Latency {
		p.logf("latency mode: cross-region links delayed by the topology's round trips")
	}

	if err := p.step("latency proxies", c.startProxies); err != nil {
		return err
	}
	if err := p.step(fmt.Sprintf("postgres primaries (%d regions)", n), func() error {
		return parallel(regions, func(r string) error { return c.startPrimary(ctx, r) })
	}); err != nil {
		return err
	}
	if err := p.step(fmt.Sprintf("migrations on %d shards", len(c.topo.Shards())), func() error {
		return c.migrate(ctx)
	}); err != nil {
		return err
	}
	if err := p.step(fmt.Sprintf("hot standbys (%d)", n*(n-1)), func() error {
		return parallel(regions, func(r string) error { return c.startStandbys(ctx, r) })
	}); err != nil {
		return err
	}
	if err := p.step("redis per region", func() error {
		return parallel(regions, func(r string) error { return c.startRedis(ctx, r) })
	}); err != nil {
		return err
	}
	if err := p.step("nats per region, joined by gateways", func() error { return c.startNATS(ctx) }); err != nil {
		return err
	}
	if err := p.step("routers (shard-map Raft voters)", func() error { return c.startRouters(ctx) }); err != nil {
		return err
	}
	if err := p.step("shard map bootstrap", func() error { return c.bootstrapMap(ctx) }); err != nil {
		return err
	}
	if err := p.step("api nodes", func() error { return c.startAPIs(ctx) }); err != nil {
		return err
	}
	if err := p.step("rebalancer (move controller)", func() error { return c.startRebalancer(ctx) }); err != nil {
		return err
	}
	if err := p.step("every node ready", func() error { return c.waitReady(ctx) }); err != nil {
		return err
	}
	return p.step("control endpoint and cluster.json", func() error {
		if err := c.startControl(); err != nil {
			return err
		}
		return WriteClusterFile(c.opts.Dir, c.Info())
	})
}

func (c *Cluster) startProxies() error {
	if !c.opts.Latency {
		return nil
	}
	m := latency.New()
	c.proxies = m
	c.onStop(func() { _ = m.Close() })
	host := c.topo.Host()
	for _, px := range c.topo.Proxies() {
		listen := host + ":" + strconv.Itoa(px.Listen)
		target := host + ":" + strconv.Itoa(px.Target)
		if _, err := m.Add(px.Name, listen, target, px.RTT, px.From, px.To); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) startPrimary(ctx context.Context, region string) error {
	dir, err := c.regionDir(region, "pg-primary")
	if err != nil {
		return err
	}
	pg, err := localsrv.StartPostgres(ctx, localsrv.PostgresOptions{
		Dir:  dir,
		Port: c.ports(region).Postgres,
		// synchronous_commit on, as in production: with it off, WAL reaches the standbys up to
		// wal_writer_delay late and read-your-writes reads fall back to the primary.
		Settings: primarySettings(),
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.primary[region] = pg
	c.mu.Unlock()
	// Stop whichever instance is current: Restart may have replaced pg.
	c.onStop(func() { _ = c.primaryOf(region).Stop() })
	for _, s := range c.topo.ShardsOf(region) {
		if err := pg.CreateDatabase(ctx, s.Database); err != nil {
			return fmt.Errorf("create database %s: %w", s.Database, err)
		}
	}
	return nil
}

func (c *Cluster) migrate(ctx context.Context) error {
	dsns := map[string]string{}
	for _, s := range c.topo.Shards() {
		dsns[s.ID] = c.primary[s.HomeRegion].DSN(s.Database)
	}
	results, err := migrations.Apply(ctx, dsns)
	if err != nil {
		return err
	}
	for _, r := range results {
		if r.Err != nil {
			return fmt.Errorf("shard %s: %w", r.Shard, r.Err)
		}
	}
	return nil
}

// startStandbys starts, in region, a hot standby of every other region's primary. In latency
// mode the standby streams WAL through the region pair's proxy.
func (c *Cluster) startStandbys(ctx context.Context, region string) error {
	for _, src := range c.regions() {
		if src == region {
			continue
		}
		dir, err := c.regionDir(region, "pg-standby-of-"+src)
		if err != nil {
			return err
		}
		sb, err := localsrv.StartStandby(ctx, c.primary[src], localsrv.PostgresOptions{
			Dir:         dir,
			Port:        c.ports(region).Standby[src],
			PrimaryAddr: c.addr(region, src, c.ports(src).Postgres),
			Settings:    standbySettings(),
		})
		if err != nil {
			return fmt.Errorf("standby of %s: %w", src, err)
		}
		c.mu.Lock()
		if c.standby[region] == nil {
			c.standby[region] = map[string]*localsrv.Postgres{}
		}
		c.standby[region][src] = sb
		c.mu.Unlock()
		c.onStop(func() { _ = c.standbyOf(region, src).Stop() })
	}
	return nil
}

func (c *Cluster) startRedis(ctx context.Context, region string) error {
	dir, err := c.regionDir(region, "redis")
	if err != nil {
		return err
	}
	r, err := localsrv.StartRedis(ctx, localsrv.RedisOptions{Dir: dir, Port: c.ports(region).Redis})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.redis[region] = r
	c.mu.Unlock()
	c.onStop(func() { _ = r.Stop() })
	return nil
}

// waitReady polls every router's and API node's /readyz.
func (c *Cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	host := c.topo.Host()
	for _, r := range c.regions() {
		for i, n := range c.topo.Routers(r) {
			if err := waitHTTP(ctx, c.routers[r][i], fmt.Sprintf("http://%s:%d/readyz", host, n.HTTP)); err != nil {
				return err
			}
			// Through the loop too: it hands /readyz to the router's net/http server, so an
			// answer means the listener is up and its detaching works.
			if n.Loop != 0 {
				if err := waitHTTP(ctx, c.routers[r][i], fmt.Sprintf("http://%s:%d/readyz", host, n.Loop)); err != nil {
					return fmt.Errorf("%s's loop listener: %w", n.ID, err)
				}
			}
		}
		for i, n := range c.topo.APINodes(r) {
			if err := waitHTTP(ctx, c.apis[r][i], fmt.Sprintf("http://%s:%d/readyz", host, n.HTTP)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Info returns the cluster file describing this cluster.
func (c *Cluster) Info() *ClusterFile {
	host := c.topo.Host()
	f := &ClusterFile{
		Regions:      map[string]RegionEndpoints{},
		DevJWTSecret: c.jwtSecret,
		AdminToken:   c.adminToken,
		ClusterToken: c.clusterToken,
		Control:      c.control,
		Latency:      c.opts.Latency,
		Dir:          c.opts.Dir,
	}
	for _, r := range c.regions() {
		ports := c.ports(r)
		e := RegionEndpoints{
			Redis: fmt.Sprintf("%s:%d", host, ports.Redis),
			NATS:  fmt.Sprintf("nats://%s:%d", host, ports.NATSClient),
			Postgres: PostgresEndpoints{
				Shards:   map[string]string{},
				Standbys: map[string]string{},
			},
		}
		for _, n := range c.topo.Routers(r) {
			u := fmt.Sprintf("http://%s:%d", host, n.HTTP)
			e.Routers = append(e.Routers, u)
			e.Metrics = append(e.Metrics, u+"/metrics")
		}
		e.Router = e.Routers[0]
		e.RouterLoops = c.routerLoopURLs(r)
		if len(e.RouterLoops) > 0 {
			e.RouterLoop = e.RouterLoops[0]
		}
		for _, n := range c.topo.APINodes(r) {
			u := fmt.Sprintf("http://%s:%d", host, n.HTTP)
			e.API = append(e.API, u)
			e.Metrics = append(e.Metrics, u+"/metrics")
		}
		if pg := c.primary[r]; pg != nil {
			e.Postgres.Primary = pg.DSN("postgres")
			for _, s := range c.topo.ShardsOf(r) {
				e.Postgres.Shards[s.ID] = pg.DSN(s.Database)
			}
		}
		for src, sb := range c.standby[r] {
			e.Postgres.Standbys[src] = sb.DSN("postgres")
		}
		f.Regions[r] = e
	}
	return f
}
