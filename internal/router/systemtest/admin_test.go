package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/migrations"
)

// TestCreateTenantResumes makes the second step of a tenant creation fail for real — the home
// shard's database refuses the tenant row (INSERT revoked from the app role) after the map has
// pinned the tenant — and checks that the tenant is not stranded: a retry with the same body
// completes it with the answer the first attempt would have given, its data routes work, a
// create naming another region (or none) is a conflict rather than a resume, and a create of
// the finished tenant is 409.
func TestCreateTenantResumes(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	ctx := context.Background()
	admin := adminToken(t)
	const id = "resumeco"
	shard := c.shards["eu-west"]
	conn, err := c.pg["eu-west"].Connect(ctx, c.dbs[shard])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}

	exec("REVOKE INSERT ON tenants FROM " + migrations.AppRole)
	body := `{"id":"` + id + `","region":"eu-west"}`
	if a := c.do("us-east", "POST", "/admin/v1/tenants", admin, body); a.status < 500 {
		t.Fatalf("create while the shard refuses the tenant row: %d %s, want a 5xx", a.status, a.body)
	}
	// The first step happened: the map pins the tenant to the eu-west shard.
	testenv.WaitFor(t, 5*time.Second, func() error {
		if pin := c.routers["us-west"].Node.Map().Pins()[id]; pin != shard {
			return fmt.Errorf("after the failed create the map pins %s to %q, want %q", id, pin, shard)
		}
		return nil
	})
	if a := c.do("us-east", "GET", "/v1/collections/things/records/r1", dataToken(t, id), ""); a.status != 404 {
		t.Fatalf("data read of the half-created tenant: %d %s, want 404", a.status, a.body)
	}

	// A create that asks for another placement does not complete this one.
	for _, other := range []string{`{"id":"` + id + `","region":"us-east"}`, `{"id":"` + id + `"}`} {
		if a := c.do("us-west", "POST", "/admin/v1/tenants", admin, other); a.status != 409 {
			t.Errorf("create %s of a tenant pinned to eu-west: %d %s, want 409", other, a.status, a.body)
		}
	}
	if n := c.rows(shard, id, ""); n != 0 {
		t.Fatalf("%d records", n)
	}

	exec("GRANT INSERT ON tenants TO " + migrations.AppRole)
	a := c.do("us-west", "POST", "/admin/v1/tenants", admin, body)
	if a.status != 201 {
		t.Fatalf("retried create: %d %s, want 201", a.status, a.body)
	}
	var got map[string]any
	if err := json.Unmarshal(a.body, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"id": id, "shard": shard, "home_region": "eu-west", "pinned": true}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("retried create answered %s, want %v", a.body, want)
	}

	tok := dataToken(t, id)
	for _, via := range regions {
		a := c.do(via, "PUT", "/v1/collections/things/records/r-"+via, tok, `{"data":{"n":1}}`)
		if a.status != 201 {
			t.Fatalf("PUT via %s after the resumed create: %d %s", via, a.status, a.body)
		}
		if a := c.do(via, "GET", "/v1/collections/things/records/r-"+via, tok, "", "Prefer", "consistency=strong"); a.status != 200 {
			t.Fatalf("GET via %s after the resumed create: %d %s", via, a.status, a.body)
		}
	}
	if n := c.rows(shard, id, ""); n != len(regions) {
		t.Errorf("%d records on %s, want %d", n, shard, len(regions))
	}
	if a := c.do("us-east", "GET", "/admin/v1/tenants/"+id, admin, ""); a.status != 200 {
		t.Errorf("admin GET of the resumed tenant: %d %s", a.status, a.body)
	}
	if a := c.do("us-east", "POST", "/admin/v1/tenants", admin, body); a.status != 409 {
		t.Errorf("create of a finished tenant: %d %s, want 409", a.status, a.body)
	}
}
