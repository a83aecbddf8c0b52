package router

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/internal/testenv"
)

// cutoverRig is a rig in the middle of moving tenant euco from eu-west-1 (the source, whose
// API node answers its writes 503 tenant-fenced, as a fenced shard does) to us-east-1 (the
// target, whose API node answers writes 201). cutover does what the Cutover command does to
// the router's map: pins euco to the target and bumps its write epoch.
type cutoverRig struct {
	*rig
	mu sync.Mutex // guards the fields below
	// arrived is the n= query parameter of each write the target received, in arrival order.
	arrived []string
	// overlap counts target writes that arrived while another was in its handler.
	overlap, inTarget int
	// epochs are the X-Tenant-Epoch values each node saw, by region.
	epochs map[string][]string
	// slowFirst makes the target take a while over the first write it receives.
	slowFirst bool
}

func newCutoverRig(t *testing.T, mod func(*Config)) *cutoverRig {
	t.Helper()
	cr := &cutoverRig{rig: newRig(t, mod), epochs: map[string][]string{}}
	cr.m.set("euco", Route{Shard: "eu-west-1", HomeRegion: "eu-west", Pinned: true, Epoch: 2, Moving: true}, 6)
	cr.m.set("eubiz", Route{Shard: "eu-west-1", HomeRegion: "eu-west", Pinned: true, Epoch: 1}, 6)
	cr.nodes["eu-west"].handle = func(w http.ResponseWriter, r *http.Request) bool {
		cr.mu.Lock()
		cr.epochs["eu-west"] = append(cr.epochs["eu-west"], r.Header.Get(HeaderTenantEpoch))
		cr.mu.Unlock()
		if IsWrite(r.Method) && strings.Contains(r.Header.Get("Authorization"), "euco|") {
			w.Header().Set("Retry-After", "1")
			problem.TenantFenced.WriteHTTP(w, "tenant is being moved; writes are paused", r.Header.Get(HeaderRequestID))
			return true
		}
		return false
	}
	cr.nodes["us-east"].handle = func(w http.ResponseWriter, r *http.Request) bool {
		if !IsWrite(r.Method) {
			return false
		}
		n := r.URL.Query().Get("n")
		cr.mu.Lock()
		cr.epochs["us-east"] = append(cr.epochs["us-east"], r.Header.Get(HeaderTenantEpoch))
		cr.arrived = append(cr.arrived, n)
		if cr.inTarget++; cr.inTarget > 1 {
			cr.overlap++
		}
		slow := cr.slowFirst && len(cr.arrived) == 1
		cr.mu.Unlock()
		if slow {
			// Long enough that writes released without waiting for this answer would arrive
			// during it.
			time.Sleep(50 * time.Millisecond)
		}
		cr.mu.Lock()
		cr.inTarget--
		cr.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"n":"`+n+`"}`)
		return true
	}
	return cr
}

func (cr *cutoverRig) cutover() {
	cr.m.set("euco", Route{Shard: "us-east-1", HomeRegion: "us-east", Pinned: true, Epoch: 3, Moving: true}, 7)
}

// result is one request's outcome, from the background.
type result struct {
	status int
	header http.Header
	body   string
	err    error
}

// send sends a request through the router in the background.
func (cr *cutoverRig) send(ctx context.Context, method, path, token string) <-chan result {
	out := make(chan result, 1)
	go func() {
		var rb io.Reader
		if method != http.MethodGet {
			rb = strings.NewReader(`{"data":{}}`)
		}
		req, _ := http.NewRequestWithContext(ctx, method, cr.http.URL+path, rb)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			out <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- result{status: resp.StatusCode, header: resp.Header, body: string(b)}
	}()
	return out
}

func (cr *cutoverRig) held() float64 { return testutil.ToFloat64(cr.srv.hold.gauge) }

func (cr *cutoverRig) results(r holdResult) float64 {
	return testutil.ToFloat64(cr.srv.hold.results[r])
}

// waitHeld waits until the router holds n writes.
func (cr *cutoverRig) waitHeld(t *testing.T, n int) {
	t.Helper()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if h := cr.held(); h != float64(n) {
			return fmt.Errorf("%v writes held, want %d", h, n)
		}
		return nil
	})
}

func recv(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no answer")
	}
	return result{}
}

// TestHoldReleasesFencedWriteToNewHome: a write the source answers tenant-fenced is held, not
// answered, until the map pins the tenant to its new home with a higher epoch; then the client
// gets the target's 201 — never the 503 — and the fenced answer counts against no node.
func TestHoldReleasesFencedWriteToNewHome(t *testing.T) {
	cr := newCutoverRig(t, nil)
	done := cr.send(t.Context(), "POST", "/v1/collections/c/records?n=1", tokEuco)
	cr.waitHeld(t, 1)
	select {
	case r := <-done:
		t.Fatalf("answered %d while the tenant is fenced: %s", r.status, r.body)
	default:
	}
	cr.cutover()
	r := recv(t, done)
	if r.status != http.StatusCreated || r.header.Get(HeaderServedRegion) != "us-east" {
		t.Fatalf("status %d from %q, want 201 from the target (us-east); body %s", r.status, r.header.Get(HeaderServedRegion), r.body)
	}
	if got := r.header.Get(HeaderShardmapVersion); got != "7" {
		t.Fatalf("X-Shardmap-Version %q, want 7 (the map that released it)", got)
	}
	cr.mu.Lock()
	src, dst := cr.epochs["eu-west"], cr.epochs["us-east"]
	cr.mu.Unlock()
	if len(src) != 1 || src[0] != "2" || len(dst) != 1 || dst[0] != "3" {
		t.Fatalf("epochs sent: source %q, target %q; want [2] and [3]", src, dst)
	}
	if cr.held() != 0 || cr.results(holdReleased) != 1 || testutil.CollectAndCount(cr.srv.hold.seconds) != 1 {
		t.Fatalf("held %v, released %v: want 0 and 1, and one hold timed", cr.held(), cr.results(holdReleased))
	}
	if n := cr.failures("eu-west-a"); n != 0 {
		t.Fatalf("the fenced answer counted %d failures against the source node", n)
	}
	if n := cr.srv.lim.slots.inFlight("euco"); n != 0 {
		t.Fatalf("tenant still holds %d concurrency slots", n)
	}
}

// TestHoldReleasesInOrder: writes of one tenant held one after another are sent to the new
// home in that order, each only once the one before has its answer.
func TestHoldReleasesInOrder(t *testing.T) {
	cr := newCutoverRig(t, nil)
	cr.slowFirst = true
	var done []<-chan result
	for i := 1; i <= 3; i++ {
		done = append(done, cr.send(t.Context(), "PUT", fmt.Sprintf("/v1/collections/c/records/x?n=%d", i), tokEuco))
		cr.waitHeld(t, i) // the next write is fenced only after this one is held
	}
	cr.cutover()
	for i, ch := range done {
		if r := recv(t, ch); r.status != http.StatusCreated || r.body != fmt.Sprintf(`{"n":"%d"}`, i+1) {
			t.Fatalf("write %d: status %d body %s", i+1, r.status, r.body)
		}
	}
	cr.mu.Lock()
	defer cr.mu.Unlock()
	if strings.Join(cr.arrived, ",") != "1,2,3" || cr.overlap != 0 {
		t.Fatalf("target received %v with %d overlapping; want 1,2,3 one at a time", cr.arrived, cr.overlap)
	}
}

// TestHoldTimeout: a write still fenced after the hold time is answered 503 tenant-fenced with
// Retry-After: 1, and is not sent anywhere else.
func TestHoldTimeout(t *testing.T) {
	cr := newCutoverRig(t, func(c *Config) { c.Hold.Time = 100 * time.Millisecond })
	r := recv(t, cr.send(t.Context(), "POST", "/v1/collections/c/records", tokEuco))
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != "1" {
		t.Fatalf("status %d, Retry-After %q; want 503 and 1", r.status, r.header.Get("Retry-After"))
	}
	wantProblemType(t, []byte(r.body), "tenant-fenced")
	if cr.results(holdTimeout) != 1 || cr.held() != 0 {
		t.Fatalf("timeouts %v, held %v", cr.results(holdTimeout), cr.held())
	}
	if n := cr.nodes["us-east"].hits.Load(); n != 0 {
		t.Fatalf("target hit %d times", n)
	}
}

// TestHoldOverflow: beyond the router's bound, a fenced write is answered at once while those
// already held stay held, and are released at the cutover.
func TestHoldOverflow(t *testing.T) {
	cr := newCutoverRig(t, func(c *Config) { c.Hold.Max = 2 })
	a := cr.send(t.Context(), "POST", "/v1/collections/c/records?n=1", tokEuco)
	cr.waitHeld(t, 1)
	b := cr.send(t.Context(), "POST", "/v1/collections/c/records?n=2", tokEuco)
	cr.waitHeld(t, 2)
	r := recv(t, cr.send(t.Context(), "POST", "/v1/collections/c/records?n=3", tokEuco))
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != "1" {
		t.Fatalf("excess write: status %d, Retry-After %q; want 503 and 1", r.status, r.header.Get("Retry-After"))
	}
	wantProblemType(t, []byte(r.body), "tenant-fenced")
	if cr.results(holdOverflow) != 1 || cr.held() != 2 {
		t.Fatalf("overflows %v, held %v; want 1 and 2", cr.results(holdOverflow), cr.held())
	}
	cr.cutover()
	for _, ch := range []<-chan result{a, b} {
		if r := recv(t, ch); r.status != http.StatusCreated {
			t.Fatalf("held write: status %d body %s", r.status, r.body)
		}
	}
	cr.mu.Lock()
	defer cr.mu.Unlock()
	got := slices.Sorted(slices.Values(cr.arrived)) // creates are released at once, in any order
	if strings.Join(got, ",") != "1,2" {
		t.Fatalf("target received %v, want 1 and 2 (not the overflowed 3)", cr.arrived)
	}
}

// TestHoldClientGone: a held write whose client goes away is dropped: it leaves the hold (and
// its tenant slot) at once and is never sent to the new home.
func TestHoldClientGone(t *testing.T) {
	cr := newCutoverRig(t, nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := cr.send(ctx, "DELETE", "/v1/collections/c/records/x", tokEuco)
	cr.waitHeld(t, 1)
	cancel()
	<-done
	cr.waitHeld(t, 0)
	testenv.WaitFor(t, 5*time.Second, func() error {
		if g := cr.results(holdGone); g != 1 {
			return fmt.Errorf("gone %v", g)
		}
		if n := cr.srv.lim.slots.inFlight("euco"); n != 0 {
			return fmt.Errorf("tenant holds %d slots", n)
		}
		return nil
	})
	cr.cutover()
	// A later write of the tenant goes to the new home at once (and finds no queue ahead).
	r := recv(t, cr.send(t.Context(), "POST", "/v1/collections/c/records?n=9", tokEuco))
	if r.status != http.StatusCreated {
		t.Fatalf("status %d body %s", r.status, r.body)
	}
	cr.mu.Lock()
	defer cr.mu.Unlock()
	if strings.Join(cr.arrived, ",") != "9" {
		t.Fatalf("target received %v, want only the later write", cr.arrived)
	}
}

// TestHoldNeverHoldsReads: a read answered 503 tenant-fenced is passed on at once.
func TestHoldNeverHoldsReads(t *testing.T) {
	cr := newCutoverRig(t, nil)
	cr.nodes["us-east"].handle = func(w http.ResponseWriter, r *http.Request) bool {
		problem.TenantFenced.WriteHTTP(w, "fenced", r.Header.Get(HeaderRequestID))
		return true
	}
	r := recv(t, cr.send(t.Context(), "GET", "/v1/collections/c/records/x", tokEuco))
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("status %d", r.status)
	}
	wantProblemType(t, []byte(r.body), "tenant-fenced")
	for _, res := range []holdResult{holdReleased, holdTimeout, holdOverflow, holdGone} {
		if n := cr.results(res); n != 0 {
			t.Fatalf("%s = %v for a read", res, n)
		}
	}
}

// TestHoldOtherTenantsUnaffected: while one tenant's writes are held, another tenant's writes
// to the same source node and to other nodes are answered at once.
func TestHoldOtherTenantsUnaffected(t *testing.T) {
	cr := newCutoverRig(t, nil)
	held := cr.send(t.Context(), "POST", "/v1/collections/c/records?n=1", tokEuco)
	cr.waitHeld(t, 1)
	r := recv(t, cr.send(t.Context(), "POST", "/v1/collections/c/records", "eubiz|u3|data:write"))
	if r.status != http.StatusOK || r.header.Get(HeaderServedRegion) != "eu-west" {
		t.Fatalf("other tenant on the source: status %d from %q", r.status, r.header.Get(HeaderServedRegion))
	}
	r = recv(t, cr.send(t.Context(), "POST", "/v1/collections/c/records?n=2", tokAcme))
	if r.status != http.StatusCreated {
		t.Fatalf("other tenant elsewhere: status %d", r.status)
	}
	if cr.held() != 1 {
		t.Fatalf("held %v, want 1", cr.held())
	}
	cr.cutover()
	if r := recv(t, held); r.status != http.StatusCreated {
		t.Fatalf("held write: status %d", r.status)
	}
}

// TestHoldExtendsDeadline: the time held does not count against the request deadline: a write
// held longer than the whole deadline still reaches its new home.
func TestHoldExtendsDeadline(t *testing.T) {
	cr := newCutoverRig(t, func(c *Config) { c.UpstreamTimeout = 200 * time.Millisecond })
	done := cr.send(t.Context(), "POST", "/v1/collections/c/records?n=1", tokEuco)
	cr.waitHeld(t, 1)
	time.Sleep(300 * time.Millisecond) // the hold outlasts the request deadline
	cr.cutover()
	if r := recv(t, done); r.status != http.StatusCreated {
		t.Fatalf("status %d body %s, want 201", r.status, r.body)
	}
}

// TestHoldReleasedWhenMoveEnds: a move that ends without a cutover (failed or cancelled, the
// source unfenced) releases the held writes to the source, where they now succeed.
func TestHoldReleasedWhenMoveEnds(t *testing.T) {
	cr := newCutoverRig(t, nil)
	done := cr.send(t.Context(), "POST", "/v1/collections/c/records", tokEuco)
	cr.waitHeld(t, 1)
	cr.nodes["eu-west"].mu.Lock()
	cr.nodes["eu-west"].handle = nil // unfenced
	cr.nodes["eu-west"].mu.Unlock()
	cr.m.set("euco", Route{Shard: "eu-west-1", HomeRegion: "eu-west", Pinned: true, Epoch: 2}, 7)
	if r := recv(t, done); r.status != http.StatusOK || r.header.Get(HeaderServedRegion) != "eu-west" {
		t.Fatalf("status %d from %q, want 200 from the source", r.status, r.header.Get(HeaderServedRegion))
	}
}

// TestHoldDisabled: with a negative Max the fenced answer is passed on as it came.
func TestHoldDisabled(t *testing.T) {
	cr := newCutoverRig(t, func(c *Config) { c.Hold.Max = -1 })
	r := recv(t, cr.send(t.Context(), "POST", "/v1/collections/c/records", tokEuco))
	if r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "writes are paused") {
		t.Fatalf("status %d body %s, want the node's own 503", r.status, r.body)
	}
}

// TestIsFencedPassesOtherAnswersWhole: a 503 that is not tenant-fenced, however long, reaches
// the client byte for byte.
func TestIsFencedPassesOtherAnswersWhole(t *testing.T) {
	for _, body := range []string{
		`{"type":"https://meridian.dev/problems/service-unavailable"}`,
		`{"type":"https://meridian.dev/problems/tenant-fenced"` + strings.Repeat(" ", maxProblemPeek) + `}`,
		"not json",
	} {
		resp := &http.Response{StatusCode: 503, Body: io.NopCloser(strings.NewReader(body))}
		if isFenced(resp) {
			t.Fatalf("%.60q read as fenced", body)
		}
		if b, _ := io.ReadAll(resp.Body); string(b) != body {
			t.Fatalf("body changed: %.60q", b)
		}
	}
}

// TestHoldReleasesRecordsAtOnce: held writes of different records (and creates) are resent
// without waiting for each other's answers — a slow answer for one record does not delay the
// others — while TestHoldReleasesInOrder keeps one record's writes in order.
func TestHoldReleasesRecordsAtOnce(t *testing.T) {
	for _, method := range []string{"PUT", "POST"} {
		t.Run(method, func(t *testing.T) {
			cr := newCutoverRig(t, nil)
			cr.slowFirst = true
			var done []<-chan result
			for i := 1; i <= 3; i++ {
				path := fmt.Sprintf("/v1/collections/c/records/x%d?n=%d", i, i)
				if method == "POST" {
					path = fmt.Sprintf("/v1/collections/c/records?n=%d", i)
				}
				done = append(done, cr.send(t.Context(), method, path, tokEuco))
				cr.waitHeld(t, i)
			}
			cr.cutover()
			for i, ch := range done {
				if r := recv(t, ch); r.status != http.StatusCreated || r.body != fmt.Sprintf(`{"n":"%d"}`, i+1) {
					t.Fatalf("write %d: status %d body %s", i+1, r.status, r.body)
				}
			}
			cr.mu.Lock()
			defer cr.mu.Unlock()
			if len(cr.arrived) != 3 || cr.overlap == 0 {
				t.Fatalf("target received %v with %d overlapping; want all three, sent while the first was still answering", cr.arrived, cr.overlap)
			}
		})
	}
}
