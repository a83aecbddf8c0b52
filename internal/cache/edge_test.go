package cache

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meridian-dev/meridian/internal/records"
)

func newEdge(t *testing.T, e *env) *Edge {
	t.Helper()
	ed, err := NewEdge(EdgeConfig{Redis: e.rc, Now: e.clk.Now, MaxStaleness: 5 * time.Second, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return ed
}

func (e *env) publish(t *testing.T, shards ...string) {
	t.Helper()
	if err := e.c.PublishFresh(bg, shards); err != nil {
		t.Fatalf("PublishFresh: %v", err)
	}
}

func wantEdge(t *testing.T, ed *Edge, tg records.Target, id, want string, version int64) {
	t.Helper()
	r, res := ed.Record(bg, tg.Tenant, tg.Shard, tg.Epoch, "books", id)
	if res != want {
		t.Fatalf("edge lookup of %s on %s/%d: %s, want %s", id, tg.Shard, tg.Epoch, res, want)
	}
	if want == EdgeHit && (r.Version != version || r.ID != id || r.Collection != "books" || string(r.Data) != `{"v":1}`) {
		t.Fatalf("edge hit answered %+v, want version %d", r, version)
	}
}

// TestEdgeServesWhatTheNodeWould: the edge answers an entry only when the node would serve the
// same entry to a plain read — present under the current generations, read from the route's
// shard, filled on the route's write epoch, the shard's events published current — and stops
// with each thing that stops the node.
func TestEdgeServesWhatTheNodeWould(t *testing.T) {
	e := newEnv(t)
	ed := newEdge(t, e)
	tg := records.Target{Tenant: "acme", Shard: "s1", Epoch: 1}
	e.fake.set("books", "x", 3)

	wantEdge(t, ed, tg, "x", EdgeMiss, 0) // nothing in Redis for the region yet
	e.get(t, tg, records.ReadOptions{}, "books", "x")
	wantEdge(t, ed, tg, "x", EdgeStale, 0) // filled, but no node published s1 current
	e.publish(t, "s1")
	wantEdge(t, ed, tg, "x", EdgeHit, 3)
	wantEdge(t, ed, tg, "y", EdgeMiss, 0)

	// Another route: a newer write epoch (a move back, say) or another shard.
	wantEdge(t, ed, records.Target{Tenant: "acme", Shard: "s1", Epoch: 2}, "x", EdgeEpoch, 0)
	wantEdge(t, ed, records.Target{Tenant: "acme", Shard: "s1", Epoch: 0}, "x", EdgeEpoch, 0)
	wantEdge(t, ed, records.Target{Tenant: "acme", Shard: "s2", Epoch: 1}, "x", EdgeStale, 0)
	e.publish(t, "s2")
	wantEdge(t, ed, records.Target{Tenant: "acme", Shard: "s2", Epoch: 1}, "x", EdgeShard, 0)
	wantEdge(t, ed, records.Target{Tenant: "other", Shard: "s1", Epoch: 1}, "x", EdgeMiss, 0)

	// The published freshness ages with the edge's clock; publishing again renews it (the
	// node's consumer heard a newer heartbeat).
	e.clk.advance(5 * time.Second)
	wantEdge(t, ed, tg, "x", EdgeStale, 0)
	e.publish(t, "s1")
	wantEdge(t, ed, tg, "x", EdgeHit, 3)
	// An older AsOf never lowers it (two nodes publish; the newer heartbeat wins).
	e.clk.setFresh(e.clk.Now().Add(-time.Hour), true)
	e.publish(t, "s1")
	wantEdge(t, ed, tg, "x", EdgeHit, 3)
	e.clk.setFresh(e.clk.Now(), true)

	// An invalidation drops it; the next node read fills the new version.
	e.fake.set("books", "x", 4)
	if err := e.c.Invalidate(bg, "acme", "s1", "books", "x", 4); err != nil {
		t.Fatal(err)
	}
	wantEdge(t, ed, tg, "x", EdgeMiss, 0)
	e.get(t, tg, records.ReadOptions{}, "books", "x")
	wantEdge(t, ed, tg, "x", EdgeHit, 4)
	// A tenant reset and a region reset drop it too.
	if err := e.c.ResetTenant(bg, "acme"); err != nil {
		t.Fatal(err)
	}
	wantEdge(t, ed, tg, "x", EdgeMiss, 0)
	e.get(t, tg, records.ReadOptions{}, "books", "x")
	wantEdge(t, ed, tg, "x", EdgeHit, 4)
	if err := e.c.ResetAll(bg); err != nil {
		t.Fatal(err)
	}
	wantEdge(t, ed, tg, "x", EdgeMiss, 0)
	e.get(t, tg, records.ReadOptions{}, "books", "x")
	wantEdge(t, ed, tg, "x", EdgeHit, 4)

	// A node whose invalidation did not reach Redis publishes nothing and withdraws the
	// published freshness: the edge stops at once, not only when it ages out.
	e.c.dirty.Store(true)
	if err := e.c.PublishFresh(bg, []string{"s1", "s2"}); err == nil {
		t.Fatal("PublishFresh of a dirty cache: no error")
	}
	wantEdge(t, ed, tg, "x", EdgeStale, 0)

	if got := testutil.ToFloat64(ed.requests.WithLabelValues(EdgeHit)); got != 6 {
		t.Fatalf("edge hits counted %v, want 6", got)
	}
}

// TestEdgeNoStaleReadAfterInvalidate: edge readers race a writer that bumps a record's version
// in the store and has two nodes apply each event (the second a step behind), while both nodes
// keep filling the cache and publishing freshness. An edge read that begins after the first
// node's Invalidate for version v returned must never answer a version below v.
func TestEdgeNoStaleReadAfterInvalidate(t *testing.T) {
	e1 := newEnv(t)
	e2 := newEnvOn(t, e1.redis, e1.rc)
	nodes := []*env{e1, e2}
	tg := records.Target{Tenant: "acme", Shard: "s1", Epoch: 1}
	for _, n := range nodes {
		n.fake.set("books", "a", 1)
		n.fake.jitter = true
	}
	ed := newEdge(t, e1)
	const writes = 300
	var done atomic.Bool
	var applied atomic.Int64 // the newest version e1's Invalidate returned for
	applied.Store(1)

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	var hits atomic.Int64
	for r := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := nodes[r%2]
			for !done.Load() {
				if r < 4 { // node reads: they fill
					if _, _, err := n.r.Get(bg, tg, records.ReadOptions{}, "books", "a"); err != nil {
						errs <- err
						return
					}
					_ = n.c.PublishFresh(bg, []string{"s1"})
					continue
				}
				floor := applied.Load()
				rec, res := ed.Record(bg, "acme", "s1", 1, "books", "a")
				if res != EdgeHit {
					continue
				}
				hits.Add(1)
				if rec.Version < floor {
					errs <- fmt.Errorf("edge read version %d after Invalidate for %d returned", rec.Version, floor)
					return
				}
			}
		}()
	}
	for v := int64(2); v <= writes; v++ {
		for _, n := range nodes {
			n.fake.set("books", "a", v)
		}
		if err := e1.c.Invalidate(bg, "acme", "s1", "books", "a", uint64(v)); err != nil {
			t.Fatal(err)
		}
		applied.Store(v)
		if err := e2.c.Invalidate(bg, "acme", "s1", "books", "a", uint64(v-1)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Microsecond) // let readers fill and hit between events
	}
	done.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if hits.Load() == 0 {
		t.Fatal("no edge read hit: the race was not exercised")
	}
	t.Logf("edge hits %d", hits.Load())
}
