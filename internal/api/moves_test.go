package api

import (
	"context"
	"strings"
	"testing"
)

// TestTenantEpoch: X-Tenant-Epoch is an unsigned integer (else 400, reads included); a write
// routed on an epoch older than the node's map is 421 with the node's map version, before the
// store runs; one the tenant's row on the shard has moved past (write_epoch) is 421 from the
// store; the same epoch, a newer one, or none (the node's epoch applies) write. Reads are not
// refused for their epoch.
func TestTenantEpoch(t *testing.T) {
	e := newEnv(t)
	e.createTenant("acme", "s1")
	e.maps.mu.Lock()
	e.maps.epochs = map[string]uint64{"acme": 3}
	e.maps.mu.Unlock()
	tok := "Bearer " + e.token("acme", "data:read data:write")
	put := func(epoch string) result {
		var h map[string]string
		if epoch != "" {
			h = map[string]string{"X-Tenant-Epoch": epoch}
		}
		return e.do("PUT", "/v1/collections/notes/records/n1", tok, `{"data":{"a":1}}`, h)
	}
	for _, bad := range []string{"abc", "-1", "1.5", "18446744073709551616", "3x"} {
		r := put(bad)
		wantProblem(t, r, 400)
		if !strings.Contains(r.Body, "invalid-header") {
			t.Fatalf("%q: %s", bad, r.Body)
		}
		wantProblem(t, e.do("GET", "/v1/collections/notes/records/n1", tok, "", map[string]string{"X-Tenant-Epoch": bad}), 400)
	}
	for _, old := range []string{"1", "2"} {
		r := put(old)
		wantProblem(t, r, 421)
		if r.Header.Get("X-Shardmap-Version") != "10" || !strings.Contains(r.Body, "misdirected-request") {
			t.Fatalf("epoch %s: %v %s", old, r.Header, r.Body)
		}
	}
	for _, ok := range []string{"3", "", "0", "4"} {
		if r := put(ok); r.StatusCode != 200 && r.StatusCode != 201 {
			t.Fatalf("epoch %q: %d %s", ok, r.StatusCode, r.Body)
		}
	}
	if r := e.do("GET", "/v1/collections/notes/records/n1", tok, "", map[string]string{"X-Tenant-Epoch": "1"}); r.StatusCode != 200 {
		t.Fatalf("read at an old epoch: %d %s", r.StatusCode, r.Body)
	}

	// The row on the shard moved on (a cutover our map has not seen): the store refuses.
	conn, err := e.pg.Connect(context.Background(), e.dbs["s1"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), `UPDATE tenants SET write_epoch = 5 WHERE tenant_id = 'acme'`); err != nil {
		t.Fatal(err)
	}
	for _, stale := range []string{"3", "4", ""} {
		r := put(stale)
		wantProblem(t, r, 421)
		if r.Header.Get("X-Shardmap-Version") != "10" {
			t.Fatalf("epoch %q: %v", stale, r.Header)
		}
	}
	if r := put("5"); r.StatusCode != 200 {
		t.Fatalf("epoch 5: %d %s", r.StatusCode, r.Body)
	}
}

// TestMirrorMetrics: a moving tenant's writes are mirrored to the map's MirrorTo shard and
// counted by result: skipped while the target has no row for the tenant, ok once it has.
func TestMirrorMetrics(t *testing.T) {
	e := newEnv(t)
	e.createTenant("acme", "s1")
	e.maps.mu.Lock()
	e.maps.mirror = map[string]string{"acme": "s2"}
	e.maps.mu.Unlock()
	tok := "Bearer " + e.token("acme", "data:read data:write")
	if r := e.do("PUT", "/v1/collections/notes/records/n1", tok, `{"data":{"a":1}}`, nil); r.StatusCode != 201 {
		t.Fatalf("%d %s", r.StatusCode, r.Body)
	}
	if err := e.store.PrepareTarget(context.Background(), "acme", "s1", "s2"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if r := e.do("PUT", "/v1/collections/notes/records/n2", tok, `{"data":{"a":2}}`, nil); r.StatusCode/100 != 2 {
			t.Fatalf("%d %s", r.StatusCode, r.Body)
		}
	}
	metrics := e.do("GET", "/metrics", "", "", nil).Body
	for _, want := range []string{`meridian_api_mirror_writes_total{result="ok"} 2`, `meridian_api_mirror_writes_total{result="skipped"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("metrics lack %s", want)
		}
	}
	conn, err := e.pg.Connect(context.Background(), e.dbs["s2"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var id string
	var version int64
	if err := conn.QueryRow(context.Background(), `SELECT id, version FROM records WHERE tenant_id = 'acme'`).Scan(&id, &version); err != nil || id != "n2" || version != 2 {
		t.Fatalf("target: %s v%d %v", id, version, err)
	}
}
