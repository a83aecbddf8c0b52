package records

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
)

// AppendJSON appends the wire form of r, the body of a record GET: byte for byte what
// encoding/json writes for internal/api's record(r) (which c.JSON sends), without reflection.
// The API node and the router's edge cache (internal/router) both answer with it. A record GET
// is the node's hottest answer, and the reflective encoder was 5–6 % of its CPU. ok is false when r holds something
// the fast path does not spell (a string needing escapes, a time encoding/json refuses); the
// caller then uses encoding/json. internal/api's TestAppendRecordJSON compares the two.
func AppendJSON(b []byte, r Record) ([]byte, bool) {
	if !plainString(r.ID) || !plainString(r.Collection) || !plainTime(r.CreatedAt) || !plainTime(r.UpdatedAt) {
		return b, false
	}
	b = append(b, `{"id":"`...)
	b = append(b, r.ID...)
	b = append(b, `","collection":"`...)
	b = append(b, r.Collection...)
	b = append(b, `","version":`...)
	b = strconv.AppendInt(b, r.Version, 10)
	b = append(b, `,"created_at":"`...)
	b = r.CreatedAt.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","updated_at":"`...)
	b = r.UpdatedAt.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","data":`...)
	if r.Data == nil {
		b = append(b, "null"...)
	} else {
		// encoding/json compacts a RawMessage and escapes <, >, & and U+2028/U+2029 in it
		// (Marshal's HTML escaping); HTMLEscape over valid compact JSON touches only its
		// strings, where those can occur.
		buf := bytes.NewBuffer(b)
		if err := json.Compact(buf, r.Data); err != nil {
			return b, false
		}
		if c := buf.Bytes()[len(b):]; needsHTMLEscape(c) {
			compacted := bytes.Clone(c)
			buf.Truncate(len(b))
			json.HTMLEscape(buf, compacted)
		}
		b = buf.Bytes()
	}
	return append(b, '}'), true
}

// plainString reports whether encoding/json writes s between quotes as it is: printable ASCII
// without ", \, <, > or & (ids and collections always are, shardmap/ids).
func plainString(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// plainTime reports whether time.Time's MarshalJSON writes t as its RFC3339Nano format: it
// refuses years outside 0–9999 and offsets of a day or more.
func plainTime(t time.Time) bool {
	if y := t.Year(); y < 0 || y > 9999 {
		return false
	}
	_, off := t.Zone()
	return off > -24*3600 && off < 24*3600
}

// needsHTMLEscape reports whether compact JSON holds a character encoding/json's HTML escaping
// changes: <, >, &, U+2028 or U+2029.
func needsHTMLEscape(b []byte) bool {
	return bytes.ContainsAny(b, "<>&\u2028\u2029")
}
