package router

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/jsonlog"
)

// logRequests serves reqs through a router whose logger is newLogger(buf), shaped like
// cmd/router's (component, then region), and returns the lines written.
func logRequests(t *testing.T, h slog.Handler, buf *bytes.Buffer, reqs []*http.Request) []string {
	t.Helper()
	rg := newRig(t, func(c *Config) {
		c.Logger = slog.New(h).With("component", "router").With("region", "us-east")
	})
	for _, r := range reqs {
		rg.srv.Handler().ServeHTTP(httptest.NewRecorder(), r)
	}
	return strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
}

// topKeys returns a JSON object's keys in order, duplicates included.
func topKeys(t *testing.T, line string) []string {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(line))
	var keys []string
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %q", line)
	}
	for d.More() {
		k, err := d.Token()
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		keys = append(keys, k.(string))
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
	}
	return keys
}

// TestRequestLineMatchesSlog: the request line the router writes itself (jsonlog's Line, as in
// cmd/router) has the keys and values slog's JSON handler wrote for the same requests, "region"
// once instead of twice, and hostile paths and tenants escaped the way slog escapes them.
func TestRequestLineMatchesSlog(t *testing.T) {
	tenants := []string{"acme", `t"q\uote`, "t\x00\x1b\n", "t\xff\xfe", "t\u2028<&>"}
	paths := []string{"/v1/collections/c/records/x", "/v1/collections/c/records/%22q%5C%00%1b%0a%ff%e2%80%a8",
		"/v1/collections/c/records/%C3%BC%F0%9F%99%82", "/v1/nope/%e2%82", "/healthz"}
	ids := []string{"bench-1", "a<b>&c'{}", "bad\"id"}
	mk := func() []*http.Request {
		var reqs []*http.Request
		for i, tn := range tenants {
			for j, p := range paths {
				r := httptest.NewRequest(http.MethodGet, p, nil)
				r.Header.Set("Authorization", "Bearer "+tn+"|u1|data:read")
				r.Header.Set(HeaderRequestID, ids[(i+j)%len(ids)])
				reqs = append(reqs, r)
			}
		}
		return reqs
	}
	debug := &slog.HandlerOptions{Level: slog.LevelDebug}
	var fast, slow bytes.Buffer
	fh := jsonlog.NewHandler(&fast, debug)
	got := logRequests(t, fh, &fast, mk())
	want := logRequests(t, slog.NewJSONHandler(&slow, debug), &slow, mk())
	if len(got) != len(want) || len(got) != len(tenants)*len(paths) {
		t.Fatalf("%d lines, slog wrote %d, want %d", len(got), len(want), len(tenants)*len(paths))
	}
	for i := range got {
		keys := topKeys(t, got[i])
		wantKeys := []string{"time", "level", "msg", "component", "region", "request_id", "tenant", "method",
			"path", "status", "class", "duration_ms"}
		if strings.Join(keys, ",") != strings.Join(wantKeys, ",") {
			t.Errorf("keys %v, want %v", keys, wantKeys)
		}
		var g, w map[string]any
		if err := json.Unmarshal([]byte(got[i]), &g); err != nil {
			t.Fatalf("%q: %v", got[i], err)
		}
		if err := json.Unmarshal([]byte(want[i]), &w); err != nil {
			t.Fatalf("%q: %v", want[i], err)
		}
		if _, err := time.Parse(time.RFC3339Nano, g["time"].(string)); err != nil {
			t.Errorf("time: %v", err)
		}
		if _, ok := g["duration_ms"].(float64); !ok {
			t.Errorf("duration_ms %v", g["duration_ms"])
		}
		// Each request's own: the time, the duration and a request id the router made up.
		for _, k := range []string{"time", "duration_ms"} {
			delete(g, k)
			delete(w, k)
		}
		if !strings.Contains(got[i], `"request_id":"bench-1"`) && !strings.Contains(got[i], `"request_id":"a<b>&c'{}"`) {
			if g["request_id"] == "" || g["request_id"] == w["request_id"] {
				t.Errorf("request id %v (slog %v): not a new one", g["request_id"], w["request_id"])
			}
			delete(g, "request_id")
			delete(w, "request_id")
		}
		gj, _ := json.Marshal(g)
		wj, _ := json.Marshal(w)
		if !bytes.Equal(gj, wj) {
			t.Errorf("line %d\n got %s\nwant %s\n(raw %q)", i, gj, wj, got[i])
		}
	}
	// The same bytes as slog for a hostile path, not only the same decoded values.
	if !strings.Contains(fast.String(), `"path":"/v1/collections/c/records/\"q\\\u0000\u001b\n\ufffd\u2028"`) {
		t.Errorf("hostile path not escaped as slog escapes it:\n%s", fast.String())
	}
}

// TestRequestLineHonoursLevelAndOtherHandlers: the configured level still decides (a Warn-level
// handler logs only 5xx lines), and a handler that is not jsonlog's, or one it cannot write
// for, still gets every line through slog.
func TestRequestLineHonoursLevelAndOtherHandlers(t *testing.T) {
	req := func(tn string) []*http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v1/collections/c/records/x", nil)
		r.Header.Set("Authorization", "Bearer "+tn+"|u1|data:read")
		return []*http.Request{r}
	}
	var buf bytes.Buffer
	if lines := logRequests(t, jsonlog.NewHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}), &buf, req("acme")); len(lines) != 1 || lines[0] != "" {
		t.Errorf("Warn level: a 200 was logged: %q", lines)
	}
	grouped := func(w io.Writer) slog.Handler { return jsonlog.NewHandler(w, nil).WithGroup("g") }
	text := func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, nil) }
	for name, mk := range map[string]func(io.Writer) slog.Handler{"group": grouped, "text": text} {
		var buf bytes.Buffer
		lines := logRequests(t, mk(&buf), &buf, req("acme"))
		if len(lines) != 1 || !strings.Contains(lines[0], "request") || !strings.Contains(lines[0], "acme") {
			t.Errorf("%s: %q", name, lines)
		}
	}
}
