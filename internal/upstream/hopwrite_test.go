package upstream

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"
	"testing"
)

// TestWriteRequestMatchesRequestWrite: for every request, writeRequest writes the same bytes
// as (*http.Request).Write but for the order of the header fields (compared sorted), or fails
// where it fails; fast reports which of them writeRequest writes itself.
func TestWriteRequestMatchesRequestWrite(t *testing.T) {
	mk := func(method, url string, body string, mod func(*http.Request)) func() *http.Request {
		return func() *http.Request {
			var rb io.Reader
			if body != "" {
				rb = bytes.NewReader([]byte(body))
			}
			req, err := http.NewRequest(method, url, rb)
			if err != nil {
				t.Fatal(err)
			}
			req.Header["Accept"] = []string{"application/json"}
			req.Header["X-Request-Id"] = []string{"r-1"}
			if mod != nil {
				mod(req)
			}
			return req
		}
	}
	cases := []struct {
		name string
		req  func() *http.Request
		fast bool
	}{
		{"get", mk("GET", "http://10.0.0.1:8080/v1/collections/c/records/x", "", nil), true},
		{"get with query", mk("GET", "http://10.0.0.1:8080/v1/collections/c/records?ids=a,b&x=%20y", "", nil), true},
		{"head", mk("HEAD", "http://10.0.0.1:8080/v1/x", "", nil), true},
		{"post", mk("POST", "http://10.0.0.1:8080/v1/x", `{"data":{"n":1}}`, nil), true},
		{"post without body", mk("POST", "http://10.0.0.1:8080/v1/x", "", nil), true},
		{"delete", mk("DELETE", "http://10.0.0.1:8080/v1/x", "", nil), true},
		{"options", mk("OPTIONS", "http://10.0.0.1:8080/v1/x", "", nil), true},
		{"empty method", mk("GET", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) { r.Method = "" }), true},
		{"many headers", mk("PUT", "http://h.example:80/v1/x", "b", func(r *http.Request) {
			r.Header["X-Forwarded-For"] = []string{"1.2.3.4, 5.6.7.8"}
			r.Header["Traceparent"] = []string{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
			r.Header["Cookie"] = []string{"a=1", "b=2"}
			r.Header["X-Empty"] = []string{""}
			r.Header["X-None"] = nil
			r.Header["X-Spaces"] = []string{"  padded\t "}
			r.Header["X-Newline"] = []string{"a\r\nInjected: 1", "b\nc"}
		}), true},
		{"client host", mk("GET", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) { r.Host = "api.example.com" }), true},
		{"user agent", mk("GET", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) { r.Header["User-Agent"] = []string{" curl/8 ", "second"} }), true},
		{"empty user agent", mk("GET", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) { r.Header["User-Agent"] = []string{""} }), true},
		{"nil user agent", mk("GET", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) { r.Header["User-Agent"] = nil }), true},
		{"excluded names", mk("POST", "http://10.0.0.1:8080/v1/x", "body", func(r *http.Request) {
			r.Header["Host"] = []string{"evil"}
			r.Header["Content-Length"] = []string{"99"}
			r.Header["Transfer-Encoding"] = []string{"chunked"}
			r.Header["Trailer"] = []string{"X"}
		}), true},
		{"invalid names", mk("GET", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) {
			r.Header["Bad Name"] = []string{"v"}
			r.Header["Bad:Name"] = []string{"v"}
			r.Header[""] = []string{"v"}
		}), true},
		{"opaque", mk("GET", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) { r.URL.Opaque = "/a%2Fb" }), true},
		{"body shorter than length", mk("POST", "http://10.0.0.1:8080/v1/x", "body", func(r *http.Request) { r.ContentLength = 10 }), true},
		{"body longer than length", mk("POST", "http://10.0.0.1:8080/v1/x", "body", func(r *http.Request) { r.ContentLength = 2 }), true},
		// Left to Request.Write:
		{"close", mk("GET", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) { r.Close = true }), false},
		{"unknown length", mk("POST", "http://10.0.0.1:8080/v1/x", "body", func(r *http.Request) { r.ContentLength = -1 }), false},
		{"zero length with a body", mk("POST", "http://10.0.0.1:8080/v1/x", "body", func(r *http.Request) { r.ContentLength = 0 }), false},
		{"length without a body", mk("POST", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) { r.ContentLength = 3 }), false},
		{"chunked", mk("POST", "http://10.0.0.1:8080/v1/x", "body", func(r *http.Request) { r.TransferEncoding = []string{"chunked"} }), false},
		{"trailer", mk("POST", "http://10.0.0.1:8080/v1/x", "body", func(r *http.Request) { r.Trailer = http.Header{"X": nil} }), false},
		{"unicode host", mk("GET", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) { r.Host = "bücher.example" }), false},
		{"zone", mk("GET", "http://[fe80::1%25eth0]:8080/v1/x", "", nil), false},
		{"invalid host", mk("GET", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) { r.Host = "a b" }), false},
		{"control byte", mk("GET", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) { r.URL.Opaque = "/a\x01" }), false},
		{"del byte", mk("GET", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) { r.URL.RawQuery = "a=\x7f" }), false},
		{"trace", mk("GET", "http://10.0.0.1:8080/v1/x", "", func(r *http.Request) {
			*r = *r.WithContext(httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{}))
		}), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, fast := fastWritable(tc.req()); fast != tc.fast {
				t.Errorf("fastWritable = %v, want %v", fast, tc.fast)
			}
			var want, got bytes.Buffer
			wantErr := tc.req().Write(&want)
			bw := bufio.NewWriter(&got)
			gotErr := writeRequest(bw, tc.req())
			_ = bw.Flush()
			if (wantErr == nil) != (gotErr == nil) {
				t.Fatalf("error %v, Request.Write's %v", gotErr, wantErr)
			}
			if g, w := sortedHeaderLines(got.String()), sortedHeaderLines(want.String()); g != w {
				t.Errorf("wrote\n%q\nRequest.Write wrote\n%q", got.String(), want.String())
			}
		})
	}
}

// sortedHeaderLines returns a written request with its header fields after the request line
// sorted.
func sortedHeaderLines(s string) string {
	head, body, _ := strings.Cut(s, "\r\n\r\n")
	lines := strings.Split(head, "\r\n")
	if len(lines) > 1 {
		slices.Sort(lines[1:])
	}
	return strings.Join(lines, "\r\n") + "\r\n\r\n" + body
}

// TestWriteRequestClosesTheBody: like Request.Write, writeRequest closes the request's body.
func TestWriteRequestClosesTheBody(t *testing.T) {
	cb := &closingBody{Reader: strings.NewReader("body")}
	req, _ := http.NewRequest("POST", "http://10.0.0.1:8080/v1/x", cb)
	req.ContentLength = 4
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	if err := writeRequest(bw, req); err != nil || !cb.closed {
		t.Fatalf("err %v, closed %v", err, cb.closed)
	}
	req, _ = http.NewRequest("GET", "http://10.0.0.1:8080/v1/x", nil)
	req.Body = &closingBody{Reader: strings.NewReader("")}
	req.ContentLength = 0
	if _, _, fast := fastWritable(req); fast {
		t.Fatalf("a zero-length body of unknown kind: written without Request.Write's probe")
	}
}

type closingBody struct {
	io.Reader
	closed bool
}

func (c *closingBody) Close() error { c.closed = true; return nil }

// BenchmarkWriteRequest: go test -run '^$' -bench WriteRequest -benchmem ./internal/upstream/
func BenchmarkWriteRequest(b *testing.B) {
	req, _ := http.NewRequest("GET", "http://127.0.0.1:28030/v1/collections/bench/records/01a22bc3-5644-7f3e-98e4-ac3528983ab6", nil)
	for k, v := range map[string]string{"Authorization": "Bearer " + strings.Repeat("x", 180), "Accept": "application/json",
		"X-Request-Id": "bench-dn8fp0zf6coo-router-4891", "X-Shardmap-Version": "404", "X-Tenant-Epoch": "3",
		"X-Request-Timeout-Ms": "4500", "Traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"X-Forwarded-For": "127.0.0.1", "Accept-Encoding": "gzip"} {
		req.Header[k] = []string{v}
	}
	bw := bufio.NewWriterSize(io.Discard, 16<<10)
	for _, f := range []struct {
		name string
		w    func() error
	}{{"Request.Write", func() error { return req.Write(bw) }}, {"writeRequest", func() error { return writeRequest(bw, req) }}} {
		b.Run(f.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := f.w(); err != nil {
					b.Fatal(err)
				}
				_ = bw.Flush()
			}
		})
	}
}
