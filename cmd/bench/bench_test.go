package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

const (
	testSecret = "dev-secret-for-tests"
	testAdmin  = "admin-token-for-tests"
)

// fakeNode is a stand-in for a router or API node: the records routes with real JWT checks, and
// (on a router) the admin tenant routes. Records live in a store shared by the nodes of a fake
// cluster.
type fakeNode struct {
	name   string
	store  *fakeStore
	admin  bool
	gets   atomic.Int64
	posts  atomic.Int64
	noRID  atomic.Int64 // requests without X-Request-Id
	server *httptest.Server
}

type fakeStore struct {
	mu      sync.Mutex
	tenants map[string]string // tenant -> home region
	records map[string]bool   // tenant/id
	// hideTenant makes a new tenant invisible to the data routes for this many requests.
	hideTenant atomic.Int64
	// adminBusy makes this many admin calls answer 503 (a shard map not ready yet).
	adminBusy atomic.Int64
}

func newFakeCluster(t *testing.T) (router, api *fakeNode) {
	t.Helper()
	st := &fakeStore{tenants: map[string]string{"taken": "eu-west"}, records: map[string]bool{}}
	v, err := auth.NewVerifier(auth.Config{Secret: []byte(testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	router = &fakeNode{name: "router", store: st, admin: true}
	api = &fakeNode{name: "api", store: st}
	for _, n := range []*fakeNode{router, api} {
		n.server = httptest.NewServer(n.handler(t, v))
		t.Cleanup(n.server.Close)
	}
	return router, api
}

func (n *fakeNode) handler(t *testing.T, v *auth.Verifier) http.Handler {
	mux := http.NewServeMux()
	st := n.store
	if n.admin {
		mux.HandleFunc("POST /admin/v1/tenants", func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer "+testAdmin {
				http.Error(w, "not admin", http.StatusForbidden)
				return
			}
			if st.adminBusy.Add(-1) >= 0 {
				w.Header().Set("Retry-After", "1")
				http.Error(w, "map not ready", http.StatusServiceUnavailable)
				return
			}
			var body struct{ ID, Region string }
			if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.ID == "" {
				http.Error(w, "bad body", http.StatusBadRequest)
				return
			}
			st.mu.Lock()
			defer st.mu.Unlock()
			if _, ok := st.tenants[body.ID]; ok {
				w.WriteHeader(http.StatusConflict)
				return
			}
			st.tenants[body.ID] = body.Region
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, `{"id":%q,"shard":"s1","home_region":%q,"pinned":false}`, body.ID, body.Region)
		})
		mux.HandleFunc("GET /admin/v1/tenants/{id}", func(w http.ResponseWriter, r *http.Request) {
			st.mu.Lock()
			defer st.mu.Unlock()
			fmt.Fprintf(w, `{"id":%q,"home_region":%q}`, r.PathValue("id"), st.tenants[r.PathValue("id")])
		})
	}
	claims := func(w http.ResponseWriter, r *http.Request, scope string) (*auth.Claims, bool) {
		if r.Header.Get("X-Request-Id") == "" {
			n.noRID.Add(1)
		}
		tok, err := auth.BearerToken(r.Header.Get("Authorization"))
		var cl *auth.Claims
		if err == nil {
			cl, err = v.Verify(tok)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return nil, false
		}
		if !cl.HasScope(scope) {
			http.Error(w, "scope", http.StatusForbidden)
			return nil, false
		}
		st.mu.Lock()
		_, known := st.tenants[cl.Tenant]
		st.mu.Unlock()
		if !known || st.hideTenant.Add(-1) >= 0 {
			http.Error(w, "tenant not found", http.StatusNotFound)
			return nil, false
		}
		return cl, true
	}
	mux.HandleFunc("POST /v1/collections/{c}/records", func(w http.ResponseWriter, r *http.Request) {
		n.posts.Add(1)
		cl, ok := claims(w, r, auth.ScopeWrite)
		if !ok {
			return
		}
		var body struct {
			Data map[string]any `json:"data"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Data == nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		id := uuid.Must(uuid.NewV7()).String()
		st.mu.Lock()
		st.records[cl.Tenant+"/"+id] = true
		st.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":%q,"collection":%q,"version":1,"data":{}}`, id, r.PathValue("c"))
	})
	mux.HandleFunc("GET /v1/collections/{c}/records/{id}", func(w http.ResponseWriter, r *http.Request) {
		n.gets.Add(1)
		cl, ok := claims(w, r, auth.ScopeRead)
		if !ok {
			return
		}
		st.mu.Lock()
		found := st.records[cl.Tenant+"/"+r.PathValue("id")]
		st.mu.Unlock()
		if !found {
			http.Error(w, "no record", http.StatusNotFound)
			return
		}
		fmt.Fprintf(w, `{"id":%q,"version":1,"data":{}}`, r.PathValue("id"))
	})
	return mux
}

func writeClusterFile(t *testing.T, router, api string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cluster.json")
	b := fmt.Sprintf(`{"regions":{"eu-west":{"router":"http://127.0.0.1:1","api":[]},
		"us-east":{"router":%q,"routers":[%q],"api":[%q],"redis":"x"}},
		"dev_jwt_secret":%q,"admin_token":%q,"cluster_token":"c"}`, router, router, api, testSecret, testAdmin)
	if err := os.WriteFile(path, []byte(b), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

type jsonReport struct {
	Mode     string   `json:"mode"`
	Schedule []string `json:"schedule"`
	Targets  []struct {
		Name     string  `json:"name"`
		Requests int64   `json:"requests"`
		Errors   int64   `json:"errors"`
		P50      float64 `json:"p50_ms"`
	} `json:"targets"`
	Ratios []struct {
		Target   string  `json:"target"`
		Baseline string  `json:"baseline"`
		Ratio    float64 `json:"throughput_ratio"`
	} `json:"ratios"`
}

func TestRunCompareRouterFromClusterFile(t *testing.T) {
	router, api := newFakeCluster(t)
	router.store.hideTenant.Store(3) // the new tenant takes a few requests to become visible
	router.store.adminBusy.Store(2)  // and the admin API a few tries to answer
	cluster := writeClusterFile(t, router.server.URL, api.server.URL)
	dir := t.TempDir()
	out := filepath.Join(dir, "BENCHMARKS.md")
	if err := os.WriteFile(out, []byte("# Benchmarks\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	jsonPath := filepath.Join(dir, "r.json")
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "-cluster", cluster, "-scenario", "compare-router", "-c", "2", "-d", "300ms",
		"-round", "100ms", "-warmup", "0", "-jwt-secret", testSecret, "-out", out, "-json", jsonPath}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}

	md, _ := os.ReadFile(out)
	t.Logf("%s", md)
	for _, want := range []string{
		"# Benchmarks\n\n## GET direct to an API node vs through the router (",
		"-jwt-secret REDACTED",
		"Region us-east; targets: direct = " + api.server.URL + " (tenant `bench-us-east` homed in us-east)",
		"direct = " + api.server.URL, "router = " + router.server.URL,
		"| direct | ", "| router | ", "| router / direct | ",
		"Mode side-by-side, 2 workers, 300ms per target, rounds of 100ms",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("BENCHMARKS.md lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(string(md), testSecret) || strings.Contains(stdout.String(), testSecret) {
		t.Error("the JWT secret leaked into the report")
	}
	if !strings.Contains(string(md), "CPUs (nproc)") {
		t.Errorf("no machine line:\n%s", md)
	}

	raw, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep jsonReport
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Mode != "side-by-side" || len(rep.Targets) != 2 || rep.Targets[0].Name != "direct" ||
		rep.Targets[1].Name != "router" || len(rep.Ratios) != 1 || rep.Ratios[0].Baseline != "direct" {
		t.Fatalf("report %s", raw)
	}
	if len(rep.Schedule) < 4 || rep.Schedule[0] != "direct" || rep.Schedule[1] != "router" {
		t.Errorf("schedule %v, want direct, router, … alternating", rep.Schedule)
	}
	// Every GET the nodes saw is a measured request or one of setup's probes.
	for i, n := range []*fakeNode{api, router} {
		r := rep.Targets[i]
		if r.Errors != 0 || r.Requests == 0 {
			t.Errorf("%s: %d requests, %d errors", r.Name, r.Requests, r.Errors)
		}
		if got := n.gets.Load(); got < r.Requests || got > r.Requests+5 {
			t.Errorf("%s saw %d GETs, report says %d measured", n.name, got, r.Requests)
		}
		if n.noRID.Load() != 0 {
			t.Errorf("%s: %d requests without X-Request-Id", n.name, n.noRID.Load())
		}
	}
	if p := router.posts.Load() + api.posts.Load(); p < 1 || api.posts.Load() != 0 {
		t.Errorf("posts: router %d api %d; want the setup record created through the router", router.posts.Load(), api.posts.Load())
	}
	router.store.mu.Lock()
	home := router.store.tenants["bench-us-east"]
	router.store.mu.Unlock()
	if home != "us-east" {
		t.Errorf("tenant homed in %q, want the measured region us-east", home)
	}
}

func TestRunCompareHome(t *testing.T) {
	router, api := newFakeCluster(t)
	cluster := writeClusterFile(t, router.server.URL, api.server.URL)
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "-cluster", cluster, "-scenario", "compare-home", "-c", "2", "-n", "200",
		"-round", "10ms", "-warmup", "0", "-json", "-"}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	js := stdout.String()[strings.Index(stdout.String(), "\n{")+1:]
	var rep jsonReport
	if err := json.Unmarshal([]byte(js), &rep); err != nil {
		t.Fatalf("%v in %s", err, stdout.String())
	}
	if len(rep.Targets) != 2 || rep.Targets[0].Name != "home-us-east" || rep.Targets[1].Name != "home-eu-west" ||
		rep.Targets[0].Requests != 200 || rep.Targets[1].Requests != 200 || rep.Targets[0].Errors+rep.Targets[1].Errors != 0 {
		t.Fatalf("report %s", js)
	}
	router.store.mu.Lock()
	defer router.store.mu.Unlock()
	// Both tenants created with their homes (the next region after us-east, sorted, is eu-west
	// wrapping around), one record each, all reads through the router.
	if router.store.tenants["bench-us-east"] != "us-east" || router.store.tenants["bench-eu-west"] != "eu-west" {
		t.Errorf("tenants %v", router.store.tenants)
	}
	if len(router.store.records) != 2 || api.gets.Load() != 0 || router.gets.Load() < 400 {
		t.Errorf("records %v, api GETs %d, router GETs %d", router.store.records, api.gets.Load(), router.gets.Load())
	}
}

func TestRunPostWithTargets(t *testing.T) {
	router, _ := newFakeCluster(t)
	router.store.tenants["acme"] = "us-east"
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "-target", "router=" + router.server.URL, "-scenario", "post", "-tenant", "acme",
		"-jwt-secret=" + testSecret, "-c", "3", "-n", "120", "-warmup", "0", "-json", "-"}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	js := stdout.String()[strings.Index(stdout.String(), "\n{")+1:]
	var rep jsonReport
	if err := json.Unmarshal([]byte(js), &rep); err != nil {
		t.Fatalf("%v in %s", err, stdout.String())
	}
	if len(rep.Targets) != 1 || rep.Targets[0].Requests != 120 || rep.Targets[0].Errors != 0 {
		t.Fatalf("report %s", js)
	}
	// 120 measured plus the setup probe; all stored.
	if got := router.posts.Load(); got != 121 {
		t.Errorf("router saw %d POSTs, want 121", got)
	}
	router.store.mu.Lock()
	defer router.store.mu.Unlock()
	if len(router.store.records) != 121 {
		t.Errorf("%d records stored, want 121", len(router.store.records))
	}
	if !strings.Contains(stdout.String(), "-jwt-secret=REDACTED") {
		t.Errorf("command line not redacted:\n%s", stdout.String())
	}
}

func TestRunSetupFailures(t *testing.T) {
	setupWait = 300 * time.Millisecond
	t.Cleanup(func() { setupWait = 15 * time.Second })
	router, api := newFakeCluster(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"wrong secret", []string{"-target", "router=" + router.server.URL, "-jwt-secret", "nope"}, "401"},
		{"unknown tenant", []string{"-target", "router=" + router.server.URL, "-jwt-secret", testSecret, "-tenant", "ghost"}, "gave up"},
		{"admin refused", []string{"-target", "router=" + router.server.URL, "-jwt-secret", testSecret, "-admin-token", "wrong"}, "create tenant bench: 403"},
		{"no cluster", []string{"-cluster", filepath.Join(t.TempDir(), "none.json")}, "no cluster file"},
		{"region missing", []string{"-cluster", writeClusterFile(t, router.server.URL, api.server.URL), "-region", "mars"}, `region "mars"`},
		{"no token", []string{"-target", "a=" + router.server.URL}, "no token"},
		{"compare-home without cluster", []string{"-target", "a=" + router.server.URL, "-scenario", "compare-home"}, "needs a cluster file"},
		{"compare-home same home", []string{"-cluster", writeClusterFile(t, router.server.URL, api.server.URL),
			"-scenario", "compare-home", "-home", "us-east"}, "different from -region"},
		{"unknown home", []string{"-cluster", writeClusterFile(t, router.server.URL, api.server.URL), "-home", "mars"}, `home region "mars"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"bench", "-d", "100ms", "-warmup", "0"}, tc.args...)
			err := run(t.Context(), args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one containing %q", err, tc.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("wrote a report despite failing: %s", stdout.String())
			}
		})
	}
}

func TestParseFlagsRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"unknown scenario", []string{"-scenario", "list"}},
		{"zero concurrency", []string{"-c", "0"}},
		{"no bound", []string{"-d", "0"}},
		{"bad target", []string{"-target", "nourl"}},
		{"target not http", []string{"-target", "a=ftp://x"}},
		{"duplicate target", []string{"-target", "a=http://x", "-target", "a=http://y"}},
		{"compare needs two", []string{"-scenario", "compare-router", "-target", "a=http://x"}},
		{"cluster and target", []string{"-cluster", "c.json", "-target", "a=http://x"}},
		{"stray argument", []string{"extra"}},
		{"zero round", []string{"-round", "0"}},
		{"negative rate", []string{"-rate", "-5"}},
		{"NaN rate", []string{"-rate", "NaN"}},
		{"infinite rate", []string{"-rate", "+Inf"}},
		{"rate not a number", []string{"-rate", "fast"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if _, err := parseFlags(tc.args, &stderr); !errors.Is(err, errUsage) {
				t.Errorf("err %v, want a usage error", err)
			}
		})
	}
}

func TestParseFlagsRate(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want float64
	}{
		{nil, 0}, // closed loop by default
		{[]string{"-rate", "0"}, 0},
		{[]string{"-rate", "500"}, 500},
		{[]string{"-rate=0.5"}, 0.5},
	} {
		o, err := parseFlags(tc.args, &bytes.Buffer{})
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if o.cfg.Rate != tc.want {
			t.Errorf("%q: rate %v, want %v", tc.args, o.cfg.Rate, tc.want)
		}
	}
	// The message names the flag, and run exits with status 2 (errUsage).
	err := run(t.Context(), []string{"bench", "-rate", "-1", "-target", "a=http://127.0.0.1:1"}, &bytes.Buffer{}, &bytes.Buffer{})
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "-rate -1") {
		t.Errorf("err %v, want a usage error about -rate -1", err)
	}
}

func TestRunOpenLoop(t *testing.T) {
	router, api := newFakeCluster(t)
	cluster := writeClusterFile(t, router.server.URL, api.server.URL)
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "-cluster", cluster, "-scenario", "compare-router", "-rate", "100", "-c", "4",
		"-d", "400ms", "-round", "200ms", "-warmup", "0", "-json", "-"}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	md, js, _ := strings.Cut(stdout.String(), "\n{")
	for _, want := range []string{
		"-rate 100",
		"Mode side-by-side, open loop at 100 req/s per target, 4 workers, 400ms per target, rounds of 200ms",
		"| target | requests | missed | errors |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("section lacks %q:\n%s", want, md)
		}
	}
	if !strings.Contains(stderr.String(), "open loop at 100 req/s per target") {
		t.Errorf("stderr does not describe the mode:\n%s", stderr.String())
	}
	var rep struct {
		Rate    float64 `json:"rate_rps"`
		Targets []struct {
			Name     string `json:"name"`
			Requests int64  `json:"requests"`
			Missed   int64  `json:"missed"`
			Errors   int64  `json:"errors"`
		} `json:"targets"`
	}
	if err := json.Unmarshal([]byte("{"+js), &rep); err != nil {
		t.Fatalf("%v in %s", err, stdout.String())
	}
	if rep.Rate != 100 || len(rep.Targets) != 2 {
		t.Fatalf("report %s", js)
	}
	// 400 ms at 100 req/s: 40 slots per target, in two rounds of 20.
	for i, n := range []*fakeNode{api, router} {
		r := rep.Targets[i]
		if r.Errors != 0 || r.Requests+r.Missed != 40 || r.Requests < 20 {
			t.Errorf("%s: requests %d missed %d errors %d, want 40 scheduled, most sent", r.Name, r.Requests, r.Missed, r.Errors)
		}
		if got := n.gets.Load(); got < r.Requests || got > r.Requests+5 {
			t.Errorf("%s saw %d GETs, report says %d measured", n.name, got, r.Requests)
		}
	}
}

func TestMintToken(t *testing.T) {
	v, err := auth.NewVerifier(auth.Config{Secret: []byte(testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := mintToken([]byte(testSecret), "acme", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cl, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if cl.Tenant != "acme" || cl.Subject != "bench" || !cl.HasScope(auth.ScopeRead) || !cl.HasScope(auth.ScopeWrite) ||
		cl.HasScope(auth.ScopeAdmin) || time.Until(cl.ExpiresAt) < 59*time.Minute {
		t.Errorf("claims %+v", cl)
	}
	expired, _ := mintToken([]byte(testSecret), "acme", time.Hour, time.Now().Add(-2*time.Hour))
	if _, err := v.Verify(expired); err == nil {
		t.Error("an expired token verified")
	}
	for _, bad := range []struct {
		secret, tenant string
	}{{"", "acme"}, {testSecret, ""}} {
		if _, err := mintToken([]byte(bad.secret), bad.tenant, time.Hour, time.Now()); err == nil {
			t.Errorf("mintToken(%q, %q) succeeded", bad.secret, bad.tenant)
		}
	}
}

func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-scenario", "get", "-c", "16"}, "go run ./cmd/bench -scenario get -c 16"},
		{[]string{"-token", "abc.def", "-d", "5s"}, "go run ./cmd/bench -token REDACTED -d 5s"},
		{[]string{"--jwt-secret=s3cr3t", "-admin-token", "x"}, "go run ./cmd/bench --jwt-secret=REDACTED -admin-token REDACTED"},
		{[]string{"-title", "it's a test"}, `go run ./cmd/bench -title 'it'\''s a test'`},
	} {
		if got := commandLine(tc.args); got != tc.want {
			t.Errorf("commandLine(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
}

func TestCPUModel(t *testing.T) {
	in := "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\nflags\t: fpu\n"
	if got := cpuModel(strings.NewReader(in)); got != "AMD EPYC 9654 96-Core Processor" {
		t.Errorf("cpuModel = %q", got)
	}
	if got := cpuModel(strings.NewReader("processor : 0\n")); got != "" {
		t.Errorf("cpuModel without a model = %q", got)
	}
}

func TestRunCancelledDuringSetup(t *testing.T) {
	router, _ := newFakeCluster(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := run(ctx, []string{"bench", "-target", "router=" + router.server.URL, "-jwt-secret", testSecret}, &bytes.Buffer{}, &bytes.Buffer{})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err %v, want context.Canceled", err)
	}
}

func TestRunInterruptedWritesNothing(t *testing.T) {
	router, _ := newFakeCluster(t)
	router.store.tenants["bench"] = ""
	out := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"bench", "-target", "router=" + router.server.URL, "-jwt-secret", testSecret,
			"-c", "2", "-d", "1h", "-warmup", "0", "-out", out}, &stdout, &stderr)
	}()
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := router.gets.Load(); n < 100 {
			return fmt.Errorf("%d GETs", n)
		}
		return nil
	})
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) || stdout.Len() != 0 {
		t.Errorf("an interrupted run wrote a result (stat %v, stdout %q)", err, stdout.String())
	}
	if !strings.Contains(stderr.String(), "interrupted") || !strings.Contains(stderr.String(), "| router |") {
		t.Errorf("no partial figures on stderr:\n%s", stderr.String())
	}
}

func FuzzParseRecordID(f *testing.F) {
	for _, s := range []string{`{"id":"0190a0b1-7c3d-7e4f-8a9b-0c1d2e3f4a5b"}`, `{"id":""}`, `{"id":"../x"}`, `[]`, `{"id":1}`, ``} {
		f.Add([]byte(s))
	}
	recordID := regexp.MustCompile(ids.RecordIDPattern) // the rule as written, checking the code that uses it
	f.Fuzz(func(t *testing.T, body []byte) {
		id, err := parseRecordID(body)
		if err == nil && !recordID.MatchString(id) {
			t.Fatalf("accepted id %q", id)
		}
		if err != nil && id != "" {
			t.Fatalf("id %q with error %v", id, err)
		}
	})
}

// TestMain lets the test binary serve as the baseline proxy child, as the bench binary does.
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == stdlibProxyArg {
		if err := serveStdlibProxy(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) == 3 && os.Args[1] == fastProxyArg {
		if err := serveFastProxy(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) == 3 && os.Args[1] == gnetProxyArg {
		if err := serveGnetProxy(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) == 2 && os.Args[1] == readEchoArg {
		if err := serveReadEcho(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) == 2 && os.Args[1] == echoArg {
		if err := serveEcho(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestRunCompareRouterWithBaselineProxy(t *testing.T) {
	router, api := newFakeCluster(t)
	cluster := writeClusterFile(t, router.server.URL, api.server.URL)
	out, rep := runShortCompare(t, cluster, "-baseline-proxy")
	var stdout, stderr bytes.Buffer
	if len(rep.Targets) != 3 || rep.Targets[0].Name != "direct" || rep.Targets[1].Name != baselineName || rep.Targets[2].Name != "router" {
		t.Fatalf("targets %+v, want direct, %s, router", rep.Targets, baselineName)
	}
	for _, r := range rep.Targets {
		if r.Requests == 0 || r.Errors != 0 {
			t.Errorf("%s: %d requests, %d errors", r.Name, r.Requests, r.Errors)
		}
	}
	// The baseline forwards to the direct API node: it saw both targets' GETs.
	if got, want := api.gets.Load(), rep.Targets[0].Requests+rep.Targets[1].Requests; got < want {
		t.Errorf("API node saw %d GETs, want at least direct + %s = %d", got, baselineName, want)
	}
	if !strings.Contains(out, "httputil.ReverseProxy alone") {
		t.Errorf("no note on the baseline:\n%s", out)
	}
	// The child proxy is gone after the run.
	m := regexp.MustCompile(baselineName + ` = (http://[0-9.:]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no baseline URL in the report:\n%s", out)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if resp, err := http.Get(m[1] + "/"); err == nil {
			resp.Body.Close()
			return fmt.Errorf("baseline proxy %s still answers", m[1])
		}
		return nil
	})
	if err := run(t.Context(), []string{"bench", "-cluster", cluster, "-scenario", "get", "-baseline-proxy"}, &stdout, &stderr); !errors.Is(err, errUsage) {
		t.Errorf("-baseline-proxy with -scenario get: %v, want a usage error", err)
	}
}

func TestRunCompareRouterWithBaselineEcho(t *testing.T) {
	router, api := newFakeCluster(t)
	cluster := writeClusterFile(t, router.server.URL, api.server.URL)
	out, rep := runShortCompare(t, cluster, "-baseline-echo")
	var stdout, stderr bytes.Buffer
	if len(rep.Targets) != 3 || rep.Targets[0].Name != "direct" || rep.Targets[1].Name != "router" || rep.Targets[2].Name != echoName {
		t.Fatalf("targets %+v, want direct, router, %s", rep.Targets, echoName)
	}
	for _, r := range rep.Targets {
		if r.Requests == 0 || r.Errors != 0 {
			t.Errorf("%s: %d requests, %d errors", r.Name, r.Requests, r.Errors)
		}
	}
	// The echo answers from memory: the API node saw no more GETs than direct's (plus setup's).
	if got, direct := api.gets.Load(), rep.Targets[0].Requests; got >= direct+rep.Targets[2].Requests {
		t.Errorf("API node saw %d GETs for direct's %d and the echo's %d: the echo forwarded", got, direct, rep.Targets[2].Requests)
	}
	// The echo is a floor, not an alternative: no ratio names it.
	if len(rep.Ratios) != 1 || rep.Ratios[0].Target != "router" {
		t.Errorf("ratios %+v, want router / direct only", rep.Ratios)
	}
	if strings.Contains(out, "| "+echoName+" / ") {
		t.Errorf("the echo is compared with direct:\n%s", out)
	}
	if !strings.Contains(out, "answers every request from memory") {
		t.Errorf("no note on the echo:\n%s", out)
	}
	if err := run(t.Context(), []string{"bench", "-cluster", cluster, "-scenario", "post", "-baseline-echo"}, &stdout, &stderr); !errors.Is(err, errUsage) {
		t.Errorf("-baseline-echo with -scenario post: %v, want a usage error", err)
	}
}

// runShortCompare runs a short compare-router against cluster with flag added and returns the
// Markdown output and the JSON report.
func runShortCompare(t *testing.T, cluster, flag string) (string, jsonReport) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "-cluster", cluster, "-scenario", "compare-router", flag, "-c", "2",
		"-d", "300ms", "-round", "100ms", "-warmup", "0", "-json", "-"}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	i := strings.Index(out, "{\n")
	if i < 0 {
		t.Fatalf("no JSON report:\n%s", out)
	}
	var rep jsonReport
	if err := json.Unmarshal([]byte(out[i:]), &rep); err != nil {
		t.Fatal(err)
	}
	return out, rep
}
