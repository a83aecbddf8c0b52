package problem

import (
	"net/http"
	"net/http/httptest"
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
			if p.Status != http.StatusTeapot || p.Title != "I'm a teapot" || p.Detail != "short and stout" || p.Type != TypeBase+"418" {
				t.Fatalf("problem %+v", p)
			}
		})
	}
}
