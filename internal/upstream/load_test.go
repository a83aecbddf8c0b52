package upstream

import (
	"testing"
	"time"
)

// TestLoadCountsAdmittedNodes: in flight and capacity cover the region's healthy nodes whose
// breaker is closed; an ejected or unhealthy node adds neither.
func TestLoadCountsAdmittedNodes(t *testing.T) {
	src := &fakeSource{}
	src.set("r1", Target{ID: "a", Region: "r1", Addr: "a", Healthy: true}, Target{ID: "b", Region: "r1", Addr: "b", Healthy: true},
		Target{ID: "sick", Region: "r1", Addr: "s", Healthy: false})
	clk := &fakeClock{t: time.Unix(1000, 0)}
	p := newPool(t, src, clk, func(c *Config) { c.MaxInFlight = 3 })
	if in, c := p.Load("r1"); in != 0 || c != 6 {
		t.Fatalf("idle: %d/%d, want 0/6", in, c)
	}
	if in, c := p.Load("nowhere"); in != 0 || c != 0 {
		t.Fatalf("unknown region: %d/%d", in, c)
	}
	var leases []*Lease
	for range 4 {
		l, err := p.Acquire([]string{"r1"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	if in, c := p.Load("r1"); in != 4 || c != 6 {
		t.Fatalf("4 acquired: %d/%d, want 4/6", in, c)
	}
	leases[0].Done(false)
	if in, _ := p.Load("r1"); in != 3 {
		t.Fatalf("after one Done: %d in flight", in)
	}
	// Eject a (FailureThreshold 2): its slots and its capacity leave the count.
	for _, l := range leases[1:] {
		l.Done(l.Target.ID == "a")
	}
	for p.State("a") != Open {
		l, err := p.Acquire([]string{"r1"}, func(id string) bool { return id != "a" })
		if err != nil {
			t.Fatal(err)
		}
		l.Done(true)
	}
	if in, c := p.Load("r1"); in != 0 || c != 3 {
		t.Fatalf("a ejected: %d/%d, want 0/3", in, c)
	}
}
