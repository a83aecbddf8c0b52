package api

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// TestTenantIsolation: a token for A never sees or touches B's records, through any route,
// with B on the same shard and on another shard, including B's ids and B's cursors. A PUT of one
// of B's ids by A is a PUT of A's own record: it creates the id under A and leaves B's alone.
func TestTenantIsolation(t *testing.T) {
	e := newEnv(t)
	e.createTenant("alpha", "s1")
	e.createTenant("bravo", "s1")
	e.createTenant("charlie", "s2")
	a := "Bearer " + e.token("alpha", "data:read data:write")
	base := "/v1/collections/secret/records"
	var taken []string // victims' ids alpha created records under
	for _, victim := range []string{"bravo", "charlie"} {
		t.Run(victim, func(t *testing.T) {
			v := "Bearer " + e.token(victim, "data:read data:write")
			var ids []string
			for range 5 {
				r := e.do("POST", base, v, `{"data":{"owner":"`+victim+`"}}`, nil)
				ids = append(ids, decodeRecord(t, r.Body).ID)
			}
			// Victim's cursor.
			lb := decodeList(t, e.do("GET", base+"?limit=2", v, "", nil))
			if lb.NextCursor == nil {
				t.Fatal("victim has no second page")
			}
			for _, id := range ids {
				wantProblem(t, e.do("GET", base+"/"+id, a, "", nil), 404)
				wantProblem(t, e.do("PATCH", base+"/"+id, a, `{"data":{"x":1}}`, nil), 404)
				wantProblem(t, e.do("DELETE", base+"/"+id, a, "", nil), 404)
				// A conditional PUT finds no record of alpha's to match.
				wantProblem(t, e.do("PUT", base+"/"+id, a, `{"data":{}}`, map[string]string{"If-Match": `"1"`}), 412)
				wantProblem(t, e.do("PUT", base+"/"+id, a, `{"data":{}}`, map[string]string{"If-Match": "*"}), 412)
			}
			wantProblem(t, e.do("GET", base+"?limit=2&cursor="+*lb.NextCursor, a, "", nil), 400)
			// alpha's lists hold only alpha's own records (those it PUT for an earlier victim).
			for q, want := range map[string]int{"": len(taken), "?ids=" + strings.Join(ids, ","): 0, "?where[owner]=" + victim: 0, "?order=-id": len(taken)} {
				got := decodeList(t, e.do("GET", base+q, a, "", nil))
				foreign := 0
				for _, it := range got.Items {
					if slices.Contains(ids, it.ID) || !jsonEqual(it.Data, `{"by":"alpha"}`) {
						foreign++
					}
				}
				if foreign != 0 || len(got.Items) != want {
					t.Fatalf("alpha saw %d of %s's records via %q (%d items, want %d of its own)", foreign, victim, q, len(got.Items), want)
				}
			}
			// An unconditional PUT of the victim's id creates alpha's own record of that id.
			for _, id := range ids {
				r := e.do("PUT", base+"/"+id, a, `{"data":{"by":"alpha"}}`, nil)
				if r.StatusCode != 201 {
					t.Fatalf("alpha's PUT of %s: %d %s, want 201 (a new record of alpha's)", id, r.StatusCode, r.Body)
				}
				if rec := decodeRecord(t, r.Body); rec.ID != id || rec.Version != 1 || !jsonEqual(rec.Data, `{"by":"alpha"}`) {
					t.Fatalf("alpha's PUT of %s answered %+v %s", id, rec, rec.Data)
				}
				r = e.do("GET", base+"/"+id, a, "", nil)
				if rec := decodeRecord(t, r.Body); r.StatusCode != 200 || rec.Version != 1 || !jsonEqual(rec.Data, `{"by":"alpha"}`) {
					t.Fatalf("alpha reads back %s: %d %s", id, r.StatusCode, r.Body)
				}
				taken = append(taken, id)
			}
			// The victim's data is untouched.
			for _, id := range ids {
				r := e.do("GET", base+"/"+id, v, "", nil)
				if rec := decodeRecord(t, r.Body); r.StatusCode != 200 || rec.Version != 1 || !jsonEqual(rec.Data, `{"owner":"`+victim+`"}`) {
					t.Fatalf("victim record %s: %d %s", id, r.StatusCode, r.Body)
				}
			}
			if got := decodeList(t, e.do("GET", base+"?ids="+strings.Join(ids, ","), v, "", nil)); len(got.Items) != len(ids) {
				t.Fatalf("victim's batch read: %d of %d records", len(got.Items), len(ids))
			}
		})
	}
	// alpha's PUTs above created records under alpha, never under the victims: alpha now holds
	// exactly those ids, with its own data.
	lb := decodeList(t, e.do("GET", base+"?limit=200", a, "", nil))
	if len(lb.Items) != len(taken) || len(taken) != 10 {
		t.Fatalf("alpha holds %d records and PUT %d, want 10 of each", len(lb.Items), len(taken))
	}
	for _, it := range lb.Items {
		var d map[string]any
		_ = json.Unmarshal(it.Data, &d)
		if d["owner"] != nil || d["by"] != "alpha" {
			t.Fatalf("alpha sees foreign data %s", it.Data)
		}
	}
	// In the databases: every victim row is still at version 1, and alpha's rows (all at
	// version 1) are on alpha's shard, s1.
	for shard, want := range map[string]string{"s1": "alpha:10 bravo:5", "s2": "charlie:5"} {
		conn, err := e.pg.Connect(context.Background(), e.dbs[shard])
		if err != nil {
			t.Fatal(err)
		}
		var got string
		err = conn.QueryRow(context.Background(), `SELECT coalesce(string_agg(tenant_id || ':' || n, ' ' ORDER BY tenant_id), '')
			FROM (SELECT tenant_id, count(*) FILTER (WHERE version = 1) AS n FROM records WHERE collection = 'secret' GROUP BY tenant_id) c`).Scan(&got)
		conn.Close(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("records on %s: %q, want %q", shard, got, want)
		}
	}
}
