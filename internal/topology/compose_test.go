package topology

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

var composeFile = filepath.Join("..", "..", "docker-compose.multiregion.yml")

func TestComposeFileIsGenerated(t *testing.T) {
	topo := loadRepo(t)
	want, err := topo.ComposeYAML()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is out of date with %s: run `go run ./cmd/gencompose`", composeFile, DefaultPath)
	}
	again, _ := topo.ComposeYAML()
	if !bytes.Equal(want, again) {
		t.Error("ComposeYAML is not deterministic")
	}
}

// loadCompose loads the checked-in compose file with the compose-spec loader, without
// interpolating the secrets it requires from the environment.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.multiregion.yml")},
		cli.WithWorkingDirectory(root),
		cli.WithName("meridian"),
		cli.WithInterpolation(false),
	)
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("compose loader: %v", err)
	}
	return p
}

func TestComposeMatchesTopology(t *testing.T) {
	topo := loadRepo(t)
	p := loadCompose(t)

	wantNets := append(topo.Regions(), BackboneNetwork)
	for _, n := range wantNets {
		if _, ok := p.Networks[n]; !ok {
			t.Errorf("network %q missing", n)
		}
	}
	if len(p.Networks) != len(wantNets) {
		t.Errorf("networks = %v, want %v", slices.Sorted(mapsKeys(p.Networks)), wantNets)
	}

	want := []string{"rebalancer"}
	for _, r := range topo.Regions() {
		want = append(want, ComposePostgres(r), ComposeRedis(r), ComposeNATS(r))
		for _, src := range topo.Regions() {
			if src != r {
				want = append(want, ComposeStandby(r, src))
			}
		}
		for _, n := range topo.Routers(r) {
			want = append(want, ComposeServiceName(n))
		}
		for _, n := range topo.APINodes(r) {
			want = append(want, ComposeServiceName(n))
		}
	}
	slices.Sort(want)
	if got := slices.Sorted(mapsKeys(p.Services)); !slices.Equal(got, want) {
		t.Fatalf("services = %v\nwant %v", got, want)
	}

	for _, r := range topo.Regions() {
		ports, _ := topo.Ports(r)
		pg := p.Services[ComposePostgres(r)]
		if pg.Image != ImagePostgres || !slices.Contains(pg.Command, strconv.Itoa(ports.Postgres)) {
			t.Errorf("%s: image %s command %v, want %s on port %d", pg.Name, pg.Image, pg.Command, ImagePostgres, ports.Postgres)
		}
		checkNetworks(t, pg, r, BackboneNetwork)
		for src, port := range ports.Standby {
			sb := p.Services[ComposeStandby(r, src)]
			sp, _ := topo.Ports(src)
			script := strings.Join(sb.Entrypoint, " ")
			if sb.Image != ImagePostgres || !strings.Contains(script, fmt.Sprintf("-h %s -p %d", ComposePostgres(src), sp.Postgres)) ||
				!strings.Contains(script, fmt.Sprintf("postgres -p %d", port)) {
				t.Errorf("%s: image %s entrypoint %q: want a standby of %s:%d on port %d", sb.Name, sb.Image, script, ComposePostgres(src), sp.Postgres, port)
			}
			checkNetworks(t, sb, r, BackboneNetwork)
		}
		rd := p.Services[ComposeRedis(r)]
		if rd.Image != ImageRedis || !slices.Contains(rd.Command, strconv.Itoa(ports.Redis)) {
			t.Errorf("%s: image %s command %v", rd.Name, rd.Image, rd.Command)
		}
		checkNetworks(t, rd, r)
		nt := p.Services[ComposeNATS(r)]
		if nt.Image != ImageNATS || !slices.Contains(nt.Command, strconv.Itoa(ports.NATSClient)) {
			t.Errorf("%s: image %s command %v", nt.Name, nt.Image, nt.Command)
		}
		checkNetworks(t, nt, r, BackboneNetwork)
		cfg := p.Configs["nats-"+r].Content
		for _, o := range topo.Regions() {
			op, _ := topo.Ports(o)
			if !strings.Contains(cfg, fmt.Sprintf("nats://%s:%d", ComposeNATS(o), op.NATSGateway)) {
				t.Errorf("nats config of %s lacks a gateway to %s:\n%s", r, o, cfg)
			}
		}

		for _, n := range topo.Routers(r) {
			s := p.Services[ComposeServiceName(n)]
			checkNode(t, s, n, "router", ports.Redis)
			env := envOf(s)
			for _, o := range topo.Regions() {
				for _, peer := range topo.Routers(o) {
					want := fmt.Sprintf("%s=%s:%d", peer.ID, ComposeServiceName(peer), peer.Raft)
					if !slices.Contains(strings.Split(env["MERIDIAN_RAFT_PEERS"], ","), want) {
						t.Errorf("%s: MERIDIAN_RAFT_PEERS %q lacks %q", s.Name, env["MERIDIAN_RAFT_PEERS"], want)
					}
				}
				for _, a := range topo.APINodes(o) {
					want := fmt.Sprintf("%s=http://%s:%d", o, ComposeServiceName(a), a.HTTP)
					if !slices.Contains(strings.Split(env["MERIDIAN_API_NODES"], ","), want) {
						t.Errorf("%s: MERIDIAN_API_NODES lacks %q", s.Name, want)
					}
				}
			}
			if env["MERIDIAN_SLOT_COUNT"] != strconv.Itoa(topo.SlotCount()) {
				t.Errorf("%s: MERIDIAN_SLOT_COUNT = %q", s.Name, env["MERIDIAN_SLOT_COUNT"])
			}
			if got := len(strings.Split(env["MERIDIAN_SHARDS"], ",")); got != len(topo.Shards()) {
				t.Errorf("%s: MERIDIAN_SHARDS has %d shards, want %d", s.Name, got, len(topo.Shards()))
			}
		}
		for _, n := range topo.APINodes(r) {
			s := p.Services[ComposeServiceName(n)]
			checkNode(t, s, n, "api", ports.Redis)
			env := envOf(s)
			for _, sh := range topo.Shards() {
				hp, _ := topo.Ports(sh.HomeRegion)
				want := fmt.Sprintf("%s=postgres://postgres@%s:%d/%s?sslmode=disable", sh.ID, ComposePostgres(sh.HomeRegion), hp.Postgres, sh.Database)
				if !slices.Contains(strings.Split(env["MERIDIAN_SHARD_PRIMARIES"], ","), want) {
					t.Errorf("%s: MERIDIAN_SHARD_PRIMARIES lacks %q", s.Name, want)
				}
				if sh.HomeRegion == r {
					continue
				}
				want = fmt.Sprintf("%s=postgres://postgres@%s:%d/%s?sslmode=disable", sh.ID, ComposeStandby(r, sh.HomeRegion), ports.Standby[sh.HomeRegion], sh.Database)
				if !slices.Contains(strings.Split(env["MERIDIAN_SHARD_STANDBYS"], ","), want) {
					t.Errorf("%s: MERIDIAN_SHARD_STANDBYS lacks %q", s.Name, want)
				}
			}
		}
	}
}

func checkNode(t *testing.T, s types.ServiceConfig, n Node, command string, redisPort int) {
	t.Helper()
	if s.Image != ImageMeridian || s.Build == nil || s.Build.Dockerfile != "Dockerfile" {
		t.Errorf("%s: image %q build %+v, want %s built from Dockerfile", s.Name, s.Image, s.Build, ImageMeridian)
	}
	if !slices.Equal(s.Command, types.ShellCommand{command}) {
		t.Errorf("%s: command %v, want [%s]", s.Name, s.Command, command)
	}
	checkNetworks(t, s, n.Region, BackboneNetwork)
	if len(s.Ports) != 1 || s.Ports[0].Target != uint32(n.HTTP) || s.Ports[0].Published != strconv.Itoa(n.HTTP) {
		t.Errorf("%s: ports %+v, want %d:%d", s.Name, s.Ports, n.HTTP, n.HTTP)
	}
	env := envOf(s)
	for k, want := range map[string]string{
		"MERIDIAN_REGION":     n.Region,
		"MERIDIAN_NODE_ID":    n.ID,
		"MERIDIAN_HTTP_ADDR":  fmt.Sprintf("0.0.0.0:%d", n.HTTP),
		"MERIDIAN_REDIS_ADDR": fmt.Sprintf("%s:%d", ComposeRedis(n.Region), redisPort),
	} {
		if env[k] != want {
			t.Errorf("%s: %s = %q, want %q", s.Name, k, env[k], want)
		}
	}
	if !strings.HasPrefix(env["MERIDIAN_JWT_SECRET"], "${MERIDIAN_JWT_SECRET:?") {
		t.Errorf("%s: MERIDIAN_JWT_SECRET = %q, want it required from the environment", s.Name, env["MERIDIAN_JWT_SECRET"])
	}
}

func checkNetworks(t *testing.T, s types.ServiceConfig, want ...string) {
	t.Helper()
	got := slices.Sorted(mapsKeys(s.Networks))
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s: networks %v, want %v", s.Name, got, want)
	}
}

func envOf(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			out[k] = *v
		}
	}
	return out
}

func mapsKeys[M ~map[string]V, V any](m M) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestDockerfileBuildsServices checks the structure the compose file relies on: a Go build
// stage producing the three binaries the services' commands name.
func TestDockerfileBuildsServices(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	for _, want := range []string{"FROM golang:1.26 AS build", "./cmd/router", "./cmd/api", "./cmd/rebalancer", "COPY --from=build"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
