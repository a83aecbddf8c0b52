package router

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meridian-dev/meridian/internal/h1"
	"github.com/meridian-dev/meridian/internal/records"
)

// loopCount is the loop's request counter for path.
func loopCount(t *testing.T, l *Loop, path string) float64 {
	t.Helper()
	return testutil.ToFloat64(l.requests.WithLabelValues(path))
}

// rawExchange sends raw on a new connection to addr and reads one answer.
func rawExchange(t *testing.T, addr, raw string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	method := raw[:strings.IndexByte(raw, ' ')]
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b
}

// comparable is an answer without what differs between two answers of the same request (Date).
func answerText(resp *http.Response, body []byte) string {
	var keys []string
	for k := range resp.Header {
		if k != "Date" && k != "Ratelimit-Remaining" { // the second request has one less
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%d\n", resp.StatusCode)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %q\n", k, resp.Header[k])
	}
	fmt.Fprintf(&b, "\n%s", body)
	return b.String()
}

// hopText is the node's last request without what differs between two hops of the same
// request (the traceparent's span, the time left), and clears it.
func hopText(a *apiNode, traced bool) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.last
	a.last = nil
	if r == nil {
		return "(none)"
	}
	var keys []string
	for k := range r.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s host=%s len=%d\n", r.Method, r.RequestURI, r.Proto, r.Host, r.ContentLength)
	for _, k := range keys {
		v := r.Header[k]
		switch k {
		case "Traceparent":
			if len(v) == 1 && len(v[0]) == 55 {
				// The version, and the trace id when the client sent one: the span id is new per
				// hop, and so is the trace id of a request that came without one.
				v = []string{v[0][:3]}
				if traced {
					v = []string{r.Header["Traceparent"][0][:36]}
				}
			}
		case HeaderRequestTimeout:
			if len(v) == 1 && h1.Atoi([]byte(v[0])) > 0 {
				v = []string{"positive"}
			}
		}
		fmt.Fprintf(&b, "%s: %q\n", k, v)
	}
	return b.String()
}

// TestLoopAnswersAsNetHTTP sends the same requests to the router's net/http server and to its
// event-loop front and compares the answers, header by header (but Date) and byte by byte; the
// natively served ones must have been served on the loop, the others detached.
func TestLoopAnswersAsNetHTTP(t *testing.T) {
	rg := newRig(t, func(c *Config) {
		c.Limiter = &fakeLimiter{limit: 1000}
		c.Registry = prometheus.NewRegistry()
	})
	l := rg.loop
	if l == nil {
		l = startTestLoop(t, rg.srv)
	}
	netAddr := strings.TrimPrefix(rg.http.URL, "http://")
	if rg.loop != nil {
		netAddr = rg.http.Listener.Addr().String()
	}
	const rid = "X-Request-Id: req-1\r\n"
	cases := []struct {
		name   string
		raw    string
		native bool
	}{
		{"get", "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokAcme + "\r\n\r\n", true},
		{"get query", "GET /v1/collections/c/records?limit=2&after=b HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokAcme + "\r\n\r\n", true},
		{"head", "HEAD /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokAcme + "\r\n\r\n", true},
		{"home elsewhere", "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokEuco + "\r\n\r\n", true},
		{"no token", "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "\r\n", true},
		{"bad token", "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer nope\r\n\r\n", true},
		{"no scope", "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer acme|u1|data:write\r\n\r\n", true},
		{"close", "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "Connection: close\r\nAuthorization: Bearer " + tokAcme + "\r\n\r\n", true},
		{"traceparent and agent", "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nUser-Agent: curl/8\r\nAccept: a\r\nAccept: b\r\nX-Tenant-Epoch: 99\r\nX-Request-Timeout-Ms: 1\r\nAuthorization: Bearer " + tokAcme + "\r\n\r\n", true},
		{"empty agent", "GET /v1/collections/c/records/r1?x=%22a%22 HTTP/1.1\r\nHost: x:1\r\n" + rid + "User-Agent:\r\nAuthorization: Bearer " + tokAcme + "\r\n\r\n", true},
		{"path with sub-delims", "GET /v1/collections/c/records/a(b)*!$',;=:@ HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokAcme + "\r\n\r\n", true},
		{"path needing escapes", "GET /v1/collections/c/records/a\"b HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokAcme + "\r\n\r\n", false},
		{"hop headers", "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "Connection: X-Secret\r\nX-Secret: 1\r\nX-Forwarded-For: 10.0.0.9\r\nAuthorization: Bearer " + tokAcme + "\r\n\r\n", true},
		{"post", "POST /v1/collections/c/records HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokAcme + "\r\nContent-Length: 7\r\n\r\n{\"a\":1}", true},
		{"post home elsewhere with a key", "POST /v1/collections/c/records HTTP/1.1\r\nHost: x\r\n" + rid + "Idempotency-Key: k1\r\nAuthorization: Bearer " + tokEuco + "\r\nContent-Length: 2\r\n\r\n{}", true},
		{"put", "PUT /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokAcme + "\r\nContent-Length: 11\r\n\r\n{\"data\":{}}", true},
		{"patch empty", "PATCH /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokAcme + "\r\n\r\n", true},
		{"delete", "DELETE /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokAcme + "\r\n\r\n", true},
		{"post without token", "POST /v1/collections/c/records HTTP/1.1\r\nHost: x\r\n" + rid + "Content-Length: 2\r\n\r\n{}", true},
		{"post read scope", "POST /v1/collections/c/records HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer acme|u1|data:read\r\nContent-Length: 2\r\n\r\n{}", true},
		{"post chunked", "POST /v1/collections/c/records HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokAcme + "\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", false},
		{"http/1.0", "GET /v1/collections/c/records/r1 HTTP/1.0\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokAcme + "\r\n\r\n", false},
		{"admin", "GET /admin/v1/shardmap HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokAdmin + "\r\n\r\n", false},
		{"no host", "GET /v1/collections/c/records/r1 HTTP/1.1\r\n" + rid + "Authorization: Bearer " + tokAcme + "\r\n\r\n", false},
		{"dot segment", "GET /v1/collections/../records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "Authorization: Bearer " + tokAcme + "\r\n\r\n", false},
		{"bad header", "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n" + rid + "Bad Name: 1\r\nAuthorization: Bearer " + tokAcme + "\r\n\r\n", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			native, detached := loopCount(t, l, "native"), loopCount(t, l, "detached")
			hops := func(traced bool) string {
				return hopText(rg.nodes["us-east"], traced) + hopText(rg.nodes["eu-west"], traced)
			}
			hops(false) // clear
			wantResp, wantBody := rawExchange(t, netAddr, tc.raw)
			traced := strings.Contains(tc.raw, "Traceparent:")
			wantHop := hops(traced)
			gotResp, gotBody := rawExchange(t, l.Addr(), tc.raw)
			if gotHop := hops(traced); gotHop != wantHop {
				t.Errorf("the node got from net/http's path\n%s\nfrom the loop's\n%s", wantHop, gotHop)
			}
			if want, got := answerText(wantResp, wantBody), answerText(gotResp, gotBody); want != got {
				t.Errorf("net/http answered\n%s\nthe loop\n%s", want, got)
			}
			if tc.native && gotResp.Header.Get("Date") == "" {
				t.Error("the loop's answer has no Date")
			}
			dn, dd := loopCount(t, l, "native")-native, loopCount(t, l, "detached")-detached
			if tc.native && (dn != 1 || dd != 0) || !tc.native && (dn != 0 || dd != 1) {
				t.Errorf("native %v, detached %v; want native: %v", dn, dd, tc.native)
			}
		})
	}
}

// TestLoopKeepsConnectionsAndPipelines serves several requests on one connection, pipelined,
// native and detached mixed: each answered in order, the connection detached from the first
// request the loop does not serve on.
func TestLoopKeepsConnectionsAndPipelines(t *testing.T) {
	rg := newRig(t, func(c *Config) { c.Registry = prometheus.NewRegistry() })
	l := rg.loop
	if l == nil {
		l = startTestLoop(t, rg.srv)
	}
	get := func(id string) string {
		return "GET /v1/collections/c/records/" + id + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tokAcme + "\r\n\r\n"
	}
	// A chunked body is net/http's: the connection is detached from that request on.
	post := "POST /v1/collections/c/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tokAcme + "\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// One by one, then pipelined.
	br := bufio.NewReader(c)
	read := func(method, want string) {
		t.Helper()
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		if !strings.Contains(string(b), want) {
			t.Fatalf("answer %s, want it to contain %q", b, want)
		}
	}
	_, _ = io.WriteString(c, get("a1"))
	read("GET", "/v1/collections/c/records/a1")
	_, _ = io.WriteString(c, get("a2")+get("a3")+post+get("a4"))
	read("GET", "/v1/collections/c/records/a2")
	read("GET", "/v1/collections/c/records/a3")
	read("POST", `"method":"POST"`)
	read("GET", "/v1/collections/c/records/a4")
	if n, d := loopCount(t, l, "native"), loopCount(t, l, "detached"); n != 3 || d != 1 {
		t.Fatalf("native %v, detached %v; want 3 and 1 (a4 rides the detached connection)", n, d)
	}
}

// TestLoopRetriesAndFailures: a node gone before the answer is a transport failure the retry
// policy judges (another node of the region answers), and with no node left the same 503 as
// net/http's; an answer slower than the request deadline is 504.
func TestLoopRetriesAndFailures(t *testing.T) {
	rg := newRig(t, func(c *Config) {
		c.Registry = prometheus.NewRegistry()
		c.UpstreamTimeout = 300 * time.Millisecond
	})
	l := rg.loop
	if l == nil {
		l = startTestLoop(t, rg.srv)
	}
	req := "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\nX-Request-Id: r\r\nAuthorization: Bearer " + tokAcme + "\r\n\r\n"
	// A second us-east node that hangs up on every request: the first pick may be it.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	go func() {
		for {
			c, err := dead.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 4096)
			_, _ = c.Read(buf)
			_ = c.Close()
		}
	}()
	rg.ups.mu.Lock()
	rg.ups.nodes = append([]*fakeNode{{id: "us-east-dead", region: "us-east", url: "http://" + dead.Addr().String()}}, rg.ups.nodes...)
	rg.ups.mu.Unlock()
	for range 4 {
		resp, body := rawExchange(t, l.Addr(), req)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("with one live node: %d %s", resp.StatusCode, body)
		}
	}
	// Slow node: 504 at the deadline, as net/http's path answers.
	rg.nodes["us-east"].mu.Lock()
	rg.nodes["us-east"].handle = func(w http.ResponseWriter, r *http.Request) bool {
		time.Sleep(time.Second)
		return false
	}
	rg.nodes["us-east"].mu.Unlock()
	rg.ups.mu.Lock()
	rg.ups.nodes = rg.ups.nodes[1:]
	rg.ups.mu.Unlock()
	resp, body := rawExchange(t, l.Addr(), req)
	want, wantBody := rawExchange(t, rg.http.Listener.Addr().String(), req)
	if resp.StatusCode != http.StatusGatewayTimeout || answerText(resp, body) != answerText(want, wantBody) {
		t.Fatalf("slow node: loop %s\nnet/http %s", answerText(resp, body), answerText(want, wantBody))
	}
}

// TestLoopTimesOutSlowHeadsAndIdleConnections: the loop closes a connection whose request head
// is not complete within the HTTP server's ReadHeaderTimeout, and one idle longer than its
// IdleTimeout, as net/http does; a connection in use is left alone.
func TestLoopTimesOutSlowHeadsAndIdleConnections(t *testing.T) {
	rg := newRig(t, nil)
	hs := &http.Server{Handler: rg.srv.Handler(), ReadHeaderTimeout: 500 * time.Millisecond, IdleTimeout: time.Second}
	l, err := rg.srv.StartLoop(LoopConfig{Addr: "127.0.0.1:0", Loops: 1, HTTP: hs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Stop(t.Context()); _ = hs.Close() })
	closedWithin := func(c net.Conn, d time.Duration) bool {
		_ = c.SetReadDeadline(time.Now().Add(d))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF
	}
	slow, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	_, _ = io.WriteString(slow, "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\n")
	start := time.Now()
	if !closedWithin(slow, 3*time.Second) {
		t.Fatal("a head not complete within the header timeout: connection still open")
	}
	if el := time.Since(start); el < 400*time.Millisecond {
		t.Fatalf("closed after %v, before the header timeout", el)
	}
	idle, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	_, _ = io.WriteString(idle, "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+tokAcme+"\r\n\r\n")
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%v %v", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	start = time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: %v, want closed", err)
	}
	if el := time.Since(start); el < 800*time.Millisecond || el > 3*time.Second {
		t.Fatalf("idle connection closed after %v, want about the 1 s idle timeout", el)
	}
}

// noWaitEdge is a fakeEdge whose in-memory copy holds the entries of memory: RecordNoWait
// answers those (decided) and declines the rest, which Record then answers.
type noWaitEdge struct {
	*fakeEdge
	memory map[string]bool
	cold   map[string]bool // entries the copy lacks while it holds their tenant's state
	warmed []string        // Warm's calls, tenant/coll/id
}

func (f *noWaitEdge) RecordNoWait(tenant, shard string, epoch uint64, coll, id string) (records.Record, string, bool) {
	k := edgeKey(tenant, shard, epoch, coll, id)
	f.mu.Lock()
	inMemory, cold := f.memory[k], f.cold[k]
	f.mu.Unlock()
	if cold {
		return records.Record{}, edgeCold, true
	}
	if !inMemory {
		return records.Record{}, "", false
	}
	r, res := f.Record(context.Background(), tenant, shard, epoch, coll, id)
	return r, res, true
}

func (f *noWaitEdge) Warm(tenant, coll, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.warmed = append(f.warmed, tenant+"/"+coll+"/"+id)
}

func (f *noWaitEdge) warms() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.warmed...)
}

// TestLoopEdgeColdIsWarmedAfterTheNodesAnswer: an entry the router's copy lacks (its tenant's
// state it holds) is forwarded at once, without a lookup off the loop, and fetched into the
// copy after the node's 200 — before the client has the answer; a node's other answers warm
// nothing, and neither does a hit or a read the copy declined.
func TestLoopEdgeColdIsWarmedAfterTheNodesAnswer(t *testing.T) {
	edge := &noWaitEdge{fakeEdge: &fakeEdge{entries: map[string]records.Record{}, counted: map[string]int{}},
		memory: map[string]bool{}, cold: map[string]bool{}}
	rg := newRig(t, func(c *Config) { c.Edge = edge })
	l := rg.loop
	if l == nil {
		l = startTestLoop(t, rg.srv)
	}
	rg.m.set("acme", Route{Shard: "us-east-1", HomeRegion: "us-east", Epoch: 3}, 5)
	node := rg.nodes["us-east"]
	node.mu.Lock()
	node.handle = func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/gone") {
			w.WriteHeader(http.StatusNotFound)
			return true
		}
		return false
	}
	node.mu.Unlock()
	for _, id := range []string{"cold", "gone"} {
		edge.cold[edgeKey("acme", "us-east-1", 3, "c", id)] = true
	}
	for _, tc := range []struct {
		id     string
		status int
		warmed []string
	}{
		{"cold", 200, []string{"acme/c/cold"}},
		{"gone", 404, []string{"acme/c/cold"}},
		{"declined", 200, []string{"acme/c/cold"}}, // looked up off the loop: Record fetched it
	} {
		raw := "GET /v1/collections/c/records/" + tc.id + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tokAcme + "\r\n\r\n"
		hits, edges := node.hits.Load(), loopCount(t, l, "edge")
		resp, body := rawExchange(t, l.Addr(), raw)
		if resp.StatusCode != tc.status {
			t.Fatalf("%s: %d %s, want %d", tc.id, resp.StatusCode, body, tc.status)
		}
		if node.hits.Load() == hits {
			t.Errorf("%s: not forwarded to the node", tc.id)
		}
		wantOff := 0.0
		if tc.id == "declined" {
			wantOff = 1
		}
		if d := loopCount(t, l, "edge") - edges; d != wantOff {
			t.Errorf("%s: %v lookups off the loop, want %v", tc.id, d, wantOff)
		}
		if got := edge.warms(); !slices.Equal(got, tc.warmed) {
			t.Errorf("%s: warmed %q once the client had its answer, want %q", tc.id, got, tc.warmed)
		}
	}
}

// TestLoopEdge: a hit the edge's memory holds is answered on the loop, one it must fetch is
// looked up off the loop, and both answer as net/http's front does; a miss is forwarded.
func TestLoopEdge(t *testing.T) {
	edge := &noWaitEdge{fakeEdge: &fakeEdge{entries: map[string]records.Record{}, counted: map[string]int{}}, memory: map[string]bool{}}
	rg := newRig(t, func(c *Config) { c.Edge = edge })
	l := rg.loop
	if l == nil {
		l = startTestLoop(t, rg.srv)
	}
	netAddr := strings.TrimPrefix(rg.http.URL, "http://")
	if rg.loop != nil {
		netAddr = rg.http.Listener.Addr().String()
	}
	rg.m.set("acme", Route{Shard: "us-east-1", HomeRegion: "us-east", Epoch: 3}, 5)
	ts := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, id := range []string{"mem", "far"} {
		edge.entries[edgeKey("acme", "us-east-1", 3, "c", id)] = records.Record{ID: id, Collection: "c", Version: 2,
			CreatedAt: ts, UpdatedAt: ts, Data: json.RawMessage(`{"a":1}`)}
	}
	edge.memory[edgeKey("acme", "us-east-1", 3, "c", "mem")] = true
	node := rg.nodes["us-east"]
	for _, tc := range []struct {
		id       string
		offloop  float64
		fromNode bool
	}{{"mem", 0, false}, {"far", 1, false}, {"none", 1, true}} {
		raw := "GET /v1/collections/c/records/" + tc.id + " HTTP/1.1\r\nHost: x\r\nX-Request-Id: e1\r\nAuthorization: Bearer " + tokAcme + "\r\n\r\n"
		wantResp, wantBody := rawExchange(t, netAddr, raw)
		hits, edges := node.hits.Load(), loopCount(t, l, "edge")
		gotResp, gotBody := rawExchange(t, l.Addr(), raw)
		if want, got := answerText(wantResp, wantBody), answerText(gotResp, gotBody); want != got {
			t.Errorf("%s: net/http answered\n%s\nthe loop\n%s", tc.id, want, got)
		}
		if d := loopCount(t, l, "edge") - edges; d != tc.offloop {
			t.Errorf("%s: %v lookups off the loop, want %v", tc.id, d, tc.offloop)
		}
		if got := node.hits.Load() > hits; got != tc.fromNode {
			t.Errorf("%s: reached the node %v, want %v", tc.id, got, tc.fromNode)
		}
		if src := gotResp.Header.Get("X-Read-Source"); (src == "cache") == tc.fromNode {
			t.Errorf("%s: X-Read-Source %q", tc.id, src)
		}
	}
}

// TestSuiteOnTheLoop runs this package's tests again with every rig served through the
// event-loop front (MERIDIAN_TEST_LOOP: the rig's URL is its loop's), in a child process of
// this test binary: every guarantee the tests pin for the net/http front is checked for the
// loop too.
func TestSuiteOnTheLoop(t *testing.T) {
	if os.Getenv("MERIDIAN_TEST_LOOP") != "" {
		return // this is the child's run
	}
	cmd := exec.Command(os.Args[0], "-test.count=1", "-test.skip=^TestSuiteOnTheLoop$", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), "MERIDIAN_TEST_LOOP=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		lines := strings.Split(string(out), "\n")
		t.Fatalf("the tests against the event-loop front: %v\n%s", err, strings.Join(lines[max(0, len(lines)-80):], "\n"))
	}
	if !strings.Contains(string(out), "PASS") {
		t.Fatalf("the child run did not pass:\n%s", out)
	}
}

// FuzzParseNative: a head the loop serves natively is one net/http's server reads the same way
// — the same method, target, Host, URL path and query, and header fields — so the router's
// steps see on the loop what they see behind net/http. (A head the loop declines goes to
// net/http itself.)
func FuzzParseNative(f *testing.F) {
	for _, s := range []string{
		"GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n",
		"HEAD /v1/x?a=1&b HTTP/1.1\r\nHost: x:80\r\naccept: a\r\nAccept: b\r\nConnection: close\r\n\r\n",
		"GET /v1/x? HTTP/1.1\r\nHost: h\r\nX:  padded \t\r\n\r\n",
		"GET /v1/a(b)*!$',;=:@[] HTTP/1.1\r\nHost: h\r\nUser-Agent:\r\n\r\n",
		"GET /v1/x HTTP/1.1\r\nHost: h\r\n fold\r\n\r\n",
		"GET /v1/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"POST /v1/collections/c/records HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n",
		"PUT /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nIdempotency-Key: k\r\n\r\n",
		"DELETE /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
		"PATCH /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
		"POST /v1/x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	const priorHead = "PUT /v1/prior/(x)?q=1 HTTP/1.1\r\nHost: prior\r\nX-Prior: a\r\nX-Prior: b\r\n" +
		"Authorization: Bearer p\r\nAccept: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
	f.Fuzz(func(t *testing.T, raw []byte) {
		end := bytes.Index(raw, crlfcrlf)
		if end < 0 {
			return
		}
		head := raw[:end+4]
		// Parsed into what an earlier request of the connection was parsed into (the loop reuses
		// it): nothing of that one may show in this one.
		sc := new(nativeScratch)
		if _, _, _, ok := parseNative([]byte(priorHead), sc); !ok {
			t.Fatalf("parseNative refused %q", priorHead)
		}
		r, closeAfter, cl, ok := parseNative(head, sc)
		if !ok {
			return
		}
		want, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("parseNative took %q; net/http refuses it: %v", head, err)
		}
		if r.Method != want.Method || r.RequestURI != want.RequestURI || r.Host != want.Host ||
			r.URL.Path != want.URL.Path || r.URL.RawPath != want.URL.RawPath || r.URL.RawQuery != want.URL.RawQuery ||
			r.URL.RequestURI() != want.URL.RequestURI() || closeAfter != want.Close ||
			int64(cl) != want.ContentLength || r.ContentLength != want.ContentLength {
			t.Fatalf("%q: loop %s %s host %q path %q query %q close %v; net/http %s %s host %q path %q query %q close %v",
				head, r.Method, r.RequestURI, r.Host, r.URL.Path, r.URL.RawQuery, closeAfter,
				want.Method, want.RequestURI, want.Host, want.URL.Path, want.URL.RawQuery, want.Close)
		}
		delete(want.Header, "Host") // net/http keeps Host out of the header; the loop's has it
		got := r.Header.Clone()
		delete(got, "Host")
		if fmt.Sprint(got) != fmt.Sprint(want.Header) {
			t.Fatalf("%q: loop's header %v, net/http's %v", head, got, want.Header)
		}
	})
}

// TestLoopCutsOffFloodingClients: a client that sends far more than its next request ahead of
// the answers (pipelined requests it never reads the answers of) is cut off, and another
// client is served meanwhile.
func TestLoopCutsOffFloodingClients(t *testing.T) {
	l, flood := dialLoop(t, newRig(t, nil), time.Minute) // its own deadlines below
	req := getRecordHead("r1")
	chunk := []byte(strings.Repeat(req, 1000))
	var sent int
	_ = flood.SetWriteDeadline(time.Now().Add(10 * time.Second))
	for sent < 2*l.maxQueued {
		n, err := flood.Write(chunk)
		sent += n
		if err != nil {
			break // cut off (or the kernel's buffers full and the deadline passed)
		}
	}
	resp, body := rawExchange(t, l.Addr(), req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("another client: %d %s", resp.StatusCode, body)
	}
	_ = flood.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, flood); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the flooding connection: %v, want it closed by the loop", err)
	}
}

// TestLoopShutdownDrains: Shutdown lets a request in flight finish — its answer says
// Connection: close and the connection closes after it — closes idle connections, refuses new
// ones, and returns once none is left.
func TestLoopShutdownDrains(t *testing.T) {
	rg := newRig(t, nil)
	hs := &http.Server{Handler: rg.srv.Handler()}
	l, err := rg.srv.StartLoop(LoopConfig{Addr: "127.0.0.1:0", Loops: 1, HTTP: hs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Stop(context.Background()); _ = hs.Close() })
	node := rg.nodes["us-east"]
	node.mu.Lock()
	node.handle = func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/slow") {
			time.Sleep(400 * time.Millisecond)
		}
		return false
	}
	node.mu.Unlock()
	req := getRecordHead
	idle, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if resp, _ := exchangeOn(t, idle, req("a")); resp.StatusCode != http.StatusOK {
		t.Fatalf("before shutdown: %d", resp.StatusCode)
	}
	busy, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, _ = io.WriteString(busy, req("slow"))
	time.Sleep(100 * time.Millisecond) // the slow request is in flight
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- l.Shutdown(ctx)
	}()
	resp, err := http.ReadResponse(bufio.NewReader(busy), &http.Request{Method: "GET"})
	if err != nil || resp.StatusCode != http.StatusOK || !resp.Close {
		t.Fatalf("the request in flight: %v %v, want 200 with Connection: close", resp, err)
	}
	_ = idle.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Fatal("the idle connection is still open")
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("Shutdown took %v", el)
	}
	if c, err := net.DialTimeout("tcp", l.Addr(), time.Second); err == nil {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = io.WriteString(c, req("late"))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("a connection after Shutdown was served")
		}
		c.Close()
	}
}

// getRecordHead is a record GET's head for the rig's tenant acme.
func getRecordHead(id string) string {
	return "GET /v1/collections/c/records/" + id + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tokAcme + "\r\n\r\n"
}

// dialLoop is a connection to the rig's event-loop front (started for the test when the suite
// does not run against it), with a deadline.
func dialLoop(t *testing.T, rg *rig, deadline time.Duration) (*Loop, net.Conn) {
	t.Helper()
	l := rg.loop
	if l == nil {
		l = startTestLoop(t, rg.srv)
	}
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(deadline))
	return l, c
}

// exchangeOn sends raw on c and reads one answer.
func exchangeOn(t *testing.T, c net.Conn, raw string) (*http.Response, []byte) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b
}

// TestLoopDetachesABodyOnItsWay: a body that has not all come with its head is net/http's (its
// body deadline, its 408): the connection is detached, and the write answered once the rest
// arrives.
func TestLoopDetachesABodyOnItsWay(t *testing.T) {
	l, c := dialLoop(t, newRig(t, nil), 10*time.Second)
	detached := loopCount(t, l, "detached")
	_, _ = io.WriteString(c, "POST /v1/collections/c/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+tokAcme+"\r\nContent-Length: 11\r\n\r\n{\"data\"")
	time.Sleep(50 * time.Millisecond)
	_, _ = io.WriteString(c, ":{}}")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "POST"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"body":"{\"data\":{}}"`) {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	if d := loopCount(t, l, "detached") - detached; d != 1 {
		t.Fatalf("detached %v, want 1", d)
	}
}

// TestLoopSharesHopConnections: a loop's connections to an API node are its own, not one
// client connection's: clients that come one after another reuse one hop connection.
func TestLoopSharesHopConnections(t *testing.T) {
	rg := newRig(t, nil)
	var conns atomic.Int64
	node := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	node.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	node.Start()
	defer node.Close()
	rg.ups.mu.Lock()
	for _, n := range rg.ups.nodes {
		if n.region == "us-east" {
			n.url = node.URL
		}
	}
	rg.ups.mu.Unlock()
	hs := &http.Server{Handler: rg.srv.Handler()}
	l, err := rg.srv.StartLoop(LoopConfig{Addr: "127.0.0.1:0", Loops: 1, HTTP: hs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Stop(context.Background()); _ = hs.Close() })
	for i := range 5 {
		resp, body := rawExchange(t, l.Addr(), "GET /v1/collections/c/records/r"+strconv.Itoa(i)+" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+tokAcme+"\r\n\r\n")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("the node saw %d connections for 5 clients one after another, want 1", n)
	}
}

// TestLoopRebindsItsPortAfterARestart: a router restarted on its loop port binds it again while
// connections its predecessor closed still wait out TIME_WAIT on that port (SO_REUSEADDR, as
// net.Listen sets it); without it the restarted router exited with "address already in use"
// for a minute after each kill (found by the fault suite's router kills).
func TestLoopRebindsItsPortAfterARestart(t *testing.T) {
	rg := newRig(t, nil)
	hs := &http.Server{Handler: rg.srv.Handler(), ReadHeaderTimeout: 5 * time.Second}
	defer hs.Close()
	first, err := rg.srv.StartLoop(LoopConfig{Addr: "127.0.0.1:0", Loops: 1, HTTP: hs})
	if err != nil {
		t.Fatal(err)
	}
	addr := first.Addr()
	// The loop closes first (Connection: close), so the TIME_WAIT is on its port.
	resp, _ := rawExchange(t, addr, "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "+tokAcme+"\r\n\r\n")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("first loop: %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := first.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	second, err := rg.srv.StartLoop(LoopConfig{Addr: addr, Loops: 1, HTTP: hs})
	if err != nil {
		t.Fatalf("restart on %s: %v", addr, err)
	}
	defer func() { _ = second.Stop(ctx) }()
	if resp, _ := rawExchange(t, addr, "GET /v1/collections/c/records/r1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+tokAcme+"\r\n\r\n"); resp.StatusCode != http.StatusOK {
		t.Fatalf("restarted loop: %d", resp.StatusCode)
	}
}

// TestListenLoopServesWhatWaited: a front bound by ListenLoop accepts connections before it
// serves, and answers nothing on them; Serve then answers what they sent, in order, and counts
// them as connections; a second Serve is refused. A front never served stops, and drains (an
// idle connection closed), without hanging.
func TestListenLoopServesWhatWaited(t *testing.T) {
	rg := newRig(t, nil)
	l, err := ListenLoop("127.0.0.1:0", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Stop(context.Background()) })
	req := getRecordHead
	early, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	if _, err := io.WriteString(early, req("a")+req("b")); err != nil {
		t.Fatal(err)
	}
	_ = early.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := early.Read(make([]byte, 1)); n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("before Serve: read %d bytes, %v; want nothing until the deadline", n, err)
	}

	hs := &http.Server{Handler: rg.srv.Handler()}
	t.Cleanup(func() { _ = hs.Close() })
	if err := l.Serve(rg.srv, hs); err != nil {
		t.Fatal(err)
	}
	_ = early.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(early)
	for _, id := range []string{"a", "b"} {
		resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("%s after Serve: %v", id, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`/records/`+id+`"`)) {
			t.Fatalf("%s after Serve: %d %s", id, resp.StatusCode, body)
		}
	}
	if n := loopCount(t, l, "native"); n != 2 {
		t.Errorf("native requests %v, want 2", n)
	}
	if g := testutil.ToFloat64(l.connections); g != 1 {
		t.Errorf("connections gauge %v with the early connection open, want 1", g)
	}
	if resp, _ := rawExchange(t, l.Addr(), req("c")); resp.StatusCode != http.StatusOK {
		t.Errorf("a connection after Serve: %d", resp.StatusCode)
	}
	early.Close()
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(l.connections) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := testutil.ToFloat64(l.connections); g != 0 {
		t.Errorf("connections gauge %v with every connection closed, want 0", g)
	}
	if err := l.Serve(rg.srv, hs); err == nil {
		t.Error("a second Serve was accepted")
	}

	// Never served: Shutdown closes an idle connection and returns; the port is released.
	unserved, err := ListenLoop("127.0.0.1:0", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	idle, err := net.Dial("tcp", unserved.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	time.Sleep(50 * time.Millisecond) // the loop has taken it
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := unserved.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown of a front never served: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Shutdown of a front never served took %v", el)
	}
	_ = idle.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the idle connection of a front never served: %v, want it closed", err)
	}
	select {
	case <-unserved.Exited():
	case <-time.After(5 * time.Second):
		t.Error("Exited not closed after Shutdown")
	}
}
