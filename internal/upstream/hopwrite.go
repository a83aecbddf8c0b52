package upstream

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// writeRequest writes req on bw as (*http.Request).Write does, for the requests a proxy's hop
// sends: a plain Host, no trailers or transfer coding, a body of known length (or none). Those
// it writes itself, without what makes Request.Write costly per request — sorting the header
// names, formatting through fmt, a transfer writer — and in the same bytes but for the order
// of the header fields (RFC 9110 §5.3: only the order of a field's own lines matters, and
// those stay in order). Any other request goes to Request.Write, so its checks and errors
// (a control byte in the URI, a host it cannot write) stay net/http's.
// TestWriteRequestMatchesRequestWrite compares the two.
func writeRequest(bw *bufio.Writer, req *http.Request) error {
	host, ruri, ok := fastWritable(req)
	if !ok {
		return req.Write(bw)
	}
	closed := false
	defer func() {
		if !closed && req.Body != nil {
			_ = req.Body.Close()
		}
	}()
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	bw.WriteString(method)
	bw.WriteByte(' ')
	bw.WriteString(ruri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	// Request.Write's User-Agent: its own default unless the header names one (an empty one
	// sends none).
	ua := "Go-http-client/1.1"
	if vv, ok := req.Header["User-Agent"]; ok {
		ua = ""
		if len(vv) > 0 {
			ua = textproto.TrimString(newlineToSpace(vv[0]))
		}
	}
	if ua != "" {
		bw.WriteString("User-Agent: ")
		bw.WriteString(ua)
		bw.WriteString("\r\n")
	}
	// Request.Write's rule (transferWriter.shouldSendContentLength) for a body of known length.
	if req.ContentLength > 0 || method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch {
		bw.WriteString("Content-Length: ")
		var num [20]byte
		bw.Write(strconv.AppendInt(num[:0], req.ContentLength, 10))
		bw.WriteString("\r\n")
	}
	for k, vv := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			continue // Request.Write drops such a field too
		}
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(textproto.TrimString(newlineToSpace(v)))
			bw.WriteString("\r\n")
		}
	}
	if _, err := bw.WriteString("\r\n"); err != nil {
		return err
	}
	if req.ContentLength > 0 {
		n, err := io.Copy(bw, io.LimitReader(req.Body, req.ContentLength))
		if err == nil {
			var extra int64
			extra, err = io.Copy(io.Discard, req.Body)
			n += extra
		}
		closed = true
		if cerr := req.Body.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if n != req.ContentLength {
			return fmt.Errorf("http: ContentLength=%d with Body length %d", req.ContentLength, n)
		}
	}
	return nil
}

// fastWritable reports whether writeRequest may write req itself, and the Host and
// request-target it writes:
// Request.Write would write the same host unchanged (ASCII, no zone, valid), the body's length
// is known, and nothing asks for a transfer coding, trailers, a closing connection or a
// client trace.
func fastWritable(req *http.Request) (host, ruri string, ok bool) {
	if req.URL == nil || req.Close || len(req.TransferEncoding) > 0 || req.Trailer != nil ||
		req.ContentLength < 0 {
		return "", "", false
	}
	if req.ContentLength == 0 && req.Body != nil && req.Body != http.NoBody {
		return "", "", false // Request.Write would probe the body for its length
	}
	if req.ContentLength > 0 && req.Body == nil {
		return "", "", false
	}
	host = req.Host
	if host == "" {
		host = req.URL.Host
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c <= ' ' || c >= 0x7f || c == '%' {
			return "", "", false // punycode, a zone, or what ValidHostHeader may refuse: net/http decides
		}
	}
	if !httpguts.ValidHostHeader(host) {
		return "", "", false
	}
	ruri = req.URL.RequestURI()
	for i := 0; i < len(ruri); i++ {
		if c := ruri[i]; c < ' ' || c == 0x7f {
			return "", "", false // Request.Write refuses it
		}
	}
	if httptrace.ContextClientTrace(req.Context()) != nil {
		return "", "", false
	}
	return host, ruri, true
}

// newlineToSpace is net/http's headerNewlineToSpace for one value.
func newlineToSpace(v string) string {
	if !strings.ContainsAny(v, "\r\n") {
		return v
	}
	return strings.NewReplacer("\n", " ", "\r", " ").Replace(v)
}
