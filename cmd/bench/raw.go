package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// rawRequest is one request written byte by byte on a TCP connection of its own, so that bench
// can send what net/http's client never would: a body that stalls or trickles after its
// headers, a header block over the server's limit, a malformed query string sent as it is, an
// Expect: 100-continue whose body waits for the 100.
type rawRequest struct {
	// head is the request line, the headers and the blank line.
	head []byte
	// body is the whole body the head's Content-Length announces.
	body []byte
	// first is how many bytes of body are sent right after the head (or after the 100). The
	// rest is sent one byte every drip, or never when drip is zero (a stalled body).
	first int
	drip  time.Duration
	// expect: the head has Expect: 100-continue and the body waits for a 100 (or is never sent
	// when a final answer comes first).
	expect bool
}

// header is one header line of a raw request, kept in order.
type header struct{ name, value string }

// newRawRequest builds a complete request: Host, the given headers in order, and for a body
// Content-Length; the whole body is sent at once.
func newRawRequest(method, target, host string, hdrs []header, body []byte) rawRequest {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, host)
	for _, h := range hdrs {
		fmt.Fprintf(&b, "%s: %s\r\n", h.name, h.value)
	}
	if body != nil {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	return rawRequest{head: []byte(b.String()), body: body, first: len(body)}
}

// rawResult is what one raw request saw.
type rawResult struct {
	// status is the final answer's status (0: none); kind the problem slug of a problem+json
	// answer, if any.
	status int
	kind   string
	// answered is the time from the end of the head to the final answer's headers.
	answered time.Duration
	// closed says the server closed the connection, closedAt when (from the end of the head).
	// It is only looked for after an answer that says Connection: close, or when no answer came.
	closed   bool
	closedAt time.Duration
	// sentBody is how many body bytes were written.
	sentBody int
	err      error
}

// key is the result's row in a count of answers: "401", "400 invalid-query", "transport".
func (r rawResult) key() string {
	switch {
	case r.status == 0:
		return "transport"
	case r.kind != "":
		return strconv.Itoa(r.status) + " " + r.kind
	}
	return strconv.Itoa(r.status)
}

// doRaw dials addr, sends r and reads the answer, all within timeout. Ending ctx ends it at once.
func doRaw(ctx context.Context, addr string, r rawRequest, timeout time.Duration) rawResult {
	var res rawResult
	d := net.Dialer{Timeout: 2 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		res.err = err
		return res
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	if _, err := conn.Write(r.head); err != nil {
		res.err = err
		return res
	}
	start := time.Now()
	br := bufio.NewReader(conn)
	var mu sync.Mutex // guards res.sentBody, written by the drip goroutine
	sendBody := func() error {
		n, err := conn.Write(r.body[:min(r.first, len(r.body))])
		mu.Lock()
		res.sentBody += n
		mu.Unlock()
		return err
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(done)
	dripRest := func() {
		if r.drip <= 0 || r.first >= len(r.body) {
			return
		}
		wg.Go(func() {
			t := time.NewTicker(r.drip)
			defer t.Stop()
			for i := r.first; i < len(r.body); i++ {
				select {
				case <-done:
					return
				case <-t.C:
				}
				n, err := conn.Write(r.body[i : i+1])
				mu.Lock()
				res.sentBody += n
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}

	var resp *http.Response
	if r.expect {
		resp, err = http.ReadResponse(br, nil)
		if err == nil && resp.StatusCode == http.StatusContinue {
			resp = nil
			if err = sendBody(); err == nil {
				dripRest()
			}
		}
	} else if len(r.body) > 0 {
		if err = sendBody(); err == nil {
			dripRest()
		}
	}
	for err == nil && (resp == nil || resp.StatusCode < 200) {
		resp, err = http.ReadResponse(br, nil)
	}
	if err != nil {
		res.err = err
		res.closed, res.closedAt = true, time.Since(start)
		if !isEOF(err) {
			res.closed = false
		}
		mu.Lock()
		defer mu.Unlock()
		return res
	}
	res.status, res.answered = resp.StatusCode, time.Since(start)
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == "application/problem+json" {
		var p struct {
			Type string `json:"type"`
		}
		if json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&p) == nil {
			res.kind = p.Type[strings.LastIndexByte(p.Type, '/')+1:]
		}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.Close {
		// The server said it closes: wait for it (bounded by the deadline).
		_, err := io.Copy(io.Discard, br)
		if err == nil || isEOF(err) {
			res.closed, res.closedAt = true, time.Since(start)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return res
}

// isEOF says the peer closed the connection (cleanly or with a reset).
func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}
