package shardmap

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

// applyAt applies cmd at index and time at, failing the test on error.
func applyAt(t *testing.T, s *state, cmd Command, index uint64, at time.Time) *state {
	t.Helper()
	next, err := tryApplyAt(s, cmd, index, at)
	if err != nil {
		t.Fatalf("%T at %s: %v", cmd, at, err)
	}
	return next
}

func TestActiveMove(t *testing.T) {
	for _, p := range allPhases {
		m := buildMap(walkTo(t, p))
		mv, ok := m.ActiveMove("acme")
		if ok != !p.Terminal() {
			t.Fatalf("%s: ActiveMove ok=%v", p, ok)
		}
		if ok && (mv.ID != "m1" || mv.Phase != p || mv.From != "eu-west-1" || mv.To != "us-east-1") {
			t.Fatalf("%s: ActiveMove %+v", p, mv)
		}
		if _, ok := m.ActiveMove("globex"); ok {
			t.Fatalf("%s: a tenant without a move has one", p)
		}
	}
	// A finished move and a new one: the new one is active.
	s := walkTo(t, PhaseCancelled)
	s = applyAt(t, s, RequestMove{ID: "m2", Tenant: "acme", To: "eu-west-2"}, 100, t0.Add(time.Hour))
	if mv, ok := buildMap(s).ActiveMove("acme"); !ok || mv.ID != "m2" {
		t.Fatalf("after a second request: %+v %v", mv, ok)
	}
}

func TestLeaseApply(t *testing.T) {
	s := applyAll(t, testTopology())
	at := t0.Add(time.Minute)
	steps := []struct {
		name       string
		cmd        Command
		at         time.Duration // after at
		want       error
		holder     string // expected holder afterwards; "" = no lease recorded
		expiresAdd time.Duration
	}{
		{"free lease granted", AcquireLease{Name: "rebalancer", Holder: "a", TTL: 10 * time.Second}, 0, nil, "a", 10 * time.Second},
		{"other holder refused", AcquireLease{Name: "rebalancer", Holder: "b", TTL: 10 * time.Second}, 5 * time.Second, ErrLeaseHeld, "a", 10 * time.Second},
		{"refused at the expiry itself", AcquireLease{Name: "rebalancer", Holder: "b", TTL: 10 * time.Second}, 10 * time.Second, ErrLeaseHeld, "a", 10 * time.Second},
		{"renewal extends", AcquireLease{Name: "rebalancer", Holder: "a", TTL: 10 * time.Second}, 8 * time.Second, nil, "a", 18 * time.Second},
		{"still refused within the renewal", AcquireLease{Name: "rebalancer", Holder: "b", TTL: time.Second}, 15 * time.Second, ErrLeaseHeld, "a", 18 * time.Second},
		{"taken over after expiry", AcquireLease{Name: "rebalancer", Holder: "b", TTL: 10 * time.Second}, 18*time.Second + 1, nil, "b", 28*time.Second + 1},
		{"old holder's release refused", ReleaseLease{Name: "rebalancer", Holder: "a"}, 19 * time.Second, ErrLeaseHeld, "b", 28*time.Second + 1},
		{"old holder's renewal refused", AcquireLease{Name: "rebalancer", Holder: "a", TTL: time.Second}, 19 * time.Second, ErrLeaseHeld, "b", 28*time.Second + 1},
		{"holder releases", ReleaseLease{Name: "rebalancer", Holder: "b"}, 20 * time.Second, nil, "", 0},
		{"release again is a no-op", ReleaseLease{Name: "rebalancer", Holder: "b"}, 21 * time.Second, nil, "", 0},
		{"released lease is free", AcquireLease{Name: "rebalancer", Holder: "a", TTL: time.Second}, 22 * time.Second, nil, "a", 23 * time.Second},
	}
	for i, st := range steps {
		next, err := tryApplyAt(s, st.cmd, uint64(10+i), at.Add(st.at))
		if !errors.Is(err, st.want) {
			t.Fatalf("%s: error %v, want %v", st.name, err, st.want)
		}
		if err != nil && !bytes.Equal(next.canonical(), s.canonical()) {
			t.Fatalf("%s: a refused command changed the state", st.name)
		}
		s = next
		holder, expires, ok := buildMap(s).Lease("rebalancer")
		if st.holder == "" {
			if ok {
				t.Fatalf("%s: lease %s %s still recorded", st.name, holder, expires)
			}
			continue
		}
		if !ok || holder != st.holder || !expires.Equal(at.Add(st.expiresAdd)) {
			t.Fatalf("%s: lease %q until %s (ok %v), want %q until %s", st.name, holder, expires, ok, st.holder, at.Add(st.expiresAdd))
		}
	}
	// Leases are independent by name.
	s = applyAt(t, s, AcquireLease{Name: "other", Holder: "b", TTL: time.Second}, 50, at.Add(22*time.Second))
	if h, _, _ := buildMap(s).Lease("rebalancer"); h != "a" {
		t.Fatalf("another lease changed rebalancer's holder to %q", h)
	}

	for _, bad := range []Command{
		AcquireLease{Name: "", Holder: "a", TTL: time.Second},
		AcquireLease{Name: "x", Holder: "", TTL: time.Second},
		AcquireLease{Name: strings.Repeat("x", 129), Holder: "a", TTL: time.Second},
		AcquireLease{Name: "x", Holder: "a", TTL: 0},
		AcquireLease{Name: "x", Holder: "a", TTL: -time.Second},
		AcquireLease{Name: "x", Holder: "a", TTL: MaxLeaseTTL + 1},
		ReleaseLease{Name: "x", Holder: ""},
	} {
		if _, err := tryApplyAt(s, bad, 60, at); !errors.Is(err, ErrBadCommand) {
			t.Fatalf("%+v: %v, want ErrBadCommand", bad, err)
		}
	}
	if _, err := tryApplyAt(newState(), AcquireLease{Name: "x", Holder: "a", TTL: time.Second}, 1, at); !errors.Is(err, ErrNotBootstrapped) {
		t.Fatalf("before bootstrap: %v", err)
	}
	if codeOf(ErrLeaseHeld) != "lease_held" || errOfCode("lease_held") != ErrLeaseHeld {
		t.Fatal("ErrLeaseHeld has no wire code")
	}
}

func TestPruneMoves(t *testing.T) {
	// m1 done at t0+9s (walkTo applies command i at t0+i s), m2 cancelled at t0+1h, m3 active.
	s := walkTo(t, PhaseDone)
	doneAt := s.moves["m1"].UpdatedAt
	s = applyAt(t, s, CreateTenant{Tenant: "globex", Region: "eu-west"}, 20, t0.Add(time.Hour))
	s = applyAt(t, s, RequestMove{ID: "m2", Tenant: "globex", To: "eu-west-2"}, 21, t0.Add(time.Hour))
	s = applyAt(t, s, SetMovePhase{ID: "m2", Phase: PhaseCancelled}, 22, t0.Add(time.Hour))
	s = applyAt(t, s, RequestMove{ID: "m3", Tenant: "umbrella", To: "us-west-1"}, 23, t0)
	ids := func(s *state) string {
		var out []string
		for _, mv := range buildMap(s).Moves() {
			out = append(out, mv.ID)
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		before time.Time
		want   string
	}{
		{doneAt, "m1,m2,m3"}, // strictly before: a move updated at Before stays
		{doneAt.Add(time.Nanosecond), "m2,m3"},
		{t0.Add(48 * time.Hour), "m3"}, // an active move is never pruned, however old
	} {
		got := applyAt(t, s, PruneMoves{Before: tc.before}, 30, t0.Add(72*time.Hour))
		if ids(got) != tc.want {
			t.Fatalf("prune before %s: moves %s, want %s", tc.before, ids(got), tc.want)
		}
		if got.version != 30 {
			t.Fatalf("prune did not advance the version")
		}
	}
	if _, err := tryApply(s, PruneMoves{}, 31); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("prune without a time: %v", err)
	}
}

func TestTenantRegionRecorded(t *testing.T) {
	s := applyAll(t, testTopology(), CreateTenant{Tenant: "acme", Region: "eu-west"}, CreateTenant{Tenant: "plain"})
	m := buildMap(s)
	if r, ok := m.TenantRegion("acme"); !ok || r != "eu-west" {
		t.Fatalf("acme region %q %v", r, ok)
	}
	if r, ok := m.TenantRegion("plain"); ok {
		t.Fatalf("slot-placed tenant has region %q", r)
	}
	// A move (here across regions, which the map itself allows) keeps the creation region.
	s = walkTo(t, PhaseDone)
	m = buildMap(s)
	if r, _ := m.Lookup("acme"); r.HomeRegion != "us-east" {
		t.Fatalf("after the move acme is at %+v", r)
	}
	if r, ok := m.TenantRegion("acme"); !ok || r != "eu-west" {
		t.Fatalf("after the move acme's region is %q %v", r, ok)
	}
}

// TestMoveCommandsDeterministicAndInSnapshots: replaying the same entries gives byte-identical
// states (leases take their expiry from the entry's time, never a clock); leases and tenant
// regions survive a snapshot and the watch encoding; a snapshot written before they existed
// still loads; bad ones are refused.
func TestMoveCommandsDeterministicAndInSnapshots(t *testing.T) {
	cmds := []Command{testTopology(), CreateTenant{Tenant: "acme", Region: "eu-west"},
		AcquireLease{Name: "rebalancer", Holder: "ctl-1", TTL: 10 * time.Second},
		RequestMove{ID: "m1", Tenant: "acme", To: "eu-west-2"},
		SetMovePhase{ID: "m1", Phase: PhaseCancelled},
		AcquireLease{Name: "rebalancer", Holder: "ctl-1", TTL: 10 * time.Second},
		AcquireLease{Name: "planner", Holder: "p", TTL: time.Minute}, ReleaseLease{Name: "planner", Holder: "p"},
		RequestMove{ID: "m2", Tenant: "globex", To: "us-west-1"},
		PruneMoves{Before: t0.Add(time.Hour)}}
	var entries [][]byte
	for i, c := range cmds {
		b, err := encodeEntry(c, t0.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, b)
	}
	replay := func() *state {
		s := newState()
		for i, e := range entries {
			c, at, err := decodeEntry(e)
			if err != nil {
				t.Fatal(err)
			}
			next, err := tryApplyAt(s, c, uint64(i+1), at)
			if err != nil {
				t.Fatalf("entry %d (%T): %v", i, c, err)
			}
			s = next
		}
		return s
	}
	a, b := replay(), replay()
	if !bytes.Equal(a.canonical(), b.canonical()) {
		t.Fatalf("replays differ:\n%s\n%s", a.canonical(), b.canonical())
	}
	m := buildMap(a)
	if h, exp, ok := m.Lease("rebalancer"); !ok || h != "ctl-1" || !exp.Equal(t0.Add(15*time.Second)) {
		t.Fatalf("lease %q %s %v", h, exp, ok)
	}
	if _, _, ok := m.Lease("planner"); ok {
		t.Fatal("released lease still recorded")
	}
	if got := m.Moves(); len(got) != 1 || got[0].ID != "m2" {
		t.Fatalf("moves after prune %+v", got)
	}

	var buf bytes.Buffer
	if err := writeSnapshot(&buf, a); err != nil {
		t.Fatal(err)
	}
	restored, err := readSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.canonical(), restored.canonical()) {
		t.Fatalf("snapshot round trip differs:\n%s\n%s", a.canonical(), restored.canonical())
	}
	rm := buildMap(restored)
	if h, _, _ := rm.Lease("rebalancer"); h != "ctl-1" {
		t.Fatalf("restored lease holder %q", h)
	}
	if r, _ := rm.TenantRegion("acme"); r != "eu-west" {
		t.Fatalf("restored acme region %q", r)
	}
	if mv, ok := rm.ActiveMove("globex"); !ok || mv.ID != "m2" {
		t.Fatalf("restored active move %+v %v", mv, ok)
	}
	dm, err := DecodeMap(m.Canonical())
	if err != nil || !bytes.Equal(dm.Canonical(), m.Canonical()) {
		t.Fatalf("watch encoding does not round-trip: %v", err)
	}

	// Without leases or regions the encoding has neither key, as before they existed.
	plain := applyAll(t, testTopology(), CreateTenant{Tenant: "plain"})
	if enc := plain.canonical(); bytes.Contains(enc, []byte("leases")) || bytes.Contains(enc, []byte("tenant_regions")) {
		t.Fatalf("empty leases or regions are encoded: %s", enc)
	}
	// A snapshot as written before leases and regions existed (a pinned tenant, a move) loads.
	old := `{"format":"meridian-shardmap","version":1}
{"version":7,"slot_count":2,"regions":["eu-west","us-east"],"shards":[{"id":"eu-west-1","home_region":"eu-west","database":"d1","endpoints":{},"state":"active"},{"id":"us-east-1","home_region":"us-east","database":"d2","endpoints":{},"state":"active"}],"slots":["eu-west-1","us-east-1"],"pins":{"acme":"eu-west-1"},"epochs":{},"moves":[{"id":"mv-5","tenant":"acme","from_shard":"eu-west-1","to_shard":"us-east-1","phase":"backfill","rows_copied":3,"rows_total":9,"repairs":0,"pause_ms":0,"error":"","created_at":"2026-01-02T03:04:05Z","updated_at":"2026-01-02T03:04:06Z"}],"nodes":{"n0":"http://127.0.0.1:1"}}
`
	st, err := readSnapshot(strings.NewReader(old))
	if err != nil {
		t.Fatalf("old snapshot: %v", err)
	}
	om := buildMap(st)
	if _, ok := om.TenantRegion("acme"); ok {
		t.Fatal("old snapshot: a region appeared")
	}
	if _, _, ok := om.Lease("rebalancer"); ok {
		t.Fatal("old snapshot: a lease appeared")
	}
	if mv, ok := om.ActiveMove("acme"); !ok || mv.RowsTotal != 9 {
		t.Fatalf("old snapshot: active move %+v %v", mv, ok)
	}
	if got := strings.TrimSpace(strings.SplitN(old, "\n", 2)[1]); string(st.canonical()) != got {
		t.Fatalf("old snapshot does not re-encode byte for byte:\n%s\n%s", st.canonical(), got)
	}

	// Bad leases or regions in a snapshot or watch answer are refused.
	for _, bad := range []string{
		`"leases":{"x":{"holder":"","expires":"2026-01-02T03:04:05Z"}}`,
		`"leases":{"":{"holder":"a","expires":"2026-01-02T03:04:05Z"}}`,
		`"tenant_regions":{"acme":"mars"}`,
		`"tenant_regions":{"Bad!":"us-east"}`,
	} {
		enc := bytes.Replace(plain.canonical(), []byte(`"nodes":{}`), []byte(`"nodes":{},`+bad), 1)
		if _, err := DecodeMap(enc); err == nil {
			t.Fatalf("decoded a map with %s", bad)
		}
	}
}

// TestLeaseThroughCluster: a lease taken through a follower is visible on every node, and a
// second holder is refused with the typed error across the forwarding hop.
func TestLeaseThroughCluster(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := t.Context()
	var follower *Node
	for _, tn := range c.nodes {
		if !tn.node.IsLeader() {
			follower = tn.node
			break
		}
	}
	if _, err := follower.Apply(ctx, testTopology()); err != nil {
		t.Fatal(err)
	}
	idx, err := follower.Apply(ctx, AcquireLease{Name: "rebalancer", Holder: "ctl-1", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := follower.Apply(ctx, AcquireLease{Name: "rebalancer", Holder: "ctl-2", TTL: time.Minute}); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("second holder: %v, want ErrLeaseHeld", err)
	}
	c.waitConverged(idx)
	for _, tn := range c.nodes {
		if h, exp, ok := tn.node.Map().Lease("rebalancer"); !ok || h != "ctl-1" || time.Until(exp) <= 0 {
			t.Fatalf("node %s: lease %q %s %v", tn.id, h, exp, ok)
		}
	}
}
