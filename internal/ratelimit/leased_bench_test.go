package ratelimit

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// benchLeasedLimiter returns a Limiter on a real Redis with leases on (the default 100 ms) and
// a rule for each scope, and requests that each touch all three buckets. A bucket admits at
// most 10⁶/s (the package's highest rate) and one goroutine decides faster than that, so the
// requests are spread over benchClients tenants, subjects and IPs: no bucket runs dry, and
// every batch (at most 10⁵ tokens) is a lease's worth.
func benchLeasedLimiter(b *testing.B) (*Limiter, [benchClients]Request) {
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
	var reqs [benchClients]Request
	for i := range reqs {
		reqs[i] = Request{Class: ClassRead, Tenant: fmt.Sprintf("bench-tenant-%d", i),
			Subject: fmt.Sprintf("user-%d", 4711+i), IP: fmt.Sprintf("203.0.113.%d", 7+i)}
	}
	return l, reqs
}

// benchClients is how many clients the benchmarks' requests come from.
const benchClients = 8

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
// "declined/op" metric shows how rare that is (about one per bucket and lease).
//
//	go test -run '^$' -bench AllowNoWaitLeased -benchmem -count 5 ./internal/ratelimit
func BenchmarkAllowNoWaitLeased(b *testing.B) {
	l, reqs := benchLeasedLimiter(b)
	for i := range 1 << 16 { // let the batches grow
		benchDecide(b, l, reqs[i%benchClients])
	}
	b.ReportAllocs()
	declined := 0
	for i := 0; b.Loop(); i++ {
		if benchDecide(b, l, reqs[i%benchClients]) {
			declined++
		}
	}
	b.ReportMetric(float64(declined)/float64(b.N), "declined/op")
}

// BenchmarkAllowLeased is BenchmarkAllowNoWaitLeased through Allow, which shares the leased
// path (and asks Redis itself when a batch runs out).
func BenchmarkAllowLeased(b *testing.B) {
	l, reqs := benchLeasedLimiter(b)
	ctx := context.Background()
	for i := range 1 << 16 {
		if res, err := l.Allow(ctx, reqs[i%benchClients]); err != nil || !res.Allowed {
			b.Fatalf("%+v %v", res, err)
		}
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if res, err := l.Allow(ctx, reqs[i%benchClients]); err != nil || !res.Allowed || res.Local {
			b.Fatalf("%+v %v", res, err)
		}
	}
}
