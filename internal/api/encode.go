package api

import "github.com/meridian-dev/meridian/internal/records"

// jsonContentType is what gin's c.JSON sends.
const jsonContentType = "application/json; charset=utf-8"

// appendRecordJSON appends the wire form of r (records.AppendJSON; TestAppendRecordJSON holds
// it to what encoding/json writes for record(r)).
func appendRecordJSON(b []byte, r records.Record) ([]byte, bool) { return records.AppendJSON(b, r) }
