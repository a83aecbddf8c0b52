package main

import (
	"bytes"
	"context"
	"errors"
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

	"github.com/jackc/pgx/v5"

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
		topo:           topo,
		primaryDSN:     func(_, db string) string { return pg.DSN(db) },
		routerURLs:     []string{base},
		clusterToken:   testToken,
		appPassword:    "it's a secret",
		workerPassword: `wörker "pass" 'word'`,
		log:            slog.New(slog.DiscardHandler),
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
	for _, role := range []string{migrations.AppRole, migrations.WorkerRole} {
		var hash string
		if err := conn.QueryRow(ctx, "SELECT coalesce(rolpassword, '') FROM pg_authid WHERE rolname = $1", role).Scan(&hash); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(hash, "SCRAM-SHA-256$") {
			t.Errorf("%s password hash %q, want a SCRAM verifier", role, hash)
		}
	}
	conn.Close(ctx)
	// The passwords work: with the roles made to authenticate by password (the test server
	// trusts loopback), each logs in to every shard database with its own password and not
	// with a wrong one.
	requirePassword(t, pg.DataDir(), func(sql string) error { return pg.Exec(ctx, sql) }, migrations.AppRole, migrations.WorkerRole)
	login := func(role, password, db string) error {
		u := url.URL{Scheme: "postgres", User: url.UserPassword(role, password), Host: pg.Addr(), Path: "/" + db, RawQuery: "sslmode=disable"}
		c, err := pgx.Connect(ctx, u.String())
		if err != nil {
			return err
		}
		defer c.Close(context.WithoutCancel(ctx))
		var user string
		if err := c.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil {
			return err
		}
		if user != role {
			return fmt.Errorf("logged in as %s, want %s", user, role)
		}
		return nil
	}
	// The reload is asynchronous: wait until a wrong password is refused.
	testenv.WaitFor(t, 10*time.Second, func() error {
		if login(migrations.WorkerRole, "wrong", topo.Shards()[0].Database) == nil {
			return errors.New("a wrong password still logs in: pg_hba.conf not reloaded yet")
		}
		return nil
	})
	for _, s := range topo.Shards() {
		for role, password := range map[string]string{migrations.AppRole: cfg.appPassword, migrations.WorkerRole: cfg.workerPassword} {
			if err := login(role, password, s.Database); err != nil {
				t.Errorf("%s: log in as %s with the password init set: %v", s.Database, role, err)
			}
			if err := login(role, password+"x", s.Database); err == nil {
				t.Errorf("%s: %s logs in with a wrong password", s.Database, role)
			}
		}
	}
	if err := login(migrations.WorkerRole, cfg.appPassword, topo.Shards()[0].Database); err == nil {
		t.Errorf("%s logs in with %s's password", migrations.WorkerRole, migrations.AppRole)
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

// requirePassword makes roles authenticate by password (scram-sha-256) on the test server,
// whose pg_hba.conf trusts every loopback connection, and reloads the configuration.
func requirePassword(t *testing.T, dataDir string, exec func(sql string) error, roles ...string) {
	t.Helper()
	path := filepath.Join(dataDir, "pg_hba.conf")
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// pg_hba.conf is matched top down: these lines come before the trust ones. Writing in place
	// keeps the file's owner (the server user).
	line := fmt.Sprintf("host all %s 127.0.0.1/32 scram-sha-256\n", strings.Join(roles, ","))
	if err := os.WriteFile(path, append([]byte(line), old...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := exec("SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
}

// TestCmdInitRequiresSecrets: init refuses to start without any one of its secrets, the
// worker password included.
func TestCmdInitRequiresSecrets(t *testing.T) {
	all := map[string]string{"MERIDIAN_CLUSTER_TOKEN": "t", "MERIDIAN_PG_PASSWORD": "p",
		"MERIDIAN_APP_DB_PASSWORD": "a", "MERIDIAN_WORKER_DB_PASSWORD": "w"}
	for missing := range all {
		t.Run(missing, func(t *testing.T) {
			for k, v := range all {
				if k == missing {
					v = ""
				}
				t.Setenv(k, v)
			}
			// A missing topology file: were the secrets accepted, the error would name it.
			err := cmdInit([]string{"-topology", filepath.Join(t.TempDir(), "missing.yaml")}, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), "required") {
				t.Errorf("without %s: err = %v, want the required-secrets error", missing, err)
			}
		})
	}
}

// TestComposeRolesAreMigrationRoles: the roles the compose file's API nodes log in as are the
// ones the migrations create and init sets passwords for.
func TestComposeRolesAreMigrationRoles(t *testing.T) {
	topo, err := topology.Load(repoTopology)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range topo.Regions() {
		for _, n := range topo.APINodes(r) {
			env := topo.APIEnv(n)
			if env["MERIDIAN_DB_USER"] != migrations.AppRole || env["MERIDIAN_WORKER_DB_USER"] != migrations.WorkerRole {
				t.Errorf("%s: MERIDIAN_DB_USER %q MERIDIAN_WORKER_DB_USER %q, want %s and %s", n.ID,
					env["MERIDIAN_DB_USER"], env["MERIDIAN_WORKER_DB_USER"], migrations.AppRole, migrations.WorkerRole)
			}
		}
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
		routerURLs: []string{"http://" + addr}, clusterToken: testToken, appPassword: "x", workerPassword: "y", log: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "migrate") {
		t.Errorf("err = %v, want a migrate timeout", err)
	}
}
