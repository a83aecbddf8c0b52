package nemesis

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/sim"
)

// procs is the launcher's default three-region cluster, as Processes lists it.
func procs() []sim.ProcessInfo {
	var ps []sim.ProcessInfo
	regions := []string{"eu-west", "us-east", "us-west"}
	ps = append(ps, sim.ProcessInfo{Name: "rebalancer", Kind: sim.KindRebalancer, Region: "eu-west"})
	for _, r := range regions {
		ps = append(ps,
			sim.ProcessInfo{Name: r + "-router-1", Kind: sim.KindRouter, Region: r},
			sim.ProcessInfo{Name: r + "-api-1", Kind: sim.KindAPI, Region: r},
			sim.ProcessInfo{Name: "postgres-" + r, Kind: sim.KindPrimary, Region: r},
			sim.ProcessInfo{Name: "redis-" + r, Kind: sim.KindRedis, Region: r},
			sim.ProcessInfo{Name: "nats-" + r, Kind: sim.KindNATS, Region: r})
		for _, src := range regions {
			if src != r {
				ps = append(ps, sim.ProcessInfo{Name: "standby-" + r + "-of-" + src, Kind: sim.KindStandby, Region: r, Source: src})
			}
		}
	}
	return ps
}

func TestPlanIsDerivedFromTheSeed(t *testing.T) {
	regions := []string{"us-west", "eu-west", "us-east"}
	cfg := PlanConfig{Seed: 42, Duration: 5 * time.Minute}
	a := Plan(cfg, procs(), regions)
	// The same seed with the processes and regions in another order: the same schedule.
	shuffled := procs()
	slices.Reverse(shuffled)
	b := Plan(cfg, shuffled, []string{"eu-west", "us-east", "us-west"})
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("same seed, different schedules:\n%v\n%v", a, b)
	}
	cfg.Seed = 43
	if c := Plan(cfg, procs(), regions); reflect.DeepEqual(a, c) {
		t.Fatalf("seeds 42 and 43 gave the same schedule: %v", a)
	}
}

func TestPlanShape(t *testing.T) {
	for seed := int64(1); seed <= 50; seed++ {
		cfg := PlanConfig{Seed: seed, Duration: 3 * time.Minute, MaxCombined: 3, Tenants: 6}
		steps := Plan(cfg, procs(), []string{"eu-west", "us-east", "us-west"})
		// Every kind alone first.
		if len(steps) < len(AllKinds) {
			t.Fatalf("seed %d: %d steps for %d kinds", seed, len(steps), len(AllKinds))
		}
		var alone []string
		for _, s := range steps[:len(AllKinds)] {
			if len(s.Faults) != 1 {
				t.Fatalf("seed %d: step %v is not a fault alone", seed, s)
			}
			alone = append(alone, s.Faults[0].Kind)
		}
		if !slices.Equal(slices.Sorted(slices.Values(alone)), slices.Sorted(slices.Values(AllKinds))) {
			t.Fatalf("seed %d: the first steps are %v, want each of %v once", seed, alone, AllKinds)
		}
		combined := false
		var end time.Duration
		for _, s := range steps {
			if s.At < end {
				t.Fatalf("seed %d: step %v begins before the previous one healed (%v)", seed, s, end)
			}
			end = s.At + s.Hold
			if end > cfg.Duration-3*time.Second {
				t.Fatalf("seed %d: step %v heals after the tail began", seed, s)
			}
			targets := map[string]bool{}
			routers, partitions := 0, 0
			for _, f := range s.Faults {
				if targets[f.Target] {
					t.Fatalf("seed %d: step %v hits %s twice", seed, s, f.Target)
				}
				targets[f.Target] = true
				if f.Kind == KillRelay {
					// The relay's node is resolved when injected: no other fault of the
					// step may hit an API node of its region.
					if targets[f.Target+"-api-1"] {
						t.Fatalf("seed %d: step %v kills %s-api-1 twice", seed, s, f.Target)
					}
					targets[f.Target+"-api-1"] = true
				}
				switch f.Kind {
				case KillRouter, KillLeader:
					routers++
				case Partition:
					partitions++
				}
			}
			if routers > 1 || partitions > 1 {
				t.Fatalf("seed %d: step %v kills %d routers, partitions %d regions", seed, s, routers, partitions)
			}
			combined = combined || len(s.Faults) > 1
		}
		if !combined {
			t.Errorf("seed %d: no step combines faults in 3 minutes: %v", seed, steps)
		}
	}
}

func TestPlanKindsAndNone(t *testing.T) {
	steps := Plan(PlanConfig{Seed: 7, Kinds: []string{KillAPI, PauseReplay}, Duration: time.Minute}, procs(), []string{"us-east"})
	if len(steps) == 0 {
		t.Fatal("no steps")
	}
	for _, s := range steps {
		for _, f := range s.Faults {
			if f.Kind != KillAPI && f.Kind != PauseReplay {
				t.Fatalf("step %v has a kind that was not asked for", s)
			}
		}
	}
	if steps := Plan(PlanConfig{Seed: 7, Kinds: []string{}, Duration: time.Minute}, procs(), nil); len(steps) != 0 {
		t.Fatalf("no kinds, yet steps %v", steps)
	}
}

// TestPlanEventFaults: NATS kills target NATS servers, relay kills target a home region
// (only those of PlanConfig.Homes), and every schedule of every kind has both alone.
func TestPlanEventFaults(t *testing.T) {
	regions := []string{"eu-west", "us-east", "us-west"}
	seen := map[string]bool{}
	for seed := int64(1); seed <= 30; seed++ {
		steps := Plan(PlanConfig{Seed: seed, Duration: 3 * time.Minute, Homes: []string{"us-east", "us-west"}}, procs(), regions)
		alone := map[string]bool{}
		for _, s := range steps {
			for _, f := range s.Faults {
				switch f.Kind {
				case KillNATS:
					if !slices.Contains([]string{"nats-eu-west", "nats-us-east", "nats-us-west"}, f.Target) {
						t.Fatalf("seed %d: %v kills no NATS server", seed, s)
					}
				case KillRelay:
					if f.Target != "us-east" && f.Target != "us-west" {
						t.Fatalf("seed %d: %v kills the relay of a region that homes no tenant", seed, s)
					}
				}
				seen[f.Kind+" "+f.Target] = true
				if len(s.Faults) == 1 {
					alone[f.Kind] = true
				}
			}
		}
		if !alone[KillNATS] || !alone[KillRelay] || !alone[KillAPI] {
			t.Fatalf("seed %d: kill-nats, kill-relay and kill-api are not each alone once: %v", seed, steps)
		}
	}
	for _, want := range []string{"kill-nats nats-eu-west", "kill-nats nats-us-east", "kill-nats nats-us-west", "kill-relay us-east", "kill-relay us-west"} {
		if !seen[want] {
			t.Errorf("30 seeds never drew %s", want)
		}
	}
	// Only NATS kills: one server at a time, every step.
	for _, s := range Plan(PlanConfig{Seed: 3, Kinds: []string{KillNATS}, Duration: time.Minute, MaxCombined: 3}, procs(), regions) {
		if len(s.Faults) != 1 || s.Faults[0].Kind != KillNATS {
			t.Fatalf("step %v", s)
		}
	}
}

// TestHealOrderIsComplete: every kind of fault has its place in the heal order (a missing one
// would be healed first, before the databases it needs), every kind of process in HealAll's,
// and what needs the others comes after them.
func TestHealOrderIsComplete(t *testing.T) {
	for _, k := range AllKinds {
		if _, ok := healOrder[k]; !ok {
			t.Errorf("fault kind %s has no place in healOrder", k)
		}
	}
	for _, k := range []string{sim.KindRouter, sim.KindAPI, sim.KindPrimary, sim.KindStandby, sim.KindRedis, sim.KindNATS, sim.KindRebalancer} {
		if _, ok := healAllOrder[k]; !ok {
			t.Errorf("process kind %s has no place in healAllOrder", k)
		}
	}
	for _, late := range []string{KillAPI, KillRelay, KillRouter, KillLeader, KillRebalancer, Move} {
		for _, early := range []string{KillPrimary, KillStandby, KillRedis, KillNATS, Partition} {
			if healOrder[late] <= healOrder[early] {
				t.Errorf("%s is healed before %s", late, early)
			}
		}
	}
	// A move ends only once everything else is back, its controller included.
	for _, k := range AllKinds {
		if k != Move && healOrder[k] >= healOrder[Move] {
			t.Errorf("%s is healed with or after the moves are waited for", k)
		}
	}
	if healAllOrder[sim.KindAPI] <= healAllOrder[sim.KindNATS] || healAllOrder[sim.KindNATS] <= healAllOrder[sim.KindPrimary] {
		t.Errorf("HealAll order %v: NATS must come after Postgres and before API nodes", healAllOrder)
	}
}

// TestPlanMoves: move faults target the workload's tenants by index, never one tenant twice
// in a step; kill-rebalancer targets the controller; both are alone in every schedule and
// combined with other faults in some; without tenants (or a controller) they are left out.
func TestPlanMoves(t *testing.T) {
	regions := []string{"eu-west", "us-east", "us-west"}
	kinds := []string{Move, KillRebalancer, KillAPI, Partition}
	combinedMove, combinedKill := false, false
	for seed := int64(1); seed <= 30; seed++ {
		steps := Plan(PlanConfig{Seed: seed, Kinds: kinds, Duration: 2 * time.Minute, MaxCombined: 3, Tenants: 6}, procs(), regions)
		alone := map[string]bool{}
		for _, s := range steps {
			for _, f := range s.Faults {
				switch f.Kind {
				case Move:
					if !slices.Contains([]string{"tenant-0", "tenant-1", "tenant-2", "tenant-3", "tenant-4", "tenant-5"}, f.Target) {
						t.Fatalf("seed %d: %v moves no workload tenant", seed, s)
					}
					combinedMove = combinedMove || len(s.Faults) > 1
				case KillRebalancer:
					if f.Target != "rebalancer" {
						t.Fatalf("seed %d: %v kills no controller", seed, s)
					}
					combinedKill = combinedKill || len(s.Faults) > 1
				}
				if len(s.Faults) == 1 {
					alone[f.Kind] = true
				}
			}
		}
		if !alone[Move] || !alone[KillRebalancer] {
			t.Fatalf("seed %d: move and kill-rebalancer are not each alone once: %v", seed, steps)
		}
	}
	if !combinedMove || !combinedKill {
		t.Errorf("30 seeds never combined a move (%v) or a controller kill (%v) with another fault", combinedMove, combinedKill)
	}
	var noCtl []sim.ProcessInfo
	for _, p := range procs() {
		if p.Kind != sim.KindRebalancer {
			noCtl = append(noCtl, p)
		}
	}
	for _, s := range Plan(PlanConfig{Seed: 3, Kinds: []string{Move, KillRebalancer, KillAPI}, Duration: time.Minute}, noCtl, regions) {
		for _, f := range s.Faults {
			if f.Kind != KillAPI {
				t.Fatalf("no tenants and no controller, yet %v", s)
			}
		}
	}
}
