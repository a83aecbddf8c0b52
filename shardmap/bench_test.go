package shardmap

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func benchMap(b *testing.B) (*Map, []string) {
	s := applyAll(b, Bootstrap{Regions: testTopology().Regions, Shards: testTopology().Shards})
	for i := 0; i < 1000; i++ {
		next, err := tryApply(s, CreateTenant{Tenant: fmt.Sprintf("pinned-%04d", i), Region: "eu-west"}, uint64(i+2))
		if err != nil {
			b.Fatal(err)
		}
		s = next
	}
	tenants := make([]string, 1024)
	for i := range tenants {
		if i%2 == 0 {
			tenants[i] = fmt.Sprintf("pinned-%04d", i%1000)
		} else {
			tenants[i] = fmt.Sprintf("slot-tenant-%04d", i)
		}
	}
	return buildMap(s), tenants
}

// BenchmarkLookup: half pinned, half slot-placed tenants, 1024 slots, 1000 pins.
func BenchmarkLookup(b *testing.B) {
	m, tenants := benchMap(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.Lookup(tenants[i&1023]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookupParallel(b *testing.B) {
	m, tenants := benchMap(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			m.Lookup(tenants[i&1023])
			i++
		}
	})
}

// BenchmarkApply3Node measures committed commands per second on a 3-node loopback cluster,
// with 16 concurrent proposers on the leader (raft batches them).
func BenchmarkApply3Node(b *testing.B) {
	c := newTestCluster(b, 3)
	l := c.leader()
	ctx := context.Background()
	if _, err := l.node.Apply(ctx, testTopology()); err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := n.Add(1)
				if i > int64(b.N) {
					return
				}
				if _, err := l.node.Apply(ctx, CreateTenant{Tenant: fmt.Sprintf("bench-%d", i)}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "applies/s")
}

// BenchmarkApply3NodeSerial measures one proposer on a follower (forwarded over HTTP).
func BenchmarkApply3NodeSerial(b *testing.B) {
	c := newTestCluster(b, 3)
	f := c.follower()
	ctx := context.Background()
	if _, err := f.node.Apply(ctx, testTopology()); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := f.node.Apply(ctx, CreateTenant{Tenant: fmt.Sprintf("bench-%d", i)}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "applies/s")
}

// BenchmarkApplyVisibleInClient measures apply (on the leader) → visible in a client watching a
// follower, and reports p50/p99.
func BenchmarkApplyVisibleInClient(b *testing.B) {
	c := newTestCluster(b, 3)
	l, f := c.leader(), c.follower()
	cl := startClient(b, f.url())
	ctx := context.Background()
	if _, err := l.node.Apply(ctx, testTopology()); err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		idx, err := l.node.Apply(ctx, CreateTenant{Tenant: fmt.Sprintf("bench-%d", i)})
		if err != nil {
			b.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := cl.WaitVersion(wctx, idx); err != nil {
			b.Fatal(err)
		}
		cancel()
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
