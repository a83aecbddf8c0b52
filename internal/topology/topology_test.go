package topology

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// repoFile is the checked-in topology file, relative to this package.
var repoFile = filepath.Join("..", "..", DefaultPath)

func loadRepo(t *testing.T) *Topology {
	t.Helper()
	topo, err := Load(repoFile)
	if err != nil {
		t.Fatalf("Load(%s): %v", repoFile, err)
	}
	return topo
}

func TestLoadRepoFile(t *testing.T) {
	topo := loadRepo(t)
	if got, want := strings.Join(topo.Regions(), ","), "us-east,us-west,eu-west"; got != want {
		t.Errorf("Regions() = %s, want %s", got, want)
	}
	if topo.SlotCount() != 1024 {
		t.Errorf("SlotCount() = %d, want 1024", topo.SlotCount())
	}
	if topo.MaxStaleness() != 5*time.Second {
		t.Errorf("MaxStaleness() = %s, want 5s", topo.MaxStaleness())
	}
	if rl := topo.RateLimits(); rl != (RateLimits{TenantRPS: 500, TenantBurst: 1000, IPRPS: 2000, IPBurst: 2000}) {
		t.Errorf("RateLimits() = %+v", rl)
	}
	for _, c := range []struct {
		a, b string
		want time.Duration
	}{
		{"us-east", "us-west", 66 * time.Millisecond},
		{"us-west", "us-east", 66 * time.Millisecond},
		{"us-east", "eu-west", 64 * time.Millisecond},
		{"eu-west", "us-west", 146 * time.Millisecond},
		{"eu-west", "eu-west", 0},
	} {
		if got := topo.RTT(c.a, c.b); got != c.want {
			t.Errorf("RTT(%s,%s) = %s, want %s", c.a, c.b, got, c.want)
		}
	}
	var ids []string
	for _, s := range topo.Shards() {
		ids = append(ids, s.ID)
	}
	if got, want := strings.Join(ids, ","), "us-east-1,us-east-2,us-west-1,us-west-2,eu-west-1,eu-west-2"; got != want {
		t.Errorf("Shards() = %s, want %s", got, want)
	}
	if got := topo.ShardsOf("eu-west"); len(got) != 2 || got[1] != (Shard{ID: "eu-west-2", HomeRegion: "eu-west", Database: "meridian_eu_west_2"}) {
		t.Errorf("ShardsOf(eu-west) = %+v", got)
	}
	if got := topo.ShardsOf("mars"); got != nil {
		t.Errorf("ShardsOf(mars) = %+v, want nil", got)
	}
}

func TestPortPlan(t *testing.T) {
	topo := loadRepo(t)
	p, err := topo.Ports("us-west")
	if err != nil {
		t.Fatal(err)
	}
	want := RegionPorts{
		RouterHTTP: []int{21000}, RouterRaft: []int{21010}, RouterGossip: []int{21020},
		APIHTTP: []int{21030}, APIGossip: []int{21040}, Postgres: 21050,
		Standby: map[string]int{"us-east": 21060, "eu-west": 21062},
		Redis:   21070, NATSClient: 21080, NATSGateway: 21081, NATSMonitor: 21082,
	}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("Ports(us-west) = %+v\nwant %+v", p, want)
	}
	if _, err := topo.Ports("mars"); !errors.Is(err, ErrUnknownRegion) {
		t.Errorf("Ports(mars) err = %v, want ErrUnknownRegion", err)
	}
	// us-east's proxy to us-west's Postgres primary (21050): 20000 + 100*(1+1) + 50.
	if got, err := topo.ProxyPort("us-east", "us-west", 21050); err != nil || got != 20250 {
		t.Errorf("ProxyPort(us-east, us-west, 21050) = %d, %v; want 20250", got, err)
	}
	if _, err := topo.ProxyPort("us-east", "us-west", 20050); err == nil {
		t.Error("ProxyPort with a port of another region: want an error")
	}
	r := topo.Routers("eu-west")
	if len(r) != 1 || r[0] != (Node{ID: "eu-west-router-1", Region: "eu-west", HTTP: 22000, Raft: 22010, Gossip: 22020}) {
		t.Errorf("Routers(eu-west) = %+v", r)
	}
	a := topo.APINodes("us-east")
	if len(a) != 1 || a[0] != (Node{ID: "us-east-api-1", Region: "us-east", HTTP: 20030, Gossip: 20040}) {
		t.Errorf("APINodes(us-east) = %+v", a)
	}
}

func TestProxies(t *testing.T) {
	topo := loadRepo(t)
	px := topo.Proxies()
	// 6 ordered pairs × (router http + raft, api http, postgres, nats gateway).
	if len(px) != 6*5 {
		t.Fatalf("len(Proxies()) = %d, want 30", len(px))
	}
	seen := map[int]bool{}
	for _, p := range px {
		if seen[p.Listen] {
			t.Errorf("proxy listen port %d used twice", p.Listen)
		}
		seen[p.Listen] = true
		if p.RTT != topo.RTT(p.From, p.To) || p.RTT == 0 {
			t.Errorf("%s: RTT %s, want %s", p.Name, p.RTT, topo.RTT(p.From, p.To))
		}
		from, _ := topo.Region(p.From)
		if p.Listen < from.PortBase || p.Listen >= from.PortBase+1000 {
			t.Errorf("%s listens on %d, outside %s's block", p.Name, p.Listen, p.From)
		}
	}
	want := Proxy{Name: "eu-west->us-west/postgres", From: "eu-west", To: "us-west", Service: "postgres",
		Listen: 22250, Target: 21050, RTT: 146 * time.Millisecond}
	found := false
	for _, p := range px {
		if p == want {
			found = true
		}
	}
	if !found {
		t.Errorf("Proxies() lacks %+v", want)
	}
}

// TestRouterLoopListen: router_loop_listen is off by default (no loop port anywhere, the
// repository's file included); on, every router gets port_base + router_loop + k, claimed
// against the rest of the plan and never proxied.
func TestRouterLoopListen(t *testing.T) {
	for _, topo := range []*Topology{loadRepo(t), mustParse(t, base)} {
		if topo.RouterLoopListen() {
			t.Error("router_loop_listen on by default")
		}
		for _, r := range topo.Regions() {
			if p, _ := topo.Ports(r); p.RouterLoop != nil {
				t.Errorf("%s: RouterLoop ports %v with the setting off", r, p.RouterLoop)
			}
			for _, n := range topo.Routers(r) {
				if n.Loop != 0 {
					t.Errorf("%s: loop port %d with the setting off", n.ID, n.Loop)
				}
			}
		}
	}
	off := mustParse(t, base+"routers_per_region: 2\n")
	on := mustParse(t, base+"routers_per_region: 2\nrouter_loop_listen: true\n")
	if !on.RouterLoopListen() {
		t.Fatal("router_loop_listen: true not read")
	}
	p, _ := on.Ports("b")
	if want := []int{21090, 21091}; !reflect.DeepEqual(p.RouterLoop, want) {
		t.Errorf("Ports(b).RouterLoop = %v, want %v", p.RouterLoop, want)
	}
	r := on.Routers("b")
	if len(r) != 2 || r[1] != (Node{ID: "b-router-2", Region: "b", Index: 1, HTTP: 21001, Raft: 21011, Gossip: 21021, Loop: 21091}) {
		t.Errorf("Routers(b) = %+v", r)
	}
	if a := on.APINodes("a"); a[0].Loop != 0 {
		t.Errorf("API node with a loop port: %+v", a[0])
	}
	if !reflect.DeepEqual(on.Proxies(), off.Proxies()) {
		t.Error("the loop listeners changed the latency proxies")
	}
	if !on.File().RouterLoopListen || on.File().Ports.Offsets.RouterLoop != DefaultOffsets.RouterLoop {
		t.Errorf("File() lost the setting: %+v", on.File())
	}
}

func mustParse(t *testing.T, doc string) *Topology {
	t.Helper()
	topo, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return topo
}

// base is a minimal valid file that bad cases modify.
const base = `
version: 1
regions:
  - {id: a, port_base: 20000}
  - {id: b, port_base: 21000}
rtt:
  - {between: [a, b], rtt: 10ms}
`

func TestParseDefaults(t *testing.T) {
	topo, err := Parse([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if topo.SlotCount() != DefaultSlotCount || topo.MaxStaleness() != DefaultMaxStaleness || topo.Host() != DefaultHost {
		t.Errorf("defaults not applied: slots %d staleness %s host %s", topo.SlotCount(), topo.MaxStaleness(), topo.Host())
	}
	if len(topo.Shards()) != 2*DefaultShardsPerRegion || topo.Offsets() != DefaultOffsets {
		t.Errorf("defaults not applied: %d shards, offsets %+v", len(topo.Shards()), topo.Offsets())
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, doc, want string
	}{
		{"empty", ``, "empty document"},
		{"not yaml", "version: [", "did not find expected"},
		{"unknown field", base + "colour: blue\n", "field colour not found"},
		{"unknown nested field", strings.Replace(base, "port_base: 20000", "port_base: 20000, zone: x", 1), "field zone not found"},
		{"two documents", base + "---\nversion: 1\n", "more than one YAML document"},
		{"wrong version", strings.Replace(base, "version: 1", "version: 2", 1), "version: want 1"},
		{"no regions", "version: 1\n", "at least one region"},
		{"bad region id", strings.Replace(base, "id: a,", "id: A_1,", 1), `regions[0].id "A_1"`},
		{"region id leading dash", strings.Replace(base, "id: a,", "id: '-a',", 1), `regions[0].id "-a": want ^[a-z0-9]`},
		{"region id too long for its shard ids", strings.Replace(base, "id: a,", "id: "+strings.Repeat("r", 62)+",", 1),
			`shard id "` + strings.Repeat("r", 62) + `-1" is not a valid shard id`},
		{"region id too long for its database", strings.Replace(base, "id: a,", "id: "+strings.Repeat("r", 53)+",", 1),
			`database of shard ` + strings.Repeat("r", 53) + `-1 "meridian_` + strings.Repeat("r", 53) + `_1" is longer than 63 bytes`},
		{"derived names collide", "version: 1\nregions:\n  - {id: a, port_base: 20000}\n  - {id: b-of-c, port_base: 21000}\n" +
			"  - {id: a-of-b, port_base: 22000}\n  - {id: c, port_base: 23000}\n", `compose service "standby-a-of-b-of-c" is also the name of`},
		{"slot_count above the map's limit", base + "slot_count: 65537\n", "slot_count: must be in [1,65536] (the shard map's limit), got 65537"},
		{"slot_count negative", base + "slot_count: -1\n", "slot_count: must be in [1,65536]"},
		{"duplicate region", strings.Replace(base, "id: b,", "id: a,", 1), "duplicate region"},
		{"missing rtt", strings.Replace(base, "  - {between: [a, b], rtt: 10ms}\n", "", 1), "no round trip for a<->b"},
		{"rtt unknown region", base + "  - {between: [a, c], rtt: 1ms}\n", `region "c" is not in regions`},
		{"rtt self", base + "  - {between: [a, a], rtt: 1ms}\n", "to itself"},
		{"rtt duplicate", base + "  - {between: [b, a], rtt: 1ms}\n", "duplicate round trip"},
		{"rtt three regions", strings.Replace(base, "[a, b]", "[a, b, a]", 1), "exactly two regions"},
		{"rtt bad duration", strings.Replace(base, "10ms", "ten", 1), "invalid duration"},
		{"rtt negative", strings.Replace(base, "10ms", "-1ms", 1), "must be in [0,10s]"},
		{"negative shards", base + "shards_per_region: -1\n", "must not be negative"},
		{"too many routers", base + "routers_per_region: 11\n", "at most 10"},
		{"port base too low", strings.Replace(base, "20000", "80", 1), "must lie in 1024..65535"},
		{"port base too high", strings.Replace(base, "21000", "65400", 1), "must lie in 1024..65535"},
		{"overlapping regions", strings.Replace(base, "21000", "20001", 1), "is used by both"},
		{"offset collision", base + "ports: {offsets: {router_http: 0, router_raft: 5, router_gossip: 20, api_http: 30, api_gossip: 40, postgres: 50, standby: 60, redis: 70, nats_client: 80, nats_gateway: 81, nats_monitor: 82}}\nrouters_per_region: 6\n", "is used by both"},
		{"offset out of span", base + "ports: {offsets: {router_http: 100}}\n", "must be in [0,100)"},
		{"loop offset out of span", base + "ports: {offsets: {router_loop: 100}}\n", "ports.offsets.router_loop: must be in [0,100)"},
		{"loop offset omitted from own offsets", base + "router_loop_listen: true\nports: {offsets: {router_http: 0, router_raft: 10, router_gossip: 20, api_http: 30, api_gossip: 40, postgres: 50, standby: 60, redis: 70, nats_client: 80, nats_gateway: 81, nats_monitor: 82}}\n", "port 20000 is used by both"},
		{"loop listen not a bool", base + "router_loop_listen: sometimes\n", "cannot unmarshal"},
		{"bad host", base + "host: '127.0.0.1:80'\n", "bare host"},
		{"bad staleness", base + "max_staleness: soon\n", "invalid duration"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.doc))
			if err == nil {
				t.Fatalf("Parse: want error containing %q, got nil", c.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want os.ErrNotExist", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(base))
	if data, err := os.ReadFile(repoFile); err == nil {
		f.Add(data)
	}
	f.Add([]byte("version: 1\nregions: [{id: a, port_base: 60000}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		topo, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		// A topology that validates has unique ports and an RTT for every pair.
		seen := map[int]bool{}
		for _, p := range topo.Proxies() {
			if seen[p.Listen] {
				t.Fatalf("duplicate proxy port %d", p.Listen)
			}
			seen[p.Listen] = true
		}
		regions := topo.Regions()
		for i, a := range regions {
			for _, b := range regions[i+1:] {
				if _, ok := topo.rtt[pairKey(a, b)]; !ok {
					t.Fatalf("no rtt for %s<->%s", a, b)
				}
			}
		}
	})
}

// TestRouterFront: router_front is empty by default (the repository's file included), takes
// "loop" and "http", and refuses anything else.
func TestRouterFront(t *testing.T) {
	for _, topo := range []*Topology{loadRepo(t), mustParse(t, base)} {
		if f := topo.RouterFront(); f != "" {
			t.Errorf("router_front %q by default, want empty", f)
		}
	}
	for _, v := range []string{"loop", "http"} {
		if f := mustParse(t, base+"router_front: "+v+"\n").RouterFront(); f != v {
			t.Errorf("router_front: %s read as %q", v, f)
		}
	}
	for _, v := range []string{"gnet", "LOOP", "' '"} {
		if _, err := Parse([]byte(base + "router_front: " + v + "\n")); err == nil || !strings.Contains(err.Error(), "router_front") {
			t.Errorf("router_front: %s: %v, want an error naming router_front", v, err)
		}
	}
}
