package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meridian-dev/meridian/internal/localsrv"
)

// The kinds of process a cluster runs (ProcessInfo.Kind).
const (
	KindRouter  = "router"
	KindAPI     = "api"
	KindPrimary = "primary"
	KindStandby = "standby"
	KindRedis   = "redis"
	KindNATS    = "nats"
)

// The errors of Kill and Restart.
var (
	// ErrNoProcess is a name the cluster runs no process under.
	ErrNoProcess = errors.New("sim: no such process")
	// ErrRunning is a Restart of a process that still runs (Kill it first).
	ErrRunning = errors.New("sim: process is running")
)

// ProcessInfo is one process the cluster runs, as the fault suite sees it (GET /processes).
type ProcessInfo struct {
	// Name is unique: a node id ("us-east-router-1", "us-east-api-1"), "postgres-<region>",
	// "standby-<region>-of-<source>", "redis-<region>" or "nats-<region>".
	Name string `json:"name"`
	// Kind is one of KindRouter, KindAPI, KindPrimary, KindStandby, KindRedis, KindNATS,
	// KindRebalancer.
	Kind   string `json:"kind"`
	Region string `json:"region"`
	// Source is, for a standby, the region whose primary it replicates.
	Source string `json:"source,omitempty"`
	// URL is a router's or API node's HTTP base URL or a NATS server's client URL; DSN a
	// Postgres instance's superuser DSN.
	URL     string `json:"url,omitempty"`
	DSN     string `json:"dsn,omitempty"`
	Pid     int    `json:"pid"`
	Running bool   `json:"running"`
}

// primarySettings are the settings of a region's primary, on its first start and on Restart.
// synchronous_commit on, as in production: with it off, WAL reaches the standbys up to
// wal_writer_delay late and read-your-writes reads fall back to the primary.
func primarySettings() map[string]string {
	return map[string]string{"max_connections": "300", "synchronous_commit": "on"}
}

// standbySettings are the settings of a hot standby, on its first start and on Restart.
func standbySettings() map[string]string {
	return map[string]string{"max_connections": "300"}
}

func (c *Cluster) primaryOf(region string) *localsrv.Postgres {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.primary[region]
}

func (c *Cluster) standbyOf(region, src string) *localsrv.Postgres {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.standby[region][src]
}

// Processes lists every router, API node, Postgres instance, Redis and NATS server the cluster
// runs, sorted by name.
func (c *Cluster) Processes() []ProcessInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []ProcessInfo
	alive := func(done <-chan struct{}) bool {
		select {
		case <-done:
			return false
		default:
			return true
		}
	}
	host := c.topo.Host()
	for _, r := range c.regions() {
		for i, ch := range c.routers[r] {
			out = append(out, ProcessInfo{Name: ch.name, Kind: KindRouter, Region: r, Pid: ch.pid(), Running: ch.running(),
				URL: fmt.Sprintf("http://%s:%d", host, c.topo.Routers(r)[i].HTTP)})
		}
		for i, ch := range c.apis[r] {
			out = append(out, ProcessInfo{Name: ch.name, Kind: KindAPI, Region: r, Pid: ch.pid(), Running: ch.running(),
				URL: fmt.Sprintf("http://%s:%d", host, c.topo.APINodes(r)[i].HTTP)})
		}
		if pg := c.primary[r]; pg != nil {
			out = append(out, ProcessInfo{Name: "postgres-" + r, Kind: KindPrimary, Region: r, Pid: pg.Pid(),
				Running: alive(pg.Done()), DSN: pg.DSN("postgres")})
		}
		for src, sb := range c.standby[r] {
			out = append(out, ProcessInfo{Name: "standby-" + r + "-of-" + src, Kind: KindStandby, Region: r, Source: src,
				Pid: sb.Pid(), Running: alive(sb.Done()), DSN: sb.DSN("postgres")})
		}
		if rd := c.redis[r]; rd != nil {
			out = append(out, ProcessInfo{Name: "redis-" + r, Kind: KindRedis, Region: r, Pid: rd.Pid(),
				Running: rd.Pid() != 0})
		}
		if ch := c.rebalancer; ch != nil && r == c.regions()[0] {
			out = append(out, ProcessInfo{Name: ch.name, Kind: KindRebalancer, Region: r, Pid: ch.pid(), Running: ch.running(),
				URL: c.rebalancerURL})
		}
		if ch := c.nats[r]; ch != nil {
			out = append(out, ProcessInfo{Name: ch.name, Kind: KindNATS, Region: r, Pid: ch.pid(), Running: ch.running(),
				URL: fmt.Sprintf("nats://%s:%d", host, c.ports(r).NATSClient)})
		}
	}
	slices.SortFunc(out, func(a, b ProcessInfo) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

func (c *Cluster) process(name string) (ProcessInfo, error) {
	for _, p := range c.Processes() {
		if p.Name == name {
			return p, nil
		}
	}
	return ProcessInfo{}, fmt.Errorf("%w: %q", ErrNoProcess, name)
}

// childNamed returns the router or API node called name, or nil.
func (c *Cluster) childNamed(name string) *child {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, group := range []map[string][]*child{c.routers, c.apis} {
		for _, cs := range group {
			for _, ch := range cs {
				if ch.name == name {
					return ch
				}
			}
		}
	}
	for _, ch := range c.nats {
		if ch.name == name {
			return ch
		}
	}
	if c.rebalancer != nil && c.rebalancer.name == name {
		return c.rebalancer
	}
	return nil
}

// Kill sends SIGKILL to the named process (its whole process group; a Postgres postmaster and
// every one of its backends, as a machine losing power would) and returns once it was
// reaped. Killing a process that already exited does nothing. Data directories are kept, so
// Restart brings the process back with its state (Redis comes back empty: it runs without
// persistence).
func (c *Cluster) Kill(name string) error {
	p, err := c.process(name)
	if err != nil {
		return err
	}
	if !p.Running {
		return nil
	}
	switch p.Kind {
	case KindRouter, KindAPI, KindNATS, KindRebalancer:
		c.childNamed(name).kill()
	case KindPrimary, KindStandby:
		pg := c.primaryOf(p.Region)
		if p.Kind == KindStandby {
			pg = c.standbyOf(p.Region, p.Source)
		}
		killPostgres(pg.Pid())
		<-pg.Done()
	case KindRedis:
		c.mu.Lock()
		rd := c.redis[p.Region]
		c.mu.Unlock()
		if pid := rd.Pid(); pid != 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		// localsrv reaps it at once; Pid turns 0 then.
		for i := 0; i < 500 && rd.Pid() != 0; i++ {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

// Restart starts a process Kill stopped again, with the arguments, port and data directory it
// had, and returns once it accepts connections (a router or API node: once started; callers
// poll its readiness). Restarting a running process is ErrRunning.
func (c *Cluster) Restart(ctx context.Context, name string) error {
	p, err := c.process(name)
	if err != nil {
		return err
	}
	if p.Running {
		return fmt.Errorf("%w: %s", ErrRunning, name)
	}
	switch p.Kind {
	case KindRouter, KindAPI, KindRebalancer:
		return c.childNamed(name).run()
	case KindNATS:
		if err := c.childNamed(name).run(); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		return waitJetStream(wctx, p.URL)
	case KindPrimary:
		old := c.primaryOf(p.Region)
		pg, err := localsrv.StartPostgres(ctx, localsrv.PostgresOptions{Dir: old.Dir(), Port: old.Port(), Settings: primarySettings()})
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.primary[p.Region] = pg
		c.mu.Unlock()
	case KindStandby:
		old := c.standbyOf(p.Region, p.Source)
		// The data directory holds the standby (standby.signal, primary_conninfo), so no new
		// base backup is taken: it resumes streaming from where it was.
		sb, err := localsrv.StartStandby(ctx, c.primaryOf(p.Source), localsrv.PostgresOptions{
			Dir: old.Dir(), Port: old.Port(), Settings: standbySettings(),
			PrimaryAddr: c.addr(p.Region, p.Source, c.ports(p.Source).Postgres),
		})
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.standby[p.Region][p.Source] = sb
		c.mu.Unlock()
	case KindRedis:
		c.mu.Lock()
		rd := c.redis[p.Region]
		c.mu.Unlock()
		return rd.Restart(ctx)
	}
	return nil
}

// killPostgres SIGKILLs a postmaster and all its descendants and returns once they are gone.
// Killing the process group is not enough: every backend calls setsid(), so it is in a group
// of its own and would live on until it noticed its postmaster's death, holding the shared
// memory block a restart refuses to start beside. The postmaster is stopped first so it forks
// nothing while its children are listed.
func killPostgres(pid int) {
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	pids := append(descendants(pid), pid)
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	for i := 0; i < 1000; i++ {
		alive := false
		for _, p := range pids[:len(pids)-1] { // the postmaster is our child: reaped by its waiter
			if syscall.Kill(p, 0) == nil && !zombie(p) {
				alive = true
			}
		}
		if !alive {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// descendants lists the processes below pid, from /proc.
func descendants(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp := ppid(p); pp > 0 {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for _, c := range children[p] {
			out = append(out, c)
			walk(c)
		}
	}
	walk(pid)
	return out
}

// statFields returns the fields of /proc/pid/stat after the command name.
func statFields(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

func ppid(pid int) int {
	f := statFields(pid)
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

func zombie(pid int) bool {
	f := statFields(pid)
	return len(f) > 0 && f[0] == "Z"
}
