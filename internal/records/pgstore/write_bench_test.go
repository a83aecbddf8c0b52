package pgstore

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/shards"
)

// BenchmarkTenantWrites is one tenant's write rate: 16 writers at once, all on one tenant
// (so on its tenant row lock), each write a Put with an Idempotency-Key of a record of its
// own (half of them new, half updates) on a real Postgres. It reports writes/s and the
// Postgres backends' CPU per write is left to the bench scenarios; writes/s here is what a
// tenant's row lock lets through, which is what a move's ≥ 200 writes/s depends on.
//
//	go test -run '^$' -bench TenantWrites -benchtime 3000x ./internal/records/pgstore/
func BenchmarkTenantWrites(b *testing.B) {
	e := newEnv(b, shards.Config{})
	createTenant(b, e.store, "tenant-writes")
	var n atomic.Int64
	render := func(ch records.Change) (records.Response, error) {
		return records.Response{Status: http.StatusOK, Body: ch.Record.Data}, nil
	}
	b.SetParallelism(8) // × GOMAXPROCS (2 here): 16 writers
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			op := records.WriteOp{Op: records.Put, Collection: "c", ID: fmt.Sprint(i / 2), Data: []byte(fmt.Sprintf(`{"n":%d}`, i)),
				Key: fmt.Sprintf("k%d", i), RequestHash: []byte("h"), Render: render}
			if _, err := e.store.Write(context.Background(), target("tenant-writes"), op); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "writes/s")
}
