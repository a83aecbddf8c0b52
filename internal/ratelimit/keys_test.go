package ratelimit

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestLeaseKeysAreTheRedisKeysAndNeverConfused: the leased path builds its keys on the stack
// and finds its lease states by them. Requests whose (scope, class, id) would run together if
// the key lost a part — a shared rule's id that spells another class, the same id in another
// class, scope or under an override, an id longer than the stack buffer — each get their own
// state, under exactly the Redis key the package has always used. Each bucket's burst is 2
// with a cap of 1, so a request is decided by Redis until its bucket denies, and the denial is
// remembered in the bucket's lease state: a request whose key were confused with an earlier
// one would find that denial instead of being declined by AllowNoWait as new.
func TestLeaseKeysAreTheRedisKeysAndNeverConfused(t *testing.T) {
	clk := newClock() // frozen: a denial lasts the whole test
	small := Limit{Rate: 0.01, Burst: 2}
	ls, rc, _ := rvRouters(t, 1, map[Rule]Limit{
		{Scope: ScopeTenant}:                    small,
		{Scope: ScopeTenant, Class: ClassRead}:  small,
		{Scope: ScopeSubject}:                   small,
		{Scope: ScopeIP}:                        small,
		{Scope: ScopeIP, Class: ClassAdmin}:     small,
		{Scope: ScopeSubject, Class: ClassRead}: small,
	}, 10000*time.Second, clk.Now)
	l := ls[0]
	long := strings.Repeat("f", 2*keyBufSize)
	cases := []struct {
		req Request
		key string
	}{
		{Request{Class: ClassWrite, Tenant: "readx"}, "meridian:rl:tenant::readx"},
		{Request{Class: ClassRead, Tenant: "x"}, "meridian:rl:tenant:read:x"}, // tenant+read+x = tenant+""+readx
		{Request{Class: ClassWrite, Tenant: "x"}, "meridian:rl:tenant::x"},
		{Request{Class: ClassWrite, Tenant: "read:x"}, "meridian:rl:tenant::read:x"},
		{Request{Class: ClassRead, Tenant: ":x"}, "meridian:rl:tenant:read::x"},
		{Request{Class: ClassWrite, Tenant: "x", TenantRate: 0.01, TenantBurst: 2}, "meridian:rl:tenant::0.01/2:x"},
		{Request{Class: ClassRead, Tenant: "x", TenantBurst: 2}, "meridian:rl:tenant:read:0.01/2:x"},
		{Request{Class: ClassWrite, Subject: "x"}, "meridian:rl:sub::x"},
		{Request{Class: ClassRead, Subject: "x"}, "meridian:rl:sub:read:x"},
		{Request{Class: ClassWrite, IP: "x"}, "meridian:rl:ip::x"},
		{Request{Class: ClassAdmin, IP: "x"}, "meridian:rl:ip:admin:x"},
		{Request{Class: ClassWrite, IP: "::1"}, "meridian:rl:ip::::1"},
		{Request{Class: ClassWrite, IP: "::"}, "meridian:rl:ip::::"},
		{Request{Class: ClassWrite, IP: long}, "meridian:rl:ip::" + long},
		{Request{Class: ClassWrite, IP: long + "g"}, "meridian:rl:ip::" + long + "g"},
	}
	ctx := context.Background()
	var want []string
	for i, c := range cases {
		if bs, err := l.buckets(c.req); err != nil || len(bs) != 1 || bs[0].key != c.key {
			t.Fatalf("case %d %+v: buckets %+v %v, want the one key %q", i, c.req, bs, err, c.key)
		}
		// Every earlier bucket now remembers a denial; this one is new.
		if res, ok, err := l.AllowNoWait(c.req); ok || err != nil {
			t.Fatalf("case %d %+v: decided %+v (%v) without Redis: its key is confused with an earlier one's", i, c.req, res, err)
		}
		for n := range 3 {
			res, err := l.Allow(ctx, c.req)
			if err != nil || res.Local || res.Allowed != (n < 2) {
				t.Fatalf("case %d %+v, request %d: %+v %v, want the burst of 2 and then a denial", i, c.req, n, res, err)
			}
		}
		if res, ok, err := l.AllowNoWait(c.req); !ok || err != nil || res.Allowed {
			t.Fatalf("case %d %+v: %+v decided %v (%v), want the denial remembered", i, c.req, res, ok, err)
		}
		// Redis holds the bucket under the key the package has always used.
		if got := rvConsumed(t, rc, c.key, small, clk.Now().UnixMicro()); got != 2 {
			t.Fatalf("case %d: Redis counts %v taken under %q, want 2", i, got, c.key)
		}
		want = append(want, c.key)
	}
	var got []string
	for k, st := range l.leases.m {
		if st.key != k {
			t.Errorf("lease state under %q keeps the key %q", k, st.key)
		}
		got = append(got, k)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("lease states %q, want one per case %q", got, want)
	}
}

// TestLeaseKeysOfHostileIDsAreSwept: every request AllowNoWait sees puts a lease state (and
// with it the bucket's key) in the table, even one it declines. A client sending a fresh id
// per request must not grow the table without end: the states of idle buckets are swept with
// their keys, and the table follows the ids in use.
func TestLeaseKeysOfHostileIDsAreSwept(t *testing.T) {
	clk := newClock()
	lease := time.Second
	l := leasedLimiters(t, 1, map[Rule]Limit{
		{Scope: ScopeTenant}: {Rate: 100, Burst: 1000},
		{Scope: ScopeIP}:     {Rate: 100, Burst: 1000},
	}, lease, clk.Now)[0]
	ctx := context.Background()
	const perWave = 2000
	for wave := range 3 {
		for i := range perWave {
			req := Request{Class: ClassRead, Tenant: "acme", IP: fmt.Sprintf("hostile-%d-%d", wave, i)}
			if _, ok, err := l.AllowNoWait(req); err != nil {
				t.Fatal(err)
			} else if !ok && i%100 == 0 { // now and then the router's way: Allow
				if _, err := l.Allow(ctx, req); err != nil {
					t.Fatal(err)
				}
			}
		}
		l.leases.mu.Lock()
		n := len(l.leases.m)
		l.leases.mu.Unlock()
		if n > perWave+2 {
			t.Fatalf("wave %d: %d lease states for %d ids in use", wave, n, perWave+1)
		}
		clk.Add(lease + 2*time.Duration(sweepEvery)*time.Microsecond) // every hostile id idle
	}
	if _, _, err := l.AllowNoWait(Request{Class: ClassRead, Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}
	if n := len(l.leases.m); n != 1 {
		t.Fatalf("%d lease states after %d hostile ids went idle, want 1 (acme's)", n, 3*perWave)
	}
}

// TestLeasedDecisionAllocatesNothing pins what BenchmarkAllowNoWaitLeased measures: a
// decision from held tokens, by AllowNoWait or Allow, allocates nothing.
func TestLeasedDecisionAllocatesNothing(t *testing.T) {
	clk := newClock() // frozen: the lease never ends
	big := Limit{Rate: 1e6, Burst: 1e6}
	l := leasedLimiters(t, 1, map[Rule]Limit{
		{Scope: ScopeTenant}: big, {Scope: ScopeSubject}: big, {Scope: ScopeIP}: big,
	}, 1000*time.Second, clk.Now)[0]
	ctx := context.Background()
	req := Request{Class: ClassRead, Tenant: "acme", Subject: "user-1", IP: "2001:db8::1"}
	for range 1 << 13 { // batches 1, 2, 4, …, 4096: 4095 tokens held at the end
		if res, err := l.Allow(ctx, req); err != nil || !res.Allowed || res.Local {
			t.Fatalf("%+v %v", res, err)
		}
	}
	calls := metricValue(t, l.redisCalls)
	noWait := testing.AllocsPerRun(1000, func() {
		if res, ok, err := l.AllowNoWait(req); !ok || err != nil || !res.Allowed {
			t.Fatalf("%+v decided %v (%v), want allowed from the lease", res, ok, err)
		}
	})
	allow := testing.AllocsPerRun(1000, func() {
		if res, err := l.Allow(ctx, req); err != nil || !res.Allowed {
			t.Fatalf("%+v %v", res, err)
		}
	})
	if got := metricValue(t, l.redisCalls); got != calls {
		t.Fatalf("%v Redis calls during the runs: not all decided from the lease", got-calls)
	}
	if noWait != 0 || allow != 0 {
		t.Fatalf("a leased decision allocates: AllowNoWait %v, Allow %v objects per call, want 0", noWait, allow)
	}
}
