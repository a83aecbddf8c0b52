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
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/migrations"
)

const region = "us-east"

var testSecret = []byte("test-secret")

// staticMap is a fake of our own ShardMap interface: fixed shards, pinned tenants, everything
// else on the first shard.
type staticMap struct {
	mu      sync.Mutex
	version uint64
	shards  map[string]ShardInfo
	pins    map[string]string
	def     string
	age     time.Duration
}

var _ ShardMap = (*staticMap)(nil)

func (m *staticMap) Lookup(tenant string) (Route, error) {
	if !auth.TenantPattern.MatchString(tenant) {
		return Route{}, errors.New("bad tenant")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	id := m.def
	if p, ok := m.pins[tenant]; ok {
		id = p
	}
	return Route{Shard: id, HomeRegion: m.shards[id].HomeRegion, Epoch: 1, MapVersion: m.version}, nil
}

func (m *staticMap) ShardInfo(id string) (ShardInfo, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.shards[id]
	return s, ok
}

func (m *staticMap) Shards() []ShardInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ShardInfo
	for _, s := range m.shards {
		out = append(out, s)
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
	http  *httptest.Server
	dbs   map[string]string // shard -> database
	pools *Pools
}

// newEnv starts a node for region us-east over three shard databases: s1 and s2 homed here,
// s3 homed in eu-west (same cluster, so misdirected writes can be tested).
func newEnv(t testing.TB, mutate ...func(*Config)) *env {
	t.Helper()
	pg := testenv.Postgres(t) // one cluster per test, removed by t.Cleanup
	ctx := context.Background()
	e := &env{t: t, pg: pg, dbs: map[string]string{}}
	e.maps = &staticMap{version: 10, shards: map[string]ShardInfo{}, pins: map[string]string{}, def: "s1"}
	dsns := map[string]string{}
	for _, sh := range []struct{ id, home string }{{"s1", region}, {"s2", region}, {"s3", "eu-west"}} {
		db := fmt.Sprintf("shard_%s_%d", sh.id, dbSeq.Add(1))
		if err := pg.CreateDatabase(ctx, db); err != nil {
			t.Fatal(err)
		}
		e.dbs[sh.id] = db
		dsns[sh.id] = pg.DSN(db)
		e.maps.shards[sh.id] = ShardInfo{ID: sh.id, HomeRegion: sh.home, Database: db,
			Endpoints: map[string]string{region: pg.Addr(), "eu-west": pg.Addr()}}
	}
	res, err := migrations.Apply(ctx, dsns)
	if err != nil {
		t.Fatalf("migrations: %v %+v", err, res)
	}
	e.pools = NewPools(PoolConfig{MaxConns: 20})
	verifier, err := auth.NewVerifier(auth.Config{Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Region: region, CursorKey: []byte("cursor-key"), ClusterToken: "cluster-token",
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))}
	for _, f := range mutate {
		f(&cfg)
	}
	e.srv, err = New(cfg, e.maps, e.pools, verifier, []byte(`{"openapi":"3.1.0"}`))
	if err != nil {
		t.Fatal(err)
	}
	e.http = httptest.NewServer(e.srv.Handler())
	t.Cleanup(func() {
		e.http.Close()
		e.pools.Close()
	})
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
