// Package sim is the local multi-region launcher behind `make up`, `make demo` and `make down`
// (DESIGN.md §9): from the topology file it starts, per region, a Postgres primary holding the
// shards homed there and a hot standby of every other region's primary, Redis, NATS (gateways
// between regions), routers (the shard-map Raft voters) and API nodes; bootstraps the shard
// map; applies migrations to every shard; waits until all are ready, printing progress; writes
// .meridian/cluster.json; and stops everything it started, in reverse order, on Down.
//
// In latency mode every connection that crosses regions dials a Toxiproxy proxy of the region
// pair (internal/latency) that adds half the pair's round trip each way; the same proxies cut a
// region off for fault tests (Partition, Heal).
//
// It never touches anything it did not start, and it leaves no process, port or directory
// behind after Down. Tests use it through Up with a topology on a private port range.
package sim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/meridian-dev/meridian/internal/latency"
	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/topology"
)

// Options configure Up. The zero value of each field is documented.
type Options struct {
	// Topology is the validated topology to run. Required.
	Topology *topology.Topology
	// Dir is the state directory (cluster.json, logs, data). Required; created if missing.
	Dir string
	// BinDir holds the router and api binaries. "" = the directory of the running executable.
	BinDir string
	// Latency routes every cross-region connection through a delaying proxy.
	Latency bool
	// Progress receives one line per step. nil = discard.
	Progress io.Writer
	// Logger receives structured logs. nil = discard.
	Logger *slog.Logger
	// ReadyTimeout bounds the whole start-up. 0 = 3 minutes.
	ReadyTimeout time.Duration
}

// Cluster is a running local cluster.
type Cluster struct {
	opts Options
	topo *topology.Topology
	log  *slog.Logger

	jwtSecret    string
	clusterToken string
	adminToken   string

	mu      sync.Mutex
	primary map[string]*localsrv.Postgres
	standby map[string]map[string]*localsrv.Postgres // region -> source region -> standby
	redis   map[string]*localsrv.Redis
	nats    map[string]*child
	// rebalancer is the move controller and rebalancerURL its /metrics and /healthz.
	rebalancer    *child
	rebalancerURL string
	routers       map[string][]*child
	apis          map[string][]*child
	proxies       *latency.Manager // nil without latency mode
	stops         []func()         // in start order; Down runs them backwards
	downOnce      sync.Once
	control       string
}

// Up starts the whole topology and returns once every part is ready. On any failure (or when
// ctx ends) it stops whatever it had started before returning the error.
func Up(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if opts.Topology == nil || opts.Dir == "" {
		return nil, errors.New("sim: Options.Topology and Options.Dir are required")
	}
	if opts.BinDir == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		opts.BinDir = filepath.Dir(exe)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 3 * time.Minute
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	opts.Dir = dir
	// The data dir must be traversable by the unprivileged Postgres user.
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, err
	}
	_ = os.Chmod(dir, 0o755)
	_ = os.Chmod(filepath.Join(dir, "data"), 0o755)
	ctx, cancel := context.WithTimeout(ctx, opts.ReadyTimeout)
	defer cancel()

	c := &Cluster{
		opts: opts, topo: opts.Topology, log: opts.Logger,
		primary: map[string]*localsrv.Postgres{},
		standby: map[string]map[string]*localsrv.Postgres{},
		redis:   map[string]*localsrv.Redis{},
		nats:    map[string]*child{},
		routers: map[string][]*child{},
		apis:    map[string][]*child{},
	}
	c.jwtSecret = opts.Topology.DevJWTSecret()
	if c.jwtSecret == "" {
		c.jwtSecret = randomHex(32)
	}
	c.clusterToken = randomHex(24)
	if c.adminToken, err = MintToken(c.jwtSecret, TokenSpec{Subject: "sim-admin", Scope: "admin", TTL: 30 * 24 * time.Hour}); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Down()
		}
	}()
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// regions returns the topology's region ids in order.
func (c *Cluster) regions() []string { return c.topo.Regions() }

// ports returns a region's port plan (the topology is validated, so it can't fail).
func (c *Cluster) ports(region string) topology.RegionPorts {
	p, err := c.topo.Ports(region)
	if err != nil {
		panic(err)
	}
	return p
}

// addr is the address a process in region from dials to reach port of region to: the port
// itself within a region or without latency mode, else the pair's proxy.
func (c *Cluster) addr(from, to string, port int) string {
	host := c.topo.Host()
	if from == to || !c.opts.Latency {
		return host + ":" + strconv.Itoa(port)
	}
	p, err := c.topo.ProxyPort(from, to, port)
	if err != nil {
		panic(err)
	}
	return host + ":" + strconv.Itoa(p)
}

func (c *Cluster) onStop(f func()) {
	c.mu.Lock()
	c.stops = append(c.stops, f)
	c.mu.Unlock()
}

// Down stops everything Up started, newest first, and removes the data directory. It is safe
// to call more than once.
func (c *Cluster) Down() {
	c.downOnce.Do(func() {
		c.mu.Lock()
		stops := slices.Clone(c.stops)
		c.mu.Unlock()
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		_ = os.RemoveAll(filepath.Join(c.opts.Dir, "data"))
		_ = os.Remove(filepath.Join(c.opts.Dir, "cluster.json"))
	})
}

// regionDir is a region's data directory (0755 so the Postgres user can traverse it).
func (c *Cluster) regionDir(region string, sub ...string) (string, error) {
	d := filepath.Join(append([]string{c.opts.Dir, "data", region}, sub...)...)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", err
	}
	_ = os.Chmod(filepath.Join(c.opts.Dir, "data", region), 0o755)
	return d, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

// parallel runs f for every region at once and joins the errors.
func parallel(regions []string, f func(region string) error) error {
	errs := make([]error, len(regions))
	var wg sync.WaitGroup
	for i, r := range regions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(r); err != nil {
				errs[i] = fmt.Errorf("%s: %w", r, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
