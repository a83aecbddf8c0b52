package moves

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BenchmarkMoveScanCost is where a scan's time goes, measured piece by piece as a superuser
// (no RLS) on the clusters of BenchmarkMoveScan: the source's reads (the copy's rows, the
// verify's digests with candidate hashes) and the target's writes of all 200,000 rows in one
// statement from a staging table (the upsert the copy runs, with the GIN index's pending list
// as configured, larger, or off, and without the GIN index or the foreign key — diagnostics
// only: the table the service runs has both). It reports each piece's rows/s and the CPU
// seconds per 1000 rows of the cluster doing the work (/proc), which, unlike rows/s, does not
// depend on the machine's load.
//
//	go test -run '^$' -bench BenchmarkMoveScanCost -benchtime 1x -timeout 40m ./internal/moves/
func BenchmarkMoveScanCost(b *testing.B) {
	rows := 200_000
	e := newScanEnv(b, rows)
	ctx := context.Background()
	src, dst := e.admin["use-1"], e.admin["euw-1"]
	// measure runs setup (untimed) then f, b.N times, timing f.
	measure := func(b *testing.B, shard string, setup, f func(b *testing.B)) {
		pid := e.pgs[shard].Pid()
		var wall time.Duration
		var cpu float64
		for b.Loop() {
			if setup != nil {
				b.StopTimer()
				setup(b)
				b.StartTimer()
			}
			c0, t0 := clusterCPU(pid), time.Now()
			f(b)
			wall += time.Since(t0)
			cpu += clusterCPU(pid) - c0
		}
		n := float64(rows) * float64(b.N)
		b.ReportMetric(n/wall.Seconds(), "rows/s")
		b.ReportMetric(1000*cpu/n, "pg-cpu-s/krow")
		b.Logf("load average %s", loadAvg())
	}
	drain := func(b *testing.B, q string) {
		r, err := src.Query(ctx, q)
		if err != nil {
			b.Fatal(err)
		}
		for r.Next() {
		}
		if r.Err() != nil {
			b.Fatal(r.Err())
		}
	}
	const where = ` FROM records WHERE tenant_id = 'acme' ORDER BY collection, id`
	for _, c := range []struct{ name, cols string }{
		{"read/keys", `collection, id, version, deleted`},
		{"read/digest-md5", `collection, id, version, deleted, md5(data::text)`},
		{"read/digest-hashtextextended", `collection, id, version, deleted, hashtextextended(data::text, 0)`},
		{"read/digest-jsonb_hash_extended", `collection, id, version, deleted, jsonb_hash_extended(data, 0)`},
		{"read/rows-text", `collection, id, version, data::text, deleted, created_at, updated_at`},
	} {
		b.Run(c.name, func(b *testing.B) { measure(b, "use-1", nil, func(b *testing.B) { drain(b, `SELECT `+c.cols+where) }) })
	}

	cols := []string{"collection", "id", "version", "data", "deleted", "created_at", "updated_at"}
	stage := func(b *testing.B) {
		e.exec(b, "euw-1", `DROP TABLE IF EXISTS stage`)
		e.exec(b, "euw-1", `CREATE UNLOGGED TABLE stage (collection text COLLATE "C", id text COLLATE "C", version int8,
			data jsonb, deleted bool, created_at timestamptz, updated_at timestamptz)`)
		r, err := src.Query(ctx, `SELECT `+`collection, id, version, data, deleted, created_at, updated_at`+where)
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		if _, err := dst.CopyFrom(ctx, pgx.Identifier{"stage"}, cols, pgx.CopyFromFunc(func() ([]any, error) {
			if !r.Next() {
				return nil, r.Err()
			}
			return r.Values()
		})); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("write/copy-to-staging", func(b *testing.B) { measure(b, "euw-1", nil, stage) })

	upsert := `INSERT INTO records (tenant_id, collection, id, version, data, deleted, created_at, updated_at)
		SELECT 'acme', collection, id, version, data, deleted, created_at, updated_at FROM stage
		ON CONFLICT (tenant_id, collection, id) DO UPDATE SET version = EXCLUDED.version, data = EXCLUDED.data,
		deleted = EXCLUDED.deleted, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at
		WHERE records.version < EXCLUDED.version`
	const gin = `CREATE INDEX records_data_path_idx ON records USING gin (data jsonb_path_ops)`
	for _, c := range []struct{ name, pre, post string }{
		{"write/upsert", "", ""},
		{"write/upsert-gin-pending-1GB", `SET gin_pending_list_limit = '1GB'`, `RESET gin_pending_list_limit`},
		{"write/upsert-gin-fastupdate-off", `ALTER INDEX records_data_path_idx SET (fastupdate = off)`, `ALTER INDEX records_data_path_idx RESET (fastupdate)`},
		{"write/upsert-no-gin", `DROP INDEX records_data_path_idx`, gin},
		{"write/upsert-no-gin-no-fk", `ALTER TABLE records DISABLE TRIGGER ALL; DROP INDEX records_data_path_idx`, `ALTER TABLE records ENABLE TRIGGER ALL; ` + gin},
	} {
		b.Run(c.name, func(b *testing.B) {
			conn, err := dst.Acquire(ctx)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Release()
			exec := func(sql string) {
				if _, err := conn.Exec(ctx, sql); err != nil {
					b.Fatalf("%s: %v", sql, err)
				}
			}
			if c.pre != "" {
				exec(c.pre)
			}
			measure(b, "euw-1", func(*testing.B) { exec(`TRUNCATE records`) }, func(*testing.B) { exec(upsert) })
			if c.post != "" {
				exec(c.post)
			}
		})
	}
	b.Run("write/upsert-all-conflict", func(b *testing.B) { measure(b, "euw-1", nil, func(b *testing.B) { e.exec(b, "euw-1", upsert) }) })
}
