package region

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// joinTest joins a member through Join with test timings; status may be nil.
func joinTest(t *testing.T, name string, role Role, join []string, status func(context.Context) Status) *Cluster {
	t.Helper()
	c, err := Join(context.Background(), JoinConfig{Name: name, Region: "us-east", Role: role,
		URL: "http://" + name, Addr: "127.0.0.1:0", Join: join, Memberlist: TestConfig("", Meta{}).Memberlist,
		Status: status, PublishEvery: 10 * time.Millisecond})
	if err != nil {
		t.Fatalf("Join(%s): %v", name, err)
	}
	t.Cleanup(func() { _ = c.Shutdown() })
	return c
}

// seen returns name's metadata as c sees it.
func seen(c *Cluster, name string) (Meta, error) {
	for _, m := range c.Members() {
		if m.Name == name {
			return m.Meta, nil
		}
	}
	return Meta{}, fmt.Errorf("%s does not see %s", c.Name(), name)
}

func TestJoinRejectsBadConfig(t *testing.T) {
	ok := JoinConfig{Region: "us-east", Role: RoleAPI, URL: "http://a", Addr: "127.0.0.1:0"}
	tests := []struct {
		name string
		edit func(*JoinConfig)
		want error
	}{
		{"port not a number", func(c *JoinConfig) { c.Addr = "127.0.0.1:gossip" }, ErrBadAddr},
		{"port too large", func(c *JoinConfig) { c.Addr = "127.0.0.1:70000" }, ErrBadAddr},
		{"negative port", func(c *JoinConfig) { c.Addr = "127.0.0.1:-1" }, ErrBadAddr},
		{"no port", func(c *JoinConfig) { c.Addr = "127.0.0.1" }, ErrBadAddr},
		{"upper-case region", func(c *JoinConfig) { c.Region = "US-East" }, ErrBadMeta},
		{"no region", func(c *JoinConfig) { c.Region = "" }, ErrBadMeta},
		{"unknown role", func(c *JoinConfig) { c.Role = "db" }, ErrBadMeta},
		{"no URL", func(c *JoinConfig) { c.URL = "" }, ErrBadMeta},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.edit(&cfg)
			c, err := Join(context.Background(), cfg)
			if !errors.Is(err, tt.want) {
				_ = c.Depart(context.Background())
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestJoinUnreachablePeersNotFatal(t *testing.T) {
	c, err := Join(context.Background(), JoinConfig{Region: "us-east", Role: RoleRouter, URL: "http://r",
		Addr: "127.0.0.1:0", Join: []string{"127.0.0.1:1"}, JoinTimeout: 200 * time.Millisecond,
		Memberlist: TestConfig("", Meta{}).Memberlist})
	if err != nil {
		t.Fatalf("Join with an unreachable peer: %v (want the node to continue alone)", err)
	}
	defer c.Depart(context.Background())
	if n := len(c.Members()); n != 1 {
		t.Fatalf("alone, the node sees %d members", n)
	}

	// A context that has ended is the caller giving up, not a peer being late.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Join(ctx, JoinConfig{Region: "us-east", Role: RoleRouter, URL: "http://r2", Addr: "127.0.0.1:0",
		Join: []string{"127.0.0.1:1"}, Memberlist: TestConfig("", Meta{}).Memberlist}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Join with an ended context: %v, want context.Canceled", err)
	}
}

func TestStatusReachesPeers(t *testing.T) {
	var lag atomic.Int64
	var version atomic.Uint64
	lag.Store(int64(40 * time.Millisecond))
	version.Store(3)
	status := func(context.Context) Status {
		return Status{Lag: time.Duration(lag.Load()), MapVersion: version.Load()}
	}
	api := joinTest(t, "api", RoleAPI, nil, status)
	router := joinTest(t, "router", RoleRouter, []string{api.Addr()}, nil)

	want := func(lagMS int64, v uint64) {
		t.Helper()
		for _, c := range []*Cluster{api, router} {
			testenv.WaitFor(t, 5*time.Second, func() error {
				m, err := seen(c, "api")
				if err != nil {
					return err
				}
				if m.LagMS != lagMS || m.MapVersion != v || m.Health != HealthOK {
					return fmt.Errorf("%s sees api with %+v, want lag %d ms, map version %d", c.Name(), m, lagMS, v)
				}
				return nil
			})
		}
	}
	want(40, 3) // the first status travels with the join
	lag.Store(int64(1500 * time.Millisecond))
	version.Store(9)
	want(1500, 9)
	lag.Store(int64(-time.Second)) // clock skew between the standby and its primary
	want(0, 9)
}

func TestUnchangedStatusNotBroadcast(t *testing.T) {
	var calls atomic.Int64
	var version atomic.Uint64
	version.Store(7)
	status := func(context.Context) Status {
		calls.Add(1)
		return Status{MapVersion: version.Load()}
	}
	var mu sync.Mutex
	updates := 0
	watcher := newMember(t, "watcher", "us-east", RoleRouter, func(e Event) {
		if e.Type == EventUpdate && e.Member.Name == "api" {
			mu.Lock()
			updates++
			mu.Unlock()
		}
	})
	api := joinTest(t, "api", RoleAPI, []string{watcher.Addr()}, status)
	testenv.WaitFor(t, 5*time.Second, func() error {
		if m, err := seen(watcher, "api"); err != nil || m.MapVersion != 7 {
			return fmt.Errorf("watcher sees api as %+v (%v)", m, err)
		}
		return nil
	})

	// Many publisher rounds with the same status: nothing may be broadcast.
	start := calls.Load()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := calls.Load() - start; n < 20 {
			return fmt.Errorf("publisher asked for the status %d times", n)
		}
		return nil
	})
	if n := api.metaSent.Load(); n != 0 {
		t.Fatalf("%d metadata updates gossiped for an unchanged status", n)
	}

	// One change: exactly one broadcast, seen once by the watcher.
	version.Store(8)
	testenv.WaitFor(t, 5*time.Second, func() error {
		if m, err := seen(watcher, "api"); err != nil || m.MapVersion != 8 {
			return fmt.Errorf("watcher sees api as %+v (%v)", m, err)
		}
		return nil
	})
	start = calls.Load()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := calls.Load() - start; n < 10 {
			return fmt.Errorf("publisher asked for the status %d times", n)
		}
		return nil
	})
	if n := api.metaSent.Load(); n != 1 {
		t.Fatalf("%d metadata updates gossiped for one status change, want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if updates != 1 {
		t.Fatalf("watcher got %d update events for api, want 1", updates)
	}
}

func TestDepart(t *testing.T) {
	var calls atomic.Int64
	status := func(context.Context) Status { calls.Add(1); return Status{MapVersion: 1} }
	var mu sync.Mutex
	var events []string
	watcher := newMember(t, "watcher", "us-east", RoleRouter, func(e Event) {
		if e.Member.Name == "api" {
			mu.Lock()
			events = append(events, e.Type.String()+":"+string(e.Member.Health))
			mu.Unlock()
		}
	})
	api := joinTest(t, "api", RoleAPI, []string{watcher.Addr()}, status)
	testenv.WaitFor(t, 5*time.Second, func() error {
		_, err := seen(watcher, "api")
		return err
	})
	if err := api.Depart(context.Background()); err != nil {
		t.Fatalf("Depart: %v", err)
	}
	// Depart waits for the publisher to return: no Status call may follow it.
	after := calls.Load()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if _, err := seen(watcher, "api"); err == nil {
			return errors.New("watcher still sees api after it departed")
		}
		return nil
	})
	if n := calls.Load(); n != after {
		t.Fatalf("Status called %d times after Depart returned", n-after)
	}
	// Others must hear "draining" before the node goes, so they stop picking it first.
	testenv.WaitFor(t, 5*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		got := strings.Join(events, ",")
		if !strings.HasSuffix(got, "update:draining,leave:draining") {
			return fmt.Errorf("watcher's events for api: %s", got)
		}
		return nil
	})
	if err := api.Depart(context.Background()); !errors.Is(err, ErrShutdown) {
		t.Fatalf("second Depart: %v, want ErrShutdown", err)
	}
	var never *Cluster
	if err := never.Depart(context.Background()); err != nil {
		t.Fatalf("Depart of a nil Cluster: %v", err)
	}
}
