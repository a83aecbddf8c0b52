package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/meridian-dev/meridian/shardmap/ids"
)

// FuzzCursor checks that no input other than a cursor made for the same scope decodes, and that
// decoding never panics.
func FuzzCursor(f *testing.F) {
	cc := cursorCodec{key: []byte("fuzz-key")}
	s := cursorScope{Tenant: "acme", Collection: "notes", Filter: `{"a":1}`}
	valid := cc.Encode(s, "abc")
	f.Add(valid, "acme", "notes")
	f.Add(valid, "acmf", "notes")
	f.Add("AQBhYmM", "acme", "notes")
	f.Add("", "", "")
	f.Fuzz(func(t *testing.T, cursor, tenant, collection string) {
		scope := cursorScope{Tenant: tenant, Collection: collection, Filter: s.Filter}
		id, err := cc.Decode(scope, cursor)
		if err != nil {
			return
		}
		if !ids.ValidRecord(id) {
			t.Fatalf("decoded invalid id %q", id)
		}
		// Only a cursor we encoded for exactly this scope may verify.
		if cc.Encode(scope, id) != cursor {
			t.Fatalf("foreign cursor %q accepted for %+v", cursor, scope)
		}
		if scope != s {
			t.Fatalf("cursor for %+v accepted for %+v", s, scope)
		}
	})
}

// FuzzListQuery feeds arbitrary query strings to the list parser: it never panics, and whatever
// it accepts is within the documented limits and yields a filter that is valid JSON.
func FuzzListQuery(f *testing.F) {
	for _, s := range []string{"limit=37&order=-id", "where[age]=30&where[name]=bob", "fields=a,b", "ids=a,b,c", `where[x]="q"`, "where[%5D=1", "limit=99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		lq, err := parseListQuery(q)
		if err != nil {
			return
		}
		if lq.Limit < 1 || lq.Limit > maxLimit || len(lq.IDs) > maxBatchIDs || len(lq.Filter) > maxFilters {
			t.Fatalf("out of limits: %+v", lq)
		}
		if lq.FilterJSON != "" {
			var m map[string]any
			if err := json.Unmarshal([]byte(lq.FilterJSON), &m); err != nil {
				t.Fatalf("filter JSON %q: %v", lq.FilterJSON, err)
			}
			if strings.Contains(lq.FilterJSON, `\u0000`) {
				// Postgres jsonb rejects NUL; the handler maps that to 400, but note it here.
				return
			}
		}
		for _, id := range lq.IDs {
			if !ids.ValidRecord(id) {
				t.Fatalf("bad id accepted %q", id)
			}
		}
	})
}

// FuzzDecodeRecordBody: strict decoding never panics and accepted bodies are JSON objects.
func FuzzDecodeRecordBody(f *testing.F) {
	f.Add(`{"data":{"a":1}}`)
	f.Add(`{"data":{}} x`)
	f.Fuzz(func(t *testing.T, body string) {
		raw, err := decodeRecordBody(strings.NewReader(body))
		if err != nil {
			return
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("accepted non-object %q: %v", raw, err)
		}
	})
}

// FuzzReadPref feeds arbitrary Prefer and Consistency-Token headers to the read-preference
// parser: it never panics, rejects only with a 400, and passes an accepted token on trimmed and
// non-empty (the store decodes it; pgstore's FuzzDecodeOptions covers that).
func FuzzReadPref(f *testing.F) {
	f.Add("consistency=strong", "MTpzMTowLzE2QjM3NDg")
	f.Add(`return=minimal, consistency="strong"`, "")
	f.Add("consistency", "!!")
	f.Fuzz(func(t *testing.T, prefer, token string) {
		h := http.Header{}
		h.Set("Prefer", prefer)
		if token != "" {
			h.Set("Consistency-Token", token)
		}
		ro, err := parseReadPref(h)
		if err != nil {
			var he *httpError
			if !errors.As(err, &he) || he.status != http.StatusBadRequest {
				t.Fatalf("rejected with %v", err)
			}
			return
		}
		if token != "" && (ro.Token == "" || ro.Token != strings.TrimSpace(ro.Token)) {
			t.Fatalf("token %q passed on as %q", token, ro.Token)
		}
	})
}
