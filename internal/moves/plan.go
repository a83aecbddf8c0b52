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
	// Writes is the tenant's write rate (writes per second over the planner's window).
	Writes float64
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
	Writes           float64
}

// Plan proposes at most maxMoves moves (0 = no limit) that even out the rows and the write
// rates per shard. A tenant's weight is its share of all rows plus its share of all writes (a
// dimension whose total is zero counts for nothing), and a shard's load is its tenants' weights.
// It is greedy: each step takes the move that lowers the sum of squared shard loads the most,
// moving a tenant to an active shard of its region (if it has one), never the same tenant
// twice, and stops when no move helps. Tenants of draining shards move first, each to the
// lightest shard allowed. Ties go to the smaller tenant id and shard id, so the plan is
// deterministic.
func Plan(shards []PlanShard, tenants []PlanTenant, maxMoves int) []Proposal {
	var rows int64
	var writes float64
	for _, t := range tenants {
		rows += max(t.Rows, 0)
		writes += max(t.Writes, 0)
	}
	weight := func(t PlanTenant) float64 {
		w := 0.0
		if rows > 0 {
			w += float64(max(t.Rows, 0)) / float64(rows)
		}
		if writes > 0 {
			w += max(t.Writes, 0) / writes
		}
		return w
	}
	load := map[string]float64{}
	byID := map[string]PlanShard{}
	for _, s := range shards {
		byID[s.ID] = s
	}
	for _, t := range tenants {
		load[t.Shard] += weight(t)
	}
	ts := slices.Clone(tenants)
	slices.SortFunc(ts, func(a, b PlanTenant) int { return cmp.Compare(a.Tenant, b.Tenant) })
	ss := slices.Clone(shards)
	slices.SortFunc(ss, func(a, b PlanShard) int { return cmp.Compare(a.ID, b.ID) })
	moved := map[string]bool{}
	var out []Proposal
	// minGain ignores moves whose gain is rounding noise.
	const minGain = 1e-12
	for maxMoves <= 0 || len(out) < maxMoves {
		bestGain, bi, bt := minGain, -1, ""
		for i, t := range ts {
			r := weight(t)
			if t.Moving || moved[t.Tenant] || r <= 0 {
				continue
			}
			for _, s := range ss {
				if !s.Active || s.ID == t.Shard || (t.Region != "" && s.HomeRegion != t.Region) {
					continue
				}
				if _, ok := byID[t.Shard]; !ok {
					continue
				}
				// Moving weight r from a shard of load A to one of load B changes the sum of
				// squares by 2r(B - A + r): a gain while r < A - B.
				a, b := load[t.Shard], load[s.ID]
				gain := 2 * r * (a - b - r)
				if !byID[t.Shard].Active {
					// A draining shard is emptied first, each tenant to the lightest shard.
					gain = math.MaxFloat64/4 - b
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
		out = append(out, Proposal{Tenant: t.Tenant, From: t.Shard, To: bt, Rows: t.Rows, Writes: t.Writes})
		load[t.Shard] -= weight(t)
		load[bt] += weight(t)
		moved[t.Tenant] = true
	}
	return out
}
