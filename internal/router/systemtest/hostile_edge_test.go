package systemtest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/daemon"
	"github.com/meridian-dev/meridian/internal/upstream"
)

// clientDeadline bounds every connection of these tests: a server that hangs fails the test
// instead of holding it. It is far above every timeout configured here (bodyTimeout).
const clientDeadline = 10 * time.Second

const bodyTimeout = 300 * time.Millisecond

// rawAnswer is one HTTP answer read off a raw connection.
type rawAnswer struct {
	status int
	header http.Header
	body   []byte
}

// exchange writes the raw requests on one new connection to addr (all at once: pipelined),
// reads one answer per request (skipping 1xx) and, if checkClosed, reports whether the server
// closed the connection afterwards. Every read is bounded by clientDeadline.
func exchange(t *testing.T, addr string, reqs []string, checkClosed bool) ([]rawAnswer, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(clientDeadline))
	if _, err := io.WriteString(c, strings.Join(reqs, "")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out []rawAnswer
	for _, raw := range reqs {
		method, _, _ := strings.Cut(raw, " ")
		var resp *http.Response
		for {
			resp, err = http.ReadResponse(br, &http.Request{Method: method})
			if err != nil {
				t.Fatalf("answer %d of %d: %v", len(out)+1, len(reqs), err)
			}
			if resp.StatusCode >= 200 {
				break
			}
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("answer %d body: %v", len(out)+1, err)
		}
		out = append(out, rawAnswer{resp.StatusCode, resp.Header, b})
	}
	if !checkClosed {
		return out, false
	}
	_, err = br.ReadByte()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", clientDeadline)
	}
	return out, err != nil // EOF or a reset: closed
}

// upstreamFailures scrapes a router's /metrics and returns the breaker failures and ejections it
// has counted for API nodes.
func upstreamFailures(t *testing.T, routerURL string) (failures, ejections float64) {
	t.Helper()
	resp, err := httpClient.Get(routerURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		var v float64
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		if _, err := fmt.Sscan(line[i+1:], &v); err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(line, "meridian_upstream_requests_total{") && strings.Contains(line, `outcome="failure"`):
			failures += v
		case strings.HasPrefix(line, "meridian_upstream_ejections_total{"):
			ejections += v
		}
	}
	return failures, ejections
}

// TestHostileEdge: slow, incomplete, chunked, pipelined, oversized and odd requests, sent to a
// real router and straight to a real API node (both with a 300 ms body timeout), get a 4xx or a
// well-formed success — never a 5xx, never a hang beyond the timeouts, never an ejection of the
// API node (its breaker opens at the first counted failure here).
func TestHostileEdge(t *testing.T) {
	c := newCluster(t, clusterOptions{failThresh: 1,
		httpLimits: daemon.HTTPLimits{BodyTimeout: bodyTimeout, MaxHeaderBytes: 8 << 10}})
	c.createTenant("us-east", "acme", "us-east")
	c.createTenant("us-east", "bystander", "us-east")
	tok := "Authorization: Bearer " + dataToken(t, "acme") + "\r\n"
	admin := "Authorization: Bearer " + adminToken(t) + "\r\n"
	router := strings.TrimPrefix(c.routers["us-east"].URL, "http://")
	node := c.apis["us-east"][0]

	const post = "POST /v1/collections/notes/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
	const bigHeader = "X-Big: %s\r\n"
	big := fmt.Sprintf(bigHeader, strings.Repeat("a", 20<<10))
	for _, tc := range []struct {
		name   string
		addr   string
		reqs   []string
		want   []int
		closed bool // the server must close the connection after the answers
		allow  string
		// plain: the answer is net/http's own (text/plain), not one of our problem documents
		plain bool
	}{
		// Slow and incomplete bodies: 408 once the body timeout passes (401 before it without a
		// valid token: the token is checked first), and the connection is closed.
		{name: "router: body stops short, with token", addr: router,
			reqs: []string{post + tok + "Content-Length: 100\r\n\r\n{\"data\":"}, want: []int{408}, closed: true},
		{name: "router: body stops short, no token", addr: router,
			reqs: []string{post + "Content-Length: 100\r\n\r\n{\"data\":"}, want: []int{401}, closed: true},
		{name: "router: body stops short, bad token", addr: router,
			reqs: []string{post + "Authorization: Bearer nope\r\nContent-Length: 100\r\n\r\n{"}, want: []int{401}, closed: true},
		{name: "router: chunked body stops", addr: router,
			reqs: []string{post + tok + "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"dat"}, want: []int{408}, closed: true},
		{name: "router: admin body stops short", addr: router,
			reqs: []string{"POST /admin/v1/tenants HTTP/1.1\r\nHost: x\r\n" + admin + "Content-Length: 50\r\n\r\n{"}, want: []int{408}, closed: true},
		{name: "router: expect-continue, no token", addr: router,
			reqs: []string{post + "Expect: 100-continue\r\nContent-Length: 11\r\n\r\n"}, want: []int{401}, closed: true},
		{name: "api node: body stops short", addr: node.addr,
			reqs: []string{post + tok + "Content-Length: 100\r\n\r\n{\"data\":"}, want: []int{408}, closed: true},
		{name: "api node: chunked body stops", addr: node.addr,
			reqs: []string{post + tok + "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"dat"}, want: []int{408}, closed: true},

		// Chunked bodies and pipelining work.
		{name: "router: chunked body", addr: router,
			reqs: []string{post + tok + "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"dat\r\n6\r\na\":{}}\r\n0\r\n\r\n"}, want: []int{201}},
		{name: "api node: chunked body", addr: node.addr,
			reqs: []string{post + tok + "Transfer-Encoding: chunked\r\n\r\n6\r\n{\"data\r\n5\r\n\":{}}\r\n0\r\n\r\n"}, want: []int{201}},
		{name: "router: pipelined", addr: router, reqs: []string{
			"PUT /v1/collections/notes/records/pipe-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + tok +
				"Transfer-Encoding: chunked\r\n\r\nb\r\n{\"data\":{}}\r\n0\r\n\r\n",
			"GET /v1/collections/notes/records/pipe-1 HTTP/1.1\r\nHost: x\r\n" + tok + "\r\n",
			"HEAD /v1/collections/notes/records/pipe-1 HTTP/1.1\r\nHost: x\r\n" + tok + "\r\n",
			"GET /v1/collections/notes/records?limit=1 HTTP/1.1\r\nHost: x\r\n" + tok + "\r\n",
		}, want: []int{201, 200, 200, 200}},
		{name: "api node: pipelined", addr: node.addr, reqs: []string{
			"GET /v1/collections/notes/records/pipe-1 HTTP/1.1\r\nHost: x\r\n" + tok + "\r\n",
			"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
			"GET /v1/collections/notes/records/nope HTTP/1.1\r\nHost: x\r\n" + tok + "\r\n",
		}, want: []int{200, 200, 404}},
		{name: "router: absolute-form target", addr: router,
			reqs: []string{"POST http://elsewhere.example/v1/collections/notes/records HTTP/1.1\r\nHost: elsewhere.example\r\n" +
				"Content-Type: application/json\r\n" + tok + "Content-Length: 11\r\n\r\n{\"data\":{}}"}, want: []int{201}},

		// Oversized and odd headers: net/http's own 431, 400 or 417.
		{name: "router: oversized headers", addr: router, plain: true, closed: true,
			reqs: []string{"GET /v1/collections/notes/records HTTP/1.1\r\nHost: x\r\n" + tok + big + "\r\n"}, want: []int{431}},
		{name: "api node: oversized headers", addr: node.addr, plain: true, closed: true,
			reqs: []string{"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + "\r\n"}, want: []int{431}},
		{name: "router: invalid header name", addr: router, plain: true, closed: true,
			reqs: []string{"GET /v1/collections/notes/records HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n" + tok + "\r\n"}, want: []int{400}},
		{name: "router: invalid Host", addr: router, plain: true, closed: true,
			reqs: []string{"GET /v1/collections/notes/records HTTP/1.1\r\nHost: a b\r\n" + tok + "\r\n"}, want: []int{400}},
		{name: "router: two Content-Lengths", addr: router, plain: true, closed: true,
			reqs: []string{post + tok + "Content-Length: 11\r\nContent-Length: 12\r\n\r\n{\"data\":{}}"}, want: []int{400}},
		{name: "router: unknown expectation", addr: router, plain: true,
			reqs: []string{post + tok + "Expect: teapot\r\nContent-Length: 11\r\n\r\n{\"data\":{}}"}, want: []int{417}},
		{name: "router: unknown method", addr: router, allow: "GET, HEAD, POST, PUT, PATCH, OPTIONS, DELETE, CONNECT, TRACE",
			reqs: []string{"BREW /v1/collections/notes/records HTTP/1.1\r\nHost: x\r\n" + tok + "\r\n"}, want: []int{405}},

		// Paths and methods: 404 without redirects, 405 with Allow, HEAD.
		{name: "router: trailing slash under /v1", addr: router,
			reqs: []string{"GET /v1/collections/notes/records/ HTTP/1.1\r\nHost: x\r\n" + tok + "\r\n"}, want: []int{404}},
		{name: "router: trailing slash under /admin", addr: router,
			reqs: []string{"GET /admin/v1/tenants/ HTTP/1.1\r\nHost: x\r\n" + admin + "\r\n"}, want: []int{404}},
		{name: "router: trailing slash, no token", addr: router,
			reqs: []string{"GET /healthz/ HTTP/1.1\r\nHost: x\r\n\r\n"}, want: []int{404}},
		{name: "api node: trailing slash", addr: node.addr,
			reqs: []string{"GET /v1/collections/notes/records/ HTTP/1.1\r\nHost: x\r\n" + tok + "\r\n"}, want: []int{404}},
		{name: "router: 405 on /healthz", addr: router, allow: "GET, HEAD",
			reqs: []string{"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n"}, want: []int{405}},
		{name: "router: 405 on /admin", addr: router, allow: "GET, HEAD, POST",
			reqs: []string{"DELETE /admin/v1/tenants HTTP/1.1\r\nHost: x\r\n" + admin + "\r\n"}, want: []int{405}},
		{name: "router: HEAD /admin", addr: router,
			reqs: []string{"HEAD /admin/v1/shardmap HTTP/1.1\r\nHost: x\r\n" + admin + "\r\n"}, want: []int{200}},
		{name: "api node: 405 on a collection", addr: node.addr, allow: "GET, HEAD, POST",
			reqs: []string{"DELETE /v1/collections/notes/records HTTP/1.1\r\nHost: x\r\n" + tok + "\r\n"}, want: []int{405}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			answers, closed := exchange(t, tc.addr, tc.reqs, tc.closed)
			for i, a := range answers {
				if a.status != tc.want[i] {
					t.Fatalf("answer %d: %d %s, want %d", i+1, a.status, a.body, tc.want[i])
				}
				if a.status >= 400 && !tc.plain {
					var p struct{ Status int }
					if ct := a.header.Get("Content-Type"); ct != "application/problem+json" ||
						json.Unmarshal(a.body, &p) != nil || p.Status != a.status {
						t.Fatalf("answer %d: %q %s, want a problem document", i+1, ct, a.body)
					}
				}
				if tc.allow != "" && a.header.Get("Allow") != tc.allow {
					t.Fatalf("answer %d: Allow %q, want %q", i+1, a.header.Get("Allow"), tc.allow)
				}
			}
			if tc.closed && !closed {
				t.Fatal("connection not closed")
			}
		})
	}

	// Expect: 100-continue from one tenant, many times, while another tenant's requests keep
	// succeeding. This used to answer 503 and eject the region's API node.
	t.Run("expect-continue", func(t *testing.T) {
		client := &http.Client{Timeout: clientDeadline, Transport: &http.Transport{ExpectContinueTimeout: clientDeadline}}
		defer client.CloseIdleConnections()
		acme, bystander := dataToken(t, "acme"), dataToken(t, "bystander")
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 10 {
					req, _ := http.NewRequest("POST", c.routers["us-east"].URL+"/v1/collections/notes/records",
						strings.NewReader(`{"data":{"n":1}}`))
					req.Header.Set("Authorization", "Bearer "+acme)
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("Expect", "100-continue")
					resp, err := client.Do(req)
					if err != nil {
						errs <- err
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 201 {
						errs <- fmt.Errorf("worker %d POST %d: %d %s", w, i, resp.StatusCode, b)
						return
					}
					a, err := send("GET", c.routers["us-east"].URL+"/v1/collections/notes/records?limit=1", bystander, "")
					if err != nil || a.status != 200 {
						errs <- fmt.Errorf("bystander's read: %d %s %v", a.status, a.body, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	// Nothing above counted against the API node.
	if st := c.routers["us-east"].Pool.State(node.url); st != upstream.Closed {
		t.Errorf("API node's breaker is %v", st)
	}
	if f, e := upstreamFailures(t, c.routers["us-east"].URL); f != 0 || e != 0 {
		t.Errorf("router counted %v failures and %v ejections of API nodes", f, e)
	}
}
