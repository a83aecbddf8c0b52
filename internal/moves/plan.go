package moves

import (
	"cmp"
	"math"
	"slices"
)

// PlanShard is a shard as the planner sees it.
type PlanShard struct {
	ID, HomeRegion string
	// Active is false for a draining shard: it receives nothing.
	Active bool
}

// PlanTenant is a tenant's placement and load.
type PlanTenant struct {
	Tenant, Shard string
	Rows          int64
	// Region, when set, is the only region the tenant may live in (it was placed by region);
	// "" = any shard.
	Region string
	// Moving excludes a tenant with an active move.
	Moving bool
}

// Proposal is one proposed move.
type Proposal struct {
	Tenant, From, To string
	Rows             int64
}

// Plan proposes at most maxMoves moves (0 = no limit) that even out the rows per shard. It is
// greedy: each step takes the move that lowers the sum of squared shard sizes the most, moving a
// tenant to an active shard of its region (if it has one), never the same tenant twice, and stops
// when no move helps. Tenants of draining shards move first, each to the lightest shard allowed. Ties go to the smaller tenant id and shard
// id, so the plan is deterministic.
func Plan(shards []PlanShard, tenants []PlanTenant, maxMoves int) []Proposal {
	load := map[string]int64{}
	byID := map[string]PlanShard{}
	for _, s := range shards {
		byID[s.ID] = s
	}
	for _, t := range tenants {
		load[t.Shard] += t.Rows
	}
	ts := slices.Clone(tenants)
	slices.SortFunc(ts, func(a, b PlanTenant) int { return cmp.Compare(a.Tenant, b.Tenant) })
	ss := slices.Clone(shards)
	slices.SortFunc(ss, func(a, b PlanShard) int { return cmp.Compare(a.ID, b.ID) })
	moved := map[string]bool{}
	var out []Proposal
	for maxMoves <= 0 || len(out) < maxMoves {
		bestGain, bi, bt := int64(0), -1, ""
		for i, t := range ts {
			if t.Moving || moved[t.Tenant] || t.Rows <= 0 {
				continue
			}
			for _, s := range ss {
				if !s.Active || s.ID == t.Shard || (t.Region != "" && s.HomeRegion != t.Region) {
					continue
				}
				if _, ok := byID[t.Shard]; !ok {
					continue
				}
				// Moving r rows from a shard of size A to one of size B changes the sum of
				// squares by 2r(B - A + r): a gain while r < A - B.
				a, b, r := load[t.Shard], load[s.ID], t.Rows
				gain := 2 * r * (a - b - r)
				if !byID[t.Shard].Active {
					// A draining shard is emptied first, each tenant to the lightest shard.
					gain = math.MaxInt64/2 - b
				}
				if gain > bestGain {
					bestGain, bi, bt = gain, i, s.ID
				}
			}
		}
		if bi < 0 {
			return out
		}
		t := ts[bi]
		out = append(out, Proposal{Tenant: t.Tenant, From: t.Shard, To: bt, Rows: t.Rows})
		load[t.Shard] -= t.Rows
		load[bt] += t.Rows
		moved[t.Tenant] = true
	}
	return out
}
