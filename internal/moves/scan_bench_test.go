package moves

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/records/pgstore"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/migrations"
	"github.com/meridian-dev/meridian/shardmap"
)

// The scans of a move against real Postgres: the source shard use-1 and the target euw-1 each
// on its own cluster (as the launcher has each region's primary), a real shard map, and the
// controller's own backfill and verifyPass, side by side with the loops they replaced
// (legacyBackfill, legacyVerifyPass: one stream of CopyBatch/VerifyBatch round trips).
//
//	go test -run '^$' -bench 'BenchmarkMoveScan$' -benchtime 2x -timeout 40m ./internal/moves/
//
// MERIDIAN_BENCH_MOVE_ROWS sets the tenant's size (default 200,000 records of ~200 bytes of
// JSON, 1 in 50 a tombstone).

// pgShards is a fixed pgstore.Map.
type pgShards map[string]shards.Info

func (m pgShards) ShardInfo(id string) (shards.Info, bool) { s, ok := m[id]; return s, ok }
func (m pgShards) Shards() []shards.Info {
	var out []shards.Info
	for _, s := range m {
		out = append(out, s)
	}
	return out
}

// scanEnv is a tenant acme of rows records on use-1, a prepared target on euw-1, and a map
// whose move of acme the benchmarks drive.
type scanEnv struct {
	rows  int64
	store *pgstore.Store
	admin map[string]*pgxpool.Pool // shard -> superuser pool
	pgs   map[string]*localsrv.Postgres
	m     *shardmap.Client
}

func newScanEnv(b *testing.B, rows int) *scanEnv {
	b.Helper()
	ctx := context.Background()
	e := &scanEnv{rows: int64(rows), admin: map[string]*pgxpool.Pool{}, pgs: map[string]*localsrv.Postgres{}}
	maps := pgShards{}
	dsns := map[string]string{}
	for _, sh := range []struct{ id, home string }{{"use-1", "us-east"}, {"euw-1", "eu-west"}} {
		pg := testenv.Postgres(b)
		e.pgs[sh.id] = pg
		db := "shard_" + sh.id[:3]
		if err := pg.CreateDatabase(ctx, db); err != nil {
			b.Fatal(err)
		}
		dsns[sh.id] = pg.DSN(db)
		maps[sh.id] = shards.Info{ID: sh.id, HomeRegion: sh.home, Database: db, Endpoints: map[string]string{sh.home: pg.Addr()}}
	}
	if res, err := migrations.Apply(ctx, dsns); err != nil {
		b.Fatalf("migrations: %v %+v", err, res)
	}
	for id, dsn := range dsns {
		e.admin[id] = testenv.NewPool(b, dsn)
	}
	conns := shards.New(shards.Config{MaxConns: 16, StatementTimeout: time.Minute})
	b.Cleanup(conns.Close)
	var err error
	e.store, err = pgstore.New(pgstore.Config{Region: "us-east", Map: maps, Conns: conns, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := e.store.CreateTenant(ctx, "acme", "use-1"); err != nil {
		b.Fatal(err)
	}
	// ~200 bytes of JSON a record, every 50th a tombstone (deleted rows travel too).
	e.exec(b, "use-1", `INSERT INTO records (tenant_id, collection, id, version, data, deleted, created_at, updated_at)
		SELECT 'acme', CASE WHEN i % 3 = 0 THEN 'orders' ELSE 'items' END, 'r' || lpad(i::text, 8, '0'), 1 + i % 7,
			CASE WHEN i % 50 = 0 THEN '{}'::jsonb ELSE jsonb_build_object('name', 'customer ' || i, 'email', 'user' || i || '@example.com',
				'tags', jsonb_build_array('alpha', 'beta', i % 13), 'amount', (i * 7919) % 100000 / 100.0, 'active', i % 2 = 0,
				'address', jsonb_build_object('street', i || ' Long Street', 'city', 'Springfield', 'zip', lpad((i % 99999)::text, 5, '0')),
				'note', md5(i::text)) END,
			i % 50 = 0, now() - interval '1 day', now()
		FROM generate_series(1, $1) i`, rows)
	e.exec(b, "use-1", `VACUUM ANALYZE records`)
	if err := e.store.PrepareTarget(ctx, "acme", "use-1", "euw-1"); err != nil {
		b.Fatal(err)
	}
	e.m = newTestMap(b)
	return e
}

func (e *scanEnv) exec(b *testing.B, shard, sql string, args ...any) {
	b.Helper()
	if _, err := e.admin[shard].Exec(context.Background(), sql, args...); err != nil {
		b.Fatalf("%s: %v", sql, err)
	}
}

// newMove cancels acme's move (if any) and requests a new one, driven to phase.
func (e *scanEnv) newMove(b *testing.B, prev string, phase shardmap.Phase) shardmap.Move {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if prev != "" {
		mustApply(b, ctx, e.m, shardmap.SetMovePhase{ID: prev, Phase: shardmap.PhaseCancelled})
	}
	id := shardmap.MoveIDForIndex(mustApply(b, ctx, e.m, shardmap.RequestMove{Tenant: "acme", To: "euw-1"}))
	path := []shardmap.Phase{shardmap.PhaseDualWrite, shardmap.PhaseBackfill, shardmap.PhaseVerify}
	for _, p := range path {
		mustApply(b, ctx, e.m, shardmap.SetMovePhase{ID: id, Phase: p})
		if p == phase {
			break
		}
	}
	mv, _ := e.m.Map().Move(id)
	return mv
}

func (e *scanEnv) controller(b *testing.B, streams int) *Controller {
	c, err := New(Config{Map: e.m, Store: e.store, Lease: newFakeLease(), Holder: "bench", BatchSize: 1000, ScanStreams: streams,
		Logger: quietLog(b)})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// damage makes every 100th of the target's rows differ from the source's (1%).
func (e *scanEnv) damage(b *testing.B) int64 {
	b.Helper()
	tag, err := e.admin["euw-1"].Exec(context.Background(),
		`UPDATE records SET data = data || '{"damaged": true}', version = version + 1 WHERE right(id, 2) = '00'`)
	if err != nil {
		b.Fatal(err)
	}
	return tag.RowsAffected()
}

func BenchmarkMoveScan(b *testing.B) {
	rows := 200_000
	if v := os.Getenv("MERIDIAN_BENCH_MOVE_ROWS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		rows = n
	}
	e := newScanEnv(b, rows)
	ctx := context.Background()
	log := quietLog(b)
	var last string

	// Each iteration runs the old loop and the new one back to back, timing each: the machine is
	// shared and its load swings over minutes, so the two figures of one sub-benchmark saw
	// the same load window (the ratio is the figure to read).
	report := func(b *testing.B, before, after *scanCost) {
		n := float64(e.rows) * float64(b.N)
		b.ReportMetric(n/before.wall.Seconds(), "before-rows/s")
		b.ReportMetric(n/after.wall.Seconds(), "after-rows/s")
		b.ReportMetric(before.wall.Seconds()/after.wall.Seconds(), "speedup")
		// CPU seconds per 1000 rows: both clusters' Postgres processes, and this process (the
		// controller, the map's Raft node and the benchmark itself).
		b.ReportMetric(1000*before.pg/n, "before-pg-cpu-s/krow")
		b.ReportMetric(1000*after.pg/n, "after-pg-cpu-s/krow")
		b.ReportMetric(1000*before.gocpu/n, "before-go-cpu-s/krow")
		b.ReportMetric(1000*after.gocpu/n, "after-go-cpu-s/krow")
		b.Logf("load average at the end: %s", loadAvg())
	}
	b.Run("backfill", func(b *testing.B) {
		c := e.controller(b, 0)
		var before, after scanCost
		for b.Loop() {
			for i, run := range []func(shardmap.Move) error{
				func(mv shardmap.Move) error { return legacyBackfill(ctx, c, mv) },
				func(mv shardmap.Move) error { return c.backfill(ctx, log, mv) },
			} {
				e.exec(b, "euw-1", `TRUNCATE records`)
				mv := e.newMove(b, last, shardmap.PhaseBackfill)
				last = mv.ID
				cost := &after
				if i == 0 {
					cost = &before
				}
				stop := e.measure(cost)
				if err := run(mv); err != nil {
					b.Fatal(err)
				}
				stop()
			}
		}
		report(b, &before, &after)
	})
	e.exec(b, "euw-1", `ANALYZE records`)

	for _, damaged := range []bool{false, true} {
		name := "verify-clean"
		if damaged {
			name = "verify-1pct"
		}
		b.Run(name, func(b *testing.B) {
			c := e.controller(b, 0)
			mv := e.newMove(b, last, shardmap.PhaseVerify)
			last = mv.ID
			var before, after scanCost
			for b.Loop() {
				for i, run := range []func() (int, error){
					func() (int, error) { return legacyVerifyPass(ctx, c, mv, true) },
					func() (int, error) { return c.verifyPass(ctx, mv, true) },
				} {
					var want int64
					if damaged {
						want = e.damage(b)
					}
					cost := &after
					if i == 0 {
						cost = &before
					}
					stop := e.measure(cost)
					n, err := run()
					if err != nil {
						b.Fatal(err)
					}
					stop()
					if int64(n) != want {
						b.Fatalf("verify found %d differences, want %d", n, want)
					}
				}
			}
			report(b, &before, &after)
		})
	}
}

// scanCost adds up the runs of one loop: wall time, the CPU seconds of both clusters'
// Postgres processes (/proc), and this process's.
type scanCost struct {
	wall      time.Duration
	pg, gocpu float64
}

// measure starts timing a run; the function it returns adds the run to c.
func (e *scanEnv) measure(c *scanCost) (stop func()) {
	pg := func() float64 { return clusterCPU(e.pgs["use-1"].Pid()) + clusterCPU(e.pgs["euw-1"].Pid()) }
	pg0, go0, t0 := pg(), selfCPU(), time.Now()
	return func() {
		c.wall += time.Since(t0)
		c.pg += pg() - pg0
		c.gocpu += selfCPU() - go0
	}
}

// legacyBackfill is the backfill before parallel streams (commit 0107226's scan.go): one
// CopyBatch after another, progress recorded after each.
func legacyBackfill(ctx context.Context, c *Controller, mv shardmap.Move) error {
	total, err := c.cfg.Store.CountRows(ctx, mv.Tenant, mv.From)
	if err != nil {
		return fmt.Errorf("count rows: %w", err)
	}
	var zero int64
	if err := c.apply(ctx, shardmap.MoveProgress{ID: mv.ID, RowsTotal: &total, RowsCopied: &zero}); err != nil {
		return err
	}
	began := c.now()
	var after Key
	var copied int64
	for {
		if err := c.stillIn(mv.ID, shardmap.PhaseBackfill); err != nil {
			return err
		}
		next, n, err := c.cfg.Store.CopyBatch(ctx, mv.Tenant, mv.From, mv.To, after, c.cfg.BatchSize)
		if err != nil {
			return fmt.Errorf("copy batch after %v: %w", after, err)
		}
		if n == 0 {
			break
		}
		after = next
		copied += int64(n)
		p := shardmap.MoveProgress{ID: mv.ID, RowsCopied: &copied}
		if copied > total {
			total = copied
			p.RowsTotal = &total
		}
		if err := c.apply(ctx, p); err != nil {
			return err
		}
		if err := c.throttle(ctx, began, copied); err != nil {
			return err
		}
	}
	return c.apply(ctx, shardmap.SetMovePhase{ID: mv.ID, Phase: shardmap.PhaseVerify})
}

// legacyVerifyPass is the full verify pass before parallel streams: one VerifyBatch after
// another, each batch's differences repaired.
func legacyVerifyPass(ctx context.Context, c *Controller, mv shardmap.Move, repair bool) (int, error) {
	var after Key
	found := 0
	var mu sync.Mutex
	for {
		if err := c.stillIn(mv.ID, shardmap.PhaseVerify); err != nil {
			return found, err
		}
		next, diffs, checked, err := c.cfg.Store.VerifyBatch(ctx, mv.Tenant, mv.From, mv.To, after, c.cfg.BatchSize)
		if err != nil {
			return found, err
		}
		if checked == 0 {
			return found, nil
		}
		after = next
		found += len(diffs)
		if !repair || len(diffs) == 0 {
			continue
		}
		n, err := c.cfg.Store.Repair(ctx, mv.Tenant, mv.From, mv.To, diffs)
		if err != nil {
			return found, err
		}
		if n > 0 {
			if err := c.recordRepairs(ctx, &mu, mv.ID, n); err != nil {
				return found, err
			}
		}
	}
}
