package shards

import (
	"context"
	"errors"
	"testing"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// TestDial: a dedicated connection reaches the shard's primary through DialVia as the configured
// role, with the session settings a pool of the same Config has, and a shard with no endpoint
// in its home region is ErrNoEndpoint.
func TestDial(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := context.Background()
	if err := pg.CreateDatabase(ctx, "dial"); err != nil {
		t.Fatal(err)
	}
	sh := Info{ID: "s1", HomeRegion: "eu-west", Database: "dial",
		Endpoints: map[string]string{"eu-west": "127.0.0.1:1"}}
	conn, err := Dial(ctx, sh, Config{User: "postgres", AppName: "meridian-relay",
		DialVia: map[string]string{"127.0.0.1:1": pg.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var user, db, app, timeout string
	if err := conn.QueryRow(ctx, `SELECT current_user, current_database(), current_setting('application_name'),
		current_setting('statement_timeout')`).Scan(&user, &db, &app, &timeout); err != nil {
		t.Fatal(err)
	}
	if user != "postgres" || db != "dial" || app != "meridian-relay" || timeout != "1s" {
		t.Fatalf("session = user %q, db %q, app %q, statement_timeout %q; want postgres, dial, meridian-relay, 1s", user, db, app, timeout)
	}
	sh.HomeRegion = "us-east"
	if _, err := Dial(ctx, sh, Config{User: "postgres"}); !errors.Is(err, ErrNoEndpoint) {
		t.Fatalf("Dial without a home endpoint: %v, want ErrNoEndpoint", err)
	}
}
