package api

import (
	"encoding/json"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/meridian-dev/meridian/internal/problem"
)

// wantKind fails unless r is a problem+json answer of kind (status, type URI, fixed title)
// whose detail carries none of the given internal words.
func wantKind(t *testing.T, r result, kind problem.Kind, leaks ...string) problem.Problem {
	t.Helper()
	if r.StatusCode != kind.Status {
		t.Fatalf("status %d, want %d: %.300s", r.StatusCode, kind.Status, r.Body)
	}
	wantProblem(t, r, kind.Status)
	var p problem.Problem
	if err := json.Unmarshal([]byte(r.Body), &p); err != nil {
		t.Fatal(err)
	}
	if p.Type != problem.TypeBase+kind.Slug || p.Title != kind.Title {
		t.Fatalf("problem %+v, want type %s titled %q", p, kind.Type(), kind.Title)
	}
	for _, l := range leaks {
		if strings.Contains(strings.ToLower(p.Detail), strings.ToLower(l)) {
			t.Fatalf("detail %q carries internal text %q", p.Detail, l)
		}
	}
	return p
}

// TestHostileContract: each rule of DESIGN.md §4 "Exact shapes and rules" that a hostile or
// clumsy client runs into answers its exact 4xx problem, and the record it aimed at is left as
// it was (same version, same data).
func TestHostileContract(t *testing.T) {
	e := newEnv(t)
	e.createTenant("acme", "s1")
	rw := "Bearer " + e.token("acme", "data:read data:write")
	const path = "/v1/collections/notes/records/victim"
	if r := e.do("PUT", path, rw, `{"data":{"owner":"victim","n":1}}`, nil); r.StatusCode != 201 {
		t.Fatalf("seed: %d %s", r.StatusCode, r.Body)
	}
	// The victim grows to about 600 KiB, so a PATCH adding as much again would take it over.
	big := `{"data":{"owner":"victim","n":1,"fill":"` + strings.Repeat("f", 600<<10) + `"}}`
	r := e.do("PUT", path, rw, big, nil)
	if r.StatusCode != 200 {
		t.Fatalf("grow the seed: %d %.200s", r.StatusCode, r.Body)
	}
	before := decodeRecord(t, r.Body)
	weak, strong := `W/"`+strconv.FormatInt(before.Version, 10)+`"`, `"`+strconv.FormatInt(before.Version, 10)+`"`
	list := "/v1/collections/notes/records"
	merge := map[string]string{"Content-Type": "application/merge-patch+json"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	nul := url.QueryEscape(`"\u0000"`)
	jsonLeaks := []string{"json:", "invalid character", "looking for", "cannot unmarshal"}
	dbLeaks := []string{"jsonb", "unicode", "numeric", "overflow", "sqlstate", "postgres", "syntax", "escape"}
	tests := []struct {
		name, method, path, body string
		hdr                      map[string]string
		kind                     problem.Kind
		leaks                    []string
	}{
		// Bodies: member names are case-sensitive, never repeated, nothing after the value.
		{"upper-case member", "PUT", path, `{"DATA":{"owner":"attacker"}}`, nil, problem.InvalidBody, jsonLeaks},
		{"second member in another case", "PUT", path, `{"data":{"owner":"x"},"DATA":{"owner":"attacker"}}`, nil, problem.InvalidBody, jsonLeaks},
		{"duplicated member", "PUT", path, `{"data":{"owner":"x"},"data":{"owner":"attacker"}}`, nil, problem.InvalidBody, jsonLeaks},
		{"duplicated member inside data", "PUT", path, `{"data":{"owner":"x","owner":"attacker"}}`, nil, problem.InvalidBody, jsonLeaks},
		{"trailing data", "PUT", path, `{"data":{"owner":"attacker"}} {}`, nil, problem.InvalidBody, jsonLeaks},
		{"malformed JSON", "PUT", path, `{"data":{"owner":}}`, nil, problem.InvalidBody, jsonLeaks},
		{"wrong type", "POST", list, `5`, nil, problem.InvalidBody, jsonLeaks},
		{"patch upper-case member", "PATCH", path, `{"DATA":{"owner":"attacker"}}`, merge, problem.InvalidBody, jsonLeaks},
		{"patch duplicated member", "PATCH", path, `{"data":{"n":2},"data":{"owner":"attacker"}}`, merge, problem.InvalidBody, jsonLeaks},
		{"patch trailing data", "PATCH", path, `{"data":{"owner":"attacker"}}x`, merge, problem.InvalidBody, jsonLeaks},
		{"internal upper-case member", "POST", "/internal/v1/tenants", `{"ID":"evil","shard":"s1"}`,
			with("Authorization", "Bearer cluster-token"), problem.InvalidBody, jsonLeaks},
		// Query strings: a malformed pair is a 400, never dropped.
		{"bad escape in limit", "GET", list + "?limit=%zz", "", nil, problem.InvalidQuery, []string{"invalid URL escape"}},
		{"bad escape beside a good pair", "GET", list + "?limit=5&where[a]=%", "", nil, problem.InvalidQuery, nil},
		{"semicolon separator", "GET", list + "?limit=5;order=id", "", nil, problem.InvalidQuery, nil},
		{"bad escape on a batch read", "GET", list + "?ids=victim&fields=%zz", "", nil, problem.InvalidQuery, nil},
		{"bad escape on the internal tenant read", "GET", "/internal/v1/tenants/acme?shard=%zz", "",
			with("Authorization", "Bearer cluster-token"), problem.InvalidQuery, nil},
		// If-Match is compared strongly: a weak tag never matches.
		{"weak If-Match on PUT", "PUT", path, `{"data":{"owner":"attacker"}}`, with("If-Match", weak), problem.PreconditionFailed, nil},
		{"weak If-Match on PATCH", "PATCH", path, `{"data":{"owner":"attacker"}}`,
			with("Content-Type", "application/merge-patch+json", "If-Match", weak), problem.PreconditionFailed, nil},
		{"weak If-Match on DELETE", "DELETE", path, "", with("If-Match", weak), problem.PreconditionFailed, nil},
		{"non-canonical If-Match", "PUT", path, `{"data":{"owner":"attacker"}}`, with("If-Match", `"0`+strong[1:]), problem.PreconditionFailed, nil},
		// If-None-Match: * on PUT only creates; a matching tag fails any write.
		{"If-None-Match * on PUT over a record", "PUT", path, `{"data":{"owner":"attacker"}}`, with("If-None-Match", "*"), problem.PreconditionFailed, nil},
		{"If-None-Match its version on PUT", "PUT", path, `{"data":{"owner":"attacker"}}`, with("If-None-Match", weak), problem.PreconditionFailed, nil},
		{"If-None-Match its strong version on DELETE", "DELETE", path, "", with("If-None-Match", strong), problem.PreconditionFailed, nil},
		{"If-None-Match * on DELETE", "DELETE", path, "", with("If-None-Match", "*"), problem.PreconditionFailed, nil},
		{"malformed If-None-Match on PUT", "PUT", path, `{"data":{"owner":"attacker"}}`, with("If-None-Match", "1"), problem.InvalidHeader, nil},
		// A PATCH may not grow data past the body limit.
		{"patch past 1 MiB", "PATCH", path, `{"data":{"pad":"` + strings.Repeat("p", 600<<10) + `"}}`, merge, problem.ContentTooLarge, nil},
		// Values the database rejects: a fixed detail, never its message.
		{"where value with NUL", "GET", list + "?where[owner]=" + nul, "", nil, problem.ValueRejected, dbLeaks},
		{"where number out of range", "GET", list + "?where[n]=1e999999999", "", nil, problem.ValueRejected, dbLeaks},
		{"data number out of range", "PUT", path, `{"data":{"n":1e999999999}}`, nil, problem.ValueRejected, dbLeaks},
		// Slugs of the kinds that existed already.
		{"altered cursor", "GET", list + "?cursor=AQBhYmNkZWZnaGlqa2xtbm9wcQ", "", nil, problem.InvalidCursor, nil},
		{"unknown parameter", "GET", list + "?limt=5", "", nil, problem.InvalidQuery, nil},
		{"bad collection", "GET", "/v1/collections/Bad/records", "", nil, problem.InvalidPath, nil},
		{"bad token", "GET", path, "", with("Authorization", "Bearer x.y.z"), problem.Unauthorized, nil},
		{"no route", "GET", "/v2/x", "", nil, problem.NotFound, nil},
		{"malformed consistency token", "GET", path, "", with("Consistency-Token", "!!"), problem.InvalidConsistencyToken, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			authz := rw
			if a, ok := tt.hdr["Authorization"]; ok {
				authz = a
			}
			wantKind(t, e.do(tt.method, tt.path, authz, tt.body, tt.hdr), tt.kind, tt.leaks...)
			after := e.do("GET", path, rw, "", nil)
			got := decodeRecord(t, after.Body)
			if after.StatusCode != 200 || got.Version != before.Version || !jsonEqual(got.Data, string(before.Data)) {
				t.Fatalf("victim record changed: %d version %d→%d", after.StatusCode, before.Version, got.Version)
			}
		})
	}
}

// TestPreconditionsThatHold: the same headers succeed where they hold — a strong If-Match of
// the current version, If-None-Match: * creating a new record, a PATCH that stays within the
// limit.
func TestPreconditionsThatHold(t *testing.T) {
	e := newEnv(t)
	e.createTenant("acme", "s1")
	rw := "Bearer " + e.token("acme", "data:read data:write")
	const path = "/v1/collections/notes/records/r1"
	r := e.do("PUT", path, rw, `{"data":{"v":1}}`, map[string]string{"If-None-Match": "*"})
	if r.StatusCode != 201 || r.Header.Get("ETag") != `"1"` {
		t.Fatalf("create-only PUT of a new id: %d %s", r.StatusCode, r.Body)
	}
	wantKind(t, e.do("PUT", path, rw, `{"data":{"v":2}}`, map[string]string{"If-None-Match": "*"}), problem.PreconditionFailed)
	if r := e.do("PUT", path, rw, `{"data":{"v":2}}`, map[string]string{"If-None-Match": `"7"`}); r.StatusCode != 200 {
		t.Fatalf("PUT with If-None-Match of another version: %d %s", r.StatusCode, r.Body)
	}
	if r := e.do("PUT", path, rw, `{"data":{"v":3}}`, map[string]string{"If-Match": `"3", "2"`}); r.StatusCode != 200 {
		t.Fatalf("strong If-Match of the current version: %d %s", r.StatusCode, r.Body)
	}
	merge := map[string]string{"Content-Type": "application/merge-patch+json", "If-Match": `"3"`}
	if r := e.do("PATCH", path, rw, `{"data":{"pad":"`+strings.Repeat("p", 500<<10)+`"}}`, merge); r.StatusCode != 200 {
		t.Fatalf("PATCH within the limit: %d", r.StatusCode)
	}
	if r := e.do("DELETE", path, rw, "", map[string]string{"If-Match": `"4"`}); r.StatusCode != 204 {
		t.Fatalf("DELETE with the current version: %d %s", r.StatusCode, r.Body)
	}
	// A deleted record is no live record: If-None-Match: * lets the PUT re-create it.
	if r := e.do("PUT", path, rw, `{"data":{"v":1}}`, map[string]string{"If-None-Match": "*"}); r.StatusCode != 201 || r.Header.Get("ETag") != `"6"` {
		t.Fatalf("create-only PUT over a tombstone: %d %s %v", r.StatusCode, r.Body, r.Header.Get("ETag"))
	}
	// GET's If-None-Match still compares weakly: W/"6" revalidates.
	if r := e.do("GET", path, rw, "", map[string]string{"If-None-Match": `W/"6"`}); r.StatusCode != 304 {
		t.Fatalf("GET with a weak If-None-Match of the version: %d", r.StatusCode)
	}
}
