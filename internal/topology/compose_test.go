package topology

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

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
// interpolating the secrets it requires from the environment, with every profile's services.
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
		// The rebalancer tool service is in profile "tools", which `up` does not start.
		cli.WithProfiles([]string{"tools"}),
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

	want := []string{"rebalancer", InitService}
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
			checkNode(t, s, n, "router")
			env := envOf(s)
			svc := ComposeServiceName(n)
			ip := topo.RouterBackboneIP(n)
			first := topo.Routers(topo.Regions()[0])[0]
			want := map[string]string{
				"MERIDIAN_REGION":        n.Region,
				"MERIDIAN_ROUTER_ID":     n.ID,
				"MERIDIAN_ROUTER_LISTEN": fmt.Sprintf("0.0.0.0:%d", n.HTTP),
				"MERIDIAN_ROUTER_URL":    fmt.Sprintf("http://%s:%d", svc, n.HTTP),
				"MERIDIAN_RAFT_ADDR":     fmt.Sprintf("%s:%d", ip, n.Raft),
				"MERIDIAN_GOSSIP_ADDR":   fmt.Sprintf("%s:%d", ip, n.Gossip),
				"MERIDIAN_REDIS_ADDR":    fmt.Sprintf("%s:%d", ComposeRedis(r), ports.Redis),
				"MERIDIAN_TENANT_RATE":   strconv.Itoa(topo.RateLimits().TenantRPS),
				"MERIDIAN_TENANT_BURST":  strconv.Itoa(topo.RateLimits().TenantBurst),
				"MERIDIAN_IP_RATE":       strconv.Itoa(topo.RateLimits().IPRPS),
			}
			if n.ID == first.ID {
				want["MERIDIAN_BOOTSTRAP"] = "true"
			} else {
				want["MERIDIAN_JOIN"] = fmt.Sprintf("http://%s:%d", ComposeServiceName(first), first.HTTP)
				want["MERIDIAN_GOSSIP_JOIN"] = fmt.Sprintf("%s:%d", topo.RouterBackboneIP(first), first.Gossip)
				if _, ok := env["MERIDIAN_BOOTSTRAP"]; ok {
					t.Errorf("%s: sets MERIDIAN_BOOTSTRAP; only %s may bootstrap", s.Name, ComposeServiceName(first))
				}
			}
			checkEnv(t, s, want)
			if bb := s.Networks[BackboneNetwork]; bb == nil || bb.Ipv4Address != ip {
				t.Errorf("%s: backbone network %+v, want fixed address %s (its Raft address)", s.Name, bb, ip)
			}
			// Every API node of every region, in cmd/router's "region=url|url;region=url" form.
			nodes := map[string][]string{}
			for _, part := range strings.Split(env["MERIDIAN_API_NODES"], ";") {
				region, urls, ok := strings.Cut(part, "=")
				if !ok {
					t.Fatalf("%s: MERIDIAN_API_NODES part %q is not region=url|url", s.Name, part)
				}
				nodes[region] = strings.Split(urls, "|")
			}
			for _, o := range topo.Regions() {
				for _, a := range topo.APINodes(o) {
					if u := fmt.Sprintf("http://%s:%d", ComposeServiceName(a), a.HTTP); !slices.Contains(nodes[o], u) {
						t.Errorf("%s: MERIDIAN_API_NODES %q lacks %s in %s", s.Name, env["MERIDIAN_API_NODES"], u, o)
					}
				}
			}
		}
		var local []string
		for _, o := range topo.Routers(r) {
			local = append(local, fmt.Sprintf("http://%s:%d", ComposeServiceName(o), o.HTTP))
		}
		// API nodes gossip on their fixed backbone address, on the region's api_gossip port,
		// and join the region's routers' gossip addresses.
		var localGossip []string
		for _, o := range topo.Routers(r) {
			localGossip = append(localGossip, fmt.Sprintf("%s:%d", topo.RouterBackboneIP(o), o.Gossip))
		}
		for _, n := range topo.APINodes(r) {
			s := p.Services[ComposeServiceName(n)]
			checkNode(t, s, n, "api")
			checkNetworks(t, s, n.Region, BackboneNetwork)
			ip := topo.APIBackboneIP(n)
			if n.Gossip != ports.APIGossip[n.Index] || n.Gossip != regionBase(t, topo, r)+topo.Offsets().APIGossip+n.Index {
				t.Errorf("%s: gossip port %d, want port_base+api_gossip+%d = %d", n.ID, n.Gossip, n.Index, ports.APIGossip[n.Index])
			}
			url := fmt.Sprintf("http://%s:%d", ComposeServiceName(n), n.HTTP)
			checkEnv(t, s, map[string]string{
				"MERIDIAN_REGION":        n.Region,
				"MERIDIAN_API_LISTEN":    fmt.Sprintf("0.0.0.0:%d", n.HTTP),
				"MERIDIAN_API_URL":       url,
				"MERIDIAN_GOSSIP_ADDR":   fmt.Sprintf("%s:%d", ip, n.Gossip),
				"MERIDIAN_GOSSIP_JOIN":   strings.Join(localGossip, ","),
				"MERIDIAN_MAP_ADDRS":     strings.Join(local, ","),
				"MERIDIAN_DB_USER":       "meridian_app",
				"MERIDIAN_MAX_STALENESS": topo.MaxStaleness().String(),
				// The region's own NATS (client port) and Redis, on the region network.
				"MERIDIAN_NATS_URL":       fmt.Sprintf("nats://%s:%d", ComposeNATS(r), ports.NATSClient),
				"MERIDIAN_REDIS_ADDR":     fmt.Sprintf("%s:%d", ComposeRedis(r), ports.Redis),
				"MERIDIAN_WORKER_DB_USER": "meridian_worker",
			})
			for _, dep := range []string{ComposeNATS(r), ComposeRedis(r)} {
				if d, ok := s.DependsOn[dep]; !ok || d.Condition != types.ServiceConditionStarted {
					t.Errorf("%s: depends_on %s = %+v, want service_started", s.Name, dep, d)
				}
			}
			if bb := s.Networks[BackboneNetwork]; bb == nil || bb.Ipv4Address != ip {
				t.Errorf("%s: backbone network %+v, want fixed address %s (its gossip address)", s.Name, bb, ip)
			}
			// The advertised URL is the one the routers' static list has, so the gossip and
			// static sources name the same node (the router merges them by address).
			for _, o := range topo.Regions() {
				for _, rn := range topo.Routers(o) {
					if nodes := envOf(p.Services[ComposeServiceName(rn)])["MERIDIAN_API_NODES"]; !strings.Contains(nodes, r+"="+url) &&
						!strings.Contains(nodes, "|"+url) {
						t.Errorf("%s advertises %s, which %s's MERIDIAN_API_NODES %q lacks", s.Name, url, rn.ID, nodes)
					}
				}
			}
			if !strings.HasPrefix(envOf(s)["MERIDIAN_DB_PASSWORD"], "${MERIDIAN_APP_DB_PASSWORD:?") {
				t.Errorf("%s: MERIDIAN_DB_PASSWORD = %q, want it required from the environment", s.Name, envOf(s)["MERIDIAN_DB_PASSWORD"])
			}
			if !strings.HasPrefix(envOf(s)["MERIDIAN_WORKER_DB_PASSWORD"], "${MERIDIAN_WORKER_DB_PASSWORD:?") {
				t.Errorf("%s: MERIDIAN_WORKER_DB_PASSWORD = %q, want it required from the environment", s.Name, envOf(s)["MERIDIAN_WORKER_DB_PASSWORD"])
			}
		}
	}

	rb := p.Services["rebalancer"]
	if !slices.Equal(rb.Command, types.ShellCommand{"rebalancer", "status"}) || !slices.Equal(rb.Profiles, []string{"tools"}) {
		t.Errorf("rebalancer: command %v profiles %v, want [rebalancer status] in profile tools", rb.Command, rb.Profiles)
	}
	first := topo.Regions()[0]
	var firstURLs []string
	for _, o := range topo.Routers(first) {
		firstURLs = append(firstURLs, fmt.Sprintf("http://%s:%d", ComposeServiceName(o), o.HTTP))
	}
	checkEnv(t, rb, map[string]string{"MERIDIAN_MAP_ADDRS": strings.Join(firstURLs, ",")})

	in := p.Services[InitService]
	if !slices.Equal(in.Command, types.ShellCommand{"gencompose", "init", "-topology", "/etc/meridian/topology.yaml"}) {
		t.Errorf("init: command %v", in.Command)
	}
	checkNetworks(t, in, BackboneNetwork)
	// The secrets init needs, each required from the user's environment, the passwords the same
	// variables as the API nodes'.
	for _, k := range []string{"MERIDIAN_CLUSTER_TOKEN", "MERIDIAN_PG_PASSWORD", "MERIDIAN_APP_DB_PASSWORD", "MERIDIAN_WORKER_DB_PASSWORD"} {
		if v := envOf(in)[k]; !strings.HasPrefix(v, "${"+k+":?") {
			t.Errorf("init: %s = %q, want it required from the environment", k, v)
		}
	}
	for _, r := range topo.Regions() {
		if d, ok := in.DependsOn[ComposePostgres(r)]; !ok || d.Condition != types.ServiceConditionHealthy {
			t.Errorf("init: depends_on %s = %+v, want service_healthy", ComposePostgres(r), d)
		}
		for _, n := range topo.Routers(r) {
			if _, ok := in.DependsOn[ComposeServiceName(n)]; !ok {
				t.Errorf("init: does not wait for %s", ComposeServiceName(n))
			}
		}
		for _, n := range topo.APINodes(r) {
			if d := p.Services[ComposeServiceName(n)].DependsOn[InitService]; d.Condition != types.ServiceConditionCompletedSuccessfully {
				t.Errorf("%s: depends_on init = %+v, want service_completed_successfully", ComposeServiceName(n), d)
			}
		}
	}
}

// TestBackboneIPs checks the routers' and API nodes' fixed backbone addresses: distinct, inside
// the backbone subnet the compose file declares, and outside the range Docker assigns the other
// services from.
func TestBackboneIPs(t *testing.T) {
	_, subnet, err := net.ParseCIDR(BackboneSubnet)
	if err != nil {
		t.Fatal(err)
	}
	_, dynamic, err := net.ParseCIDR(BackboneDynamicRange)
	if err != nil {
		t.Fatal(err)
	}
	p := loadCompose(t)
	bb := p.Networks[BackboneNetwork]
	if len(bb.Ipam.Config) != 1 || bb.Ipam.Config[0].Subnet != BackboneSubnet || bb.Ipam.Config[0].IPRange != BackboneDynamicRange {
		t.Errorf("backbone ipam %+v, want subnet %s ip_range %s", bb.Ipam, BackboneSubnet, BackboneDynamicRange)
	}
	// The repository's topology, and the largest one validation allows.
	big := loadRepo(t).File()
	big.RoutersPerRegion, big.APINodesPerRegion, big.Regions, big.RTT = MaxInstances, MaxInstances, nil, nil
	for i := range MaxInstances {
		big.Regions = append(big.Regions, RegionSpec{ID: fmt.Sprintf("r%d", i), PortBase: 10000 + 2000*i})
		for j := range i {
			big.RTT = append(big.RTT, RTTSpec{Between: []string{fmt.Sprintf("r%d", j), fmt.Sprintf("r%d", i)}, RTT: Duration(time.Millisecond)})
		}
	}
	bigTopo, err := New(big)
	if err != nil {
		t.Fatalf("largest topology: %v", err)
	}
	for name, topo := range map[string]*Topology{"repo": loadRepo(t), "largest": bigTopo} {
		t.Run(name, func(t *testing.T) {
			seen := map[string]string{}
			check := func(n Node, ip string) {
				t.Helper()
				if a := net.ParseIP(ip); a == nil || !subnet.Contains(a) || dynamic.Contains(a) {
					t.Errorf("%s: backbone address %q not in %s outside %s", n.ID, ip, BackboneSubnet, BackboneDynamicRange)
				}
				if o, dup := seen[ip]; dup {
					t.Errorf("%s and %s share backbone address %s", o, n.ID, ip)
				}
				seen[ip] = n.ID
			}
			for _, r := range topo.Regions() {
				for _, n := range topo.Routers(r) {
					check(n, topo.RouterBackboneIP(n))
				}
				for _, n := range topo.APINodes(r) {
					check(n, topo.APIBackboneIP(n))
				}
			}
		})
	}
}

// regionBase is region r's port_base in the topology file.
func regionBase(t *testing.T, topo *Topology, r string) int {
	t.Helper()
	reg, ok := topo.Region(r)
	if !ok {
		t.Fatalf("no region %s", r)
	}
	return reg.PortBase
}

func checkNode(t *testing.T, s types.ServiceConfig, n Node, command string) {
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
	for _, k := range []string{"MERIDIAN_JWT_SECRET", "MERIDIAN_CLUSTER_TOKEN"} {
		if !strings.HasPrefix(env[k], "${"+k+":?") {
			t.Errorf("%s: %s = %q, want it required from the environment", s.Name, k, env[k])
		}
	}
}

func checkEnv(t *testing.T, s types.ServiceConfig, want map[string]string) {
	t.Helper()
	env := envOf(s)
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s: %s = %q, want %q", s.Name, k, env[k], v)
		}
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
// stage producing the four binaries the services' commands name, and the topology file init reads.
func TestDockerfileBuildsServices(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	for _, want := range []string{"FROM golang:1.26 AS build", "./cmd/router", "./cmd/api", "./cmd/rebalancer", "./cmd/gencompose",
		"COPY --from=build", "/out/gencompose", "/etc/meridian/topology.yaml"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
