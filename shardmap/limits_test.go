package shardmap

import (
	"bytes"
	"errors"
	"testing"
)

// TestSetTenantLimitsApply covers the command's merge semantics, its guards and the rule that
// a tenant without a map entry of its own (slot-placed) can carry overrides without being
// pinned by them.
func TestSetTenantLimitsApply(t *testing.T) {
	s := applyAll(t, testTopology(), CreateTenant{Tenant: "acme", Region: "eu-west"})
	routeBefore, _ := buildMap(s).Lookup("plain")

	steps := []struct {
		name string
		cmd  SetTenantLimits
		want TenantLimits
		ok   bool // an entry is expected
	}{
		{"set rps and burst", SetTenantLimits{Tenant: "plain", Set: TenantLimits{RPS: 10, Burst: 20}}, TenantLimits{RPS: 10, Burst: 20}, true},
		{"patch concurrency keeps the rest", SetTenantLimits{Tenant: "plain", Set: TenantLimits{Concurrency: 3}}, TenantLimits{RPS: 10, Burst: 20, Concurrency: 3}, true},
		{"reset rps, change burst", SetTenantLimits{Tenant: "plain", Set: TenantLimits{Burst: 5}, Reset: []string{LimitRPS}}, TenantLimits{Burst: 5, Concurrency: 3}, true},
		{"empty patch changes nothing", SetTenantLimits{Tenant: "plain"}, TenantLimits{Burst: 5, Concurrency: 3}, true},
		{"reset all removes the entry", SetTenantLimits{Tenant: "plain", Reset: []string{LimitBurst, LimitConcurrency}}, TenantLimits{}, false},
	}
	for i, st := range steps {
		next, err := tryApply(s, st.cmd, uint64(10+i))
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		s = next
		m := buildMap(s)
		got, ok := m.TenantLimits("plain")
		if got != st.want || ok != st.ok {
			t.Fatalf("%s: limits %+v %v, want %+v %v", st.name, got, ok, st.want, st.ok)
		}
		if m.Version() != uint64(10+i) {
			t.Fatalf("%s: version %d", st.name, m.Version())
		}
		if r, _ := m.Lookup("plain"); r.Pinned || r.Shard != routeBefore.Shard {
			t.Fatalf("%s: overrides changed placement: %+v", st.name, r)
		}
	}
	if _, ok := s.limits["plain"]; ok {
		t.Fatal("an entry without overrides is kept in the state")
	}

	bad := []struct {
		name string
		cmd  Command
		want error
	}{
		{"bad tenant id", SetTenantLimits{Tenant: "Bad!", Set: TenantLimits{RPS: 1}}, ErrBadTenantID},
		{"rps below min", SetTenantLimits{Tenant: "acme", Set: TenantLimits{RPS: MinTenantRPS / 2}}, ErrBadLimits},
		{"rps above max", SetTenantLimits{Tenant: "acme", Set: TenantLimits{RPS: MaxTenantRPS * 2}}, ErrBadLimits},
		{"negative rps", SetTenantLimits{Tenant: "acme", Set: TenantLimits{RPS: -1}}, ErrBadLimits},
		{"negative burst", SetTenantLimits{Tenant: "acme", Set: TenantLimits{Burst: -1}}, ErrBadLimits},
		{"burst above max", SetTenantLimits{Tenant: "acme", Set: TenantLimits{Burst: MaxTenantBurst + 1}}, ErrBadLimits},
		{"negative concurrency", SetTenantLimits{Tenant: "acme", Set: TenantLimits{Concurrency: -2}}, ErrBadLimits},
		{"concurrency above max", SetTenantLimits{Tenant: "acme", Set: TenantLimits{Concurrency: MaxTenantConcurrency + 1}}, ErrBadLimits},
		{"unknown field reset", SetTenantLimits{Tenant: "acme", Reset: []string{"qps"}}, ErrBadLimits},
		{"set and reset one field", SetTenantLimits{Tenant: "acme", Set: TenantLimits{Burst: 2}, Reset: []string{LimitBurst}}, ErrBadLimits},
	}
	s, _ = tryApply(s, SetTenantLimits{Tenant: "acme", Set: TenantLimits{Concurrency: 9}}, 30)
	for _, b := range bad {
		before := s.canonical()
		next, err := tryApply(s, b.cmd, 31)
		if !errors.Is(err, b.want) {
			t.Fatalf("%s: error %v, want %v", b.name, err, b.want)
		}
		if codeOf(err) == "" {
			t.Fatalf("%s: untyped error %v", b.name, err)
		}
		if !bytes.Equal(before, next.canonical()) {
			t.Fatalf("%s: a rejected command changed the state", b.name)
		}
	}
	if _, err := tryApply(newState(), SetTenantLimits{Tenant: "acme", Set: TenantLimits{RPS: 1}}, 1); !errors.Is(err, ErrNotBootstrapped) {
		t.Fatalf("before bootstrap: %v", err)
	}
}

// TestTenantLimitsDeterministicAndInSnapshots: the same entries applied to two fresh states give
// byte-identical encodings; overrides survive a snapshot and the watch encoding; a map without
// overrides encodes exactly as before the field existed.
func TestTenantLimitsDeterministicAndInSnapshots(t *testing.T) {
	cmds := []Command{testTopology(), CreateTenant{Tenant: "acme", Region: "us-east"},
		SetTenantLimits{Tenant: "acme", Set: TenantLimits{RPS: 12.5, Burst: 30}},
		SetTenantLimits{Tenant: "globex", Set: TenantLimits{Concurrency: 4}},
		SetTenantLimits{Tenant: "acme", Set: TenantLimits{Concurrency: 2}, Reset: []string{LimitRPS}}}
	var entries [][]byte
	for _, c := range cmds {
		b, err := encodeEntry(c, t0)
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
				t.Fatalf("entry %d: %v", i, err)
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
	if l, _ := m.TenantLimits("acme"); l != (TenantLimits{Burst: 30, Concurrency: 2}) {
		t.Fatalf("acme limits %+v", l)
	}
	if got := m.LimitedTenants(); len(got) != 2 || got[0] != "acme" || got[1] != "globex" {
		t.Fatalf("limited tenants %v", got)
	}

	// Snapshot: Persist's writer and Restore's reader.
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
	if l, ok := buildMap(restored).TenantLimits("globex"); !ok || l.Concurrency != 4 {
		t.Fatalf("restored globex limits %+v %v", l, ok)
	}
	// The watch encoding (what API nodes and clients decode) carries them too.
	dm, err := DecodeMap(m.Canonical())
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := dm.TenantLimits("acme"); l.Burst != 30 {
		t.Fatalf("decoded acme limits %+v", l)
	}

	// No overrides: no new key in the encoding.
	plain := applyAll(t, testTopology())
	if bytes.Contains(plain.canonical(), []byte("tenant_limits")) {
		t.Fatalf("empty limits are encoded: %s", plain.canonical())
	}
	// A snapshot or watch answer with out-of-bounds overrides is refused.
	for _, bad := range []string{`{"acme":{"rps":-1}}`, `{"acme":{}}`, `{"Bad!":{"burst":1}}`} {
		enc := bytes.Replace(plain.canonical(), []byte(`"nodes":{}`), []byte(`"nodes":{},"tenant_limits":`+bad), 1)
		if _, err := DecodeMap(enc); err == nil {
			t.Fatalf("decoded a map with limits %s", bad)
		}
	}
}

// TestTenantLimitsLookupDoesNotAllocate: the router reads overrides on every request.
func TestTenantLimitsLookupDoesNotAllocate(t *testing.T) {
	s := applyAll(t, testTopology(), SetTenantLimits{Tenant: "acme", Set: TenantLimits{Concurrency: 2}})
	m := buildMap(s)
	tenant := string([]byte("acme")) // not a constant: the lookup key is a request's string
	if n := testing.AllocsPerRun(1000, func() {
		if _, ok := m.TenantLimits(tenant); !ok {
			t.Fatal("no limits")
		}
		_, _ = m.TenantLimits("other")
	}); n != 0 {
		t.Fatalf("TenantLimits allocates %v times per call", n)
	}
}
