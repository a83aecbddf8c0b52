package ratelimit

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// benchLeasedLimiter returns a Limiter on a real Redis with leases on (the default 100 ms) and
// a rule for each scope, big enough (10⁶/s, burst 10⁶: a lease cap of 10⁵ tokens) that one
// goroutine never runs a bucket dry, and a request that touches all three buckets.
func benchLeasedLimiter(b *testing.B) (*Limiter, Request) {
	b.Helper()
	srv := testenv.Redis(b)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	b.Cleanup(func() { _ = rc.Close() })
	big := Limit{Rate: 1e6, Burst: 1e6}
	l, err := New(Config{Redis: rc, Limits: map[Rule]Limit{
		{Scope: ScopeTenant}: big, {Scope: ScopeSubject}: big, {Scope: ScopeIP}: big,
	}})
	if err != nil {
		b.Fatal(err)
	}
	return l, Request{Class: ClassRead, Tenant: "bench-tenant", Subject: "user-4711", IP: "203.0.113.7"}
}

// benchDecide is the router's way: AllowNoWait, and Allow when that declines. It reports
// whether the decision needed Redis.
func benchDecide(b *testing.B, l *Limiter, req Request) (redisCall bool) {
	res, ok, err := l.AllowNoWait(req)
	if !ok {
		redisCall = true
		res, err = l.Allow(context.Background(), req)
	}
	if err != nil || !res.Allowed || res.Local {
		b.Fatalf("%+v %v", res, err)
	}
	return redisCall
}

// BenchmarkAllowNoWaitLeased measures the router event loop's decision: AllowNoWait, served
// from leased tokens. An iteration it declines goes to Allow, as in the router; the
// "declined/op" metric shows how rare that is (a batch of up to 10⁵ tokens lasts 100 ms).
//
//	go test -run '^$' -bench AllowNoWaitLeased -benchmem -count 5 ./internal/ratelimit
func BenchmarkAllowNoWaitLeased(b *testing.B) {
	l, req := benchLeasedLimiter(b)
	for range 1 << 16 { // let the batches grow to their cap
		benchDecide(b, l, req)
	}
	b.ReportAllocs()
	declined := 0
	for b.Loop() {
		if benchDecide(b, l, req) {
			declined++
		}
	}
	b.ReportMetric(float64(declined)/float64(b.N), "declined/op")
}

// BenchmarkAllowLeased is BenchmarkAllowNoWaitLeased through Allow, which shares the leased
// path (and asks Redis itself when a batch runs out).
func BenchmarkAllowLeased(b *testing.B) {
	l, req := benchLeasedLimiter(b)
	ctx := context.Background()
	for range 1 << 16 {
		if res, err := l.Allow(ctx, req); err != nil || !res.Allowed {
			b.Fatalf("%+v %v", res, err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if res, err := l.Allow(ctx, req); err != nil || !res.Allowed || res.Local {
			b.Fatalf("%+v %v", res, err)
		}
	}
}
