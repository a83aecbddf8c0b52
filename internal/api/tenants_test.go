package api

import (
	"context"
	"encoding/json"
	"testing"
	"time"
)

func TestInternalTenants(t *testing.T) {
	e := newEnv(t)
	const ct = "Bearer cluster-token"
	create := func(id, shard string) result {
		return e.do("POST", "/internal/v1/tenants", ct, `{"id":"`+id+`","shard":"`+shard+`"}`, nil)
	}
	// POST: 201 when the row is made, 200 when it was already there (the router turns 200 into
	// its 409), 421 for a shard homed elsewhere, 400 for an unknown shard.
	if r := create("acme", "s1"); r.StatusCode != 201 {
		t.Fatalf("first create: %d %s", r.StatusCode, r.Body)
	}
	if r := create("acme", "s1"); r.StatusCode != 200 {
		t.Fatalf("second create: %d %s", r.StatusCode, r.Body)
	}
	if r := create("acme", "s2"); r.StatusCode != 201 {
		t.Fatalf("create on another shard: %d %s", r.StatusCode, r.Body)
	}
	wantProblem(t, create("acme", "s3"), 421)
	wantProblem(t, create("acme", "nope"), 400)
	wantProblem(t, e.do("POST", "/internal/v1/tenants", "Bearer wrong", `{"id":"acme","shard":"s1"}`, nil), 401)

	// Fence the row on s2 directly so GET has something non-default to report.
	conn, err := e.pg.Connect(context.Background(), e.dbs["s2"])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(context.Background(), `UPDATE tenants SET write_fenced = true, write_epoch = 7, status = 'moved' WHERE tenant_id = 'acme'`); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())

	e.maps.mu.Lock()
	e.maps.pins["acme"] = "s1"
	e.maps.mu.Unlock()
	tests := []struct {
		name, path string
		status     int
		want       TenantRow
	}{
		{"shard from map", "/internal/v1/tenants/acme", 200, TenantRow{ID: "acme", Shard: "s1", Status: "active"}},
		{"explicit shard", "/internal/v1/tenants/acme?shard=s1", 200, TenantRow{ID: "acme", Shard: "s1", Status: "active"}},
		{"fenced row", "/internal/v1/tenants/acme?shard=s2", 200, TenantRow{ID: "acme", Shard: "s2", Status: "moved", WriteEpoch: 7, Fenced: true}},
		{"missing row", "/internal/v1/tenants/ghost?shard=s1", 404, TenantRow{}},
		{"missing on this shard", "/internal/v1/tenants/acme?shard=s3", 404, TenantRow{}},
		{"unknown shard", "/internal/v1/tenants/acme?shard=zz", 400, TenantRow{}},
		{"bad id", "/internal/v1/tenants/A!", 400, TenantRow{}},
		{"unknown parameter", "/internal/v1/tenants/acme?shrd=s1", 400, TenantRow{}},
		{"repeated shard", "/internal/v1/tenants/acme?shard=s1&shard=s2", 400, TenantRow{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("GET", tc.path, ct, "", nil)
			if tc.status != 200 {
				wantProblem(t, r, tc.status)
				return
			}
			if r.StatusCode != 200 {
				t.Fatalf("%d %s", r.StatusCode, r.Body)
			}
			var got TenantRow
			if err := json.Unmarshal([]byte(r.Body), &got); err != nil {
				t.Fatal(err)
			}
			if time.Since(got.CreatedAt) > time.Hour || got.CreatedAt.IsZero() {
				t.Fatalf("created_at %v", got.CreatedAt)
			}
			got.CreatedAt = time.Time{}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	wantProblem(t, e.do("GET", "/internal/v1/tenants/acme", "Bearer wrong", "", nil), 401)
	wantProblem(t, e.do("GET", "/internal/v1/tenants/acme", "", "", nil), 401)
}
