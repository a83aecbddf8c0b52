package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// HopTransport is an HTTP/1.1 http.RoundTripper for a proxy's hop to its upstream nodes. The
// calling goroutine writes the request and reads the response on a pooled keep-alive
// connection itself: net/http.Transport hands each request to a writer goroutine and each
// response back from a reader goroutine of its connection: two goroutine switches per hop.
//
// A request is written as Request.Write writes it; the router's (a plain host, a body of known
// length or none) by writeRequest, which leaves out the sorting of the header names and the
// formatting machinery, everything else by Request.Write itself. An answer is read by
// http.ReadResponse (a reader of our own was tried and saved no CPU measurable per hop,
// docs/router.md).
//
// It does only what the router needs: http:// URLs, no proxy, no TLS, no HTTP/2, no transparent
// compression (the client's Accept-Encoding and the encoded body pass through), no redirects,
// no 100-continue (a request with an Expect header gets ErrUnsendable: a proxy that holds the
// whole body has no use for it), no protocol upgrades (a 101 answer is an error and its
// connection is closed). Anything else gets an error. Response headers are bounded at 10 MiB, like
// net/http's. The whole request is written before the answer is read, so an upstream that
// answers early (a 413 before reading a large body) and closes may surface as a write error;
// the router forwards no body larger than an API node accepts (both 1 MiB), so an API node
// has no reason to answer before reading it.
//
// A connection is reused only after its response body was read to the end and neither side
// asked to close; a body closed early, an error, or the request's context ending closes it.
// Before reusing an idle connection the transport checks, without blocking, that the peer has
// not closed it. If a reused connection still fails before any response byte arrives (the peer
// closed it meanwhile), a request that is safe to replay — GET, HEAD, OPTIONS, TRACE, or one
// with an Idempotency-Key header, the rule net/http uses — is sent once more on a new
// connection; any other gets the error, because the upstream may have executed it. That replay
// is below RetryPolicy: it spends none of the request's retries, and its rule stays net/http's
// (TRACE and X-Idempotency-Key included, PUT and DELETE without a key not).
//
// Zero values: DialTimeout 0 means 2 s; ResponseHeaderTimeout 0 means no limit beyond the
// request's context; IdleTimeout 0 means 60 s (below the API node's 2 min, so the node rarely
// closes a connection under us); MaxIdlePerHost 0 means 256.
type HopTransport struct {
	DialTimeout           time.Duration
	ResponseHeaderTimeout time.Duration
	IdleTimeout           time.Duration
	MaxIdlePerHost        int

	mu   sync.Mutex
	idle map[string][]*hopConn // host:port -> idle connections, most recently used last
}

var _ http.RoundTripper = (*HopTransport)(nil)

// hopConn is one keep-alive connection.
type hopConn struct {
	host     string
	conn     net.Conn
	br       *bufio.Reader // reads through counter
	bw       *bufio.Writer
	counter  *countingReader
	lastUsed time.Time
}

// countingReader counts the bytes read from the connection, so a failed exchange can tell
// whether any of the response arrived, and fails reads past max (when max > 0).
type countingReader struct {
	r   io.Reader
	n   int64
	max int64
}

// maxResponseHeaderBytes bounds a response's headers, 1xx answers included (net/http's default).
const maxResponseHeaderBytes = 10 << 20

var errHeadersTooLarge = errors.New("upstream: response headers exceed 10 MiB")

func (c *countingReader) Read(p []byte) (int, error) {
	if c.max > 0 {
		if c.n >= c.max {
			return 0, errHeadersTooLarge
		}
		p = p[:min(int64(len(p)), c.max-c.n)]
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Errors of HopTransport.
var (
	// ErrUnsupported is returned for a URL HopTransport does not handle (see its doc) and for
	// a 101 answer.
	ErrUnsupported = errors.New("upstream: request not supported by HopTransport")
	// ErrUnsendable means the request itself cannot be sent as it is: it carries an Expect
	// header, or net/http's request writer refuses it (an invalid Host, a control character
	// in the URL). Nothing of it reached the upstream, so the error says nothing about the
	// upstream's health.
	ErrUnsendable = errors.New("upstream: request cannot be sent as it is")
)

// RoundTrip sends req and returns the response; the caller must read or close its body.
func (t *HopTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL == nil || req.URL.Scheme != "http" || req.URL.Host == "" {
		closeBody(req)
		return nil, fmt.Errorf("%w: URL %v", ErrUnsupported, req.URL)
	}
	if req.Header.Get("Expect") != "" {
		closeBody(req)
		return nil, fmt.Errorf("%w: Expect header (no 100-continue on this hop)", ErrUnsendable)
	}
	host := req.URL.Host
	if req.URL.Port() == "" {
		host = net.JoinHostPort(req.URL.Hostname(), "80") // [::1] → [::1]:80
	}
	for attempt := 0; ; attempt++ {
		if err := req.Context().Err(); err != nil {
			closeBody(req)
			return nil, err // don't spend an idle connection on a request nobody awaits
		}
		pc, reused, err := t.get(req.Context(), host)
		if err != nil {
			closeBody(req)
			return nil, err
		}
		resp, sentNothing, err := t.exchange(pc, req)
		if err == nil {
			return resp, nil
		}
		pc.conn.Close()
		if errors.Is(err, ErrUnsendable) {
			return nil, err // a new connection would refuse it too
		}
		if attempt == 0 && reused && sentNothing && Replayable(req) && req.Context().Err() == nil {
			if req.GetBody != nil {
				body, gerr := req.GetBody()
				if gerr != nil {
					return nil, err
				}
				req = req.Clone(req.Context())
				req.Body = body
			} else if req.Body != nil && req.Body != http.NoBody {
				return nil, err // the body was consumed and cannot be sent again
			}
			continue
		}
		return nil, err
	}
}

// exchange writes req on pc and reads the response head. sentNothing reports that no response
// byte arrived, so on a reused connection the peer most likely closed it before reading.
func (t *HopTransport) exchange(pc *hopConn, req *http.Request) (resp *http.Response, sentNothing bool, err error) {
	ctx := req.Context()
	// The request's context ending unblocks any read or write on the connection.
	stop := context.AfterFunc(ctx, func() { _ = pc.conn.SetDeadline(time.Unix(1, 0)) })
	if t.ResponseHeaderTimeout > 0 {
		_ = pc.conn.SetReadDeadline(time.Now().Add(t.ResponseHeaderTimeout))
	}
	before := pc.counter.n
	// A write that fails got no answer either: a replayable request may go again.
	if err := writeRequest(pc.bw, req); err != nil {
		stop()
		var op *net.OpError
		if !errors.As(err, &op) && ctx.Err() == nil {
			// Not the connection failing: net/http refused to write the request (it checks
			// the Host and the URL before writing a byte).
			return nil, true, fmt.Errorf("%w: %v", ErrUnsendable, err)
		}
		return nil, pc.counter.n == before, ctxErr(ctx, err)
	}
	if err := pc.bw.Flush(); err != nil {
		stop()
		return nil, pc.counter.n == before, ctxErr(ctx, err)
	}
	// Response headers (with any 1xx before them) are bounded like net/http's: the counter
	// fails reads past the limit (plus what the buffer may read ahead of the body).
	pc.counter.max = pc.counter.n + maxResponseHeaderBytes + int64(pc.br.Size())
	for {
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil {
			stop()
			nothing := pc.counter.n == before &&
				(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET))
			return nil, nothing, ctxErr(ctx, err)
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			// The connection now speaks something else; the router never asks for it.
			stop()
			return nil, false, fmt.Errorf("%w: 101 Switching Protocols", ErrUnsupported)
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 {
			continue // 1xx (103 Early Hints) precede the real answer
		}
		break
	}
	pc.counter.max = 0
	if t.ResponseHeaderTimeout > 0 {
		_ = pc.conn.SetReadDeadline(time.Time{}) // the body may stream for as long as ctx lasts
		// If ctx ended just before that line, its deadline was just cleared: honour it here.
		if err := ctx.Err(); err != nil {
			stop()
			_ = resp.Body.Close()
			return nil, false, err
		}
	}
	resp.Body = &hopBody{t: t, pc: pc, rc: resp.Body, stop: stop, reuse: !resp.Close && !req.Close}
	return resp, false, nil
}

// ctxErr prefers the context's error, which says why I/O was cut short.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// Replayable is net/http's rule for resending a request on a new connection: a safe method,
// or an idempotency key. The router's event-loop front applies it to its own hop too.
func Replayable(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

// hopBody returns its connection to the pool once the body has been read to the end.
type hopBody struct {
	t     *HopTransport
	pc    *hopConn
	rc    io.ReadCloser
	stop  func() bool
	reuse bool

	mu   sync.Mutex
	done bool
}

func (b *hopBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

func (b *hopBody) Close() error {
	// Unless the body is empty by definition, unread bytes may remain: no reuse.
	b.finish(b.rc == http.NoBody)
	return nil
}

// finish releases the connection exactly once: to the pool after a clean end, else closed.
func (b *hopBody) finish(clean bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return
	}
	b.done = true
	// stop reports false when the context already ended and poisoned the deadline.
	if b.stop() && clean && b.reuse {
		b.t.put(b.pc)
		return
	}
	b.pc.conn.Close()
}

func (t *HopTransport) idleTimeout() time.Duration {
	if t.IdleTimeout > 0 {
		return t.IdleTimeout
	}
	return 60 * time.Second
}

// get returns an idle connection to host that is still open, or dials a new one.
func (t *HopTransport) get(ctx context.Context, host string) (*hopConn, bool, error) {
	now := time.Now()
	for {
		t.mu.Lock()
		list := t.idle[host]
		if len(list) == 0 {
			t.mu.Unlock()
			break
		}
		pc := list[len(list)-1]
		t.idle[host] = list[:len(list)-1]
		t.mu.Unlock()
		if now.Sub(pc.lastUsed) > t.idleTimeout() || !peerOpen(pc.conn) || pc.br.Buffered() > 0 {
			pc.conn.Close()
			continue
		}
		return pc, true, nil
	}
	timeout := t.DialTimeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	d := net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, false, err
	}
	cr := &countingReader{r: c}
	return &hopConn{host: host, conn: c, counter: cr, br: bufio.NewReaderSize(cr, 16<<10), bw: bufio.NewWriterSize(c, 16<<10)}, false, nil
}

// put makes pc idle, closing it when the host already has enough idle connections.
func (t *HopTransport) put(pc *hopConn) {
	_ = pc.conn.SetDeadline(time.Time{})
	pc.lastUsed = time.Now()
	max := t.MaxIdlePerHost
	if max <= 0 {
		max = 256
	}
	t.mu.Lock()
	if t.idle == nil {
		t.idle = map[string][]*hopConn{}
	}
	if len(t.idle[pc.host]) >= max {
		t.mu.Unlock()
		pc.conn.Close()
		return
	}
	t.idle[pc.host] = append(t.idle[pc.host], pc)
	t.mu.Unlock()
}

// CloseIdleConnections closes every idle connection.
func (t *HopTransport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			pc.conn.Close()
		}
	}
}
