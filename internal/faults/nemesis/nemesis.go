package nemesis

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/internal/sim"
)

// Launcher is what the nemesis needs of the launcher: its processes, and killing, restarting
// and cutting them off. sim.Control offers it for a launcher in another process, InProcess for
// a *sim.Cluster in this one.
type Launcher interface {
	Processes(ctx context.Context) ([]sim.ProcessInfo, error)
	Kill(ctx context.Context, name string) error
	Restart(ctx context.Context, name string) error
	Partition(ctx context.Context, region string) error
	Heal(ctx context.Context, region string) error
}

var _ Launcher = sim.Control{}
var _ Launcher = InProcess{}

// InProcess adapts a cluster this process launched to Launcher.
type InProcess struct{ C *sim.Cluster }

// Processes lists the cluster's processes.
func (l InProcess) Processes(context.Context) ([]sim.ProcessInfo, error) { return l.C.Processes(), nil }

// Kill SIGKILLs a process.
func (l InProcess) Kill(_ context.Context, name string) error { return l.C.Kill(name) }

// Restart starts a killed process again.
func (l InProcess) Restart(ctx context.Context, name string) error { return l.C.Restart(ctx, name) }

// Partition cuts a region off.
func (l InProcess) Partition(_ context.Context, region string) error { return l.C.Partition(region) }

// Heal restores a region's links.
func (l InProcess) Heal(_ context.Context, region string) error { return l.C.Heal(region) }

// Config is what a Nemesis works with. Launcher, Cluster and Now are required.
type Config struct {
	Launcher Launcher
	// Cluster is the cluster file (routers and the admin token, to find the Raft leader).
	Cluster *sim.ClusterFile
	// Now reads the run's clock (the workload's), so fault times and operation times compare.
	Now func() time.Duration
	// Log, if set, receives every log line as it happens.
	Log func(string)
	// ReadyTimeout bounds the wait for a restarted router or API node to be ready [60s].
	ReadyTimeout time.Duration
	// Tenants are the workload's tenants, the ones move faults move (target "tenant-<i>" is
	// the i-th). Without them a move fault fails to inject.
	Tenants []string
	// MoveTimeout bounds the wait for a move to end at the end of Run and in HealAll [3m].
	MoveTimeout time.Duration
}

// Nemesis carries out a schedule.
type Nemesis struct {
	cfg    Config
	client *http.Client

	// mu guards the fields below.
	mu       sync.Mutex
	log      []string
	injected int
	// active are the faults injected and not healed yet, by fault (with the leader resolved;
	// a move's target is its tenant).
	active []Fault
	// moves are the moves requested, in order.
	moves []MoveRecord
}

// New returns a nemesis for cfg.
func New(cfg Config) *Nemesis {
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 60 * time.Second
	}
	if cfg.MoveTimeout <= 0 {
		cfg.MoveTimeout = 3 * time.Minute
	}
	return &Nemesis{cfg: cfg, client: &http.Client{Timeout: 5 * time.Second}}
}

// Log returns every line logged so far: one per injection and heal, with its time.
func (n *Nemesis) Log() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.log)
}

// Injected counts the faults injected.
func (n *Nemesis) Injected() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.injected
}

func (n *Nemesis) logf(format string, a ...any) {
	line := fmt.Sprintf("%7.1fs ", n.cfg.Now().Seconds()) + fmt.Sprintf(format, a...)
	n.mu.Lock()
	n.log = append(n.log, line)
	n.mu.Unlock()
	if n.cfg.Log != nil {
		n.cfg.Log(line)
	}
}

// Run carries out steps: at each step's time it injects its faults, holds them, and heals
// them (in healOrder) before the next step — except a move still running, which stays active
// into the next steps until it ends (see moves.go); a step whose time a slow heal overran by
// more than half its hold is skipped and logged. It returns when the schedule is done or ctx
// ends; either way what it injected is healed (with a fresh context if ctx ended), every move
// waited for — HealAll afterwards makes sure.
func (n *Nemesis) Run(ctx context.Context, steps []Step) {
	for _, s := range steps {
		if !n.sleepUntil(ctx, s.At) {
			break
		}
		if late := n.cfg.Now() - s.At; late > s.Hold/2 {
			// A slow heal ran into this step's time: skip it rather than hold it for
			// less than half its time (the plan's times stay the plan's).
			n.logf("skip step %s: %.1fs late", s, late.Seconds())
			continue
		}
		for _, f := range s.Faults {
			n.inject(ctx, f)
		}
		n.sleepUntil(ctx, s.At+s.Hold)
		n.healActive(context.WithoutCancel(ctx), false)
	}
	n.healActive(context.WithoutCancel(ctx), true)
}

// healOrder is the order faults are healed in: links and replay first, then the databases,
// Redis and NATS before the nodes that need them (an API node is not ready while its
// region's primary is down, and its relay and consumer need NATS), the move controller with
// the API nodes (it needs the databases and the map), and moves last: a move ends only once
// its controller, databases and map are back. Every kind of AllKinds has its place
// (TestHealOrderIsComplete).
var healOrder = map[string]int{Partition: 0, PauseReplay: 1, KillPrimary: 2, KillStandby: 3, KillRedis: 4,
	KillNATS: 5, KillRouter: 6, KillLeader: 6, KillAPI: 7, KillRelay: 7, KillRebalancer: 7, Move: 8}

// healAllOrder is the order HealAll restarts processes in, by sim kind: Postgres first, then
// Redis and NATS, then routers and API nodes (they need the others). Every kind of process
// the launcher runs has its place (TestHealOrderIsComplete).
var healAllOrder = map[string]int{sim.KindPrimary: 0, sim.KindStandby: 1, sim.KindRedis: 2, sim.KindNATS: 3,
	sim.KindRouter: 4, sim.KindAPI: 5, sim.KindRebalancer: 6}

// sleepUntil waits until the run's clock reads t; false if ctx ended first.
func (n *Nemesis) sleepUntil(ctx context.Context, t time.Duration) bool {
	d := t - n.cfg.Now()
	if d <= 0 {
		return ctx.Err() == nil
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// inject injects f and remembers it for healing; a fault that cannot be injected is logged.
func (n *Nemesis) inject(ctx context.Context, f Fault) {
	var err error
	switch f.Kind {
	case KillLeader:
		if f.Target, err = n.leader(ctx); err != nil {
			n.logf("inject %s: no leader found: %v", KillLeader, err)
			return
		}
	case KillRelay:
		region := f.Target
		if f.Target, err = n.relay(ctx, region); err != nil {
			n.logf("inject %s %s FAILED: %v", KillRelay, region, err)
			return
		}
	}
	switch f.Kind {
	case KillRouter, KillLeader, KillAPI, KillStandby, KillPrimary, KillRedis, KillNATS, KillRelay, KillRebalancer:
		err = n.cfg.Launcher.Kill(ctx, f.Target)
	case Move:
		target := f.Target
		if f.Target, err = n.moveTenant(ctx, target); err != nil {
			f.Target = target
		}
	case Partition:
		err = n.cfg.Launcher.Partition(ctx, f.Target)
	case PauseReplay:
		err = n.replay(ctx, f.Target, true)
	default:
		err = fmt.Errorf("unknown fault kind %q", f.Kind)
	}
	if err != nil {
		n.logf("inject %s %s FAILED: %v", f.Kind, f.Target, err)
		return
	}
	n.mu.Lock()
	n.active = append(n.active, f)
	n.injected++
	n.mu.Unlock()
	n.logf("inject %s %s", f.Kind, f.Target)
}

// healActive heals the active faults in healOrder; one that fails to heal stays active. A
// move is healed once it has ended: with final, healActive waits for that; without, a move
// still running stays active (into the next step) and is not a failed heal.
func (n *Nemesis) healActive(ctx context.Context, final bool) {
	n.mu.Lock()
	active := slices.Clone(n.active)
	n.mu.Unlock()
	slices.SortStableFunc(active, func(a, b Fault) int { return healOrder[a.Kind] - healOrder[b.Kind] })
	var left []Fault
	for _, f := range active {
		start := n.cfg.Now()
		if f.Kind == Move && !final {
			over, err := n.moveOver(ctx, f.Target, false)
			if err != nil {
				n.logf("move of %s: phase not known now (%v); carried into the next step", f.Target, err)
			}
			if !over {
				left = append(left, f)
				continue
			}
			n.logf("heal %s %s", f.Kind, f.Target)
			continue
		}
		if err := n.heal(ctx, f); err != nil {
			n.logf("heal %s %s FAILED: %v", f.Kind, f.Target, err)
			left = append(left, f)
			continue
		}
		n.logf("heal %s %s (took %.1fs)", f.Kind, f.Target, (n.cfg.Now() - start).Seconds())
	}
	n.mu.Lock()
	n.active = left
	n.mu.Unlock()
}

func (n *Nemesis) heal(ctx context.Context, f Fault) error {
	switch f.Kind {
	case Partition:
		return n.cfg.Launcher.Heal(ctx, f.Target)
	case PauseReplay:
		return n.replay(ctx, f.Target, false)
	case Move:
		_, err := n.moveOver(ctx, f.Target, true)
		return err
	default:
		return n.restart(ctx, f.Target)
	}
}

// restart starts a killed process again and, for a router or API node, waits until it is ready.
func (n *Nemesis) restart(ctx context.Context, name string) error {
	err := n.cfg.Launcher.Restart(ctx, name)
	if err != nil && !errors.Is(err, sim.ErrRunning) {
		return err
	}
	p, err := n.process(ctx, name)
	if err != nil {
		return err
	}
	if p.Kind == sim.KindRebalancer && p.URL != "" {
		return n.waitHealthz(ctx, p)
	}
	if !serves(p) {
		return nil // the launcher's Restart returned once it accepts connections
	}
	return n.waitReady(ctx, p.URL)
}

// serves reports whether p is a router or API node, whose URL answers /readyz (a NATS
// server's URL is its client URL, no HTTP).
func serves(p sim.ProcessInfo) bool {
	return (p.Kind == sim.KindRouter || p.Kind == sim.KindAPI) && p.URL != ""
}

func (n *Nemesis) process(ctx context.Context, name string) (sim.ProcessInfo, error) {
	ps, err := n.cfg.Launcher.Processes(ctx)
	if err != nil {
		return sim.ProcessInfo{}, err
	}
	for _, p := range ps {
		if p.Name == name {
			return p, nil
		}
	}
	return sim.ProcessInfo{}, fmt.Errorf("%w: %s", sim.ErrNoProcess, name)
}

// waitReady polls url/readyz until it answers 200, within ReadyTimeout.
func (n *Nemesis) waitReady(ctx context.Context, url string) error {
	return n.waitPath(ctx, url, "/readyz")
}

// waitPath polls url+path until it answers 200, within ReadyTimeout.
func (n *Nemesis) waitPath(ctx context.Context, url, path string) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ReadyTimeout)
	defer cancel()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+path, nil)
		resp, err := n.client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", path, resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w", url, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// replay pauses or resumes the named standby's WAL replay, as the superuser.
func (n *Nemesis) replay(ctx context.Context, name string, pause bool) error {
	p, err := n.process(ctx, name)
	if err != nil {
		return err
	}
	if p.Kind != sim.KindStandby {
		return fmt.Errorf("%s is no standby", name)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DSN)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	q := "SELECT pg_wal_replay_resume()"
	if pause {
		q = "SELECT pg_wal_replay_pause()"
	}
	_, err = conn.Exec(ctx, q)
	return err
}

// leader asks the routers which one leads the shard map (GET /admin/v1/regions) and returns
// its name.
func (n *Nemesis) leader(ctx context.Context) (string, error) {
	var last error
	regions := make([]string, 0, len(n.cfg.Cluster.Regions))
	for r := range n.cfg.Cluster.Regions {
		regions = append(regions, r)
	}
	slices.Sort(regions)
	for _, r := range regions {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.cfg.Cluster.Regions[r].Router+"/admin/v1/regions", nil)
		req.Header.Set("Authorization", "Bearer "+n.cfg.Cluster.AdminToken)
		resp, err := n.client.Do(req)
		if err != nil {
			last = err
			continue
		}
		var ans struct {
			Leader string `json:"leader"`
		}
		err = json.NewDecoder(resp.Body).Decode(&ans)
		resp.Body.Close()
		if err != nil || ans.Leader == "" {
			last = fmt.Errorf("via %s: %d, leader %q, %v", r, resp.StatusCode, ans.Leader, err)
			continue
		}
		id, _, _ := strings.Cut(ans.Leader, " ")
		return id, nil
	}
	return "", last
}

// relay names the API node of region that runs its outbox relay: the one whose /metrics shows
// meridian_relay_active 1 for a shard, else, when the region has one API node, that one.
func (n *Nemesis) relay(ctx context.Context, region string) (string, error) {
	ps, err := n.cfg.Launcher.Processes(ctx)
	if err != nil {
		return "", err
	}
	var nodes []sim.ProcessInfo
	for _, p := range ps {
		if p.Kind == sim.KindAPI && p.Region == region {
			nodes = append(nodes, p)
		}
	}
	slices.SortFunc(nodes, func(a, b sim.ProcessInfo) int { return strings.Compare(a.Name, b.Name) })
	for _, p := range nodes {
		if p.Running && p.URL != "" && n.relayActive(ctx, p.URL) {
			return p.Name, nil
		}
	}
	switch {
	case len(nodes) == 1:
		return nodes[0].Name, nil
	case len(nodes) == 0:
		return "", fmt.Errorf("region %s runs no API node", region)
	}
	return "", fmt.Errorf("no API node of %s shows an active relay (meridian_relay_active) in its /metrics", region)
}

// relayActive reports whether the node's /metrics has a meridian_relay_active series at 1.
func (n *Nemesis) relayActive(ctx context.Context, url string) bool {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/metrics", nil)
	resp, err := n.client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		name, rest, _ := strings.Cut(sc.Text(), " ")
		if name == "meridian_relay_active" || strings.HasPrefix(name, "meridian_relay_active{") {
			if i := strings.LastIndexByte(sc.Text(), '}'); i >= 0 {
				rest = sc.Text()[i+1:]
			}
			// The value, then perhaps a timestamp.
			if f := strings.Fields(rest); len(f) > 0 {
				if v, err := strconv.ParseFloat(f[0], 64); err == nil && v == 1 {
					return true
				}
			}
		}
	}
	return false
}

// HealAll leaves the cluster whole: it heals what is still active, restarts every process not
// running, heals every region, resumes replay on every standby, waits until every router
// and API node is ready, and then until every move it requested has ended. It returns what
// it could not do.
func (n *Nemesis) HealAll(ctx context.Context) error {
	n.healActive(ctx, false)
	var errs []error
	ps, err := n.cfg.Launcher.Processes(ctx)
	if err != nil {
		return err
	}
	slices.SortStableFunc(ps, func(a, b sim.ProcessInfo) int { return healAllOrder[a.Kind] - healAllOrder[b.Kind] })
	for _, p := range ps {
		if !p.Running {
			if err := n.restart(ctx, p.Name); err != nil {
				errs = append(errs, fmt.Errorf("restart %s: %w", p.Name, err))
				continue
			}
			n.logf("heal-all: restarted %s", p.Name)
		}
	}
	for r := range n.cfg.Cluster.Regions {
		if n.cfg.Cluster.Latency {
			if err := n.cfg.Launcher.Heal(ctx, r); err != nil {
				errs = append(errs, fmt.Errorf("heal %s: %w", r, err))
			}
		}
	}
	for _, p := range ps {
		switch {
		case p.Kind == sim.KindStandby:
			if err := n.replay(ctx, p.Name, false); err != nil {
				errs = append(errs, fmt.Errorf("resume replay on %s: %w", p.Name, err))
			}
		case serves(p):
			if err := n.waitReady(ctx, p.URL); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Moves last: they end only with their controller, databases and map back.
	n.healActive(ctx, true)
	n.mu.Lock()
	for _, f := range n.active {
		errs = append(errs, fmt.Errorf("still active: %s", f))
	}
	moves := slices.Clone(n.moves)
	n.mu.Unlock()
	for _, m := range moves {
		if !terminal(m.Phase) {
			errs = append(errs, fmt.Errorf("move %s of %s has not ended (phase %s)", m.ID, m.Tenant, m.Phase))
		}
	}
	if len(errs) == 0 {
		n.logf("heal-all: every process runs, no region is cut off, every standby replays, every move ended (%d of %d done)",
			movesDone(moves), len(moves))
	}
	return errors.Join(errs...)
}
