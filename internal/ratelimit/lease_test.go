package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// leasedLimiters returns n Limiters (n routers) sharing one real Redis and one clock.
func leasedLimiters(t *testing.T, n int, lim map[Rule]Limit, lease time.Duration, now func() time.Time) []*Limiter {
	t.Helper()
	srv := testenv.Redis(t)
	var ls []*Limiter
	for range n {
		rc := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
		t.Cleanup(func() { _ = rc.Close() })
		l, err := New(Config{Redis: rc, Limits: lim, Now: now, Lease: lease, RedisTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	return ls
}

// The tests below use slow rates on a frozen clock: Redis expires a bucket's key on its own
// (real) clock once the bucket would be full, so a key must outlive the test.

func TestLeaseBatchesRedisCallsAndKeepsCountsExact(t *testing.T) {
	clk := newClock() // frozen: no refill, so every count below is exact
	l := leasedLimiters(t, 1, map[Rule]Limit{{Scope: ScopeTenant}: {Rate: 1, Burst: 1000}}, 1000*time.Second, clk.Now)[0]
	if c := l.leaseCap(bucket{limit: Limit{Rate: 1, Burst: 1000}}); c != 100 {
		t.Fatalf("lease cap = %d, want min(burst/10, rate×lease) = 100", c)
	}
	ctx := context.Background()
	for i := range 1000 {
		res, err := l.Allow(ctx, Request{Class: ClassRead, Tenant: "acme"})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Allowed || res.Local || res.Remaining != int64(999-i) || res.Limit != 1000 {
			t.Fatalf("request %d: %+v, want allowed with %d remaining", i, res, 999-i)
		}
	}
	// Batches 1, 2, 4, …, 64, then 100 at a time: 7 + 9 calls (+1 for the remainder).
	calls := metricValue(t, l.redisCalls)
	if calls > 20 {
		t.Fatalf("%v Redis calls for 1000 decisions, want batches (≤ 20)", calls)
	}
	res, err := l.Allow(ctx, Request{Class: ClassRead, Tenant: "acme"})
	if err != nil || res.Allowed || res.RetryAfter != time.Second {
		t.Fatalf("request 1001: %+v %v, want denied with retry-after 1s", res, err)
	}
	t.Logf("1000 decisions, %v Redis calls", calls)
}

func TestLeaseManyRoutersNeverExceedBurst(t *testing.T) {
	clk := newClock() // frozen, so the burst is all there is
	const burst = 300
	ls := leasedLimiters(t, 3, map[Rule]Limit{{Scope: ScopeTenant}: {Rate: 1, Burst: burst}}, 1000*time.Second, clk.Now)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for _, l := range ls {
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 60 {
					res, err := l.Allow(context.Background(), Request{Class: ClassWrite, Tenant: "hot"})
					if err != nil || res.Local {
						t.Errorf("%+v %v", res, err)
						return
					}
					if res.Allowed {
						allowed.Add(1)
					}
				}
			}()
		}
	}
	wg.Wait()
	// 1440 attempts for 300 tokens: every token Redis granted is spent, none twice.
	if got := allowed.Load(); got != burst {
		t.Fatalf("3 routers admitted %d, want exactly the burst %d", got, burst)
	}
}

func TestLeaseExpiryGivesUnspentTokensBack(t *testing.T) {
	clk := newClock()
	lease := 20 * time.Second
	l := leasedLimiters(t, 1, map[Rule]Limit{{Scope: ScopeTenant}: {Rate: 1, Burst: 1000}}, lease, clk.Now)[0]
	if c := l.leaseCap(bucket{limit: Limit{Rate: 1, Burst: 1000}}); c != 20 {
		t.Fatalf("cap = %d, want 20", c)
	}
	ctx := context.Background()
	req := Request{Class: ClassRead, Tenant: "acme"}
	for range 200 {
		if res, err := l.Allow(ctx, req); err != nil || !res.Allowed {
			t.Fatalf("%+v %v", res, err)
		}
	}
	st := l.leases.m["meridian:rl:tenant::acme"]
	if st == nil || st.held == 0 {
		t.Fatalf("expected tokens held after 200 requests: %+v", st)
	}
	before := metricValue(t, l.redisCalls)
	if res, _ := l.Allow(ctx, req); !res.Allowed || metricValue(t, l.redisCalls) != before {
		t.Fatalf("a held token should decide without Redis: %+v", res)
	}
	clk.Add(lease)
	// The tokens still held are void now: the next decision asks Redis and gives them back.
	res, err := l.Allow(ctx, req)
	if err != nil || !res.Allowed {
		t.Fatalf("%+v %v", res, err)
	}
	if got := metricValue(t, l.redisCalls); got != before+1 {
		t.Fatalf("after the lease ended: %v Redis calls, want %v", got, before+1)
	}
	// 202 requests spent, 20 tokens refilled in 20 s; unspent leased tokens count as given back.
	if res.Remaining != 1000-202+20 {
		t.Fatalf("remaining after expiry = %d, want %d (unspent tokens not given back?)", res.Remaining, 1000-202+20)
	}
}

func TestLeaseRemembersDenials(t *testing.T) {
	clk := newClock()
	l := leasedLimiters(t, 1, testLimits(), 0, clk.Now)[0] // default lease; 10/s burst 5: cap 1
	ctx := context.Background()
	req := Request{Class: ClassWrite, Tenant: "acme"}
	for range 5 {
		if res, _ := l.Allow(ctx, req); !res.Allowed {
			t.Fatalf("within burst: %+v", res)
		}
	}
	if calls := metricValue(t, l.redisCalls); calls != 5 {
		t.Fatalf("a bucket whose cap is 1 must be decided exactly: %v calls for 5 decisions", calls)
	}
	first, _ := l.Allow(ctx, req)
	if first.Allowed || first.RetryAfter != 100*time.Millisecond {
		t.Fatalf("over limit: %+v", first)
	}
	for i := range 50 {
		clk.Add(time.Millisecond)
		res, err := l.Allow(ctx, req)
		if err != nil || res.Allowed || res.RetryAfter != time.Duration(99-i)*time.Millisecond {
			t.Fatalf("remembered denial %d: %+v %v", i, res, err)
		}
	}
	if calls := metricValue(t, l.redisCalls); calls != 6 {
		t.Fatalf("remembered denials asked Redis: %v calls, want 6", calls)
	}
	clk.Add(50 * time.Millisecond)
	if res, _ := l.Allow(ctx, req); !res.Allowed || metricValue(t, l.redisCalls) != 7 {
		t.Fatalf("at retry-after: %+v", res)
	}
}

func TestLeaseGivesBackTokensWhenAnotherBucketDenies(t *testing.T) {
	clk := newClock()
	l := leasedLimiters(t, 1, map[Rule]Limit{
		{Scope: ScopeTenant}: {Rate: 1, Burst: 1000},
		{Scope: ScopeIP}:     {Rate: 0.001, Burst: 2}, // cap 1: exact
	}, 1000*time.Second, clk.Now)[0]
	ctx := context.Background()
	for i := range 5 {
		res, err := l.Allow(ctx, Request{Class: ClassRead, Tenant: "acme", IP: "10.0.0.1"})
		if err != nil || res.Allowed != (i < 2) {
			t.Fatalf("request %d from one IP: %+v %v", i, res, err)
		}
		if i >= 2 && res.Scope != ScopeIP {
			t.Fatalf("denial blamed on %q, want ip", res.Scope)
		}
	}
	// Only the two admitted requests spent tenant tokens.
	res, err := l.Allow(ctx, Request{Class: ClassRead, Tenant: "acme"})
	if err != nil || !res.Allowed || res.Scope != ScopeTenant || res.Remaining != 1000-3 {
		t.Fatalf("tenant after IP denials: %+v %v, want %d remaining", res, err, 1000-3)
	}
}

func TestLeaseOffAsksRedisEveryTime(t *testing.T) {
	l := leasedLimiters(t, 1, map[Rule]Limit{{Scope: ScopeTenant}: {Rate: 1000, Burst: 1000}}, -1, newClock().Now)[0]
	for range 20 {
		if res, err := l.Allow(context.Background(), Request{Class: ClassRead, Tenant: "acme"}); err != nil || !res.Allowed {
			t.Fatalf("%+v %v", res, err)
		}
	}
	if calls := metricValue(t, l.redisCalls); calls != 20 {
		t.Fatalf("Lease < 0: %v Redis calls for 20 decisions, want 20", calls)
	}
}

// BenchmarkAllow compares, in one run, a decision per request in Redis with leased tokens.
func BenchmarkAllow(b *testing.B) {
	srv := testenv.Redis(b)
	lim := map[Rule]Limit{{Scope: ScopeTenant}: {Rate: 1e6, Burst: 1e6}, {Scope: ScopeIP}: {Rate: 1e6, Burst: 1e6}}
	for _, c := range []struct {
		name  string
		lease time.Duration
	}{{"redis-every-request", -1}, {"leased", 0}} {
		b.Run(c.name, func(b *testing.B) {
			rc := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
			defer rc.Close()
			l, err := New(Config{Redis: rc, Limits: lim, Lease: c.lease, KeyPrefix: c.name + ":"})
			if err != nil {
				b.Fatal(err)
			}
			req := Request{Class: ClassRead, Tenant: "bench", IP: "127.0.0.1"}
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if res, err := l.Allow(context.Background(), req); err != nil || !res.Allowed || res.Local {
						b.Errorf("%+v %v", res, err)
						return
					}
				}
			})
		})
	}
}

func TestLeaseStatesOfIdleBucketsAreDropped(t *testing.T) {
	clk := newClock()
	l := leasedLimiters(t, 1, map[Rule]Limit{{Scope: ScopeTenant}: {Rate: 100, Burst: 1000}}, time.Second, clk.Now)[0]
	ctx := context.Background()
	for i := range 50 {
		for range 3 { // enough for a lease with tokens left over
			if _, err := l.Allow(ctx, Request{Class: ClassRead, Tenant: fmt.Sprintf("t%03d", i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := len(l.leases.m); n != 50 {
		t.Fatalf("%d lease states, want 50", n)
	}
	clk.Add(time.Second + 2*time.Duration(sweepEvery)*time.Microsecond)
	if _, err := l.Allow(ctx, Request{Class: ClassRead, Tenant: "fresh"}); err != nil {
		t.Fatal(err)
	}
	if n := len(l.leases.m); n != 1 {
		t.Fatalf("%d lease states after every other bucket went idle, want 1", n)
	}
}

// TestAllowNoWaitNeverCallsRedis: AllowNoWait decides from leased tokens and remembered
// denials exactly as Allow would, declines (spending nothing) when Redis would be needed, and
// never calls Redis for its decision (a lease it renews ahead calls Redis in the background:
// every call is such a renewal); the counts stay exact across both.
func TestAllowNoWaitNeverCallsRedis(t *testing.T) {
	clk := newClock() // frozen: no refill
	l := leasedLimiters(t, 1, map[Rule]Limit{{Scope: ScopeTenant}: {Rate: 1, Burst: 100}}, 1000*time.Second, clk.Now)[0]
	ctx := context.Background()
	req := Request{Class: ClassRead, Tenant: "acme"}
	if _, ok, err := l.AllowNoWait(req); ok || err != nil {
		t.Fatalf("first request: decided %v (%v), want declined: no lease yet", ok, err)
	}
	allowed := 0
	renewals := func() float64 {
		return metricValue(t, l.renewals.WithLabelValues("granted")) + metricValue(t, l.renewals.WithLabelValues("failed"))
	}
	for range 200 {
		calls, renewed := metricValue(t, l.redisCalls), renewals()
		res, ok, err := l.AllowNoWait(req)
		if err != nil {
			t.Fatal(err)
		}
		waitRenewed(t, l, "meridian:rl:tenant::acme")
		if metricValue(t, l.redisCalls)-calls != renewals()-renewed {
			t.Fatal("AllowNoWait called Redis for its decision")
		}
		if !ok {
			res, err = l.Allow(ctx, req) // the caller's way when declined
			if err != nil {
				t.Fatal(err)
			}
		}
		if res.Allowed {
			allowed++
		}
	}
	if allowed != 100 {
		t.Fatalf("%d of 200 allowed over both paths, want exactly the burst, 100", allowed)
	}
	// The denial is remembered: decided without Redis.
	if res, ok, err := l.AllowNoWait(req); !ok || err != nil || res.Allowed {
		t.Fatalf("after the burst: %+v decided %v (%v), want a remembered denial", res, ok, err)
	}
}
