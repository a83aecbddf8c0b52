// Package h1 holds the small pieces of HTTP/1.1 framing that the router's event-loop front
// (internal/router), bench's bare event-loop proxy (cmd/bench) and the load generator's
// event-loop engine (internal/loadgen) read bytes with.
package h1

import (
	"bytes"
	"strconv"
)

var crlf = []byte("\r\n")

// ChunkedLength is the length of a chunked body at the start of b, trailers included, and
// whether b holds all of it; ok false for a malformed one.
func ChunkedLength(b []byte) (n int, done, ok bool) {
	pos := 0
	for {
		e := bytes.Index(b[pos:], crlf)
		if e < 0 {
			return 0, false, true
		}
		size := b[pos : pos+e]
		if s := bytes.IndexByte(size, ';'); s >= 0 {
			size = size[:s]
		}
		sz, err := strconv.ParseInt(string(bytes.TrimSpace(size)), 16, 32)
		if err != nil || sz < 0 {
			return 0, false, false
		}
		pos += e + 2
		if sz == 0 {
			for {
				e := bytes.Index(b[pos:], crlf)
				if e < 0 {
					return 0, false, true
				}
				pos += e + 2
				if e == 0 {
					return pos, true, true
				}
			}
		}
		pos += int(sz) + 2
		if pos > len(b) {
			return 0, false, true
		}
	}
}

// Atoi parses a non-negative decimal of at most 18 digits, or returns -1.
func Atoi(b []byte) int {
	if len(b) == 0 || len(b) > 18 {
		return -1
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// EqualFold reports whether b and s are equal ignoring ASCII case (field names and tokens are
// ASCII; a byte outside it must match exactly).
func EqualFold[T string | []byte](b T, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// HasToken reports whether the comma-separated list v (a Connection or Transfer-Encoding
// field's value) has the token tok, ignoring ASCII case and the spaces around items.
func HasToken(v []byte, tok string) bool {
	for len(v) > 0 {
		var item []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			item, v = v[:i], v[i+1:]
		} else {
			item, v = v, nil
		}
		if EqualFold(bytes.TrimSpace(item), tok) {
			return true
		}
	}
	return false
}
