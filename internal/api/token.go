package api

import (
	"encoding/base64"
	"errors"
	"strings"
)

// ErrBadConsistencyToken reports a Consistency-Token that does not decode.
var ErrBadConsistencyToken = errors.New("api: malformed consistency token")

// EncodeConsistencyToken returns the opaque Consistency-Token for a write committed on shard at
// or before lsn: base64url("1:<shard>:<lsn>"). lsn is pg_current_wal_insert_lsn() read on the
// write's connection after COMMIT returned, so it is at or after the commit record's end; a
// standby that has replayed it has the write.
func EncodeConsistencyToken(shard, lsn string) string {
	return base64.RawURLEncoding.EncodeToString([]byte("1:" + shard + ":" + lsn))
}

// DecodeConsistencyToken is the inverse of EncodeConsistencyToken.
func DecodeConsistencyToken(tok string) (shard, lsn string, err error) {
	if len(tok) > 256 {
		return "", "", ErrBadConsistencyToken
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", "", ErrBadConsistencyToken
	}
	parts := strings.Split(string(raw), ":")
	if len(parts) != 3 || parts[0] != "1" || parts[1] == "" || !strings.Contains(parts[2], "/") {
		return "", "", ErrBadConsistencyToken
	}
	return parts[1], parts[2], nil
}
