// Package problem writes RFC 9457 problem details (application/problem+json) for Meridian's HTTP
// services and owns the request-id convention they share.
//
// It is deliberately small so the router and the API node can both use it: one Problem type,
// Write for gin handlers, and RequestID, a middleware that echoes or generates X-Request-Id.
// It must never log or decide status codes on its own; callers choose status, title and detail.
// Tests can decode responses with Decode.
package problem

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"

	"github.com/gin-gonic/gin"
)

// ContentType is the media type of every error body.
const ContentType = "application/problem+json"

// HeaderRequestID is the request and response header carrying the request id.
const HeaderRequestID = "X-Request-Id"

// ContextKey is the gin context key under which RequestID stores the request id.
const ContextKey = "request_id"

// TypeBase prefixes the type URI of every Meridian problem; the suffix is the status code.
const TypeBase = "https://meridian.dev/problems/"

// Problem is an RFC 9457 problem details object.
type Problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	RequestID string `json:"request_id"`
}

// New returns a problem for status with the given title and detail. An empty title becomes the
// status text.
func New(status int, title, detail string) Problem {
	if title == "" {
		title = http.StatusText(status)
	}
	return Problem{Type: fmt.Sprintf("%s%d", TypeBase, status), Title: title, Status: status, Detail: detail}
}

// Write aborts the gin request with status and a problem+json body carrying the request id.
func Write(c *gin.Context, status int, title, detail string) {
	p := New(status, title, detail)
	p.RequestID = c.GetString(ContextKey)
	body, _ := json.Marshal(p) // a struct of strings and an int always marshals
	c.Abort()
	c.Data(status, ContentType, body)
}

// WriteHTTP writes a problem to a plain http.ResponseWriter, for code outside gin handlers
// (recovery, timeouts). requestID may be empty.
func WriteHTTP(w http.ResponseWriter, status int, title, detail, requestID string) {
	p := New(status, title, detail)
	p.RequestID = requestID
	body, _ := json.Marshal(p)
	w.Header().Set("Content-Type", ContentType)
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// Decode reads a problem body, for clients and tests.
func Decode(r io.Reader) (Problem, error) {
	var p Problem
	err := json.NewDecoder(r).Decode(&p)
	return p, err
}

// validRequestID bounds what an incoming X-Request-Id may contain, so a client cannot inject
// log lines or huge headers through it.
var validRequestID = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// NewRequestID returns a random 128-bit hex id.
func NewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
}

// RequestID is a gin middleware that adopts a well-formed incoming X-Request-Id or generates
// one, stores it under ContextKey and echoes it on the response.
func RequestID() gin.HandlerFunc {
	return func(c *gin.Context) {
		id := c.GetHeader(HeaderRequestID)
		if !validRequestID.MatchString(id) {
			id = NewRequestID()
		}
		c.Set(ContextKey, id)
		c.Header(HeaderRequestID, id)
		c.Next()
	}
}
