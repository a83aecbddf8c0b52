package systemtest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// TestAPINodeDiscoveredByGossip: the routers have no static API list for eu-west; its API node
// joins gossip with region.Join (as cmd/api does), and reads through the eu-west router
// are then served there. After the node leaves gracefully, the routers stop picking it.
func TestAPINodeDiscoveredByGossip(t *testing.T) {
	c := newCluster(t, clusterOptions{gossipRegion: "eu-west"})
	node := c.apis["eu-west"][0]
	c.createTenant("us-east", "gossiped", "eu-west")
	tok := dataToken(t, "gossiped")
	testenv.WaitFor(t, 10*time.Second, func() error {
		a := c.do("us-east", "PUT", "/v1/collections/c/records/r1", tok, `{"data":{"v":1}}`)
		if a.status != 201 && a.status != 200 {
			return fmt.Errorf("PUT: %d %s", a.status, a.body)
		}
		return nil
	})
	testenv.WaitFor(t, 10*time.Second, func() error {
		a := c.do("eu-west", "GET", "/v1/collections/c/records/r1", tok, "")
		if a.status != 200 {
			return fmt.Errorf("GET: %d %s", a.status, a.body)
		}
		if sr := a.header.Get("X-Served-Region"); sr != "eu-west" {
			return fmt.Errorf("read served by %q, want eu-west (gossip-discovered node)", sr)
		}
		return nil
	})
	if node.hits.Load() == 0 {
		t.Fatal("eu-west API node saw no /v1 requests")
	}

	if err := node.gossip.Depart(context.Background()); err != nil {
		t.Fatalf("leave: %v", err)
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		before := node.hits.Load()
		for range 3 {
			c.do("eu-west", "GET", "/v1/collections/c/records/r1", tok, "")
		}
		if n := node.hits.Load() - before; n != 0 {
			return fmt.Errorf("left node still got %d of 3 reads", n)
		}
		return nil
	})
	before := node.hits.Load()
	for range 5 {
		c.do("eu-west", "GET", "/v1/collections/c/records/r1", tok, "")
	}
	if n := node.hits.Load() - before; n != 0 {
		t.Fatalf("left node got %d of 5 reads after leaving", n)
	}
}
