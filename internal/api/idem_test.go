package api

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/migrations"
)

func (e *env) count(shard, tenant string) int {
	e.t.Helper()
	conn, err := e.pg.Connect(context.Background(), e.dbs[shard])
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM records WHERE tenant_id = $1`, tenant).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

func TestIdempotencyConcurrent(t *testing.T) {
	e := newEnv(t)
	e.createTenant("acme", "s1")
	rw := "Bearer " + e.token("acme", "data:read data:write")
	const n = 50
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = e.do("POST", "/v1/collections/notes/records", rw, `{"data":{"k":1}}`, map[string]string{"Idempotency-Key": "key-1"})
		}()
	}
	wg.Wait()
	replays := 0
	for i, r := range results {
		if r.StatusCode != 201 || r.Body != results[0].Body || r.Header.Get("Location") != results[0].Header.Get("Location") || r.Header.Get("ETag") != `"1"` {
			t.Fatalf("result %d: %d %s (first %s)", i, r.StatusCode, r.Body, results[0].Body)
		}
		if r.Header.Get("Consistency-Token") == "" {
			t.Fatalf("result %d lacks Consistency-Token", i)
		}
		if r.Header.Get("Idempotent-Replayed") == "true" {
			replays++
		}
	}
	if got := e.count("s1", "acme"); got != 1 || replays != n-1 {
		t.Fatalf("%d records, %d replays", got, replays)
	}
	// Same key, different body → 422; same key on PATCH of another path → 422 too.
	wantProblem(t, e.do("POST", "/v1/collections/notes/records", rw, `{"data":{"k":2}}`, map[string]string{"Idempotency-Key": "key-1"}), 422)
	// PATCH with a key: replay answers the first response even though the record moved on.
	path := results[0].Header.Get("Location")
	p1 := e.do("PATCH", path, rw, `{"data":{"p":1}}`, map[string]string{"Idempotency-Key": "pk"})
	e.do("PUT", path, rw, `{"data":{}}`, nil)
	p2 := e.do("PATCH", path, rw, `{"data":{"p":1}}`, map[string]string{"Idempotency-Key": "pk"})
	if p1.StatusCode != 200 || p2.StatusCode != 200 || p1.Body != p2.Body || p2.Header.Get("ETag") != `"2"` {
		t.Fatalf("patch replay: %d %s / %d %s", p1.StatusCode, p1.Body, p2.StatusCode, p2.Body)
	}
}

func TestIdempotencyExpiry(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e := newEnv(t, func(nc *nodeConfig) { nc.Store.Now = clock; nc.Store.IdemTTL = time.Hour })
	e.createTenant("acme", "s1")
	rw := "Bearer " + e.token("acme", "data:read data:write")
	hdr := map[string]string{"Idempotency-Key": "k"}
	a := e.do("POST", "/v1/collections/notes/records", rw, `{"data":{}}`, hdr)
	b := e.do("POST", "/v1/collections/notes/records", rw, `{"data":{}}`, hdr)
	if a.Body != b.Body {
		t.Fatal("replay within TTL differs")
	}
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	c := e.do("POST", "/v1/collections/notes/records", rw, `{"data":{}}`, hdr)
	if c.StatusCode != 201 || c.Body == a.Body {
		t.Fatalf("after expiry the key must be free: %d", c.StatusCode)
	}
	n, err := e.store.CleanupIdempotencyKeys(context.Background(), "s1")
	if err != nil || n != 0 {
		// The only row was re-claimed with a fresh expiry, so nothing is expired.
		t.Fatalf("cleanup: %d %v", n, err)
	}
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	if n, err := e.store.CleanupIdempotencyKeys(context.Background(), "s1"); err != nil || n != 1 {
		t.Fatalf("cleanup after expiry: %d %v", n, err)
	}
}

// TestCrashAfterSend cancels requests at many points after they were sent; a retry with the
// same key always ends with exactly one record.
func TestCrashAfterSend(t *testing.T) {
	e := newEnv(t)
	e.createTenant("acme", "s1")
	rw := "Bearer " + e.token("acme", "data:read data:write")
	for i, delay := range []time.Duration{0, time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond, 8 * time.Millisecond, 20 * time.Millisecond} {
		key := "crash-" + string(rune('a'+i))
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "POST", e.http.URL+"/v1/collections/c"+string(rune('a'+i))+"/records", strings.NewReader(`{"data":{"x":1}}`))
		req.Header.Set("Authorization", rw)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		go func() { time.Sleep(delay); cancel() }() // the "crash": the client drops the connection
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
		cancel()
		r := e.do("POST", "/v1/collections/c"+string(rune('a'+i))+"/records", rw, `{"data":{"x":1}}`, map[string]string{"Idempotency-Key": key})
		if r.StatusCode != 201 {
			t.Fatalf("retry %d: %d %s", i, r.StatusCode, r.Body)
		}
	}
	if got := e.count("s1", "acme"); got != 6 {
		t.Fatalf("%d records after 6 crashed+retried creates", got)
	}
}

// TestIdempotencyCleanupWorker: with worker pools (migrations.WorkerRole) the cleanup purges
// expired keys of every tenant on the shard — including tenants this node never saw — and
// leaves unexpired keys alone.
func TestIdempotencyCleanupWorker(t *testing.T) {
	workers := shards.New(shards.Config{User: migrations.WorkerRole})
	t.Cleanup(workers.Close)
	e := newEnv(t, func(nc *nodeConfig) { nc.Store.Workers = workers })
	e.createTenant("acme", "s1")
	e.createTenant("globex", "s1")
	su := testenv.NewPool(t, e.pg.DSN(e.dbs["s1"]))
	ctx := context.Background()
	for _, k := range []struct {
		tenant, key, expires string
	}{
		{"acme", "old", "now() - interval '1 minute'"},
		{"globex", "old", "now() - interval '1 hour'"},
		{"globex", "fresh", "now() + interval '1 hour'"},
	} {
		if _, err := su.Exec(ctx, `INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, expires_at)
			VALUES ($1, $2, '\x00', 201, `+k.expires+`)`, k.tenant, k.key); err != nil {
			t.Fatal(err)
		}
	}
	n, err := e.store.CleanupIdempotencyKeys(ctx, "s1")
	if err != nil || n != 2 {
		t.Fatalf("worker cleanup: deleted %d, %v; want 2", n, err)
	}
	var left []string
	rows, err := su.Query(ctx, `SELECT tenant_id || '/' || key FROM idempotency_keys ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		left = append(left, s)
	}
	if len(left) != 1 || left[0] != "globex/fresh" {
		t.Fatalf("keys left after cleanup: %v, want [globex/fresh]", left)
	}
}
