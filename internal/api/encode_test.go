package api

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/records"
)

// TestAppendRecordJSON checks the record encoder against encoding/json, which c.JSON uses:
// the same bytes, or ok false where the fast path steps aside.
func TestAppendRecordJSON(t *testing.T) {
	utc := time.Date(2026, 11, 30, 9, 1, 2, 345678000, time.UTC)
	est := time.Date(2026, 11, 30, 4, 1, 2, 0, time.FixedZone("EST", -5*3600))
	base := records.Record{ID: "zipf-1", Collection: "zipf", Version: 7, CreatedAt: utc, UpdatedAt: est,
		Data: json.RawMessage(`{"n": 1, "note": "meridian bench zipf record"}`)}
	with := func(f func(*records.Record)) records.Record { r := base; f(&r); return r }
	for name, tc := range map[string]struct {
		r      records.Record
		wantOK bool
	}{
		"plain":              {base, true},
		"jsonb spacing":      {with(func(r *records.Record) { r.Data = json.RawMessage("{\n \"a\" : [1, 2 ,{\"b\":null}] ,\"c\":\"x y\"}") }), true},
		"html in data":       {with(func(r *records.Record) { r.Data = json.RawMessage(`{"h": "<b>&amp;</b>", "k<": 1}`) }), true},
		"line separators":    {with(func(r *records.Record) { r.Data = json.RawMessage("{\"s\": \"a\u2028b\u2029c\"}") }), true},
		"unicode and escape": {with(func(r *records.Record) { r.Data = json.RawMessage(`{"s": "é\u00e9\n\"q\"", "e": "\u003c"}`) }), true},
		"nil data":           {with(func(r *records.Record) { r.Data = nil }), true},
		"array data":         {with(func(r *records.Record) { r.Data = json.RawMessage(` [ ] `) }), true},
		"zero times":         {with(func(r *records.Record) { r.CreatedAt, r.UpdatedAt = time.Time{}, time.Time{} }), true},
		"local time":         {with(func(r *records.Record) { r.CreatedAt = utc.Local() }), true},
		"negative version":   {with(func(r *records.Record) { r.Version = -3 }), true},
		"quote in id":        {with(func(r *records.Record) { r.ID = `a"b` }), false},
		"html in collection": {with(func(r *records.Record) { r.Collection = "a<b" }), false},
		"non-ascii id":       {with(func(r *records.Record) { r.ID = "é" }), false},
		"year 10000":         {with(func(r *records.Record) { r.UpdatedAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }), false},
		"invalid data":       {with(func(r *records.Record) { r.Data = json.RawMessage(`{"a":`) }), false},
	} {
		t.Run(name, func(t *testing.T) {
			got, ok := appendRecordJSON(nil, tc.r)
			if ok != tc.wantOK {
				t.Fatalf("ok = %v, want %v (%s)", ok, tc.wantOK, got)
			}
			if !ok {
				return
			}
			want, err := json.Marshal(record(tc.r))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Errorf("fast encoder:\n%s\nencoding/json:\n%s", got, want)
			}
		})
	}
	// A prefix stays; the record is appended after it.
	if got, _ := appendRecordJSON([]byte("x"), base); got[0] != 'x' || got[1] != '{' {
		t.Errorf("prefix lost: %s", got)
	}
}

// FuzzAppendRecordJSON: for any data and strings, the fast encoder either steps aside or writes
// exactly what encoding/json writes.
func FuzzAppendRecordJSON(f *testing.F) {
	f.Add("zipf-1", "zipf", int64(1), int64(1764493262), `{"n": 1}`)
	f.Add("a<b", "c", int64(-1), int64(0), `{"s": "<\u2028>"}`)
	f.Add("id", "c", int64(5), int64(253402300800), `[1, "&", {"x" : null}]`)
	f.Fuzz(func(t *testing.T, id, coll string, version, unix int64, data string) {
		r := records.Record{ID: id, Collection: coll, Version: version, CreatedAt: time.Unix(unix, 0).UTC(),
			UpdatedAt: time.Unix(unix/2, 999).In(time.FixedZone("", 3600)), Data: json.RawMessage(data)}
		got, ok := appendRecordJSON(nil, r)
		want, err := json.Marshal(record(r))
		if !ok {
			return
		}
		if err != nil {
			t.Fatalf("fast encoder wrote %s where encoding/json fails: %v", got, err)
		}
		if string(got) != string(want) {
			t.Fatalf("fast encoder:\n%s\nencoding/json:\n%s", got, want)
		}
	})
}

func TestAcceptsGzip(t *testing.T) {
	for ae, want := range map[string]bool{
		"gzip": true, "deflate, gzip": true, "br, GZIP;q=0.5": true, "*": true, " gzip ; q=1": true,
		"": false, "identity": false, "gzip;q=0": false, "deflate, gzip; q=0.000": false, "br,deflate": false, ",,": false,
	} {
		if got := acceptsGzip(ae); got != want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", ae, got, want)
		}
	}
}
