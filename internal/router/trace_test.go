package router

import (
	"testing"

	"github.com/google/uuid"
)

// TestNewIDsAreFreshAndWellFormed: the ids and traces the router makes for a request that brings
// none are well formed (a UUIDv7; a valid, sampled traceparent), a brought trace is continued with
// a new span, and none of them repeats over many draws (the randomness is not crypto/rand's).
func TestNewIDsAreFreshAndWellFormed(t *testing.T) {
	const n = 10000
	const incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ids := make(map[string]bool, n)
	traces := make(map[string]bool, n)
	spans := make(map[string]bool, n)
	for i := 0; i < n; i++ {
		id := RequestID("")
		u, err := uuid.Parse(id)
		if err != nil || u.Version() != 7 || u.Variant() != uuid.RFC4122 {
			t.Fatalf("RequestID(\"\") = %q: want a UUIDv7 (err %v)", id, err)
		}
		if ids[id] {
			t.Fatalf("request id %q repeated after %d draws", id, i)
		}
		ids[id] = true

		tp := NextTraceparent("")
		tid, fl, ok := ParseTraceparent(tp)
		if !ok || fl != "01" {
			t.Fatalf("NextTraceparent(\"\") = %q: want a valid sampled traceparent", tp)
		}
		if traces[tid] {
			t.Fatalf("trace id %s repeated after %d draws", tid, i)
		}
		traces[tid] = true

		cont := NextTraceparent(incoming)
		ctid, cfl, ok := ParseTraceparent(cont)
		if !ok || ctid != incoming[3:35] || cfl != "01" {
			t.Fatalf("NextTraceparent(%q) = %q: want the trace continued", incoming, cont)
		}
		span := cont[36:52]
		if span == incoming[36:52] || spans[span] {
			t.Fatalf("span id %s repeated after %d draws", span, i)
		}
		spans[span] = true
	}
}

func BenchmarkNewIDs(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = RequestID("")
		_ = NextTraceparent("")
	}
}
