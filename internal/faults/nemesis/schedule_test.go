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
	for _, r := range regions {
		ps = append(ps,
			sim.ProcessInfo{Name: r + "-router-1", Kind: sim.KindRouter, Region: r},
			sim.ProcessInfo{Name: r + "-api-1", Kind: sim.KindAPI, Region: r},
			sim.ProcessInfo{Name: "postgres-" + r, Kind: sim.KindPrimary, Region: r},
			sim.ProcessInfo{Name: "redis-" + r, Kind: sim.KindRedis, Region: r})
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
		cfg := PlanConfig{Seed: seed, Duration: 3 * time.Minute, MaxCombined: 3}
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
