package upstream

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// BenchmarkHopGET: go test -run '^$' -bench HopGET -benchmem ./internal/upstream/
// One record GET through HopTransport on a kept-alive loopback connection to a server that
// answers every request with an API node's canned answer (apiAnswer below): the
// hop's own work — the idle-connection peek, writing the request, reading the answer — plus
// the loopback I/O and the tiny server's reads and writes, which are the same in every
// variant. cpu-µs/op is the process's CPU time per request (see testenv.ProcessCPU).
func BenchmarkHopGET(b *testing.B) {
	answer := []byte(apiAnswer)
	srv := newRawServer(b, func(c net.Conn, br *bufio.Reader, _ int64) {
		for {
			// The router's GET has no body: the request ends at the blank line.
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					return
				}
				if bytes.Equal(line, []byte("\r\n")) {
					break
				}
			}
			if _, err := c.Write(answer); err != nil {
				return
			}
		}
	})
	tr := &HopTransport{}
	b.Cleanup(tr.CloseIdleConnections)
	req, err := http.NewRequest("GET", srv.url()+"/v1/collections/c/records/x", nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header["Accept"] = []string{"application/json"}
	req.Header["X-Request-Id"] = []string{"bench-1"}
	req.Header["X-Forwarded-For"] = []string{"127.0.0.1"}
	body := make([]byte, 512)
	b.ReportAllocs()
	before := testenv.ProcessCPU()
	for b.Loop() {
		resp, err := tr.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(resp.Body, body[:resp.ContentLength]); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
	}
	b.ReportMetric(float64((testenv.ProcessCPU()-before).Microseconds())/float64(b.N), "cpu-µs/op")
}

// apiAnswer is an API node's answer to a record GET, as the hop reads it.
const apiAnswer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nEtag: \"1\"\r\n" +
	"X-Read-Source: replica\r\nX-Request-Id: bench-1\r\nX-Served-Region: us-east\r\n" +
	"Date: Mon, 30 Nov 2026 12:00:00 GMT\r\nContent-Length: 89\r\n\r\n" +
	`{"id":"01a208d0-b397-72eb-9637-c413048a3435","collection":"c","data":{"n":1},"version":1}`
