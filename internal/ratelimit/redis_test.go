package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/redis/go-redis/v9"
)

func newRedisLimiter(t testing.TB, lim map[Rule]Limit, now func() time.Time) (*Limiter, *redis.Client, *localsrv.Redis) {
	t.Helper()
	srv := testenv.Redis(t)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	t.Cleanup(func() { _ = rc.Close() })
	l, err := New(Config{Redis: rc, Limits: lim, Now: now, ProbeInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return l, rc, srv
}

func TestRedisGCRA(t *testing.T) {
	clk := newClock()
	l, rc, _ := newRedisLimiter(t, testLimits(), clk.Now)
	exerciseLimiter(t, l, clk, "acme")
	if l.Fallback() {
		t.Fatal("limiter fell back with Redis up")
	}
	// The state really lives in Redis.
	n, err := rc.Exists(context.Background(), "meridian:rl:tenant::acme").Result()
	if err != nil || n != 1 {
		t.Fatalf("bucket key in Redis: %d, %v", n, err)
	}
	// After SCRIPT FLUSH, EVALSHA fails with NOSCRIPT and EVAL must take over.
	if err := rc.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	if res, err := l.Allow(context.Background(), Request{Class: ClassRead, Tenant: "flushed"}); err != nil || !res.Allowed || res.Local {
		t.Fatalf("after script flush: %+v %v", res, err)
	}
}

func TestRedisConcurrencyNeverExceedsBurst(t *testing.T) {
	// A very slow rate so that no refill happens during the test, on the real clock.
	l, _, _ := newRedisLimiter(t, map[Rule]Limit{{Scope: ScopeTenant}: {Rate: 0.001, Burst: 50}}, nil)
	// This test is about atomicity; under -race on two shared cores the 50 ms default would
	// (correctly) send some decisions to the fallback and hide what is being checked.
	l.timeout = 5 * time.Second
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				res, err := l.Allow(context.Background(), Request{Class: ClassWrite, Tenant: "hot"})
				if err != nil {
					t.Errorf("goroutine %d: %v", g, err)
					return
				}
				if res.Local {
					t.Errorf("decision made locally with Redis up")
				}
				if res.Allowed {
					allowed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if got := allowed.Load(); got != 50 {
		t.Fatalf("allowed %d of 320 concurrent requests, want exactly the burst 50", got)
	}
}

func TestRedisDownFallsBackAndRecovers(t *testing.T) {
	clk := newClock()
	l, _, srv := newRedisLimiter(t, testLimits(), clk.Now)
	ctx := context.Background()
	if res, _ := l.Allow(ctx, Request{Class: ClassRead, Tenant: "a"}); res.Local || !res.Allowed {
		t.Fatalf("with Redis up: %+v", res)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	res, err := l.Allow(ctx, Request{Class: ClassRead, Tenant: "a"})
	if err != nil || !res.Allowed || !res.Local {
		t.Fatalf("with Redis down: %+v %v", res, err)
	}
	if got := metricValue(t, l.fallbackGauge); got != 1 {
		t.Fatalf("fallback gauge = %v, want 1", got)
	}
	// The local limiter enforces the same limits (fresh buckets: 5 at once).
	exerciseLimiter(t, l, clk, "down")
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		res, err := l.Allow(ctx, Request{Class: ClassRead, Tenant: "b"})
		if err != nil {
			return err
		}
		if res.Local || l.Fallback() {
			return fmt.Errorf("still local")
		}
		return nil
	})
	if got := metricValue(t, l.fallbackGauge); got != 0 {
		t.Fatalf("fallback gauge = %v after recovery, want 0", got)
	}
}

// TestRedisClockIgnoresRouterSkew: two routers whose clocks disagree by 2000 s share a bucket
// of 5 that refills one token per 1000 s. On their own clocks the one running ahead finds two
// tokens refilled; on Redis's clock (the default) the bucket admits exactly 5 in all.
func TestRedisClockIgnoresRouterSkew(t *testing.T) {
	lim := map[Rule]Limit{{Scope: ScopeTenant}: {Rate: 0.001, Burst: 5}}
	for _, c := range []struct {
		name       string
		redisClock bool
		want       int
	}{
		{"routers' clocks", false, 7},
		{"Redis clock", true, 5},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := testenv.Redis(t)
			var total int
			for _, skew := range []time.Duration{0, 2000 * time.Second} {
				rc := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
				t.Cleanup(func() { _ = rc.Close() })
				l, err := New(Config{Redis: rc, Limits: lim, RedisTimeout: 5 * time.Second,
					Now: func() time.Time { return time.Now().Add(skew) }})
				if err != nil {
					t.Fatal(err)
				}
				l.redisClock = c.redisClock
				for range 10 {
					res, err := l.Allow(context.Background(), Request{Class: ClassWrite, Tenant: "skewed"})
					if err != nil || res.Local {
						t.Fatalf("%+v %v", res, err)
					}
					if res.Allowed {
						total++
					}
				}
			}
			if total != c.want {
				t.Fatalf("admitted %d, want %d", total, c.want)
			}
		})
	}
}
