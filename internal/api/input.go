package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"regexp"
)

// fieldPattern bounds the top-level data field names usable in where[...] and fields=.
// Collections and record ids follow shardmap/ids.
var fieldPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// recordBody is the body of POST and PUT, and the shape a PATCH merges into.
type recordBody struct {
	Data json.RawMessage `json:"data"`
}

// decodeStrict decodes exactly one JSON value from r into v: unknown fields, trailing data after
// the value, and an empty body are errors (encoding/json and gin's ShouldBindJSON accept
// trailing data; the contract does not).
func decodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty body")
		}
		return fmt.Errorf("malformed JSON: %v", err)
	}
	// Anything but whitespace after the value is trailing data.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// decodeRecordBody decodes a POST/PUT body: exactly {"data":{...}}.
func decodeRecordBody(r io.Reader) (json.RawMessage, error) {
	var b recordBody
	if err := decodeStrict(r, &b); err != nil {
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
		return errors.New(`"data" must be a JSON object`)
	}
	if bytes.Contains(t, []byte(`\u0000`)) {
		return errors.New(`"data" must not contain \u0000`)
	}
	return nil
}

// decodePatch decodes a merge-patch body and returns the patch of the data object. Only the
// top-level "data" member is allowed; it may be absent (a no-op patch, nil) but not null, since
// a record always has a data object. The store applies the patch (RFC 7396).
func decodePatch(r io.Reader) (json.RawMessage, error) {
	// json.RawMessage keeps a JSON null as the bytes "null", so absent (nil) and null differ.
	var p recordBody
	if err := decodeStrict(r, &p); err != nil {
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
