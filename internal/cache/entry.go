package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/meridian-dev/meridian/internal/records"
)

// An entry is what one Redis key holds: the shard it was read from, the LSN it was read at
// (0: serves no token read) and the value. A record entry is stored in the record format
// below; a list page (and anything else) as JSON, {"s": shard, "l": LSN, "v": value}.
//
// The record format exists because a cache hit is the node's cheapest answer and decoding a
// JSON entry (reflection, validating the record's data, parsing two times) was 10 % of a hit's
// CPU. It is a marker byte, seven fields each ended by '\n', and the record's data as the rest:
//
//	\x01 shard \n LSN \n version \n created_at \n updated_at \n collection \n id \n data
//
// LSN and version in decimal, the times in RFC 3339 with nanoseconds as time.Time's
// MarshalText writes them (its offset kept, as JSON kept it). Shard, collection and id never
// hold '\n' (shardmap/ids); the data is the record's JSON as the store returned it, "null" for
// none. An entry in the JSON form (written before this format, by an older node in a rolling
// upgrade) still decodes: JSON starts with '{', never with the marker.
const recordMarker = 0x01

// errEntry is an entry that does not decode.
var errEntry = errors.New("cache: malformed entry")

// jsonEntry is the JSON form of an entry.
type jsonEntry[T any] struct {
	Shard string `json:"s"`
	LSN   uint64 `json:"l"`
	Value T      `json:"v"`
}

// encodeEntry encodes an entry of v (a records.Record, a records.Page) read from shard at lsn.
func encodeEntry(shard string, lsn uint64, v any) ([]byte, error) {
	r, ok := v.(records.Record)
	if !ok {
		return json.Marshal(jsonEntry[any]{Shard: shard, LSN: lsn, Value: v})
	}
	b := make([]byte, 0, 128+len(shard)+len(r.ID)+len(r.Collection)+len(r.Data))
	b = append(b, recordMarker)
	b = append(append(b, shard...), '\n')
	b = append(strconv.AppendUint(b, lsn, 10), '\n')
	b = append(strconv.AppendInt(b, r.Version, 10), '\n')
	var err error
	if b, err = r.CreatedAt.AppendText(b); err != nil {
		return nil, err
	}
	b = append(b, '\n')
	if b, err = r.UpdatedAt.AppendText(b); err != nil {
		return nil, err
	}
	b = append(b, '\n')
	b = append(append(b, r.Collection...), '\n')
	b = append(append(b, r.ID...), '\n')
	if r.Data == nil {
		return append(b, "null"...), nil
	}
	return append(b, r.Data...), nil
}

// decodeEntry decodes an entry into its shard, LSN and value. A record's Data shares b's
// memory: b must not be modified afterwards.
func decodeEntry[T any](b []byte) (shard string, lsn uint64, v T, err error) {
	if len(b) == 0 || b[0] != recordMarker {
		var e jsonEntry[T]
		err = json.Unmarshal(b, &e)
		return e.Shard, e.LSN, e.Value, err
	}
	rp, ok := any(&v).(*records.Record)
	if !ok {
		return "", 0, v, errEntry // a record entry under a list key: cannot happen, reads as a miss
	}
	var f [7][]byte
	rest := b[1:]
	for i := range f {
		j := bytes.IndexByte(rest, '\n')
		if j < 0 {
			return "", 0, v, errEntry
		}
		f[i], rest = rest[:j], rest[j+1:]
	}
	if lsn, err = strconv.ParseUint(string(f[1]), 10, 64); err != nil {
		return "", 0, v, errEntry
	}
	r := records.Record{Collection: string(f[5]), ID: string(f[6]), Data: json.RawMessage(rest)}
	if r.Version, err = strconv.ParseInt(string(f[2]), 10, 64); err != nil {
		return "", 0, v, errEntry
	}
	if err = r.CreatedAt.UnmarshalText(f[3]); err != nil {
		return "", 0, v, errEntry
	}
	if err = r.UpdatedAt.UnmarshalText(f[4]); err != nil {
		return "", 0, v, errEntry
	}
	*rp = r
	return string(f[0]), lsn, v, nil
}
