package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/records/pgstore"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/migrations"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

const region = "us-east"

var testSecret = []byte("test-secret")

// staticMap is a fake of our own ShardMap interface, and of the store's pgstore.Map: fixed
// shards, pinned tenants, everything else on the first shard; write epoch 1 unless epochs says
// otherwise; moving tenants' mirror targets in mirror.
type staticMap struct {
	mu      sync.Mutex
	version uint64
	shards  map[string]shards.Info
	pins    map[string]string
	def     string
	age     time.Duration
	epochs  map[string]uint64
	mirror  map[string]string
}

var (
	_ ShardMap    = (*staticMap)(nil)
	_ pgstore.Map = (*staticMap)(nil)
)

func (m *staticMap) Lookup(tenant string) (Route, error) {
	if !ids.ValidTenant(tenant) {
		return Route{}, errors.New("bad tenant")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	id := m.def
	if p, ok := m.pins[tenant]; ok {
		id = p
	}
	epoch := uint64(1)
	if ep, ok := m.epochs[tenant]; ok {
		epoch = ep
	}
	return Route{Shard: id, HomeRegion: m.shards[id].HomeRegion, Epoch: epoch, MapVersion: m.version, MirrorTo: m.mirror[tenant]}, nil
}

func (m *staticMap) ShardInfo(id string) (shards.Info, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.shards[id]
	return s, ok
}

func (m *staticMap) Shards() []shards.Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []shards.Info
	for _, s := range m.shards {
		out = append(out, s)
	}
	return out
}

func (m *staticMap) ShardHome(id string) (string, bool) {
	s, ok := m.ShardInfo(id)
	return s.HomeRegion, ok
}

func (m *staticMap) ShardIDs() []string {
	var out []string
	for _, s := range m.Shards() {
		out = append(out, s.ID)
	}
	return out
}

func (m *staticMap) Version() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.version
}

func (m *staticMap) WaitVersion(ctx context.Context, v uint64) error {
	for {
		if m.Version() >= v {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (m *staticMap) Age() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.age
}

// dbSeq numbers shard databases so names never repeat within a run.
var dbSeq atomic.Int64

type env struct {
	t     testing.TB
	pg    *localsrv.Postgres
	maps  *staticMap
	srv   *Server
	store *pgstore.Store
	http  *httptest.Server
	dbs   map[string]string // shard -> database
}

// nodeConfig is what a test may change before a node starts: the HTTP layer's, the store's and
// the connections' configuration. PG is the node's primary cluster (read-only for options).
type nodeConfig struct {
	API   Config
	Store pgstore.Config
	Conns shards.Config
	PG    *localsrv.Postgres
}

// startNode starts an API node of region over maps: its connections, its records store and its
// HTTP server, all stopped by t.Cleanup. Region, map, connections and logger are set after opts.
func (e *env) startNode(nodeRegion string, opts ...func(*nodeConfig)) {
	t := e.t
	t.Helper()
	nc := nodeConfig{PG: e.pg, Conns: shards.Config{MaxConns: 20},
		API: Config{CursorKey: []byte("cursor-key"), ClusterToken: "cluster-token"}}
	for _, f := range opts {
		f(&nc)
	}
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	conns := shards.New(nc.Conns)
	nc.Store.Region, nc.Store.Map, nc.Store.Conns, nc.Store.Logger = nodeRegion, e.maps, conns, log
	store, err := pgstore.New(nc.Store)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := auth.NewVerifier(auth.Config{Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	nc.API.Region, nc.API.Logger = nodeRegion, log
	nc.API.Collectors = append(nc.API.Collectors, shards.Collector(conns))
	e.store = store
	if e.srv, err = New(nc.API, e.maps, store, verifier, []byte(`{"openapi":"3.1.0"}`)); err != nil {
		t.Fatal(err)
	}
	e.http = httptest.NewServer(e.srv.Handler())
	t.Cleanup(func() {
		e.http.Close()
		conns.Close()
	})
}

// newEnv starts a node for region us-east over three shard databases: s1 and s2 homed here,
// s3 homed in eu-west (same cluster, so misdirected writes can be tested).
func newEnv(t testing.TB, opts ...func(*nodeConfig)) *env {
	t.Helper()
	pg := testenv.Postgres(t) // one cluster per test, removed by t.Cleanup
	ctx := context.Background()
	e := &env{t: t, pg: pg, dbs: map[string]string{}}
	e.maps = &staticMap{version: 10, shards: map[string]shards.Info{}, pins: map[string]string{}, def: "s1"}
	dsns := map[string]string{}
	for _, sh := range []struct{ id, home string }{{"s1", region}, {"s2", region}, {"s3", "eu-west"}} {
		db := fmt.Sprintf("shard_%s_%d", sh.id, dbSeq.Add(1))
		if err := pg.CreateDatabase(ctx, db); err != nil {
			t.Fatal(err)
		}
		e.dbs[sh.id] = db
		dsns[sh.id] = pg.DSN(db)
		e.maps.shards[sh.id] = shards.Info{ID: sh.id, HomeRegion: sh.home, Database: db,
			Endpoints: map[string]string{region: pg.Addr(), "eu-west": pg.Addr()}}
	}
	res, err := migrations.Apply(ctx, dsns)
	if err != nil {
		t.Fatalf("migrations: %v %+v", err, res)
	}
	e.startNode(region, opts...)
	return e
}

// token mints an HS256 token for tenant with scopes.
func (e *env) token(tenant, scope string) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u", "tenant": tenant, "scope": scope,
		"iat": time.Now().Add(-time.Minute).Unix(), "exp": time.Now().Add(time.Hour).Unix()})
	s, err := tok.SignedString(testSecret)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// pinTenant places tenant on shard in the fake map and inserts its row directly (superuser).
func (e *env) pinTenant(tenant, shard string) {
	e.t.Helper()
	e.maps.mu.Lock()
	e.maps.pins[tenant] = shard
	e.maps.mu.Unlock()
	conn, err := e.pg.Connect(context.Background(), e.dbs[shard])
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), `INSERT INTO tenants (tenant_id) VALUES ($1)`, tenant); err != nil {
		e.t.Fatal(err)
	}
}

// createTenant records tenant on shard through the internal endpoint.
func (e *env) createTenant(tenant, shard string) {
	e.t.Helper()
	e.maps.mu.Lock()
	e.maps.pins[tenant] = shard
	e.maps.mu.Unlock()
	resp := e.do("POST", "/internal/v1/tenants", "Bearer cluster-token", `{"id":"`+tenant+`","shard":"`+shard+`"}`, nil)
	if resp.StatusCode != 201 {
		e.t.Fatalf("create tenant %s: %d %s", tenant, resp.StatusCode, resp.Body)
	}
}

type result struct {
	StatusCode int
	Header     http.Header
	Body       string
}

// do sends a request; auth is the full Authorization value ("" = none). A JSON body gets
// Content-Type application/json unless hdr overrides it.
func (e *env) do(method, path, authz, body string, hdr map[string]string) result {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.http.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{resp.StatusCode, resp.Header, string(b)}
}
