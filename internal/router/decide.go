package router

import (
	"net/http"
	"strings"

	"github.com/meridian-dev/meridian/internal/upstream"
)

// Route classes, used for rate limits and metrics.
const (
	ClassRead   = "read"
	ClassWrite  = "write"
	ClassStream = "stream"
	ClassAdmin  = "admin"
	ClassOther  = "other"
)

// DecisionInput is everything a routing decision depends on; Decide is a pure function of it
// so its cases live as golden JSON in testdata/decisions.json.
type DecisionInput struct {
	Method            string `json:"method"`
	Path              string `json:"path"`
	HasIdempotencyKey bool   `json:"has_idempotency_key,omitempty"`
	LocalRegion       string `json:"local_region"`
	HomeRegion        string `json:"home_region"`
	// LocalHealthy: the local region has a healthy API node.
	LocalHealthy bool `json:"local_healthy"`
	// LeaseValid: the router heard from the Raft leader within its lease.
	LeaseValid bool `json:"lease_valid"`
}

// Decision is where a request goes, or why it is refused.
type Decision struct {
	Class      string `json:"class"`
	Write      bool   `json:"write"`
	Idempotent bool   `json:"idempotent"`
	// Region is the region whose API nodes get the request ("" when refused).
	Region string `json:"region,omitempty"`
	// Status is non-zero when the router answers itself (503 for a lapsed write lease).
	Status int    `json:"status,omitempty"`
	Reason string `json:"reason"`
}

// IsWrite reports whether method changes data (DESIGN.md §5: POST/PUT/PATCH/DELETE).
func IsWrite(method string) bool {
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return true
	}
	return false
}

// IsIdempotent reports whether a request may be retried after it may have reached an API
// node; the rule is the retry policy's (upstream.Idempotent).
func IsIdempotent(method string, hasIdempotencyKey bool) bool {
	return upstream.Idempotent(method, hasIdempotencyKey)
}

// Classify returns the route class of a request.
func Classify(method, path string) string {
	switch {
	case strings.HasPrefix(path, "/admin/"):
		return ClassAdmin
	case !strings.HasPrefix(path, "/v1/"):
		return ClassOther
	case IsWrite(method):
		return ClassWrite
	case path == "/v1/changes":
		return ClassStream
	default:
		return ClassRead
	}
}

// Decide routes one /v1 request.
func Decide(in DecisionInput) Decision {
	d := Decision{
		Class:      Classify(in.Method, in.Path),
		Write:      IsWrite(in.Method),
		Idempotent: IsIdempotent(in.Method, in.HasIdempotencyKey),
	}
	switch {
	case d.Write && !in.LeaseValid:
		d.Status = http.StatusServiceUnavailable
		d.Reason = "write lease lapsed: no contact with the shard map leader"
	case d.Write:
		d.Region = in.HomeRegion
		d.Reason = "write to home region"
	case in.LocalHealthy || in.LocalRegion == in.HomeRegion:
		d.Region = in.LocalRegion
		d.Reason = "read in local region"
	default:
		d.Region = in.HomeRegion
		d.Reason = "read in home region: local region has no healthy API node"
	}
	return d
}
