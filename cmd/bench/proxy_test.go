package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/h1"
	"github.com/meridian-dev/meridian/internal/loadgen"
	"github.com/meridian-dev/meridian/internal/testenv"
)

func TestConnList(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string
		ok   bool
	}{
		{"16,32", "16,32", true},
		{" 8 , 64", "8,64", true},
		{"16", "16", true},
		{"0", "", false},
		{"16,", "", false},
		{"x", "", false},
	} {
		var l connList
		err := l.Set(c.in)
		if (err == nil) != c.ok {
			t.Fatalf("Set(%q): err %v, want ok %v", c.in, err, c.ok)
		}
		if c.ok && l.String() != c.want {
			t.Fatalf("Set(%q) = %s, want %s", c.in, l.String(), c.want)
		}
	}
}

func TestNginxConf(t *testing.T) {
	conf := nginxConf("/tmp/x", "127.0.0.1:20990", "127.0.0.1:20030", 32, false)
	for _, want := range []string{
		"worker_processes 1;",
		"pid /tmp/x/nginx.pid;",
		"server 127.0.0.1:20030;",
		"keepalive 32;",
		"listen 127.0.0.1:20990;",
		"proxy_http_version 1.1;",
		`proxy_set_header Connection "";`, // else nginx closes every upstream connection
		"access_log off;",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("conf lacks %q:\n%s", want, conf)
		}
	}
	if c := nginxConf("/tmp/x", "a:1", "b:2", 1, true); !strings.Contains(c, "access_log /tmp/x/access.log combined buffer=64k flush=100ms;") {
		t.Errorf("access log not configured:\n%s", c)
	}
}

func TestFindNginxNamesThePackage(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if _, err := findNginx("/opt/nginx"); err != nil {
		t.Fatalf("an explicit binary is taken as given: %v", err)
	}
	if _, err := findNginx(""); err != nil && !strings.Contains(err.Error(), `"nginx"`) {
		t.Fatalf("error %q does not name the Debian package", err)
	}
}

// statusRT answers every request with the status in its URL's path ("/200", "/503") or fails.
type statusRT struct{}

func (statusRT) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == "/fail" {
		return nil, errors.New("connection refused")
	}
	code := 200
	if r.URL.Path == "/503" {
		code = 503
	}
	return &http.Response{StatusCode: code, Body: io.NopCloser(strings.NewReader("")), Request: r}, nil
}

func TestRoundStatusVoidsRoundsWithAFailure(t *testing.T) {
	rs := newRoundStatus()
	send := func(path string) {
		req, _ := http.NewRequest("GET", "http://x"+path, nil)
		resp, err := statusRT{}.RoundTrip(req)
		if err != nil {
			rs.answer(0, nil, err)
			return
		}
		resp.Body.Close()
		rs.answer(resp.StatusCode, resp.Header.Get, nil)
	}
	rs.next("") // warm-up: not counted
	send("/503")
	rs.next("direct")
	send("/200")
	send("/200")
	rs.next("router")
	send("/200")
	send("/503")
	rs.next("direct")
	send("/fail")
	rs.next("router")
	rs.next("") // a round without answers is not counted
	if rs.rounds["direct"] != 2 || rs.void["direct"] != 1 {
		t.Errorf("direct: %d rounds, %d void; want 2, 1", rs.rounds["direct"], rs.void["direct"])
	}
	if rs.rounds["router"] != 1 || rs.void["router"] != 1 {
		t.Errorf("router: %d rounds, %d void; want 1, 1", rs.rounds["router"], rs.void["router"])
	}
	if got := rs.statuses["router"]["503"]; got != 1 {
		t.Errorf("router 503s = %d, want 1", got)
	}
	if got := rs.statuses["direct"][loadgen.TransportError]; got != 1 {
		t.Errorf("direct transport errors = %d, want 1", got)
	}
	if _, ok := rs.statuses[""]; ok {
		t.Error("warm-up answers were counted")
	}
}

func TestProxyCPUPerRequest(t *testing.T) {
	roles := []procRole{{name: "API node", pids: []int{1}}, {name: "nginx", pids: []int{2}}, {name: "router"}}
	run := proxyRun{
		conns: 16,
		rep: &loadgen.Report{Targets: []loadgen.TargetResult{
			{Name: "direct", OK: 1000, Throughput: 500},
			{Name: nginxName, OK: 500, Throughput: 250},
		}},
		usage: map[string]*phaseUsage{
			"direct":  {wall: 2 * time.Second, ticks: []int64{10, 2, 0}},
			nginxName: {wall: 2 * time.Second, ticks: []int64{12, 3, 0}},
		},
	}
	// 10 ticks = 100 ms over 1000 answers = 100 µs each.
	if v, ok := run.cpuPerRequest("direct", 0, roles); !ok || v != 100 {
		t.Errorf("direct API node = %v %v, want 100", v, ok)
	}
	if v, ok := run.cpuPerRequest(nginxName, 1, roles); !ok || v != 60 {
		t.Errorf("nginx = %v %v, want 60", v, ok)
	}
	// nginx's background: 2 ticks in direct's 2 s, so 20 ms of its 30 ms in its own 2 s rounds;
	// the 10 ms left over 500 answers = 20 µs each.
	if v, ok := run.netCPUPerRequest(nginxName, 1, roles); !ok || v != 20 {
		t.Errorf("nginx net = %v %v, want 20", v, ok)
	}
	if _, ok := run.cpuPerRequest(nginxName, 2, roles); ok {
		t.Error("a role without a process reports CPU")
	}
	if _, ok := run.cpuPerRequest("router", 0, roles); ok {
		t.Error("a target that was not measured reports CPU")
	}
	var md strings.Builder
	o := &options{args: []string{"-scenario", "proxy"}}
	o.cfg.Round, o.cfg.Duration, o.cfg.Warmup = 2*time.Second, 10*time.Second, time.Second
	p := &plan{targets: []benchTarget{{name: "direct", base: "http://a"}, {name: nginxName, base: "http://b"}, {name: "router", base: "http://c"}}}
	writeProxySection(&md, o, p, roles, []proxyRun{run}, "", machine{nproc: 2, cpu: "test"})
	for _, want := range []string{"go run ./cmd/bench -scenario proxy", "| 16 | nginx | 250 | 0.500 |", " 60 |", "2 CPUs (nproc), test"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("section lacks %q:\n%s", want, md.String())
		}
	}
	// The run's line names the load generator's engine that ran.
	for client, want := range map[string]string{
		clientLoop:       "load generator: bench `-client loop` (loadgen's event-loop engine",
		clientGoroutines: "load generator: bench `-client goroutines` (loadgen's goroutine engine: a goroutine per worker over upstream.HopTransport",
	} {
		o.client = client
		var md strings.Builder
		writeProxySection(&md, o, p, roles, []proxyRun{run}, "", machine{nproc: 2, cpu: "test"})
		if !strings.Contains(md.String(), want) {
			t.Errorf("-client %s: section lacks %q:\n%s", client, want, md.String())
		}
	}
}

// TestParseFlagsClient: -client picks the cache and proxy scenarios' engine, loop by default;
// open loop (-rate) without -client picks goroutines, and is refused with -client loop.
func TestParseFlagsClient(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // "" = a usage error
	}{
		{[]string{"-scenario", "cache"}, clientLoop},
		{[]string{"-scenario", "proxy"}, clientLoop},
		{[]string{"-scenario", "cache", "-client", "goroutines"}, clientGoroutines},
		{[]string{"-scenario", "proxy", "-client", "loop"}, clientLoop},
		{[]string{"-scenario", "cache", "-rate", "100"}, clientGoroutines},
		{[]string{"-scenario", "cache", "-rate", "100", "-client", "loop"}, ""},
		{[]string{"-scenario", "cache", "-client", "threads"}, ""},
		{[]string{"-scenario", "get", "-client", "loop"}, ""},
	} {
		o, err := parseFlags(tc.args, &strings.Builder{})
		switch {
		case tc.want == "" && !errors.Is(err, errUsage):
			t.Errorf("%v: err %v, want a usage error", tc.args, err)
		case tc.want != "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.want != "" && o.client != tc.want:
			t.Errorf("%v: client %q, want %q", tc.args, o.client, tc.want)
		}
	}
}

// TestProxyRouterLoopCPU: router-loop's CPU is the router process's in router-loop's rounds;
// the router's background leaves out both router's and router-loop's rounds (in either it
// serves the load); a loop listener served by another process is charged to that process; the
// table and the run's line compare the loop with the router and nginx.
func TestProxyRouterLoopCPU(t *testing.T) {
	roles := []procRole{{name: "API node", pids: []int{1}}, {name: "nginx", pids: []int{2}}, {name: "router", pids: []int{3}}}
	run := proxyRun{
		conns: 16,
		rep: &loadgen.Report{Targets: []loadgen.TargetResult{
			{Name: "direct", OK: 1000, Throughput: 500},
			{Name: nginxName, OK: 500, Throughput: 250},
			{Name: "router", OK: 400, Throughput: 200},
			{Name: routerLoopName, OK: 500, Throughput: 250},
		}},
		usage: map[string]*phaseUsage{
			"direct":       {wall: 2 * time.Second, ticks: []int64{10, 2, 1}},
			nginxName:      {wall: 2 * time.Second, ticks: []int64{12, 3, 1}},
			"router":       {wall: 2 * time.Second, ticks: []int64{14, 1, 20}},
			routerLoopName: {wall: 2 * time.Second, ticks: []int64{14, 1, 11}},
		},
		rounds: map[string]int{"direct": 1, nginxName: 1, "router": 1, routerLoopName: 1},
		status: map[string]map[string]int64{routerLoopName: {"200": 500}},
	}
	if i := proxyRole(roles, routerLoopName); i != 2 {
		t.Fatalf("router-loop's role = %d, want the router's (2)", i)
	}
	if i := proxyRole(roles, "direct"); i != -1 {
		t.Errorf("direct's role = %d, want none", i)
	}
	// 11 ticks = 110 ms over 500 answers.
	if v, ok := run.cpuPerRequest(routerLoopName, 2, roles); !ok || v != 220 {
		t.Errorf("router-loop = %v %v, want 220", v, ok)
	}
	// The router's background is its 2 ticks in direct's and nginx's 4 s: 10 ms in 2 s.
	if v, ok := run.netCPUPerRequest("router", 2, roles); !ok || v != 475 {
		t.Errorf("router net = %v %v, want (200-10)/400 = 475", v, ok)
	}
	if v, ok := run.netCPUPerRequest(routerLoopName, 2, roles); !ok || v != 200 {
		t.Errorf("router-loop net = %v %v, want (110-10)/500 = 200", v, ok)
	}
	// nginx's background still counts the router's rounds and the loop's.
	if v, ok := run.netCPUPerRequest(nginxName, 1, roles); !ok || math.Abs(v-100.0/3) > 1e-9 {
		t.Errorf("nginx net = %v %v, want (30 - 40 ms/6 s × 2 s)/500 ≈ 33.3", v, ok)
	}

	var md strings.Builder
	o := &options{args: []string{"-scenario", "proxy"}}
	o.cfg.Round, o.cfg.Duration, o.cfg.Warmup = 2*time.Second, 10*time.Second, time.Second
	p := &plan{targets: []benchTarget{{name: "direct", base: "http://a"}, {name: nginxName, base: "http://b"},
		{name: "router", base: "http://c"}, {name: routerLoopName, base: "http://d"}}}
	writeProxySection(&md, o, p, roles, []proxyRun{run}, "", machine{nproc: 2, cpu: "test"})
	for _, want := range []string{
		"router = http://c (its default front, the event loop), router-loop = http://d (the router's -loop-listen, an event-loop front",
		"| 16 | router-loop | 250 | 0.500 |",
		"| 200×500 | 0/1 | 280 | 20 | 220 | 200 |",
		"router-loop CPU per request 0.44× the router's (220 vs 500 µs; net of background 0.42×, 200 vs 475 µs), 3.67× nginx's, throughput 1.250× the router's, 1.000× nginx's",
	} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("section lacks %q:\n%s", want, md.String())
		}
	}
	js, _ := json.Marshal(proxyJSON([]proxyRun{run}, roles))
	if !strings.Contains(string(js), `"target":"router-loop","cpu_us_per_request":{"API node":280,"nginx":20,"router":220},"proxy_net_cpu_us_per_request":200`) {
		t.Errorf("JSON lacks router-loop's figures: %s", js)
	}

	// Served by another process: router-loop has a role of its own, and the router's
	// background counts the loop's rounds again.
	own := append(slices.Clone(roles), procRole{name: routerLoopName, pids: []int{4}})
	run.usage[routerLoopName].ticks = append(run.usage[routerLoopName].ticks, 30)
	for _, u := range run.usage {
		if len(u.ticks) < 4 {
			u.ticks = append(u.ticks, 0)
		}
	}
	if i := proxyRole(own, routerLoopName); i != 3 {
		t.Fatalf("router-loop's own role = %d, want 3", i)
	}
	if v, ok := run.cpuPerRequest(routerLoopName, 3, own); !ok || v != 600 {
		t.Errorf("router-loop on its own process = %v %v, want 600", v, ok)
	}
	if v, ok := run.netCPUPerRequest("router", 2, own); !ok || math.Abs(v-(200-130.0/3)/0.4) > 1e-9 {
		t.Errorf("router net with the loop elsewhere = %v %v, want (200 - 130 ms/6 s × 2 s)/400 ≈ 392", v, ok)
	}
}

// TestProxySectionWithoutLoop: without a loop listener the section says router-loop was not
// measured, and why.
func TestProxySectionWithoutLoop(t *testing.T) {
	o := &options{args: []string{"-scenario", "proxy"}, cluster: ".meridian/cluster.json"}
	p := &plan{region: "us-east", targets: []benchTarget{{name: "direct", base: "http://a"}, {name: "router", base: "http://c"}}}
	loop, note := loopTarget(o, p, p.targets[1])
	if loop != nil || !strings.Contains(note, "router_loop_listen: true") || !strings.Contains(note, ".meridian/cluster.json has no router_loop for region us-east") {
		t.Fatalf("loopTarget without a loop listener = %v, %q", loop, note)
	}
	var md strings.Builder
	run := proxyRun{conns: 16, rep: &loadgen.Report{Targets: []loadgen.TargetResult{{Name: "direct", OK: 1, Throughput: 1}}}}
	writeProxySection(&md, o, p, nil, []proxyRun{run}, note, machine{nproc: 2, cpu: "test"})
	if !strings.Contains(md.String(), "router = http://c (its default front, the event loop) ("+note+")") {
		t.Errorf("section does not say why router-loop is missing:\n%s", md.String())
	}
	if strings.Contains(md.String(), "| router-loop |") {
		t.Errorf("section has a router-loop row:\n%s", md.String())
	}
}

// TestLoopTarget: the loop target reads what the router target reads at the cluster file's
// router_loop, unless -router-loop names another; with -target flags only -router-loop gives one.
func TestLoopTarget(t *testing.T) {
	router := benchTarget{name: "router", base: "http://127.0.0.1:20000", tenant: tenantSpec{id: "bench-us-east"}, token: "tok"}
	p := &plan{region: "us-east", routerLoop: "http://127.0.0.1:20090"}
	loop, note := loopTarget(&options{}, p, router)
	if loop == nil || note != "" || *loop != (benchTarget{name: routerLoopName, base: "http://127.0.0.1:20090", tenant: router.tenant, token: "tok"}) {
		t.Errorf("from the cluster file: %+v %q", loop, note)
	}
	o := &options{}
	o.routerLoop = "http://127.0.0.1:9/"
	if loop, _ := loopTarget(o, p, router); loop == nil || loop.base != "http://127.0.0.1:9" {
		t.Errorf("-router-loop: %+v", loop)
	}
	o = &options{targets: targetFlags{{"direct", "http://a:1"}, {"router", "http://b:2"}}}
	if loop, note := loopTarget(o, &plan{}, router); loop != nil || !strings.Contains(note, "no -router-loop given") {
		t.Errorf("-target without -router-loop: %+v %q", loop, note)
	}
}

// TestPlanReadsRouterLoop: plan takes the measured region's router_loop from the cluster file
// ("" when absent, as the launcher writes it with router_loop_listen off).
func TestPlanReadsRouterLoop(t *testing.T) {
	for _, c := range []struct{ extra, want string }{
		{`"router_loop":"http://127.0.0.1:20090/",`, "http://127.0.0.1:20090"},
		{``, ""},
	} {
		path := filepath.Join(t.TempDir(), "cluster.json")
		b := fmt.Sprintf(`{"regions":{"us-east":{"router":"http://127.0.0.1:20000",%s"api":["http://127.0.0.1:20030"]}},
			"dev_jwt_secret":%q,"admin_token":%q}`, c.extra, testSecret, testAdmin)
		if err := os.WriteFile(path, []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
		o, err := parseFlags([]string{"-scenario", "proxy", "-cluster", path}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		p, err := o.plan()
		if err != nil {
			t.Fatal(err)
		}
		if p.routerLoop != c.want || len(p.targets) != 2 {
			t.Errorf("cluster file with %q: routerLoop %q, %d targets; want %q, 2", c.extra, p.routerLoop, len(p.targets), c.want)
		}
	}
}

func TestServesLoop(t *testing.T) {
	const addr = "127.0.0.1:20090"
	for _, c := range []struct {
		args, env []string
		want      bool
	}{
		{[]string{"router", "-listen", "127.0.0.1:20000", "-loop-listen", addr}, nil, true},
		{[]string{"router", "--loop-listen=" + addr}, nil, true},
		{[]string{"router", "-loop-listen", "127.0.0.1:21090"}, nil, false},
		{[]string{"router", "-listen", addr}, nil, false},
		{[]string{"router"}, []string{"HOME=/", loopListenEnv + "=" + addr}, true},
		{[]string{"router", "-loop-listen", "127.0.0.1:1"}, []string{loopListenEnv + "=" + addr}, false}, // the flag wins
		{[]string{"router", "-loop-listen"}, nil, false},
	} {
		if got := servesLoop(c.args, c.env, addr); got != c.want {
			t.Errorf("servesLoop(%q, %q) = %v, want %v", c.args, c.env, got, c.want)
		}
	}
}

// TestLoopRole: the loop listener of the measured router (by its environment here) is charged
// to the router; one another process serves (by its command line) gets a role of its own; one
// no process can be found for gets a role without a process and a note.
func TestLoopRole(t *testing.T) {
	// A shell blocked in its builtin read: it forks no child (a forked child keeps the shell's
	// command line until it execs, and two processes with -loop-listen are none to findListener).
	// Started means exec'd: until then /proc shows the test binary's command line.
	start := func(env []string, args ...string) int {
		cmd := exec.Command("sh", args...)
		cmd.Env = env
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
		want := strings.Join(append([]string{"sh"}, args...), "\x00") + "\x00"
		testenv.WaitFor(t, 5*time.Second, func() error {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid))
			if err != nil || string(b) != want {
				return fmt.Errorf("pid %d's command line %q, want %q (%v)", cmd.Process.Pid, b, want, err)
			}
			return nil
		})
		return cmd.Process.Pid
	}
	const byEnv, byFlag, none = "127.0.0.1:29091", "127.0.0.1:29092", "127.0.0.1:29093"
	router := procRole{name: "router", pids: []int{start([]string{loopListenEnv + "=" + byEnv}, "-c", "read _")}}
	// sh's own arguments: the shell runs its script with $0 and $1 $2 set, and keeps them in
	// its command line.
	other := start(nil, "-c", "read _", "sh", "-loop-listen", byFlag)
	if role, note := loopRole(router, byEnv); role != nil || note != "" {
		t.Errorf("the router's own loop: %+v %q, want it charged to the router", role, note)
	}
	if role, note := loopRole(router, byFlag); role == nil || !slices.Equal(role.pids, []int{other}) || !strings.Contains(note, "not the measured router's") {
		t.Errorf("another process's loop: %+v %q, want a role with pid %d", role, note, other)
	}
	if role, note := loopRole(procRole{name: "router"}, byFlag); role == nil || !slices.Equal(role.pids, []int{other}) || !strings.Contains(note, "the router's process was not found") {
		t.Errorf("a loop with the router unknown: %+v %q", role, note)
	}
	if role, note := loopRole(router, none); role == nil || role.name != routerLoopName || len(role.pids) != 0 || !strings.Contains(note, "not reported") {
		t.Errorf("nobody's loop: %+v %q", role, note)
	}
}

func TestProxyFlags(t *testing.T) {
	if _, err := parseFlags([]string{"-scenario", "get", "-conns", "8"}, io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("-conns outside proxy: %v, want a usage error", err)
	}
	if _, err := parseFlags([]string{"-scenario", "proxy", "-c", "8"}, io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("-c with proxy: %v, want a usage error", err)
	}
	if _, err := parseFlags([]string{"-scenario", "get", "-baseline-fasthttp"}, io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("-baseline-fasthttp outside proxy: %v, want a usage error", err)
	}
	if _, err := parseFlags([]string{"-scenario", "get", "-baseline-gnet"}, io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("-baseline-gnet outside proxy: %v, want a usage error", err)
	}
	if _, err := parseFlags([]string{"-scenario", "get", "-router-loop", "http://127.0.0.1:20090"}, io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("-router-loop outside proxy: %v, want a usage error", err)
	}
	if _, err := parseFlags([]string{"-scenario", "proxy", "-router-loop", "127.0.0.1:20090"}, io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("-router-loop without a scheme: %v, want a usage error", err)
	}
	o, err := parseFlags([]string{"-scenario", "proxy"}, io.Discard)
	if err != nil || o.conns.String() != "16,32" || o.fastProxy || o.gnetProxy {
		t.Fatalf("defaults: %v, conns %s", err, o.conns.String())
	}
}

// TestFastProxyForwards: the bare fasthttp proxy of -baseline-fasthttp forwards a request as a
// proxy must (method, path and query, body, status and answer; hop-by-hop headers dropped, the
// peer appended to X-Forwarded-For), keeps its upstream connection alive, answers 502 when
// the upstream is gone, and exits when bench closes its stdin.
func TestFastProxyForwards(t *testing.T) {
	up, conns := seenUpstream()
	base, pid, stop, err := startFastProxy(context.Background(), up.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if pid <= 0 {
		t.Errorf("pid %d", pid)
	}
	for i := 0; i < 3; i++ {
		req, _ := http.NewRequest("POST", base+"/v1/x?a=1", strings.NewReader("body"))
		req.Header.Set("X-Forwarded-For", "10.0.0.1")
		req.Header.Set("Te", "trailers")
		req.Header.Set("Keep-Alive", "timeout=5")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := "POST /v1/x?a=1 body xff=10.0.0.1, 127.0.0.1 te= keep="
		if resp.StatusCode != http.StatusCreated || string(b) != "answer" || resp.Header.Get("X-Seen") != want {
			t.Fatalf("got %d %q seen %q, want 201 \"answer\" seen %q", resp.StatusCode, b, resp.Header.Get("X-Seen"), want)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("upstream saw %d connections for 3 requests, want 1 (keep-alive)", n)
	}
	checkGoneThenStopped(t, http.DefaultClient, base, up, stop)
}

// TestGnetProxyForwards: the bare event-loop proxy of -baseline-gnet forwards a GET and a POST
// as the fasthttp baseline does (method, path and query, body, status, answer with a
// Content-Length or chunked; hop-by-hop headers dropped, the peer appended to X-Forwarded-For),
// keeps its upstream connection alive, answers 502 when the upstream is gone, and exits when
// bench closes its stdin.
func TestGnetProxyForwards(t *testing.T) {
	up, conns := seenUpstream()
	base, pid, stop, err := startGnetProxy(context.Background(), up.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if pid <= 0 {
		t.Errorf("pid %d", pid)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	cases := []struct {
		method, query, body string
		status              int
		chunked             bool
	}{
		{"POST", "a=1", "body", http.StatusCreated, false},
		{"GET", "a=2", "", http.StatusCreated, false},
		{"GET", "chunked=1", "", http.StatusOK, true},
		{"POST", "a=3", "more body", http.StatusCreated, false},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, base+"/v1/x?"+c.query, strings.NewReader(c.body))
		req.Header.Set("X-Forwarded-For", "10.0.0.1")
		req.Header.Set("Te", "trailers")
		req.Header.Set("Keep-Alive", "timeout=5")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := c.method + " /v1/x?" + c.query + " " + c.body + " xff=10.0.0.1, 127.0.0.1 te= keep="
		if resp.StatusCode != c.status || string(b) != "answer" || resp.Header.Get("X-Seen") != want {
			t.Fatalf("%s ?%s: got %d %q seen %q, want %d \"answer\" seen %q", c.method, c.query,
				resp.StatusCode, b, resp.Header.Get("X-Seen"), c.status, want)
		}
		if chunked := len(resp.TransferEncoding) > 0 && resp.TransferEncoding[0] == "chunked"; chunked != c.chunked {
			t.Errorf("%s ?%s: chunked %v, want %v", c.method, c.query, chunked, c.chunked)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("upstream saw %d connections for %d requests on one client connection, want 1 (keep-alive)", n, len(cases))
	}
	checkGoneThenStopped(t, client, base, up, stop)
}

// seenUpstream starts the upstream of the bare-proxy tests: it answers 201 "answer" with what it
// received in X-Seen (method, path and query, body, X-Forwarded-For, Te, Keep-Alive), or 200
// "answer" chunked for a query with chunked=1, and counts the connections it accepted.
func seenUpstream() (*httptest.Server, *atomic.Int64) {
	conns := new(atomic.Int64)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Seen", r.Method+" "+r.URL.RequestURI()+" "+string(b)+" xff="+r.Header.Get("X-Forwarded-For")+
			" te="+r.Header.Get("Te")+" keep="+r.Header.Get("Keep-Alive"))
		if r.URL.Query().Get("chunked") != "" {
			w.WriteHeader(http.StatusOK)
			for _, s := range []string{"ans", "wer"} {
				_, _ = io.WriteString(w, s)
				w.(http.Flusher).Flush() // no Content-Length: the answer goes chunked
			}
			return
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "answer")
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	up.Start()
	return up, conns
}

// checkGoneThenStopped: a bare proxy baseline answers 502 through client once its upstream up
// is gone, and nothing once bench stops it.
func checkGoneThenStopped(t *testing.T, client *http.Client, base string, up *httptest.Server, stop func()) {
	t.Helper()
	up.Close()
	resp, err := client.Get(base + "/v1/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("upstream gone: status %d, want 502", resp.StatusCode)
	}
	stop()
	if _, err := http.Get(base + "/v1/x"); err == nil {
		t.Errorf("the proxy still answers after stop")
	}
}

// FuzzGnetParse: the gnet proxy's head and chunked-body parsers never panic and never return
// offsets outside what they were given, whatever a client or node sends.
func FuzzGnetParse(f *testing.F) {
	f.Add([]byte("GET /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"), []byte("3\r\nabc\r\n0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"), []byte("0;x=1\r\nT: v\r\n\r\n"))
	f.Add([]byte("X\r\n:\r\n"), []byte("zz\r\n"))
	f.Fuzz(func(t *testing.T, hd, body []byte) {
		if h, ok := parseHead(hd, nil); ok {
			for _, fl := range h.fields {
				for _, r := range [][2]int{fl.line, fl.name, fl.value} {
					if r[0] < 0 || r[0] > r[1] || r[1] > len(hd) {
						t.Fatalf("field offsets %v outside %d bytes", r, len(hd))
					}
				}
			}
		}
		if n, done, ok := h1.ChunkedLength(body); ok && done && (n < 0 || n > len(body)) {
			t.Fatalf("chunked length %d of %d bytes", n, len(body))
		}
	})
}

// TestRunProxyRouterLoop runs the proxy scenario against fake nodes and a real nginx: with a
// router_loop in the cluster file, router-loop is measured in the same rounds as the others (its
// listener sees the GETs, its answers are counted); without one, bench says so on stderr and in
// the section and measures direct, nginx and the router.
func TestRunProxyRouterLoop(t *testing.T) {
	if _, err := findNginx(""); err != nil {
		t.Fatalf("%v (install Debian's nginx package: make deps)", err)
	}
	router, api := newFakeCluster(t)
	v, err := auth.NewVerifier(auth.Config{Secret: []byte(testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	loop := &fakeNode{name: "loop", store: router.store}
	loop.server = httptest.NewServer(loop.handler(t, v))
	t.Cleanup(loop.server.Close)

	for _, c := range []struct {
		name, loopURL string
	}{{"with a loop listener", loop.server.URL}, {"without", ""}} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "cluster.json")
			b := fmt.Sprintf(`{"regions":{"us-east":{"router":%q,"router_loop":%q,"api":[%q]}},"dev_jwt_secret":%q,"admin_token":%q}`,
				router.server.URL, c.loopURL, api.server.URL, testSecret, testAdmin)
			if err := os.WriteFile(path, []byte(b), 0o600); err != nil {
				t.Fatal(err)
			}
			before := loop.gets.Load()
			var stdout bytes.Buffer
			var stderr lockedWriter
			args := []string{"bench", "-scenario", "proxy", "-cluster", path, "-conns", "2", "-d", "300ms", "-round", "100ms",
				"-warmup", "0", "-nginx-listen", freeAddr(t)}
			if err := run(t.Context(), args, &stdout, &stderr); err != nil {
				t.Fatalf("run: %v\n%s", err, stderr.String())
			}
			md := stdout.String()
			for _, row := range []string{"| 2 | direct |", "| 2 | nginx |", "| 2 | router |"} {
				if !strings.Contains(md, row) {
					t.Errorf("section lacks %q:\n%s", row, md)
				}
			}
			if c.loopURL == "" {
				if strings.Contains(md, "| router-loop |") || loop.gets.Load() != before {
					t.Errorf("router-loop measured without a loop listener:\n%s", md)
				}
				for _, out := range []string{stderr.String(), md} {
					if !strings.Contains(out, "router-loop not measured: "+path+" has no router_loop for region us-east") {
						t.Errorf("no word of the missing loop listener in:\n%s", out)
					}
				}
				return
			}
			row := regexp.MustCompile(`\| 2 \| router-loop \| [0-9]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| 200×([0-9]+) \| 0/([0-9]+) \|`).FindStringSubmatch(md)
			if row == nil || row[1] == "0" || row[2] == "0" {
				t.Fatalf("no router-loop row with 200s and unvoided rounds:\n%s\n%s", md, stderr.String())
			}
			if n := loop.gets.Load() - before; n == 0 {
				t.Errorf("the loop listener saw %d GETs", n)
			}
			if !strings.Contains(md, "router-loop = "+loop.server.URL) {
				t.Errorf("section does not name the loop listener:\n%s", md)
			}
		})
	}
}

// lockedWriter is a stderr for run that nginx's output may share. A bare bytes.Buffer may not:
// exec copies the child's output into it with ReadFrom, which holds the buffer's state from
// before the child started and puts it back when the child exits, dropping what bench wrote
// meanwhile.
type lockedWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *lockedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// freeAddr is a loopback address nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestRouterFrontNamed: the section names the router's front as its process gives it (-front, or
// MERIDIAN_ROUTER_FRONT without the flag), else its default.
func TestRouterFrontNamed(t *testing.T) {
	for _, c := range []struct {
		args, env []string
		want      string
	}{
		{[]string{"router", "-front", "http"}, nil, "http"},
		{[]string{"router", "--front=loop"}, []string{frontEnv + "=http"}, "loop"},
		{[]string{"router", "-listen", "x"}, []string{"A=b", frontEnv + "=http"}, "http"},
		{[]string{"router", "-frontier", "x"}, nil, ""},
	} {
		if got := flagOrEnv(c.args, c.env, "front", frontEnv); got != c.want {
			t.Errorf("flagOrEnv(%q, %q) = %q, want %q", c.args, c.env, got, c.want)
		}
	}
	o := &options{args: []string{"-scenario", "proxy"}}
	o.routerFront = "http"
	p := &plan{targets: []benchTarget{{name: "direct", base: "http://a"}, {name: nginxName, base: "http://b"}, {name: "router", base: "http://c"}}}
	var md strings.Builder
	run := proxyRun{conns: 16, rep: &loadgen.Report{Targets: []loadgen.TargetResult{{Name: "direct", OK: 1, Throughput: 1}}}}
	writeProxySection(&md, o, p, nil, []proxyRun{run}, "", machine{nproc: 2, cpu: "test"})
	if !strings.Contains(md.String(), "router = http://c (-front http)") {
		t.Errorf("section does not name the router's front:\n%s", md.String())
	}
}
