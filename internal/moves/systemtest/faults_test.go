package systemtest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/internal/sim"
)

// killRecords is the size of the tenants the fault tests move: a backfill of about 3 s at the
// controller's rows-per-second cap and a verify pass of several batches, so that a kill or a
// cancel aimed at either lands in it.
var killRecords = max(600, rowsPerSecond*3)

// faultTenant creates and seeds a tenant for a fault test and answers its workload (2 writers
// per region) and placement.
func faultTenant(t *testing.T, ctx context.Context, e *env, tenant string, watch *moveWatch) (w *workload, ti tenantInfo, to, third string) {
	t.Helper()
	ti, to, third = movedTenant(t, ctx, e, tenant)
	w = newWorkload(e, t, tenant, ti.HomeRegion, 2, watch.phase)
	w.seed(t, ctx, ti.Shard, killRecords)
	return w, ti, to, third
}

// killsAtOnce is how many of TestMoveControllerKilled's moves run at once: each has a workload,
// and the machine has 2 CPUs for the cluster's ten processes and every test.
var killsAtOnce = envInt("MERIDIAN_MOVETEST_KILLS_AT_ONCE", 3)

// TestMoveControllerKilled SIGKILLs the move controller while a move under load is in each
// phase in turn — requested, dual_write, backfill, verify, the cutover window (the source
// fenced, the Cutover command not applied), cleanup — restarts it, and checks that the move
// completes and TestMoveUnderLoad's checks hold. The kill is proved to have landed in its phase
// by reading the move's phase (and for the cutover window the source's write_fenced) while no
// controller runs. The subtests run killsAtOnce at a time, staggered by 2.5 s; a kill also interrupts the
// others' moves, which must complete all the same. It is not a parallel test, so it never
// overlaps the parallel ones, which need the controller undisturbed through their cutovers. Writes a router held through a cutover longer than
// its hold time are answered 503 with Retry-After (docs/moves.md, "The controller is killed"),
// which the writers retry as a client would; they are logged, not failed.
func TestMoveControllerKilled(t *testing.T) {
	e := cluster(t)
	runAll(t, killsAtOnce, []string{"requested", "dual_write", "backfill", "verify", "cutover", "cleanup"}, func(t *testing.T, i int, phase string) {
		{
			time.Sleep(time.Duration(i%killsAtOnce) * 2500 * time.Millisecond) // one kill at a time, mostly
			ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
			defer cancel()
			tenant := "mvkill-" + strings.ReplaceAll(phase, "_", "")
			defer e.dumpLogs(t, tenant)
			watch := &moveWatch{}
			w, ti, to, third := faultTenant(t, ctx, e, tenant, watch)
			w.tolerate = tolerateFenced
			w.pauseUnmeasured = true
			killed := false
			o := moveOpts{writeRate: 20, every: 5 * time.Millisecond}
			var moveID string
			// landed reads the move's phase while the controller is dead: the kill's phase.
			landed := func(want string) {
				m, err := e.getMove(ctx, e.router(ti.HomeRegion), moveID)
				if err != nil || m.Phase != want {
					t.Errorf("the controller was killed in phase %q (%v), not %s", m.Phase, err, want)
					return
				}
				killed = true
				t.Logf("controller killed in phase %s", want)
			}
			var sealed *sealCheck
			switch phase {
			case "requested":
				// Deterministic: the controller is dead when the move is requested, so the map
				// holds it in requested until the restart.
				var restart func()
				o.beforeRequest = func() { restart = e.killController(t, ctx) }
				o.afterRequest = func(id string) {
					moveID = id
					time.Sleep(time.Second)
					landed("requested")
					restart()
				}
			case "cutover":
				sealed = newSealCheck(t, ctx, e, tenant, ti.Shard, to+"-1")
				o.afterRequest = func(id string) { moveID = id }
				o.onPhase = func(p string) {
					if p == "verify" && !killed {
						var restart func()
						sealed.killInWindow(t, ctx, func() {
							restart = e.killController(t, ctx)
							landed("verify")
							if killed && !sealed.stillFenced(t, ctx) {
								t.Errorf("the source is not fenced while the controller is dead in verify after the fence")
							}
						})
						if restart != nil {
							restart() // after the target's row is unlocked
						}
					}
					sealed.onPhase(t, ctx, p)
				}
			default:
				o.afterRequest = func(id string) { moveID = id }
				o.onPhase = func(p string) {
					if p != phase || killed {
						return
					}
					restart := e.killController(t, ctx)
					landed(phase)
					restart()
				}
			}
			m := runMove(t, ctx, e, w, ti, to, third, watch, o)
			defer e.dumpLogs(t, m.ID)
			if !killed {
				watch.mu.Lock()
				seen := strings.Join(watch.phases, " → ")
				watch.mu.Unlock()
				t.Errorf("the controller was not killed in phase %s (phases seen: %s)", phase, seen)
			}
			if sealed != nil {
				sealed.check(t)
			}
			w.checkFinal(t, ctx, m, to, third)
		}
	})
}

// TestMoveSourceAPIKilled SIGKILLs the source region's API node (the tenant's home has one)
// as soon as the source is fenced for the cutover, and checks that no write lands on the
// source after the fence: after the Cutover command the source's change_seq is still the
// fenced one, its outbox holds nothing beyond it, and each of its rows is on the target with
// the same or a newer version; and that every acknowledged write is on the target
// (TestMoveUnderLoad's checks). While the node is down, the source region's reads and the
// tenant's writes through it fail or are held; the workload retries them (transport errors,
// 502, 503, 504) as a client would. The node is restarted once the move is in cleanup. It runs
// alone: every test's reads through that region use the node.
func TestMoveSourceAPIKilled(t *testing.T) {
	e := cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	const tenant = "mvapikill"
	defer e.dumpLogs(t, tenant)
	watch := &moveWatch{}
	w, ti, to, third := faultTenant(t, ctx, e, tenant, watch)
	w.tolerate = tolerateUnavailable
	var api sim.ProcessInfo
	for _, p := range e.c.Processes() {
		if p.Kind == sim.KindAPI && p.Region == ti.HomeRegion {
			api = p
		}
	}
	if api.Name == "" {
		t.Fatalf("no API node in %s", ti.HomeRegion)
	}
	sealed := newSealCheck(t, ctx, e, tenant, ti.Shard, to+"-1")
	killed, restarted := false, false
	restartAPI := func() {
		if !killed || restarted {
			return
		}
		restarted = true
		if err := e.c.Restart(ctx, api.Name); err != nil {
			t.Errorf("Restart %s: %v", api.Name, err)
			return
		}
		if err := waitFor(ctx, 60*time.Second, func() error {
			r := e.do(ctx, http.MethodGet, api.URL+"/healthz", "", "")
			if r.status != http.StatusOK {
				return fmt.Errorf("%s /healthz: %v", api.Name, r)
			}
			return nil
		}); err != nil {
			t.Errorf("restarted %s: %v", api.Name, err)
		}
	}
	m := runMove(t, ctx, e, w, ti, to, third, watch, moveOpts{writeRate: 30, every: 5 * time.Millisecond,
		onPhase: func(p string) {
			if p == "verify" && !killed {
				sealed.killInWindow(t, ctx, func() {
					if err := e.c.Kill(api.Name); err != nil {
						t.Fatalf("Kill %s: %v", api.Name, err)
					}
					killed = true
					t.Logf("%s killed with the source fenced at change_seq %d", api.Name, sealed.fenceSeq)
				})
			}
			sealed.onPhase(t, ctx, p)
			if p == "cleanup" || p == "done" || p == "failed" || p == "cancelled" {
				restartAPI()
			}
		}})
	restartAPI()
	defer e.dumpLogs(t, m.ID)
	if !killed {
		t.Errorf("the source's API node was not killed under the fence")
	}
	sealed.check(t)
	w.checkFinal(t, ctx, m, to, third)
	e.waitRegionServes(t, ctx, ti.HomeRegion)
}

// waitRegionServes waits (up to a minute) until a write of a tenant homed in region succeeds
// through every region's router: after an API node's restart, the next tests need every
// router to see it healthy again.
func (e *env) waitRegionServes(t *testing.T, ctx context.Context, region string) {
	t.Helper()
	tenant := "probe-" + region
	r := e.do(ctx, http.MethodPost, e.router(region)+"/admin/v1/tenants", e.f.AdminToken, fmt.Sprintf(`{"id":%q,"region":%q}`, tenant, region))
	if r.status != http.StatusCreated && r.status != http.StatusConflict {
		t.Errorf("create %s: %v", tenant, r)
		return
	}
	tok := e.token(t, tenant)
	t0 := time.Now()
	for _, via := range e.regions {
		err := waitFor(ctx, time.Minute, func() error {
			r := e.do(ctx, http.MethodPut, e.router(via)+"/v1/collections/probe/records/p", tok, `{"data":{"x":1}}`)
			if r.status != http.StatusOK && r.status != http.StatusCreated {
				return fmt.Errorf("write of %s (homed in %s) through %s: %v", tenant, region, via, r)
			}
			return nil
		})
		if err != nil {
			t.Errorf("a minute after the restart of %s's API node: %v", region, err)
		}
	}
	t.Logf("every router writes to %s again %v after the checks", region, time.Since(t0).Round(time.Millisecond))
}

// sealCheck watches a move's source for the fence and, once the Cutover command is applied
// (phase cutover or cleanup, before the grace ends and the source is dropped), compares the
// source with the target as the superuser: the source still fenced at the change_seq it was
// fenced at, no outbox row beyond it, every source row on the target with the same or a newer
// version (same version: same data and deleted flag) — a clean final verify, and no write on
// the source after the fence.
type sealCheck struct {
	e                    *env
	tenant, from, to     string
	src, dst             *pgx.Conn
	fenceSeq             int64 // the source's change_seq when first seen fenced; -1 before
	mu                   sync.Mutex
	checked              bool
	problems             []string
	srcRows, dstRows     int
	srcSeq, srcOutboxMax int64
}

func newSealCheck(t *testing.T, ctx context.Context, e *env, tenant, from, to string) *sealCheck {
	t.Helper()
	s := &sealCheck{e: e, tenant: tenant, from: from, to: to, fenceSeq: -1}
	var err error
	if s.src, err = pgx.Connect(ctx, e.shardDSN(t, from)); err != nil {
		t.Fatal(err)
	}
	if s.dst, err = pgx.Connect(ctx, e.shardDSN(t, to)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.src.Close(context.Background())
		s.dst.Close(context.Background())
	})
	return s
}

// fenced reads the source's write_fenced and change_seq.
func (s *sealCheck) fenced(ctx context.Context) (bool, int64, error) {
	var f bool
	var seq int64
	err := s.src.QueryRow(ctx, `SELECT write_fenced, change_seq FROM tenants WHERE tenant_id = $1`, s.tenant).Scan(&f, &seq)
	return f, seq, err
}

func (s *sealCheck) stillFenced(t *testing.T, ctx context.Context) bool {
	f, seq, err := s.fenced(ctx)
	if err != nil {
		t.Errorf("read the source's fence: %v", err)
	}
	if f && seq != s.fenceSeq {
		t.Errorf("the source's change_seq went from %d to %d under the fence", s.fenceSeq, seq)
	}
	return f
}

// killInWindow polls the source every 2 ms (while the move is in verify) until it is fenced,
// then locks the target's tenant row (FOR NO KEY UPDATE: the mirror's and repair's inserts are
// not blocked, FinishTarget's FOR UPDATE is), so the Cutover command cannot follow, and runs
// kill; the lock is released after it. If the lock cannot be had within 200 ms (FinishTarget
// holds it), kill runs at once anyway.
func (s *sealCheck) killInWindow(t *testing.T, ctx context.Context, kill func()) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for i := 0; ; i++ {
		f, seq, err := s.fenced(ctx)
		if err != nil {
			t.Errorf("read the source's fence: %v", err)
			return
		}
		if f {
			s.fenceSeq = seq
			break
		}
		if i%50 == 49 {
			if ti := s.e.tenantShard(ctx, s.tenant); ti != s.from || time.Now().After(deadline) {
				t.Errorf("the source was never seen fenced before the tenant moved (now on %q)", ti)
				return
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	tx, err := s.dst.Begin(ctx)
	if err != nil {
		t.Errorf("begin on the target: %v", err)
		kill()
		return
	}
	defer tx.Rollback(context.Background())
	locked := false
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '200ms'`); err == nil {
		var one int
		locked = tx.QueryRow(ctx, `SELECT 1 FROM tenants WHERE tenant_id = $1 FOR NO KEY UPDATE`, s.tenant).Scan(&one) == nil
	}
	t.Logf("source %s fenced at change_seq %d; target tenant row locked: %v", s.from, s.fenceSeq, locked)
	kill()
}

// onPhase runs the comparison on the first of cutover and cleanup.
func (s *sealCheck) onPhase(t *testing.T, ctx context.Context, p string) {
	if p != "cutover" && p != "cleanup" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.checked {
		return
	}
	s.checked = true
	type digest struct {
		version int64
		deleted bool
		md5     string
	}
	read := func(conn *pgx.Conn) (map[string]digest, error) {
		rows, err := conn.Query(ctx, `SELECT collection, id, version, deleted, md5(data::text) FROM records WHERE tenant_id = $1`, s.tenant)
		if err != nil {
			return nil, err
		}
		out := map[string]digest{}
		for rows.Next() {
			var c, id string
			var d digest
			if err := rows.Scan(&c, &id, &d.version, &d.deleted, &d.md5); err != nil {
				return nil, err
			}
			out[c+"/"+id] = d
		}
		return out, rows.Err()
	}
	fenced, seq, err := s.fenced(ctx)
	if err != nil {
		s.problems = append(s.problems, fmt.Sprintf("read the source's tenant row after the cutover: %v", err))
		return
	}
	if err := s.src.QueryRow(ctx, `SELECT coalesce(max(seq), 0) FROM outbox WHERE tenant_id = $1`, s.tenant).Scan(&s.srcOutboxMax); err != nil {
		s.problems = append(s.problems, err.Error())
		return
	}
	src, err1 := read(s.src)
	dst, err2 := read(s.dst)
	if err1 != nil || err2 != nil {
		s.problems = append(s.problems, fmt.Sprintf("read rows: %v %v", err1, err2))
		return
	}
	s.srcSeq, s.srcRows, s.dstRows = seq, len(src), len(dst)
	if !fenced {
		s.problems = append(s.problems, "the source is not fenced after the Cutover command")
	}
	if s.fenceSeq >= 0 && seq != s.fenceSeq {
		s.problems = append(s.problems, fmt.Sprintf("the source's change_seq is %d after the cutover, %d when fenced: a write landed after the fence", seq, s.fenceSeq))
	}
	if s.srcOutboxMax > seq {
		s.problems = append(s.problems, fmt.Sprintf("the source's outbox holds seq %d beyond its change_seq %d", s.srcOutboxMax, seq))
	}
	bad := 0
	for k, d := range src {
		g, ok := dst[k]
		switch {
		case !ok:
			bad++
			if bad <= 5 {
				s.problems = append(s.problems, fmt.Sprintf("source row %s (version %d) missing on the target", k, d.version))
			}
		case g.version < d.version || g.version == d.version && g != d:
			bad++
			if bad <= 5 {
				s.problems = append(s.problems, fmt.Sprintf("source row %s %+v, target %+v", k, d, g))
			}
		}
	}
	if bad > 0 {
		s.problems = append(s.problems, fmt.Sprintf("%d source rows not on the target as they are on the source", bad))
	}
}

// check reports what onPhase found (and that it ran).
func (s *sealCheck) check(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.checked {
		t.Errorf("the source was not compared with the target after the cutover (the watcher saw neither cutover nor cleanup)")
		return
	}
	for _, p := range s.problems {
		t.Error(p)
	}
	if s.srcRows == 0 {
		t.Errorf("the source had no rows when compared after the cutover (dropped already?): nothing was checked")
	}
	t.Logf("after the cutover: source %s fenced at change_seq %d (outbox up to %d; seen fenced at %d), %d rows, each on the target %s (%d rows) at the same or a newer version",
		s.from, s.srcSeq, s.srcOutboxMax, s.fenceSeq, s.srcRows, s.to, s.dstRows)
}

// TestMoveCancelled cancels a move under load during its backfill and during its verify and
// checks that the source stays authoritative and the target clean: the move ends cancelled,
// the target shard has no row of the tenant (tenant row, records, outbox, keys) once the
// controller settled it, the source is active and unfenced at its write epoch of before the
// move with every acknowledged write, the map has the tenant on the source at epoch 1, not
// moving, and writes and reads continued through every router without a client error
// (TestMoveUnderLoad's checks, for the source).
func TestMoveCancelled(t *testing.T) {
	e := cluster(t)
	t.Parallel()
	runAll(t, 2, []string{"backfill", "verify"}, func(t *testing.T, _ int, phase string) {
		{
			ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
			defer cancel()
			tenant := "mvcancel-" + phase
			defer e.dumpLogs(t, tenant)
			watch := &moveWatch{}
			w, ti, to, third := faultTenant(t, ctx, e, tenant, watch)
			toShard := to + "-1"
			before := e.rowsOn(t, ctx, ti.Shard, tenant) // the source's tenant row, which the cancel must leave as it was
			var moveID string
			cancelled := false
			m := runMove(t, ctx, e, w, ti, to, third, watch, moveOpts{writeRate: 30, every: 5 * time.Millisecond,
				afterRequest: func(id string) { moveID = id },
				onPhase: func(p string) {
					if p != phase || cancelled {
						return
					}
					r := e.do(ctx, http.MethodPost, e.router(third)+"/admin/v1/moves/"+moveID+"/cancel", e.f.AdminToken, "")
					if r.status != http.StatusAccepted {
						t.Errorf("cancel in %s: %v, want 202", phase, r)
						return
					}
					cancelled = true
					t.Logf("move %s cancelled in %s", moveID, phase)
				},
				afterEnd: func(m move) {
					// The controller settles the cancel (unfence, drop the target's copy);
					// the workload keeps running on the source during and after it.
					err := waitFor(ctx, time.Minute, func() error {
						if dst := e.rowsOn(t, ctx, toShard, tenant); dst != (tenantRows{}) {
							return fmt.Errorf("target %s still has rows of %s: %+v", toShard, tenant, dst)
						}
						if src := e.rowsOn(t, ctx, ti.Shard, tenant); src.Fenced {
							return fmt.Errorf("source %s still fenced: %+v", ti.Shard, src)
						}
						return nil
					})
					if err != nil {
						t.Errorf("move %s cancelled, not settled after a minute: %v", m.ID, err)
					}
				}})
			defer e.dumpLogs(t, m.ID)
			if m.Phase != "cancelled" {
				t.Errorf("move %s ended %s (error %q), want cancelled", m.ID, m.Phase, m.Error)
			}
			w.checkErrors(t)
			w.checkServed(t, ctx, served{region: ti.HomeRegion, shard: ti.Shard, epoch: 1, rowEpoch: before.Epoch, clean: toShard})
		}
	})
}
