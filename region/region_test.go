package region

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
)

func newMember(t *testing.T, name, region string, role Role, onChange func(Event)) *Cluster {
	t.Helper()
	cfg := TestConfig(name, Meta{Region: region, Role: role, HTTPAddr: "127.0.0.1:" + name})
	cfg.OnChange = onChange
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", name, err)
	}
	t.Cleanup(func() { _ = c.Shutdown() })
	return c
}

type spec struct {
	name, region string
	role         Role
}

var fourMembers = []spec{
	{"r-east", "us-east", RoleRouter},
	{"a-east-1", "us-east", RoleAPI},
	{"a-east-2", "us-east", RoleAPI},
	{"a-west-1", "us-west", RoleAPI},
}

func newTestCluster(t *testing.T, specs []spec) []*Cluster {
	t.Helper()
	var cs []*Cluster
	for _, s := range specs {
		c := newMember(t, s.name, s.region, s.role, nil)
		if len(cs) > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := c.Join(ctx, []string{cs[0].Addr()}); err != nil {
				cancel()
				t.Fatalf("join %s: %v", s.name, err)
			}
			cancel()
		}
		cs = append(cs, c)
	}
	for _, c := range cs {
		testenv.WaitFor(t, 5*time.Second, func() error {
			if n := len(c.Members()); n != len(specs) {
				return fmt.Errorf("%s sees %d members, want %d", c.Name(), n, len(specs))
			}
			return nil
		})
	}
	return cs
}

func names(ms []Member) string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return strings.Join(out, ",")
}

func TestMembersAndPeersByRegion(t *testing.T) {
	cs := newTestCluster(t, fourMembers)
	for _, c := range cs {
		tests := []struct {
			region string
			role   Role
			want   string
		}{
			{"us-east", RoleAPI, "a-east-1,a-east-2"},
			{"us-east", RoleRouter, "r-east"},
			{"us-west", RoleAPI, "a-west-1"},
			{"us-west", RoleRouter, ""},
			{"eu-west", RoleAPI, ""},
		}
		for _, tt := range tests {
			if got := names(c.Peers(tt.region, tt.role)); got != tt.want {
				t.Errorf("%s: Peers(%s, %s) = %q, want %q", c.Name(), tt.region, tt.role, got, tt.want)
			}
		}
		if got := strings.Join(c.Regions(), ","); got != "us-east,us-west" {
			t.Errorf("%s: Regions() = %q", c.Name(), got)
		}
		for _, m := range c.Members() {
			if m.HTTPAddr != "127.0.0.1:"+m.Name || m.Health != HealthOK || !m.Serving() {
				t.Errorf("%s sees %s with meta %+v state %s", c.Name(), m.Name, m.Meta, m.State)
			}
			if m.GossipAddr == "" {
				t.Errorf("%s sees %s without gossip address", c.Name(), m.Name)
			}
		}
	}
}

func TestUpdateMetaPropagates(t *testing.T) {
	cs := newTestCluster(t, fourMembers[:3])
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := cs[1].UpdateMeta(ctx, func(m *Meta) {
		m.Health = HealthDraining
		m.LagMS = 1234
		m.MapVersion = 42
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		testenv.WaitFor(t, 5*time.Second, func() error {
			for _, m := range c.Peers("us-east", RoleAPI) {
				if m.Name != "a-east-1" {
					continue
				}
				if m.Health != HealthDraining || m.LagMS != 1234 || m.MapVersion != 42 {
					return fmt.Errorf("%s sees %+v", c.Name(), m.Meta)
				}
				if m.Serving() {
					return errors.New("draining member reported as serving")
				}
				return nil
			}
			return fmt.Errorf("%s does not see a-east-1", c.Name())
		})
	}
}

func TestUpdateMetaRejectsBadMeta(t *testing.T) {
	c := newMember(t, "solo", "us-east", RoleAPI, nil)
	tests := []struct {
		name string
		f    func(*Meta)
	}{
		{"bad health", func(m *Meta) { m.Health = "sick" }},
		{"bad role", func(m *Meta) { m.Role = "db" }},
		{"empty region", func(m *Meta) { m.Region = "" }},
		{"upper-case region", func(m *Meta) { m.Region = "US-East" }},
		{"negative lag", func(m *Meta) { m.LagMS = -1 }},
		{"too large", func(m *Meta) { m.HTTPAddr = strings.Repeat("x", 600) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.UpdateMeta(context.Background(), tt.f)
			if !errors.Is(err, ErrBadMeta) {
				t.Fatalf("err = %v, want ErrBadMeta", err)
			}
			if got := c.LocalMeta(); got.Region != "us-east" || got.Role != RoleAPI || got.Health != HealthOK {
				t.Fatalf("bad update changed local meta to %+v", got)
			}
		})
	}
	if _, err := New(TestConfig("x", Meta{Region: "us-east", Role: "nope"})); !errors.Is(err, ErrBadMeta) {
		t.Fatalf("New with bad role: %v", err)
	}
}

func TestDeadMemberRemoved(t *testing.T) {
	var mu sync.Mutex
	var leaves []string
	watcher := newMember(t, "watcher", "us-east", RoleRouter, func(e Event) {
		if e.Type == EventLeave {
			mu.Lock()
			leaves = append(leaves, e.Member.Name)
			mu.Unlock()
		}
	})
	cs := []*Cluster{watcher}
	for _, s := range fourMembers[1:] {
		c := newMember(t, s.name, s.region, s.role, nil)
		if _, err := c.Join(context.Background(), []string{watcher.Addr()}); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := len(watcher.Members()); n != 4 {
			return fmt.Errorf("watcher sees %d", n)
		}
		return nil
	})
	// Drain the coalesced notifications so the next receive proves a new change.
	select {
	case <-watcher.Changes():
	default:
	}

	// a-west-1 dies without saying goodbye: failure detection must remove it.
	if err := cs[3].Shutdown(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if ps := watcher.Peers("us-west", RoleAPI); len(ps) != 0 {
			return fmt.Errorf("us-west still has %s (state %s)", names(ps), ps[0].State)
		}
		return nil
	})
	if got := strings.Join(watcher.Regions(), ","); got != "us-east" {
		t.Errorf("Regions() = %q after us-west's only member died", got)
	}
	// The notification may trail the member table, so wait for it (bounded).
	select {
	case <-watcher.Changes():
	case <-time.After(5 * time.Second):
		t.Error("no change notification after a member died")
	}

	// a-east-2 leaves gracefully.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := cs[2].Leave(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if got := names(watcher.Peers("us-east", RoleAPI)); got != "a-east-1" {
			return fmt.Errorf("us-east api = %q", got)
		}
		return nil
	})
	// On two loaded cores a live member can be falsely suspected and rejoin, so other leave
	// events may appear, and the event callback may trail the member table a little; the two
	// real departures must be reported, in order.
	testenv.WaitFor(t, 5*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		got := strings.Join(leaves, ",")
		if i, j := strings.Index(got, "a-west-1"), strings.LastIndex(got, "a-east-2"); i < 0 || j < i {
			return fmt.Errorf("leave events = %v", leaves)
		}
		return nil
	})
}

func TestJoinUnreachableHonoursContext(t *testing.T) {
	c := newMember(t, "lonely", "us-east", RoleAPI, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	// Port 1 on loopback is never a memberlist.
	if _, err := c.Join(ctx, []string{"127.0.0.1:1"}); !errors.Is(err, ErrNoPeersJoined) {
		t.Fatalf("err = %v, want ErrNoPeersJoined", err)
	}
	if n, err := c.Join(ctx, nil); n != 0 || err != nil {
		t.Fatalf("Join(nil) = %d, %v", n, err)
	}
}

func TestShutdownIdempotent(t *testing.T) {
	c := newMember(t, "s", "us-east", RoleAPI, nil)
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := c.Leave(context.Background()); !errors.Is(err, ErrShutdown) {
		t.Fatalf("Leave after Shutdown = %v", err)
	}
	if err := c.UpdateMeta(context.Background(), func(*Meta) {}); !errors.Is(err, ErrShutdown) {
		t.Fatalf("UpdateMeta after Shutdown = %v", err)
	}
}

func FuzzDecodeMeta(f *testing.F) {
	f.Add([]byte(`{"region":"us-east","role":"api","http":"127.0.0.1:1","health":"ok"}`))
	f.Add([]byte(`{"region":"x","role":"router","lag_ms":-5}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			if !errors.Is(err, ErrBadMeta) {
				t.Fatalf("error not ErrBadMeta: %v", err)
			}
			return
		}
		if m.Validate() != nil || m.Health == "" {
			t.Fatalf("DecodeMeta returned invalid %+v", m)
		}
	})
}

// TestDefaultConfigMixesWithCompressingMembers: a member on the default configuration sends
// gossip uncompressed, and it and a member that compresses (TestConfig keeps memberlist's
// default) join and see each other's meta changes both ways.
func TestDefaultConfigMixesWithCompressingMembers(t *testing.T) {
	if defaultMemberlist().EnableCompression {
		t.Fatal("the default configuration compresses gossip")
	}
	plain, err := New(Config{Name: "plain", BindAddr: "127.0.0.1", Meta: Meta{Region: "us-east", Role: RoleRouter, HTTPAddr: "127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plain.Shutdown() })
	packed := newMember(t, "packed", "us-east", RoleAPI, nil)
	if !TestConfig("x", Meta{}).Memberlist.EnableCompression {
		t.Fatal("TestConfig does not compress: the mix is not tested")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := packed.Join(ctx, []string{plain.Addr()}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		from, to *Cluster
		lag      int64
	}{{plain, packed, 11}, {packed, plain, 22}} {
		if err := tc.from.UpdateMeta(ctx, func(m *Meta) { m.LagMS = tc.lag }); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 10*time.Second, func() error {
			for _, m := range tc.to.Members() {
				if m.Name == tc.from.Name() && m.LagMS == tc.lag {
					return nil
				}
			}
			return fmt.Errorf("%s does not see %s's lag %d: %v", tc.to.Name(), tc.from.Name(), tc.lag, tc.to.Members())
		})
	}
}
