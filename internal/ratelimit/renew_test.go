package ratelimit

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// waitRenewed waits until no renewal of l's lease for key is in flight, and returns the lease's
// held tokens and end.
func waitRenewed(t *testing.T, l *Limiter, key string) (held, expires int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.leases.mu.Lock()
		st := l.leases.m[key]
		busy := st != nil && st.refilling
		if st != nil {
			held, expires = st.held, st.expires
		}
		l.leases.mu.Unlock()
		if !busy {
			return held, expires
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: a renewal still in flight after 5 s", key)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestLeaseRenewedAheadKeepsNoWaitDecisionsOnTheLoop: decisions that may not wait (the
// router's event loop) are all made from the lease, because it is renewed before it runs dry
// and before it ends; every token stays accounted for to the token, across two routers; a
// router never holds more than the cap.
func TestLeaseRenewedAheadKeepsNoWaitDecisionsOnTheLoop(t *testing.T) {
	clk := newClock() // frozen but where stepped: Redis's count compares exactly
	lease := 10000 * time.Second
	lim := Limit{Rate: 0.01, Burst: 1000} // cap min(100, 0.01×10⁴) = 100
	ls, rc, _ := rvRouters(t, 2, map[Rule]Limit{{Scope: ScopeTenant}: lim}, lease, clk.Now)
	const key = "meridian:rl:tenant::acme"
	req := Request{Class: ClassRead, Tenant: "acme"}
	ctx := context.Background()
	capacity := ls[0].leaseCap(bucket{limit: lim})
	admitted := int64(0)
	// Router 0 takes batches 1, 2, 4, … 32 on the request path (Allow), as a new bucket does.
	for range 40 {
		if res, err := ls[0].Allow(ctx, req); err != nil || !res.Allowed {
			t.Fatalf("Allow: %+v %v", res, err)
		}
		admitted++
	}
	// Then only decisions that may not wait, with router 1 spending through Redis beside it.
	for i := range 500 {
		res, ok, err := ls[0].AllowNoWait(req)
		if !ok || err != nil || !res.Allowed {
			t.Fatalf("decision %d: decided %v, %+v, %v: want allowed from the lease", i, ok, res, err)
		}
		admitted++
		if i%5 == 0 {
			if res, err := ls[1].Allow(ctx, req); err != nil || !res.Allowed {
				t.Fatalf("router 1: %+v %v", res, err)
			}
			admitted++
		}
		if held, _ := waitRenewed(t, ls[0], key); held > capacity {
			t.Fatalf("router 0 holds %d tokens, more than the cap %d", held, capacity)
		}
	}
	granted := metricValue(t, ls[0].renewals.WithLabelValues("granted"))
	if granted < 3 {
		t.Fatalf("%v leases renewed ahead for 500 decisions, want several", granted)
	}
	held := rvHeld(ls, key)
	if got := rvConsumed(t, rc, key, lim, clk.Now().UnixMicro()); got != float64(admitted+held) {
		t.Fatalf("Redis counts %v taken; the routers admitted %d and hold %d", got, admitted, held)
	}

	// A lease in its last quarter is renewed too, and starts again.
	_, end := waitRenewed(t, ls[0], key)
	clk.Add(time.Duration(end-clk.Now().UnixMicro())*time.Microsecond - lease/5)
	if res, ok, err := ls[0].AllowNoWait(req); !ok || err != nil || !res.Allowed {
		t.Fatalf("in the lease's last quarter: decided %v, %+v, %v", ok, res, err)
	}
	if _, end2 := waitRenewed(t, ls[0], key); end2 != clk.Now().UnixMicro()+lease.Microseconds() {
		t.Fatalf("lease ends at %d after the renewal, want %d (now + lease)", end2, clk.Now().UnixMicro()+lease.Microseconds())
	}
	if got := metricValue(t, ls[0].renewals.WithLabelValues("granted")); got != granted+1 {
		t.Fatalf("renewals granted %v, want %v", got, granted+1)
	}
}

// TestLeaseRenewalOfADrainedBucketAdmitsNoMore: renewals ahead of need on a small bucket on a
// frozen clock: once Redis has nothing left to grant they fail (counted), the lease is spent to
// its end, the decision then goes to Redis (AllowNoWait declines it) and is denied; no more
// requests are admitted than the bucket's burst, and every token is accounted for.
func TestLeaseRenewalOfADrainedBucketAdmitsNoMore(t *testing.T) {
	clk := newClock()
	lim := Limit{Rate: 0.01, Burst: 40} // cap 4
	ls, rc, _ := rvRouters(t, 1, map[Rule]Limit{{Scope: ScopeTenant}: lim}, 10000*time.Second, clk.Now)
	l := ls[0]
	const key = "meridian:rl:tenant::acme"
	req := Request{Class: ClassRead, Tenant: "acme"}
	admitted := int64(0)
	for range 4 {
		if res, err := l.Allow(context.Background(), req); err != nil || !res.Allowed {
			t.Fatalf("Allow: %+v %v", res, err)
		}
		admitted++
	}
	declined := false
	for range 100 {
		res, ok, err := l.AllowNoWait(req)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			declined = true
			break
		}
		if !res.Allowed {
			t.Fatalf("denied from the lease with nothing remembered: %+v", res)
		}
		admitted++
		waitRenewed(t, l, key)
	}
	if !declined {
		t.Fatal("100 decisions from a bucket of 40 were all made from the lease")
	}
	if admitted != lim.burst() {
		t.Fatalf("admitted %d, want the burst %d (no more, and renewals took every token there was)", admitted, lim.burst())
	}
	if res, err := l.Allow(context.Background(), req); err != nil || res.Allowed {
		t.Fatalf("the request after the bucket drained: %+v %v, want denied", res, err)
	}
	if got := metricValue(t, l.renewals.WithLabelValues("failed")); got < 1 {
		t.Fatalf("%v renewals failed on a drained bucket, want at least one", got)
	}
	if got, held := rvConsumed(t, rc, key, lim, clk.Now().UnixMicro()), rvHeld(ls, key); got != float64(admitted+held) || held != 0 {
		t.Fatalf("Redis counts %v taken; admitted %d, held %d (want none left)", got, admitted, held)
	}
}

// TestLeaseRenewalGivesBackNoMoreThanItsLatestBatch: a renewed lease holds tokens of two
// batches; when it ends unspent, only the latest batch's can go back to the bucket (the older
// ones' slots lie before it and may have been refilled since: giving them back would let the
// bucket admit more than its limit), however far ahead the bucket's count is.
func TestLeaseRenewalGivesBackNoMoreThanItsLatestBatch(t *testing.T) {
	clk := newClock()
	lease := 10000 * time.Second
	lim := Limit{Rate: 0.01, Burst: 1000} // cap 100
	ls, rc, _ := rvRouters(t, 2, map[Rule]Limit{{Scope: ScopeTenant}: lim}, lease, clk.Now)
	a, b := ls[0], ls[1]
	const key = "meridian:rl:tenant::acme"
	req := Request{Class: ClassRead, Tenant: "acme"}
	ctx := context.Background()
	tat := func() int64 {
		v, err := rc.Get(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// The bucket deep in debt (another router took 600), so that slots stay ahead of the clock.
	for range 600 {
		if res, err := b.Allow(ctx, req); err != nil || !res.Allowed {
			t.Fatalf("router b: %+v %v", res, err)
		}
	}
	for range 40 { // batches 1 … 32
		if res, err := a.Allow(ctx, req); err != nil || !res.Allowed {
			t.Fatalf("router a: %+v %v", res, err)
		}
	}
	var held, batch int64
	for i := 0; ; i++ {
		if res, ok, err := a.AllowNoWait(req); !ok || err != nil || !res.Allowed {
			t.Fatalf("decision %d: decided %v, %+v, %v", i, ok, res, err)
		}
		waitRenewed(t, a, key)
		if metricValue(t, a.renewals.WithLabelValues("granted")) > 0 {
			a.leases.mu.Lock()
			held, batch = a.leases.m[key].held, a.leases.m[key].batch
			a.leases.mu.Unlock()
			break
		}
		if i > 100 {
			t.Fatal("no renewal in 100 decisions")
		}
	}
	if held <= batch || batch <= 0 {
		t.Fatalf("after the renewal router a holds %d of a batch of %d: want tokens of the older batch too", held, batch)
	}
	before := tat()
	clk.Add(lease + time.Second) // a's lease ends unspent; its slots are still ahead of the clock
	if res, err := a.Allow(ctx, req); err != nil || !res.Allowed {
		t.Fatalf("after the lease: %+v %v", res, err)
	}
	a.leases.mu.Lock()
	granted := a.leases.m[key].batch
	a.leases.mu.Unlock()
	back := (before + granted*lim.interval() - tat()) / lim.interval()
	if back != batch {
		t.Fatalf("the ended lease gave back %d tokens of the %d it held: want its latest batch's %d", back, held, batch)
	}
}
