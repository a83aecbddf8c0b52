package latency

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// echoServer accepts connections on loopback and echoes every line back.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func newManager(t *testing.T) *Manager {
	t.Helper()
	m := New()
	t.Cleanup(func() { m.Close() })
	return m
}

// roundTrip writes one line on c and reads it back, returning the elapsed time.
func roundTrip(c net.Conn, r *bufio.Reader, msg string) (time.Duration, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return 0, err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if line != msg+"\n" {
		return 0, fmt.Errorf("echo = %q, want %q", line, msg)
	}
	return time.Since(start), nil
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func TestProxyAddsRoundTrip(t *testing.T) {
	upstream := echoServer(t)
	m := newManager(t)
	const rtt = 40 * time.Millisecond
	addr, err := m.Add("a->b/echo", "127.0.0.1:0", upstream, rtt, "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := m.Addr("a->b/echo"); !ok || got != addr {
		t.Errorf("Addr = %q, %v; want %q", got, ok, addr)
	}

	direct, dr := dial(t, upstream)
	proxied, pr := dial(t, addr)
	for i := range 5 {
		d, err := roundTrip(direct, dr, fmt.Sprint("direct", i))
		if err != nil {
			t.Fatal(err)
		}
		p, err := roundTrip(proxied, pr, fmt.Sprint("proxied", i))
		if err != nil {
			t.Fatal(err)
		}
		// A lower bound only: each direction is held for rtt/2 by the latency toxic.
		if p < rtt {
			t.Errorf("round trip %d through the proxy took %s, want at least %s", i, p, rtt)
		}
		t.Logf("round trip %d: direct %s, proxied %s", i, d, p)
	}
}

func TestZeroRTTPassesThrough(t *testing.T) {
	m := newManager(t)
	addr, err := m.Add("plain", "127.0.0.1:0", echoServer(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	c, r := dial(t, addr)
	if _, err := roundTrip(c, r, "hello"); err != nil {
		t.Fatal(err)
	}
}

func TestPartitionAndHeal(t *testing.T) {
	upstream := echoServer(t)
	m := newManager(t)
	ab, err := m.Add("a->b", "127.0.0.1:0", upstream, 2*time.Millisecond, "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := m.Add("c->a", "127.0.0.1:0", upstream, 0, "c", "a")
	if err != nil {
		t.Fatal(err)
	}
	bc, err := m.Add("b->c", "127.0.0.1:0", upstream, 0, "b", "c")
	if err != nil {
		t.Fatal(err)
	}
	existing, er := dial(t, ab)
	if _, err := roundTrip(existing, er, "before"); err != nil {
		t.Fatal(err)
	}

	m.Partition("a")
	if !m.Partitioned("a") || m.Partitioned("b") {
		t.Errorf("Partitioned(a,b) = %v,%v; want true,false", m.Partitioned("a"), m.Partitioned("b"))
	}
	// The existing connection is cut: the next round trip fails.
	if _, err := roundTrip(existing, er, "during"); err == nil {
		t.Error("round trip on an existing connection through a partitioned proxy succeeded")
	}
	for _, addr := range []string{ab, ca} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			// A dial may race the listener's close on some kernels; data must not flow.
			_, rtErr := roundTrip(c, bufio.NewReader(c), "x")
			c.Close()
			if rtErr == nil {
				t.Errorf("%s: round trip through a partitioned proxy succeeded", addr)
			}
		}
	}
	// A proxy not touching a stays up.
	c, r := dial(t, bc)
	if _, err := roundTrip(c, r, "unaffected"); err != nil {
		t.Errorf("b->c while a is partitioned: %v", err)
	}

	// A proxy added to a partitioned region starts cut.
	late, err := m.Add("a->c", "127.0.0.1:0", upstream, 0, "a", "c")
	if err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", late, time.Second); err == nil {
		c.Close()
		t.Errorf("dial of a proxy added during a partition succeeded")
	}

	if err := m.Heal("a"); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{ab, ca, late} {
		testenv.WaitFor(t, 5*time.Second, func() error {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = roundTrip(c, bufio.NewReader(c), "healed")
			return err
		})
	}
}

func TestOverlappingPartitions(t *testing.T) {
	m := newManager(t)
	addr, err := m.Add("a->b", "127.0.0.1:0", echoServer(t), 0, "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	m.Partition("a")
	m.Partition("b")
	if err := m.Heal("a"); err != nil {
		t.Fatal(err)
	}
	// b is still cut, so the proxy must stay down.
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("proxy joining a still-partitioned region accepted a connection")
	}
	if err := m.Heal("b"); err != nil {
		t.Fatal(err)
	}
	c, r := dial(t, addr)
	if _, err := roundTrip(c, r, "ok"); err != nil {
		t.Fatal(err)
	}
}

func TestAddErrors(t *testing.T) {
	m := newManager(t)
	up := echoServer(t)
	if _, err := m.Add("x", "127.0.0.1:0", up, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Add("x", "127.0.0.1:0", up, 0); !errors.Is(err, ErrDuplicate) {
		t.Errorf("duplicate name: err = %v, want ErrDuplicate", err)
	}
	if _, err := m.Add("y", "127.0.0.1:0", up, -time.Second); !errors.Is(err, ErrBadRTT) {
		t.Errorf("negative rtt: err = %v, want ErrBadRTT", err)
	}
	if _, err := m.Add("z", "256.0.0.1:1", up, 0); err == nil {
		t.Error("bad listen address: want an error")
	}
	m.Close()
	if _, err := m.Add("w", "127.0.0.1:0", up, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: err = %v, want ErrClosed", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
