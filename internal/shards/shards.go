// Package shards owns the API node's connections to every shard, by role: one Conns per
// Postgres role (the app role for requests, optionally the worker role for cross-tenant jobs),
// holding a pgxpool per shard primary and per own-region standby, opened on first use from the
// shard map's endpoints and replaced when an endpoint moves.
//
// It only opens, hands out, pings and closes pools. It must never run a tenant's statements
// itself, choose a read's source or decide anything about health: the records store
// (internal/records/pgstore) does what a request does, replication decides where reads go. Tests
// open Conns against real Postgres clusters from internal/testenv.
package shards

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Errors returned by Conns.
var (
	// ErrNoEndpoint is returned when the shard map names no endpoint for the shard's home region.
	ErrNoEndpoint = errors.New("shards: shard has no endpoint for its home region")
)

// Info is one shard of the map: its database and the host:port of its copy per region.
type Info struct {
	ID, HomeRegion, Database string
	Endpoints                map[string]string // region -> host:port of that region's copy
}

// Config sizes each shard's pgxpool. Zero values take the documented defaults.
type Config struct {
	User, Password   string        // role to connect as; "" user = migrations.AppRole
	MaxConns         int32         // 0 = 10
	MinConns         int32         // 0 = 0
	MaxConnLifetime  time.Duration // 0 = 30m
	MaxConnIdleTime  time.Duration // 0 = 5m
	StatementTimeout time.Duration // 0 = 1s
	IdleInTxTimeout  time.Duration // 0 = 10s
	// Tracer traces every query of every pool, and every batch when it also implements
	// pgx.BatchTracer (tests count a read's round trips with it). nil = no tracing.
	Tracer pgx.QueryTracer
	// DialVia maps a shard endpoint (host:port, as the shard map names it) to the address to
	// dial instead — the local launcher's latency proxy to another region. nil = dial the
	// endpoints themselves.
	DialVia map[string]string
	// AppName is the connections' application_name; "" = "meridian-api".
	AppName string
}

func (c Config) withDefaults() Config {
	if c.User == "" {
		c.User = "meridian_app"
	}
	if c.MaxConns == 0 {
		c.MaxConns = 10
	}
	if c.MaxConnLifetime == 0 {
		c.MaxConnLifetime = 30 * time.Minute
	}
	if c.MaxConnIdleTime == 0 {
		c.MaxConnIdleTime = 5 * time.Minute
	}
	if c.StatementTimeout == 0 {
		c.StatementTimeout = time.Second
	}
	if c.IdleInTxTimeout == 0 {
		c.IdleInTxTimeout = 10 * time.Second
	}
	if c.AppName == "" {
		c.AppName = "meridian-api"
	}
	return c
}

// Conns holds one primary pgxpool per shard, created on first use from the shard map's endpoint
// of the shard's home region, and one pool per shard for the node's own region's copy when that
// copy is a standby (Local). A pool is replaced when its endpoint or database changes.
type Conns struct {
	cfg Config
	mu  sync.Mutex
	// primaries and standbys (shard -> pool) are guarded by mu.
	primaries, standbys map[string]*poolEntry
}

type poolEntry struct {
	addr, db string
	pool     *pgxpool.Pool
}

// New returns an empty set of connections; pools open on first use.
func New(cfg Config) *Conns {
	return &Conns{cfg: cfg.withDefaults(), primaries: map[string]*poolEntry{}, standbys: map[string]*poolEntry{}}
}

// Primary returns the pool of the shard's primary.
func (c *Conns) Primary(ctx context.Context, sh Info) (*pgxpool.Pool, error) {
	addr := sh.Endpoints[sh.HomeRegion]
	if addr == "" {
		return nil, fmt.Errorf("%w: %s", ErrNoEndpoint, sh.ID)
	}
	return c.get(ctx, c.primaries, sh.ID, addr, sh.Database)
}

// Local returns the pool of the shard's copy in region and whether that copy is the primary.
// It is the primary when the shard is homed in region, when region has no endpoint of its own,
// or when region's endpoint is the primary's address.
func (c *Conns) Local(ctx context.Context, sh Info, region string) (*pgxpool.Pool, bool, error) {
	addr := sh.Endpoints[region]
	if region == sh.HomeRegion || addr == "" || addr == sh.Endpoints[sh.HomeRegion] {
		pool, err := c.Primary(ctx, sh)
		return pool, true, err
	}
	pool, err := c.get(ctx, c.standbys, sh.ID, addr, sh.Database)
	return pool, false, err
}

func (c *Conns) get(ctx context.Context, m map[string]*poolEntry, id, addr, db string) (*pgxpool.Pool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := m[id]; ok && e.addr == addr && e.db == db {
		return e.pool, nil
	} else if ok {
		go e.pool.Close() // endpoint moved; let in-flight users finish
	}
	pool, err := c.open(ctx, addr, db)
	if err != nil {
		return nil, err
	}
	m[id] = &poolEntry{addr: addr, db: db, pool: pool}
	return pool, nil
}

func (c *Conns) open(ctx context.Context, addr, db string) (*pgxpool.Pool, error) {
	if via, ok := c.cfg.DialVia[addr]; ok {
		addr = via
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("shards: shard endpoint %q: %w", addr, err)
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword(c.cfg.User, c.cfg.Password), Host: net.JoinHostPort(host, port), Path: "/" + db, RawQuery: "sslmode=disable"}
	if c.cfg.Password == "" {
		u.User = url.User(c.cfg.User)
	}
	pc, err := pgxpool.ParseConfig(u.String())
	if err != nil {
		return nil, err
	}
	pc.MaxConns, pc.MinConns = c.cfg.MaxConns, c.cfg.MinConns
	pc.MaxConnLifetime, pc.MaxConnIdleTime = c.cfg.MaxConnLifetime, c.cfg.MaxConnIdleTime
	pc.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(c.cfg.StatementTimeout.Milliseconds(), 10)
	pc.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = strconv.FormatInt(c.cfg.IdleInTxTimeout.Milliseconds(), 10)
	pc.ConnConfig.RuntimeParams["application_name"] = c.cfg.AppName
	pc.ConnConfig.Tracer = c.cfg.Tracer
	// A dead copy must fail fast so a read can fall back to the primary within its deadline.
	pc.ConnConfig.ConnectTimeout = 2 * time.Second
	return pgxpool.NewWithConfig(ctx, pc)
}

// Each calls f for every open primary pool (metrics, readiness).
func (c *Conns) Each(f func(shard string, pool *pgxpool.Pool)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, e := range c.primaries {
		f(id, e.pool)
	}
}

// EachStandby calls f for every open standby pool (metrics).
func (c *Conns) EachStandby(f func(shard string, pool *pgxpool.Pool)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, e := range c.standbys {
		f(id, e.pool)
	}
}

// Close closes every pool.
func (c *Conns) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range []map[string]*poolEntry{c.primaries, c.standbys} {
		for id, e := range m {
			e.pool.Close()
			delete(m, id)
		}
	}
}
