package cache

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/records"
)

// TestEntryRoundTrip: a record entry decodes to the record it was made of (times with their
// offsets, data byte for byte), a page entry too, and the JSON form older nodes wrote still
// decodes.
func TestEntryRoundTrip(t *testing.T) {
	est := time.FixedZone("", -5*3600)
	recs := []records.Record{
		{ID: "zipf-1", Collection: "zipf", Version: 3, CreatedAt: time.Date(2026, 11, 30, 9, 1, 2, 345678901, time.UTC),
			UpdatedAt: time.Date(2026, 11, 30, 4, 1, 2, 0, est), Data: json.RawMessage("{\"n\": 1,\n \"s\": \"a\\nb\"}")},
		{ID: "a", Collection: "c", Version: 1, Data: nil},
		{ID: "x_Y-9", Collection: "c_1", Version: 1 << 62, CreatedAt: time.Unix(0, 1).UTC(), UpdatedAt: time.Unix(1, 0).UTC(),
			Data: json.RawMessage(`[]`)},
	}
	for _, r := range recs {
		b, err := encodeEntry("us-west-1", 0x16B3A58, r)
		if err != nil {
			t.Fatal(err)
		}
		if b[0] != recordMarker {
			t.Fatalf("record entry not in the record format: %q", b)
		}
		shard, lsn, got, err := decodeEntry[records.Record](b)
		if err != nil || shard != "us-west-1" || lsn != 0x16B3A58 {
			t.Fatalf("decode: %q %x %v", shard, lsn, err)
		}
		want := r
		if want.Data == nil {
			want.Data = json.RawMessage("null") // as the JSON form decodes a nil RawMessage
		}
		if got.ID != want.ID || got.Collection != want.Collection || got.Version != want.Version ||
			string(got.Data) != string(want.Data) || !got.CreatedAt.Equal(want.CreatedAt) || !got.UpdatedAt.Equal(want.UpdatedAt) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
		}
		// The wire form (RFC 3339 with the offset) is what a reader sees: the same as before.
		for _, p := range [][2]time.Time{{got.CreatedAt, want.CreatedAt}, {got.UpdatedAt, want.UpdatedAt}} {
			if g, w := p[0].Format(time.RFC3339Nano), p[1].Format(time.RFC3339Nano); g != w {
				t.Errorf("time %s, want %s", g, w)
			}
		}
	}

	// Pages stay JSON.
	page := records.Page{Items: recs[:1], More: true}
	b, err := encodeEntry("s1", 5, page)
	if err != nil || b[0] != '{' {
		t.Fatalf("page entry %q %v", b, err)
	}
	shard, lsn, gotPage, err := decodeEntry[records.Page](b)
	if err != nil || shard != "s1" || lsn != 5 || len(gotPage.Items) != 1 || !gotPage.More || gotPage.Items[0].ID != "zipf-1" {
		t.Errorf("page: %q %d %+v %v", shard, lsn, gotPage, err)
	}

	// The JSON form of a record, as nodes before the record format stored it (its data
	// compacted by encoding/json).
	old, _ := json.Marshal(jsonEntry[any]{Shard: "s1", LSN: 9, Value: recs[0]})
	shard, lsn, got, err := decodeEntry[records.Record](old)
	var compact bytes.Buffer
	_ = json.Compact(&compact, recs[0].Data)
	if err != nil || shard != "s1" || lsn != 9 || !reflect.DeepEqual([]byte(got.Data), compact.Bytes()) || got.Version != 3 ||
		got.UpdatedAt.Format(time.RFC3339Nano) != recs[0].UpdatedAt.Format(time.RFC3339Nano) {
		t.Errorf("legacy entry: %q %d %+v %v", shard, lsn, got, err)
	}
}

// TestEntryMalformed: what does not decode is an error (counted, read as a miss), never a
// wrong record.
func TestEntryMalformed(t *testing.T) {
	good, _ := encodeEntry("s1", 1, records.Record{ID: "a", Collection: "c", Version: 2, Data: json.RawMessage(`{}`)})
	for name, b := range map[string][]byte{
		"empty":          {},
		"truncated":      good[:len(good)-len("\na\n{}")],
		"bad lsn":        []byte("\x01s1\nx\n2\n0001-01-01T00:00:00Z\n0001-01-01T00:00:00Z\nc\na\n{}"),
		"bad version":    []byte("\x01s1\n1\n2.5\n0001-01-01T00:00:00Z\n0001-01-01T00:00:00Z\nc\na\n{}"),
		"bad time":       []byte("\x01s1\n1\n2\nyesterday\n0001-01-01T00:00:00Z\nc\na\n{}"),
		"not json":       []byte("{\"s\":"),
		"unknown marker": []byte("\x02s1\n1\n2\n"),
	} {
		if _, _, _, err := decodeEntry[records.Record](b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	if _, _, _, err := decodeEntry[records.Page](good); err == nil {
		t.Error("a record entry decoded as a page")
	}
}
