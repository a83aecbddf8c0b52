package api

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestTenantIsolation: a token for A never sees or touches B's records, through any route,
// with B on the same shard and on another shard, including B's ids and B's cursors.
func TestTenantIsolation(t *testing.T) {
	e := newEnv(t)
	e.createTenant("alpha", "s1")
	e.createTenant("bravo", "s1")
	e.createTenant("charlie", "s2")
	a := "Bearer " + e.token("alpha", "data:read data:write")
	for _, victim := range []string{"bravo", "charlie"} {
		t.Run(victim, func(t *testing.T) {
			v := "Bearer " + e.token(victim, "data:read data:write")
			var ids []string
			for range 5 {
				r := e.do("POST", "/v1/collections/secret/records", v, `{"data":{"owner":"`+victim+`"}}`, nil)
				ids = append(ids, decodeRecord(t, r.Body).ID)
			}
			// Victim's cursor.
			lb := decodeList(t, e.do("GET", "/v1/collections/secret/records?limit=2", v, "", nil))
			if lb.NextCursor == nil {
				t.Fatal("victim has no second page")
			}
			base := "/v1/collections/secret/records"
			for _, id := range ids {
				wantProblem(t, e.do("GET", base+"/"+id, a, "", nil), 404)
				wantProblem(t, e.do("PATCH", base+"/"+id, a, `{"data":{"x":1}}`, nil), 404)
				wantProblem(t, e.do("DELETE", base+"/"+id, a, "", nil), 404)
				wantProblem(t, e.do("PUT", base+"/"+id, a, `{"data":{}}`, map[string]string{"If-Match": `"1"`}), 412)
			}
			wantProblem(t, e.do("GET", base+"?limit=2&cursor="+*lb.NextCursor, a, "", nil), 400)
			for _, q := range []string{"", "?ids=" + strings.Join(ids, ","), "?where[owner]=" + victim, "?order=-id"} {
				got := decodeList(t, e.do("GET", base+q, a, "", nil))
				if len(got.Items) != 0 {
					t.Fatalf("alpha saw %d of %s's records via %q", len(got.Items), victim, q)
				}
			}
			// The victim's data is untouched.
			for _, id := range ids {
				r := e.do("GET", base+"/"+id, v, "", nil)
				if r.StatusCode != 200 || decodeRecord(t, r.Body).Version != 1 {
					t.Fatalf("victim record %s: %d %s", id, r.StatusCode, r.Body)
				}
			}
		})
	}
	// alpha's PUTs above created records under alpha, never under the victims.
	lb := decodeList(t, e.do("GET", "/v1/collections/secret/records", a, "", nil))
	for _, it := range lb.Items {
		var d map[string]any
		_ = json.Unmarshal(it.Data, &d)
		if d["owner"] != nil {
			t.Fatalf("alpha sees foreign data %s", it.Data)
		}
	}
}
