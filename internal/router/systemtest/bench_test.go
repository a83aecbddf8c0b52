package systemtest

import (
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkGet compares GET of one record sent directly to an API node with the same GET sent
// through the router of the same region, in one run on one cluster. It reports req/s and the
// p50/p99 latency of each; docs/BENCHMARKS.md "## router" records a run.
//
//	go test -run '^$' -bench BenchmarkGet -benchtime 20000x ./internal/router/systemtest/
func BenchmarkGet(b *testing.B) {
	c := newCluster(b, clusterOptions{})
	c.createTenant("us-east", "bench", "us-east")
	tok := dataToken(b, "bench")
	if a := c.do("us-east", "PUT", "/v1/collections/c/records/x", tok, `{"data":{"k":"v"}}`); a.status != 201 {
		b.Fatalf("seed: %d %s", a.status, a.body)
	}
	targets := []struct{ name, url string }{
		{"direct", c.apis["us-east"][0].url},
		{"router", c.routers["us-east"].URL},
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	client := &http.Client{Transport: tr}
	for _, tg := range targets {
		b.Run(tg.name, func(b *testing.B) {
			req, _ := http.NewRequest("GET", tg.url+"/v1/collections/c/records/x", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			var mu sync.Mutex
			var lat []time.Duration
			b.SetParallelism(4) // 4 × GOMAXPROCS client goroutines
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				for pb.Next() {
					t0 := time.Now()
					resp, err := client.Do(req.Clone(req.Context()))
					if err != nil {
						b.Error(err)
						return
					}
					buf := make([]byte, 512)
					for {
						if _, err := resp.Body.Read(buf); err != nil {
							break
						}
					}
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			b.StopTimer()
			slices.Sort(lat)
			if len(lat) == 0 {
				return
			}
			b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "req/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
