package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// fakeSource is a settable Source.
type fakeSource struct {
	mu sync.Mutex
	ts map[string][]Target
}

func (s *fakeSource) Targets(r string) []Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Target(nil), s.ts[r]...)
}

func (s *fakeSource) set(r string, ts ...Target) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ts == nil {
		s.ts = map[string][]Target{}
	}
	s.ts[r] = ts
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestIdempotent(t *testing.T) {
	tests := []struct {
		method string
		key    string
		want   bool
	}{
		{"GET", "", true}, {"HEAD", "", true}, {"PUT", "", true}, {"DELETE", "", true},
		{"POST", "", false}, {"PATCH", "", false}, {"POST", "k1", true}, {"PATCH", "k1", true},
		{"CONNECT", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.method+"/"+tt.key, func(t *testing.T) {
			h := http.Header{}
			if tt.key != "" {
				h.Set("Idempotency-Key", tt.key)
			}
			if got := Idempotent(tt.method, h); got != tt.want {
				t.Fatalf("Idempotent = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBackoffFullJitter(t *testing.T) {
	p := RetryPolicy{BaseBackoff: 10 * time.Millisecond, MaxBackoff: 35 * time.Millisecond}
	maxRnd := func(n int64) int64 { return n - 1 }
	tests := []struct {
		n    int
		want time.Duration
	}{{0, 10*time.Millisecond - 1}, {1, 20*time.Millisecond - 1}, {2, 35*time.Millisecond - 1}, {40, 35*time.Millisecond - 1}}
	for _, tt := range tests {
		if got := p.Backoff(tt.n, maxRnd); got != tt.want {
			t.Errorf("Backoff(%d) upper = %v, want %v", tt.n, got, tt.want)
		}
		if got := p.Backoff(tt.n, func(int64) int64 { return 0 }); got != 0 {
			t.Errorf("Backoff(%d) lower = %v", tt.n, got)
		}
	}
	if (RetryPolicy{}).maxRetries() != 2 || (RetryPolicy{MaxRetries: -1}).maxRetries() != 0 {
		t.Error("retry defaults wrong")
	}
}

func newPool(t *testing.T, src Source, clk *fakeClock, mod func(*Config)) *Pool {
	t.Helper()
	cfg := Config{Source: src, FailureThreshold: 2, EjectBase: time.Second, EjectMax: 4 * time.Second,
		Retry: RetryPolicy{BaseBackoff: time.Microsecond, MaxBackoff: time.Microsecond}}
	if clk != nil {
		cfg.Now = clk.Now
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBreakerEjectsAndReadmits(t *testing.T) {
	src := &fakeSource{}
	src.set("us-east", Target{ID: "a", Region: "us-east", Addr: "a", Healthy: true})
	clk := &fakeClock{t: time.Unix(1000, 0)}
	p := newPool(t, src, clk, nil)
	fail := func() {
		l, err := p.Acquire([]string{"us-east"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		l.Done(true)
	}
	steps := []struct {
		name string
		do   func()
		want BreakerState
		acq  error
	}{
		{"one failure stays closed", fail, Closed, nil},
		{"threshold opens", fail, Open, ErrNoUpstream},
		{"still open before backoff", func() { clk.Add(999 * time.Millisecond) }, Open, ErrNoUpstream},
		{"half-open after backoff", func() { clk.Add(time.Millisecond) }, HalfOpen, nil},
		{"failed probe reopens with doubled backoff", fail, Open, ErrNoUpstream},
		{"1s is not enough now", func() { clk.Add(time.Second) }, Open, ErrNoUpstream},
		{"2s is", func() { clk.Add(time.Second) }, HalfOpen, nil},
	}
	for _, s := range steps {
		s.do()
		if got := p.State("a"); got != s.want {
			t.Fatalf("%s: state %v, want %v", s.name, got, s.want)
		}
		if s.want == Closed {
			continue // an Acquire+Done(false) here would reset the failure count
		}
		l, err := p.Acquire([]string{"us-east"}, nil)
		if !errors.Is(err, s.acq) {
			t.Fatalf("%s: Acquire err %v, want %v", s.name, err, s.acq)
		}
		if l != nil {
			if s.want == HalfOpen {
				// Only one probe at a time.
				if _, err := p.Acquire([]string{"us-east"}, nil); !errors.Is(err, ErrNoUpstream) {
					t.Fatalf("%s: second probe admitted: %v", s.name, err)
				}
			}
			l.Done(false)
			if s.want == HalfOpen && p.State("a") != Closed {
				t.Fatalf("%s: successful probe did not close", s.name)
			}
			// Put the breaker back where the table expects it.
			if s.want == HalfOpen {
				fail()
				fail()
				clk.Add(time.Second) // first re-ejection after a success uses the base backoff
			}
		}
	}
}

func TestActiveHealthAndRegionFallback(t *testing.T) {
	src := &fakeSource{}
	src.set("us-west", Target{ID: "w1", Region: "us-west", Addr: "w1", Healthy: false})
	src.set("us-east", Target{ID: "e1", Region: "us-east", Addr: "e1", Healthy: true})
	p := newPool(t, src, nil, nil)
	l, err := p.Acquire([]string{"us-west", "us-east"}, nil)
	if err != nil || l.Target.ID != "e1" {
		t.Fatalf("got %+v %v, want e1 via home-region fallback", l, err)
	}
	l.Done(false)
	src.set("us-west", Target{ID: "w1", Region: "us-west", Addr: "w1", Healthy: true})
	if l, err := p.Acquire([]string{"us-west", "us-east"}, nil); err != nil || l.Target.ID != "w1" {
		t.Fatalf("got %+v %v, want w1 once gossip says healthy", l, err)
	}
	if _, err := p.Acquire([]string{"eu-west"}, nil); !errors.Is(err, ErrNoUpstream) {
		t.Fatalf("empty region: %v", err)
	}
}

func TestSaturation(t *testing.T) {
	src := &fakeSource{}
	src.set("r", Target{ID: "a", Region: "r", Healthy: true}, Target{ID: "b", Region: "r", Healthy: true})
	p := newPool(t, src, nil, func(c *Config) { c.MaxInFlight = 2 })
	var ls []*Lease
	counts := map[string]int{}
	for range 4 {
		l, err := p.Acquire([]string{"r"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		counts[l.Target.ID]++
		ls = append(ls, l)
	}
	if counts["a"] != 2 || counts["b"] != 2 {
		t.Fatalf("leases %v, want 2 each", counts)
	}
	if _, err := p.Acquire([]string{"r"}, nil); !errors.Is(err, ErrSaturated) {
		t.Fatalf("err %v, want ErrSaturated", err)
	}
	ls[0].Done(false)
	ls[0].Done(false) // idempotent
	if _, err := p.Acquire([]string{"r"}, nil); err != nil {
		t.Fatalf("after release: %v", err)
	}
	if _, err := p.Acquire([]string{"r"}, nil); !errors.Is(err, ErrSaturated) {
		t.Fatalf("double Done released two slots: %v", err)
	}
}

func TestDoRetriesOnlyIdempotent(t *testing.T) {
	src := &fakeSource{}
	src.set("r", Target{ID: "a", Region: "r", Healthy: true}, Target{ID: "b", Region: "r", Healthy: true}, Target{ID: "c", Region: "r", Healthy: true})
	boom := errors.New("boom")
	tests := []struct {
		name      string
		idem      bool
		fn        func(calls int) error
		wantCalls int
		wantErr   error
	}{
		{"success", true, func(int) error { return nil }, 1, nil},
		{"idempotent retried twice", true, func(int) error { return boom }, 3, boom},
		{"idempotent recovers", true, func(n int) error {
			if n < 2 {
				return boom
			}
			return nil
		}, 2, nil},
		{"non-idempotent once", false, func(int) error { return boom }, 1, boom},
		{"permanent not retried", true, func(int) error { return Permanent(boom) }, 1, boom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPool(t, src, nil, func(c *Config) { c.FailureThreshold = 100 })
			calls := 0
			seen := map[string]bool{}
			err := p.Do(context.Background(), Call{Regions: []string{"r"}, Idempotent: tt.idem}, func(_ context.Context, tg Target) error {
				calls++
				if seen[tg.ID] {
					t.Errorf("retried on the same node %s while others were free", tg.ID)
				}
				seen[tg.ID] = true
				return tt.fn(calls)
			})
			if calls != tt.wantCalls || !errors.Is(err, tt.wantErr) {
				t.Fatalf("calls %d err %v, want %d %v", calls, err, tt.wantCalls, tt.wantErr)
			}
		})
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
	var err error
	for i := 0; i < 50; i++ { // the port may linger briefly after Close
		ln, err = net.Listen("tcp", s.addr)
		if err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	s.srv = httptest.NewUnstartedServer(s.handler)
	s.srv.Listener.Close()
	s.srv.Listener = ln
	s.srv.Start()
	s.addr = ln.Addr().String()
}

func TestProxyWithDyingNode(t *testing.T) {
	var posts atomic.Int64
	nodes := make([]*restartableServer, 3)
	src := &fakeSource{}
	var ts []Target
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
		ts = append(ts, Target{ID: name, Region: "r", Addr: "http://" + nodes[i].addr, Healthy: true})
	}
	src.set("r", ts...)
	p := newPool(t, src, nil, func(c *Config) { c.EjectBase = 50 * time.Millisecond; c.EjectMax = 100 * time.Millisecond })
	proxy := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.Out.URL.Scheme, pr.Out.URL.Host = "http", "placeholder" },
		Transport: p.Transport(&http.Transport{DisableKeepAlives: true}),
	}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxy.ServeHTTP(w, r.WithContext(WithRegions(r.Context(), "r")))
	}))
	defer front.Close()

	do := func(method, key, body string) (int, string) {
		req, _ := http.NewRequest(method, front.URL+"/v1/x", strings.NewReader(body))
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	nodes[1].srv.Close() // n1 dies
	for i := range 30 {
		if code, body := do("GET", "", ""); code != 200 || strings.HasPrefix(body, "n1") {
			t.Fatalf("GET %d: %d %q", i, code, body)
		}
		if code, body := do("PUT", "", "payload"); code != 200 || !strings.HasSuffix(body, "PUT payload") {
			t.Fatalf("PUT %d: %d %q (body must be replayed on retry)", i, code, body)
		}
	}
	if p.State("n1") == Closed {
		t.Fatal("dead node not ejected")
	}
	// Non-idempotent POSTs are attempted once: any that hit n1 fail cleanly with 502, none is
	// duplicated. n1 is ejected now, so bring it into play by letting its backoff pass.
	ok := 0
	for range 20 {
		if code, _ := do("POST", "", "x"); code == 200 {
			ok++
		} else if code != http.StatusBadGateway {
			t.Fatalf("POST failed with %d, want 502", code)
		}
	}
	if int64(ok) != posts.Load() {
		t.Fatalf("%d POSTs succeeded but upstreams saw %d", ok, posts.Load())
	}
	// With an Idempotency-Key, POST is retried.
	for range 10 {
		if code, _ := do("POST", "k", "x"); code != 200 {
			t.Fatalf("keyed POST: %d", code)
		}
	}

	nodes[1].start(t) // n1 returns on the same address
	testenv.WaitFor(t, 5*time.Second, func() error {
		do("GET", "", "")
		if s := p.State("n1"); s != Closed {
			return fmt.Errorf("n1 state %v", s)
		}
		return nil
	})
	seen := false
	for range 30 {
		if _, body := do("GET", "", ""); strings.HasPrefix(body, "n1") {
			seen = true
		}
	}
	if !seen {
		t.Fatal("readmitted node got no traffic")
	}
}

func TestTransportWithoutRegion(t *testing.T) {
	p := newPool(t, &fakeSource{}, nil, nil)
	req := httptest.NewRequest("GET", "http://x/", nil)
	if _, err := p.Transport(nil).RoundTrip(req); !errors.Is(err, ErrNoRegion) {
		t.Fatalf("err %v", err)
	}
}
