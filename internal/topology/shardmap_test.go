package topology

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/shardmap"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

// startMapNode starts a one-voter shard-map node on loopback with Raft timings cut to tens of
// milliseconds and returns it once it leads, so Apply goes straight to its FSM.
func startMapNode(t *testing.T) *shardmap.Node {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n, err := shardmap.NewNode(shardmap.NodeConfig{
		ID: "map-1", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0", HTTPAddr: "http://" + ln.Addr().String(),
		Bootstrap: true, Token: "test-token", Logger: slog.New(slog.DiscardHandler),
		Tune: func(c *raft.Config) {
			c.HeartbeatTimeout = 80 * time.Millisecond
			c.ElectionTimeout = 80 * time.Millisecond
			c.LeaderLeaseTimeout = 80 * time.Millisecond
			c.CommitTimeout = 5 * time.Millisecond
		},
	})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	srv := &http.Server{Handler: n.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		n.Shutdown()
	})
	testenv.WaitFor(t, 10*time.Second, func() error {
		if !n.IsLeader() {
			return fmt.Errorf("node is not the leader yet")
		}
		return nil
	})
	return n
}

// bootstrapOf is the Bootstrap command the launchers (internal/sim, cmd/gencompose) send for a
// topology: its regions, slot count and shards.
func bootstrapOf(topo *Topology) shardmap.Bootstrap {
	cmd := shardmap.Bootstrap{Regions: topo.Regions(), SlotCount: topo.SlotCount()}
	for _, s := range topo.Shards() {
		cmd.Shards = append(cmd.Shards, shardmap.Shard{ID: s.ID, HomeRegion: s.HomeRegion, Database: s.Database})
	}
	return cmd
}

// TestShardMapAgrees checks the topology file's region id and slot_count rules against a real
// shard map: what Parse accepts, the map accepts at bootstrap, and what Parse refuses, the map
// refuses too (offered the command the topology would have derived). A rule kept in this
// package that differs from the map's fails here in one direction or the other.
func TestShardMapAgrees(t *testing.T) {
	cases := []struct {
		name   string
		region string
		slots  int
		ok     bool
	}{
		{"usual", "us-east", 0, true},
		{"leading digit", "1east", 1024, true},
		{"double dash", "eu--west", 1, true},
		{"trailing dash", "ap-", 7, true},
		{"one character", "a", 1024, true},
		{"most slots", "us-west", ids.MaxSlotCount, true},
		{"too many slots", "us-west", ids.MaxSlotCount + 1, false},
		{"negative slots", "us-west", -1, false},
		{"upper case", "US-east", 1024, false},
		{"underscore", "us_east", 1024, false},
		{"leading dash", "-east", 1024, false},
		{"dot", "us.east", 1024, false},
		// The map accepts a 63-byte region, but not the shard id "<region>-1" derived from it.
		{"shard id too long", strings.Repeat("r", 63), 1024, false},
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	refuser := startMapNode(t) // never bootstrapped: every command offered to it is refused
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc := fmt.Sprintf("version: 1\nslot_count: %d\nshards_per_region: 2\nregions:\n  - {id: %q, port_base: 20000}\n", c.slots, c.region)
			topo, err := Parse([]byte(doc))
			if (err == nil) != c.ok {
				t.Fatalf("Parse(region %q, slot_count %d) error = %v, want accepted = %v", c.region, c.slots, err, c.ok)
			}
			var cmd shardmap.Bootstrap
			node := refuser
			if topo != nil {
				cmd = bootstrapOf(topo)
				node = startMapNode(t) // a bootstrap that succeeds uses a node up
			} else {
				// What the topology would derive had it accepted the file.
				cmd = shardmap.Bootstrap{Regions: []string{c.region}, SlotCount: c.slots}
				for n := 1; n <= 2; n++ {
					id := fmt.Sprintf("%s-%d", c.region, n)
					cmd.Shards = append(cmd.Shards, shardmap.Shard{ID: id, HomeRegion: c.region,
						Database: "meridian_" + strings.ReplaceAll(id, "-", "_")})
				}
			}
			_, err = node.Apply(ctx, cmd)
			if (err == nil) != c.ok {
				t.Fatalf("shard map Apply(%+v) error = %v, want accepted = %v", cmd, err, c.ok)
			}
			if c.ok {
				want := c.slots
				if want == 0 {
					want = DefaultSlotCount
				}
				if got := node.Map().SlotCount(); got != want || topo.SlotCount() != want {
					t.Errorf("slot count: map %d, topology %d, want %d", got, topo.SlotCount(), want)
				}
			}
		})
	}
}
