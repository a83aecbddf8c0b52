package api

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/migrations"
)

// TestListTenants: GET /internal/v1/tenants lists a shard's tenant rows in id order after a
// cursor id (through the worker role, which sees every tenant), refuses bad parameters with
// 400 and a missing cluster token with 401, and answers 501 on a node without worker-role
// connections.
func TestListTenants(t *testing.T) {
	workers := shards.New(shards.Config{User: migrations.WorkerRole})
	t.Cleanup(workers.Close)
	e := newEnv(t, func(nc *nodeConfig) { nc.Store.Workers = workers })
	for _, id := range []string{"initech", "acme", "globex"} {
		e.createTenant(id, "s1")
	}
	e.createTenant("umbrella", "s2")
	const ct = "Bearer cluster-token"
	list := func(query string) []TenantListItem {
		t.Helper()
		r := e.do("GET", "/internal/v1/tenants?"+query, ct, "", nil)
		if r.StatusCode != 200 {
			t.Fatalf("GET ?%s: %d %s", query, r.StatusCode, r.Body)
		}
		var ans TenantList
		if err := json.Unmarshal([]byte(r.Body), &ans); err != nil {
			t.Fatal(err)
		}
		return ans.Items
	}
	ids := func(items []TenantListItem) (out []string) {
		for _, it := range items {
			if it.Status != "active" {
				t.Errorf("%s has status %q, want active", it.ID, it.Status)
			}
			out = append(out, it.ID)
		}
		return out
	}
	for _, c := range []struct {
		query string
		want  []string
	}{
		{"shard=s1", []string{"acme", "globex", "initech"}},
		{"shard=s2", []string{"umbrella"}},
		{"shard=s1&limit=2", []string{"acme", "globex"}},
		{"shard=s1&after=acme&limit=1", []string{"globex"}},
		{"shard=s1&after=initech", nil},
	} {
		if got := ids(list(c.query)); !slices.Equal(got, c.want) {
			t.Errorf("GET ?%s = %v, want %v", c.query, got, c.want)
		}
	}
	for _, c := range []struct {
		query, authz string
		status       int
	}{
		{"shard=s1", "", 401},
		{"", ct, 400},
		{"shard=nope", ct, 400},
		{"shard=s1&limit=0", ct, 400},
		{"shard=s1&limit=1001", ct, 400},
		{"shard=s1&after=NOT_AN_ID", ct, 400},
		{"shard=s1&shard=s2", ct, 400},
		{"shard=s1&other=1", ct, 400},
	} {
		if r := e.do("GET", "/internal/v1/tenants?"+c.query, c.authz, "", nil); r.StatusCode != c.status {
			t.Errorf("GET ?%s (auth %q): %d %s, want %d", c.query, c.authz, r.StatusCode, r.Body, c.status)
		}
	}

	plain := newEnv(t)
	plain.createTenant("acme", "s1")
	if r := plain.do("GET", "/internal/v1/tenants?shard=s1", ct, "", nil); r.StatusCode != 501 {
		t.Errorf("GET without worker connections: %d %s, want 501", r.StatusCode, r.Body)
	}
}
