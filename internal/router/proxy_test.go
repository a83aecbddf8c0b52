package router

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/internal/upstream"
)

func TestProxyRoutesWritesHomeAndReadsLocal(t *testing.T) {
	rg := newRig(t, nil)
	for _, tc := range []struct {
		name, method, token, wantRegion string
	}{
		{"read of eu tenant served locally", "GET", tokEuco, "us-east"},
		{"write of eu tenant goes home", "POST", tokEuco, "eu-west"},
		{"read of us tenant served locally", "GET", tokAcme, "us-east"},
		{"write of us tenant stays local", "PUT", tokAcme, "us-east"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := ""
			if tc.method != "GET" {
				body = `{"data":{"a":1}}`
			}
			tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
			resp, b := rg.do(t, tc.method, "/v1/collections/c/records/x?y=1", tc.token, body,
				"traceparent", tp, "X-Request-Id", "req-123")
			wantStatus(t, resp, b, 200)
			if got := resp.Header.Get(HeaderServedRegion); got != tc.wantRegion {
				t.Fatalf("X-Served-Region %q, want %q", got, tc.wantRegion)
			}
			if got := resp.Header.Get(HeaderRequestID); got != "req-123" {
				t.Fatalf("X-Request-Id %q", got)
			}
			if got := resp.Header.Get(HeaderShardmapVersion); got != "5" {
				t.Fatalf("X-Shardmap-Version %q", got)
			}
			var e echo
			if err := json.Unmarshal(b, &e); err != nil {
				t.Fatal(err)
			}
			if e.Method != tc.method || e.Path != "/v1/collections/c/records/x?y=1" || e.Body != body || e.Version != "5" {
				t.Fatalf("upstream saw %+v", e)
			}
			req, _ := rg.nodes[tc.wantRegion].lastRequest()
			got := req.Header.Get("traceparent")
			if !strings.HasPrefix(got, "00-4bf92f3577b34da6a3ce929d0e0e4736-") || got == tp {
				t.Fatalf("traceparent upstream %q: want same trace, new span", got)
			}
			if req.Header.Get(HeaderRequestID) != "req-123" {
				t.Fatalf("upstream X-Request-Id %q", req.Header.Get(HeaderRequestID))
			}
		})
	}
}

func TestProxyCreatesRequestIDAndTrace(t *testing.T) {
	rg := newRig(t, nil)
	resp, b := rg.do(t, "GET", "/v1/collections/c/records/x", tokAcme, "")
	wantStatus(t, resp, b, 200)
	if len(resp.Header.Get(HeaderRequestID)) != 36 {
		t.Fatalf("generated request id %q", resp.Header.Get(HeaderRequestID))
	}
	req, _ := rg.nodes["us-east"].lastRequest()
	if _, _, ok := ParseTraceparent(req.Header.Get("traceparent")); !ok {
		t.Fatalf("upstream traceparent %q invalid", req.Header.Get("traceparent"))
	}
}

func TestProxyReadGoesHomeWhenLocalUnhealthy(t *testing.T) {
	rg := newRig(t, nil)
	rg.ups.nodes[0].down = true // us-east
	resp, b := rg.do(t, "GET", "/v1/collections/c/records/x", tokEuco, "")
	wantStatus(t, resp, b, 200)
	if got := resp.Header.Get(HeaderServedRegion); got != "eu-west" {
		t.Fatalf("served by %q, want eu-west", got)
	}
	// A tenant homed in the dead region itself: writes fail fast with 503 + Retry-After.
	resp, b = rg.do(t, "POST", "/v1/collections/c/records", tokAcme, `{"data":{}}`)
	wantStatus(t, resp, b, 503)
	if resp.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
}

func TestProxyWriteLease(t *testing.T) {
	var now time.Time
	rg := newRig(t, func(c *Config) { c.Now = func() time.Time { return now } })
	rg.m.contact = time.Unix(1000, 0)
	now = rg.m.contact.Add(1900 * time.Millisecond)
	resp, b := rg.do(t, "POST", "/v1/collections/c/records", tokEuco, `{"data":{}}`)
	wantStatus(t, resp, b, 200)
	now = rg.m.contact.Add(2100 * time.Millisecond) // default lease 2 s has lapsed
	resp, b = rg.do(t, "POST", "/v1/collections/c/records", tokEuco, `{"data":{}}`)
	wantStatus(t, resp, b, 503)
	if resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	resp, b = rg.do(t, "GET", "/v1/collections/c/records/x", tokEuco, "")
	wantStatus(t, resp, b, 200)
}

func TestProxyMisdirectedRetriesOnNewMap(t *testing.T) {
	rg := newRig(t, nil)
	// The eu-west node knows map version 9, where euco moved home to us-east.
	rg.nodes["eu-west"].handle = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get(HeaderShardmapVersion) != "9" {
			w.Header().Set(HeaderShardmapVersion, "9")
			w.WriteHeader(http.StatusMisdirectedRequest)
			return true
		}
		return false
	}
	// The cluster's map reaches version 9 only once the router waits for it (and only for a
	// wait on that version), so the answer below proves the router waited for the version the
	// 421 named and re-resolved the tenant, instead of retrying on its old map.
	waits := make(chan uint64, 4)
	rg.m.mu.Lock()
	rg.m.onWait = func(v uint64) {
		waits <- v
		if v == 9 {
			go rg.m.set("euco", Route{Shard: "us-east-7", HomeRegion: "us-east", Pinned: true, Epoch: 3}, 9)
		}
	}
	rg.m.mu.Unlock()
	resp, b := rg.do(t, "POST", "/v1/collections/c/records", tokEuco, `{"data":{"n":1}}`)
	wantStatus(t, resp, b, 200)
	if len(waits) != 1 || <-waits != 9 {
		t.Fatal("the router did not wait exactly once, for version 9, after the 421")
	}
	if got := resp.Header.Get(HeaderServedRegion); got != "us-east" {
		t.Fatalf("served by %q after the 421, want us-east", got)
	}
	if got := resp.Header.Get(HeaderShardmapVersion); got != "9" {
		t.Fatalf("X-Shardmap-Version %q, want 9", got)
	}
	if n := rg.nodes["eu-west"].hits.Load(); n != 1 {
		t.Fatalf("eu-west node hit %d times, want 1", n)
	}
}

func TestProxyMisdirectedTwiceIsPassedOn(t *testing.T) {
	rg := newRig(t, func(c *Config) { c.MapWait = 50 * time.Millisecond })
	rg.nodes["eu-west"].handle = func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set(HeaderShardmapVersion, "99")
		w.WriteHeader(http.StatusMisdirectedRequest)
		return true
	}
	resp, _ := rg.do(t, "POST", "/v1/collections/c/records", tokEuco, `{}`)
	if resp.StatusCode != http.StatusMisdirectedRequest || rg.nodes["eu-west"].hits.Load() != 2 {
		t.Fatalf("status %d after %d hits; want one retry, then the 421 passed on", resp.StatusCode, rg.nodes["eu-west"].hits.Load())
	}
}

// deadURL is an address nothing listens on.
func deadURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

func TestProxyRetries(t *testing.T) {
	rg := newRig(t, nil)
	// A second us-east node that accepts the request and drops the connection before answering.
	drop := newAPINode(t, "us-east")
	drop.handle = func(w http.ResponseWriter, r *http.Request) bool {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
		return true
	}
	rg.ups.nodes = []*fakeNode{{id: "drop", region: "us-east", url: drop.srv.URL}, {id: "good", region: "us-east", url: rg.nodes["us-east"].srv.URL}}
	// fakeUpstreams picks in order, so every first attempt hits the dropping node.
	t.Run("idempotent retried on another node", func(t *testing.T) {
		for _, m := range []string{"GET", "PUT", "DELETE"} {
			resp, b := rg.do(t, m, "/v1/collections/c/records/x", tokAcme, "")
			wantStatus(t, resp, b, 200)
		}
		resp, b := rg.do(t, "POST", "/v1/collections/c/records", tokAcme, `{"data":{}}`, "Idempotency-Key", "k1")
		wantStatus(t, resp, b, 200)
	})
	t.Run("non-idempotent not retried after sending", func(t *testing.T) {
		before := rg.nodes["us-east"].hits.Load()
		resp, b := rg.do(t, "POST", "/v1/collections/c/records", tokAcme, `{"data":{}}`)
		wantStatus(t, resp, b, 503)
		if n := rg.nodes["us-east"].hits.Load(); n != before {
			t.Fatal("a POST without Idempotency-Key was sent to a second node")
		}
	})
	t.Run("an answer, 5xx included, is passed on and not retried", func(t *testing.T) {
		drop.mu.Lock()
		drop.handle = func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"status":503,"detail":"from the node"}`)
			return true
		}
		drop.mu.Unlock()
		rg.ups.mu.Lock()
		failuresBefore := rg.ups.nodes[0].failures
		rg.ups.mu.Unlock()
		before := rg.nodes["us-east"].hits.Load()
		resp, b := rg.do(t, "GET", "/v1/collections/c/records/x", tokAcme, "")
		wantStatus(t, resp, b, 503)
		if !strings.Contains(string(b), "from the node") {
			t.Fatalf("body %s, want the node's own answer", b)
		}
		if n := rg.nodes["us-east"].hits.Load(); n != before {
			t.Fatal("a 503 answer was retried on another node")
		}
		rg.ups.mu.Lock()
		failuresAfter := rg.ups.nodes[0].failures
		rg.ups.mu.Unlock()
		if failuresAfter != failuresBefore {
			t.Fatal("an answer was reported to the node's breaker as a failure")
		}
	})
	t.Run("non-idempotent retried when never sent", func(t *testing.T) {
		rg.ups.nodes[0].url = deadURL(t)
		resp, b := rg.do(t, "POST", "/v1/collections/c/records", tokAcme, `{"data":{}}`)
		wantStatus(t, resp, b, 200)
	})
	t.Run("all nodes dead", func(t *testing.T) {
		rg.ups.nodes[1].url = deadURL(t)
		resp, b := rg.do(t, "GET", "/v1/collections/c/records/x", tokAcme, "")
		wantStatus(t, resp, b, 503)
		if resp.Header.Get("Retry-After") == "" {
			t.Fatal("no Retry-After")
		}
	})
}

// TestProxyRetryBudget: a request is tried at most 1 + Retry.MaxRetries times (default 2
// retries), a non-idempotent one that reached a node only once.
func TestProxyRetryBudget(t *testing.T) {
	for _, tc := range []struct {
		name, method string
		maxRetries   int
		wantHits     int64
	}{
		{"GET, default policy", "GET", 0, 3},
		{"GET, MaxRetries 1", "GET", 1, 2},
		{"GET, retries off", "GET", -1, 1},
		{"POST without key", "POST", 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rg := newRig(t, func(c *Config) { c.Retry.MaxRetries = tc.maxRetries })
			// The only us-east node reads each request and drops the connection unanswered.
			rg.nodes["us-east"].handle = func(w http.ResponseWriter, r *http.Request) bool {
				if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
					conn.Close()
				}
				return true
			}
			resp, b := rg.do(t, tc.method, "/v1/collections/c/records/x", tokAcme, `{"data":{}}`)
			wantStatus(t, resp, b, 503)
			if n := rg.nodes["us-east"].hits.Load(); n != tc.wantHits {
				t.Fatalf("node saw the request %d times, want %d", n, tc.wantHits)
			}
			if n := testutil.ToFloat64(rg.srv.m.retries); n != float64(tc.wantHits-1) {
				t.Fatalf("meridian_router_retries_total = %v, want %d", n, tc.wantHits-1)
			}
		})
	}
}

func TestProxyTimeoutIs504(t *testing.T) {
	rg := newRig(t, func(c *Config) { c.UpstreamTimeout = 100 * time.Millisecond; c.Retry.MaxRetries = -1 })
	rg.nodes["us-east"].handle = func(w http.ResponseWriter, r *http.Request) bool {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
		return true
	}
	resp, b := rg.do(t, "GET", "/v1/collections/c/records/x", tokAcme, "")
	wantStatus(t, resp, b, 504)
}

func TestProxySaturatedIs503(t *testing.T) {
	rg := newRig(t, nil)
	rg.ups.bound = 1
	release := make(chan struct{})
	rg.nodes["us-east"].handle = func(w http.ResponseWriter, r *http.Request) bool {
		<-release
		return false
	}
	done := make(chan int)
	go func() {
		resp, err := http.Get(rg.http.URL + "/v1/x") // no token: answered without an upstream
		if err == nil {
			resp.Body.Close()
		}
		req, _ := http.NewRequest("GET", rg.http.URL+"/v1/collections/c/records/x", nil)
		req.Header.Set("Authorization", "Bearer "+tokAcme)
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	testenv.WaitFor(t, 2*time.Second, func() error {
		if rg.nodes["us-east"].hits.Load() == 0 {
			return errors.New("first request not at the node yet")
		}
		return nil
	})
	resp, b := rg.do(t, "GET", "/v1/collections/c/records/y", tokAcme, "")
	wantStatus(t, resp, b, 503)
	if resp.Header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After")
	}
	close(release)
	if got := <-done; got != 200 {
		t.Fatalf("first request %d", got)
	}
}

func TestProxyStreamsEventStream(t *testing.T) {
	rg := newRig(t, nil)
	release := make(chan struct{})
	rg.nodes["us-east"].handle = func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		_, _ = w.Write([]byte("id: 1\ndata: {}\n\n"))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return true
	}
	defer close(release)
	req, _ := http.NewRequest("GET", rg.http.URL+"/v1/changes", nil)
	req.Header.Set("Authorization", "Bearer "+tokAcme)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "id: 1\n" {
		t.Fatalf("first event line %q, %v (stream not flushed?)", line, err)
	}
}

func TestProxyRefusals(t *testing.T) {
	rg := newRig(t, func(c *Config) { c.Limiter = &fakeLimiter{limit: 1000} })
	big := strings.Repeat("x", 1<<20+1)
	for _, tc := range []struct {
		name, method, token, body string
		want                      int
	}{
		{"no token", "GET", "", "", 401},
		{"bad token", "GET", "garbage", "", 401},
		{"read scope cannot write", "POST", "acme|u|data:read", "{}", 403},
		{"no tenant claim", "GET", "|u|data:read", "", 403},
		{"bad tenant claim", "GET", "A!|u|data:read", "", 403},
		{"body over 1 MiB", "POST", tokAcme, big, 413},
		{"unknown path", "GET", tokAcme, "", 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := "/v1/collections/c/records"
			if tc.name == "unknown path" {
				path = "/nope"
			}
			resp, b := rg.do(t, tc.method, path, tc.token, tc.body)
			wantStatus(t, resp, b, tc.want)
			var p problemBody
			if err := json.Unmarshal(b, &p); err != nil || p.Status != tc.want || p.RequestID == "" || p.Detail == "" {
				t.Fatalf("problem body %s (%v)", b, err)
			}
		})
	}
}

func TestProxyRateLimit(t *testing.T) {
	rg := newRig(t, func(c *Config) { c.Limiter = &fakeLimiter{limit: 3} })
	for i := range 3 {
		resp, b := rg.do(t, "GET", "/v1/collections/c/records/x", tokAcme, "")
		wantStatus(t, resp, b, 200)
		if got := mustAtoi(t, resp.Header.Get("RateLimit-Remaining")); got != 2-i {
			t.Fatalf("RateLimit-Remaining %d, want %d", got, 2-i)
		}
		if resp.Header.Get("RateLimit-Limit") != "3" || resp.Header.Get("RateLimit-Reset") != "1" {
			t.Fatalf("RateLimit headers %v", resp.Header)
		}
	}
	resp, b := rg.do(t, "GET", "/v1/collections/c/records/x", tokAcme, "")
	wantStatus(t, resp, b, 429)
	if resp.Header.Get("Retry-After") != "3" || resp.Header.Get("RateLimit-Remaining") != "0" {
		t.Fatalf("429 headers %v", resp.Header)
	}
	resp, b = rg.do(t, "GET", "/v1/collections/c/records/x", tokEuco, "")
	wantStatus(t, resp, b, 200)
}

func TestHealthAndReady(t *testing.T) {
	rg := newRig(t, nil)
	resp, b := rg.do(t, "GET", "/healthz", "", "")
	wantStatus(t, resp, b, 200)
	resp, b = rg.do(t, "GET", "/readyz", "", "")
	wantStatus(t, resp, b, 200)
	rg.m.mu.Lock()
	rg.m.leader, rg.m.contact = "", time.Now().Add(-time.Minute)
	rg.m.mu.Unlock()
	resp, _ = rg.do(t, "GET", "/readyz", "", "")
	if resp.StatusCode != 503 {
		t.Fatalf("readyz without leader or fresh map: %d", resp.StatusCode)
	}
	rg.do(t, "GET", "/v1/collections/c/records/x", tokAcme, "")
	resp, b = rg.do(t, "GET", "/metrics", "", "")
	wantStatus(t, resp, b, 200)
	for _, want := range []string{
		`meridian_router_requests_total{class="read",code="200"}`,
		`meridian_router_upstream_requests_total{code="200",region="us-east"}`,
		"meridian_router_proxy_overhead_seconds_count",
		`meridian_router_upstream_breaker_state{node="us-east-a",region="us-east"} 0`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// ipLimiter records the client IP of every rate-limit check.
type ipLimiter struct {
	mu  sync.Mutex
	ips []string
}

func (l *ipLimiter) Check(_ context.Context, req LimitRequest) (LimitResult, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ips = append(l.ips, req.IP)
	return LimitResult{Allowed: true}, nil
}

func (l *ipLimiter) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ips[len(l.ips)-1]
}

// TestClientIPIsThePeerUnlessTrusted: a client cannot choose the IP its rate limit is keyed by
// with X-Forwarded-For, unless the peer is a configured trusted proxy.
func TestClientIPIsThePeerUnlessTrusted(t *testing.T) {
	for _, c := range []struct {
		name    string
		trusted []string
		wantIP  string
	}{
		{"no trusted proxies", nil, "127.0.0.1"},
		{"loopback trusted", []string{"127.0.0.1/32"}, "203.0.113.9"},
	} {
		t.Run(c.name, func(t *testing.T) {
			lim := &ipLimiter{}
			rg := newRig(t, func(cfg *Config) { cfg.Limiter = lim; cfg.TrustedProxies = c.trusted })
			resp, body := rg.do(t, "GET", "/v1/collections/c/records/r1", tokAcme, "", "X-Forwarded-For", "203.0.113.9")
			wantStatus(t, resp, body, 200)
			if got := lim.last(); got != c.wantIP {
				t.Fatalf("rate limit keyed by IP %q, want %q", got, c.wantIP)
			}
			a := rg.nodes["us-east"]
			a.mu.Lock()
			xff := a.last.Header.Get("X-Forwarded-For")
			a.mu.Unlock()
			if want := "203.0.113.9, " + c.wantIP; xff != want {
				t.Fatalf("upstream X-Forwarded-For %q, want %q", xff, want)
			}
		})
	}
	if _, err := New(Config{Region: "us-east", Map: &fakeMap{}, Auth: fakeAuth{}, Upstreams: &fakeUpstreams{},
		TrustedProxies: []string{"not-an-ip"}}); err == nil {
		t.Fatal("a malformed trusted proxy was accepted")
	}
}

// restartableServer is an httptest server that can be stopped and started on the same port.
type restartableServer struct {
	addr    string
	handler http.Handler
	srv     *httptest.Server
}

func (s *restartableServer) start(t *testing.T) {
	t.Helper()
	var ln net.Listener
	testenv.WaitFor(t, 5*time.Second, func() error { // the port may linger briefly after Close
		var err error
		ln, err = net.Listen("tcp", s.addr)
		return err
	})
	s.srv = httptest.NewUnstartedServer(s.handler)
	s.srv.Listener.Close()
	s.srv.Listener = ln
	s.srv.Start()
	s.addr = ln.Addr().String()
}

// TestProxyRetriesWithADyingNode runs the forwarding loop over a real upstream.Pool, the
// default HopTransport and real API node servers, the first of which dies and comes back:
// idempotent requests are retried on another node (bodies resent), a POST whose connect failed
// is retried and executed exactly once, the dead node is ejected, probed, and readmitted once it
// answers again. The pool's Rand is fixed so that every pick prefers n0 while its breaker
// admits it.
func TestProxyRetriesWithADyingNode(t *testing.T) {
	var posts atomic.Int64
	nodes := make([]*restartableServer, 3)
	src := StaticSource{}
	for i := range nodes {
		name := fmt.Sprintf("n%d", i)
		nodes[i] = &restartableServer{addr: "127.0.0.1:0", handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			if r.Method == http.MethodPost {
				posts.Add(1)
			}
			fmt.Fprintf(w, "%s %s %s", name, r.Method, body)
		})}
		nodes[i].start(t)
		t.Cleanup(func() { nodes[i].srv.Close() })
		src["us-east"] = append(src["us-east"], "http://"+nodes[i].addr)
	}
	n0 := src["us-east"][0]
	reg := prometheus.NewRegistry()
	pool, err := upstream.New(upstream.Config{Source: src, FailureThreshold: 2,
		EjectBase: 50 * time.Millisecond, EjectMax: 100 * time.Millisecond,
		Rand: func(int64) int64 { return 0 }, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	// n0Failures is the pool's count of attempts that failed on n0.
	n0Failures := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "meridian_upstream_requests_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["node"] == n0 && labels["outcome"] == "failure" {
					return m.GetCounter().GetValue()
				}
			}
		}
		return 0
	}
	rg := newRig(t, func(c *Config) { c.Upstreams = PoolUpstreams{Pool: pool, Source: src} })
	do := func(method, key, body string) (int, string) {
		var hdr []string
		if key != "" {
			hdr = []string{HeaderIdempotencyKey, key}
		}
		resp, b := rg.do(t, method, "/v1/collections/c/records/x", tokAcme, body, hdr...)
		return resp.StatusCode, string(b)
	}

	nodes[0].srv.Close() // n0 dies
	for i := range 30 {
		if code, body := do("GET", "", ""); code != 200 || strings.HasPrefix(body, "n0") {
			t.Fatalf("GET %d: %d %q", i, code, body)
		}
		if code, body := do("PUT", "", "payload"); code != 200 || !strings.HasSuffix(body, "PUT payload") {
			t.Fatalf("PUT %d: %d %q (body must be resent on retry)", i, code, body)
		}
	}
	if pool.State(n0) == upstream.Closed {
		t.Fatal("dead node not ejected")
	}
	// Once n0's ejection has run out, the next request is its probe: a POST without
	// Idempotency-Key whose connect to n0 fails. It never reached n0, so it is retried on
	// another node and runs exactly once.
	for i := range 3 {
		testenv.WaitFor(t, 5*time.Second, func() error {
			if s := pool.State(n0); s != upstream.HalfOpen {
				return fmt.Errorf("n0 state %v, want half-open", s)
			}
			return nil
		})
		before := n0Failures()
		if code, body := do("POST", "", "x"); code != 200 {
			t.Fatalf("POST %d after n0's probe failed: %d %q", i, code, body)
		}
		if n := n0Failures(); n != before+1 {
			t.Fatalf("POST %d: n0 failures %v → %v, want one more (the POST was its probe)", i, before, n)
		}
	}
	for i := range 10 {
		if code, body := do("POST", "", "x"); code != 200 {
			t.Fatalf("POST %d: %d %q", i, code, body)
		}
	}
	if n := posts.Load(); n != 13 {
		t.Fatalf("13 POSTs succeeded but upstreams ran %d", n)
	}
	for range 10 {
		if code, body := do("POST", "k", "x"); code != 200 {
			t.Fatalf("keyed POST: %d %q", code, body)
		}
	}

	nodes[0].start(t) // n0 returns on the same address
	testenv.WaitFor(t, 5*time.Second, func() error {
		do("GET", "", "")
		if s := pool.State(n0); s != upstream.Closed {
			return fmt.Errorf("n0 state %v", s)
		}
		return nil
	})
	if _, body := do("GET", "", ""); !strings.HasPrefix(body, "n0") {
		t.Fatalf("readmitted n0 got no traffic: %q", body)
	}
}

// TestProxySendsTenantEpoch: every forwarded write carries the route's epoch, never the
// client's; a read and a route without an epoch send none (the API node checks the epoch of
// writes alone).
func TestProxySendsTenantEpoch(t *testing.T) {
	rg := newRig(t, nil)
	for _, tc := range []struct{ method, token, region, want string }{
		{"GET", tokEuco, "us-east", ""},
		{"POST", tokEuco, "eu-west", "2"},
		{"POST", tokAcme, "us-east", ""},
	} {
		resp, b := rg.do(t, tc.method, "/v1/collections/c/records", tc.token, "", HeaderTenantEpoch, "99")
		wantStatus(t, resp, b, 200)
		req, _ := rg.nodes[tc.region].lastRequest()
		if got := req.Header.Values(HeaderTenantEpoch); strings.Join(got, ",") != tc.want {
			t.Fatalf("%s %s: %s %q, want %q", tc.method, tc.token, HeaderTenantEpoch, got, tc.want)
		}
	}
}

// TestProxyAddsNoUserAgent: the hop carries the client's User-Agent, and none when the client
// sent none (not Go's default, which every API node would parse for nothing).
func TestProxyAddsNoUserAgent(t *testing.T) {
	rg := newRig(t, nil)
	for _, ua := range []string{"", "curl/8.1"} {
		resp, b := rg.do(t, "GET", "/v1/collections/c/records", tokAcme, "", "User-Agent", ua)
		wantStatus(t, resp, b, 200)
		req, _ := rg.nodes["us-east"].lastRequest()
		if got := req.Header.Values("User-Agent"); strings.Join(got, ",") != ua {
			t.Fatalf("client's User-Agent %q: the hop's %q", ua, got)
		}
	}
}
