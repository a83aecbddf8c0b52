package shards

import (
	"context"
	"testing"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// TestConnsDialVia: an endpoint named in DialVia is reached at the mapped address (the launcher
// points remote primaries at its latency proxies); without the mapping the same endpoint fails.
func TestConnsDialVia(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := context.Background()
	if err := pg.CreateDatabase(ctx, "dialvia"); err != nil {
		t.Fatal(err)
	}
	// Port 1 on loopback never answers Postgres: only the mapping can make this work.
	sh := Info{ID: "s1", HomeRegion: "eu-west", Database: "dialvia",
		Endpoints: map[string]string{"eu-west": "127.0.0.1:1"}}
	via := New(Config{User: "postgres", DialVia: map[string]string{"127.0.0.1:1": pg.Addr()}})
	defer via.Close()
	pool, err := via.Primary(ctx, sh)
	if err != nil {
		t.Fatal(err)
	}
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("ping through DialVia: %v", err)
	}
	direct := New(Config{User: "postgres"})
	defer direct.Close()
	if pool, err := direct.Primary(ctx, sh); err == nil {
		if err := pool.Ping(ctx); err == nil {
			t.Fatal("the unmapped endpoint answered; the test proves nothing")
		}
	}
}
