package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/internal/topology"
	"github.com/meridian-dev/meridian/migrations"
	"github.com/meridian-dev/meridian/shardmap"
)

const testToken = "compose-init-test-token"

var repoTopology = filepath.Join("..", "..", topology.DefaultPath)

func TestRunWritesComposeYAML(t *testing.T) {
	out := filepath.Join(t.TempDir(), "compose.yml")
	if err := run(repoTopology, out); err != nil {
		t.Fatal(err)
	}
	topo, err := topology.Load(repoTopology)
	if err != nil {
		t.Fatal(err)
	}
	want, err := topo.ComposeYAML()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("run wrote something other than ComposeYAML")
	}
	if err := run(filepath.Join(t.TempDir(), "missing.yaml"), out); err == nil {
		t.Error("run with a missing topology file: no error")
	}
}

func TestComposeDSN(t *testing.T) {
	dsn := composeDSN("postgres-us-east", 20050, "p@ss/w:rd'", "meridian_us_east_1")
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := u.User.Password()
	if u.User.Username() != "postgres" || pw != "p@ss/w:rd'" || u.Host != "postgres-us-east:20050" ||
		u.Path != "/meridian_us_east_1" || u.Query().Get("sslmode") != "disable" {
		t.Errorf("composeDSN = %q (user %q password %q host %q path %q)", dsn, u.User.Username(), pw, u.Host, u.Path)
	}
}

// startMapNode starts a one-voter shard-map node serving its internal API on loopback.
func startMapNode(t *testing.T) (*shardmap.Node, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	n, err := shardmap.NewNode(shardmap.NodeConfig{ID: "map-1", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0",
		HTTPAddr: base, Bootstrap: true, Token: testToken, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	srv := &http.Server{Handler: n.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		n.Shutdown()
	})
	return n, base
}

// TestInitCluster runs the compose init against a real Postgres (every region's primary is the
// same server, the shard databases are distinct) and a real shard-map node.
func TestInitCluster(t *testing.T) {
	topo, err := topology.Load(repoTopology)
	if err != nil {
		t.Fatal(err)
	}
	pg := testenv.Postgres(t)
	ctx := t.Context()
	for _, s := range topo.Shards() {
		if err := pg.CreateDatabase(ctx, s.Database); err != nil {
			t.Fatal(err)
		}
	}
	node, base := startMapNode(t)
	cfg := initConfig{
		topo:         topo,
		primaryDSN:   func(_, db string) string { return pg.DSN(db) },
		routerURLs:   []string{base},
		clusterToken: testToken,
		appPassword:  "it's a secret",
		log:          slog.New(slog.DiscardHandler),
	}
	ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := initCluster(ictx, cfg); err != nil {
		t.Fatalf("initCluster: %v", err)
	}

	// The node also records its own HTTP address through Raft (RegisterNode), which may land
	// after the bootstrap: wait for both so the idempotence check below compares a settled map.
	testenv.WaitFor(t, 10*time.Second, func() error {
		if m := node.Map(); m.Version() == 0 || len(m.Nodes()) == 0 {
			return fmt.Errorf("map version %d, %d nodes registered", m.Version(), len(m.Nodes()))
		}
		return nil
	})
	m := node.Map()
	if got, want := slices.Sorted(slices.Values(m.Regions())), slices.Sorted(slices.Values(topo.Regions())); !slices.Equal(got, want) {
		t.Errorf("map regions %v, want %v", got, want)
	}
	if m.SlotCount() != topo.SlotCount() {
		t.Errorf("map slot count %d, want %d", m.SlotCount(), topo.SlotCount())
	}
	for _, s := range topo.Shards() {
		got, ok := m.Shard(s.ID)
		if !ok {
			t.Errorf("map lacks shard %s", s.ID)
			continue
		}
		if got.HomeRegion != s.HomeRegion || got.Database != s.Database || !maps.Equal(got.Endpoints, topo.ShardEndpoints(s)) {
			t.Errorf("map shard %+v, want home %s database %s endpoints %v", got, s.HomeRegion, s.Database, topo.ShardEndpoints(s))
		}
		conn, err := pg.Connect(ctx, s.Database)
		if err != nil {
			t.Fatal(err)
		}
		var records bool
		err = conn.QueryRow(ctx, "SELECT to_regclass('public.records') IS NOT NULL").Scan(&records)
		conn.Close(ctx)
		if err != nil || !records {
			t.Errorf("%s: records table present = %v (err %v): not migrated", s.Database, records, err)
		}
	}
	conn, err := pg.Connect(ctx, topo.Shards()[0].Database)
	if err != nil {
		t.Fatal(err)
	}
	var hash string
	if err := conn.QueryRow(ctx, "SELECT coalesce(rolpassword, '') FROM pg_authid WHERE rolname = $1", migrations.AppRole).Scan(&hash); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if !strings.HasPrefix(hash, "SCRAM-SHA-256$") {
		t.Errorf("%s password hash %q, want a SCRAM verifier", migrations.AppRole, hash)
	}

	// Idempotent: a second run (a restarted init container) succeeds and changes nothing.
	v := m.Version()
	if err := initCluster(ictx, cfg); err != nil {
		t.Fatalf("second initCluster: %v", err)
	}
	if got := node.Map().Version(); got != v {
		t.Errorf("second run moved the map from version %d to %d", v, got)
	}

	// A wrong cluster token is refused, not retried until the deadline.
	bad := cfg
	bad.clusterToken = "wrong"
	bctx, bcancel := context.WithTimeout(ctx, 30*time.Second)
	defer bcancel()
	if err := initCluster(bctx, bad); err == nil || bctx.Err() != nil {
		t.Errorf("wrong token: err %v (ctx %v), want a prompt refusal", err, bctx.Err())
	}
}

func TestInitClusterGivesUp(t *testing.T) {
	topo, err := topology.Load(repoTopology)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing listens on the closed port: init must stop at its deadline with the last error.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	err = initCluster(ctx, initConfig{topo: topo,
		primaryDSN: func(_, db string) string { return "postgres://postgres@" + addr + "/" + db + "?sslmode=disable" },
		routerURLs: []string{"http://" + addr}, clusterToken: testToken, appPassword: "x", log: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "migrate") {
		t.Errorf("err = %v, want a migrate timeout", err)
	}
}
