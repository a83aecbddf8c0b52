package upstream

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeSource is a settable Source.
type fakeSource struct {
	mu sync.Mutex
	ts map[string][]Target
}

func (s *fakeSource) Targets(r string) []Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Target(nil), s.ts[r]...)
}

func (s *fakeSource) set(r string, ts ...Target) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ts == nil {
		s.ts = map[string][]Target{}
	}
	s.ts[r] = ts
}

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

func newPool(t *testing.T, src Source, clk *fakeClock, mod func(*Config)) *Pool {
	t.Helper()
	cfg := Config{Source: src, FailureThreshold: 2, EjectBase: time.Second, EjectMax: 4 * time.Second}
	if clk != nil {
		cfg.Now = clk.Now
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBreakerEjectsAndReadmits(t *testing.T) {
	src := &fakeSource{}
	src.set("us-east", Target{ID: "a", Region: "us-east", Addr: "a", Healthy: true})
	clk := &fakeClock{t: time.Unix(1000, 0)}
	p := newPool(t, src, clk, nil)
	fail := func() {
		l, err := p.Acquire([]string{"us-east"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		l.Done(true)
	}
	steps := []struct {
		name string
		do   func()
		want BreakerState
		acq  error
	}{
		{"one failure stays closed", fail, Closed, nil},
		{"threshold opens", fail, Open, ErrNoUpstream},
		{"still open before backoff", func() { clk.Add(999 * time.Millisecond) }, Open, ErrNoUpstream},
		{"half-open after backoff", func() { clk.Add(time.Millisecond) }, HalfOpen, nil},
		{"failed probe reopens with doubled backoff", fail, Open, ErrNoUpstream},
		{"1s is not enough now", func() { clk.Add(time.Second) }, Open, ErrNoUpstream},
		{"2s is", func() { clk.Add(time.Second) }, HalfOpen, nil},
	}
	for _, s := range steps {
		s.do()
		if got := p.State("a"); got != s.want {
			t.Fatalf("%s: state %v, want %v", s.name, got, s.want)
		}
		if s.want == Closed {
			continue // an Acquire+Done(false) here would reset the failure count
		}
		l, err := p.Acquire([]string{"us-east"}, nil)
		if !errors.Is(err, s.acq) {
			t.Fatalf("%s: Acquire err %v, want %v", s.name, err, s.acq)
		}
		if l != nil {
			if s.want == HalfOpen {
				// Only one probe at a time.
				if _, err := p.Acquire([]string{"us-east"}, nil); !errors.Is(err, ErrNoUpstream) {
					t.Fatalf("%s: second probe admitted: %v", s.name, err)
				}
			}
			l.Done(false)
			if s.want == HalfOpen && p.State("a") != Closed {
				t.Fatalf("%s: successful probe did not close", s.name)
			}
			// Put the breaker back where the table expects it.
			if s.want == HalfOpen {
				fail()
				fail()
				clk.Add(time.Second) // first re-ejection after a success uses the base backoff
			}
		}
	}
}

func TestActiveHealthAndRegionFallback(t *testing.T) {
	src := &fakeSource{}
	src.set("us-west", Target{ID: "w1", Region: "us-west", Addr: "w1", Healthy: false})
	src.set("us-east", Target{ID: "e1", Region: "us-east", Addr: "e1", Healthy: true})
	p := newPool(t, src, nil, nil)
	l, err := p.Acquire([]string{"us-west", "us-east"}, nil)
	if err != nil || l.Target.ID != "e1" {
		t.Fatalf("got %+v %v, want e1 via home-region fallback", l, err)
	}
	l.Done(false)
	src.set("us-west", Target{ID: "w1", Region: "us-west", Addr: "w1", Healthy: true})
	if l, err := p.Acquire([]string{"us-west", "us-east"}, nil); err != nil || l.Target.ID != "w1" {
		t.Fatalf("got %+v %v, want w1 once gossip says healthy", l, err)
	}
	if _, err := p.Acquire([]string{"eu-west"}, nil); !errors.Is(err, ErrNoUpstream) {
		t.Fatalf("empty region: %v", err)
	}
}

func TestSaturation(t *testing.T) {
	src := &fakeSource{}
	src.set("r", Target{ID: "a", Region: "r", Healthy: true}, Target{ID: "b", Region: "r", Healthy: true})
	p := newPool(t, src, nil, func(c *Config) { c.MaxInFlight = 2 })
	var ls []*Lease
	counts := map[string]int{}
	for range 4 {
		l, err := p.Acquire([]string{"r"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		counts[l.Target.ID]++
		ls = append(ls, l)
	}
	if counts["a"] != 2 || counts["b"] != 2 {
		t.Fatalf("leases %v, want 2 each", counts)
	}
	if _, err := p.Acquire([]string{"r"}, nil); !errors.Is(err, ErrSaturated) {
		t.Fatalf("err %v, want ErrSaturated", err)
	}
	ls[0].Done(false)
	ls[0].Done(false) // idempotent
	if _, err := p.Acquire([]string{"r"}, nil); err != nil {
		t.Fatalf("after release: %v", err)
	}
	if _, err := p.Acquire([]string{"r"}, nil); !errors.Is(err, ErrSaturated) {
		t.Fatalf("double Done released two slots: %v", err)
	}
}

// TestReleaseHasNoVerdict: a released lease frees its slot and neither resets nor adds to the
// node's failure count; a released probe frees the half-open node for the next probe without
// readmitting it.
func TestReleaseHasNoVerdict(t *testing.T) {
	src := &fakeSource{}
	src.set("us-east", Target{ID: "a", Region: "us-east", Addr: "a", Healthy: true})
	clk := &fakeClock{t: time.Unix(1000, 0)}
	p := newPool(t, src, clk, func(c *Config) { c.MaxInFlight = 1 })
	lease := func() *Lease {
		t.Helper()
		l, err := p.Acquire([]string{"us-east"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	lease().Done(true) // one failure of two
	for range 5 {
		lease().Release() // the slot comes back each time (MaxInFlight 1)
	}
	if p.State("a") != Closed {
		t.Fatalf("released leases opened the breaker: %v", p.State("a"))
	}
	lease().Done(true) // the second failure in a row: releases did not reset the count
	if p.State("a") != Open {
		t.Fatalf("state %v after two failures with releases between them, want open", p.State("a"))
	}
	clk.Add(time.Second)
	probe := lease()
	if _, err := p.Acquire([]string{"us-east"}, nil); err == nil {
		t.Fatal("a second probe while the first is out")
	}
	probe.Release()
	if p.State("a") != HalfOpen {
		t.Fatalf("released probe changed the state to %v, want half-open", p.State("a"))
	}
	l := lease() // the probe slot is free again
	l.Done(false)
	if p.State("a") != Closed {
		t.Fatalf("state %v after a successful probe, want closed", p.State("a"))
	}
	l.Release() // after Done: nothing
}
