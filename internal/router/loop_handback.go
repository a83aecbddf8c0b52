package router

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"

	"github.com/panjf2000/gnet/v2"
)

// A detached connection goes back to the loop between two requests. The loop hands a
// connection to net/http at the first request it does not serve natively (the admin API, a body
// still on its way, HTTP/1.0 and the like: detachConn). Once net/http has answered it, the
// connection returns to the loop, so that a client that mixes such requests with plain ones on
// one keep-alive connection is not served by net/http for the rest of its life.
//
// The moment is net/http's next read of the connection after a request without a body: its
// answer has been written in full, no byte has been read since its handler began, and the bytes
// net/http has been given end with a head's "\r\n\r\n" (so its buffer holds no part of a next
// request). prefixConn's Read then says EOF, which ends net/http's serving of the connection as
// a client that went away would; net/http closes it, and prefixConn's Close enrolls the socket
// in the loop it came from instead of closing it. The bytes of the next request wait in the
// socket for the loop. It is not given back:
//   - while a handler runs (a change stream, a long answer): net/http may read then, to notice
//     a client that left;
//   - after a request with a body: what net/http read with the body may hold part of a next
//     request (the connection goes back after the next request without one);
//   - when bytes of a next request came while the handler ran: net/http holds them;
//   - when the loop is draining or stopped.

// returnedConn is the context a connection net/http gave back is enrolled with (OnOpen counts it).
type returnedConn struct{}

// prefixConnKey is the request context's key of its detached connection (handBack).
type prefixConnKey struct{}

// prefixConn is a detached connection as net/http sees it: the bytes the loop had read come
// first, then the socket's; between requests it goes back to the loop (above).
type prefixConn struct {
	net.Conn
	loop *Loop
	el   gnet.EventLoop // the loop it came from, which takes it back

	mu       sync.Mutex
	pending  []byte
	tail     [4]byte // the last bytes given to net/http
	busy     bool    // a request's handler runs
	bodiless bool    // the running request has no body
	ahead    bool    // bytes came while the handler ran: a next request's, net/http's
	served   bool    // a request without a body was answered, and no byte has been read since
	back     bool    // Read said EOF to give the connection back: Close enrolls it
}

func (c *prefixConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		c.read(b[:n])
		c.mu.Unlock()
		return n, nil
	}
	// Never on a one-byte read: that is net/http's background read, which it starts after a
	// request's head, before the handler (and so before begin), to notice a client that left.
	// When that request's bytes came with the one before it, served is still the earlier
	// request's, and an EOF here cancelled the request being served: its handler saw the client
	// gone and answered nothing, a 200 without a body (TestProxyChunkedAndPipelined through the
	// loop, 11 of 300 runs under -race before this).
	if c.back || len(b) > 1 && c.served && !c.busy && string(c.tail[:]) == "\r\n\r\n" && c.loop.takesBack() {
		c.back = true
		c.mu.Unlock()
		return 0, io.EOF
	}
	c.mu.Unlock()
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.mu.Lock()
		c.read(b[:n])
		c.mu.Unlock()
	}
	return n, err
}

// read notes bytes given to net/http (under mu).
func (c *prefixConn) read(b []byte) {
	if c.busy {
		c.ahead = true
	}
	c.served = false
	if len(b) >= len(c.tail) {
		copy(c.tail[:], b[len(b)-len(c.tail):])
		return
	}
	copy(c.tail[:], c.tail[len(b):])
	copy(c.tail[len(c.tail)-len(b):], b)
}

// Close enrolls the connection in its loop when Read gave it back, else closes it.
func (c *prefixConn) Close() error {
	c.mu.Lock()
	back := c.back
	c.mu.Unlock()
	if back && c.loop.takesBack() {
		// Enroll dups the socket into the loop and closes c.Conn, whatever its outcome.
		if _, err := c.el.Enroll(gnet.NewContext(context.Background(), returnedConn{}), c.Conn); err == nil {
			return nil
		}
	}
	return c.Conn.Close()
}

// begin marks a request's handler running.
func (c *prefixConn) begin(r *http.Request) {
	c.mu.Lock()
	c.busy, c.ahead, c.served = true, false, false
	c.bodiless = r.Body == nil || r.Body == http.NoBody
	c.mu.Unlock()
}

// end marks the handler done: a connection whose request had no body may go back once net/http
// has written the answer.
func (c *prefixConn) end() {
	c.mu.Lock()
	c.busy = false
	c.served = c.bodiless && !c.ahead
	c.mu.Unlock()
}

// takesBack says whether the loop takes connections back: it serves, and is neither draining
// nor stopped.
func (l *Loop) takesBack() bool {
	return l.serving.Load() && !l.draining.Load() && l.base.Err() == nil
}

// handBack sets hs up to give detached connections back: its connections' contexts carry them
// (ConnContext, after any it had), and its handler (handBackHandler) marks each request's start
// and end on its connection. Both wrap what hs had, once: a second loop sharing hs finds its
// handler wrapped already. A connection that did not come from a loop is untouched.
func handBack(hs *http.Server) {
	if _, done := hs.Handler.(handBackHandler); done {
		return
	}
	prevCtx := hs.ConnContext
	hs.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if prevCtx != nil {
			ctx = prevCtx(ctx, c)
		}
		if pc, ok := c.(*prefixConn); ok {
			ctx = context.WithValue(ctx, prefixConnKey{}, pc)
		}
		return ctx
	}
	h := hs.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	hs.Handler = handBackHandler{h}
}

// handBackHandler marks each request of a detached connection running on it (handBack).
type handBackHandler struct{ h http.Handler }

func (b handBackHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	pc, _ := r.Context().Value(prefixConnKey{}).(*prefixConn)
	if pc == nil {
		b.h.ServeHTTP(w, r)
		return
	}
	pc.begin(r)
	defer pc.end()
	b.h.ServeHTTP(w, r)
}
