package api

import (
	"net/http"
	"testing"
	"time"
)

func TestRequestDeadline(t *testing.T) {
	for _, tc := range []struct {
		header string
		want   time.Duration
	}{
		{"", 5 * time.Second},
		{"1200", 1200 * time.Millisecond},
		{"1", time.Millisecond},
		{"5000", 5 * time.Second},
		{"99999", 5 * time.Second}, // never longer than the node's own
		{"0", 5 * time.Second},
		{"-3", 5 * time.Second},
		{"1.5", 5 * time.Second},
		{"1200ms", 5 * time.Second},
	} {
		if got := requestDeadline(5*time.Second, tc.header); got != tc.want {
			t.Errorf("requestDeadline(5s, %q) = %v, want %v", tc.header, got, tc.want)
		}
	}
}

// TestRoutesAndMethods: unknown paths (with or without a trailing slash) are 404 problem+json,
// never a redirect; a known path with another method is 405 with Allow; GET routes answer HEAD.
func TestRoutesAndMethods(t *testing.T) {
	e := newEnv(t)
	e.createTenant("acme", "s1")
	rw := "Bearer " + e.token("acme", "data:read data:write")
	for _, tc := range []struct {
		method, path, authz string
		want                int
		allow               string
	}{
		{"GET", "/v1/collections/notes/records/", rw, 404, ""},
		{"GET", "/healthz/", "", 404, ""},
		{"GET", "/v1/nope", rw, 404, ""},
		{"POST", "/healthz", "", 405, "GET, HEAD"},
		{"DELETE", "/v1/collections/notes/records", rw, 405, "GET, HEAD, POST"},
		{"HEAD", "/v1/collections/notes/records", rw, 200, ""},
		{"HEAD", "/v1/collections/notes/records/nope", rw, 404, ""},
		{"HEAD", "/healthz", "", 200, ""},
	} {
		r := e.do(tc.method, tc.path, tc.authz, "", nil)
		if r.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d (%s)", tc.method, tc.path, r.StatusCode, tc.want, r.Body)
			continue
		}
		if tc.want >= 400 && tc.method != http.MethodHead && r.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s %s: Content-Type %q", tc.method, tc.path, r.Header.Get("Content-Type"))
		}
		if tc.allow != "" && r.Header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, r.Header.Get("Allow"), tc.allow)
		}
	}
}
