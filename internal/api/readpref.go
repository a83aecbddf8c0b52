package api

import (
	"net/http"
	"strings"

	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/internal/records"
)

// parseReadPref reads the Prefer, Cache-Control and Consistency-Token request headers. Unknown preferences are
// ignored (RFC 7240). A Consistency-Token given twice or empty is a 400 here; whether it decodes
// is the store's to say (records.ErrBadToken, also a 400).
func parseReadPref(h http.Header) (records.ReadOptions, error) {
	var ro records.ReadOptions
	for _, v := range h.Values("Prefer") {
		for _, pref := range strings.Split(v, ",") {
			kv, _, _ := strings.Cut(pref, ";")
			name, val, _ := strings.Cut(kv, "=")
			val = strings.Trim(strings.TrimSpace(val), `"`)
			if strings.EqualFold(strings.TrimSpace(name), "consistency") && strings.EqualFold(val, "strong") {
				ro.Strong = true
			}
		}
	}
	// Cache-Control: no-cache (RFC 9111 §5.2.1.4) asks for an answer not served from a cache
	// without revalidation: the read skips the cache and is served as an uncached read.
	for _, v := range h.Values("Cache-Control") {
		for _, d := range strings.Split(v, ",") {
			if name, _, _ := strings.Cut(strings.TrimSpace(d), "="); strings.EqualFold(name, "no-cache") {
				ro.NoCache = true
			}
		}
	}
	if vs := h.Values(hdrConsistency); len(vs) > 0 {
		if len(vs) > 1 {
			return ro, invalid(problem.InvalidConsistencyToken, "Consistency-Token must be given at most once")
		}
		if ro.Token = strings.TrimSpace(vs[0]); ro.Token == "" {
			return ro, errMalformedToken
		}
	}
	return ro, nil
}

// errMalformedToken answers a Consistency-Token that is empty or does not decode.
var errMalformedToken = &httpError{kind: problem.InvalidConsistencyToken, detail: "malformed Consistency-Token: pass back the value a write returned"}
