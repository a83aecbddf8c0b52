package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/strictjson"
	"github.com/meridian-dev/meridian/internal/testenv"
)

// received is what the recording server saw of one request.
type received struct {
	method, path, rawQuery string
	header                 http.Header
	contentLength          int64
	body                   []byte
	bodyErr                error
}

// recorder is a net/http server that records every request it parses. A request whose path
// ends in "/slow" or with a body that stalls is read for at most readFor, then answered 408
// (problem+json) with Connection: close; a complete body is answered 201, a GET 200.
type recorder struct {
	mu   sync.Mutex
	seen []received
	// entered counts requests whose handler started (before reading the body).
	entered atomic.Int64
	srv     *httptest.Server
}

func newRecorder(t *testing.T, readFor time.Duration) *recorder {
	t.Helper()
	rec := &recorder{}
	rec.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.entered.Add(1)
		got := received{method: r.Method, path: r.URL.Path, rawQuery: r.URL.RawQuery, header: r.Header.Clone(),
			contentLength: r.ContentLength}
		if r.ContentLength > 0 {
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(readFor))
			got.body, got.bodyErr = io.ReadAll(r.Body)
		}
		rec.mu.Lock()
		rec.seen = append(rec.seen, got)
		rec.mu.Unlock()
		switch {
		case got.bodyErr != nil:
			w.Header().Set("Content-Type", "application/problem+json")
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusRequestTimeout)
			io.WriteString(w, `{"type":"https://meridian.dev/problems/request-timeout","status":408}`)
		case r.Method == http.MethodPost:
			w.WriteHeader(http.StatusCreated)
		default:
			w.WriteHeader(http.StatusOK)
		}
	}))
	rec.srv.Config.MaxHeaderBytes = 64 << 10 // the routers' default
	rec.srv.Start()
	t.Cleanup(rec.srv.Close)
	return rec
}

func (rec *recorder) last(t *testing.T) received {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.seen) == 0 {
		t.Fatal("the server parsed no request")
	}
	return rec.seen[len(rec.seen)-1]
}

func (rec *recorder) count() int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return len(rec.seen)
}

// TestHostileKindsOnTheWire sends every kind of the hostile mix to a real net/http server and
// checks that what the server parsed is what the kind claims to be.
func TestHostileKindsOnTheWire(t *testing.T) {
	rec := newRecorder(t, time.Second)
	host := strings.TrimPrefix(rec.srv.URL, "http://")
	now := time.Now()
	valid, _ := mintToken([]byte(testSecret), "evil", time.Hour, now)
	wrong, _ := mintToken([]byte("other"), "evil", time.Hour, now)
	expired, _ := mintToken([]byte(testSecret), "evil", time.Hour, now.Add(-3*time.Hour))
	v, err := auth.NewVerifier(auth.Config{Secret: []byte(testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	verifies := func(h http.Header) bool {
		tok, err := auth.BearerToken(h.Get("Authorization"))
		if err != nil {
			return false
		}
		cl, err := v.Verify(tok)
		return err == nil && cl.Tenant == "evil"
	}
	list := "/v1/collections/" + collection + "/records"
	kinds := hostileKinds(host, hostileTokens{valid: valid, wrongSecret: wrong, expired: expired})
	var names []string
	for _, k := range kinds {
		names = append(names, k.name)
	}
	if got := strings.Join(names, ","); got != "bad-token,malformed-json,malformed-query,rejected-value,expect-continue,oversized-header,slow-body,stalled-body" {
		t.Fatalf("kinds %s", got)
	}
	// Every variant of a kind: the builders cycle through at most four by seq.
	for _, k := range kinds {
		for seq := range uint64(4) {
			t.Run(fmt.Sprintf("%s/%d", k.name, seq), func(t *testing.T) {
				before := rec.count()
				res := doRaw(t.Context(), host, k.build(seq), 10*time.Second)
				if res.err != nil && res.status == 0 {
					t.Fatalf("no answer: %v", res.err)
				}
				if k.name == "oversized-header" {
					// net/http refuses it before any handler, as the router does.
					if res.status != http.StatusRequestHeaderFieldsTooLarge || rec.count() != before {
						t.Fatalf("status %d, %d requests parsed; want 431 and none", res.status, rec.count()-before)
					}
					return
				}
				if rec.count() != before+1 {
					t.Fatalf("the server parsed %d requests, want 1", rec.count()-before)
				}
				got := rec.last(t)
				q, qerr := url.ParseQuery(got.rawQuery)
				switch k.name {
				case "bad-token":
					if got.method != http.MethodGet || got.path != list+"/x" || verifies(got.header) ||
						!strings.HasPrefix(got.header.Get("Authorization"), "Bearer ") {
						t.Errorf("got %s %s with Authorization %q: want a GET with a bearer token that does not verify",
							got.method, got.path, got.header.Get("Authorization"))
					}
				case "malformed-json":
					var body struct {
						Data map[string]any `json:"data"`
					}
					if got.method != http.MethodPost || !verifies(got.header) || int64(len(got.body)) != got.contentLength ||
						strictjson.Decode(got.body, &body) == nil {
						t.Errorf("got %s, body %q: want a POST with a valid token and a body strict JSON refuses", got.method, got.body)
					}
				case "malformed-query":
					if got.method != http.MethodGet || got.path != list || !verifies(got.header) ||
						(qerr == nil && q.Get("limit") != "0") {
						t.Errorf("got %s %s?%s: want a list GET whose query does not parse or asks limit=0", got.method, got.path, got.rawQuery)
					}
				case "rejected-value":
					w := q.Get("where[owner]") + q.Get("where[n]")
					if got.method != http.MethodGet || got.path != list || !verifies(got.header) || qerr != nil ||
						(w != `"\u0000"` && w != "1e999999999") {
						t.Errorf("got %s %s?%s: want a list GET filtering on a JSON string of U+0000 or 1e999999999", got.method, got.path, got.rawQuery)
					}
				case "expect-continue":
					var body struct {
						Data map[string]any `json:"data"`
					}
					if got.method != http.MethodPost || got.header.Get("Expect") != "100-continue" || !verifies(got.header) ||
						strictjson.Decode(got.body, &body) != nil || res.status != http.StatusCreated {
						t.Errorf("got %s Expect %q body %q answered %d: want a valid POST with Expect: 100-continue, "+
							"its body sent after the 100", got.method, got.header.Get("Expect"), got.body, res.status)
					}
				case "slow-body", "stalled-body":
					// The server read for a second: the body is announced whole, never completed.
					n := len(got.body)
					if got.method != http.MethodPost || !verifies(got.header) || got.contentLength != slowBodyLen ||
						got.bodyErr == nil || n < slowBodyFirst || n >= slowBodyLen || (k.name == "stalled-body" && n != slowBodyFirst) {
						t.Errorf("got %s, Content-Length %d, %d body bytes (err %v)", got.method, got.contentLength, n, got.bodyErr)
					}
					if res.key() != "408 request-timeout" || !res.closed || res.closedAt < res.answered {
						t.Errorf("result %+v: want 408 request-timeout and the connection closed after it", res)
					}
				default:
					t.Fatalf("no check for kind %s", k.name)
				}
			})
		}
	}
}

// TestWaveRequest checks the slow-body waves' requests: headers with a Content-Length, part of
// the body, the rest dripped (even connections) or never sent (odd), a token only when given.
func TestWaveRequest(t *testing.T) {
	rec := newRecorder(t, 500*time.Millisecond)
	host := strings.TrimPrefix(rec.srv.URL, "http://")
	for i, token := range []string{"", "tok", "", "tok"} {
		r := waveRequest(host, token, i)
		if (r.drip > 0) != (i%2 == 0) || r.first != waveBodyFirst || len(r.body) != waveBodyLen {
			t.Errorf("%d: drip %s first %d body %d", i, r.drip, r.first, len(r.body))
		}
		res := doRaw(t.Context(), host, r, 10*time.Second)
		got := rec.last(t)
		if got.method != http.MethodPost || got.contentLength != waveBodyLen || got.bodyErr == nil ||
			len(got.body) < waveBodyFirst || len(got.body) >= waveBodyLen {
			t.Errorf("%d: got %s Content-Length %d, %d body bytes, err %v", i, got.method, got.contentLength, len(got.body), got.bodyErr)
		}
		if (got.header.Get("Authorization") == "Bearer tok") != (token != "") || (token == "" && got.header.Get("Authorization") != "") {
			t.Errorf("%d: Authorization %q with token %q", i, got.header.Get("Authorization"), token)
		}
		if res.status != http.StatusRequestTimeout || !res.closed {
			t.Errorf("%d: result %+v", i, res)
		}
	}
}

// TestDoRawCancelled checks that ending the context ends a stalled request at once.
func TestDoRawCancelled(t *testing.T) {
	rec := newRecorder(t, time.Hour)
	host := strings.TrimPrefix(rec.srv.URL, "http://")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan rawResult, 1)
	go func() { done <- doRaw(ctx, host, waveRequest(host, "", 1), time.Hour) }()
	testenv.WaitFor(t, 10*time.Second, func() error {
		if rec.entered.Load() == 0 {
			return errors.New("the server has not seen the request")
		}
		return nil
	})
	cancel()
	res := <-done
	if res.status != 0 || res.err == nil {
		t.Errorf("result %+v, want no answer and an error", res)
	}
}

func TestParseVmRSS(t *testing.T) {
	for in, want := range map[string]int64{
		"Name:\trouter\nVmPeak:\t  9000 kB\nVmRSS:\t   20480 kB\nRssAnon:\t 1 kB\n": 20480 << 10,
		"Name:\tkthreadd\n":    -1,
		"VmRSS:\t 12 MB\n":     -1,
		"VmRSS:\t twelve kB\n": -1,
	} {
		if got := parseVmRSS(strings.NewReader(in)); got != want {
			t.Errorf("parseVmRSS(%q) = %d, want %d", in, got, want)
		}
	}
	if got := readRSS(os.Getpid()); got <= 0 {
		t.Errorf("readRSS(self) = %d", got)
	}
	if readRSS(0) != -1 {
		t.Error("readRSS(0) should be unknown")
	}
}

func TestListensOn(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"router", "-region", "us-east", "-listen", "127.0.0.1:20000"}, true},
		{[]string{"router", "--listen=127.0.0.1:20000"}, true},
		{[]string{"router", "-listen", "127.0.0.1:21000"}, false},
		{[]string{"router", "-raft-addr", "127.0.0.1:20000"}, false},
		{[]string{"router", "listen", "127.0.0.1:20000"}, false},
		{[]string{"router", "-listen"}, false},
	} {
		if got := listensOn(tc.args, "127.0.0.1:20000"); got != tc.want {
			t.Errorf("listensOn(%q) = %v", tc.args, got)
		}
	}
}

func TestPhaseCounter(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("src") != "" {
			w.Header().Set("X-Read-Source", r.URL.Query().Get("src"))
		}
		if r.URL.Query().Get("busy") != "" {
			w.WriteHeader(http.StatusTooManyRequests)
		}
	}))
	defer srv.Close()
	pc := newPhaseCounter(http.DefaultTransport)
	c := &http.Client{Transport: pc}
	get := func(q string) {
		resp, err := c.Get(srv.URL + "/?" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	get("src=replica") // before any phase: not counted
	pc.setPhase("alone")
	get("src=replica")
	get("src=replica")
	pc.setPhase("")
	get("src=primary") // warm-up: not counted
	pc.setPhase(hostilePhase)
	get("src=primary")
	get("busy=1")
	var b strings.Builder
	writeVictimTable(&b, pc, []string{"alone", hostilePhase, "never"})
	for _, want := range []string{
		"| alone | 200×2 | replica×2 |",
		"| with-hostile | 200×1, 429×1 | none×1, primary×1 |",
		"| never | – | – |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

func TestParseFlagsAbuse(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"hostile-rate on get", []string{"-hostile-rate", "10"}},
		{"hostile-slow on slow-body", []string{"-scenario", "slow-body", "-hostile-slow", "3"}},
		{"slow-conns on hostile", []string{"-scenario", "hostile", "-slow-conns", "3"}},
		{"router-pid on hostile", []string{"-scenario", "hostile", "-router-pid", "3"}},
		{"hostile-tenant on post", []string{"-scenario", "post", "-hostile-tenant", "x"}},
		{"body-timeout on get", []string{"-body-timeout", "1s"}},
		{"negative hostile rate", []string{"-scenario", "hostile", "-hostile-rate", "-1"}},
		{"NaN hostile rate", []string{"-scenario", "hostile", "-hostile-rate", "NaN"}},
		{"negative hostile slow", []string{"-scenario", "hostile", "-hostile-slow", "-1"}},
		{"nothing hostile", []string{"-scenario", "hostile", "-hostile-rate", "0", "-hostile-slow", "0"}},
		{"no slow conns", []string{"-scenario", "slow-body", "-slow-conns", "0"}},
		{"zero body timeout", []string{"-scenario", "slow-body", "-body-timeout", "0"}},
		{"negative pid", []string{"-scenario", "slow-body", "-router-pid", "-2"}},
		{"sequential", []string{"-scenario", "hostile", "-sequential"}},
		{"token", []string{"-scenario", "hostile", "-token", "abc"}},
		{"two targets", []string{"-scenario", "hostile", "-target", "a=http://x:1", "-target", "b=http://y:1"}},
		{"https target", []string{"-scenario", "slow-body", "-target", "a=https://x:1"}},
		{"control on slow-body", []string{"-scenario", "slow-body", "-control"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseFlags(tc.args, &bytes.Buffer{}); !errors.Is(err, errUsage) {
				t.Errorf("err %v, want a usage error", err)
			}
		})
	}
	o, err := parseFlags([]string{"-scenario", "slow-body", "-body-timeout", "3s"}, &bytes.Buffer{})
	if err != nil || o.cfg.Round != 4*time.Second {
		t.Errorf("slow-body round %v (err %v), want the body timeout plus 1 s", o.cfg.Round, err)
	}
	o, err = parseFlags([]string{"-scenario", "slow-body", "-round", "2s"}, &bytes.Buffer{})
	if err != nil || o.cfg.Round != 2*time.Second {
		t.Errorf("slow-body -round 2s gave %v (err %v)", o.cfg.Round, err)
	}
	o, err = parseFlags([]string{"-scenario", "hostile"}, &bytes.Buffer{})
	if err != nil || o.hostileRate != 500 || o.hostileSlow != 40 || o.cfg.Round != 2*time.Second {
		t.Errorf("hostile defaults: %+v (err %v)", o, err)
	}
}

// TestRunHostile runs the hostile scenario against the fake cluster: both phases measured, the
// hostile tenant created and sending every fast kind, both tables written.
func TestRunHostile(t *testing.T) {
	router, api := newFakeCluster(t)
	cluster := writeClusterFile(t, router.server.URL, api.server.URL)
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "-cluster", cluster, "-scenario", "hostile", "-c", "2", "-d", "400ms", "-round", "100ms",
		"-warmup", "0", "-hostile-rate", "200", "-hostile-slow", "2", "-control"}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	t.Log(out)
	for _, want := range []string{
		"## A tenant's GET through one router, alone vs beside a hostile tenant (",
		"tenant `bench-eu-west`", "The other tenant is `bench-hostile-eu-west` (homed in eu-west)",
		"| alone | ", "| with-hostile | ", "| with-hostile / alone | ", "| with-benign / alone | ",
		"The other tenant in `with-benign` rounds (the control)", "| list-get | 200 | ",
		"| phase | answers by status | X-Read-Source |",
		"| kind | contract | requests | answers |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	for _, phase := range []string{"alone", benignPhase, hostilePhase} {
		if !strings.Contains(out, "| "+phase+" | 200×") || strings.Contains(out, "| "+phase+" | 200×0") {
			t.Errorf("phase %s: no 200s counted", phase)
		}
	}
	// Every fast kind was sent at least once (40 slots over 200 ms of hostile rounds, 6 kinds).
	for _, k := range []string{"bad-token", "malformed-json", "malformed-query", "rejected-value", "expect-continue", "oversized-header"} {
		if strings.Contains(out, "| "+k+" | ") && strings.Contains(out, "| "+k+" | "+wantOf(k)+" | 0 |") {
			t.Errorf("kind %s never sent", k)
		}
	}
	router.store.mu.Lock()
	home := router.store.tenants["bench-hostile-eu-west"]
	router.store.mu.Unlock()
	if home != "eu-west" {
		t.Errorf("hostile tenant homed in %q, want eu-west", home)
	}
	if strings.Contains(out, testSecret) {
		t.Error("the secret leaked")
	}
	// The control's GETs reached the router as well-formed, authenticated list reads.
	if strings.Contains(out, "| list-get | 200 | 0 |") || !strings.Contains(out, "| list-get | 200 | ") {
		t.Errorf("the control sent nothing")
	}
}

func TestBenignKindOnTheWire(t *testing.T) {
	rec := newRecorder(t, time.Second)
	host := strings.TrimPrefix(rec.srv.URL, "http://")
	kinds := benignKinds(host, "tok")
	if len(kinds) != 1 {
		t.Fatalf("%d kinds", len(kinds))
	}
	res := doRaw(t.Context(), host, kinds[0].build(0), 10*time.Second)
	got := rec.last(t)
	if res.status != http.StatusOK || got.method != http.MethodGet || got.path != "/v1/collections/"+collection+"/records" ||
		got.rawQuery != "limit=1" || got.header.Get("Authorization") != "Bearer tok" || got.contentLength != 0 {
		t.Errorf("got %+v answered %d", got, res.status)
	}
}

func wantOf(kind string) string {
	for _, k := range hostileKinds("h", hostileTokens{}) {
		if k.name == kind {
			return k.want
		}
	}
	return ""
}

// TestRunSlowBody runs the slow-body scenario against a fake router that times bodies out:
// every wave's connections are accounted for, and memory is read from the given pid.
func TestRunSlowBody(t *testing.T) {
	router, api := newFakeCluster(t)
	v, err := auth.NewVerifier(auth.Config{Secret: []byte(testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	// The same fake router behind a server with a read timeout, as a router's body timeout.
	timed := httptest.NewUnstartedServer(router.handler(t, v))
	timed.Config.ReadTimeout = 300 * time.Millisecond
	timed.Start()
	defer timed.Close()
	cluster := writeClusterFile(t, timed.URL, api.server.URL)
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "-cluster", cluster, "-scenario", "slow-body", "-c", "2", "-d", "200ms", "-round", "100ms",
		"-warmup", "0", "-slow-conns", "6", "-body-timeout", "300ms", "-router-pid", fmt.Sprint(os.Getpid())}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	t.Log(out)
	for _, want := range []string{
		"| alone | ", "| slow-no-token | ", "| slow-token | ",
		"| wave | variant | answers | time to answer p50 / max | closed in time |",
		"| 1 | slow-no-token | ", "| 2 | slow-token | ", "| 3 | slow-no-token | ", "| 4 | slow-token | ",
		"| 1 | slow-no-token | 401×6 | ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Contains(out, "| 5 | ") {
		t.Error("more waves than measured rounds")
	}
	if strings.Contains(out, " ? / ") {
		t.Error("memory unknown although -router-pid was given")
	}
}
