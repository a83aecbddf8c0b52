package router

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/upstream"
)

// fuzzTransport is an API node behind a fake hop: it refuses what upstream.HopTransport refuses
// before sending (an Expect header, a request net/http will not write) and answers anything
// else 200 with a small JSON body.
type fuzzTransport struct{}

func (fuzzTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get("Expect") != "" {
		return nil, fmt.Errorf("%w: Expect header", upstream.ErrUnsendable)
	}
	if err := req.Write(io.Discard); err != nil {
		return nil, fmt.Errorf("%w: %v", upstream.ErrUnsendable, err)
	}
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(`{"ok":true}`)), Request: req}, nil
}

// validHeaderName and validHeaderValue are the checks net/http's server makes on every header
// before a handler sees it (a request failing them is answered 400 by net/http itself).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r >= 0x7f || r <= ' ' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return false
		}
	}
	return true
}

func validHeaderValue(s string) bool {
	for _, b := range []byte(s) {
		if b < ' ' && b != '\t' || b == 0x7f {
			return false
		}
	}
	return true
}

// FuzzRouterRequest sends arbitrary methods, paths, headers and bodies through the router's gin
// handler (fake map, tokens, nodes and hop): it must never panic, never answer client input
// with a 5xx (the fake node is always healthy and answers 200), and every 4xx must be a problem
// document. Inputs net/http's server would refuse itself never reach the handler and are
// skipped.
func FuzzRouterRequest(f *testing.F) {
	const tok = "Authorization: Bearer acme|u1|data:read data:write\r\n"
	for _, seed := range []struct{ method, target, headers, body string }{
		{"GET", "/v1/collections/notes/records/a", tok, ""},
		{"POST", "/v1/collections/notes/records", tok + "Content-Type: application/json\r\n", `{"data":{}}`},
		{"POST", "/v1/collections/notes/records", tok + "Expect: 100-continue\r\n", `{"data":{}}`},
		{"PUT", "/v1/collections/notes/records/a", "Authorization: Bearer nope\r\n", "x"},
		{"PATCH", "/v1/collections/notes/records/a", "Authorization: Bearer ops|root|admin\r\n", "{}"},
		{"DELETE", "/v1/", tok + "Connection: Expect, Keep-Alive\r\nKeep-Alive: 5\r\n", ""},
		{"HEAD", "/healthz", "", ""},
		{"BREW", "/healthz/", "", ""},
		{"GET", "/admin/v1/tenants/", "Authorization: Bearer ops|root|admin\r\n", ""},
		{"POST", "/admin/v1/tenants", "Authorization: Bearer ops|root|admin\r\n", `{"id":"x","region":"mars"}`},
		{"GET", "http://elsewhere/v1/collections/a/records?x=%zz", tok + "X-Request-Timeout-Ms: -1\r\n", ""},
		{"OPTIONS", "*", "", ""},
		{"GET", "/v1/collections/a/records", "Authorization: Bearer Bad|tenant|data:read\r\nX-Request-Id: \"\r\n", ""},
	} {
		f.Add(seed.method, seed.target, seed.headers, []byte(seed.body))
	}
	m := &fakeMap{version: 5, contact: time.Now().Add(24 * time.Hour), leader: "127.0.0.1:1",
		regions: []string{"us-east"}, def: Route{Shard: "us-east-1", HomeRegion: "us-east"}}
	ups := &fakeUpstreams{nodes: []*fakeNode{{id: "n1", region: "us-east", url: "http://api.invalid:1"}}}
	srv, err := New(Config{Region: "us-east", Map: m, Auth: fakeAuth{}, Upstreams: ups, ClusterToken: "cluster-secret",
		Transport: fuzzTransport{}, MaxBody: 4 << 10, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	h := srv.Handler()
	f.Fuzz(func(t *testing.T, method, target, headers string, body []byte) {
		raw := method + " " + target + " HTTP/1.1\r\nHost: router\r\n" + headers +
			"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body)
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return // net/http's server answers these itself
		}
		for k, vv := range req.Header {
			if !validHeaderName(k) {
				return
			}
			for _, v := range vv {
				if !validHeaderValue(v) {
					return
				}
			}
		}
		if req.Header.Get("Expect") != "" && !strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
			return // net/http answers 417 before any handler
		}
		req.RemoteAddr = "192.0.2.1:1234"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%q: %d %s", raw, rec.Code, rec.Body)
		}
		if rec.Code >= 400 {
			var p struct{ Status int }
			if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" ||
				json.Unmarshal(rec.Body.Bytes(), &p) != nil || p.Status != rec.Code {
				t.Fatalf("%q: %d with %q %s, want a problem document", raw, rec.Code, ct, rec.Body)
			}
		}
	})
}
