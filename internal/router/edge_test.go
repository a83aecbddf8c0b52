package router

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// failures returns the failures the fake breaker of node id has counted.
func (rg *rig) failures(id string) int {
	rg.ups.mu.Lock()
	defer rg.ups.mu.Unlock()
	for _, n := range rg.ups.nodes {
		if n.id == id {
			return n.failures
		}
	}
	return -1
}

// TestProxyExpectContinue: a POST with Expect: 100-continue is answered by the API node (the
// router holds the body and does not forward Expect) and never counts against the node. Before
// the fix the hop refused the Expect header and every such POST was a 503 and a breaker failure.
func TestProxyExpectContinue(t *testing.T) {
	rg := newRig(t, nil)
	for i := range 10 {
		req, _ := http.NewRequest("POST", rg.http.URL+"/v1/collections/c/records", strings.NewReader(`{"data":{}}`))
		req.Header.Set("Authorization", "Bearer "+tokAcme)
		req.Header.Set("Expect", "100-continue")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantStatus(t, resp, b, 200)
		if i == 0 {
			last, body := rg.nodes["us-east"].lastRequest()
			if last.Header.Get("Expect") != "" || string(body) != `{"data":{}}` {
				t.Fatalf("API node got Expect %q and body %q", last.Header.Get("Expect"), body)
			}
		}
	}
	if n := rg.failures("us-east-a"); n != 0 {
		t.Fatalf("node counted %d failures", n)
	}
}

// TestProxyAuthenticatesBeforeBody: a request without a valid token is answered 401 while its
// body has not been sent; before the fix the router waited for the body first.
func TestProxyAuthenticatesBeforeBody(t *testing.T) {
	rg := newRig(t, nil)
	for _, tok := range []string{"", "not-a-token"} {
		pr, pw := io.Pipe() // never written: the body never arrives
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "POST", rg.http.URL+"/v1/collections/c/records", pr)
		req.ContentLength = 100
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("token %q: %v (the router waited for the body)", tok, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantStatus(t, resp, b, 401)
		if strings.Contains(string(b), "malformed") {
			t.Fatalf("401 carries the verifier's text: %s", b)
		}
		pw.Close()
		cancel()
	}
}

// TestEarlyAnswerClosesConnection: a request answered before its body (a 401 here) gets its
// answer and then the connection closes at once, instead of the server reading and discarding a
// body that never comes until a read deadline (the body timeout) ends it. The rig's server has no
// body timeout at all, so without the fix the read below runs into the client's own deadline.
func TestEarlyAnswerClosesConnection(t *testing.T) {
	rg := newRig(t, nil)
	conn, err := net.Dial("tcp", strings.TrimPrefix(rg.http.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "POST /v1/collections/c/records HTTP/1.1\r\nHost: x\r\n"+
		"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	wantStatus(t, resp, b, 401)
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the early answer the connection is still open (read: %v)", err)
	}
}

// TestProxyFailureRule: the node's own server errors count against its breaker; 503 and 504
// answers, a 4xx and a client that goes away do not.
func TestProxyFailureRule(t *testing.T) {
	rg := newRig(t, func(c *Config) { c.Retry.MaxRetries = -1 })
	node := rg.nodes["us-east"]
	release := make(chan struct{})
	node.handle = func(w http.ResponseWriter, r *http.Request) bool {
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		if code == 0 { // hang until the client is gone
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return true
		}
		w.WriteHeader(code)
		return true
	}
	defer close(release)
	for _, tc := range []struct {
		code  int
		count bool
	}{{500, true}, {502, true}, {503, false}, {504, false}, {400, false}, {404, false}, {200, false}} {
		before := rg.failures("us-east-a")
		resp, b := rg.do(t, "GET", "/v1/collections/c/records/x?code="+strconv.Itoa(tc.code), tokAcme, "")
		if resp.StatusCode != tc.code {
			t.Fatalf("status %d, want the node's %d (%s)", resp.StatusCode, tc.code, b)
		}
		if got := rg.failures("us-east-a") - before; (got == 1) != tc.count || got > 1 {
			t.Errorf("answer %d: %d failures counted, want counted=%v", tc.code, got, tc.count)
		}
	}
	t.Run("client goes away", func(t *testing.T) {
		before := rg.failures("us-east-a")
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", rg.http.URL+"/v1/collections/c/records/x?code=0", nil)
		req.Header.Set("Authorization", "Bearer "+tokAcme)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		testenv.WaitFor(t, 5*time.Second, func() error {
			if node.hits.Load() == 0 {
				return errors.New("request not at the node yet")
			}
			rg.ups.mu.Lock()
			defer rg.ups.mu.Unlock()
			if rg.ups.nodes[0].inFlight == 0 {
				return errors.New("not in flight")
			}
			return nil
		})
		cancel()
		<-done
		testenv.WaitFor(t, 5*time.Second, func() error {
			rg.ups.mu.Lock()
			defer rg.ups.mu.Unlock()
			if rg.ups.nodes[0].inFlight != 0 {
				return errors.New("slot not released")
			}
			return nil
		})
		if got := rg.failures("us-east-a") - before; got != 0 {
			t.Fatalf("a client that went away counted %d failures against the node", got)
		}
	})
}

// TestProxyForwardsDeadline: the API node is told the time the router will still wait, never
// the client's own value, and never more than UpstreamTimeout.
func TestProxyForwardsDeadline(t *testing.T) {
	rg := newRig(t, func(c *Config) { c.UpstreamTimeout = 3 * time.Second })
	resp, b := rg.do(t, "GET", "/v1/collections/c/records/x", tokAcme, "", HeaderRequestTimeout, "999999")
	wantStatus(t, resp, b, 200)
	last, _ := rg.nodes["us-east"].lastRequest()
	ms, err := strconv.Atoi(last.Header.Get(HeaderRequestTimeout))
	if err != nil || ms <= 0 || ms > 3000 {
		t.Fatalf("%s = %q, want 1..3000 ms", HeaderRequestTimeout, last.Header.Get(HeaderRequestTimeout))
	}
}

// TestRouterRoutesAndMethods: unknown paths (with or without a trailing slash) are 404, known
// paths with another method 405 with Allow, GET routes answer HEAD, all without redirects.
func TestRouterRoutesAndMethods(t *testing.T) {
	rg := newRig(t, nil)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct {
		method, path string
		tok          string
		want         int
		allow        string
	}{
		{"GET", "/healthz/", "", 404, ""},
		{"GET", "/nope", "", 404, ""},
		{"GET", "/admin/v1/tenants/", tokAdmin, 404, ""},
		{"GET", "/admin/v1/shardmap/", tokAdmin, 404, ""},
		{"POST", "/healthz", "", 405, "GET, HEAD"},
		{"DELETE", "/admin/v1/tenants", tokAdmin, 405, "GET, HEAD, POST"},
		{"GET", "/admin/v1/moves/mv-1/cancel", tokAdmin, 405, "POST"},
		{"DELETE", "/admin/v1/shardmap", tokAdmin, 405, "GET, HEAD"},
		{"HEAD", "/healthz", "", 200, ""},
		{"HEAD", "/admin/v1/shardmap", tokAdmin, 200, ""},
		{"HEAD", "/v1/collections/c/records/x", tokAcme, 200, ""},
	} {
		req, _ := http.NewRequest(tc.method, rg.http.URL+tc.path, nil)
		if tc.tok != "" {
			req.Header.Set("Authorization", "Bearer "+tc.tok)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d (%s)", tc.method, tc.path, resp.StatusCode, tc.want, b)
			continue
		}
		if tc.want >= 400 && resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s %s: Content-Type %q", tc.method, tc.path, resp.Header.Get("Content-Type"))
		}
		if tc.allow != "" && resp.Header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, resp.Header.Get("Allow"), tc.allow)
		}
	}
}

// TestProxyChunkedAndPipelined: a chunked body is forwarded whole with a Content-Length, and
// requests pipelined on one connection are each answered in order.
func TestProxyChunkedAndPipelined(t *testing.T) {
	rg := newRig(t, nil)
	c, err := net.Dial("tcp", strings.TrimPrefix(rg.http.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	auth := "Authorization: Bearer " + tokAcme + "\r\n"
	reqs := "POST /v1/collections/c/records HTTP/1.1\r\nHost: x\r\n" + auth +
		"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"dat\r\n6\r\na\":{}}\r\n0\r\n\r\n" +
		"GET /v1/collections/c/records/one HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n" +
		"GET /v1/collections/c/records/two HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n"
	if _, err := io.WriteString(c, reqs); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for _, want := range []string{`"body":"{\"data\":{}}"`, "/records/one", "/records/two"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("waiting for the answer with %s: %v", want, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Fatalf("answer %d %s, want 200 with %s", resp.StatusCode, b, want)
		}
	}
}
