package api

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/meridian-dev/meridian/internal/problem"
)

// wantInvalid fails unless err is an *httpError of kind whose detail carries no library text.
func wantInvalid(t *testing.T, err error, kind problem.Kind) {
	t.Helper()
	var he *httpError
	if !errors.As(err, &he) || he.kind != kind {
		t.Fatalf("error %v (%T), want a %s problem", err, err, kind.Slug)
	}
	for _, leak := range []string{"json:", "invalid character", "looking for", "url.", "invalid URL escape", "strconv."} {
		if strings.Contains(he.detail, leak) {
			t.Fatalf("detail %q carries library text %q", he.detail, leak)
		}
	}
}

func TestDecodeRecordBody(t *testing.T) {
	tests := []struct {
		name, body string
		ok         bool
	}{
		{"ok", `{"data":{"a":1}}`, true},
		{"ok whitespace", " {\"data\":{}} \n\t", true},
		{"ok same name in another case inside data", `{"data":{"a":1,"A":2}}`, true},
		{"trailing value", `{"data":{}} {}`, false},
		{"trailing garbage", `{"data":{}}x`, false},
		{"unknown field", `{"data":{},"id":"x"}`, false},
		{"upper-case member", `{"DATA":{"a":1}}`, false},
		{"mixed-case member beside data", `{"data":{"a":1},"DATA":{"b":2}}`, false},
		{"title-case member", `{"Data":{"a":1}}`, false},
		{"duplicated data", `{"data":{"a":1},"data":{"b":2}}`, false},
		{"duplicated member inside data", `{"data":{"a":1,"a":2}}`, false},
		{"duplicated member deep inside data", `{"data":{"l":[{"x":1,"x":1}]}}`, false},
		{"duplicated via escape", `{"data":{"a":1,"\u0061":2}}`, false},
		{"missing data", `{}`, false},
		{"null data", `{"data":null}`, false},
		{"array data", `{"data":[1]}`, false},
		{"string data", `{"data":"x"}`, false},
		{"empty", ``, false},
		{"nul char", `{"data":{"a":"\u0000"}}`, false},
		{"not json", `data=1`, false},
		{"top array", `[{"data":{}}]`, false},
		{"top null", `null`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeRecordBody([]byte(tt.body))
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if err != nil {
				wantInvalid(t, err, problem.InvalidBody)
			}
		})
	}
}

func TestDecodePatch(t *testing.T) {
	for body, ok := range map[string]bool{
		`{"data":{"f":null}}`:             true,
		`{}`:                              true,
		`{"data":null}`:                   false,
		`{"data":1}`:                      false,
		`{"x":1}`:                         false,
		`{"data":{}}{}`:                   false,
		`{"DATA":{"f":1}}`:                false,
		`{"data":{"f":1},"data":{"g":1}}`: false,
		`{"data":{"f":1,"f":null}}`:       false,
		`null`:                            false,
	} {
		_, err := decodePatch([]byte(body))
		if (err == nil) != ok {
			t.Errorf("%s: err = %v", body, err)
		}
		if err != nil {
			wantInvalid(t, err, problem.InvalidBody)
		}
	}
}

func TestContentType(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/json":                  true,
		"application/json; charset=utf-8":   true,
		"Application/JSON":                  true,
		"application/merge-patch+json":      false,
		"text/plain":                        false,
		"":                                  false,
		"application/x-www-form-urlencoded": false,
		"application/json; charset=\"utf-8": false,
	} {
		if got := isJSONContentType(ct); got != want {
			t.Errorf("%q: %v", ct, got)
		}
	}
	if !isJSONContentType("application/merge-patch+json", "application/merge-patch+json") {
		t.Error("merge patch not accepted as extra")
	}
}

func TestParseListQuery(t *testing.T) {
	tests := []struct {
		q      string
		ok     bool
		limit  int
		desc   bool
		filter string
		fields []string
		ids    int
	}{
		{"", true, 50, false, "", nil, 0},
		{"limit=1", true, 1, false, "", nil, 0},
		{"limit=200", true, 200, false, "", nil, 0},
		{"limit=201", false, 0, false, "", nil, 0},
		{"limit=0", false, 0, false, "", nil, 0},
		{"limit=-1", false, 0, false, "", nil, 0},
		{"limit=abc", false, 0, false, "", nil, 0},
		{"limit=1e2", false, 0, false, "", nil, 0},
		{"limit=", false, 0, false, "", nil, 0},
		{"limit=1&limit=2", false, 0, false, "", nil, 0},
		{"order=-id", true, 50, true, "", nil, 0},
		{"order=id", true, 50, false, "", nil, 0},
		{"order=name", false, 0, false, "", nil, 0},
		{"where[age]=30&where[name]=bob", true, 50, false, `{"age":30,"name":"bob"}`, nil, 0},
		{`where[code]="30"`, true, 50, false, `{"code":"30"}`, nil, 0},
		{"where[ok]=true&where[x]=null", true, 50, false, `{"ok":true,"x":null}`, nil, 0},
		{"where[a.b]=1", false, 0, false, "", nil, 0},
		{"where[]=1", false, 0, false, "", nil, 0},
		{"fields=b,a,b", true, 50, false, "", []string{"a", "b"}, 0},
		{"fields=", false, 0, false, "", nil, 0},
		{"fields=a,,b", false, 0, false, "", nil, 0},
		{"ids=a,b,a", true, 50, false, "", nil, 2},
		{"ids=a,b&fields=x", true, 50, false, "", []string{"x"}, 0 + 2},
		{"ids=a&limit=2", false, 0, false, "", nil, 0},
		{"ids=a&cursor=x", false, 0, false, "", nil, 0},
		{"ids=a,,b", false, 0, false, "", nil, 0},
		{"ids=" + strings.Repeat("a,", 200) + "a", false, 0, false, "", nil, 0},
		{"cursor=", false, 0, false, "", nil, 0},
		{"limt=5", false, 0, false, "", nil, 0},
		// Malformed pairs are a 400, never dropped (url.URL.Query drops them).
		{"limit=%zz", false, 0, false, "", nil, 0},
		{"limit=5&x=%zz", false, 0, false, "", nil, 0},
		{"%zz=1", false, 0, false, "", nil, 0},
		{"limit=5;order=id", false, 0, false, "", nil, 0},
		{"where[a]=%", false, 0, false, "", nil, 0},
		{"limit=5&", true, 5, false, "", nil, 0},
		{"where%5Ba%5D=%221%22", true, 50, false, `{"a":"1"}`, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.q, func(t *testing.T) {
			lq, err := parseRawListQuery(tt.q)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if !tt.ok {
				wantInvalid(t, err, problem.InvalidQuery)
				return
			}
			if lq.Limit != tt.limit || lq.Desc != tt.desc || lq.FilterJSON != tt.filter || !reflect.DeepEqual(lq.Fields, tt.fields) || len(lq.IDs) != tt.ids {
				t.Fatalf("got %+v", lq)
			}
		})
	}
}

func TestCursor(t *testing.T) {
	cc := cursorCodec{key: []byte("k1")}
	s := cursorScope{Tenant: "acme", Collection: "notes", Filter: `{"a":1}`}
	c := cc.Encode(s, "0190-abc")
	id, err := cc.Decode(s, c)
	if err != nil || id != "0190-abc" {
		t.Fatalf("round trip: %q %v", id, err)
	}
	other := []cursorScope{
		{Tenant: "acmf", Collection: "notes", Filter: `{"a":1}`},
		{Tenant: "acme", Collection: "note", Filter: `{"a":1}`},
		{Tenant: "acme", Collection: "notes", Filter: `{"a":2}`},
		{Tenant: "acme", Collection: "notes", Filter: ``},
		{Tenant: "acme", Collection: "notes", Filter: `{"a":1}`, Desc: true},
		// Boundary shifting between parts must not collide.
		{Tenant: "acmen", Collection: "otes", Filter: `{"a":1}`},
	}
	for _, o := range other {
		if _, err := cc.Decode(o, c); err == nil {
			t.Errorf("cursor accepted for scope %+v", o)
		}
	}
	if _, err := (cursorCodec{key: []byte("k2")}).Decode(s, c); err == nil {
		t.Error("cursor accepted under another key")
	}
	raw := []byte(c)
	for i := range raw {
		alt := append([]byte(nil), raw...)
		alt[i] ^= 0x01
		if id, err := cc.Decode(s, string(alt)); err == nil && id != "0190-abc" {
			t.Fatalf("altered cursor at %d accepted with id %q", i, id)
		}
	}
}

func TestParseReadPref(t *testing.T) {
	tests := []struct {
		name    string
		hdr     map[string][]string
		strong  bool
		token   string
		wantErr bool
		noCache bool
	}{
		{"none", nil, false, "", false, false},
		{"no-cache", map[string][]string{"Cache-Control": {"max-age=0, No-Cache"}}, false, "", false, true},
		{"no-cache with a field list", map[string][]string{"Cache-Control": {`no-cache="x"`}}, false, "", false, true},
		{"other directive", map[string][]string{"Cache-Control": {"no-store"}}, false, "", false, false},
		{"strong", map[string][]string{"Prefer": {"consistency=strong"}}, true, "", false, false},
		{"strong among others", map[string][]string{"Prefer": {"return=minimal, Consistency=\"STRONG\"; x=1"}}, true, "", false, false},
		{"strong in second header", map[string][]string{"Prefer": {"wait=5", "consistency=strong"}}, true, "", false, false},
		{"other consistency", map[string][]string{"Prefer": {"consistency=eventual"}}, false, "", false, false},
		{"unknown preference", map[string][]string{"Prefer": {"strong"}}, false, "", false, false},
		// Whether a token decodes is the store's to say (pgstore's TestDecodeOptions).
		{"token", map[string][]string{"Consistency-Token": {" AbC "}}, false, "AbC", false, false},
		{"empty token", map[string][]string{"Consistency-Token": {""}}, false, "", true, false},
		{"blank token", map[string][]string{"Consistency-Token": {"  "}}, false, "", true, false},
		{"two tokens", map[string][]string{"Consistency-Token": {"a", "a"}}, false, "", true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for k, vs := range tc.hdr {
				for _, v := range vs {
					h.Add(k, v)
				}
			}
			ro, err := parseReadPref(h)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				wantInvalid(t, err, problem.InvalidConsistencyToken)
				return
			}
			if ro.Strong != tc.strong || ro.Token != tc.token || ro.NoCache != tc.noCache {
				t.Fatalf("got %+v, want strong=%v token=%q no-cache=%v", ro, tc.strong, tc.token, tc.noCache)
			}
		})
	}
}

// TestParseETags: the entity-tag lists of If-Match and If-None-Match, and how each header
// compares them: If-Match strongly (a weak tag never matches), If-None-Match weakly.
func TestParseETags(t *testing.T) {
	tests := []struct {
		h       string
		ok      bool
		any     bool
		ifMatch []int64 // versions If-Match matches
		noneOf  []int64 // versions If-None-Match matches
	}{
		{`*`, true, true, nil, nil},
		{`"3"`, true, false, []int64{3}, []int64{3}},
		{`W/"3"`, true, false, []int64{-1}, []int64{3}},
		{`"1", W/"2" ,"3"`, true, false, []int64{1, -1, 3}, []int64{1, 2, 3}},
		{`"01"`, true, false, []int64{-1}, []int64{-1}},
		{`"+1"`, true, false, []int64{-1}, []int64{-1}},
		{`"0"`, true, false, []int64{-1}, []int64{-1}},
		{`"abc"`, true, false, []int64{-1}, []int64{-1}},
		{`""`, true, false, []int64{-1}, []int64{-1}},
		{`3`, false, false, nil, nil},
		{`w/"3"`, false, false, nil, nil},
		{`"3`, false, false, nil, nil},
		{`"3"x`, false, false, nil, nil},
		{`"a"b"`, false, false, nil, nil},
		{`"1",`, false, false, nil, nil},
		{`W/`, false, false, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.h, func(t *testing.T) {
			for _, hdr := range []string{"If-Match", "If-None-Match"} {
				c, _ := gin.CreateTestContext(httptest.NewRecorder())
				c.Request = httptest.NewRequest(http.MethodPut, "/", nil)
				c.Request.Header.Set(hdr, tt.h)
				read, want := ifMatchHeader, tt.ifMatch
				if hdr == "If-None-Match" {
					read, want = ifNoneMatchHeader, tt.noneOf
				}
				m, ok := read(c)
				if ok != tt.ok {
					t.Fatalf("%s: ok %v", hdr, ok)
				}
				if !ok {
					if c.Writer.Status() != http.StatusBadRequest {
						t.Fatalf("%s: answered %d, want 400", hdr, c.Writer.Status())
					}
					continue
				}
				if m.Any != tt.any || !slices.Equal(m.Versions, want) {
					t.Fatalf("%s: %+v, want any=%v versions %v", hdr, m, tt.any, want)
				}
			}
		})
	}
}
