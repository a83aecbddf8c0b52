package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"

	gossip "github.com/meridian-dev/meridian/region"
)

// GossipConfig says how an API node joins the region gossip cluster so routers discover it.
type GossipConfig struct {
	// Region is the node's region (required).
	Region string
	// URL is the base URL routers use to reach this node, e.g. http://10.0.0.5:8081 (required).
	URL string
	// Addr is the memberlist bind "host:port"; port 0 = a free port chosen by the kernel.
	Addr string
	// Join lists gossip addresses of existing members; empty = start alone (others join us).
	Join []string
	// Memberlist is the base memberlist configuration; nil = memberlist.DefaultLANConfig().
	Memberlist *memberlist.Config
	// Logger receives gossip logs; nil = slog.Default().
	Logger *slog.Logger
}

// JoinGossip starts this node's gossip membership with Meta{Region, RoleAPI, HTTPAddr: URL,
// Health: ok} and joins cfg.Join. A failed join is logged, not returned: the other members may
// start later and join us. Stop it with LeaveGossip.
func JoinGossip(ctx context.Context, cfg GossipConfig) (*gossip.Cluster, error) {
	if cfg.Region == "" || cfg.URL == "" {
		return nil, errors.New("api: gossip needs a region and an advertised URL")
	}
	host, portS, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("api: gossip addr: %w", err)
	}
	port, err := strconv.Atoi(portS)
	if err != nil {
		return nil, fmt.Errorf("api: gossip addr %q: bad port", cfg.Addr)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	c, err := gossip.New(gossip.Config{BindAddr: host, BindPort: port, Memberlist: cfg.Memberlist, Logger: log,
		Meta: gossip.Meta{Region: cfg.Region, Role: gossip.RoleAPI, HTTPAddr: cfg.URL, Health: gossip.HealthOK}})
	if err != nil {
		return nil, err
	}
	if len(cfg.Join) > 0 {
		if _, err := c.Join(ctx, cfg.Join); err != nil {
			log.Warn("gossip join failed", "err", err)
		}
	}
	return c, nil
}

// LeaveGossip announces HealthDraining so routers stop picking this node, leaves the cluster
// gracefully and shuts the membership down. Call it before the HTTP server stops.
func LeaveGossip(ctx context.Context, c *gossip.Cluster) error {
	if c == nil {
		return nil
	}
	uctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	errs := []error{c.UpdateMeta(uctx, func(m *gossip.Meta) { m.Health = gossip.HealthDraining })}
	errs = append(errs, c.Leave(uctx), c.Shutdown())
	return errors.Join(errs...)
}
