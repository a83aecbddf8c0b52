package events

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// freezeProxy forwards TCP connections to upstream on loopback. While frozen it holds back
// what the server sends (the client's bytes still go through), and kill closes every
// connection it carries; new connections are taken all the while.
type freezeProxy struct {
	ln       net.Listener
	upstream string
	frozen   atomic.Bool
	mu       sync.Mutex
	conns    []net.Conn
}

func newFreezeProxy(t *testing.T, upstream string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, upstream: upstream}
	t.Cleanup(func() { _ = ln.Close(); p.kill() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); _ = u.Close() }()
			go func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := u.Read(buf)
					for n > 0 && p.frozen.Load() {
						time.Sleep(5 * time.Millisecond) // held back, not dropped
					}
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				_ = c.Close()
			}()
		}
	}()
	return p
}

func (p *freezeProxy) url() string { return "nats://" + p.ln.Addr().String() }

// kill closes every connection the proxy carries.
func (p *freezeProxy) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// TestRelayPublishFailsWithItsConnection: acknowledgements held back (the server stores the rows
// but its answers do not reach the relay), then the connection lost: the publishes waiting on
// it fail at the loss, not at ackWait (nats.go fails an asynchronous publish's acknowledgement
// with its connection, which the relay counts on), and the relay publishes the rows again on
// its new connection at once — every row in the stream once, in order, well within ackWait.
func TestRelayPublishFailsWithItsConnection(t *testing.T) {
	tenants := []string{"tenant-a", "tenant-b"}
	s := newShardDB(t, tenants...)
	ns := testenv.NATS(t)
	direct := jsFor(t, ns.ClientURL()) // around the proxy
	ensureStreams(t, direct)
	px := newFreezeProxy(t, ns.Addr().String())
	js := jsFor(t, px.url())

	cfg := relayConfig(s, js, prometheus.NewRegistry())
	cfg.Heartbeat = time.Hour // no idle heartbeat: the only publish held back below is the rows'
	r := NewRelay(cfg)
	runRelay(t, r)
	c := s.conn(t)
	ctx := t.Context()
	for i := range 10 {
		if err := write(ctx, c, tenants[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	waitAllSent(t, s)
	// The heartbeat after the rows is in the stream and, a moment later, acknowledged: the
	// relay is idle when the answers are held back.
	testenv.WaitFor(t, 5*time.Second, func() error {
		if evs := streamEvents(t, direct); len(evs) == 0 || evs[len(evs)-1].Kind != KindHeartbeat {
			return fmt.Errorf("no heartbeat after the rows yet (%d messages)", len(evs))
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)

	px.frozen.Store(true)
	for i := range 10 {
		if err := write(ctx, c, tenants[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	// The relay publishes the next batch (the stream has it) and waits for the acknowledgements
	// the proxy holds back; the batches after it wait their turn.
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := len(changes(streamEvents(t, direct))); n <= 10 {
			return fmt.Errorf("%d changes in the stream, want more than 10", n)
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	if n := s.unsent(t); n != 10 {
		t.Fatalf("%d rows unsent while the acknowledgements are held back, want 10", n)
	}
	lostAt := time.Now()
	px.kill()
	px.frozen.Store(false)
	testenv.WaitFor(t, 2*ackWait, func() error {
		if n := s.unsent(t); n != 0 {
			return fmt.Errorf("%d rows unsent", n)
		}
		return nil
	})
	if took := time.Since(lostAt); took > ackWait/3 {
		t.Errorf("the rows were sent %v after the connection was lost, want well within ackWait (%v): a publish pending on a lost connection must fail with it", took, ackWait)
	} else {
		t.Logf("sent again %v after the connection was lost", took.Round(time.Millisecond))
	}
	checkPerTenant(t, streamEvents(t, js), map[string]int64{"tenant-a": 10, "tenant-b": 10})
}

// TestRelayHeartbeatFailsWithItsConnection: an idle shard's heartbeat waiting for its
// acknowledgement when the connection is lost fails with it, and heartbeats go on on the new
// connection at once — consumers' freshness (the edge's, the API nodes') does not lapse for
// ackWait after a NATS restart. (Published synchronously, as before this test, the heartbeat
// waited out ackWait, 9.6 s here: the request's reply never came.)
func TestRelayHeartbeatFailsWithItsConnection(t *testing.T) {
	s := newShardDB(t, "tenant-a")
	ns := testenv.NATS(t)
	direct := jsFor(t, ns.ClientURL())
	ensureStreams(t, direct)
	px := newFreezeProxy(t, ns.Addr().String())
	js := jsFor(t, px.url())
	heartbeats := func() int { return len(streamEvents(t, direct)) - len(changes(streamEvents(t, direct))) }

	cfg := relayConfig(s, js, prometheus.NewRegistry())
	cfg.Heartbeat = 100 * time.Millisecond
	runRelay(t, NewRelay(cfg))
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := heartbeats(); n < 3 {
			return fmt.Errorf("%d heartbeats", n)
		}
		return nil
	})
	px.frozen.Store(true)
	// The next heartbeat is stored, its acknowledgement held: no more come.
	var frozenAt int
	testenv.WaitFor(t, 5*time.Second, func() error {
		a := heartbeats()
		time.Sleep(300 * time.Millisecond)
		if frozenAt = heartbeats(); frozenAt != a {
			return fmt.Errorf("heartbeats went on (%d → %d) with their acknowledgements held back", a, frozenAt)
		}
		return nil
	})
	lostAt := time.Now()
	px.kill()
	px.frozen.Store(false)
	testenv.WaitFor(t, 2*ackWait, func() error {
		if n := heartbeats(); n < frozenAt+2 {
			return fmt.Errorf("%d heartbeats since the loss", n-frozenAt)
		}
		return nil
	})
	if took := time.Since(lostAt); took > ackWait/3 {
		t.Errorf("heartbeats went on %v after the connection was lost, want well within ackWait (%v)", took, ackWait)
	} else {
		t.Logf("heartbeats went on %v after the connection was lost", took.Round(time.Millisecond))
	}
}
