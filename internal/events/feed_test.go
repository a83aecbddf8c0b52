package events

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/testenv"
)

var acme = records.Target{Tenant: "acme", Shard: testShard}

// expect reads the feed's next events and checks they are exactly seqs, in order.
func expect(t *testing.T, f *Feed, seqs ...int64) {
	t.Helper()
	for _, want := range seqs {
		select {
		case e, ok := <-f.C():
			if !ok {
				t.Fatalf("feed ended before seq %d: %v", want, f.Err())
			}
			if e.Seq != want || e.ID != fmt.Sprintf("n%d", want) {
				t.Fatalf("feed event %+v, want seq %d", e, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no seq %d on the feed", want)
		}
	}
}

// seqs returns from..to.
func seqs(from, to int64) []int64 {
	var s []int64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// ended waits for the feed's channel to close and returns Err.
func ended(t *testing.T, f *Feed) error {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case _, ok := <-f.C():
			if !ok {
				return f.Err()
			}
		case <-timeout:
			t.Fatal("feed did not end")
		}
	}
}

// TestFollowResumesAcrossBacklogAndLive: a follower resuming after 20 gets 21.. with no gap and
// no repeat, while changes are committed and published around its backlog read (some of them
// both in the backlog and live, some live only and applied before the backlog is sent, one
// lost by JetStream).
func TestFollowResumesAcrossBacklogAndLive(t *testing.T) {
	r := newRig(t, testenv.NATS(t).ClientURL())
	for seq := int64(1); seq <= 50; seq++ {
		r.commitPublish(t, change("acme", seq))
	}
	r.app.waitCall(t, "inv acme n50")

	r.out.mu.Lock()
	r.out.hook = func() {
		// Committed and published before the backlog read sees the outbox: in both.
		for seq := int64(51); seq <= 53; seq++ {
			r.commitPublish(t, change("acme", seq))
		}
	}
	r.out.after = func() {
		// Committed and published after the backlog read, and applied by the consumer before
		// the backlog is sent: they reach the feed only because it registered first.
		for seq := int64(54); seq <= 56; seq++ {
			r.commitPublish(t, change("acme", seq))
		}
		for deadline := time.Now().Add(30 * time.Second); r.app.count("inv acme n56") == 0 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	r.out.mu.Unlock()

	feed, err := r.c.Follow(t.Context(), acme, 20, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	expect(t, feed, seqs(21, 56)...)
	// Live: 57 never reaches the consumer.
	r.out.commit("acme", asChange(change("acme", 57)))
	for seq := int64(58); seq <= 60; seq++ {
		r.commitPublish(t, change("acme", seq))
	}
	expect(t, feed, seqs(57, 60)...)
	r.commitPublish(t, change("acme", 61))
	expect(t, feed, 61) // nothing repeated in between
}

// TestFollowSlowFollower: a follower that never reads ends with ErrSlowFollower once buf
// events wait for it; the consumer and the tenant's other follower go on.
func TestFollowSlowFollower(t *testing.T) {
	r := newRig(t, testenv.NATS(t).ClientURL())
	slow, err := r.c.Follow(t.Context(), acme, 0, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fast, err := r.c.Follow(t.Context(), acme, 0, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	for seq := int64(1); seq <= 10; seq++ {
		r.commitPublish(t, change("acme", seq))
	}
	expect(t, fast, seqs(1, 10)...)
	r.app.waitCall(t, "inv acme n10")
	if err := ended(t, slow); !errors.Is(err, ErrSlowFollower) {
		t.Fatalf("slow follower ended with %v, want ErrSlowFollower", err)
	}
	r.commitPublish(t, change("acme", 11))
	expect(t, fast, 11)
	r.c.mu.Lock()
	n := len(r.c.followers["acme"])
	r.c.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d followers of acme, want 1 (the slow one unregistered)", n)
	}
}

// TestFollowFromCurrentSeq: after < 0 starts after the tenant's current seq; the feed ends
// with its context's error, or nil after Close.
func TestFollowFromCurrentSeq(t *testing.T) {
	r := newRig(t, testenv.NATS(t).ClientURL())
	for seq := int64(1); seq <= 5; seq++ {
		r.out.commit("acme", asChange(change("acme", seq)))
	}
	ctx, cancel := context.WithCancel(t.Context())
	feed, err := r.c.Follow(ctx, acme, -1, 16)
	if err != nil {
		t.Fatal(err)
	}
	r.commitPublish(t, change("acme", 6))
	expect(t, feed, 6)
	cancel()
	if err := ended(t, feed); !errors.Is(err, context.Canceled) {
		t.Fatalf("feed ended with %v, want context.Canceled", err)
	}

	closed, err := r.c.Follow(t.Context(), acme, -1, 16)
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	closed.Close()
	if err := ended(t, closed); err != nil {
		t.Fatalf("closed feed ended with %v, want nil", err)
	}
	r.c.mu.Lock()
	n := len(r.c.followers["acme"])
	r.c.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d followers left registered", n)
	}
}

// TestFollowPrunedHistory: resuming from before what the outbox still holds is an error, not
// a silent gap.
func TestFollowPrunedHistory(t *testing.T) {
	r := newRig(t, testenv.NATS(t).ClientURL())
	for seq := int64(10); seq <= 12; seq++ {
		r.out.commit("acme", asChange(change("acme", seq)))
	}
	feed, err := r.c.Follow(t.Context(), acme, 3, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	if err := ended(t, feed); !errors.Is(err, ErrMissingChanges) {
		t.Fatalf("feed ended with %v, want ErrMissingChanges", err)
	}
}
