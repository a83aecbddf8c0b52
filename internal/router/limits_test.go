package router

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/shardmap"
)

func TestShedPolicyAdmit(t *testing.T) {
	p := ShedPolicy{}.withDefaults()
	if p != (ShedPolicy{List: 0.5, Read: 0.8, Write: 0.95}) {
		t.Fatalf("defaults %+v", p)
	}
	for _, tc := range []struct {
		class              string
		inFlight, capacity int
		want               bool
	}{
		{shedList, 49, 100, true}, {shedList, 50, 100, false},
		{shedRead, 79, 100, true}, {shedRead, 80, 100, false},
		{shedWrite, 94, 100, true}, {shedWrite, 95, 100, false},
		{shedWrite, 9, 10, true}, {shedWrite, 10, 10, false}, // one slot of ten left for admin
		{shedList, 500, 0, true},  // no admitted node: forwarding answers
		{"admin", 100, 100, true}, // never shed
	} {
		if got := p.Admit(tc.class, tc.inFlight, tc.capacity); got != tc.want {
			t.Errorf("Admit(%s, %d/%d) = %v, want %v", tc.class, tc.inFlight, tc.capacity, got, tc.want)
		}
	}
	// The order holds at every load: whatever admits a list admits a read, whatever admits a
	// read admits a write.
	for capacity := 1; capacity <= 64; capacity++ {
		for in := 0; in <= capacity+1; in++ {
			l, r, w := p.Admit(shedList, in, capacity), p.Admit(shedRead, in, capacity), p.Admit(shedWrite, in, capacity)
			if l && !r || r && !w {
				t.Fatalf("%d/%d: list %v read %v write %v", in, capacity, l, r, w)
			}
		}
	}
}

func TestShedClass(t *testing.T) {
	for _, tc := range []struct{ method, path, want string }{
		{"GET", "/v1/collections/c/records", shedList},
		{"HEAD", "/v1/collections/c/records", shedList},
		{"GET", "/v1/changes", shedList},
		{"GET", "/v1/collections/c/records/r1", shedRead},
		{"GET", "/v1/collections//records", shedRead},
		{"GET", "/v1/other", shedRead},
		{"POST", "/v1/collections/c/records", shedWrite},
		{"PUT", "/v1/collections/c/records/r1", shedWrite},
		{"PATCH", "/v1/collections/c/records/r1", shedWrite},
		{"DELETE", "/v1/collections/c/records/r1", shedWrite},
	} {
		if got := shedClass(tc.method, tc.path); got != tc.want {
			t.Errorf("shedClass(%s %s) = %s, want %s", tc.method, tc.path, got, tc.want)
		}
	}
}

func TestTenantSlotsDoNotAllocate(t *testing.T) {
	s := newTenantSlots(prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"}))
	tenant := string([]byte("acme"))
	s.acquire("other", 1) // the shard's map exists and has room
	if n := testing.AllocsPerRun(1000, func() {
		if !s.acquire(tenant, 2) {
			t.Fatal("refused")
		}
		s.release(tenant)
	}); n != 0 {
		t.Fatalf("acquire+release allocates %v times", n)
	}
}

// blockingNode makes the rig's us-east API node hold every request until release is closed
// (or the request ends), answering 200 then.
func blockingNode(rg *rig) (release func()) {
	ch := make(chan struct{})
	rg.nodes["us-east"].handle = func(w http.ResponseWriter, r *http.Request) bool {
		select {
		case <-ch:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusOK)
		return true
	}
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

// inBackground sends n requests through the rig at once and returns a channel with their
// statuses.
func inBackground(t *testing.T, rg *rig, n int, method, path, token string) <-chan int {
	out := make(chan int, n)
	for range n {
		go func() {
			req, _ := http.NewRequest(method, rg.http.URL+path, nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				out <- 0
				return
			}
			resp.Body.Close()
			out <- resp.StatusCode
		}()
	}
	return out
}

func wantProblemType(t *testing.T, b []byte, slug string) {
	t.Helper()
	var p problemBody
	if err := json.Unmarshal(b, &p); err != nil || p.Type != "https://meridian.dev/problems/"+slug || p.Detail == "" || p.RequestID == "" {
		t.Fatalf("problem %s (%v), want type …/%s", b, err, slug)
	}
}

// TestTenantConcurrencyLimit: with a bound of 2, a tenant's third request in flight is 429
// with Retry-After, while another tenant's requests pass; slots come back when answers end.
func TestTenantConcurrencyLimit(t *testing.T) {
	rg := newRig(t, func(c *Config) { c.TenantConcurrency = 2 })
	release := blockingNode(rg)
	defer release()
	done := inBackground(t, rg, 2, "GET", "/v1/collections/c/records/x", tokAcme)
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := rg.srv.lim.slots.inFlight("acme"); n != 2 {
			return fmt.Errorf("acme holds %d slots", n)
		}
		// A slot is taken before forwarding: wait for both to reach the node too, so that the
		// count below says whether the refused one did.
		if n := rg.nodes["us-east"].hits.Load(); n != 2 {
			return fmt.Errorf("%d requests reached the node", n)
		}
		return nil
	})
	resp, b := rg.do(t, "GET", "/v1/collections/c/records/y", tokAcme, "")
	wantStatus(t, resp, b, 429)
	wantProblemType(t, b, "concurrency-limited")
	if resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	if rg.nodes["us-east"].hits.Load() != 2 {
		t.Fatal("the refused request reached the API node")
	}
	// Another tenant is not affected (its home is eu-west; reads are served locally).
	rg.nodes["us-east"].handle = nil
	resp, b = rg.do(t, "GET", "/v1/collections/c/records/y", tokEuco, "")
	wantStatus(t, resp, b, 200)
	if n := testutil.ToFloat64(rg.srv.lim.rejected[shedRead]); n != 1 {
		t.Fatalf("concurrency_rejected_total{class=read} = %v", n)
	}
	release()
	for range 2 {
		if s := <-done; s != 200 {
			t.Fatalf("held request answered %d", s)
		}
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := rg.srv.lim.slots.inFlight("acme"); n != 0 {
			return fmt.Errorf("acme still holds %d slots", n)
		}
		return nil
	})
	resp, b = rg.do(t, "GET", "/v1/collections/c/records/y", tokAcme, "")
	wantStatus(t, resp, b, 200)
}

// TestTenantConcurrencyOverrideFromMap: a tenant's override in the map replaces the default at
// its next request, and a reset brings the default back.
func TestTenantConcurrencyOverrideFromMap(t *testing.T) {
	rg := newRig(t, nil) // default 100
	release := blockingNode(rg)
	defer release()
	_, _ = rg.m.SetTenantLimits(context.Background(), "acme", LimitsPatch{Set: TenantLimits{Concurrency: 1}})
	done := inBackground(t, rg, 1, "GET", "/v1/collections/c/records/x", tokAcme)
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := rg.srv.lim.slots.inFlight("acme"); n != 1 {
			return fmt.Errorf("acme holds %d slots", n)
		}
		return nil
	})
	resp, b := rg.do(t, "GET", "/v1/collections/c/records/y", tokAcme, "")
	wantStatus(t, resp, b, 429)
	_, _ = rg.m.SetTenantLimits(context.Background(), "acme", LimitsPatch{Reset: []string{"concurrency"}})
	more := inBackground(t, rg, 1, "GET", "/v1/collections/c/records/z", tokAcme)
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := rg.srv.lim.slots.inFlight("acme"); n != 2 {
			return fmt.Errorf("acme holds %d slots after the reset", n)
		}
		return nil
	})
	release()
	if s1, s2 := <-done, <-more; s1 != 200 || s2 != 200 {
		t.Fatalf("answers %d %d", s1, s2)
	}
}

// TestLoadSheddingOrder: as the target region's upstream capacity fills, lists are shed first,
// then single reads, then writes; the load measured is the region the request goes to; a shed
// request is 503 with Retry-After and holds no slot; the admin API is never shed.
func TestLoadSheddingOrder(t *testing.T) {
	rg := newRig(t, nil)
	type req struct{ method, path, token, body string }
	list := req{"GET", "/v1/collections/c/records", tokAcme, ""}
	read := req{"GET", "/v1/collections/c/records/r1", tokAcme, ""}
	write := req{"PUT", "/v1/collections/c/records/r1", tokAcme, `{"data":{}}`}
	stream := req{"GET", "/v1/changes", tokAcme, ""}
	for _, step := range []struct {
		inFlight  int
		admitted  []req
		shed      []req
		shedClass []string
	}{
		{0, []req{list, read, write, stream}, nil, nil},
		{49, []req{list, read, write}, nil, nil},
		{50, []req{read, write}, []req{list, stream}, []string{shedList, shedList}},
		{80, []req{write}, []req{list, read}, []string{shedList, shedRead}},
		{95, nil, []req{list, read, write}, []string{shedList, shedRead, shedWrite}},
	} {
		rg.ups.setLoad("us-east", step.inFlight, 100)
		for _, rq := range step.admitted {
			resp, b := rg.do(t, rq.method, rq.path, rq.token, rq.body)
			if resp.StatusCode != 200 {
				t.Fatalf("load %d/100: %s %s answered %d %s, want it admitted", step.inFlight, rq.method, rq.path, resp.StatusCode, b)
			}
		}
		for i, rq := range step.shed {
			before := testutil.ToFloat64(rg.srv.lim.shed[step.shedClass[i]])
			resp, b := rg.do(t, rq.method, rq.path, rq.token, rq.body)
			wantStatus(t, resp, b, 503)
			wantProblemType(t, b, "overloaded")
			if resp.Header.Get("Retry-After") == "" {
				t.Fatal("shed without Retry-After")
			}
			if after := testutil.ToFloat64(rg.srv.lim.shed[step.shedClass[i]]); after != before+1 {
				t.Fatalf("shed_total{class=%s} %v -> %v", step.shedClass[i], before, after)
			}
		}
	}
	if n := rg.srv.lim.slots.inFlight("acme"); n != 0 {
		t.Fatalf("shed requests left %d slots taken", n)
	}
	// A write is measured against its home region: euco lives in eu-west, which is idle.
	rg.ups.mu.Lock()
	rg.ups.loads = nil
	rg.ups.mu.Unlock()
	resp, b := rg.do(t, "PUT", "/v1/collections/c/records/r1", tokEuco, `{"data":{}}`)
	wantStatus(t, resp, b, 200)
	rg.ups.mu.Lock()
	loads := rg.ups.loads
	rg.ups.mu.Unlock()
	if len(loads) != 1 || loads[0] != "eu-west" {
		t.Fatalf("write load measured in %v, want [eu-west]", loads)
	}
	// Admin traffic keeps its reserve: never shed.
	resp, b = rg.do(t, "GET", "/admin/v1/shardmap", tokAdmin, "")
	wantStatus(t, resp, b, 200)
}

// TestRateLimiterGetsTenantOverrides: the Limiter sees the tenant's rps and burst from the map.
func TestRateLimiterGetsTenantOverrides(t *testing.T) {
	lim := &fakeLimiter{limit: 1000}
	rg := newRig(t, func(c *Config) { c.Limiter = lim })
	_, _ = rg.m.SetTenantLimits(context.Background(), "acme", LimitsPatch{Set: TenantLimits{RPS: 3, Burst: 4}})
	rg.do(t, "GET", "/v1/collections/c/records/x", tokAcme, "")
	lim.mu.Lock()
	got := lim.last
	lim.mu.Unlock()
	if got.Tenant != "acme" || got.TenantRate != 3 || got.TenantBurst != 4 {
		t.Fatalf("limiter got %+v, want acme's overrides 3/4", got)
	}
	rg.do(t, "GET", "/v1/collections/c/records/x", tokEuco, "")
	lim.mu.Lock()
	got = lim.last
	lim.mu.Unlock()
	if got.TenantRate != 0 || got.TenantBurst != 0 {
		t.Fatalf("euco without overrides: %+v", got)
	}
}

// defaultingLimiter is a fakeLimiter that reports a default tenant rule.
type defaultingLimiter struct{ fakeLimiter }

func (*defaultingLimiter) TenantDefault() (float64, int) { return 500, 1000 }

func TestPatchTenantLimits(t *testing.T) {
	rg := newRig(t, func(c *Config) { c.Limiter = &defaultingLimiter{fakeLimiter{limit: 1000}} })
	rg.nodes["us-east"].tenants["slotco"] = "us-east-1"
	get := func() map[string]any {
		t.Helper()
		resp, b := rg.do(t, "GET", "/admin/v1/tenants/slotco", tokAdmin, "")
		wantStatus(t, resp, b, 200)
		var got struct {
			Limits map[string]any `json:"limits"`
		}
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		return got.Limits
	}
	lim := get()
	if lim["rps"] != 500.0 || lim["burst"] != 1000.0 || lim["concurrency"] != 100.0 ||
		fmt.Sprint(lim["overridden"]) != "map[burst:false concurrency:false rps:false]" {
		t.Fatalf("defaults: %v", lim)
	}

	resp, b := rg.do(t, "PATCH", "/admin/v1/tenants/slotco", tokAdmin, `{"limits":{"rps":2.5,"concurrency":7}}`)
	wantStatus(t, resp, b, 200)
	var patched TenantInfo
	if err := json.Unmarshal(b, &patched); err != nil || patched.ID != "slotco" || patched.Limits == nil ||
		*patched.Limits.RPS != 2.5 || *patched.Limits.Burst != 1000 || patched.Limits.Concurrency != 7 ||
		patched.Limits.Overridden != (LimitsOverrides{RPS: true, Concurrency: true}) {
		t.Fatalf("PATCH answer %s (%v)", b, err)
	}
	if l, _ := rg.m.TenantLimits("slotco"); l != (TenantLimits{RPS: 2.5, Concurrency: 7}) {
		t.Fatalf("map holds %+v", l)
	}
	// null resets one field; absent fields keep theirs.
	resp, b = rg.do(t, "PATCH", "/admin/v1/tenants/slotco", tokAdmin, `{"limits":{"rps":null,"burst":3}}`)
	wantStatus(t, resp, b, 200)
	lim = get()
	if lim["rps"] != 500.0 || lim["burst"] != 3.0 || lim["concurrency"] != 7.0 ||
		fmt.Sprint(lim["overridden"]) != "map[burst:true concurrency:true rps:false]" {
		t.Fatalf("after reset of rps: %v", lim)
	}

	for _, body := range []string{
		``, `not json`, `{}`, `{"limits":null}`, `{"limits":[]}`, `{"limits":{}} {}`, `{"limits":{},"extra":1}`,
		`{"limits":{"qps":1}}`, `{"limits":{"rps":0}}`, `{"limits":{"rps":-1}}`, `{"limits":{"rps":"5"}}`,
		`{"limits":{"rps":1e9}}`, `{"limits":{"burst":0}}`, `{"limits":{"burst":1.5}}`, `{"limits":{"burst":2000000}}`,
		`{"limits":{"concurrency":0}}`, `{"limits":{"concurrency":-3}}`, `{"limits":{"concurrency":true}}`,
		`{"LIMITS":{"rps":1}}`,
	} {
		resp, b := rg.do(t, "PATCH", "/admin/v1/tenants/slotco", tokAdmin, body)
		if resp.StatusCode != 400 {
			t.Fatalf("body %q: %d %s, want 400", body, resp.StatusCode, b)
		}
		wantStatus(t, resp, b, 400)
	}
	if l, _ := rg.m.TenantLimits("slotco"); l != (TenantLimits{Burst: 3, Concurrency: 7}) {
		t.Fatalf("a rejected PATCH changed the map: %+v", l)
	}
	resp, b = rg.do(t, "PATCH", "/admin/v1/tenants/neverco", tokAdmin, `{"limits":{"rps":1}}`)
	wantStatus(t, resp, b, 404)
	if _, ok := rg.m.TenantLimits("neverco"); ok {
		t.Fatal("limits recorded for a tenant that does not exist")
	}
	resp, b = rg.do(t, "PATCH", "/admin/v1/tenants/BAD", tokAdmin, `{"limits":{"rps":1}}`)
	wantStatus(t, resp, b, 400)
	resp, b = rg.do(t, "PATCH", "/admin/v1/tenants/slotco", tokAcme, `{"limits":{"rps":1}}`)
	wantStatus(t, resp, b, 403)
}

func TestDecodeTenantPatch(t *testing.T) {
	p, err := DecodeTenantPatch([]byte(`{"limits":{"concurrency":null,"rps":0.001,"burst":1000000}}`))
	if err != nil || p.Set != (TenantLimits{RPS: 0.001, Burst: 1_000_000}) || fmt.Sprint(p.Reset) != "[concurrency]" {
		t.Fatalf("%+v %v", p, err)
	}
	p, err = DecodeTenantPatch([]byte(`{"limits":{}}`))
	if err != nil || p.Set != (TenantLimits{}) || len(p.Reset) != 0 {
		t.Fatalf("empty patch: %+v %v", p, err)
	}
	// A member named twice is refused, not folded into its last value (DESIGN.md §4).
	for _, b := range []string{`{"limits":{"rps":1,"rps":2}}`, `{"limits":{"rps":1},"limits":{"burst":2}}`} {
		if _, err := DecodeTenantPatch([]byte(b)); err == nil {
			t.Errorf("%s decoded", b)
		}
	}
}

func FuzzDecodeTenantPatch(f *testing.F) {
	for _, s := range []string{`{"limits":{"rps":1,"burst":null}}`, `{"limits":{"concurrency":5}}`, `{"limits":{}}`, `{}`, `[1]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodeTenantPatch(b)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		// Whatever decodes is something the map accepts.
		if err := (shardmap.TenantLimits(p.Set)).Validate(); err != nil {
			t.Fatalf("decoded out-of-bounds limits %+v: %v", p.Set, err)
		}
	})
}
