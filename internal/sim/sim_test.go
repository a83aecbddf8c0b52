package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/topology"
)

// repoRoot is the module root (two levels above this package).
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// testTopology is the repository's topology moved to a private port range (base-10000, below the kernel's ephemeral range 32768+ that free-port tests draw from), so a
// developer's running `make up` cluster and this test never collide.
func testTopology(t *testing.T) *topology.Topology {
	t.Helper()
	base, err := topology.Load(filepath.Join(repoRoot(t), "deploy", "multi-region", "topology.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	f := base.File()
	for i := range f.Regions {
		f.Regions[i].PortBase -= 10000
	}
	topo, err := topology.New(f)
	if err != nil {
		t.Fatal(err)
	}
	return topo
}

// buildBinaries builds cmd/router and cmd/api into a temp dir (with -race when this test runs
// with it, so the children are checked too).
func buildBinaries(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	args := []string{"build", "-o", bin + "/"}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/router", "./cmd/api", "./cmd/sim", "./cmd/rebalancer")
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestClusterUpDemoDown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole three-region topology; run without -short")
	}
	topo := testTopology(t)
	bin := buildBinaries(t)
	// Not t.TempDir(): its parent is 0700 and Postgres runs as an unprivileged user.
	base, err := os.MkdirTemp("", "meridian-sim-test-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "state")
	var progress bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// Latency mode, so the cross-region proxies (and partitions through them) are exercised too.
	c, err := Up(ctx, Options{Topology: topo, Dir: dir, BinDir: bin, Progress: &progress, Latency: true})
	if err != nil {
		t.Fatalf("Up: %v\nprogress:\n%s", err, progress.String())
	}
	downed := false
	t.Cleanup(func() {
		if !downed {
			c.Down()
		}
	})
	t.Logf("start-up:\n%s", progress.String())
	if !strings.Contains(progress.String(), "every node ready") {
		t.Fatalf("progress does not report readiness:\n%s", progress.String())
	}

	f, err := ReadClusterFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Regions) != 3 || f.AdminToken == "" || f.DevJWTSecret == "" {
		t.Fatalf("cluster file incomplete: %+v", f)
	}
	for r, e := range f.Regions {
		if e.Router == "" || len(e.API) == 0 || e.Postgres.Primary == "" || len(e.Postgres.Standbys) != 2 || e.Redis == "" || e.NATS == "" {
			t.Fatalf("region %s endpoints incomplete: %+v", r, e)
		}
	}

	var out bytes.Buffer
	rows, err := Demo(ctx, f, &out)
	if err != nil {
		t.Fatalf("Demo: %v\n%s", err, out.String())
	}
	t.Logf("demo:\n%s", out.String())
	if want := 3 * 3 * 2; len(rows) != want {
		t.Fatalf("demo made %d requests, want %d", len(rows), want)
	}
	for _, r := range rows {
		want := r.ViaRouter // reads are answered by the router's own region
		if r.Kind == "write" {
			want = r.HomeRegion // writes land in the tenant's home region
		}
		if r.ServedRegion != want {
			t.Errorf("%s of %s (home %s) via %s: X-Served-Region %q, want %q", r.Kind, r.Tenant, r.HomeRegion, r.ViaRouter, r.ServedRegion, want)
		}
	}

	checkPartition(t, ctx, c, f)
	checkKillRestart(t, ctx, c, f)

	// Taken after the restarts: Down must stop the restarted processes too.
	pids := c.pids()
	c.Down()
	downed = true
	for name, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("%s (pid %d) still running after Down", name, pid)
		}
	}
	for _, r := range topo.Regions() {
		p, _ := topo.Ports(r)
		for _, port := range append(append([]int{p.Postgres, p.Redis, p.NATSClient}, p.RouterHTTP...), p.APIHTTP...) {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Errorf("port %d of %s still taken after Down: %v", port, r, err)
				continue
			}
			ln.Close()
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Errorf("data directory left behind: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cluster.json")); !os.IsNotExist(err) {
		t.Errorf("cluster.json left behind: %v", err)
	}
}

// checkPartition cuts eu-west off: a write of a tenant homed there, sent through us-east's
// router, fails cleanly (5xx problem, no hang) while us-east's own tenant is still served; after
// Heal the write succeeds again.
func checkPartition(t *testing.T, ctx context.Context, c *Cluster, f *ClusterFile) {
	t.Helper()
	euTok, err := MintToken(f.DevJWTSecret, TokenSpec{Tenant: "demo-eu-west"})
	if err != nil {
		t.Fatal(err)
	}
	usTok, err := MintToken(f.DevJWTSecret, TokenSpec{Tenant: "demo-us-east"})
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 15 * time.Second}
	router := f.Regions["us-east"].Router
	put := func(tok string) int {
		st, _, _, err := call(ctx, client, http.MethodPut, router+"/v1/collections/notes/records/partition", tok, `{"data":{"x":1}}`, "")
		if err != nil {
			t.Fatalf("PUT through us-east: %v", err)
		}
		return st
	}
	if err := c.Partition("nowhere"); err == nil {
		t.Error("Partition of an unknown region succeeded")
	}
	if err := c.Partition("eu-west"); err != nil {
		t.Fatal(err)
	}
	if st := put(euTok); st < 500 {
		t.Errorf("write homed in a partitioned region: status %d, want 5xx", st)
	}
	if st := put(usTok); st != http.StatusOK && st != http.StatusCreated {
		t.Errorf("write homed in us-east during eu-west's partition: status %d", st)
	}
	if got := c.Status().Partitioned; len(got) != 1 || got[0] != "eu-west" {
		t.Errorf("Status().Partitioned = %v", got)
	}
	if err := c.Heal("eu-west"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for st := put(euTok); st != http.StatusOK && st != http.StatusCreated; st = put(euTok) {
		if time.Now().After(deadline) {
			t.Fatalf("write after Heal: status %d", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkKillRestart SIGKILLs one process of every kind (an API node, a router, a standby, a
// primary, Redis), sees each reported not running, restarts it, and then sees a write homed
// in the killed primary's region and a read through the killed router succeed again.
func checkKillRestart(t *testing.T, ctx context.Context, c *Cluster, f *ClusterFile) {
	t.Helper()
	if err := c.Kill("nowhere-1"); !errors.Is(err, ErrNoProcess) {
		t.Errorf("Kill of an unknown process: %v, want ErrNoProcess", err)
	}
	names := []string{"us-west-api-1", "us-west-router-1", "standby-us-west-of-eu-west", "postgres-eu-west", "redis-us-west"}
	running := func(name string) bool {
		for _, p := range c.Processes() {
			if p.Name == name {
				return p.Running
			}
		}
		t.Fatalf("Processes lists no %s", name)
		return false
	}
	for _, name := range names {
		if err := c.Kill(name); err != nil {
			t.Fatalf("Kill %s: %v", name, err)
		}
		if running(name) {
			t.Errorf("%s still running after Kill", name)
		}
	}
	// Databases first, so the nodes find them.
	for _, name := range []string{names[3], names[2], names[4], names[1], names[0]} {
		if err := c.Restart(ctx, name); err != nil {
			t.Fatalf("Restart %s: %v", name, err)
		}
		if !running(name) {
			t.Errorf("%s not running after Restart", name)
		}
	}
	if err := c.Restart(ctx, names[0]); !errors.Is(err, ErrRunning) {
		t.Errorf("Restart of a running process: %v, want ErrRunning", err)
	}
	tok, err := MintToken(f.DevJWTSecret, TokenSpec{Tenant: "demo-eu-west"})
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 15 * time.Second}
	url := f.Regions["us-west"].Router + "/v1/collections/notes/records/restarted"
	deadline := time.Now().Add(60 * time.Second)
	for _, method := range []string{http.MethodPut, http.MethodGet} {
		body := ""
		if method == http.MethodPut {
			body = `{"data":{"x":2}}`
		}
		for {
			st, _, _, err := call(ctx, client, method, url, tok, body, "")
			if err == nil && st < 300 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s through us-west after the restarts: %d %v", method, st, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}
