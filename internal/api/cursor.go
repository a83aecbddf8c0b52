package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"

	"github.com/meridian-dev/meridian/shardmap/ids"
)

// cursorVersion is the first byte of every cursor; bump it when the layout changes.
const cursorVersion = 1

// cursorMACLen is how many bytes of HMAC-SHA256 a cursor carries (128 bits).
const cursorMACLen = 16

// errBadCursor is what every cursor failure reports; the reason is not revealed.
var errBadCursor = errors.New("invalid cursor")

// cursorScope is what a cursor is bound to. None of it travels in the cursor; it enters the MAC,
// so a cursor replayed with another tenant, collection, order or filter set fails verification.
type cursorScope struct {
	Tenant, Collection string
	Desc               bool
	Filter             string // canonical filter JSON
}

// cursorCodec signs and verifies list cursors: base64url(version | order | last id | MAC).
type cursorCodec struct {
	key []byte
}

func (cc cursorCodec) mac(s cursorScope, payload []byte) []byte {
	h := hmac.New(sha256.New, cc.key)
	// Length-prefix each part so no two scopes produce the same MAC input.
	for _, part := range []string{s.Tenant, s.Collection, s.Filter} {
		h.Write([]byte{byte(len(part) >> 8), byte(len(part))})
		h.Write([]byte(part))
	}
	h.Write(payload)
	return h.Sum(nil)[:cursorMACLen]
}

// Encode returns the cursor that continues after lastID.
func (cc cursorCodec) Encode(s cursorScope, lastID string) string {
	payload := make([]byte, 0, 2+len(lastID)+cursorMACLen)
	order := byte(0)
	if s.Desc {
		order = 1
	}
	payload = append(payload, cursorVersion, order)
	payload = append(payload, lastID...)
	payload = append(payload, cc.mac(s, payload)...)
	return base64.RawURLEncoding.EncodeToString(payload)
}

// Decode verifies a cursor against scope and returns the id to continue after.
func (cc cursorCodec) Decode(s cursorScope, cursor string) (string, error) {
	if len(cursor) > 512 {
		return "", errBadCursor
	}
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil || len(raw) < 2+1+cursorMACLen {
		return "", errBadCursor
	}
	// The decoder skips \r and \n, so one cursor has many spellings; accept only the one we
	// wrote (a client's cursor is an opaque token, not something to reformat).
	if base64.RawURLEncoding.EncodeToString(raw) != cursor {
		return "", errBadCursor
	}
	payload, sum := raw[:len(raw)-cursorMACLen], raw[len(raw)-cursorMACLen:]
	if !hmac.Equal(sum, cc.mac(s, payload)) {
		return "", errBadCursor
	}
	order := byte(0)
	if s.Desc {
		order = 1
	}
	if payload[0] != cursorVersion || payload[1] != order {
		return "", errBadCursor
	}
	id := string(payload[2:])
	if !ids.ValidRecord(id) {
		return "", errBadCursor
	}
	return id, nil
}
