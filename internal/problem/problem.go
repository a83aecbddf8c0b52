// Package problem writes RFC 9457 problem details (application/problem+json) for Meridian's HTTP
// services and owns the request-id convention they share.
//
// It is deliberately small so the router and the API node can both use it: one Problem type,
// the table of problem kinds (Kind: a type URI slug, a fixed title and a status; DESIGN.md §4
// "Each kind of problem has its own type URI"), writers for gin handlers and plain
// http.ResponseWriters, and RequestID, a middleware that echoes or generates X-Request-Id.
// It must never log or decide status codes on its own; callers choose the kind and the detail,
// and a detail must never carry internal error text (library messages, SQL, addresses).
// Tests can decode responses with Decode.
package problem

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"
)

// ContentType is the media type of every error body.
const ContentType = "application/problem+json"

// HeaderRequestID is the request and response header carrying the request id.
const HeaderRequestID = "X-Request-Id"

// ContextKey is the gin context key under which RequestID stores the request id.
const ContextKey = "request_id"

// TypeBase prefixes the type URI of every Meridian problem; the suffix is its kind's slug.
const TypeBase = "https://meridian.dev/problems/"

// Kind is one kind of problem: Slug is the machine-readable code clients switch on (the type
// URI is TypeBase+Slug), Title its fixed human-readable summary, Status its HTTP status.
type Kind struct {
	Slug   string
	Title  string
	Status int
}

// The kinds of problem Meridian's services answer, one table for the router and the API node.
// Slugs are only ever added: clients switch on them. The generic kind of each status (the one
// ForStatus returns) is marked "generic"; it is what a problem gets when its writer names only
// a status.
var (
	// BadRequest (generic 400) is a malformed request that no narrower kind describes.
	BadRequest = Kind{"bad-request", "Bad Request", http.StatusBadRequest}
	// InvalidBody is a request body that is not the JSON the route takes: malformed JSON,
	// trailing data, an unknown or duplicated member name, a member of the wrong type.
	InvalidBody = Kind{"invalid-body", "Invalid request body", http.StatusBadRequest}
	// InvalidQuery is a malformed query string or a query parameter out of its rules.
	InvalidQuery = Kind{"invalid-query", "Invalid query parameter", http.StatusBadRequest}
	// InvalidCursor is a list cursor that was altered or made for another list.
	InvalidCursor = Kind{"invalid-cursor", "Invalid cursor", http.StatusBadRequest}
	// InvalidPath is a path segment (collection, record id, tenant id) out of its pattern.
	InvalidPath = Kind{"invalid-path", "Invalid path parameter", http.StatusBadRequest}
	// InvalidHeader is a request header out of its syntax (If-Match, Idempotency-Key, …).
	InvalidHeader = Kind{"invalid-header", "Invalid request header", http.StatusBadRequest}
	// InvalidConsistencyToken is a Consistency-Token that is empty, repeated or not one a
	// write returned.
	InvalidConsistencyToken = Kind{"invalid-consistency-token", "Invalid consistency token", http.StatusBadRequest}
	// InvalidLastEventID is a Last-Event-ID that is not a change sequence number (a
	// non-negative decimal integer) on /v1/changes.
	InvalidLastEventID = Kind{"invalid-last-event-id", "Invalid Last-Event-ID", http.StatusBadRequest}
	// ValueRejected is a value in the request the database does not accept (a where[] value,
	// a number out of range): the request's own fault.
	ValueRejected = Kind{"value-rejected", "Value rejected", http.StatusBadRequest}
	// UnknownShard is a shard id the node's map does not have (internal and admin routes).
	UnknownShard = Kind{"unknown-shard", "Unknown shard", http.StatusBadRequest}
	// UnknownRegion is a region id the map does not have (admin routes).
	UnknownRegion = Kind{"unknown-region", "Unknown region", http.StatusBadRequest}

	// Unauthorized (generic 401) is a missing, invalid or expired bearer token.
	Unauthorized = Kind{"unauthorized", "Unauthorized", http.StatusUnauthorized}
	// Forbidden (generic 403) is a valid token without the scope or tenant the route needs.
	Forbidden = Kind{"forbidden", "Forbidden", http.StatusForbidden}

	// NotFound (generic 404) is a path no route serves.
	NotFound = Kind{"not-found", "Not Found", http.StatusNotFound}
	// TenantNotFound is a tenant that was never created (on its shard).
	TenantNotFound = Kind{"tenant-not-found", "Tenant not found", http.StatusNotFound}
	// RecordNotFound is a record that does not exist or was deleted.
	RecordNotFound = Kind{"record-not-found", "Record not found", http.StatusNotFound}
	// MoveNotFound is a tenant move the map does not know (admin routes).
	MoveNotFound = Kind{"move-not-found", "Move not found", http.StatusNotFound}

	// MethodNotAllowed (generic 405) is a known path with a method it does not serve.
	MethodNotAllowed = Kind{"method-not-allowed", "Method Not Allowed", http.StatusMethodNotAllowed}
	// RequestTimeout (generic 408) is a request body not complete within the body read timeout.
	RequestTimeout = Kind{"request-timeout", "Request Timeout", http.StatusRequestTimeout}
	// Conflict (generic 409) is a request that conflicts with the current state (a tenant that
	// already exists).
	Conflict = Kind{"conflict", "Conflict", http.StatusConflict}
	// TenantMoving is a tenant move requested while the tenant has a move that is not finished.
	TenantMoving = Kind{"tenant-moving", "Tenant is moving", http.StatusConflict}
	// RegionPinned is a tenant move to a shard outside the region the tenant was created in.
	RegionPinned = Kind{"region-pinned", "Tenant pinned to its region", http.StatusConflict}
	// MoveNotCancellable is a cancel of a move past its last cancellable phase (verify).
	MoveNotCancellable = Kind{"move-not-cancellable", "Move cannot be cancelled", http.StatusConflict}
	// PreconditionFailed (generic 412) is an If-Match or If-None-Match that does not hold.
	PreconditionFailed = Kind{"precondition-failed", "Precondition Failed", http.StatusPreconditionFailed}
	// ContentTooLarge (generic 413) is a body, or a record's data after a PATCH, over the limit.
	ContentTooLarge = Kind{"content-too-large", "Content Too Large", http.StatusRequestEntityTooLarge}
	// UnsupportedMediaType (generic 415) is a body whose Content-Type the route does not take.
	UnsupportedMediaType = Kind{"unsupported-media-type", "Unsupported Media Type", http.StatusUnsupportedMediaType}
	// MisdirectedRequest (generic 421) is a write sent to a node outside the shard's home region.
	MisdirectedRequest = Kind{"misdirected-request", "Misdirected Request", http.StatusMisdirectedRequest}
	// IdempotencyKeyReused (generic 422) is an Idempotency-Key sent again with another request.
	IdempotencyKeyReused = Kind{"idempotency-key-reused", "Idempotency-Key reused", http.StatusUnprocessableEntity}
	// RateLimited (generic 429) is a request over its tenant's or client's rate.
	RateLimited = Kind{"rate-limited", "Too Many Requests", http.StatusTooManyRequests}
	// ConcurrencyLimited is a request over its tenant's bound on requests in flight.
	ConcurrencyLimited = Kind{"concurrency-limited", "Too many concurrent requests", http.StatusTooManyRequests}
	// ClientClosedRequest (generic 499) is a request whose client went away (logged only).
	ClientClosedRequest = Kind{"client-closed-request", "Client Closed Request", 499}

	// InternalError (generic 500) is a bug or an unexpected failure; the detail says no more.
	InternalError = Kind{"internal-error", "Internal Server Error", http.StatusInternalServerError}
	// BadGateway (generic 502) is an upstream answer the router could not use.
	BadGateway = Kind{"bad-gateway", "Bad Gateway", http.StatusBadGateway}
	// ServiceUnavailable (generic 503) is a dependency that cannot serve now (a shard, the
	// map, a home region); Retry-After says when to try again.
	ServiceUnavailable = Kind{"service-unavailable", "Service Unavailable", http.StatusServiceUnavailable}
	// TenantFenced is a tenant whose writes are paused by a move's cutover.
	TenantFenced = Kind{"tenant-fenced", "Tenant writes paused", http.StatusServiceUnavailable}
	// Overloaded is a request shed because its region is saturated.
	Overloaded = Kind{"overloaded", "Region overloaded", http.StatusServiceUnavailable}
	// ChangesUnavailable is a /v1/changes stream this node cannot serve now (no change feed,
	// or the feed cannot start); Retry-After says when to try again.
	ChangesUnavailable = Kind{"changes-unavailable", "Change feed unavailable", http.StatusServiceUnavailable}
	// GatewayTimeout (generic 504) is an upstream or database that did not answer in time.
	GatewayTimeout = Kind{"gateway-timeout", "Gateway Timeout", http.StatusGatewayTimeout}
)

// kinds is every Kind above, in the order of the table; generic marks ForStatus's answers.
var kinds = []struct {
	Kind
	generic bool
}{
	{BadRequest, true}, {InvalidBody, false}, {InvalidQuery, false}, {InvalidCursor, false},
	{InvalidPath, false}, {InvalidHeader, false}, {InvalidConsistencyToken, false},
	{InvalidLastEventID, false}, {ValueRejected, false}, {UnknownShard, false}, {UnknownRegion, false},
	{Unauthorized, true}, {Forbidden, true},
	{NotFound, true}, {TenantNotFound, false}, {RecordNotFound, false}, {MoveNotFound, false},
	{MethodNotAllowed, true}, {RequestTimeout, true}, {Conflict, true},
	{TenantMoving, false}, {RegionPinned, false}, {MoveNotCancellable, false}, {PreconditionFailed, true},
	{ContentTooLarge, true}, {UnsupportedMediaType, true}, {MisdirectedRequest, true},
	{IdempotencyKeyReused, true}, {RateLimited, true}, {ConcurrencyLimited, false},
	{ClientClosedRequest, true},
	{InternalError, true}, {BadGateway, true}, {ServiceUnavailable, true}, {TenantFenced, false},
	{Overloaded, false}, {ChangesUnavailable, false}, {GatewayTimeout, true},
}

// Kinds returns every kind in the table (for documentation and tests).
func Kinds() []Kind {
	out := make([]Kind, len(kinds))
	for i, k := range kinds {
		out[i] = k.Kind
	}
	return out
}

// ForStatus returns the generic kind of status. A status without one in the table gets a kind
// made from its status text ("I'm a teapot" → "im-a-teapot"), or "status-<n>" when it has none.
func ForStatus(status int) Kind {
	for _, k := range kinds {
		if k.generic && k.Status == status {
			return k.Kind
		}
	}
	title := http.StatusText(status)
	if title == "" {
		return Kind{Slug: "status-" + strconv.Itoa(status), Title: "Error " + strconv.Itoa(status), Status: status}
	}
	var b strings.Builder
	for _, r := range strings.ToLower(title) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		case r == ' ' || r == '-':
			b.WriteByte('-')
		}
	}
	return Kind{Slug: b.String(), Title: title, Status: status}
}

// Type returns the kind's type URI.
func (k Kind) Type() string { return TypeBase + k.Slug }

// New returns a problem of kind k with detail (no request id yet).
func (k Kind) New(detail string) Problem {
	return Problem{Type: k.Type(), Title: k.Title, Status: k.Status, Detail: detail}
}

// Write aborts the gin request with a problem+json body of kind k carrying the request id.
func (k Kind) Write(c *gin.Context, detail string) {
	p := k.New(detail)
	p.RequestID = c.GetString(ContextKey)
	body, _ := json.Marshal(p) // a struct of strings and an int always marshals
	c.Abort()
	c.Data(k.Status, ContentType, body)
}

// WriteHTTP writes a problem of kind k to a plain http.ResponseWriter, for code outside gin
// handlers (recovery, timeouts). requestID may be empty.
func (k Kind) WriteHTTP(w http.ResponseWriter, detail, requestID string) {
	p := k.New(detail)
	p.RequestID = requestID
	body, _ := json.Marshal(p)
	w.Header().Set("Content-Type", ContentType)
	w.WriteHeader(k.Status)
	_, _ = w.Write(body)
}

// Problem is an RFC 9457 problem details object.
type Problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	RequestID string `json:"request_id"`
}

// New returns a problem of the generic kind of status (ForStatus) with detail. A non-empty
// title replaces the kind's; callers that know the kind should use Kind.New, whose title is
// fixed.
func New(status int, title, detail string) Problem {
	p := ForStatus(status).New(detail)
	if title != "" {
		p.Title = title
	}
	return p
}

// Write aborts the gin request with a problem of the generic kind of status (see New).
// Handlers that know the kind should use Kind.Write.
func Write(c *gin.Context, status int, title, detail string) {
	p := New(status, title, detail)
	p.RequestID = c.GetString(ContextKey)
	body, _ := json.Marshal(p)
	c.Abort()
	c.Data(status, ContentType, body)
}

// WriteHTTP writes a problem of the generic kind of status (see New) to a plain
// http.ResponseWriter. requestID may be empty.
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

// ValidRequestID reports whether an incoming X-Request-Id is kept as it came: 1–128 visible
// ASCII characters other than '"' and '\', so a client can neither inject log lines nor send a
// huge header through it, and the id stays the same on every hop (the router keeps what this
// keeps, and the API node behind it keeps what the router sends). A loop, not a regular
// expression: the API node checks the router's id on every request, and a regexp match of a
// 32-character id cost 1.4 µs on this machine (docs/router.md, sixteenth session).
func ValidRequestID(id string) bool {
	if len(id) < 1 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c > '~' || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

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
		if !ValidRequestID(id) {
			id = NewRequestID()
		}
		c.Set(ContextKey, id)
		c.Header(HeaderRequestID, id)
		c.Next()
	}
}
