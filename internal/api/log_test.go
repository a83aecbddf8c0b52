package api

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/meridian-dev/meridian/internal/auth"
)

// lockedBuffer is a log sink the test reads while the server may write.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestGetRecordBodyAndLog: a record GET answers the same bytes a write of it answered (both
// encoding/json's wire form: the GET's comes from the direct encoder), and logs one request
// line with every field, without a source location.
func TestGetRecordBodyAndLog(t *testing.T) {
	e := newEnv(t)
	e.createTenant("acme", "s1")
	rw := "Bearer " + e.token("acme", "data:read data:write")
	put := e.do("PUT", "/v1/collections/notes/records/n1", rw,
		`{"data":{"html":"<b>&amp;</b>","n": 1.50,"u":"a\u2028b é","nested":{"k":[1, 2,{"x":null}]}}}`, nil)
	if put.StatusCode != 201 {
		t.Fatalf("put: %d %s", put.StatusCode, put.Body)
	}

	var logs lockedBuffer
	verifier, err := auth.NewVerifier(auth.Config{Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Region: region, CursorKey: []byte("cursor-key"), Logger: slog.New(slog.NewJSONHandler(&logs, nil))},
		e.maps, e.store, verifier, nil)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	req, _ := http.NewRequest("GET", hs.URL+"/v1/collections/notes/records/n1", nil)
	req.Header.Set("Authorization", rw)
	req.Header.Set("X-Request-Id", "log-test-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || body.String() != put.Body {
		t.Errorf("GET %d:\n%s\nPUT answered:\n%s", resp.StatusCode, body.String(), put.Body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}

	var line map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "request" {
			line = m
		}
	}
	if line == nil {
		t.Fatalf("no request line in %q", logs.String())
	}
	for k, want := range map[string]any{"level": "INFO", "region": region, "request_id": "log-test-1", "method": "GET",
		"route": "/v1/collections/:collection/records/:id", "status": float64(200), "tenant": "acme", "shard": "s1"} {
		if line[k] != want {
			t.Errorf("%s = %v, want %v (line %v)", k, line[k], want, line)
		}
	}
	if d, ok := line["duration_ms"].(float64); !ok || d < 0 {
		t.Errorf("duration_ms %v", line["duration_ms"])
	}
	if _, ok := line["source"]; ok {
		t.Errorf("a source location was logged: %v", line)
	}
}
