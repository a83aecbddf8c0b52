package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"
)

func TestIdempotent(t *testing.T) {
	tests := []struct {
		method string
		key    bool
		want   bool
	}{
		{"GET", false, true}, {"HEAD", false, true}, {"OPTIONS", false, true}, {"PUT", false, true},
		{"DELETE", false, true}, {"POST", false, false}, {"PATCH", false, false}, {"POST", true, true},
		{"PATCH", true, true}, {"CONNECT", false, false}, {"TRACE", false, false},
	}
	for _, tt := range tests {
		if got := Idempotent(tt.method, tt.key); got != tt.want {
			t.Errorf("Idempotent(%s, key %v) = %v, want %v", tt.method, tt.key, got, tt.want)
		}
	}
}

func TestBackoffFullJitter(t *testing.T) {
	maxRnd := func(n int64) int64 { return n - 1 }
	p := RetryPolicy{BaseBackoff: 10 * time.Millisecond, MaxBackoff: 35 * time.Millisecond, Rand: maxRnd}
	tests := []struct {
		n    int
		want time.Duration
	}{{1, 20*time.Millisecond - 1}, {2, 35*time.Millisecond - 1}, {40, 35*time.Millisecond - 1}}
	for _, tt := range tests {
		if got := p.Backoff(tt.n); got != tt.want {
			t.Errorf("Backoff(%d) upper = %v, want %v", tt.n, got, tt.want)
		}
		low := p
		low.Rand = func(int64) int64 { return 0 }
		if got := low.Backoff(tt.n); got != 0 {
			t.Errorf("Backoff(%d) lower = %v", tt.n, got)
		}
	}
	def := RetryPolicy{Rand: maxRnd}
	if got := def.Backoff(1); got != 20*time.Millisecond-1 {
		t.Errorf("default Backoff(1) upper = %v, want 20ms-1 (10 ms·2¹)", got)
	}
	if got := def.Backoff(5); got != 200*time.Millisecond-1 {
		t.Errorf("default Backoff(5) upper = %v, want 200ms-1 (the cap)", got)
	}
	if (RetryPolicy{}).maxRetries() != 2 || (RetryPolicy{MaxRetries: -1}).maxRetries() != 0 ||
		(RetryPolicy{MaxRetries: 3}).maxRetries() != 3 {
		t.Error("retry defaults wrong")
	}
	// Without Rand the wait is random but within the ceiling.
	for range 100 {
		if d := (RetryPolicy{}).Backoff(1); d < 0 || d >= 20*time.Millisecond {
			t.Fatalf("Backoff(1) = %v, outside [0, 20ms)", d)
		}
	}
}

func TestTriesAgain(t *testing.T) {
	sent := func(node string) Failure { return Failure{Node: node, Sent: true} }
	unsent := func(node string) Failure { return Failure{Node: node} }
	saturated := Failure{}
	noNode := Failure{NoNode: true}
	tests := []struct {
		name       string
		max        int
		idempotent bool
		failures   []Failure
		want       []bool
		wantAvoid  []string
	}{
		{"idempotent: two retries, then no", 0, true, []Failure{sent("a"), sent("b"), sent("c")},
			[]bool{true, true, false}, []string{"a", "b", "c"}},
		{"non-idempotent that may have reached a node: never", 0, false, []Failure{sent("a")},
			[]bool{false}, []string{"a"}},
		{"non-idempotent whose connect failed: retried", 0, false, []Failure{unsent("a"), unsent("b"), unsent("c")},
			[]bool{true, true, false}, []string{"a", "b", "c"}},
		{"non-idempotent: unsent, then sent", 0, false, []Failure{unsent("a"), sent("b")},
			[]bool{true, false}, []string{"a", "b"}},
		{"saturated region: retried for any request", 0, false, []Failure{saturated},
			[]bool{true}, nil},
		{"no node at all: not retried", 0, true, []Failure{noNode},
			[]bool{false}, nil},
		{"a node failing twice is avoided once", 0, true, []Failure{sent("a"), sent("a")},
			[]bool{true, true}, []string{"a"}},
		{"MaxRetries negative: none", -1, true, []Failure{sent("a")},
			[]bool{false}, []string{"a"}},
		{"MaxRetries 3", 3, true, []Failure{sent("a"), sent("b"), sent("c"), sent("d")},
			[]bool{true, true, true, false}, []string{"a", "b", "c", "d"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ceilings []time.Duration
			p := RetryPolicy{MaxRetries: tt.max, Rand: func(n int64) int64 {
				ceilings = append(ceilings, time.Duration(n))
				return 0
			}}
			tr := p.Start(tt.idempotent)
			for i, f := range tt.failures {
				if got := tr.Again(context.Background(), f); got != tt.want[i] {
					t.Fatalf("failure %d (%+v): Again = %v, want %v", i, f, got, tt.want[i])
				}
			}
			if !slices.Equal(tr.Avoid(), tt.wantAvoid) {
				t.Fatalf("Avoid = %v, want %v", tr.Avoid(), tt.wantAvoid)
			}
			// Every granted retry waited a full-jitter backoff with ceiling 10 ms·2ⁿ (n from 1).
			var want []time.Duration
			for i, ok := range tt.want {
				if ok {
					want = append(want, min(10*time.Millisecond<<(i+1), 200*time.Millisecond))
				}
			}
			if !slices.Equal(ceilings, want) {
				t.Fatalf("backoff ceilings %v, want %v", ceilings, want)
			}
		})
	}
}

func TestTriesAgainEndsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if (RetryPolicy{}).Start(true).Again(ctx, Failure{Node: "a", Sent: true}) {
		t.Fatal("retry granted after the context ended")
	}
	// A wait in progress ends with the context too (the backoff here is an hour).
	ctx, cancel = context.WithCancel(context.Background())
	p := RetryPolicy{BaseBackoff: time.Hour, MaxBackoff: time.Hour, Rand: func(n int64) int64 { return n - 1 }}
	got := make(chan bool, 1)
	go func() { got <- p.Start(true).Again(ctx, Failure{Node: "a", Sent: true}) }()
	cancel()
	select {
	case ok := <-got:
		if ok {
			t.Fatal("retry granted although the context ended during the backoff")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Again kept waiting its backoff after the context ended")
	}
}

func TestMayHaveReached(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	req, _ := http.NewRequest("POST", "http://"+addr+"/", nil)
	_, dialErr := (&HopTransport{}).RoundTrip(req)
	if dialErr == nil || MayHaveReached(dialErr) {
		t.Fatalf("connect to a closed port (%v): MayHaveReached true, want false", dialErr)
	}
	readErr := &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}
	for _, err := range []error{io.ErrUnexpectedEOF, readErr, context.DeadlineExceeded} {
		if !MayHaveReached(err) {
			t.Errorf("MayHaveReached(%v) = false, want true", err)
		}
	}
}
