package router

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/upstream"
)

// countingSource is an upstream.Source that counts its calls and lists n healthy nodes.
type countingSource struct {
	calls atomic.Int64
	n     atomic.Int64
}

func (s *countingSource) Targets(r string) []upstream.Target {
	s.calls.Add(1)
	out := make([]upstream.Target, s.n.Load())
	for i := range out {
		out[i] = upstream.Target{ID: r + strconv.Itoa(i), Region: r, Addr: "127.0.0.1:1", Healthy: true}
	}
	return out
}

// TestCachedSourceReusesForTTL: the pool's node list is asked of the sources once per region
// per ttl, and a change reaches it once the ttl has passed.
func TestCachedSourceReusesForTTL(t *testing.T) {
	src := &countingSource{}
	src.n.Store(2)
	c := &cachedSource{src: src, ttl: 100 * time.Millisecond}
	for range 10 {
		if got := len(c.Targets("us-east")); got != 2 {
			t.Fatalf("%d targets, want 2", got)
		}
	}
	c.Targets("eu-west")
	if n := src.calls.Load(); n != 2 {
		t.Fatalf("sources asked %d times for 11 lookups of two regions within the ttl, want 2", n)
	}
	src.n.Store(3)
	time.Sleep(150 * time.Millisecond)
	if got := len(c.Targets("us-east")); got != 3 {
		t.Fatalf("after the ttl: %d targets, want the new 3", got)
	}
	// And again: every entry expires, not only the first one made for a region.
	src.n.Store(4)
	time.Sleep(150 * time.Millisecond)
	if got := len(c.Targets("us-east")); got != 4 {
		t.Fatalf("after a second ttl: %d targets, want the new 4", got)
	}
	if n := src.calls.Load(); n != 4 {
		t.Fatalf("sources asked %d times, want 4 (two regions, then us-east after each ttl)", n)
	}
}

// TestCachedSourceConcurrentMisses: lookups racing on an empty entry all get a list, and the
// entry made first is kept (one expiry timer), so the sources are asked again only after ttl.
func TestCachedSourceConcurrentMisses(t *testing.T) {
	src := &countingSource{}
	src.n.Store(2)
	c := &cachedSource{src: src, ttl: time.Hour}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				if got := len(c.Targets("us-east")); got != 2 {
					t.Errorf("%d targets, want 2", got)
					return
				}
			}
		}()
	}
	wg.Wait()
	before := src.calls.Load()
	for range 100 {
		c.Targets("us-east")
	}
	if n := src.calls.Load(); n != before || n > 8 {
		t.Fatalf("sources asked %d times by 8 racing first lookups, %d after: want at most 8 and no more once cached", before, n)
	}
}
