package ratelimit

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// fakeClock is a settable clock for the limiter.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *fakeClock { return &fakeClock{t: time.Unix(1_800_000_000, 123456000)} }

// exerciseLimiter runs the same behavioural checks against any limiter configuration.
func exerciseLimiter(t *testing.T, l *Limiter, clk *fakeClock, tenant string) {
	t.Helper()
	ctx := context.Background()
	req := Request{Class: ClassWrite, Tenant: tenant}
	// Burst 5 at 10/s: five admitted at once, the sixth denied.
	for i := range 5 {
		res, err := l.Allow(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Allowed || res.Remaining != int64(4-i) || res.Limit != 5 || res.Scope != ScopeTenant {
			t.Fatalf("request %d: %+v", i, res)
		}
	}
	res, err := l.Allow(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Allowed || res.RetryAfter != 100*time.Millisecond || res.Remaining != 0 {
		t.Fatalf("over limit: %+v, want denied with retry-after 100ms", res)
	}
	h := http.Header{}
	res.SetHeaders(h)
	if h.Get("Retry-After") != "1" || h.Get("RateLimit-Limit") != "5" || h.Get("RateLimit-Remaining") != "0" || h.Get("RateLimit-Reset") != "1" {
		t.Fatalf("headers %v", h)
	}
	// Another tenant is unaffected.
	if res, _ := l.Allow(ctx, Request{Class: ClassWrite, Tenant: tenant + "-other"}); !res.Allowed || res.Remaining != 4 {
		t.Fatalf("other tenant: %+v", res)
	}
	// Just before retry-after: still denied; at retry-after: allowed, exactly one.
	clk.Add(res0(t, l, req).RetryAfter - time.Microsecond)
	if res, _ := l.Allow(ctx, req); res.Allowed {
		t.Fatalf("allowed before retry-after: %+v", res)
	}
	clk.Add(time.Microsecond)
	if res, _ := l.Allow(ctx, req); !res.Allowed || res.Remaining != 0 {
		t.Fatalf("not allowed at retry-after: %+v", res)
	}
	if res, _ := l.Allow(ctx, req); res.Allowed {
		t.Fatalf("second request after one interval allowed: %+v", res)
	}
	// After a full burst period the bucket is full again.
	clk.Add(500 * time.Millisecond)
	if res, _ := l.Allow(ctx, req); !res.Allowed || res.Remaining != 4 {
		t.Fatalf("after refill: %+v", res)
	}
}

// res0 peeks at the current decision for req (which is denied, so consumes nothing).
func res0(t *testing.T, l *Limiter, req Request) Result {
	t.Helper()
	res, err := l.Allow(context.Background(), req)
	if err != nil || res.Allowed {
		t.Fatalf("expected denial, got %+v %v", res, err)
	}
	return res
}

func testLimits() map[Rule]Limit {
	return map[Rule]Limit{
		{Scope: ScopeTenant}:                    {Rate: 10, Burst: 5},
		{Scope: ScopeIP, Class: ClassAdmin}:     {Rate: 1, Burst: 1},
		{Scope: ScopeSubject, Class: ClassRead}: {Rate: 100},
	}
}

func TestLocalGCRA(t *testing.T) {
	clk := newClock()
	l, err := New(Config{Limits: testLimits(), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	exerciseLimiter(t, l, clk, "acme")
}

func TestRulesAndBuckets(t *testing.T) {
	clk := newClock()
	l, err := New(Config{Limits: testLimits(), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tests := []struct {
		name      string
		req       Request
		wantScope Scope
		wantLimit int64
	}{
		{"tenant rule for any class", Request{Class: ClassRead, Tenant: "t1"}, ScopeTenant, 5},
		{"subject only for reads, burst defaults to rate", Request{Class: ClassRead, Subject: "u1"}, ScopeSubject, 100},
		{"subject has no write rule", Request{Class: ClassWrite, Subject: "u1"}, "", 0},
		{"ip admin rule binds (fewest remaining)", Request{Class: ClassAdmin, Tenant: "t2", IP: "::1"}, ScopeIP, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := l.Allow(ctx, tt.req)
			if err != nil || !res.Allowed || res.Scope != tt.wantScope || res.Limit != tt.wantLimit {
				t.Fatalf("got %+v, %v", res, err)
			}
		})
	}
	// The IP bucket is exhausted: the tenant bucket must not be charged by a denied request.
	for range 3 {
		if res, _ := l.Allow(ctx, Request{Class: ClassAdmin, Tenant: "t2", IP: "::1"}); res.Allowed || res.Scope != ScopeIP {
			t.Fatalf("want IP denial, got %+v", res)
		}
	}
	if res, _ := l.Allow(ctx, Request{Class: ClassRead, Tenant: "t2"}); res.Remaining != 3 {
		t.Fatalf("tenant t2 remaining %d, want 3 (denied requests consume nothing)", res.Remaining)
	}
	if _, err := l.Allow(ctx, Request{Class: "bulk", Tenant: "x"}); !errors.Is(err, ErrBadClass) {
		t.Fatalf("bad class: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		lim  map[Rule]Limit
		want error
	}{
		{"zero rate", map[Rule]Limit{{Scope: ScopeIP}: {Rate: 0}}, ErrBadLimit},
		{"negative burst", map[Rule]Limit{{Scope: ScopeIP}: {Rate: 1, Burst: -1}}, ErrBadLimit},
		{"bad scope", map[Rule]Limit{{Scope: "planet"}: {Rate: 1}}, ErrBadLimit},
		{"bad class", map[Rule]Limit{{Scope: ScopeIP, Class: "bulk"}: {Rate: 1}}, ErrBadClass},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(Config{Limits: tt.lim}); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestMetricsRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	l, err := New(Config{Limits: testLimits(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	for range 7 {
		if _, err := l.Allow(context.Background(), Request{Class: ClassRead, Tenant: "m"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := metricValue(t, l.decisions.WithLabelValues("read", "allowed", "local")); got != 5 {
		t.Errorf("allowed = %v", got)
	}
	if got := metricValue(t, l.decisions.WithLabelValues("read", "limited", "local")); got != 2 {
		t.Errorf("limited = %v", got)
	}
	if _, err := New(Config{Registerer: reg}); err == nil {
		t.Error("double registration not reported")
	}
}

// metricValue reads a counter or gauge.
func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		t.Fatal(err)
	}
	if pb.Counter != nil {
		return pb.Counter.GetValue()
	}
	return pb.Gauge.GetValue()
}
