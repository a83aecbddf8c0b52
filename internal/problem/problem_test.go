package problem

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
)

func TestWriteCarriesRequestID(t *testing.T) {
	gin.SetMode(gin.TestMode)
	tests := []struct {
		name     string
		incoming string
		wantEcho bool
	}{
		{"echo", "abc-123", true},
		// Everything the router keeps (1–128 visible ASCII, no quote or backslash) is kept
		// here too, so a request has one id on both hops.
		{"echo what the router keeps", "a/b=c+d@e{f}|g~", true},
		{"echo 128 characters", strings.Repeat("a", 128), true},
		{"generated with a quote", `a"b`, false},
		{"generated with a backslash", `a\b`, false},
		{"generated with a space", "a b", false},
		{"generated with a byte above ASCII", "a\xffb", false},
		{"generated when absent", "", false},
		{"generated when malformed", "bad id\nx", false},
		{"generated when too long", strings.Repeat("a", 200), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := gin.New()
			r.Use(RequestID())
			r.GET("/", func(c *gin.Context) { Write(c, http.StatusTeapot, "", "short and stout") })
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			if tt.incoming != "" {
				req.Header.Set(HeaderRequestID, tt.incoming)
			}
			w := httptest.NewRecorder()
			r.ServeHTTP(w, req)
			if w.Code != http.StatusTeapot {
				t.Fatalf("status %d", w.Code)
			}
			if ct := w.Header().Get("Content-Type"); ct != ContentType {
				t.Fatalf("content type %q", ct)
			}
			p, err := Decode(w.Body)
			if err != nil {
				t.Fatal(err)
			}
			id := w.Header().Get(HeaderRequestID)
			if p.RequestID != id || id == "" {
				t.Fatalf("body request_id %q, header %q", p.RequestID, id)
			}
			if tt.wantEcho != (id == tt.incoming) {
				t.Fatalf("echo=%v, got id %q for incoming %q", tt.wantEcho, id, tt.incoming)
			}
			if p.Status != http.StatusTeapot || p.Title != "I'm a teapot" || p.Detail != "short and stout" || p.Type != TypeBase+"im-a-teapot" {
				t.Fatalf("problem %+v", p)
			}
		})
	}
}

// TestKinds: every kind has its own well-formed slug and a title, each status has at most one
// generic kind, and a status writer picks that kind.
func TestKinds(t *testing.T) {
	slug := regexp.MustCompile(`^[a-z][a-z0-9]*(-[a-z0-9]+)*$`)
	seen := map[string]bool{}
	for _, k := range Kinds() {
		if !slug.MatchString(k.Slug) || seen[k.Slug] || k.Title == "" || k.Status < 400 || k.Status > 599 {
			t.Errorf("kind %+v: slug malformed or repeated, or no title", k)
		}
		seen[k.Slug] = true
	}
	generic := map[int]int{}
	for _, k := range kinds {
		if k.generic {
			generic[k.Status]++
		}
	}
	for status, n := range generic {
		if n != 1 {
			t.Errorf("status %d has %d generic kinds", status, n)
		}
	}
	for _, tt := range []struct {
		status int
		want   string
	}{
		{400, "bad-request"}, {401, "unauthorized"}, {404, "not-found"}, {408, "request-timeout"},
		{412, "precondition-failed"}, {413, "content-too-large"}, {429, "rate-limited"},
		{499, "client-closed-request"}, {503, "service-unavailable"}, {504, "gateway-timeout"},
		{418, "im-a-teapot"}, {599, "status-599"},
	} {
		if got := ForStatus(tt.status); got.Slug != tt.want || got.Status != tt.status {
			t.Errorf("ForStatus(%d) = %+v, want slug %q", tt.status, got, tt.want)
		}
	}
}

// TestKindWrite: Kind.Write and Kind.WriteHTTP answer the kind's status, type and fixed title.
func TestKindWrite(t *testing.T) {
	gin.SetMode(gin.TestMode)
	r := gin.New()
	r.Use(RequestID())
	r.GET("/", func(c *gin.Context) { PreconditionFailed.Write(c, "If-Match does not match") })
	w := httptest.NewRecorder()
	r.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
	p, err := Decode(w.Body)
	if err != nil || w.Code != 412 || p.Type != "https://meridian.dev/problems/precondition-failed" ||
		p.Title != PreconditionFailed.Title || p.Status != 412 || p.RequestID == "" {
		t.Fatalf("gin: %d %+v %v", w.Code, p, err)
	}
	w = httptest.NewRecorder()
	ConcurrencyLimited.WriteHTTP(w, "too many", "rid")
	p, err = Decode(w.Body)
	if err != nil || w.Code != 429 || w.Header().Get("Content-Type") != ContentType ||
		p.Type != TypeBase+"concurrency-limited" || p.RequestID != "rid" {
		t.Fatalf("http: %d %+v %v", w.Code, p, err)
	}
}
