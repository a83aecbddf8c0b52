package shardmap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/meridian-dev/meridian/shardmap/ids"
	"math/rand/v2"
	"testing"
	"time"
)

// cmdGen draws random commands, valid and invalid, over a small universe so guards collide.
type cmdGen struct {
	r       *rand.Rand
	moveIDs []string
}

var (
	propTenants = []string{"acme", "globex", "initech", "umbrella", "hooli", "Bad!", "ab"}
	propShards  = []string{"us-east-1", "us-west-1", "eu-west-1", "eu-west-2", "us-east-2", "eu-west-3", "nope"}
	propRegions = []string{"us-east", "us-west", "eu-west", "mars", ""}
	propPhases  = allPhases
	propLeases  = []string{"rebalancer", "other", ""}
	propHolders = []string{"ctl-a", "ctl-b", ""}
)

func (g *cmdGen) pick(xs []string) string { return xs[g.r.IntN(len(xs))] }

func (g *cmdGen) next(step int) Command {
	if step == 0 {
		return testTopology()
	}
	switch g.r.IntN(16) {
	case 0:
		if g.r.IntN(4) == 0 {
			return testTopology()
		}
		return AddShard{Shard: Shard{ID: g.pick(propShards), HomeRegion: g.pick(propRegions), Database: "db"}}
	case 1:
		return DrainShard{Shard: g.pick(propShards)}
	case 2:
		return AssignSlots{Slots: []int{g.r.IntN(70), g.r.IntN(64)}, Shard: g.pick(propShards)}
	case 3, 4:
		return CreateTenant{Tenant: g.pick(propTenants), Region: g.pick(propRegions)}
	case 5, 6:
		id := fmt.Sprintf("m%d", g.r.IntN(8))
		g.moveIDs = append(g.moveIDs, id)
		return RequestMove{ID: id, Tenant: g.pick(propTenants), To: g.pick(propShards)}
	case 7, 8, 9:
		return SetMovePhase{ID: g.moveID(), Phase: propPhases[g.r.IntN(len(propPhases))], Error: "e"}
	case 10:
		return Cutover{ID: g.moveID()}
	case 11:
		// Valid and invalid overrides, resets (also of unknown fields) and set+reset conflicts.
		rps := []float64{0, 0, 5, 0.0001, 2e6}[g.r.IntN(5)]
		reset := [][]string{nil, nil, {LimitRPS}, {LimitBurst, LimitConcurrency}, {"nope"}}[g.r.IntN(5)]
		return SetTenantLimits{Tenant: g.pick(propTenants), Reset: reset,
			Set: TenantLimits{RPS: rps, Burst: g.r.IntN(4) - 1, Concurrency: g.r.IntN(3)}}
	case 13:
		return AcquireLease{Name: g.pick(propLeases), Holder: g.pick(propHolders),
			TTL: []time.Duration{time.Second, 5 * time.Second, 0, 2 * MaxLeaseTTL}[g.r.IntN(4)]}
	case 14:
		if g.r.IntN(2) == 0 {
			return ReleaseLease{Name: g.pick(propLeases), Holder: g.pick(propHolders)}
		}
		return PruneMoves{Before: []time.Time{{}, t0, t0.Add(time.Duration(g.r.IntN(400)) * time.Second)}[g.r.IntN(3)]}
	default:
		return MoveProgress{ID: g.moveID(), RowsCopied: ptr(int64(g.r.IntN(100) - 5))}
	}
}

func (g *cmdGen) moveID() string {
	if len(g.moveIDs) == 0 || g.r.IntN(10) == 0 {
		return "unknown"
	}
	return g.moveIDs[g.r.IntN(len(g.moveIDs))]
}

// checkInvariants: every sample tenant resolves to exactly one existing shard; slot-placed
// tenants resolve to active shards; at most one non-terminal move per tenant.
func checkInvariants(t testing.TB, m *Map) {
	t.Helper()
	for _, tn := range append(propTenants, "zzz-1", "zzz-2", "tenant-42") {
		if !ids.ValidTenant(tn) {
			continue
		}
		r, err := m.Lookup(tn)
		if err != nil {
			t.Fatalf("lookup %s: %v", tn, err)
		}
		sh, ok := m.Shard(r.Shard)
		if !ok {
			t.Fatalf("%s resolves to unknown shard %q", tn, r.Shard)
		}
		if !r.Pinned && sh.State != ShardActive {
			t.Fatalf("slot-placed %s resolves to %s shard %s", tn, sh.State, sh.ID)
		}
		n := 0
		for _, s := range m.Shards() {
			if s.ID == r.Shard {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%s resolves to %d shards", tn, n)
		}
	}
	active := map[string]int{}
	for _, mv := range m.Moves() {
		got, ok := m.ActiveMove(mv.Tenant)
		if !mv.Phase.Terminal() {
			active[mv.Tenant]++
			if active[mv.Tenant] > 1 {
				t.Fatalf("tenant %s has two active moves", mv.Tenant)
			}
			if !ok || got.ID != mv.ID {
				t.Fatalf("ActiveMove(%s) = %+v %v, want %s", mv.Tenant, got, ok, mv.ID)
			}
		}
	}
	for _, mv := range m.Moves() {
		if _, ok := m.ActiveMove(mv.Tenant); ok != (active[mv.Tenant] == 1) {
			t.Fatalf("ActiveMove(%s) reports %v with %d active moves", mv.Tenant, ok, active[mv.Tenant])
		}
	}
	// A tenant created with a region is pinned (a move may pin it elsewhere later).
	for tn := range m.TenantRegions() {
		if r, err := m.Lookup(tn); err != nil || !r.Pinned {
			t.Fatalf("tenant %s has a creation region but is not pinned: %+v %v", tn, r, err)
		}
	}
}

// TestPropertyPureFSM runs long random sequences against the FSM alone: rejected commands
// leave the state byte-identical, and the invariants hold after every step.
func TestPropertyPureFSM(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		g := &cmdGen{r: rand.New(rand.NewPCG(seed, 7))}
		s := newState()
		okCount, errCount := 0, 0
		for i := 0; i < 400; i++ {
			cmd := g.next(i)
			before := s.canonical()
			next, err := tryApply(s, cmd, uint64(i+1))
			if err != nil {
				errCount++
				if codeOf(err) == "" {
					t.Fatalf("seed %d step %d: untyped error %v", seed, i, err)
				}
				if !bytes.Equal(before, next.canonical()) {
					t.Fatalf("seed %d step %d: rejected %T changed the state", seed, i, cmd)
				}
				continue
			}
			okCount++
			s = next
			checkInvariants(t, buildMap(s))
		}
		if okCount < 30 || errCount < 30 {
			t.Fatalf("seed %d: generator unbalanced: %d ok, %d rejected", seed, okCount, errCount)
		}
	}
}

// TestPropertyCluster applies a random sequence through random nodes of a 3-node cluster and
// checks each outcome against a local oracle FSM, then that all nodes and the oracle hold
// byte-identical state.
func TestPropertyCluster(t *testing.T) {
	c := newTestCluster(t, 3)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	g := &cmdGen{r: rand.New(rand.NewPCG(seed, 11))}
	oracle := newState()
	oracle.nodes = c.leader().node.Map().st.nodes
	oracle.version = c.leader().node.Map().Version()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var last uint64
	for i := 0; i < 150; i++ {
		cmd := g.next(i)
		at := t0.Add(time.Duration(i) * time.Millisecond)
		entry, err := encodeEntry(cmd, at)
		if err != nil {
			t.Fatal(err)
		}
		tn := c.nodes[g.r.IntN(len(c.nodes))]
		idx, cerr := tn.node.applyEntry(ctx, entry, false)
		if cerr != nil {
			if errors.Is(cerr, ErrNoLeader) || errors.Is(cerr, ErrUnavailable) || codeOf(cerr) == "" {
				t.Fatalf("step %d: infrastructure error %v", i, cerr)
			}
			_, oerr := tryApplyAt(oracle, cmd, last+1, at)
			if codeOf(oerr) != codeOf(cerr) {
				t.Fatalf("step %d %T: cluster says %v, oracle says %v", i, cmd, cerr, oerr)
			}
			continue
		}
		next, oerr := tryApplyAt(oracle, cmd, idx, at)
		if oerr != nil {
			t.Fatalf("step %d %T: cluster applied at %d, oracle rejects: %v", i, cmd, idx, oerr)
		}
		oracle, last = next, idx
	}
	got := c.waitConverged(last)
	if want := oracle.canonical(); !bytes.Equal(got, want) {
		t.Fatalf("cluster and oracle differ:\ncluster %s\noracle  %s", got, want)
	}
	for _, tn := range c.nodes {
		checkInvariants(t, tn.node.Map())
	}
}

func tryApplyAt(s *state, cmd Command, index uint64, at time.Time) (*state, error) {
	next := s.clone()
	if err := next.apply(cmd, index, at); err != nil {
		return s, err
	}
	return next, nil
}
