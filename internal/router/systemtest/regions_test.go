package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/records/pgstore"
	"github.com/meridian-dev/meridian/internal/router"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/migrations"
	"github.com/meridian-dev/meridian/region"
	"github.com/meridian-dev/meridian/shardmap"
)

// TestRegionsReportReplicaLag: a router (us-east) and an API node (us-west) joined by gossip; the
// one shard is homed in us-east and us-west's copy is a real streaming standby. With replay
// paused on the standby while the primary keeps committing, /admin/v1/regions shows the API
// node's replica lag (the standby's proven staleness) growing; once replay resumes it comes back
// to a few standby check intervals. Every
// member reports the map version of its copy, and the answer names the Raft leader.
func TestRegionsReportReplicaLag(t *testing.T) {
	ctx := context.Background()
	primary, standby, db := shardWithStandby(t)

	verifier, err := auth.NewVerifier(auth.Config{Secret: []byte(jwtSecret)})
	if err != nil {
		t.Fatal(err)
	}
	rt := startRouter(t, routerOptions{id: "us-east-router", region: "us-east", dataDir: t.TempDir(),
		raftAddr: "127.0.0.1:0", bootstrap: true, verifier: verifier, raftTune: fastRaft,
		gossipAddr: "127.0.0.1:0", gossipConfig: region.TestConfig("", region.Meta{}).Memberlist,
		publishEvery: 50 * time.Millisecond, log: testLogger().With("node", "us-east-router")})
	bootstrapShardWithStandby(t, rt, db, primary, standby)

	a := startAPINode(t, "us-west", "", rt.URL, verifier, nil)
	a.join(t, []string{rt.Gossip.Addr()})
	t.Cleanup(func() { _ = a.gossip.Depart(context.Background()) })

	// Both members publish the map version of their copies; nothing is behind yet.
	testenv.WaitFor(t, 10*time.Second, func() error {
		version := rt.Node.Map().Version() // the router registering its address moves it too
		ans := regionsAnswer(t, rt.URL)
		r, err := member(ans, "us-east", "router")
		if err != nil {
			return err
		}
		w, err := member(ans, "us-west", "api")
		if err != nil {
			return err
		}
		// The lag is the standby's proven staleness: about one standby check interval (250 ms)
		// when it is caught up, never exactly 0.
		if r.MapVersion != version || w.MapVersion != version || w.ReplicaLagMS > 1000 {
			return fmt.Errorf("router %+v, api node %+v; want map version %d and lag within a few check intervals", r, w, version)
		}
		if r.Health != "ok" || w.Health != "ok" || !w.Healthy {
			return fmt.Errorf("router %+v, api node %+v; want both ok", r, w)
		}
		if !strings.HasPrefix(ans.Leader, "us-east-router ") {
			return fmt.Errorf("leader %q, want us-east-router", ans.Leader)
		}
		return nil
	})

	// The primary keeps committing while the standby's replay is paused.
	writeUntilCleanup(t, primary.DSN("postgres"))
	// The standby's lag is measured from the last transaction it replayed, so it must have
	// replayed one before the pause.
	lsn, err := primary.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = standby.WaitReplayed(wctx, lsn)
	cancel()
	if err != nil {
		t.Fatalf("standby replays the writes: %v", err)
	}
	if err := standby.Exec(ctx, "SELECT pg_wal_replay_pause()"); err != nil {
		t.Fatalf("pause replay: %v", err)
	}
	apiLag := func() (int64, error) {
		w, err := member(regionsAnswer(t, rt.URL), "us-west", "api")
		return w.ReplicaLagMS, err
	}
	var first int64
	testenv.WaitFor(t, 20*time.Second, func() error {
		lag, err := apiLag()
		if err != nil || lag <= 0 {
			return fmt.Errorf("api node's replica lag %d ms (%v), want > 0 with replay paused", lag, err)
		}
		first = lag
		return nil
	})
	testenv.WaitFor(t, 20*time.Second, func() error {
		lag, err := apiLag()
		if err != nil || lag < first+500 {
			return fmt.Errorf("api node's replica lag %d ms (%v), want it to grow past %d ms", lag, err, first+500)
		}
		return nil
	})

	if err := standby.Exec(ctx, "SELECT pg_wal_replay_resume()"); err != nil {
		t.Fatalf("resume replay: %v", err)
	}
	testenv.WaitFor(t, 20*time.Second, func() error {
		lag, err := apiLag()
		if err != nil || lag > 1000 {
			return fmt.Errorf("api node's replica lag %d ms (%v), want a few check intervals at most after replay resumed", lag, err)
		}
		return nil
	})
}

// shardWithStandby makes shard use1's database, migrated, on a real primary, and a real
// streaming standby of that primary.
func shardWithStandby(t *testing.T) (primary, standby *localsrv.Postgres, db string) {
	t.Helper()
	primary, db = testenv.Postgres(t), "shard_use1"
	if err := primary.CreateDatabase(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	if res, err := migrations.Apply(context.Background(), map[string]string{"use1": primary.DSN(db)}); err != nil {
		t.Fatalf("migrations: %v %+v", err, res)
	}
	return primary, testenv.Standby(t, primary), db
}

// bootstrapShardWithStandby waits until rt leads the map, then bootstraps it with regions
// us-east and us-west and one shard, use1, homed in us-east on primary with its us-west copy on
// standby (see shardWithStandby).
func bootstrapShardWithStandby(t *testing.T, rt *testRouter, db string, primary, standby *localsrv.Postgres) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, func() error {
		if !rt.Node.IsLeader() {
			return fmt.Errorf("router not leader yet")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := rt.Node.Apply(ctx, shardmap.Bootstrap{Regions: []string{"us-east", "us-west"}, SlotCount: 64,
		Shards: []shardmap.Shard{{ID: "use1", HomeRegion: "us-east", Database: db, State: "active",
			Endpoints: map[string]string{"us-east": primary.Addr(), "us-west": standby.Addr()}}}})
	if err != nil {
		t.Fatalf("bootstrap map: %v", err)
	}
}

// startAPINode starts a real API node of region that watches the map on routerURL and reads
// the shards' copies of its region, listening on addr ("" = a free port). store adjusts the
// records store's configuration (nil = the defaults with a 50 ms standby check interval).
func startAPINode(t *testing.T, reg, addr, routerURL string, verifier *auth.Verifier, store func(*pgstore.Config)) *apiNode {
	t.Helper()
	if addr == "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String()
		ln.Close()
	}
	a := &apiNode{region: reg, addr: addr, url: "http://" + addr}
	a.boot(t, []string{routerURL}, 4, verifier, func(c *pgstore.Config) {
		c.StandbyInterval = 50 * time.Millisecond
		if store != nil {
			store(c)
		}
	})
	return a
}

// writeUntilCleanup commits a small transaction on the primary every few milliseconds until
// the test ends, so a paused standby falls further behind.
func writeUntilCleanup(t *testing.T, dsn string) {
	t.Helper()
	pool := testenv.NewPool(t, dsn)
	if _, err := pool.Exec(context.Background(), `CREATE TABLE lag_ticks (at timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			_, _ = pool.Exec(ctx, `INSERT INTO lag_ticks DEFAULT VALUES`)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func regionsAnswer(t *testing.T, routerURL string) router.RegionsAnswer {
	t.Helper()
	a, err := send("GET", routerURL+"/admin/v1/regions", adminToken(t), "")
	if err != nil || a.status != 200 {
		t.Fatalf("GET /admin/v1/regions: %d %s %v", a.status, a.body, err)
	}
	var ans router.RegionsAnswer
	if err := json.Unmarshal(a.body, &ans); err != nil {
		t.Fatalf("GET /admin/v1/regions: %v in %s", err, a.body)
	}
	return ans
}

// member finds the only member of region with role in ans.
func member(ans router.RegionsAnswer, reg, role string) (router.Member, error) {
	for _, r := range ans.Regions {
		if r.ID != reg {
			continue
		}
		for _, m := range r.Members {
			if m.Role == role {
				return m, nil
			}
		}
	}
	return router.Member{}, fmt.Errorf("no %s member in %s: %+v", role, reg, ans.Regions)
}
