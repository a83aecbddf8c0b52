package upstream

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"time"
)

// RetryPolicy is Meridian's one retry policy for a request to API nodes (DESIGN.md §4
// guardrails): which requests and which failures are tried again, how many times, and how long
// to wait in between. A caller applies it to one request through Start and Tries.Again; the
// router's forwarding loop is that caller.
//
// Only a Failure is retried: no node could be picked, or the exchange failed before any
// response arrived. An answer of any status, 5xx included, is the node's answer and is not
// retried (whether it counts against the node's breaker is the caller's rule: see the package
// doc and Lease.Done). A request that may
// have reached a node is retried only when it is Idempotent; one that provably did not (no
// node was picked, or the TCP connect failed: see MayHaveReached) is retried whatever its
// method. A region with no node to pick at all is not retried: a new pick would find none
// either. The wait before retry n (1 for the first) is full jitter: uniform in
// [0, min(MaxBackoff, BaseBackoff·2ⁿ)).
type RetryPolicy struct {
	// MaxRetries is the number of retries after the first attempt; 0 means 2, negative none.
	MaxRetries int
	// BaseBackoff and MaxBackoff bound the full-jitter wait; 0 means 10 ms and 200 ms.
	BaseBackoff, MaxBackoff time.Duration
	// Rand returns a uniform value in [0, n); nil means math/rand/v2's Int64N.
	Rand func(n int64) int64
}

func (p RetryPolicy) maxRetries() int {
	switch {
	case p.MaxRetries < 0:
		return 0
	case p.MaxRetries == 0:
		return 2
	}
	return p.MaxRetries
}

// Backoff returns the full-jitter wait before retry n (1 for the first retry).
func (p RetryPolicy) Backoff(n int) time.Duration {
	base, ceil := p.BaseBackoff, p.MaxBackoff
	if base <= 0 {
		base = 10 * time.Millisecond
	}
	if ceil <= 0 {
		ceil = 200 * time.Millisecond
	}
	d := ceil
	if n < 30 && base<<n < ceil && base<<n > 0 {
		d = base << n
	}
	rnd := p.Rand
	if rnd == nil {
		rnd = rand.Int64N
	}
	return time.Duration(rnd(int64(d)))
}

// Idempotent reports whether a request may be sent again after it may have reached a node:
// GET, HEAD, OPTIONS, PUT and DELETE always; POST and PATCH only with an Idempotency-Key (the
// API node then answers a replay with the first response).
func Idempotent(method string, hasIdempotencyKey bool) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
		return true
	case http.MethodPost, http.MethodPatch:
		return hasIdempotencyKey
	}
	return false
}

// MayHaveReached reports whether a transport error leaves open that the request reached the
// node. Only a failed TCP connect (a dial *net.OpError, as HopTransport returns it) proves that
// it did not.
func MayHaveReached(err error) bool {
	var op *net.OpError
	return !errors.As(err, &op) || op.Op != "dial"
}

// Failure is an attempt that got no answer: no node could be picked, or the exchange with the
// node failed before a response arrived.
type Failure struct {
	// Node is the node tried; "" when none could be picked.
	Node string
	// Sent reports that the request may have reached Node; false when no node was picked or
	// the TCP connect failed (see MayHaveReached).
	Sent bool
	// NoNode reports that the region had no node to pick at all (ErrNoUpstream), as opposed
	// to every node being busy (ErrSaturated).
	NoNode bool
}

// Tries is one request's attempts under a RetryPolicy: the retries it has left and the nodes
// that failed it. It is not safe for concurrent use; one request makes one attempt at a time.
type Tries struct {
	p          RetryPolicy
	idempotent bool
	retries    int
	avoid      []string
}

// Start begins a request's tries; idempotent is Idempotent's verdict on the request.
func (p RetryPolicy) Start(idempotent bool) *Tries {
	return &Tries{p: p, idempotent: idempotent}
}

// Avoid lists the nodes earlier attempts failed on; the next pick should avoid them while
// another node is available.
func (t *Tries) Avoid() []string { return t.avoid }

// Again records a failed attempt and reports whether to make another, after waiting the
// backoff. It answers false when the retries are spent, ctx has ended (before or during the
// wait), the region had no node at all, or the request is not idempotent and may have reached
// a node (see RetryPolicy).
func (t *Tries) Again(ctx context.Context, f Failure) bool {
	if f.Node != "" && !slices.Contains(t.avoid, f.Node) {
		t.avoid = append(t.avoid, f.Node)
	}
	if t.retries >= t.p.maxRetries() || ctx.Err() != nil || f.NoNode || (f.Sent && !t.idempotent) {
		return false
	}
	t.retries++
	timer := time.NewTimer(t.p.Backoff(t.retries))
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}
