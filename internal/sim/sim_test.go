package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
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

	checkEdge(t, ctx, f)
	checkFront(t, ctx, f)
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

// checkFront holds the routers' HTTP ports to cmd/router's default front, the event loop: a
// record GET on a new connection to each region's router is served on its loop natively (its
// meridian_router_loop_requests_total{path="native"} moves).
func checkFront(t *testing.T, ctx context.Context, f *ClusterFile) {
	t.Helper()
	tok, err := MintToken(f.DevJWTSecret, TokenSpec{Tenant: "demo-us-east"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range slices.Sorted(maps.Keys(f.Regions)) {
		router := f.Regions[r].Router
		before, err := testenv.LoopCounts(ctx, http.DefaultClient, router)
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{}}
		st, _, b, err := call(ctx, client, http.MethodGet, router+"/v1/collections/notes/records/edge", tok, "", "")
		client.CloseIdleConnections()
		if err != nil || st != http.StatusOK {
			t.Fatalf("%s: GET through the router: %d %s %v", r, st, b, err)
		}
		after, err := testenv.LoopCounts(ctx, http.DefaultClient, router)
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		if after["native"] <= before["native"] {
			t.Errorf("%s's router did not serve a GET natively on its HTTP port (loop counts %v, then %v): is the port net/http's?", r, before, after)
		}
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

// checkEdge holds the routers' edge cache (docs/internal-contracts.md, "The edge in the real
// topology") to what the API nodes answer: a record of a tenant homed in us-east, read through
// eu-west's router, is answered by the router itself (its edge hit counter moves) with the same
// body bytes, ETag, Content-Type, Vary and X-Read-Source as eu-west's API node answers it from
// its cache; reads with Cache-Control: no-cache, Prefer: consistency=strong or the write's
// Consistency-Token are forwarded (the bypass counter moves, the hit counter does not); after
// an update through us-east, eu-west's router answers the new version within 10 s, then never
// the old one again, and its edge answers the new one.
func checkEdge(t *testing.T, ctx context.Context, f *ClusterFile) {
	t.Helper()
	const home, reader, tenant = "us-east", "eu-west", "demo-us-east"
	tok, err := MintToken(f.DevJWTSecret, TokenSpec{Tenant: tenant})
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 15 * time.Second}
	const path = "/v1/collections/notes/records/edge"
	router := f.Regions[reader].Router
	node := f.Regions[reader].API[0]

	// The data has characters encoding/json's HTML escaping rewrites and spaces compaction
	// drops, so the edge must spell the body as the node does, not merely hold the same data.
	put := func(v int) (etag, token string) {
		t.Helper()
		body := fmt.Sprintf(`{"data": {"v": %d, "note": "<edge> & \u2028 ü", "nested": {"a": [1, 2.50, true]}}}`, v)
		st, h, b, err := call(ctx, client, http.MethodPut, f.Regions[home].Router+path, tok, body, "")
		if err != nil {
			t.Fatalf("edge: PUT via %s: %v", home, err)
		}
		if st != http.StatusOK && st != http.StatusCreated || h.Get("ETag") == "" || h.Get("Consistency-Token") == "" {
			t.Fatalf("edge: PUT via %s: status %d, ETag %q, Consistency-Token %q: %s", home, st, h.Get("ETag"), h.Get("Consistency-Token"), b)
		}
		return h.Get("ETag"), h.Get("Consistency-Token")
	}
	// read GETs the record through eu-west's router with extra headers, scraping the router's
	// edge counter before and after: delta is what this read added to each result.
	read := func(hdr map[string]string) (a edgeAnswer, delta map[string]float64) {
		t.Helper()
		before, err := testenv.EdgeCounts(ctx, client, router)
		if err != nil {
			t.Fatalf("edge: %v", err)
		}
		if a, err = getWith(ctx, client, router+path, tok, hdr); err != nil {
			t.Fatalf("edge: GET via %s: %v", reader, err)
		}
		after, err := testenv.EdgeCounts(ctx, client, router)
		if err != nil {
			t.Fatalf("edge: %v", err)
		}
		delta = map[string]float64{}
		for k, v := range after {
			if d := v - before[k]; d != 0 {
				delta[k] = d
			}
		}
		return a, delta
	}
	edgeHit := func(a edgeAnswer, delta map[string]float64) bool {
		return a.status == http.StatusOK && a.header.Get("X-Read-Source") == "cache" && delta["hit"] == 1
	}

	etag1, token1 := put(1)
	// The first reads miss at the edge and go to the node, which reads eu-west's standby
	// (once it has replayed the write) and fills the region's cache; the edge serves the entry
	// once the node publishes the shard's freshness. 45 s: as demoCache, for a busy machine.
	var edge edgeAnswer
	var seq []string
	for deadline := time.Now().Add(45 * time.Second); ; {
		a, delta := read(nil)
		seq = append(seq, fmt.Sprintf("%d %s %s %v", a.status, a.header.Get("ETag"), a.header.Get("X-Read-Source"), delta))
		if edgeHit(a, delta) && a.header.Get("ETag") == etag1 {
			edge = a
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("edge: %s's router never answered the record from its edge cache (status ETag source counter-deltas): %s", reader, collapse(seq))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("edge: reads via %s until its router answered: %s", reader, collapse(seq))

	// The same record from eu-west's API node directly, answered from the same cache entry.
	var direct edgeAnswer
	seq = nil
	for deadline := time.Now().Add(15 * time.Second); ; {
		if direct, err = getWith(ctx, client, node+path, tok, nil); err != nil {
			t.Fatalf("edge: GET from %s's API node: %v", reader, err)
		}
		seq = append(seq, fmt.Sprintf("%d %s %s", direct.status, direct.header.Get("ETag"), direct.header.Get("X-Read-Source")))
		if direct.status == http.StatusOK && direct.header.Get("X-Read-Source") == "cache" {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("edge: %s's API node never answered the record from its cache: %s", reader, collapse(seq))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !bytes.Equal(edge.body, direct.body) {
		t.Errorf("edge: body differs from the API node's\n edge: %s\n node: %s", edge.body, direct.body)
	}
	for _, k := range []string{"ETag", "Content-Type", "X-Read-Source", "Vary"} {
		if e, n := edge.header.Values(k), direct.header.Values(k); !slices.Equal(e, n) || len(e) != 1 {
			t.Errorf("edge: %s: edge answered %q, the API node %q", k, e, n)
		}
	}
	for name, a := range map[string]edgeAnswer{"edge": edge, "API node": direct} {
		if got := a.header.Values("X-Served-Region"); len(got) != 1 || got[0] != reader {
			t.Errorf("edge: the %s's X-Served-Region is %q, want %q", name, got, reader)
		}
	}
	var rec struct {
		Data struct {
			V    int    `json:"v"`
			Note string `json:"note"`
		} `json:"data"`
	}
	if err := json.Unmarshal(edge.body, &rec); err != nil || rec.Data.V != 1 || rec.Data.Note != "<edge> & \u2028 ü" {
		t.Errorf("edge: body %s does not hold what was written (%v)", edge.body, err)
	}
	if edge.header.Get("X-Request-Id") == "" {
		t.Errorf("edge: answer without the router's X-Request-Id: %v", edge.header)
	}

	// Reads the node would not serve from the cache as a plain read never reach the edge.
	for _, hdr := range []map[string]string{
		{"Cache-Control": "no-cache"},
		{"Prefer": "consistency=strong"},
		{"Consistency-Token": token1},
	} {
		a, delta := read(hdr)
		if a.status != http.StatusOK || a.header.Get("ETag") != etag1 {
			t.Errorf("edge: GET via %s with %v: status %d, ETag %q, want 200 %s", reader, hdr, a.status, a.header.Get("ETag"), etag1)
		}
		if delta["hit"] != 0 || delta["bypass"] != 1 {
			t.Errorf("edge: GET via %s with %v moved the edge counter by %v, want bypass +1 and no hit", reader, hdr, delta)
		}
		// A token read may still come from the node's cache (an entry covering the token);
		// the other two may not.
		if _, tokenRead := hdr["Consistency-Token"]; !tokenRead && a.header.Get("X-Read-Source") == "cache" {
			t.Errorf("edge: GET via %s with %v answered from a cache", reader, hdr)
		}
		t.Logf("edge: GET via %s with %v: X-Read-Source %s, counter %v", reader, hdr, a.header.Get("X-Read-Source"), delta)
	}

	// An update through the home region: the reader's router answers the new version within
	// 10 s, and from then on never the old one, and its edge answers the new one.
	etag2, _ := put(2)
	acked := time.Now()
	var polls int
	for {
		a, err := getWith(ctx, client, router+path, tok, nil)
		if err != nil {
			t.Fatalf("edge: GET via %s after the update: %v", reader, err)
		}
		polls++
		if a.status == http.StatusOK && a.header.Get("ETag") == etag2 {
			t.Logf("edge: %s answered the new version %s %s after the update (%d reads; X-Read-Source: %s)",
				reader, etag2, time.Since(acked).Round(time.Millisecond), polls, a.header.Get("X-Read-Source"))
			break
		}
		if time.Since(acked) > 10*time.Second {
			t.Errorf("edge: %s still answers %d %s 10 s after the update to %s", reader, a.status, a.header.Get("ETag"), etag2)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	var after, edgeNew int
	for deadline := time.Now().Add(30 * time.Second); after < 50 || edgeNew == 0; after++ {
		a, delta := read(nil)
		if a.status != http.StatusOK || a.header.Get("ETag") != etag2 {
			t.Errorf("edge: read %d via %s after the new version: %d %s (source %s, counter %v), want %s",
				after+1, reader, a.status, a.header.Get("ETag"), a.header.Get("X-Read-Source"), delta, etag2)
			return
		}
		if edgeHit(a, delta) {
			edgeNew++
		}
		if time.Now().After(deadline) {
			t.Errorf("edge: %d reads via %s answered the new version, none of them from the edge", after+1, reader)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("edge: %d further reads via %s all answered %s, %d of them from the edge", after, reader, etag2, edgeNew)
}

// collapse joins seq with ", ", writing a run of equal elements once with its count.
func collapse(seq []string) string {
	var out []string
	for i := 0; i < len(seq); {
		j := i + 1
		for j < len(seq) && seq[j] == seq[i] {
			j++
		}
		if j-i > 1 {
			out = append(out, fmt.Sprintf("%s ×%d", seq[i], j-i))
		} else {
			out = append(out, seq[i])
		}
		i = j
	}
	return strings.Join(out, ", ")
}

// edgeAnswer is one answer of checkEdge's reads.
type edgeAnswer struct {
	status int
	header http.Header
	body   []byte
}

// getWith GETs url with a bearer token, Accept-Encoding: identity (so bodies compare byte for
// byte, never transparently decompressed) and hdr.
func getWith(ctx context.Context, c *http.Client, url, token string, hdr map[string]string) (edgeAnswer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return edgeAnswer{}, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept-Encoding", "identity")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return edgeAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return edgeAnswer{resp.StatusCode, resp.Header, b}, err
}
