package api

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/replication"
)

func decodeRecord(t *testing.T, body string) record {
	t.Helper()
	var r record
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("decode record %q: %v", body, err)
	}
	return r
}

func wantProblem(t *testing.T, r result, status int) {
	t.Helper()
	if r.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", r.StatusCode, status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content type %q for %d", ct, status)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(r.Body), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"type", "title", "status", "detail", "request_id"} {
		if _, ok := m[k]; !ok {
			t.Fatalf("problem lacks %q: %s", k, r.Body)
		}
	}
	if int(m["status"].(float64)) != status || m["request_id"] != r.Header.Get("X-Request-Id") {
		t.Fatalf("problem %s vs header %q", r.Body, r.Header.Get("X-Request-Id"))
	}
}

func TestRecordLifecycle(t *testing.T) {
	e := newEnv(t)
	e.createTenant("acme", "s1")
	// Recording the tenant again is idempotent.
	if r := e.do("POST", "/internal/v1/tenants", "Bearer cluster-token", `{"id":"acme","shard":"s1"}`, nil); r.StatusCode != 200 {
		t.Fatalf("re-create tenant: %d", r.StatusCode)
	}
	rw := "Bearer " + e.token("acme", "data:read data:write")

	r := e.do("POST", "/v1/collections/notes/records", rw, `{"data":{"title":"a","n":1,"tags":["x"]}}`, nil)
	if r.StatusCode != 201 {
		t.Fatalf("create: %d %s", r.StatusCode, r.Body)
	}
	rec := decodeRecord(t, r.Body)
	if rec.Version != 1 || rec.Collection != "notes" || len(rec.ID) != 36 || r.Header.Get("Location") != "/v1/collections/notes/records/"+rec.ID {
		t.Fatalf("create: %+v %v", rec, r.Header)
	}
	for _, h := range []string{"X-Request-Id", "X-Served-Region", "Consistency-Token", "ETag"} {
		if r.Header.Get(h) == "" {
			t.Fatalf("create lacks %s", h)
		}
	}
	if tok, err := replication.DecodeToken(r.Header.Get("Consistency-Token")); err != nil || tok.Shard != "s1" || tok.LSN == 0 {
		t.Fatalf("consistency token: %+v %v", tok, err)
	}
	path := "/v1/collections/notes/records/" + rec.ID

	r = e.do("GET", path, rw, "", nil)
	got := decodeRecord(t, r.Body)
	if r.StatusCode != 200 || r.Header.Get("ETag") != `"1"` || r.Header.Get("X-Read-Source") != "primary" || r.Header.Get("X-Served-Region") != region {
		t.Fatalf("get: %d %v", r.StatusCode, r.Header)
	}
	if string(got.Data) != `{"n": 1, "tags": ["x"], "title": "a"}` && !jsonEqual(got.Data, `{"n":1,"tags":["x"],"title":"a"}`) {
		t.Fatalf("get data %s", got.Data)
	}
	r = e.do("GET", path, rw, "", map[string]string{"If-None-Match": `"1"`})
	if r.StatusCode != 304 || r.Header.Get("ETag") != `"1"` || r.Body != "" {
		t.Fatalf("304: %d %v %q", r.StatusCode, r.Header, r.Body)
	}
	if r = e.do("GET", path, rw, "", map[string]string{"If-None-Match": `"7"`}); r.StatusCode != 200 {
		t.Fatalf("if-none-match other: %d", r.StatusCode)
	}

	r = e.do("PUT", path, rw, `{"data":{"title":"b"}}`, map[string]string{"If-Match": `"1"`})
	if r.StatusCode != 200 || decodeRecord(t, r.Body).Version != 2 || r.Header.Get("Consistency-Token") == "" {
		t.Fatalf("put replace: %d %s", r.StatusCode, r.Body)
	}
	wantProblem(t, e.do("PUT", path, rw, `{"data":{}}`, map[string]string{"If-Match": `"1"`}), 412)

	r = e.do("PATCH", path, rw, `{"data":{"title":null,"x":{"y":1}}}`, map[string]string{"Content-Type": "application/merge-patch+json", "If-Match": `"2"`})
	if r.StatusCode != 200 {
		t.Fatalf("patch: %d %s", r.StatusCode, r.Body)
	}
	if p := decodeRecord(t, r.Body); p.Version != 3 || !jsonEqual(p.Data, `{"x":{"y":1}}`) {
		t.Fatalf("patch result %+v %s", p, p.Data)
	}
	wantProblem(t, e.do("PATCH", path, rw, `{"data":{}}`, map[string]string{"If-Match": `"2"`}), 412)

	wantProblem(t, e.do("DELETE", path, rw, "", map[string]string{"If-Match": `"2"`}), 412)
	r = e.do("DELETE", path, rw, "", map[string]string{"If-Match": `"3"`})
	if r.StatusCode != 204 || r.Body != "" || r.Header.Get("Consistency-Token") == "" {
		t.Fatalf("delete: %d %q", r.StatusCode, r.Body)
	}
	wantProblem(t, e.do("GET", path, rw, "", nil), 404)
	wantProblem(t, e.do("DELETE", path, rw, "", nil), 404)
	wantProblem(t, e.do("PATCH", path, rw, `{"data":{}}`, nil), 404)
	// PUT after delete re-creates with the next version.
	r = e.do("PUT", path, rw, `{"data":{"again":true}}`, nil)
	if r.StatusCode != 201 || decodeRecord(t, r.Body).Version != 5 {
		t.Fatalf("put after delete: %d %s", r.StatusCode, r.Body)
	}
	// PUT of a new id: 201 with Location.
	r = e.do("PUT", "/v1/collections/notes/records/my-id_1", rw, `{"data":{}}`, nil)
	if r.StatusCode != 201 || r.Header.Get("Location") != "/v1/collections/notes/records/my-id_1" {
		t.Fatalf("put new: %d %v", r.StatusCode, r.Header)
	}
	wantProblem(t, e.do("PUT", "/v1/collections/notes/records/other", rw, `{"data":{}}`, map[string]string{"If-Match": `"1"`}), 412)

	// Every write appended one outbox event, seq gap-free.
	conn, err := e.pg.Connect(context.Background(), e.dbs["s1"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, _ := conn.Query(context.Background(), `SELECT seq, op, version, lsn IS NOT NULL FROM outbox WHERE tenant_id = 'acme' ORDER BY seq`)
	type ev struct {
		Seq     int64
		Op      string
		Version int64
		HasLSN  bool
	}
	evs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[ev])
	if err != nil {
		t.Fatal(err)
	}
	wantOps := []string{"create", "update", "update", "delete", "create", "create"}
	if len(evs) != len(wantOps) {
		t.Fatalf("outbox %+v", evs)
	}
	for i, ev := range evs {
		if ev.Seq != int64(i+1) || ev.Op != wantOps[i] || !ev.HasLSN {
			t.Fatalf("outbox[%d] = %+v", i, ev)
		}
	}
}

func jsonEqual(a []byte, b string) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

func TestErrors(t *testing.T) {
	e := newEnv(t)
	e.createTenant("acme", "s1")
	e.pinTenant("faraway", "s3") // homed in eu-west: its row is made there, not through this node
	rw := "Bearer " + e.token("acme", "data:read data:write")
	ro := "Bearer " + e.token("acme", "data:read")
	ghost := "Bearer " + e.token("ghost", "data:read data:write")
	far := "Bearer " + e.token("faraway", "data:read data:write")
	big := `{"data":{"x":"` + strings.Repeat("a", 1<<20) + `"}}`
	rec := decodeRecord(t, e.do("POST", "/v1/collections/notes/records", rw, `{"data":{}}`, nil).Body)
	one := "/v1/collections/notes/records/" + rec.ID
	list := "/v1/collections/notes/records"
	tests := []struct {
		name, method, path, authz, body string
		hdr                             map[string]string
		want                            int
	}{
		{"no token", "GET", one, "", "", nil, 401},
		{"bad token", "GET", one, "Bearer x.y.z", "", nil, 401},
		{"wrong scope write", "POST", list, ro, `{"data":{}}`, nil, 403},
		{"wrong scope delete", "DELETE", one, ro, "", nil, 403},
		{"tenant never created get", "GET", one, ghost, "", nil, 404},
		{"tenant never created post", "POST", list, ghost, `{"data":{}}`, nil, 404},
		{"tenant never created list", "GET", list, ghost, "", nil, 404},
		{"bad collection", "GET", "/v1/collections/Bad/records", rw, "", nil, 400},
		{"bad id", "GET", "/v1/collections/notes/records/a.b", rw, "", nil, 400},
		{"missing record", "GET", "/v1/collections/notes/records/nope", rw, "", nil, 404},
		{"trailing data", "POST", list, rw, `{"data":{}} {}`, nil, 400},
		{"unknown field", "POST", list, rw, `{"data":{},"id":"x"}`, nil, 400},
		{"data not object", "POST", list, rw, `{"data":3}`, nil, 400},
		{"malformed", "POST", list, rw, `{"data":`, nil, 400},
		{"nul in data", "PUT", one, rw, `{"data":{"a":"\u0000"}}`, nil, 400},
		{"too large", "POST", list, rw, big, nil, 413},
		{"not json", "POST", list, rw, `{"data":{}}`, map[string]string{"Content-Type": "text/plain"}, 415},
		{"patch not json", "PATCH", one, rw, `{"data":{}}`, map[string]string{"Content-Type": "application/xml"}, 415},
		{"put no body type", "PUT", one, rw, "", nil, 415},
		{"limit 201", "GET", list + "?limit=201", rw, "", nil, 400},
		{"limit 0", "GET", list + "?limit=0", rw, "", nil, 400},
		{"limit -1", "GET", list + "?limit=-1", rw, "", nil, 400},
		{"limit abc", "GET", list + "?limit=abc", rw, "", nil, 400},
		{"bad order", "GET", list + "?order=name", rw, "", nil, 400},
		{"altered cursor", "GET", list + "?cursor=AQBhYmNkZWZnaGlqa2xtbm9wcQ", rw, "", nil, 400},
		{"too many ids", "GET", list + "?ids=" + strings.TrimSuffix(strings.Repeat("a,", 201), ","), rw, "", nil, 400},
		{"bad where", "GET", list + "?where[a.b]=1", rw, "", nil, 400},
		{"bad if-match", "PUT", one, rw, `{"data":{}}`, map[string]string{"If-Match": "5"}, 400},
		{"bad idempotency key", "POST", list, rw, `{"data":{}}`, map[string]string{"Idempotency-Key": "has space"}, 400},
		{"bad shardmap version", "GET", one, rw, "", map[string]string{"X-Shardmap-Version": "x"}, 400},
		{"future shardmap version", "GET", one, rw, "", map[string]string{"X-Shardmap-Version": "999"}, 503},
		{"misdirected write", "POST", list, far, `{"data":{}}`, nil, 421},
		{"no route", "GET", "/v2/x", rw, "", nil, 404},
		{"method not allowed", "POST", one, rw, `{"data":{}}`, nil, 405},
		{"internal without token", "POST", "/internal/v1/tenants", "", `{"id":"x1x","shard":"s1"}`, nil, 401},
		{"internal bad tenant", "POST", "/internal/v1/tenants", "Bearer cluster-token", `{"id":"X","shard":"s1"}`, nil, 400},
		{"internal unknown shard", "POST", "/internal/v1/tenants", "Bearer cluster-token", `{"id":"xyz","shard":"s9"}`, nil, 400},
		{"internal other region", "POST", "/internal/v1/tenants", "Bearer cluster-token", `{"id":"xyz","shard":"s3"}`, nil, 421},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(tt.method, tt.path, tt.authz, tt.body, tt.hdr)
			wantProblem(t, r, tt.want)
			if tt.want == 421 && r.Header.Get("X-Shardmap-Version") == "" {
				t.Fatal("421 without X-Shardmap-Version")
			}
			if tt.want == 503 && r.Header.Get("Retry-After") == "" {
				t.Fatal("503 without Retry-After")
			}
		})
	}
	// A fenced tenant's writes are refused with a retryable 503; reads continue.
	conn, err := e.pg.Connect(context.Background(), e.dbs["s1"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), `UPDATE tenants SET write_fenced = true WHERE tenant_id = 'acme'`); err != nil {
		t.Fatal(err)
	}
	r := e.do("POST", list, rw, `{"data":{}}`, nil)
	wantProblem(t, r, 503)
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("fenced 503 without Retry-After")
	}
	if r := e.do("GET", one, rw, "", nil); r.StatusCode != 200 {
		t.Fatalf("read while fenced: %d", r.StatusCode)
	}
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM records`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("records after refused writes: %d %v", n, err)
	}
}
