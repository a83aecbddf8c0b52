package router

// The bytes the event-loop front writes on its hop (loop.go): the API node's request, written
// from the client's parsed request as prepareHop and the hop's writer (upstream.HopTransport) would write it, and
// the client's answer, written from the node's answer as copyResponse and net/http's server
// would — without building an *http.Request or reading an *http.Response per request.
// TestLoopHopBytesMatch and TestLoopAnswersAsNetHTTP compare them with those.

import (
	"bytes"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/meridian-dev/meridian/internal/h1"
)

// hopSkip are the client's fields the hop's request does not carry as they came: hop-by-hop
// fields, Expect, the framing the router decides, and the fields the router sets itself.
var hopSkip = func() map[string]bool {
	m := map[string]bool{"Expect": true, "Host": true, "User-Agent": true, "Content-Length": true,
		HeaderRequestID: true, HeaderShardmapVersion: true, HeaderTenantEpoch: true,
		HeaderRequestTimeout: true, canonTraceparent: true, "X-Forwarded-For": true}
	for _, h := range hopHeaders {
		m[h] = true
	}
	return m
}()

// appendHopRequest appends the hop's request for rq, its body included: what prepareHop fills
// and the hop's writer (upstream.HopTransport) writes, in another order of fields.
func appendHopRequest(b []byte, rq *loopReq, left time.Duration) []byte {
	r := rq.gc.Request
	b = append(b, r.Method...)
	b = append(b, ' ')
	b = append(b, r.RequestURI...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, r.Host...)
	b = append(b, "\r\n"...)
	if vv := r.Header["User-Agent"]; len(vv) > 0 && vv[0] != "" {
		// The client's; the router adds none of its own (prepareHop).
		b = append(b, "User-Agent: "...)
		b = append(b, vv[0]...)
		b = append(b, "\r\n"...)
	}
	conn := r.Header["Connection"]
	for k, vv := range r.Header {
		if hopSkip[k] || len(conn) > 0 && connectionNames(conn, k) {
			continue
		}
		for _, v := range vv {
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	b = append(b, HeaderRequestID+": "...)
	b = append(b, rq.st.requestID...)
	b = append(b, "\r\n"+HeaderShardmapVersion+": "...)
	b = strconv.AppendUint(b, rq.route.Version, 10)
	if hopEpoch(r.Method, rq.route) {
		b = append(b, "\r\n"+HeaderTenantEpoch+": "...)
		b = strconv.AppendUint(b, rq.route.Epoch, 10)
	}
	b = append(b, "\r\n"+HeaderRequestTimeout+": "...)
	b = strconv.AppendInt(b, timeLeft(left).Milliseconds(), 10)
	b = append(b, "\r\n"+canonTraceparent+": "...)
	b = append(b, rq.traceparent...)
	b = append(b, "\r\n"...)
	if ip := clientIP(rq.gc); ip != "" {
		b = append(b, "X-Forwarded-For: "...)
		if prior := headerValue(r.Header, "X-Forwarded-For"); prior != "" {
			b = append(b, prior...)
			b = append(b, ", "...)
		}
		b = append(b, ip...)
		b = append(b, "\r\n"...)
	}
	// Request.Write's rule (transferWriter.shouldSendContentLength) for a body of known length.
	if m := r.Method; len(rq.body) > 0 || m == http.MethodPost || m == http.MethodPut || m == http.MethodPatch {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(rq.body)), 10)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	return append(b, rq.body...)
}

// connectionNames reports whether a Connection field of vv names the canonical field k.
func connectionNames(vv []string, k string) bool {
	for _, v := range vv {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" && http.CanonicalHeaderKey(t) == k {
				return true
			}
		}
	}
	return false
}

// nodeSkip are the node's answer fields the client's answer does not carry: the router's limits
// and ids replace the node's, and hop-by-hop fields stay on the hop.
var nodeSkip = append([]string{canonRateLimitLimit, canonRateLimitRemaining, canonRateLimitReset,
	HeaderRequestID, HeaderShardmapVersion}, hopHeaders...)

// appendNodeAnswer appends the client's answer made of the node's (ans, one whole answer, head
// and body): the node's status line and fields but those copyResponse drops, the router's own
// fields (its writer's: request id, RateLimit-*), the map version, Date if the node sent none,
// the framing as the node sent it, and the body as is.
func appendNodeAnswer(b []byte, ans []byte, rq *loopReq, closeAfter bool) []byte {
	end := indexCRLFCRLF(ans)
	lineEnd := indexCRLF(ans)
	b = append(b, ans[:lineEnd+2]...)
	// The node's Connection fields name more fields to drop (rare: collected first).
	var connNames [][]byte
	for pos := lineEnd + 2; pos < end+2; {
		e := pos + indexCRLF(ans[pos:])
		line := ans[pos:e]
		pos = e + 2
		if c := indexByte(line, ':'); c > 0 && h1.EqualFold(line[:c], "Connection") {
			connNames = append(connNames, splitComma(line[c+1:])...)
		}
	}
	chunked, date := false, false
	for pos := lineEnd + 2; pos < end+2; {
		e := pos + indexCRLF(ans[pos:])
		line := ans[pos:e]
		pos = e + 2
		c := indexByte(line, ':')
		name := line[:c]
		if h1.EqualFold(name, "Transfer-Encoding") {
			chunked = true
		}
		if skipField(name, connNames) {
			continue
		}
		if h1.EqualFold(name, "Date") {
			date = true
		}
		b = append(b, line...)
		b = append(b, "\r\n"...)
	}
	b = appendFields(b, rq.w.h, HeaderShardmapVersion)
	b = append(b, HeaderShardmapVersion+": "...)
	b = strconv.AppendUint(b, rq.route.Version, 10)
	b = append(b, "\r\n"...)
	if !date {
		b = append(b, "Date: "...)
		b = appendDate(b)
		b = append(b, "\r\n"...)
	}
	if chunked {
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	}
	if closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	return append(b, ans[end+4:]...)
}

// appendFields appends h's fields as net/http's server writes them (values with line breaks
// made spaces, invalid names left out), but the framing and connection fields the front writes
// itself, Date, and the names in skip.
func appendFields(b []byte, h http.Header, skip ...string) []byte {
	for k, vv := range h {
		switch k {
		case "Content-Length", "Transfer-Encoding", "Connection", "Date":
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) || slices.Contains(skip, k) {
			continue
		}
		for _, v := range vv {
			b = append(b, k...)
			b = append(b, ": "...)
			b = appendFieldValue(b, v)
			b = append(b, "\r\n"...)
		}
	}
	return b
}

func skipField(name []byte, connNames [][]byte) bool {
	for _, s := range nodeSkip {
		if h1.EqualFold(name, s) {
			return true
		}
	}
	for _, t := range connNames {
		if len(t) == len(name) && h1.EqualFold(name, string(t)) {
			return true
		}
	}
	return false
}

func splitComma(v []byte) [][]byte {
	var out [][]byte
	for _, t := range strings.Split(string(v), ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, []byte(t))
		}
	}
	return out
}

func indexCRLFCRLF(b []byte) int { return bytes.Index(b, crlfcrlf) }
func indexCRLF(b []byte) int     { return bytes.Index(b, crlfcrlf[:2]) }
func indexByte(b []byte, c byte) int {
	return bytes.IndexByte(b, c)
}
