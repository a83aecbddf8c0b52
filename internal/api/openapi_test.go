package api

import (
	"encoding/json"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	apidoc "github.com/meridian-dev/meridian/api"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/migrations"
)

type oaDoc struct {
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas map[string]map[string]any `json:"schemas"`
	} `json:"components"`
}

type oaOp struct {
	Responses map[string]struct {
		Content map[string]struct {
			Schema map[string]any `json:"schema"`
		} `json:"content"`
	} `json:"responses"`
}

// checkSchema verifies required members and basic types of v against schema.
func (d *oaDoc) checkSchema(t *testing.T, where string, schema map[string]any, v any) {
	t.Helper()
	if ref, ok := schema["$ref"].(string); ok {
		schema = d.Components.Schemas[strings.TrimPrefix(ref, "#/components/schemas/")]
		if schema == nil {
			t.Fatalf("%s: dangling $ref %s", where, ref)
		}
	}
	types := map[string]bool{}
	switch ty := schema["type"].(type) {
	case string:
		types[ty] = true
	case []any:
		for _, x := range ty {
			types[x.(string)] = true
		}
	}
	switch val := v.(type) {
	case map[string]any:
		if len(types) > 0 && !types["object"] {
			t.Fatalf("%s: object where %v expected", where, types)
		}
		for _, r := range asStrings(schema["required"]) {
			if _, ok := val[r]; !ok {
				t.Fatalf("%s: required %q missing", where, r)
			}
		}
		props, _ := schema["properties"].(map[string]any)
		for k, pv := range val {
			if ps, ok := props[k].(map[string]any); ok {
				d.checkSchema(t, where+"."+k, ps, pv)
			} else if schema["additionalProperties"] == false {
				t.Fatalf("%s: unexpected member %q", where, k)
			}
		}
	case []any:
		if len(types) > 0 && !types["array"] {
			t.Fatalf("%s: array where %v expected", where, types)
		}
		if is, ok := schema["items"].(map[string]any); ok {
			for i, x := range val {
				d.checkSchema(t, where+"["+strconv.Itoa(i)+"]", is, x)
			}
		}
	case nil:
		if len(types) > 0 && !types["null"] {
			t.Fatalf("%s: null where %v expected", where, types)
		}
	case string:
		if len(types) > 0 && !types["string"] {
			t.Fatalf("%s: string where %v expected", where, types)
		}
	case float64:
		if len(types) > 0 && !types["integer"] && !types["number"] {
			t.Fatalf("%s: number where %v expected", where, types)
		}
	}
}

// matchTemplate matches a path against an OpenAPI path template segment by segment.
func matchTemplate(tmpl, path string) bool {
	ts, ps := strings.Split(tmpl, "/"), strings.Split(path, "/")
	if len(ts) != len(ps) {
		return false
	}
	for i := range ts {
		if strings.HasPrefix(ts[i], "{") && ps[i] != "" {
			continue
		}
		if ts[i] != ps[i] {
			return false
		}
	}
	return true
}

func asStrings(v any) []string {
	var out []string
	if l, ok := v.([]any); ok {
		for _, x := range l {
			out = append(out, x.(string))
		}
	}
	return out
}

// check finds the documented operation and response for a real response and validates it.
func (d *oaDoc) check(t *testing.T, method, path string, r result) {
	t.Helper()
	path, _, _ = strings.Cut(path, "?")
	for tmpl, item := range d.Paths {
		if !matchTemplate(tmpl, path) {
			continue
		}
		raw, ok := item[strings.ToLower(method)]
		if !ok {
			t.Fatalf("%s %s: method not documented", method, tmpl)
		}
		var op oaOp
		if err := json.Unmarshal(raw, &op); err != nil {
			t.Fatal(err)
		}
		resp, ok := op.Responses[strconv.Itoa(r.StatusCode)]
		if !ok {
			t.Fatalf("%s %s: status %d not documented", method, tmpl, r.StatusCode)
		}
		if r.Body == "" {
			if len(resp.Content) > 0 {
				t.Fatalf("%s %s %d: documented body missing", method, tmpl, r.StatusCode)
			}
			return
		}
		mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		c, ok := resp.Content[mt]
		if !ok {
			t.Fatalf("%s %s %d: content type %q not documented", method, tmpl, r.StatusCode, mt)
		}
		if strings.HasSuffix(mt, "json") {
			var v any
			if err := json.Unmarshal([]byte(r.Body), &v); err != nil {
				t.Fatalf("%s %s: body not JSON: %v", method, tmpl, err)
			}
			d.checkSchema(t, method+" "+tmpl+" "+strconv.Itoa(r.StatusCode), c.Schema, v)
		}
		return
	}
	t.Fatalf("%s %s: path not documented", method, path)
}

func TestOpenAPIConformance(t *testing.T) {
	var d oaDoc
	if err := json.Unmarshal(apidoc.OpenAPI, &d); err != nil {
		t.Fatal(err)
	}
	feed := &storeFeed{}
	workers := shards.New(shards.Config{User: migrations.WorkerRole})
	t.Cleanup(workers.Close)
	e := newEnv(t, func(nc *nodeConfig) { nc.API.Changes = feed; nc.Store.Workers = workers })
	feed.store.Store(e.store)
	e.srv.openapi = apidoc.OpenAPI
	e.createTenant("acme", "s1")
	e.pinTenant("faraway", "s3")
	rw := "Bearer " + e.token("acme", "data:read data:write")
	ro := "Bearer " + e.token("acme", "data:read")
	ct := "Bearer cluster-token"
	type step struct {
		method, path, authz, body string
		hdr                       map[string]string
	}
	run := func(s step) result {
		r := e.do(s.method, s.path, s.authz, s.body, s.hdr)
		d.check(t, s.method, s.path, r)
		return r
	}
	created := run(step{"POST", "/v1/collections/notes/records", rw, `{"data":{"a":1}}`, map[string]string{"Idempotency-Key": "k"}})
	loc := created.Header.Get("Location")
	coverage := map[string]bool{}
	steps := []step{
		{"POST", "/v1/collections/notes/records", rw, `{"data":{"a":2}}`, map[string]string{"Idempotency-Key": "k"}}, // 422
		{"POST", "/v1/collections/notes/records", ro, `{"data":{}}`, nil},
		{"POST", "/v1/collections/notes/records", "", `{"data":{}}`, nil},
		{"POST", "/v1/collections/notes/records", "Bearer " + e.token("faraway", "data:write"), `{"data":{}}`, nil},
		{"POST", "/v1/collections/notes/records", rw, `{"data":{}}`, map[string]string{"Content-Type": "text/plain"}},
		{"POST", "/v1/collections/notes/records", rw, `{"data":{"x":"` + strings.Repeat("x", 1<<20) + `"}}`, nil},
		{"GET", loc, rw, "", nil},
		{"GET", loc, rw, "", map[string]string{"If-None-Match": `"1"`}},
		{"GET", loc, rw, "", map[string]string{"Prefer": "consistency=strong"}},
		{"GET", loc, rw, "", map[string]string{"Consistency-Token": "not-a-token!"}},
		{"GET", "/v1/collections/notes/records/nope", rw, "", nil},
		{"GET", "/v1/collections/notes/records?limit=1", rw, "", nil},
		{"GET", "/v1/collections/notes/records?limit=201", rw, "", nil},
		{"GET", "/v1/collections/notes/records?ids=a,b", rw, "", nil},
		{"GET", "/v1/collections/notes/records", "Bearer " + e.token("ghost", "data:read"), "", nil},
		{"PUT", loc, rw, `{"data":{"b":1}}`, nil},
		{"PUT", "/v1/collections/notes/records/new-one", rw, `{"data":{}}`, nil},
		{"PUT", loc, rw, `{"data":{}}`, map[string]string{"If-Match": `"9"`}},
		{"PATCH", loc, rw, `{"data":{"b":null}}`, map[string]string{"Content-Type": "application/merge-patch+json"}},
		{"DELETE", loc, rw, "", nil},
		{"POST", "/internal/v1/tenants", ct, `{"id":"newco","shard":"s2"}`, nil},
		{"POST", "/internal/v1/tenants", ct, `{"id":"newco","shard":"s2"}`, nil},
		{"POST", "/internal/v1/tenants", "", `{"id":"newco","shard":"s2"}`, nil},
		{"GET", "/internal/v1/tenants/newco?shard=s2", ct, "", nil},
		{"GET", "/internal/v1/tenants/ghost", ct, "", nil},
		{"GET", "/internal/v1/tenants/newco", "", "", nil},
		{"GET", "/internal/v1/tenants?shard=s2&limit=5", ct, "", nil},
		{"GET", "/internal/v1/tenants?shard=nope", ct, "", nil},
		{"GET", "/internal/v1/tenants?shard=s2", "", "", nil},
		{"GET", "/healthz", "", "", nil},
		{"GET", "/readyz", "", "", nil},
		{"GET", "/metrics", "", "", nil},
		{"GET", "/openapi.json", "", "", nil},
	}
	for _, s := range steps {
		r := run(s)
		coverage[s.method+" "+strconv.Itoa(r.StatusCode)] = true
	}
	// The change stream (over the outbox alone: the feed ends after the backlog) and its
	// failures before the stream starts.
	r := run(step{"GET", "/v1/changes", ro, "", map[string]string{"Last-Event-ID": "0"}})
	if r.StatusCode != 200 || !strings.HasPrefix(r.Body, "id: 1\ndata: {\"collection\":\"notes\",") || strings.Count(r.Body, "\n\n") != 5 {
		t.Fatalf("changes after 0: %d %q", r.StatusCode, r.Body)
	}
	for _, s := range []step{
		{"GET", "/v1/changes", ro, "", map[string]string{"Last-Event-ID": "-1"}},
		{"GET", "/v1/changes", "", "", nil},
		{"GET", "/v1/changes", "Bearer " + e.token("acme", "data:write"), "", nil},
		{"GET", "/v1/changes", "Bearer " + e.token("ghost", "data:read"), "", nil},
	} {
		run(s)
	}
	feed.down.Store(true)
	if r := run(step{"GET", "/v1/changes", ro, "", nil}); r.StatusCode != 503 {
		t.Fatalf("changes without a consumer: %d", r.StatusCode)
	}
	for _, want := range []string{"POST 422", "POST 403", "POST 401", "POST 421", "POST 415", "POST 413", "GET 304", "GET 404", "GET 400", "PUT 201", "PUT 200", "PUT 412", "PATCH 200", "DELETE 204", "POST 200", "GET 200"} {
		if !coverage[want] {
			t.Errorf("scenario did not produce %s", want)
		}
	}
	if e.do("GET", "/readyz", "", "", nil).StatusCode != http.StatusOK {
		t.Fatal("readyz not ready")
	}
	e.maps.mu.Lock()
	e.maps.age = time.Hour
	e.maps.mu.Unlock()
	run(step{"GET", "/readyz", "", "", nil}) // stale map: documented 503
}
