package api

import (
	"bytes"
	"encoding/json"
	"mime"
	"regexp"

	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/internal/strictjson"
)

// fieldPattern bounds the top-level data field names usable in where[...] and fields=.
// Collections and record ids follow shardmap/ids.
var fieldPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// recordBody is the body of POST and PUT, and the shape a PATCH merges into.
type recordBody struct {
	Data json.RawMessage `json:"data"`
}

// decodeStrict decodes body, exactly one JSON value, into v by strictjson's rules (DESIGN.md
// §4): member names case-sensitive (`"DATA"` is unknown), no unknown or duplicated member name
// at any depth, no trailing data, no empty body. A violation is a 400 invalid-body problem
// whose detail names the member or offset in strictjson's own words.
func decodeStrict(body []byte, v any) error {
	if err := strictjson.Decode(body, v); err != nil {
		return &httpError{kind: problem.InvalidBody, detail: err.Error()}
	}
	return nil
}

// decodeRecordBody decodes a POST/PUT body: exactly {"data":{...}}.
func decodeRecordBody(body []byte) (json.RawMessage, error) {
	var b recordBody
	if err := decodeStrict(body, &b); err != nil {
		return nil, err
	}
	if err := checkObject(b.Data); err != nil {
		return nil, err
	}
	return b.Data, nil
}

// checkObject requires raw to be a JSON object without NUL characters (Postgres jsonb rejects
// \u0000, and that must be a 400, not a 500).
func checkObject(raw json.RawMessage) error {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || t[0] != '{' {
		return &httpError{kind: problem.InvalidBody, detail: `"data" must be a JSON object`}
	}
	if bytes.Contains(t, []byte(`\u0000`)) {
		return &httpError{kind: problem.InvalidBody, detail: `"data" must not contain \u0000`}
	}
	return nil
}

// decodePatch decodes a merge-patch body and returns the patch of the data object. Only the
// top-level "data" member is allowed; it may be absent (a no-op patch, nil) but not null, since
// a record always has a data object. The store applies the patch (RFC 7396).
func decodePatch(body []byte) (json.RawMessage, error) {
	// json.RawMessage keeps a JSON null as the bytes "null", so absent (nil) and null differ.
	var p recordBody
	if err := decodeStrict(body, &p); err != nil {
		return nil, err
	}
	if p.Data == nil {
		return nil, nil
	}
	if err := checkObject(p.Data); err != nil {
		return nil, err
	}
	return p.Data, nil
}

// isJSONContentType reports whether a request content type is acceptable for a body; extra lists
// media types accepted besides application/json.
func isJSONContentType(ct string, extra ...string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	if mt == "application/json" {
		return true
	}
	for _, e := range extra {
		if mt == e {
			return true
		}
	}
	return false
}
