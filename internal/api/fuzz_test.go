package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/meridian-dev/meridian/internal/problem"
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

// FuzzListQuery feeds arbitrary raw query strings to the list parser the handler uses: it
// never panics; a query string url.ParseQuery finds malformed is always rejected (never a pair
// silently dropped); every rejection is a 400 invalid-query problem in our own words; whatever
// it accepts is within the documented limits and yields a filter that is valid JSON.
func FuzzListQuery(f *testing.F) {
	for _, s := range []string{"limit=37&order=-id", "where[age]=30&where[name]=bob", "fields=a,b", "ids=a,b,c", `where[x]="q"`,
		"where[%5D=1", "limit=99999999999999999999", "limit=%zz", "limit=5;order=id", "ids=a&x=%", "where[a]=%00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		lq, err := parseRawListQuery(raw)
		if _, perr := url.ParseQuery(raw); perr != nil && err == nil {
			t.Fatalf("malformed query %q accepted: %+v", raw, lq)
		}
		if err != nil {
			var he *httpError
			if !errors.As(err, &he) || he.kind != problem.InvalidQuery || he.kind.Status != http.StatusBadRequest {
				t.Fatalf("query %q rejected with %v (%T), want a 400 invalid-query problem", raw, err, err)
			}
			if strings.Contains(he.detail, "invalid URL escape") || strings.Contains(he.detail, "strconv.") {
				t.Fatalf("detail %q carries library text", he.detail)
			}
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

// FuzzDecodeRecordBody: strict decoding never panics; every rejection is a 400 invalid-body
// problem whose detail carries no encoding/json text; an accepted body is a JSON object whose
// only member is exactly "data" (case-sensitive, once), with no member name repeated anywhere,
// and its data is a JSON object.
func FuzzDecodeRecordBody(f *testing.F) {
	for _, s := range []string{`{"data":{"a":1}}`, `{"data":{}} x`, `{"data":{},"DATA":{}}`, `{"Data":{}}`,
		`{"data":{"a":1},"data":{"a":2}}`, `{"data":{"a":{"b":1,"b":2}}}`, `{"data":{"\u0061":1,"a":2}}`, `null`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		raw, err := decodeRecordBody([]byte(body))
		if err != nil {
			var he *httpError
			if !errors.As(err, &he) || he.kind != problem.InvalidBody || he.kind.Status != http.StatusBadRequest {
				t.Fatalf("body %q rejected with %v (%T), want a 400 invalid-body problem", body, err, err)
			}
			if strings.Contains(he.detail, "json:") || strings.Contains(he.detail, "invalid character") {
				t.Fatalf("detail %q carries encoding/json's text", he.detail)
			}
			return
		}
		var top map[string]json.RawMessage
		if err := json.Unmarshal([]byte(body), &top); err != nil || len(top) != 1 || top["data"] == nil {
			t.Fatalf("accepted %q: members %v (%v), want exactly \"data\"", body, top, err)
		}
		if d := duplicateName(json.NewDecoder(strings.NewReader(body))); d != "" {
			t.Fatalf("accepted %q with member %q repeated", body, d)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("accepted non-object %q: %v", raw, err)
		}
	})
}

// duplicateName is the fuzz targets' own oracle for repeated member names, written apart from
// strictjson's walk (recursive where that one is iterative): the first name an object of the
// value dec reads next repeats, or "".
func duplicateName(dec *json.Decoder) string {
	tok, err := dec.Token()
	if err != nil {
		return ""
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return ""
			}
			name := k.(string)
			if seen[name] {
				return name
			}
			seen[name] = true
			if d := duplicateName(dec); d != "" {
				return d
			}
		}
		_, _ = dec.Token()
	case json.Delim('['):
		for dec.More() {
			if d := duplicateName(dec); d != "" {
				return d
			}
		}
		_, _ = dec.Token()
	}
	return ""
}

// FuzzDecodePatch: as FuzzDecodeRecordBody for merge patches, where "data" may be absent.
func FuzzDecodePatch(f *testing.F) {
	for _, s := range []string{`{"data":{"a":null}}`, `{}`, `{"DATA":{}}`, `{"data":{"a":1,"a":null}}`, `{"data":null}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		patch, err := decodePatch([]byte(body))
		if err != nil {
			var he *httpError
			if !errors.As(err, &he) || he.kind != problem.InvalidBody {
				t.Fatalf("body %q rejected with %v (%T), want a 400 invalid-body problem", body, err, err)
			}
			return
		}
		var top map[string]json.RawMessage
		if err := json.Unmarshal([]byte(body), &top); err != nil || len(top) > 1 || (len(top) == 1 && top["data"] == nil) {
			t.Fatalf("accepted %q: members %v (%v)", body, top, err)
		}
		if d := duplicateName(json.NewDecoder(strings.NewReader(body))); d != "" {
			t.Fatalf("accepted %q with member %q repeated", body, d)
		}
		if patch != nil {
			var m map[string]any
			if err := json.Unmarshal(patch, &m); err != nil || m == nil {
				t.Fatalf("accepted patch %q that is not an object: %v", patch, err)
			}
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
			if !errors.As(err, &he) || he.kind != problem.InvalidConsistencyToken || he.kind.Status != http.StatusBadRequest {
				t.Fatalf("rejected with %v", err)
			}
			return
		}
		if token != "" && (ro.Token == "" || ro.Token != strings.TrimSpace(ro.Token)) {
			t.Fatalf("token %q passed on as %q", token, ro.Token)
		}
	})
}

// FuzzLastEventID feeds arbitrary Last-Event-ID values to its parser: it never panics, rejects
// only with a 400 invalid-last-event-id, and accepts exactly 1–19 ASCII digits within int64,
// as their value.
func FuzzLastEventID(f *testing.F) {
	for _, s := range []string{"0", "42", "007", "9223372036854775807", "9223372036854775808", "-1", "+1", " 1", "", "١"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		n, err := parseLastEventID([]string{v})
		want, perr := strconv.ParseUint(v, 10, 63)
		digits := len(v) >= 1 && len(v) <= 19 && strings.Trim(v, "0123456789") == ""
		if err != nil {
			var he *httpError
			if !errors.As(err, &he) || he.kind != problem.InvalidLastEventID || he.kind.Status != http.StatusBadRequest {
				t.Fatalf("%q rejected with %v", v, err)
			}
			if digits && perr == nil {
				t.Fatalf("%q rejected, but it is a seq", v)
			}
			return
		}
		if !digits || perr != nil || n != int64(want) {
			t.Fatalf("%q accepted as %d", v, n)
		}
	})
}
