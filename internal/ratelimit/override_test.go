package ratelimit

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestTenantOverrideReplacesRule: a request's TenantRate/TenantBurst replace the tenant rule's
// numbers in the same bucket; other scopes keep theirs; a bad override is an error.
func TestTenantOverrideReplacesRule(t *testing.T) {
	clk := newClock() // frozen: no refill
	l, err := New(Config{Limits: map[Rule]Limit{{Scope: ScopeTenant}: {Rate: 10, Burst: 5}}, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	over := Request{Class: ClassRead, Tenant: "small", TenantBurst: 2}
	for i := range 2 {
		res, err := l.Allow(ctx, over)
		if err != nil || !res.Allowed || res.Limit != 2 {
			t.Fatalf("request %d: %+v %v, want allowed with limit 2", i, res, err)
		}
	}
	res := res0(t, l, over)
	if res.Limit != 2 || res.RetryAfter != 100*time.Millisecond {
		t.Fatalf("denial %+v, want limit 2 and the rule's rate (10/s: 100ms)", res)
	}
	// The same tenant without the override (reset to the default) is on the rule's bucket of 5,
	// which the overridden bucket did not touch.
	if res, err := l.Allow(ctx, Request{Class: ClassWrite, Tenant: "small"}); err != nil || !res.Allowed || res.Limit != 5 || res.Remaining != 4 {
		t.Fatalf("rule request: %+v %v", res, err)
	}
	// Another tenant is untouched by small's override.
	if res, err := l.Allow(ctx, Request{Class: ClassRead, Tenant: "other"}); err != nil || res.Remaining != 4 || res.Limit != 5 {
		t.Fatalf("other tenant: %+v %v", res, err)
	}
	// A rate override: 1/s, burst from the rule.
	fast := Request{Class: ClassRead, Tenant: "slow", TenantRate: 1}
	for range 5 {
		if res, err := l.Allow(ctx, fast); err != nil || !res.Allowed {
			t.Fatalf("%+v %v", res, err)
		}
	}
	if res := res0(t, l, fast); res.RetryAfter != time.Second {
		t.Fatalf("rate override denial %+v, want retry after 1s", res)
	}
	for _, bad := range []Request{
		{Class: ClassRead, Tenant: "x", TenantRate: -1},
		{Class: ClassRead, Tenant: "x", TenantBurst: -3},
		{Class: ClassRead, Tenant: "x", TenantRate: MinRate / 10},
	} {
		if _, err := l.Allow(ctx, bad); !errors.Is(err, ErrBadLimit) {
			t.Fatalf("override %+v: %v, want ErrBadLimit", bad, err)
		}
	}
}

// TestTenantOverrideWithoutTenantRule: with no tenant rule, a rate override limits the tenant
// through one bucket for every class; a burst alone has no rate to go with and limits nothing.
func TestTenantOverrideWithoutTenantRule(t *testing.T) {
	clk := newClock()
	l, err := New(Config{Limits: map[Rule]Limit{{Scope: ScopeIP}: {Rate: 1000, Burst: 1000}}, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, c := range []Class{ClassRead, ClassWrite} {
		if res, err := l.Allow(ctx, Request{Class: c, Tenant: "t1", TenantRate: 1, TenantBurst: 2}); err != nil || !res.Allowed {
			t.Fatalf("%s: %+v %v", c, res, err)
		}
	}
	if res := res0(t, l, Request{Class: ClassAdmin, Tenant: "t1", TenantRate: 1, TenantBurst: 2}); res.Scope != ScopeTenant {
		t.Fatalf("binding scope %q, want tenant", res.Scope)
	}
	for range 10 {
		if res, err := l.Allow(ctx, Request{Class: ClassRead, Tenant: "t2", TenantBurst: 1}); err != nil || !res.Allowed {
			t.Fatalf("burst-only override limited: %+v %v", res, err)
		}
	}
}

// TestTenantOverrideAcrossRoutersAndRaisedLimit runs on a real Redis with leases: two routers
// carrying the same override share one bucket and admit exactly its burst; when the override is
// raised, a router that remembered a denial under the old numbers admits at once instead of
// waiting out the old Retry-After.
func TestTenantOverrideAcrossRoutersAndRaisedLimit(t *testing.T) {
	clk := newClock()
	ls := leasedLimiters(t, 2, map[Rule]Limit{{Scope: ScopeTenant}: {Rate: 500, Burst: 1000}}, time.Second, clk.Now)
	ctx := context.Background()
	low := Request{Class: ClassRead, Tenant: "acme", TenantRate: 0.001, TenantBurst: 3}
	admitted := 0
	for i := range 10 {
		res, err := ls[i%2].Allow(ctx, low)
		if err != nil || res.Local {
			t.Fatalf("%+v %v", res, err)
		}
		if res.Allowed {
			admitted++
		}
	}
	if admitted != 3 {
		t.Fatalf("two routers admitted %d under an override of burst 3", admitted)
	}
	// Both routers now remember a denial of ~1000 s.
	before := metricValue(t, ls[0].redisCalls)
	res0(t, ls[0], low)
	if metricValue(t, ls[0].redisCalls) != before {
		t.Fatal("the denial was not remembered (this test needs it to be)")
	}
	high := Request{Class: ClassRead, Tenant: "acme", TenantRate: 100, TenantBurst: 50}
	clk.Add(100 * time.Millisecond) // 10 tokens at the new rate
	res, err := ls[0].Allow(ctx, high)
	if err != nil || !res.Allowed || res.Limit != 50 {
		t.Fatalf("after raising the override: %+v %v, want allowed with limit 50", res, err)
	}
}
