package ratelimit

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/testenv"
)

// Review tests for leases (lease.go). Like lease_test.go they run on a frozen or stepped fake
// clock with slow rates (one token per 100 s), so that Redis's real-time key expiry (the TTL is
// the bucket's fake time to full, in real milliseconds) never empties a bucket mid-test.

// rvRouters returns n Limiters sharing one real Redis and clock, a client to inspect it, and
// the server (to stop and restart it).
func rvRouters(t *testing.T, n int, lim map[Rule]Limit, lease time.Duration, now func() time.Time) ([]*Limiter, *redis.Client, *localsrv.Redis) {
	t.Helper()
	srv := testenv.Redis(t)
	var ls []*Limiter
	for range n {
		rc := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, DialTimeout: time.Second})
		t.Cleanup(func() { _ = rc.Close() })
		l, err := New(Config{Redis: rc, Limits: lim, Now: now, Lease: lease, RedisTimeout: 5 * time.Second,
			ProbeInterval: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	insp := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = insp.Close() })
	return ls, insp, srv
}

// rvConsumed is how many tokens Redis counts as taken from key at now (µs): (TAT−now)/interval,
// 0 for a missing key (a full bucket).
func rvConsumed(t *testing.T, rc *redis.Client, key string, lim Limit, now int64) float64 {
	t.Helper()
	s, err := rc.Get(context.Background(), key).Result()
	if err == redis.Nil {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	tat, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("TAT %q of %s: %v", s, key, err)
	}
	return float64(max(0, tat-now)) / float64(lim.interval())
}

// rvHeld sums the tokens every Limiter holds for key.
func rvHeld(ls []*Limiter, key string) int64 {
	var n int64
	for _, l := range ls {
		l.leases.mu.Lock()
		if st := l.leases.m[key]; st != nil {
			n += st.held
		}
		l.leases.mu.Unlock()
	}
	return n
}

// TestLeaseReviewAccountingIsExactAcrossRoutersAndBuckets: 3 routers × 6 goroutines send
// requests touching tenant + subject + IP buckets of different sizes on a frozen clock, so that
// IP and subject buckets deny while tenant tokens are leased. For every bucket, the requests
// admitted plus the tokens still held must equal exactly what Redis counts as taken (nothing
// admitted without a token Redis granted, no token lost or counted twice) and never exceed the
// burst.
func TestLeaseReviewAccountingIsExactAcrossRoutersAndBuckets(t *testing.T) {
	clk := newClock()
	lim := map[Rule]Limit{
		{Scope: ScopeTenant}:  {Rate: 0.01, Burst: 200}, // cap min(20, 0.01×10⁴) = 20
		{Scope: ScopeSubject}: {Rate: 0.01, Burst: 60},  // cap 6
		{Scope: ScopeIP}:      {Rate: 0.01, Burst: 30},  // cap 3
	}
	ls, rc, _ := rvRouters(t, 3, lim, 10000*time.Second, clk.Now)
	tenants := []string{"t0", "t1"}
	subjects := []string{"s0", "s1", "s2", "s3"}
	ips := []string{"10.0.0.1", "10.0.0.2", "::1", "10.0.0.4", "10.0.0.5", "10.0.0.6"}
	var mu sync.Mutex
	admitted := map[string]int64{} // bucket key -> requests admitted that touched it
	var wg sync.WaitGroup
	for li, l := range ls {
		for g := range 6 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(li), uint64(g)))
				for range 90 {
					req := Request{Class: ClassRead, Tenant: tenants[rng.IntN(len(tenants))]}
					if rng.IntN(3) > 0 {
						req.Subject = subjects[rng.IntN(len(subjects))]
					}
					if rng.IntN(3) > 0 {
						req.IP = ips[rng.IntN(len(ips))]
					}
					res, err := l.Allow(context.Background(), req)
					if err != nil || res.Local {
						t.Errorf("%+v: %+v %v", req, res, err)
						return
					}
					if !res.Allowed {
						if res.RetryAfter <= 0 || res.Remaining != 0 {
							t.Errorf("denied without a retry-after: %+v", res)
						}
						continue
					}
					bs, _ := l.buckets(req)
					mu.Lock()
					for _, b := range bs {
						admitted[b.key]++
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	now := clk.Now().UnixMicro()
	check := func(scope Scope, ids []string) {
		for _, id := range ids {
			key := "meridian:rl:" + string(scope) + "::" + id
			l := lim[Rule{Scope: scope}]
			n, held := admitted[key], rvHeld(ls, key)
			if n > l.burst() {
				t.Errorf("%s: admitted %d > burst %d on a frozen clock", key, n, l.burst())
			}
			if got := rvConsumed(t, rc, key, l, now); got != float64(n+held) {
				t.Errorf("%s: Redis counts %v taken, routers admitted %d and hold %d", key, got, n, held)
			}
		}
	}
	check(ScopeTenant, tenants)
	check(ScopeSubject, subjects)
	check(ScopeIP, ips)
	if t.Failed() {
		t.Logf("admitted: %v", admitted)
	}
}

// TestLeaseReviewSaturatedBucketNeverOverAdmits: the clock moves in steps while 3 routers keep
// a bucket drained, with leases expiring in between (tokens given back, batches halving). Over
// the whole run the routers may admit at most burst + rate × elapsed, and the exact accounting
// (admitted + held = taken, counted from the start) holds at every step.
func TestLeaseReviewSaturatedBucketNeverOverAdmits(t *testing.T) {
	clk := newClock()
	start := clk.Now().UnixMicro()
	lim := Limit{Rate: 0.01, Burst: 100} // cap min(10, 0.01×2000) = 10
	ls, rc, _ := rvRouters(t, 3, map[Rule]Limit{{Scope: ScopeTenant}: lim}, 2000*time.Second, clk.Now)
	const key = "meridian:rl:tenant::hot"
	var admitted atomic.Int64
	for step := range 6 {
		var wg sync.WaitGroup
		for _, l := range ls {
			for range 4 {
				wg.Go(func() {
					for range 40 {
						res, err := l.Allow(context.Background(), Request{Class: ClassWrite, Tenant: "hot"})
						if err != nil || res.Local {
							t.Errorf("%+v %v", res, err)
							return
						}
						if res.Allowed {
							admitted.Add(1)
						}
					}
				})
			}
		}
		wg.Wait()
		now := clk.Now().UnixMicro()
		elapsed := float64(now-start) / 1e6
		n, held := admitted.Load(), rvHeld(ls, key)
		if limit := float64(lim.burst()) + lim.Rate*elapsed; float64(n) > limit {
			t.Fatalf("step %d: admitted %d in %.0f s, GCRA allows at most %.0f", step, n, elapsed, limit)
		}
		// Redis's TAT, seen from the start, is start + (everything taken) × interval while the
		// bucket never ran full (it is kept drained here).
		tat := rvConsumed(t, rc, key, lim, start)
		if tat != float64(n+held) {
			t.Fatalf("step %d: Redis counts %v taken since the start, routers admitted %d and hold %d", step, tat, n, held)
		}
		// 1500 s: a lease (2000 s) ends every other step; 15 tokens refill per step.
		clk.Add(1500 * time.Second)
	}
	if n := admitted.Load(); n < 100 {
		t.Fatalf("only %d admitted: the routers never drained the bucket", n)
	}
}

// TestLeaseReviewBatchGrowsHalvesAndStaysUnderCap walks one bucket's batch size through
// doubling and halving and checks that no grant ever exceeds the cap.
func TestLeaseReviewBatchGrowsHalvesAndStaysUnderCap(t *testing.T) {
	clk := newClock()
	lim := Limit{Rate: 0.01, Burst: 1000} // cap min(100, 0.01×1200) = 12
	lease := 1200 * time.Second
	ls, rc, _ := rvRouters(t, 1, map[Rule]Limit{{Scope: ScopeTenant}: lim}, lease, clk.Now)
	l := ls[0]
	const key = "meridian:rl:tenant::acme"
	if c := l.leaseCap(bucket{limit: lim}); c != 12 {
		t.Fatalf("cap = %d, want 12", c)
	}
	req := Request{Class: ClassRead, Tenant: "acme"}
	ctx := context.Background()
	var grants []float64
	var admitted int64
	allow := func() {
		t.Helper()
		before := rvConsumed(t, rc, key, lim, clk.Now().UnixMicro())
		res, err := l.Allow(ctx, req)
		if err != nil || !res.Allowed || res.Local {
			t.Fatalf("%+v %v", res, err)
		}
		admitted++
		after := rvConsumed(t, rc, key, lim, clk.Now().UnixMicro())
		if g := after - before; g != 0 {
			grants = append(grants, g)
		}
		if h := rvHeld(ls, key); h > 11 {
			t.Fatalf("holding %d tokens, cap is 12 (one spent at the grant)", h)
		}
	}
	for range 60 {
		allow()
	}
	// 1, 2, 4, 8, then the cap 12 at most.
	want := []float64{1, 2, 4, 8, 12, 12, 12, 12}
	if fmt.Sprint(grants[:len(want)]) != fmt.Sprint(want) {
		t.Fatalf("grants %v, want to start %v", grants, want)
	}
	for _, g := range grants {
		if g > 12 {
			t.Fatalf("a grant of %v > cap 12: %v", g, grants)
		}
	}
	// Each expiry with the last batch unspent halves the next one: 12 → 6 → 3 → 1.
	for _, w := range []float64{6, 3, 1, 1} {
		clk.Add(lease)
		grants = grants[:0]
		held := rvHeld(ls, key)
		before := rvConsumed(t, rc, key, lim, clk.Now().UnixMicro())
		if _, err := l.Allow(ctx, req); err != nil {
			t.Fatal(err)
		}
		admitted++
		after := rvConsumed(t, rc, key, lim, clk.Now().UnixMicro())
		// The call gave back what was held, then took a batch of w.
		if got := after - before; got != w-float64(held) {
			t.Fatalf("after expiry (held %d): Redis count moved by %v, want %v (refund %d, batch %v)", held, got, w-float64(held), held, w)
		}
		if h := rvHeld(ls, key); float64(h) != w-1 {
			t.Fatalf("holding %d after a batch of %v", h, w)
		}
	}
}

// TestLeaseReviewRememberedDenialSpendsNothingElsewhere: a tenant denial is remembered, and
// requests of that tenant from fresh IPs neither ask Redis nor take IP tokens; an IP denial
// hands back the tenant token reserved for the request.
func TestLeaseReviewRememberedDenialSpendsNothingElsewhere(t *testing.T) {
	clk := newClock()
	lim := map[Rule]Limit{
		{Scope: ScopeTenant}: {Rate: 0.01, Burst: 3}, // cap 1: exact
		{Scope: ScopeIP}:     {Rate: 0.01, Burst: 500},
	}
	ls, rc, _ := rvRouters(t, 1, lim, 10000*time.Second, clk.Now)
	l := ls[0]
	ctx := context.Background()
	for i := range 3 {
		if res, err := l.Allow(ctx, Request{Class: ClassRead, Tenant: "a", IP: "10.0.0." + strconv.Itoa(i)}); err != nil || !res.Allowed {
			t.Fatalf("%+v %v", res, err)
		}
	}
	if res, _ := l.Allow(ctx, Request{Class: ClassRead, Tenant: "a", IP: "10.9.9.9"}); res.Allowed || res.Scope != ScopeTenant {
		t.Fatalf("4th request of a tenant with burst 3: %+v", res)
	}
	calls := metricValue(t, l.redisCalls)
	for i := range 20 {
		res, err := l.Allow(ctx, Request{Class: ClassRead, Tenant: "a", IP: "10.1.0." + strconv.Itoa(i)})
		if err != nil || res.Allowed || res.Scope != ScopeTenant || res.RetryAfter != 100*time.Second {
			t.Fatalf("remembered denial: %+v %v", res, err)
		}
	}
	if got := metricValue(t, l.redisCalls); got != calls {
		t.Fatalf("remembered denials asked Redis %v times", got-calls)
	}
	now := clk.Now().UnixMicro()
	for i := range 20 {
		key := "meridian:rl:ip::10.1.0." + strconv.Itoa(i)
		if c := rvConsumed(t, rc, key, lim[Rule{Scope: ScopeIP}], now); c != 0 {
			t.Fatalf("%s: %v tokens taken by denied requests", key, c)
		}
		if h := rvHeld(ls, key); h != 0 {
			t.Fatalf("%s: %d tokens leased for denied requests", key, h)
		}
	}
	// The denial ends when Redis said it would, not earlier and not later.
	clk.Add(100*time.Second - time.Microsecond)
	if res, _ := l.Allow(ctx, Request{Class: ClassRead, Tenant: "a"}); res.Allowed {
		t.Fatalf("admitted 1 µs before the retry-after: %+v", res)
	}
	clk.Add(time.Microsecond)
	if res, _ := l.Allow(ctx, Request{Class: ClassRead, Tenant: "a"}); !res.Allowed {
		t.Fatalf("denied at the retry-after: %+v", res)
	}
}

// TestLeaseReviewRedisOutageAndRestart stops Redis while routers are busy and restarts it
// empty: no decision errors, the fallback admits at most one burst per router, and after the
// restart the routers are back on Redis admitting at most a fresh burst plus what they held.
func TestLeaseReviewRedisOutageAndRestart(t *testing.T) {
	clk := newClock()
	lim := Limit{Rate: 0.01, Burst: 100}
	ls, _, srv := rvRouters(t, 2, map[Rule]Limit{{Scope: ScopeTenant}: lim}, 10000*time.Second, clk.Now)
	const key = "meridian:rl:tenant::hot"
	ctx := context.Background()
	req := Request{Class: ClassWrite, Tenant: "hot"}
	hammer := func(perRouter int) (redisAdmitted, localAdmitted []int64) {
		t.Helper()
		redisAdmitted, localAdmitted = make([]int64, len(ls)), make([]int64, len(ls))
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i, l := range ls {
			for range 3 {
				wg.Go(func() {
					for range perRouter / 3 {
						res, err := l.Allow(ctx, req)
						if err != nil {
							t.Errorf("Allow: %v", err)
							return
						}
						if res.Allowed {
							mu.Lock()
							if res.Local {
								localAdmitted[i]++
							} else {
								redisAdmitted[i]++
							}
							mu.Unlock()
						}
					}
				})
			}
		}
		wg.Wait()
		return redisAdmitted, localAdmitted
	}
	// Only some of the burst: the routers hold leased tokens when Redis goes.
	r1, l1 := hammer(30)
	if l1[0]+l1[1] != 0 || r1[0]+r1[1] != 60 {
		t.Fatalf("with Redis up: redis %v local %v", r1, l1)
	}
	held := rvHeld(ls, key)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	r2, l2 := hammer(300)
	for i := range ls {
		if !ls[i].Fallback() {
			t.Fatalf("router %d not in fallback with Redis stopped", i)
		}
		// The in-process limiter starts full: one burst per router, nothing more.
		if l2[i] != lim.burst() {
			t.Fatalf("router %d admitted %d locally, want its own burst %d", i, l2[i], lim.burst())
		}
	}
	if r2[0]+r2[1] > held {
		t.Fatalf("with Redis down, %v admitted as Redis-backed but only %d tokens were held", r2, held)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	for i, l := range ls {
		testenv.WaitFor(t, 10*time.Second, func() error {
			if _, err := l.Allow(ctx, Request{Class: ClassRead, Tenant: "probe-" + strconv.Itoa(i)}); err != nil {
				return err
			}
			if l.Fallback() {
				return fmt.Errorf("router %d still in fallback", i)
			}
			return nil
		})
	}
	held = rvHeld(ls, key)
	r3, l3 := hammer(300)
	if l3[0]+l3[1] != 0 {
		t.Fatalf("local decisions after recovery: %v", l3)
	}
	// The restarted Redis is empty: a fresh burst, plus the still valid leases.
	if got := r3[0] + r3[1]; got > lim.burst()+held || got < lim.burst() {
		t.Fatalf("after the restart: admitted %d, want between %d and %d", got, lim.burst(), lim.burst()+held)
	}
}

// TestLeaseReviewSweepKeepsWhatIsStillNeeded: the sweep drops idle states but keeps those with a
// pending denial, a refill in flight, or unspent tokens to give back (until sweepEvery after the
// lease ended).
func TestLeaseReviewSweepKeepsWhatIsStillNeeded(t *testing.T) {
	lt := &leaseTable{m: map[string]*leaseState{}}
	const now = int64(1_000_000_000_000)
	lt.m["idle"] = &leaseState{want: 4, expires: now - 1}
	lt.m["never"] = &leaseState{want: 1}
	lt.m["leased"] = &leaseState{held: 3, expires: now + 1}
	lt.m["unspent-recent"] = &leaseState{held: 3, expires: now - sweepEvery + 2}
	lt.m["unspent-old"] = &leaseState{held: 3, expires: now - sweepEvery}
	lt.m["denied"] = &leaseState{deniedUntil: now + 2}
	lt.m["refilling"] = &leaseState{refilling: true}
	lt.lastSweep = now - sweepEvery // not yet due
	lt.sweep(now)
	if len(lt.m) != 7 {
		t.Fatalf("swept before sweepEvery passed: %d states left", len(lt.m))
	}
	lt.sweep(now + 1)
	var left []string
	for _, k := range []string{"idle", "never", "leased", "unspent-recent", "unspent-old", "denied", "refilling"} {
		if lt.m[k] != nil {
			left = append(left, k)
		}
	}
	// At now+1, "leased" has just expired with tokens held, so it stays for the refund.
	if got, want := fmt.Sprint(left), "[leased unspent-recent denied refilling]"; got != want {
		t.Fatalf("after the sweep: %s, want %s", got, want)
	}
	if lt.lastSweep != now+1 {
		t.Fatalf("lastSweep = %d", lt.lastSweep)
	}
}

// TestLeaseReviewCapTable pins max(1, min(burst/10, rate×lease)).
func TestLeaseReviewCapTable(t *testing.T) {
	for _, c := range []struct {
		lim   Limit
		lease time.Duration
		want  int64
	}{
		{Limit{Rate: 500, Burst: 1000}, 100 * time.Millisecond, 50},
		{Limit{Rate: 2000, Burst: 2000}, 100 * time.Millisecond, 200},
		{Limit{Rate: 10, Burst: 5}, 100 * time.Millisecond, 1},
		{Limit{Rate: 1000}, 100 * time.Millisecond, 100},
		{Limit{Rate: 5, Burst: 1000}, 100 * time.Millisecond, 1},
		{Limit{Rate: 1e6, Burst: 19}, time.Second, 1},
		{Limit{Rate: 1e6, Burst: 20}, time.Second, 2},
	} {
		l := &Limiter{lease: c.lease}
		if got := l.leaseCap(bucket{limit: c.lim}); got != c.want {
			t.Errorf("%+v lease %v: cap %d, want %d", c.lim, c.lease, got, c.want)
		}
	}
}

// Found by review (these failed before the fix in the same commit).
func TestLeaseReviewStaleRefundAfterRefillOverAdmits(t *testing.T) {
	clk := newClock()
	lim := map[Rule]Limit{{Scope: ScopeTenant}: {Rate: 0.02, Burst: 200}} // 50 s per token
	lease := 1000 * time.Second                                           // cap min(20, 0.02×1000) = 20
	srv := testenv.Redis(t)
	mk := func(lease time.Duration) *Limiter {
		rc := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
		t.Cleanup(func() { _ = rc.Close() })
		l, err := New(Config{Redis: rc, Limits: lim, Now: clk.Now, Lease: lease, RedisTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a, b := mk(lease), mk(-1) // router A leases; router B asks Redis every time
	ctx := context.Background()
	req := Request{Class: ClassWrite, Tenant: "acme"}
	// A admits 8 requests: batches 1, 2, 4, 8 take 15 tokens (750 s of the bucket); A holds 7.
	for range 8 {
		if res, err := a.Allow(ctx, req); err != nil || !res.Allowed {
			t.Fatalf("%+v %v", res, err)
		}
	}
	// A goes quiet. 1005 s later its lease has ended (5 s ago) and the bucket is full again:
	// those 15 tokens refilled long ago.
	clk.Add(lease + 5*time.Second)
	admitted := 0
	for range 250 { // B finds a full bucket and drains it
		if res, _ := b.Allow(ctx, req); res.Allowed {
			admitted++
		}
	}
	for range 50 { // A comes back at the same instant
		if res, _ := a.Allow(ctx, req); res.Allowed {
			admitted++
		}
	}
	// On a frozen clock a bucket of 200 admits at most 200 at one instant.
	if admitted > 200 {
		t.Fatalf("admitted %d at one instant from a bucket of burst 200: A's stale refund undid B's spending", admitted)
	}
}

func TestLeaseReviewExtremeRatesAreRejectedOrHonoured(t *testing.T) {
	for _, lim := range []Limit{{Rate: 1e-13, Burst: 1}, {Rate: 1e20}} {
		l, err := New(Config{Limits: map[Rule]Limit{{Scope: ScopeTenant}: lim}, Now: newClock().Now})
		if err != nil {
			continue // rejected with a clear error: fine
		}
		clk := newClock()
		l.now = clk.Now
		admitted := 0
		for range 3 {
			clk.Add(time.Second)
			if res, _ := l.Allow(context.Background(), Request{Class: ClassRead, Tenant: "a"}); res.Allowed {
				admitted++
			}
		}
		if want := map[bool]int{true: 1, false: 3}[lim.Rate < 1]; admitted != want {
			t.Errorf("%+v: admitted %d of 3 requests 1 s apart, want %d (interval %d µs, burst %d)", lim, admitted, want, lim.interval(), lim.burst())
		}
	}
}
