// Package nemesis injects the fault suite's faults into a running local cluster (issue 15):
// SIGKILL and restart of a router (the shard-map Raft leader included), an API node, the API
// node that runs a home region's outbox relay, a standby or primary Postgres, Redis and a
// NATS JetStream server; a region partitioned and healed through the
// launcher's latency proxies; a standby's WAL replay paused and resumed; a move of one of the
// workload's tenants to another shard of its region, requested through a router's admin API
// and driven by the move controller, which is SIGKILLed and restarted too. Plan derives a
// schedule of steps — each fault alone first, then random combinations — from a seed alone
// (the same seed and cluster shape give the same schedule); Nemesis carries it out through a
// Launcher, heals every step before the next, and HealAll leaves the cluster whole before the
// final reads. Every injection and heal is logged with its time on the run's clock.
//
// It owns the faults only. It must never make workload requests or judge a history, and it
// touches nothing but the processes and proxies the launcher started and the admin API's moves. Tests should run it
// against a real cluster (internal/sim) and check the cluster recovers.
package nemesis

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/meridian-dev/meridian/internal/sim"
)

// The kinds of fault.
const (
	// KillRouter SIGKILLs a router (Target: its name), restarted when healed.
	KillRouter = "kill-router"
	// KillLeader SIGKILLs the router that leads the shard-map Raft group when the step starts
	// (Target "leader"; the log names the router).
	KillLeader = "kill-leader"
	// KillAPI SIGKILLs an API node.
	KillAPI = "kill-api"
	// KillStandby SIGKILLs a hot standby Postgres.
	KillStandby = "kill-standby"
	// KillPrimary SIGKILLs a region's primary Postgres (the shards homed there).
	KillPrimary = "kill-primary"
	// KillRedis SIGKILLs a region's Redis (it comes back empty).
	KillRedis = "kill-redis"
	// KillNATS SIGKILLs a region's NATS JetStream server (Target: its name, nats-<region>),
	// restarted when healed (the launcher waits for JetStream): events in flight are lost to
	// the transport, and the relay, the consumers and `/v1/changes` must recover them from the
	// outbox (DESIGN.md §7).
	KillNATS = "kill-nats"
	// KillRelay SIGKILLs the API node that runs the outbox relay of a home region (Target: the
	// region; the log names the node): the one whose /metrics says it holds a shard's relay
	// (meridian_relay_active 1), else, with one API node in the region, that one. Every
	// region homes workload tenants, so every kill-api kills a relay too; this kind makes
	// sure one is killed in every schedule, and a relay that just took over is the target of
	// the next.
	KillRelay = "kill-relay"
	// Partition cuts a region's cross-region links (Target: the region); needs latency mode.
	Partition = "partition"
	// PauseReplay pauses a standby's WAL replay (pg_wal_replay_pause) until healed.
	PauseReplay = "pause-replay"
	// Move asks for a move of one of the workload's tenants (Target "tenant-<i>"; the log
	// names the tenant, the move and its shards) to another active shard of its region, and
	// is healed once the move has ended — possibly steps later (see moves.go).
	Move = "move"
	// KillRebalancer SIGKILLs the move controller (`rebalancer serve`, Target: its name),
	// restarted when healed: moves in flight must resume from the phase the map records.
	KillRebalancer = "kill-rebalancer"
)

// AllKinds lists every kind of fault, in a fixed order.
var AllKinds = []string{KillRouter, KillLeader, KillAPI, KillStandby, KillPrimary, KillRedis, KillNATS, KillRelay,
	Partition, PauseReplay, Move, KillRebalancer}

// Fault is one fault of a step: its kind and target (a process name, a region, or "leader").
type Fault struct {
	Kind   string `json:"kind"`
	Target string `json:"target"`
}

func (f Fault) String() string { return f.Kind + " " + f.Target }

// Step is a set of faults injected together At the run's clock and healed Hold later.
type Step struct {
	At     time.Duration `json:"at"`
	Hold   time.Duration `json:"hold"`
	Faults []Fault       `json:"faults"`
}

func (s Step) String() string {
	parts := make([]string, len(s.Faults))
	for i, f := range s.Faults {
		parts[i] = f.String()
	}
	return fmt.Sprintf("at %v for %v: %s", s.At.Round(100*time.Millisecond), s.Hold.Round(100*time.Millisecond), strings.Join(parts, " + "))
}

// PlanConfig shapes a schedule. Zero durations take the defaults in brackets.
type PlanConfig struct {
	Seed int64
	// Kinds are the faults to use (nil: AllKinds).
	Kinds []string
	// Duration is the run's length; every step is healed by Duration - Tail.
	Duration time.Duration
	// Warmup passes before the first fault [3s]; Tail is left fault-free at the end [3s].
	Warmup, Tail time.Duration
	// MinHold..MaxHold is how long a step's faults last [3s..8s]; MinQuiet..MaxQuiet the
	// calm between steps [2s..5s].
	MinHold, MaxHold, MinQuiet, MaxQuiet time.Duration
	// MaxCombined is the most faults in one step [2].
	MaxCombined int
	// Homes are the regions whose relays kill-relay may target: where the workload's tenants
	// are homed (nil: every region).
	Homes []string
	// Tenants is how many tenants the workload has: move faults target "tenant-0" ..
	// "tenant-<Tenants-1>" (0: no moves in the schedule).
	Tenants int
}

// Plan derives a schedule from cfg.Seed and the cluster's processes and regions alone: first
// every kind alone (in an order drawn from the seed), then steps of 1..MaxCombined kinds
// together, until the run's end. Targets are drawn from the processes sorted by name, so the
// same seed and cluster shape give the same schedule. A step never holds two faults on one
// target, two partitions, or two router kills (one router down of three keeps the Raft
// quorum; a partition on top may not, and that is a fault the suite wants too).
func Plan(cfg PlanConfig, procs []sim.ProcessInfo, regions []string) []Step {
	d := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	d(&cfg.Warmup, 3*time.Second)
	d(&cfg.Tail, 3*time.Second)
	d(&cfg.MinHold, 3*time.Second)
	d(&cfg.MaxHold, 8*time.Second)
	d(&cfg.MinQuiet, 2*time.Second)
	d(&cfg.MaxQuiet, 5*time.Second)
	if cfg.MaxCombined <= 0 {
		cfg.MaxCombined = 2
	}
	kinds := cfg.Kinds
	if kinds == nil {
		kinds = AllKinds
	}
	procs = slices.Clone(procs)
	slices.SortFunc(procs, func(a, b sim.ProcessInfo) int { return strings.Compare(a.Name, b.Name) })
	regions = slices.Sorted(slices.Values(regions))
	homes := regions
	if cfg.Homes != nil {
		homes = slices.Sorted(slices.Values(cfg.Homes))
	}
	rng := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x6e656d65736973)) // "nemesis"
	between := func(lo, hi time.Duration) time.Duration {
		if hi <= lo {
			return lo
		}
		return lo + time.Duration(rng.Int64N(int64(hi-lo)))
	}
	// Alone first, in a seeded order.
	var queue [][]string
	for _, i := range rng.Perm(len(kinds)) {
		queue = append(queue, []string{kinds[i]})
	}
	var steps []Step
	at := cfg.Warmup
	for len(kinds) > 0 {
		var ks []string
		if len(queue) > 0 {
			ks, queue = queue[0], queue[1:]
		} else {
			n := 1 + rng.IntN(min(cfg.MaxCombined, len(kinds)))
			for _, i := range rng.Perm(len(kinds))[:n] {
				ks = append(ks, kinds[i])
			}
		}
		hold := between(cfg.MinHold, cfg.MaxHold)
		if at+hold > cfg.Duration-cfg.Tail {
			break
		}
		if fs := targets(rng, ks, procs, regions, homes, cfg.Tenants); len(fs) > 0 {
			steps = append(steps, Step{At: at, Hold: hold, Faults: fs})
		}
		at += hold + between(cfg.MinQuiet, cfg.MaxQuiet)
	}
	return steps
}

// targets picks a target for each kind of ks, dropping a kind that has no target left. A
// kill-relay takes every API node of its region (it resolves to one of them only when
// injected), so no other fault of its step hits one.
//
// Two moves of one step take two different tenants; each is resolved when injected (to the
// next tenant not moving when its own still is).
func targets(rng *rand.Rand, ks []string, procs []sim.ProcessInfo, regions, homes []string, tenants int) []Fault {
	used := map[string]bool{}
	var out []Fault
	partitioned, routerDown := false, false
	of := func(kind string) []string {
		var names []string
		for _, p := range procs {
			if p.Kind == kind && !used[p.Name] {
				names = append(names, p.Name)
			}
		}
		return names
	}
	for _, k := range ks {
		var cands []string
		switch k {
		case KillRouter:
			if !routerDown {
				cands = of(sim.KindRouter)
			}
		case KillLeader:
			if !routerDown {
				cands = []string{"leader"}
			}
		case KillAPI:
			cands = of(sim.KindAPI)
		case KillStandby, PauseReplay:
			cands = of(sim.KindStandby)
		case KillPrimary:
			cands = of(sim.KindPrimary)
		case KillRedis:
			cands = of(sim.KindRedis)
		case KillNATS:
			cands = of(sim.KindNATS)
		case KillRelay:
			for _, r := range homes {
				if !used[r] && slices.ContainsFunc(procs, func(p sim.ProcessInfo) bool {
					return p.Kind == sim.KindAPI && p.Region == r && !used[p.Name]
				}) {
					cands = append(cands, r)
				}
			}
		case Partition:
			if !partitioned {
				// Not a region a kill-relay of the step took (its target is the region).
				for _, r := range regions {
					if !used[r] {
						cands = append(cands, r)
					}
				}
			}
		case KillRebalancer:
			cands = of(sim.KindRebalancer)
		case Move:
			for i := range tenants {
				if t := fmt.Sprintf("tenant-%d", i); !used[t] {
					cands = append(cands, t)
				}
			}
		}
		if len(cands) == 0 {
			continue
		}
		t := cands[rng.IntN(len(cands))]
		used[t] = true
		switch k {
		case KillRouter, KillLeader:
			routerDown = true
		case Partition:
			partitioned = true
		case KillRelay:
			for _, p := range procs {
				if p.Kind == sim.KindAPI && p.Region == t {
					used[p.Name] = true
				}
			}
		}
		out = append(out, Fault{Kind: k, Target: t})
	}
	return out
}
