package loadgen

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// RawTransport is a load generator's HTTP/1.1 transport that costs the machine less per request
// than net/http's: it writes and reads on the calling goroutine, over kept-alive connections it
// holds per host, with no reader and writer goroutines per connection to hand each request and
// answer to (on a machine the load generator shares with what it measures, those hand-offs are
// most of its CPU). Answers are read with http.ReadResponse, so framing is net/http's. It speaks
// plain http:// only, with no proxy, no TLS, no HTTP/2, no redirects and no compression.
//
// A request's context ending (loadgen's per-request timeout) closes the connection it uses, as
// net/http does. A request that finds a kept-alive connection closed by the server before any
// byte of the answer is sent once more on a new connection when it has no body or a replayable
// one (GetBody), as net/http's transport does.
type RawTransport struct {
	// DialTimeout bounds a new connection's dial; 0: 5 s.
	DialTimeout time.Duration
	// MaxIdlePerHost is how many idle connections are kept per host; 0: 64.
	MaxIdlePerHost int

	mu   sync.Mutex
	idle map[string][]*rawConn
}

var _ http.RoundTripper = (*RawTransport)(nil)

// NewRawTransport returns a RawTransport that keeps an idle connection for each of concurrency
// workers.
func NewRawTransport(concurrency int) *RawTransport {
	return &RawTransport{MaxIdlePerHost: max(concurrency, 1)}
}

type rawConn struct {
	c    net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	used bool // it has carried a request before
}

// errRawScheme is RoundTrip's answer to a request it cannot send.
var errRawScheme = errors.New("loadgen: RawTransport sends http:// requests only")

// RoundTrip sends req and returns its answer; the answer's Body must be read to its end and
// closed for the connection to be kept.
func (t *RawTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL == nil || req.URL.Scheme != "http" || req.URL.Host == "" {
		closeBody(req)
		return nil, errRawScheme
	}
	host := req.URL.Host
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(host, "80")
	}
	for attempt := 0; ; attempt++ {
		rc, err := t.get(req.Context(), host)
		if err != nil {
			closeBody(req)
			return nil, err
		}
		resp, err := t.exchange(req, rc)
		if err == nil {
			return resp, nil
		}
		var retry *errRetry
		if attempt == 0 && errors.As(err, &retry) && replayable(req) {
			if req.GetBody != nil {
				b, gerr := req.GetBody()
				if gerr != nil {
					return nil, gerr
				}
				req = req.Clone(req.Context())
				req.Body = b
			}
			continue
		}
		closeBody(req)
		if retry != nil {
			return nil, retry.err
		}
		return nil, err
	}
}

// errRetry is a reused connection that failed before any byte of the answer arrived.
type errRetry struct{ err error }

func (e *errRetry) Error() string { return e.err.Error() }

func replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// exchange writes req on rc and reads the answer's head; the body is read by the caller.
func (t *RawTransport) exchange(req *http.Request, rc *rawConn) (*http.Response, error) {
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		t.put(req.URL.Host, rc, false)
		return nil, err
	}
	// The context ending cuts the exchange: the connection's deadline moves to the past.
	stop := context.AfterFunc(ctx, func() { _ = rc.c.SetDeadline(time.Unix(1, 0)) })
	reused := rc.used
	rc.used = true
	if err := writeRaw(rc.bw, req); err != nil {
		stop()
		_ = rc.c.Close()
		if reused && ctx.Err() == nil {
			return nil, &errRetry{err}
		}
		return nil, ctxErr(ctx, err)
	}
	if _, err := rc.br.Peek(1); err != nil {
		stop()
		_ = rc.c.Close()
		if reused && ctx.Err() == nil {
			return nil, &errRetry{err}
		}
		return nil, ctxErr(ctx, err)
	}
	resp, err := http.ReadResponse(rc.br, req)
	if err != nil {
		stop()
		_ = rc.c.Close()
		return nil, ctxErr(ctx, err)
	}
	resp.Body = &rawBody{ReadCloser: resp.Body, t: t, host: req.URL.Host, rc: rc, stop: stop,
		keep: !resp.Close && !req.Close}
	return resp, nil
}

func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}

// writeRaw writes req's head and body (a body of known length; anything else is refused).
func writeRaw(bw *bufio.Writer, req *http.Request) error {
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	var body []byte
	if req.Body != nil && req.Body != http.NoBody {
		if req.ContentLength < 0 {
			return errors.New("loadgen: RawTransport needs a body of known length")
		}
		body = make([]byte, req.ContentLength)
		if _, err := io.ReadFull(req.Body, body); err != nil {
			return err
		}
		_ = req.Body.Close()
	}
	bw.WriteString(method)
	bw.WriteByte(' ')
	bw.WriteString(req.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	for k, vv := range req.Header {
		if k == "Host" || k == "Content-Length" {
			continue
		}
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	if len(body) > 0 || method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch {
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.Itoa(len(body)))
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
	bw.Write(body)
	return bw.Flush()
}

// rawBody is an answer's body; closed after its last byte, it gives the connection back.
type rawBody struct {
	io.ReadCloser
	t    *RawTransport
	host string
	rc   *rawConn
	stop func() bool
	keep bool
	eof  bool
	done bool
}

func (b *rawBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *rawBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	err := b.ReadCloser.Close() // net/http's body: drains nothing of ours, marks it read
	stopped := b.stop()
	b.t.put(b.host, b.rc, b.keep && b.eof && stopped && b.rc.br.Buffered() == 0)
	return err
}

// get takes an idle connection to host or dials one.
func (t *RawTransport) get(ctx context.Context, host string) (*rawConn, error) {
	t.mu.Lock()
	if cs := t.idle[host]; len(cs) > 0 {
		rc := cs[len(cs)-1]
		t.idle[host] = cs[:len(cs)-1]
		t.mu.Unlock()
		return rc, nil
	}
	t.mu.Unlock()
	d := net.Dialer{Timeout: t.DialTimeout}
	if d.Timeout <= 0 {
		d.Timeout = 5 * time.Second
	}
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	return &rawConn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 4<<10)}, nil
}

// put keeps rc for host's next request, or closes it.
func (t *RawTransport) put(host string, rc *rawConn, keep bool) {
	if keep {
		if _, _, err := net.SplitHostPort(host); err != nil {
			host = net.JoinHostPort(host, "80")
		}
		t.mu.Lock()
		if t.idle == nil {
			t.idle = map[string][]*rawConn{}
		}
		limit := t.MaxIdlePerHost
		if limit <= 0 {
			limit = 64
		}
		if len(t.idle[host]) < limit {
			t.idle[host] = append(t.idle[host], rc)
			t.mu.Unlock()
			return
		}
		t.mu.Unlock()
	}
	_ = rc.c.Close()
}

// CloseIdleConnections closes the connections kept idle.
func (t *RawTransport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, cs := range idle {
		for _, rc := range cs {
			_ = rc.c.Close()
		}
	}
}
