package pgstore

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/migrations"
	"github.com/meridian-dev/meridian/replication"
)

const region = "us-east"

// fakeMap is a fake of Map: fixed shards.
type fakeMap struct {
	mu     sync.Mutex
	shards map[string]shards.Info
}

var _ Map = (*fakeMap)(nil)

func (m *fakeMap) ShardInfo(id string) (shards.Info, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.shards[id]
	return s, ok
}

func (m *fakeMap) Shards() []shards.Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []shards.Info
	for _, s := range m.shards {
		out = append(out, s)
	}
	return out
}

// dbSeq numbers shard databases so names never repeat within a run.
var dbSeq atomic.Int64

// env is one store of region us-east over shard s1 (homed here) on a real Postgres.
type env struct {
	t     testing.TB
	pg    *localsrv.Postgres
	db    string // s1's database
	maps  *fakeMap
	conns *shards.Conns
	store *Store
}

// newEnv starts Postgres, makes and migrates s1's database and opens a store over it. conns
// configures its connections (a tracer, say).
func newEnv(t testing.TB, conns shards.Config) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, pg: testenv.Postgres(t), db: fmt.Sprintf("shard_s1_%d", dbSeq.Add(1))}
	if err := e.pg.CreateDatabase(ctx, e.db); err != nil {
		t.Fatal(err)
	}
	if res, err := migrations.Apply(ctx, map[string]string{"s1": e.pg.DSN(e.db)}); err != nil {
		t.Fatalf("migrations: %v %+v", err, res)
	}
	e.maps = &fakeMap{shards: map[string]shards.Info{"s1": {ID: "s1", HomeRegion: region, Database: e.db,
		Endpoints: map[string]string{region: e.pg.Addr()}}}}
	e.conns, e.store = openStore(t, region, e.maps, conns)
	return e
}

// openStore opens connections and a store of nodeRegion over maps, closed by t.Cleanup.
func openStore(t testing.TB, nodeRegion string, maps Map, cc shards.Config, mutate ...func(*Config)) (*shards.Conns, *Store) {
	t.Helper()
	conns := shards.New(cc)
	t.Cleanup(conns.Close)
	cfg := Config{Region: nodeRegion, Map: maps, Conns: conns, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))}
	for _, f := range mutate {
		f(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return conns, s
}

// target is tenant on s1.
func target(tenant string) records.Target { return records.Target{Tenant: tenant, Shard: "s1"} }

// createTenant records tenant on shard s1 through the store.
func createTenant(t testing.TB, s *Store, tenant string) {
	t.Helper()
	if created, err := s.CreateTenant(context.Background(), tenant, "s1"); err != nil || !created {
		t.Fatalf("create tenant %s: %v %v", tenant, created, err)
	}
}

// put writes a record through the store and returns the write's result.
func put(t testing.TB, s *Store, tenant, coll, id, data string) records.WriteResult {
	t.Helper()
	res, err := s.Write(context.Background(), target(tenant), records.WriteOp{Op: records.Put, Collection: coll, ID: id, Data: []byte(data),
		Render: func(ch records.Change) (records.Response, error) {
			return records.Response{Status: http.StatusOK, Body: ch.Record.Data}, nil
		}})
	if err != nil {
		t.Fatalf("put %s/%s for %s: %v", coll, id, tenant, err)
	}
	return res
}

// appConn returns a connection of the store's (meridian_app) pool of s1, released at cleanup.
func (e *env) appConn() *pgx.Conn {
	e.t.Helper()
	sh, _ := e.maps.ShardInfo("s1")
	pool, err := e.conns.Primary(context.Background(), sh)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := pool.Acquire(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.Release)
	return c.Conn()
}

// standbyEnv is shard s1 homed in eu-west on a real primary, with a real streaming standby that
// is us-east's copy, and two stores: home (eu-west, takes the writes) and local (us-east, reads
// from its standby).
type standbyEnv struct {
	primary, standby *localsrv.Postgres
	db               string
	maps             *fakeMap
	home, local      *Store
}

const homeRegion = "eu-west"

// newStandbyEnv starts the pair; localConns configures the local store's connections.
func newStandbyEnv(t *testing.T, localConns shards.Config, mutate ...func(*Config)) *standbyEnv {
	t.Helper()
	ctx := context.Background()
	// synchronous_commit on, as in production: a commit is flushed, hence streamed, at once.
	primary := testenv.PostgresWith(t, localsrv.PostgresOptions{Settings: map[string]string{"synchronous_commit": "on"}})
	se := &standbyEnv{primary: primary, db: fmt.Sprintf("shard_sb_%d", dbSeq.Add(1))}
	if err := se.primary.CreateDatabase(ctx, se.db); err != nil {
		t.Fatal(err)
	}
	if res, err := migrations.Apply(ctx, map[string]string{"s1": se.primary.DSN(se.db)}); err != nil {
		t.Fatalf("migrations: %v %+v", err, res)
	}
	se.standby = testenv.Standby(t, se.primary)
	se.maps = &fakeMap{shards: map[string]shards.Info{"s1": {ID: "s1", HomeRegion: homeRegion, Database: se.db,
		Endpoints: map[string]string{homeRegion: se.primary.Addr(), region: se.standby.Addr()}}}}
	_, se.home = openStore(t, homeRegion, se.maps, shards.Config{})
	_, se.local = openStore(t, region, se.maps, localConns, mutate...)
	return se
}

// waitReplayed waits until the standby has replayed the write behind a Consistency-Token.
func (se *standbyEnv) waitReplayed(t *testing.T, token string) {
	t.Helper()
	tok, err := replication.DecodeToken(token)
	if err != nil {
		t.Fatalf("token %q: %v", token, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := se.standby.WaitReplayed(ctx, tok.LSN.String()); err != nil {
		t.Fatal(err)
	}
}
