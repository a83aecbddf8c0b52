package region

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// Defaults of JoinConfig.
const (
	// DefaultPublishEvery is how often Join's publisher asks for a new Status.
	DefaultPublishEvery = time.Second
	// DefaultJoinTimeout bounds Join's attempt to reach the given peers.
	DefaultJoinTimeout = 5 * time.Second
	// departTimeout bounds each of Depart's steps that wait for gossip (draining, leave).
	departTimeout = 2 * time.Second
)

// Status is what a node publishes about itself besides its health.
type Status struct {
	// Lag is the replay lag of the standbys the node reads from (a router: 0).
	Lag time.Duration
	// MapVersion is the version of the node's shard-map copy.
	MapVersion uint64
}

// JoinConfig says how a node joins the gossip cluster. Zero values mean the documented defaults.
type JoinConfig struct {
	// Name is the unique member name; "" = "<region>/<role>/<url>".
	Name string
	// Region is the node's region (required; ids.ValidRegion).
	Region string
	// Role is what the node is (required).
	Role Role
	// URL is the base URL others reach the node's HTTP server at (required).
	URL string
	// Addr is the memberlist bind "host:port" (required); port 0 = a free port chosen by the
	// kernel (see Cluster.Addr). A host of "" binds every address.
	Addr string
	// Join lists gossip addresses of existing members; empty = start alone (others join us).
	Join []string
	// JoinTimeout bounds the attempt to reach Join; 0 = DefaultJoinTimeout.
	JoinTimeout time.Duration
	// Memberlist is the base memberlist configuration (see Config.Memberlist); nil =
	// memberlist.DefaultLANConfig().
	Memberlist *memberlist.Config
	// Logger receives gossip logs; nil = slog.Default().
	Logger *slog.Logger
	// Status, if set, is asked every PublishEvery for the node's lag and map version, which are
	// gossiped when they changed. It should return within its context's deadline (PublishEvery,
	// at least 1 s). nil = nothing but health is published.
	Status func(context.Context) Status
	// PublishEvery is the Status period; 0 = DefaultPublishEvery.
	PublishEvery time.Duration
}

// Join starts this node's gossip membership with Meta{Region, Role, HTTPAddr: URL, Health: ok}
// and the first Status, and contacts cfg.Join. A malformed Addr (ErrBadAddr) or invalid metadata
// (ErrBadMeta) is an error; peers that cannot be reached within JoinTimeout are logged, not
// returned, because they may start later and join us. If ctx ends before a peer answers, the
// membership is shut down and ctx's error returned. Stop the node with Depart.
func Join(ctx context.Context, cfg JoinConfig) (*Cluster, error) {
	host, port, err := splitAddr(cfg.Addr)
	if err != nil {
		return nil, err
	}
	if cfg.URL == "" {
		return nil, fmt.Errorf("%w: no advertised URL", ErrBadMeta)
	}
	every := cfg.PublishEvery
	if every <= 0 {
		every = DefaultPublishEvery
	}
	meta := Meta{Region: cfg.Region, Role: cfg.Role, HTTPAddr: cfg.URL, Health: HealthOK}
	if cfg.Status != nil {
		sctx, cancel := context.WithTimeout(ctx, stepTimeout(every))
		meta = withStatus(meta, cfg.Status(sctx))
		cancel()
	}
	name := cfg.Name
	if name == "" {
		name = cfg.Region + "/" + string(cfg.Role) + "/" + cfg.URL
	}
	c, err := New(Config{Name: name, Meta: meta, BindAddr: host, BindPort: port,
		Memberlist: cfg.Memberlist, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	if len(cfg.Join) > 0 {
		timeout := cfg.JoinTimeout
		if timeout <= 0 {
			timeout = DefaultJoinTimeout
		}
		jctx, cancel := context.WithTimeout(ctx, timeout)
		_, jerr := c.Join(jctx, cfg.Join)
		cancel()
		switch {
		case jerr != nil && ctx.Err() != nil:
			_ = c.Shutdown()
			return nil, fmt.Errorf("region: join %v: %w", cfg.Join, ctx.Err())
		case jerr != nil:
			c.log.Warn("region: no gossip peer answered; continuing alone until one joins us",
				"join", cfg.Join, "err", jerr)
		}
	}
	if cfg.Status != nil {
		pctx, stop := context.WithCancel(context.WithoutCancel(ctx))
		c.stopPublish, c.published = stop, make(chan struct{})
		go c.publish(pctx, cfg.Status, every)
	}
	return c, nil
}

// splitAddr parses a memberlist bind address.
func splitAddr(addr string) (string, int, error) {
	host, portS, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%w: %q: %v", ErrBadAddr, addr, err)
	}
	port, err := strconv.Atoi(portS)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%w: %q: port %q is not a number in [0, 65535]", ErrBadAddr, addr, portS)
	}
	return host, port, nil
}

// withStatus returns m carrying st; a negative lag (clock skew) is published as 0.
func withStatus(m Meta, st Status) Meta {
	m.LagMS = max(st.Lag.Milliseconds(), 0)
	m.MapVersion = st.MapVersion
	return m
}

// publish asks status for the node's state every period and gossips it when it changed
// (UpdateMeta sends nothing for an unchanged value), until ctx ends.
func (c *Cluster) publish(ctx context.Context, status func(context.Context) Status, every time.Duration) {
	defer close(c.published)
	tk := time.NewTicker(every)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		sctx, cancel := context.WithTimeout(ctx, stepTimeout(every))
		st := status(sctx)
		cancel()
		uctx, cancel := context.WithTimeout(ctx, stepTimeout(every))
		err := c.UpdateMeta(uctx, func(m *Meta) { *m = withStatus(*m, st) })
		cancel()
		if err != nil && ctx.Err() == nil && !errors.Is(err, ErrShutdown) {
			c.log.Warn("region: publishing status", "err", err)
		}
	}
}

// stepTimeout bounds one Status call or one metadata broadcast of a publisher running every
// period: the period, but at least a second, so a short period on a loaded machine does not
// turn slow answers into failures.
func stepTimeout(every time.Duration) time.Duration {
	return max(every, time.Second)
}

// stopPublisher ends the publisher, if any, and waits for it.
func (c *Cluster) stopPublisher() {
	if c.stopPublish != nil {
		c.stopPublish()
		<-c.published
	}
}

// Depart takes this node out of the cluster in the order that lets others stop picking it
// first: publish HealthDraining, leave gracefully, shut down. Each gossip step waits at most
// 2 s (less if ctx ends first). A nil Cluster is fine (the node never joined).
func (c *Cluster) Depart(ctx context.Context) error {
	if c == nil {
		return nil
	}
	c.stopPublisher() // so it cannot publish over the draining health
	dctx, cancel := context.WithTimeout(ctx, departTimeout)
	derr := c.UpdateMeta(dctx, func(m *Meta) { m.Health = HealthDraining })
	cancel()
	lctx, cancel := context.WithTimeout(ctx, departTimeout)
	lerr := c.Leave(lctx)
	cancel()
	return errors.Join(derr, lerr, c.Shutdown())
}
