package systemtest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// heldNode puts a gate in front of a real API node: the node's own handler answers every
// request, and answers to GETs under /v1/collections/slow/ are sent as far as their headers and
// then held until release (or until the client goes away). The router has the answer's headers,
// so no upstream timeout fires, and streams the body — holding the tenant's concurrency slot —
// until the gate opens.
type heldNode struct {
	held    atomic.Int64 // answers waiting at the gate
	open    chan struct{}
	release func()
}

func holdAnswers(t *testing.T, a *apiNode) *heldNode {
	t.Helper()
	g := &heldNode{open: make(chan struct{})}
	var once sync.Once
	g.release = func() { once.Do(func() { close(g.open) }) }
	t.Cleanup(g.release)
	a.kill()
	var ln net.Listener
	testenv.WaitFor(t, 5*time.Second, func() error {
		var err error
		ln, err = net.Listen("tcp", a.addr)
		return err
	})
	h := a.srv.Handler()
	s := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, "/v1/collections/slow/") {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		for k, vv := range rec.Header() {
			w.Header()[k] = vv
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.Code)
		w.(http.Flusher).Flush()
		g.held.Add(1)
		defer g.held.Add(-1)
		select {
		case <-g.open:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(rec.Body.Bytes())
	})}
	a.mu.Lock()
	a.http = s // the cluster's cleanup (a.kill) closes it
	a.mu.Unlock()
	go func() { _ = s.Serve(ln) }()
	return g
}

// tenantLimits is the "limits" member of GET /admin/v1/tenants/{id}.
type tenantLimits struct {
	RPS         *float64        `json:"rps"`
	Burst       *int            `json:"burst"`
	Concurrency int             `json:"concurrency"`
	Overridden  map[string]bool `json:"overridden"`
}

// limitsOf asks router via for a tenant's limits.
func (c *cluster) limitsOf(via, tenant string) (tenantLimits, error) {
	a := c.do(via, "GET", "/admin/v1/tenants/"+tenant, adminToken(c.t), "")
	if a.status != 200 {
		return tenantLimits{}, fmt.Errorf("GET tenant %s via %s: %d %s", tenant, via, a.status, a.body)
	}
	var got struct {
		Limits *tenantLimits `json:"limits"`
	}
	if err := json.Unmarshal(a.body, &got); err != nil || got.Limits == nil {
		return tenantLimits{}, fmt.Errorf("GET tenant %s via %s: no limits in %s (%v)", tenant, via, a.body, err)
	}
	return *got.Limits, nil
}

// TestHostileTenantLimits runs issue 12's per-tenant limits on three real routers (Raft), real
// API nodes, Postgres and Redis: (a) a PATCHed concurrency of 2 gives a tenant holding two slow
// answers 429 on a third request through that router, while another tenant — and the same
// tenant through another router — is served; (b) an rps/burst PATCHed through one router is
// enforced by the others; (c) GET shows effective limits and overrides on every router, and null
// resets one; (d) bad PATCH bodies are 400, an unknown tenant 404.
func TestHostileTenantLimits(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	admin := adminToken(t)
	for _, id := range []string{"limco", "otherco", "rateco"} {
		c.createTenant("us-east", id, "us-east")
	}
	limco, otherco, rateco := dataToken(t, "limco"), dataToken(t, "otherco"), dataToken(t, "rateco")
	for _, w := range []struct{ tok, path string }{
		{limco, "/v1/collections/slow/records/r1"}, {limco, "/v1/collections/fast/records/r1"},
		{otherco, "/v1/collections/slow/records/r1"}, {rateco, "/v1/collections/c/records/r1"},
	} {
		if a := c.do("us-east", "PUT", w.path, w.tok, `{"data":{"n":1}}`); a.status != 201 {
			t.Fatalf("PUT %s: %d %s", w.path, a.status, a.body)
		}
	}

	t.Run("bad patches", func(t *testing.T) {
		for _, body := range []string{`not json`, `{}`, `{"limits":null}`, `{"limits":{"rps":0}}`, `{"limits":{"rps":-2}}`,
			`{"limits":{"burst":0}}`, `{"limits":{"burst":2.5}}`, `{"limits":{"concurrency":0}}`, `{"limits":{"qps":3}}`,
			`{"limits":{"rps":"3"}}`, `{"limits":{}} trailing`, `{"Limits":{"rps":3}}`} {
			a := c.do("us-west", "PATCH", "/admin/v1/tenants/limco", admin, body)
			if a.status != 400 || !strings.Contains(a.header.Get("Content-Type"), "problem+json") {
				t.Errorf("PATCH %s: %d %s, want 400 problem", body, a.status, a.body)
			}
		}
		if a := c.do("us-west", "PATCH", "/admin/v1/tenants/ghostco", admin, `{"limits":{"concurrency":2}}`); a.status != 404 {
			t.Errorf("PATCH of a tenant never created: %d %s, want 404", a.status, a.body)
		}
		if _, ok := c.routers["us-west"].Node.Map().TenantLimits("ghostco"); ok {
			t.Error("limits recorded for a tenant never created")
		}
		if a := c.do("us-west", "PATCH", "/admin/v1/tenants/limco", limco, `{"limits":{"concurrency":50}}`); a.status != 403 {
			t.Errorf("PATCH with a tenant token: %d, want 403", a.status)
		}
		if l, err := c.limitsOf("us-west", "limco"); err != nil || l.Concurrency != 100 || l.Overridden["concurrency"] {
			t.Errorf("limco after bad patches: %+v %v, want the default concurrency 100", l, err)
		}
	})

	t.Run("concurrency", func(t *testing.T) {
		a := c.do("us-east", "PATCH", "/admin/v1/tenants/limco", admin, `{"limits":{"concurrency":2}}`)
		if a.status != 200 || !strings.Contains(string(a.body), `"concurrency":2`) {
			t.Fatalf("PATCH concurrency: %d %s", a.status, a.body)
		}
		// us-west applies it once its map copy has it.
		testenv.WaitFor(t, 5*time.Second, func() error {
			l, err := c.limitsOf("us-west", "limco")
			if err == nil && (l.Concurrency != 2 || !l.Overridden["concurrency"]) {
				err = fmt.Errorf("limco's limits via us-west: %+v", l)
			}
			return err
		})

		// Reads through us-west are served by us-west's API node: hold its slow answers.
		gate := holdAnswers(t, c.apis["us-west"][0])
		done := make(chan answer, 2)
		for range 2 {
			go func() {
				a, err := send("GET", c.routers["us-west"].URL+"/v1/collections/slow/records/r1", limco, "")
				if err != nil {
					a.status = -1
				}
				done <- a
			}()
		}
		testenv.WaitFor(t, 10*time.Second, func() error {
			if n := gate.held.Load(); n != 2 {
				return fmt.Errorf("%d answers held at the gate", n)
			}
			return nil
		})
		third := c.do("us-west", "GET", "/v1/collections/fast/records/r1", limco, "")
		if third.status != 429 || third.header.Get("Retry-After") == "" ||
			!strings.Contains(string(third.body), "https://meridian.dev/problems/concurrency-limited") {
			t.Fatalf("limco's third request in flight via us-west: %d %v %s, want 429 concurrency-limited with Retry-After",
				third.status, third.header, third.body)
		}
		// Another tenant through the same router, even on the held path's neighbour, is served.
		if a := c.do("us-west", "GET", "/v1/collections/fast/records/nope", otherco, ""); a.status != 404 {
			t.Fatalf("otherco via us-west: %d %s, want its own 404", a.status, a.body)
		}
		if a := c.do("us-west", "PUT", "/v1/collections/fast/records/r2", otherco, `{"data":{}}`); a.status != 201 {
			t.Fatalf("otherco write via us-west: %d %s", a.status, a.body)
		}
		// The bound is per router: limco through us-east is served.
		if a := c.do("us-east", "GET", "/v1/collections/fast/records/r1", limco, ""); a.status != 200 {
			t.Fatalf("limco via us-east: %d %s", a.status, a.body)
		}
		gate.release()
		for range 2 {
			if a := <-done; a.status != 200 || !strings.Contains(string(a.body), `"n":1`) {
				t.Fatalf("held answer: %d %s", a.status, a.body)
			}
		}
		// The slots came back with the answers.
		testenv.WaitFor(t, 5*time.Second, func() error {
			if a := c.do("us-west", "GET", "/v1/collections/fast/records/r1", limco, ""); a.status != 200 {
				return fmt.Errorf("limco via us-west after the answers ended: %d %s", a.status, a.body)
			}
			return nil
		})

		// null resets the override to the router's default.
		if a := c.do("eu-west", "PATCH", "/admin/v1/tenants/limco", admin, `{"limits":{"concurrency":null}}`); a.status != 200 {
			t.Fatalf("PATCH null: %d %s", a.status, a.body)
		}
		testenv.WaitFor(t, 5*time.Second, func() error {
			l, err := c.limitsOf("us-west", "limco")
			if err == nil && (l.Concurrency != 100 || l.Overridden["concurrency"]) {
				err = fmt.Errorf("limco's limits after the reset: %+v", l)
			}
			return err
		})
	})

	t.Run("rate", func(t *testing.T) {
		// The cluster's default is 10⁶/s: nothing is limited before the override.
		for _, via := range regions {
			if a := c.do(via, "GET", "/v1/collections/c/records/r1", rateco, ""); a.status != 200 || a.header.Get("RateLimit-Limit") != "1000000" {
				t.Fatalf("rateco via %s before the override: %d RateLimit-Limit %q", via, a.status, a.header.Get("RateLimit-Limit"))
			}
		}
		a := c.do("us-east", "PATCH", "/admin/v1/tenants/rateco", admin, `{"limits":{"rps":0.5,"burst":3}}`)
		if a.status != 200 {
			t.Fatalf("PATCH rps: %d %s", a.status, a.body)
		}
		// The other routers enforce it: their answers carry the new limit, and the bucket of 3
		// (refilling every 2 s) runs out.
		for _, via := range []string{"us-west", "eu-west"} {
			testenv.WaitFor(t, 10*time.Second, func() error {
				a := c.do(via, "GET", "/v1/collections/c/records/r1", rateco, "")
				if a.status == 429 && a.header.Get("RateLimit-Limit") == "3" && a.header.Get("Retry-After") != "" {
					return nil
				}
				return fmt.Errorf("rateco via %s: %d RateLimit-Limit %q", via, a.status, a.header.Get("RateLimit-Limit"))
			})
		}
		// Another tenant keeps the default.
		if a := c.do("eu-west", "GET", "/v1/collections/c/records/r1", otherco, ""); a.status == 429 || a.header.Get("RateLimit-Limit") != "1000000" {
			t.Fatalf("otherco via eu-west: %d RateLimit-Limit %q", a.status, a.header.Get("RateLimit-Limit"))
		}
		// GET shows the effective limits and which are overridden, on every router.
		for _, via := range regions {
			testenv.WaitFor(t, 5*time.Second, func() error {
				l, err := c.limitsOf(via, "rateco")
				if err != nil {
					return err
				}
				if l.RPS == nil || *l.RPS != 0.5 || l.Burst == nil || *l.Burst != 3 || l.Concurrency != 100 ||
					!l.Overridden["rps"] || !l.Overridden["burst"] || l.Overridden["concurrency"] {
					return fmt.Errorf("rateco's limits via %s: %+v", via, l)
				}
				return nil
			})
		}
		if l, err := c.limitsOf("eu-west", "otherco"); err != nil || l.RPS == nil || *l.RPS != 1e6 || *l.Burst != 1e6 || l.Overridden["rps"] {
			t.Fatalf("otherco's limits: %+v %v, want the defaults", l, err)
		}
	})

	// The overrides are in the map every router holds, byte for byte.
	want := string(c.routers["us-east"].Node.Map().Canonical())
	testenv.WaitFor(t, 5*time.Second, func() error {
		for _, r := range regions {
			if got := string(c.routers[r].Node.Map().Canonical()); got != want {
				return fmt.Errorf("router %s's map differs", r)
			}
		}
		return nil
	})
	if !strings.Contains(want, `"rateco":{"rps":0.5,"burst":3}`) {
		t.Fatalf("map encoding lacks rateco's limits: %s", want)
	}
}
