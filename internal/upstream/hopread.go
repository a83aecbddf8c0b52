package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"strconv"
)

// readResponse reads a response to req from br as http.ReadResponse does, for the answers an
// API node gives the hop: the whole head already in br's buffer, an "HTTP/1.1 NNN reason"
// status line, headers as textproto reads them (token names, no folded lines), a body of
// Content-Length or chunked (or none for HEAD, 1xx, 204 and 304), and no Connection, Pragma
// or Trailer header. Those it reads itself, without what makes ReadResponse costly per
// answer — a string per header value, textproto's line reader, the transfer reader — into the
// same Response. Anything else (another version, a head still arriving or larger than the
// buffer, a close-delimited body, any byte textproto would reject or treat specially) goes to
// http.ReadResponse before a byte is consumed, so its errors and rules stay net/http's.
// TestReadResponseMatchesReadResponse compares the two.
func readResponse(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	resp, _, err := readResponseFast(br, req)
	return resp, err
}

// readResponseFast is readResponse; fast reports that it read the head itself.
func readResponseFast(br *bufio.Reader, req *http.Request) (_ *http.Response, fast bool, _ error) {
	// Wait for the first bytes; an error here (nothing buffered) is the one ReadResponse
	// would return.
	if _, err := br.Peek(1); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, false, err
	}
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, crlfcrlf)
	if end < 0 {
		resp, err := http.ReadResponse(br, req)
		return resp, false, err
	}
	resp, ok := parseHead(buf[:end+2], req)
	if !ok {
		resp, err := http.ReadResponse(br, req)
		return resp, false, err
	}
	_, _ = br.Discard(end + 4)
	// The body, as readTransfer sets it up (fixLength for the length).
	noBody := req.Method == http.MethodHead || resp.StatusCode/100 == 1 ||
		resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified
	switch {
	case noBody:
		resp.Body = http.NoBody
		if req.Method != http.MethodHead {
			resp.ContentLength = 0
		}
	case resp.TransferEncoding != nil:
		delete(resp.Header, "Content-Length")
		resp.ContentLength = -1
		resp.Body = &chunkedBody{br: br, cr: httputil.NewChunkedReader(br), resp: resp}
	case resp.ContentLength == 0:
		resp.Body = http.NoBody
	default:
		resp.Body = &lengthBody{br: br, n: resp.ContentLength}
	}
	return resp, true, nil
}

var crlfcrlf = []byte("\r\n\r\n")

// parseHead parses head (the status line and header lines, each ending in CRLF, without the
// blank line) into a Response with ContentLength (-1 if absent) and TransferEncoding set, or
// reports false where http.ReadResponse must decide.
func parseHead(head []byte, req *http.Request) (*http.Response, bool) {
	const proto = "HTTP/1.1 "
	nl := bytes.IndexByte(head, '\n') // head ends in CRLF: found
	if nl < 1 || head[nl-1] != '\r' {
		return nil, false // a bare LF ends a line for textproto
	}
	line := head[:nl-1]
	if len(line) < len(proto)+3 || string(line[:len(proto)]) != proto {
		return nil, false
	}
	status := line[len(proto):]
	c0, c1, c2 := status[0], status[1], status[2]
	if c0 < '1' || c0 > '5' || c1 < '0' || c1 > '9' || c2 < '0' || c2 > '9' || (len(status) > 3 && status[3] != ' ') {
		return nil, false
	}
	code := int(c0-'0')*100 + int(c1-'0')*10 + int(c2-'0')
	if code == http.StatusSwitchingProtocols {
		return nil, false
	}
	for _, c := range status {
		if !validValueByte(c) {
			return nil, false
		}
	}
	// One string for the whole head: the status text and every header value are slices of
	// it (one allocation where textproto makes one per value).
	rest := head[nl+1:]
	s := string(head)
	off := nl + 1 // rest's offset in s
	resp := &http.Response{Status: statusText(status, s[len(proto):nl-1]), StatusCode: code,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, ContentLength: -1, Request: req}
	n := bytes.Count(rest, crlf)
	h := make(http.Header, n)
	strs := make([]string, n) // one backing array for the single-valued fields
	var cl, te []string
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		if i < 1 || rest[i-1] != '\r' {
			return nil, false
		}
		line, next := rest[:i-1], i+1
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return nil, false // no name, or a leading space (a folded line)
		}
		name := line[:colon]
		for _, c := range name {
			if !validFieldByte(c) {
				return nil, false
			}
		}
		vs, ve := colon+1, len(line)
		for vs < ve && (line[vs] == ' ' || line[vs] == '\t') {
			vs++
		}
		for ve > vs && (line[ve-1] == ' ' || line[ve-1] == '\t') {
			ve--
		}
		for _, c := range line[vs:ve] {
			if !validValueByte(c) {
				return nil, false
			}
		}
		key := canonicalKey(name, s[off:off+colon])
		value := s[off+vs : off+ve]
		switch key {
		case "Connection", "Pragma", "Trailer":
			return nil, false // ReadResponse acts on them: let it
		case "Content-Length":
			cl = append(cl, value)
		case "Transfer-Encoding":
			te = append(te, value)
		}
		if vv := h[key]; vv != nil {
			h[key] = append(vv, value)
		} else {
			vv, strs = strs[:1:1], strs[1:]
			vv[0] = value
			h[key] = vv
		}
		rest, off = rest[next:], off+next
	}
	if len(cl) > 1 || len(te) > 1 {
		return nil, false // duplicates: ReadResponse's rules (dedupe or refuse)
	}
	if len(cl) == 1 {
		v, err := strconv.ParseUint(cl[0], 10, 63)
		if err != nil {
			return nil, false
		}
		resp.ContentLength = int64(v)
	}
	if len(te) == 1 {
		if !asciiEqualFold(te[0], "chunked") { // not strings.EqualFold: "\u212a" folds to 'k'
			return nil, false
		}
		delete(h, "Transfer-Encoding")
		resp.TransferEncoding = []string{"chunked"} // the caller's to change, as ReadResponse's is
	}
	bodyless := req.Method == http.MethodHead || code/100 == 1 || code == http.StatusNoContent ||
		code == http.StatusNotModified
	if !bodyless && len(cl) == 0 && len(te) == 0 {
		return nil, false // close-delimited body: ReadResponse marks the answer Close
	}
	resp.Header = h
	return resp, true
}

var crlf = []byte("\r\n")

func asciiEqualFold(s, t string) bool {
	if len(s) != len(t) {
		return false
	}
	for i := 0; i < len(s); i++ {
		a, b := s[i], t[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// statusText returns the status line after the version, interned for the usual ones.
func statusText(b []byte, s string) string {
	if v, ok := commonStatus[string(b)]; ok {
		return v
	}
	return s
}

var commonStatus = func() map[string]string {
	m := map[string]string{}
	for _, c := range []int{200, 201, 202, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405, 409, 410, 412,
		413, 415, 422, 428, 429, 500, 502, 503, 504} {
		s := strconv.Itoa(c) + " " + http.StatusText(c)
		m[s] = s
	}
	return m
}()

// canonicalKey returns name canonicalised as textproto does (all its bytes are token bytes);
// s is name as a string, returned as it is when already canonical.
func canonicalKey(name []byte, s string) string {
	var a [64]byte
	if len(name) > len(a) {
		return textproto.CanonicalMIMEHeaderKey(s)
	}
	k := a[:len(name)]
	upper, same := true, true
	for i, c := range name {
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		same = same && c == name[i]
		k[i] = c
		upper = c == '-'
	}
	if v, ok := commonKeys[string(k)]; ok {
		return v
	}
	if same {
		return s
	}
	return string(k)
}

var commonKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"Accept-Ranges", "Age", "Allow", "Cache-Control", "Content-Encoding",
		"Content-Language", "Content-Length", "Content-Location", "Content-Range", "Content-Type", "Date",
		"Etag", "Expires", "Last-Modified", "Link", "Location", "Retry-After", "Server", "Set-Cookie",
		"Strict-Transport-Security", "Transfer-Encoding", "Vary", "Www-Authenticate", "X-Content-Type-Options",
		"X-Request-Id", "X-Served-Region", "X-Read-Source", "X-Consistency-Token", "X-Map-Version",
		"Ratelimit-Limit", "Ratelimit-Remaining", "Ratelimit-Reset", "Traceparent", "Tracestate"} {
		m[k] = k
	}
	return m
}()

// validFieldByte is textproto's validHeaderFieldByte (a token byte).
func validFieldByte(c byte) bool {
	return c < 0x80 && tokenTable[c]
}

// validValueByte is textproto's validHeaderValueByte: VCHAR, SP, HTAB and obs-text.
func validValueByte(c byte) bool {
	return c >= 0x20 && c != 0x7f || c == '\t'
}

var tokenTable = func() (t [0x80]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// lengthBody is net/http's body for a Content-Length answer: io.ErrUnexpectedEOF if the
// connection ends early, io.EOF with the last bytes.
type lengthBody struct {
	br     *bufio.Reader
	n      int64 // bytes left
	sawEOF bool
	closed bool
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.sawEOF || b.n <= 0 {
		b.sawEOF = true
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.br.Read(p)
	b.n -= int64(n)
	if err == io.EOF {
		b.sawEOF = true
		if b.n > 0 {
			err = io.ErrUnexpectedEOF
		}
	}
	if err == nil && n > 0 && b.n == 0 {
		err = io.EOF
		b.sawEOF = true
	}
	return n, err
}

// Close marks the body closed; the hop decides what happens to the connection (hopBody).
func (b *lengthBody) Close() error {
	b.closed = true
	return nil
}

// chunkedBody is net/http's body for a chunked answer: the chunks, then the trailer section
// (merged into the Response's Trailer as net/http does). Unlike net/http's it has no lock: the
// hop's body (hopBody) reads it from one goroutine and never closes it.
type chunkedBody struct {
	br     *bufio.Reader
	cr     io.Reader
	resp   *http.Response
	sawEOF bool
	closed bool
}

func (b *chunkedBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.sawEOF {
		return 0, io.EOF
	}
	n, err := b.cr.Read(p)
	if err == io.EOF {
		b.sawEOF = true
		if e := b.readTrailer(); e != nil {
			err = e
			b.sawEOF = false
			b.closed = true
		}
	}
	return n, err
}

func (b *chunkedBody) Close() error {
	b.closed = true
	return nil
}

var errTrailerEOF = errors.New("http: unexpected EOF reading trailer")

// readTrailer is net/http's body.readTrailer.
func (b *chunkedBody) readTrailer() error {
	buf, err := b.br.Peek(2)
	if bytes.Equal(buf, crlf) {
		_, _ = b.br.Discard(2)
		return nil
	}
	if len(buf) < 2 {
		return errTrailerEOF
	}
	if err != nil {
		return err
	}
	// A header terminator within the buffer, or the trailer is refused (net/http's bound).
	found := false
	for size := 4; ; size++ {
		buf, err := b.br.Peek(size)
		if bytes.HasSuffix(buf, crlfcrlf) {
			found = true
			break
		}
		if err != nil {
			break
		}
	}
	if !found {
		return errors.New("http: suspiciously long trailer after chunked body")
	}
	hdr, err := textproto.NewReader(b.br).ReadMIMEHeader()
	if err != nil {
		if err == io.EOF {
			return errTrailerEOF
		}
		return err
	}
	if b.resp.Trailer == nil {
		b.resp.Trailer = http.Header(hdr)
	} else {
		for k, v := range hdr {
			b.resp.Trailer[k] = v
		}
	}
	return nil
}
