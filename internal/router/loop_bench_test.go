//go:build unix

package router

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/jsonlog"
	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/internal/testenv"
)

// startRawNode is an API node that answers every request head on a connection with one canned
// answer, from raw bytes and a buffer per connection: beside the router it costs, and
// allocates, next to nothing.
func startRawNode(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = ln.Close() })
	ans := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nEtag: \"1\"\r\nX-Read-Source: replica\r\n" +
		"X-Served-Region: us-east\r\nContent-Length: " + strconv.Itoa(len(cannedBody)) + "\r\n\r\n" + cannedBody)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				n := 0
				for {
					m, err := c.Read(buf[n:])
					if err != nil {
						return
					}
					n += m
					data := buf[:n]
					for {
						i := bytes.Index(data, []byte("\r\n\r\n"))
						if i < 0 {
							break
						}
						if _, err := c.Write(ans); err != nil {
							return
						}
						data = data[i+4:]
					}
					n = copy(buf, data)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// readAnswer reads one answer with a Content-Length body from r and returns its status.
func readAnswer(r *bufio.Reader) (int, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 {
		return 0, io.ErrUnexpectedEOF
	}
	status := int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	length := 0
	for {
		line, err = r.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(line) <= 2 {
			break
		}
		if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
			length, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
		}
	}
	_, err = r.Discard(length)
	return status, err
}

// decidingLimiter is a fakeLimiter that decides on the loop (a NoWaitLimiter), as the router's
// leased limiter does for all but its refills: no step of the request goes off the loop.
type decidingLimiter struct{ fakeLimiter }

func (l *decidingLimiter) CheckNoWait(req LimitRequest) (LimitResult, bool, error) {
	res, err := l.Check(context.Background(), req)
	return res, true, err
}

// BenchmarkLoopGET: a record GET through the event-loop front to an API node that answers at
// once from memory (startRawNode), keep-alive, one request at a time per connection: the
// router's own work per forwarded GET on its loop — parsing, the steps (auth, limits, map,
// admission, decision, pick), the hop's bytes and the answer's rewrite, metrics and the log
// line — plus the loopback I/O. cpu-µs/op is the process's CPU per request (the node and the
// client included, both lean); allocs/op the whole process's.
//
//	go test -run '^$' -bench LoopGET -benchtime 20000x ./internal/router/
func BenchmarkLoopGET(b *testing.B) {
	node := startRawNode(b)
	rg := newRig(b, func(c *Config) {
		c.Upstreams = &fakeUpstreams{nodes: []*fakeNode{{id: "us-east-raw", region: "us-east", url: "http://" + node}}}
		c.Limiter = &decidingLimiter{fakeLimiter{limit: 1 << 40}}
		c.Logger = slog.New(jsonlog.NewHandler(io.Discard, nil)).With("component", "router").With("region", "us-east")
	})
	for _, loops := range []int{1, 2} {
		b.Run("loops="+strconv.Itoa(loops), func(b *testing.B) {
			l := startTestLoopN(b, rg.srv, loops)
			req := []byte("GET /v1/collections/c/records/x HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer " + tokAcme +
				"\r\nAccept: application/json\r\nCache-Control: no-cache\r\n\r\n")
			b.SetParallelism(8) // 8 × GOMAXPROCS connections
			b.ReportAllocs()
			before := testenv.ProcessCPU()
			b.RunParallel(func(pb *testing.PB) {
				c, err := net.Dial("tcp", l.Addr())
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				r := bufio.NewReaderSize(c, 16<<10)
				for pb.Next() {
					if _, err := c.Write(req); err != nil {
						b.Error(err)
						return
					}
					if status, err := readAnswer(r); err != nil || status != http.StatusOK {
						b.Errorf("status %d, %v", status, err)
						return
					}
				}
			})
			b.ReportMetric(float64((testenv.ProcessCPU()-before).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// BenchmarkNodeParsesHop: what the head of a forwarded GET costs the API node behind the
// proxy to parse (net/http's http.ReadRequest, as its server reads every request, and the
// request id check of its middleware): the router's hop as its event-loop front writes it
// (captured from a raw node), beside the head nginx sends for the same request (the bench's
// configuration: the client's fields, Host kept, Connection cleared). The router's fields are
// what it must send (request id, map version, time left, traceparent, X-Forwarded-For);
// the sixteenth session took out those the node did not need (docs/router.md).
//
//	go test -run '^$' -bench NodeParsesHop ./internal/router/
func BenchmarkNodeParsesHop(b *testing.B) {
	heads := make(chan []byte, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var head []byte
		buf := make([]byte, 4096)
		for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			head = append(head, buf[:n]...)
		}
		heads <- head
		_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
	}()
	rg := newRig(b, func(c *Config) {
		c.Upstreams = &fakeUpstreams{nodes: []*fakeNode{{id: "us-east-raw", region: "us-east", url: "http://" + ln.Addr().String()}}}
		c.Limiter = &decidingLimiter{fakeLimiter{limit: 1 << 40}}
	})
	l := startTestLoopN(b, rg.srv, 1)
	client := "GET /v1/collections/c/records/01a230a3-bbaf-7350-8205-32dcc175b1e5 HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
		"Authorization: Bearer " + tokAcme + "\r\nCache-Control: no-cache\r\n"
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(client + "\r\n")); err != nil {
		b.Fatal(err)
	}
	var router []byte
	select {
	case router = <-heads:
	case <-time.After(5 * time.Second):
		b.Fatal("no hop reached the node")
	}
	for _, tc := range []struct {
		name string
		head []byte
	}{{"nginx", []byte(client + "\r\n")}, {"router", router}} {
		head := tc.head
		b.Run(tc.name, func(b *testing.B) {
			rd := bytes.NewReader(head)
			br := bufio.NewReader(rd)
			b.ReportAllocs()
			b.SetBytes(int64(len(head)))
			for b.Loop() {
				rd.Reset(head)
				br.Reset(rd)
				req, err := http.ReadRequest(br)
				if err != nil {
					b.Fatal(err)
				}
				if id := req.Header.Get(HeaderRequestID); id != "" && !problem.ValidRequestID(id) {
					b.Fatalf("the node would not keep request id %q", id)
				}
			}
		})
	}
}
