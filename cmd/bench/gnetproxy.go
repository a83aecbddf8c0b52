package main

// The bare event-loop proxy of the proxy scenario (-baseline-gnet): what a Go reverse proxy
// costs per request with no goroutine per connection at all, on github.com/panjf2000/gnet/v2's
// event loops (epoll, one locked OS thread per loop). Issue 16's second spike, beside the
// fasthttp one (fastproxy.go): fasthttp still parks and wakes a goroutine per connection through
// the netpoller; here the loops call back on readiness and nothing is scheduled per request.
//
// Both sides are non-blocking: each client connection is paired with one keep-alive upstream
// connection, registered on the client connection's own loop (EventLoop.Register), so a request
// and its answer are handled by one thread without locks. Only the dial of a new upstream
// connection runs in a goroutine (gnet's worker pool), once per client connection, not per
// request. The HTTP/1.1 handling is a spike's: requests with a Content-Length or no body (a
// chunked request gets 501), answers with a Content-Length, chunked, or none (HEAD, 1xx, 204,
// 304); an answer delimited by the upstream closing gets 502; no timeouts; pipelined requests
// are answered one after another.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/panjf2000/gnet/v2/pkg/logging"

	"github.com/meridian-dev/meridian/internal/h1"
)

// gnetProxyArg, as the first argument, makes bench serve as the bare gnet proxy.
const gnetProxyArg = "internal-gnet-proxy"

// gnetProxyName is the bare gnet proxy's target (and process role) name.
const gnetProxyName = "gnet-proxy"

// gnetMaxHead is the largest request or answer head the gnet proxy reads before giving up.
const gnetMaxHead = 64 << 10

// startGnetProxy starts this executable again as a bare gnet reverse proxy in front of
// upstream (host:port), in its own process like a router, and returns its base URL and pid.
func startGnetProxy(ctx context.Context, upstream string) (base string, pid int, stop func(), err error) {
	return startChild(ctx, gnetProxyArg, upstream)
}

// serveGnetProxy is the child side: listen on a loopback port, print the base URL, forward
// every request to upstream until stdin closes, as serveFastProxy does: hop-by-hop headers
// dropped, X-Forwarded-For appended, 502 when the upstream cannot be reached.
func serveGnetProxy(upstream string) error {
	addr, err := net.ResolveTCPAddr("tcp", upstream)
	if err != nil {
		return fmt.Errorf("%w: gnet proxy upstream %q: %v", errUsage, upstream, err)
	}
	p := &gnetProxy{upstream: addr, booted: make(chan gnet.Engine, 1)}
	go func() {
		eng := <-p.booted
		_, _ = io.Copy(io.Discard, os.Stdin)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = eng.Stop(ctx)
	}()
	// One loop per CPU (2 here) unless BENCH_GNET_LOOPS says otherwise (1: one loop, as nginx
	// runs one worker); the listener is the main reactor's, which hands connections to the loops.
	// The loops' goroutines are not locked to their OS threads unless BENCH_GNET_LOCK is set:
	// locked, every epoll_wait that blocks hands the P to another thread and back through futex
	// wake-ups, which cost this proxy about twice the CPU per request here (docs/BENCHMARKS.md,
	// "Eighth session: an event-loop spike").
	loops, _ := strconv.Atoi(os.Getenv("BENCH_GNET_LOOPS"))
	err = gnet.Run(p, "tcp://127.0.0.1:0", gnet.WithMulticore(true), gnet.WithNumEventLoop(loops),
		gnet.WithLockOSThread(os.Getenv("BENCH_GNET_LOCK") != ""),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay), gnet.WithLogger(gnetLog{}))
	if errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	return err
}

// gnetLog passes gnet's warnings and errors to stderr and drops the rest: stdout carries only
// the base URL for bench (gnet's own logger writes its start-up line to stdout).
type gnetLog struct{}

var _ logging.Logger = gnetLog{}

func (gnetLog) Debugf(string, ...any) {}
func (gnetLog) Infof(string, ...any)  {}
func (gnetLog) Warnf(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "gnet proxy: "+f+"\n", a...)
}
func (gnetLog) Errorf(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "gnet proxy: "+f+"\n", a...)
}
func (gnetLog) Fatalf(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "gnet proxy: "+f+"\n", a...)
}

// gnetProxy is the event handler: every callback runs on the loop that owns the connection.
type gnetProxy struct {
	gnet.BuiltinEventEngine
	upstream *net.TCPAddr
	booted   chan gnet.Engine
}

// gnetDown is a client connection's state; only its loop touches it.
type gnetDown struct {
	c          gnet.Conn
	ip         string
	up         *gnetUp // nil: no upstream connection yet (or it closed)
	req        []byte  // the request in flight as it goes upstream (kept for a late dial or a retry)
	out        []byte  // the answer being written back
	xff        []byte  // the request's X-Forwarded-For values, joined
	fields     []field // the request head's fields (reused)
	busy       bool    // a request is in flight
	isHead     bool    // the request in flight is a HEAD (its answer has no body)
	closeAfter bool    // close after this answer (Connection: close, HTTP/1.0)
	reused     bool    // the request went on an upstream connection that had served one before
	retried    bool    // the request has been sent again once after a reused connection closed
	closed     bool
}

// gnetUp is an upstream connection's state, paired with one client connection on its loop.
type gnetUp struct {
	c      gnet.Conn // nil until the dial completes and the loop opens it
	down   *gnetDown
	fields []field // the answer head's fields (reused)
	served bool    // it has answered a request
	got    bool    // bytes of the answer in flight have arrived
	closed bool
}

var _ gnet.EventHandler = (*gnetProxy)(nil)

func (p *gnetProxy) OnBoot(eng gnet.Engine) gnet.Action {
	fd, err := eng.Dup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gnet proxy: listener:", err)
		return gnet.Shutdown
	}
	f := os.NewFile(uintptr(fd), "listener")
	ln, err := net.FileListener(f)
	_ = f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gnet proxy: listener:", err)
		return gnet.Shutdown
	}
	fmt.Printf("http://%s\n", ln.Addr())
	_ = ln.Close()
	p.booted <- eng
	return gnet.None
}

func (p *gnetProxy) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	if u, ok := c.Context().(*gnetUp); ok { // an upstream connection we dialled
		u.c = c
		d := u.down
		if d.closed || d.up != u {
			return nil, gnet.Close
		}
		if d.busy {
			return d.req, gnet.None
		}
		return nil, gnet.None
	}
	d := &gnetDown{c: c}
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		d.ip = a.IP.String()
	}
	c.SetContext(d)
	return nil, gnet.None
}

func (p *gnetProxy) OnClose(c gnet.Conn, _ error) gnet.Action {
	switch s := c.Context().(type) {
	case *gnetDown:
		s.closed = true
		if s.up != nil && s.up.c != nil {
			_ = s.up.c.Close()
		}
		s.up = nil
	case *gnetUp:
		s.closed = true
		d := s.down
		if d.up != s {
			return gnet.None
		}
		d.up = nil
		if d.closed || !d.busy {
			return gnet.None
		}
		// The connection closed under a request. As net/http's transport does, send it once more
		// on a new connection if the old one had served before and nothing of the answer came (a
		// keep-alive connection the node closed while idle); otherwise the node is gone: 502.
		if d.reused && !s.got && !d.retried {
			d.retried = true
			p.send(d)
			return gnet.None
		}
		p.badGateway(d)
	}
	return gnet.None
}

func (p *gnetProxy) OnTraffic(c gnet.Conn) gnet.Action {
	switch s := c.Context().(type) {
	case *gnetDown:
		return p.request(s)
	case *gnetUp:
		return p.answer(s)
	}
	return gnet.Close
}

// request reads one whole request from the client, rewrites its head and sends it upstream.
func (p *gnetProxy) request(d *gnetDown) gnet.Action {
	if d.busy { // pipelined: the next request waits in the buffer until this answer is written
		return gnet.None
	}
	buf, _ := d.c.Peek(-1)
	end := bytes.Index(buf, crlf2)
	if end < 0 {
		if len(buf) > gnetMaxHead {
			return p.fail(d, "431 Request Header Fields Too Large")
		}
		return gnet.None
	}
	h, ok := parseHead(buf[:end+2], d.fields[:0])
	d.fields = h.fields
	if !ok {
		return p.fail(d, "400 Bad Request")
	}
	if h.chunked {
		return p.fail(d, "501 Not Implemented")
	}
	if h.length < 0 {
		return p.fail(d, "400 Bad Request")
	}
	total := end + 4 + h.length
	if len(buf) < total {
		return gnet.None
	}
	// Request line, the headers that are not hop-by-hop, X-Forwarded-For with the peer appended.
	r := append(d.req[:0], buf[:h.lineEnd]...)
	xff := d.xff[:0]
	for _, f := range h.fields {
		name := buf[f.name[0]:f.name[1]]
		if bytes.EqualFold(name, hdrXFF) {
			if len(xff) > 0 {
				xff = append(xff, ", "...)
			}
			xff = append(xff, buf[f.value[0]:f.value[1]]...)
			continue
		}
		if hopByHop(name) {
			continue
		}
		r = append(r, buf[f.line[0]:f.line[1]]...)
	}
	r = append(r, "X-Forwarded-For: "...)
	if len(xff) > 0 {
		r = append(r, xff...)
		r = append(r, ", "...)
	}
	r = append(r, d.ip...)
	r = append(r, "\r\n\r\n"...)
	r = append(r, buf[end+4:total]...)
	d.req, d.xff = r, xff
	d.isHead = bytes.Equal(h.first, methodHead)
	d.closeAfter = h.close || (bytes.Equal(h.version, http10) && !h.keepAlive)
	d.busy, d.retried = true, false
	_, _ = d.c.Discard(total)
	p.send(d)
	return gnet.None
}

// send writes the request in flight on the client's upstream connection, dialling one on the
// client's loop if it has none.
func (p *gnetProxy) send(d *gnetDown) {
	if u := d.up; u != nil {
		if u.c == nil { // still dialling: OnOpen writes the request
			return
		}
		d.reused, u.got = u.served, false
		if _, err := u.c.Write(d.req); err != nil {
			_ = u.c.Close() // OnClose retries or answers 502
		}
		return
	}
	u := &gnetUp{down: d}
	d.up, d.reused = u, false
	el := d.c.EventLoop()
	res, err := el.Register(gnet.NewContext(context.Background(), u), p.upstream)
	if err != nil {
		d.up = nil
		p.badGateway(d)
		return
	}
	go func() { // once per new upstream connection: wait for the dial's outcome
		r := <-res
		if r.Err == nil {
			return
		}
		_ = el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			if d.up == u {
				d.up = nil
				if !d.closed && d.busy {
					p.badGateway(d)
				}
			}
			return nil
		}))
	}()
}

// answer reads one whole answer from upstream and writes it to the client, hop-by-hop headers
// dropped (a chunked answer keeps its framing: the client speaks HTTP/1.1 too).
func (p *gnetProxy) answer(u *gnetUp) gnet.Action {
	d := u.down
	buf, _ := u.c.Peek(-1)
	if len(buf) == 0 {
		return gnet.None
	}
	u.got = true
	if d.up != u || d.closed || !d.busy { // bytes nobody asked for: the connection is unusable
		return gnet.Close
	}
	for {
		end := bytes.Index(buf, crlf2)
		if end < 0 {
			if len(buf) > gnetMaxHead {
				p.badGateway(d)
				return gnet.Close
			}
			return gnet.None
		}
		h, ok := parseHead(buf[:end+2], u.fields[:0])
		u.fields = h.fields
		if !ok || len(h.first) != 3 {
			p.badGateway(d)
			return gnet.Close
		}
		status := h1.Atoi(h.first)
		if status >= 100 && status < 200 && status != 101 { // an interim answer: skip it
			_, _ = u.c.Discard(end + 4)
			buf, _ = u.c.Peek(-1)
			if len(buf) == 0 {
				return gnet.None
			}
			continue
		}
		bodyLen := 0
		switch {
		case d.isHead || status == 204 || status == 304:
		case h.chunked:
			n, done, ok := h1.ChunkedLength(buf[end+4:])
			if !ok {
				p.badGateway(d)
				return gnet.Close
			}
			if !done {
				return gnet.None
			}
			bodyLen = n
		case h.hasLength && h.length >= 0:
			bodyLen = h.length
		default: // delimited by the close, or a 101: not for this spike
			p.badGateway(d)
			return gnet.Close
		}
		total := end + 4 + bodyLen
		if len(buf) < total {
			return gnet.None
		}
		out := append(d.out[:0], buf[:h.lineEnd]...)
		for _, f := range h.fields {
			if name := buf[f.name[0]:f.name[1]]; hopByHop(name) && !bytes.EqualFold(name, hdrTE) {
				continue
			}
			out = append(out, buf[f.line[0]:f.line[1]]...)
		}
		if d.closeAfter {
			out = append(out, "Connection: close\r\n"...)
		}
		out = append(out, "\r\n"...)
		out = append(out, buf[end+4:total]...)
		d.out = out
		_, _ = u.c.Discard(total)
		u.served = true
		act := gnet.None
		if h.close || u.c.InboundBuffered() > 0 {
			act, d.up = gnet.Close, nil
		}
		p.finish(d, out)
		return act
	}
}

// badGateway answers the request in flight with 502, as the fasthttp baseline does.
func (p *gnetProxy) badGateway(d *gnetDown) {
	p.finish(d, badGatewayAnswer)
}

// fail answers a request the proxy will not forward and closes the client connection.
func (p *gnetProxy) fail(d *gnetDown, status string) gnet.Action {
	_, _ = d.c.Write([]byte("HTTP/1.1 " + status + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
	return gnet.Close
}

// finish writes an answer to the client and makes it ready for its next request.
func (p *gnetProxy) finish(d *gnetDown, answer []byte) {
	d.busy = false
	if d.closed {
		return
	}
	if _, err := d.c.Write(answer); err != nil || d.closeAfter {
		_ = d.c.Close()
		return
	}
	if d.c.InboundBuffered() > 0 { // a pipelined request is waiting
		_ = d.c.Wake(nil)
	}
}

var (
	crlf2            = []byte("\r\n\r\n")
	hdrXFF           = []byte("X-Forwarded-For")
	hdrTE            = []byte("Transfer-Encoding")
	methodHead       = []byte("HEAD")
	http10           = []byte("HTTP/1.0")
	badGatewayAnswer = []byte("HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\r\nupstream unreachable")
	hopHeaders       = [][]byte{[]byte("Connection"), []byte("Proxy-Connection"), []byte("Keep-Alive"),
		[]byte("Te"), []byte("Trailer"), []byte("Upgrade"), []byte("Transfer-Encoding")}
)

// hopByHop reports whether a header name is one a proxy must not pass on.
func hopByHop(name []byte) bool {
	for _, h := range hopHeaders {
		if bytes.EqualFold(name, h) {
			return true
		}
	}
	return false
}

// head is a parsed HTTP/1.1 request or answer head: offsets into the buffer it was parsed from.
type head struct {
	lineEnd   int    // end of the start line, its CRLF included
	first     []byte // a request's method, an answer's status code
	version   []byte // a request's version
	fields    []field
	length    int // Content-Length (0 when absent; -1 when malformed)
	hasLength bool
	chunked   bool
	close     bool // Connection: close
	keepAlive bool // Connection: keep-alive
}

// field is one header line: [start, end) offsets of the line (CRLF included), name and value.
type field struct{ line, name, value [2]int }

// parseHead parses a head whose last line ends in CRLF (the blank line excluded), appending its
// fields to fields. The start line is "A B C": for a request method, target, version; for an
// answer version, status, reason.
func parseHead(b []byte, fields []field) (h head, ok bool) {
	h.fields = fields
	i := bytes.Index(b, crlf2[:2])
	if i < 0 {
		return h, false
	}
	line := b[:i]
	h.lineEnd = i + 2
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return h, false
	}
	rest := line[sp+1:]
	if bytes.HasPrefix(line, []byte("HTTP/")) { // an answer
		if sp2 := bytes.IndexByte(rest, ' '); sp2 >= 0 {
			rest = rest[:sp2]
		}
		h.first, h.version = rest, line[:sp]
	} else {
		sp2 := bytes.LastIndexByte(rest, ' ')
		if sp2 < 0 {
			return h, false
		}
		h.first, h.version = line[:sp], rest[sp2+1:]
	}
	for pos := h.lineEnd; pos < len(b); {
		e := bytes.Index(b[pos:], crlf2[:2])
		if e < 0 {
			return h, false
		}
		l := b[pos : pos+e]
		c := bytes.IndexByte(l, ':')
		if c <= 0 {
			return h, false
		}
		vs, ve := pos+c+1, pos+e
		for vs < ve && (b[vs] == ' ' || b[vs] == '\t') {
			vs++
		}
		for ve > vs && (b[ve-1] == ' ' || b[ve-1] == '\t') {
			ve--
		}
		f := field{line: [2]int{pos, pos + e + 2}, name: [2]int{pos, pos + c}, value: [2]int{vs, ve}}
		h.fields = append(h.fields, f)
		name, val := b[f.name[0]:f.name[1]], b[vs:ve]
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			h.length, h.hasLength = h1.Atoi(val), true
		case bytes.EqualFold(name, hdrTE):
			// The last coding is the one that frames the body ("gzip, chunked").
			last := val[bytes.LastIndexByte(val, ',')+1:]
			h.chunked = bytes.EqualFold(bytes.TrimSpace(last), []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			h.close = bytes.EqualFold(val, []byte("close"))
			h.keepAlive = bytes.EqualFold(val, []byte("keep-alive"))
		}
		pos += e + 2
	}
	return h, true
}
