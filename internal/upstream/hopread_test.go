package upstream

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/meridian-dev/meridian/internal/testenv"
)

// apiAnswer is an API node's answer to a record GET, as the hop reads it.
const apiAnswer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nEtag: \"1\"\r\n" +
	"X-Read-Source: replica\r\nX-Request-Id: bench-1\r\nX-Served-Region: us-east\r\n" +
	"Date: Mon, 30 Nov 2026 12:00:00 GMT\r\nContent-Length: 89\r\n\r\n" +
	`{"id":"01a208d0-b397-72eb-9637-c413048a3435","collection":"c","data":{"n":1},"version":1}`

// readOutcome is everything a caller can observe of a read answer.
type readOutcome struct {
	Err                    string
	Status                 string
	StatusCode             int
	Proto                  string
	ProtoMajor, ProtoMinor int
	Header, Trailer        http.Header
	ContentLength          int64
	TransferEncoding       []string
	Close, Uncompressed    bool
	NoBody                 bool
	Reads                  []string // each body Read: n, the bytes, the error
	TrailerAfter           http.Header
	Left                   string // what the connection holds after the body
}

func outcome(t *testing.T, resp *http.Response, err error, br *bufio.Reader, req *http.Request) readOutcome {
	t.Helper()
	if err != nil {
		left, _ := io.ReadAll(br)
		return readOutcome{Err: err.Error(), Left: string(left)}
	}
	if resp.Request != req {
		t.Error("Response.Request is not the request")
	}
	o := readOutcome{Status: resp.Status, StatusCode: resp.StatusCode, Proto: resp.Proto, ProtoMajor: resp.ProtoMajor,
		ProtoMinor: resp.ProtoMinor, Header: resp.Header, Trailer: resp.Trailer.Clone(), ContentLength: resp.ContentLength,
		TransferEncoding: resp.TransferEncoding, Close: resp.Close, Uncompressed: resp.Uncompressed,
		NoBody: resp.Body == http.NoBody}
	p := make([]byte, 7) // small reads: when io.EOF comes with the last bytes matters to the hop
	for i := 0; i < 10000; i++ {
		n, err := resp.Body.Read(p)
		o.Reads = append(o.Reads, fmt.Sprintf("%d %q %v", n, p[:n], err))
		if err != nil && len(o.Reads) > 1 && o.Reads[len(o.Reads)-2] == o.Reads[len(o.Reads)-1] {
			break // the same error twice: the body stays ended
		}
	}
	o.TrailerAfter = resp.Trailer
	left, _ := io.ReadAll(br)
	o.Left = string(left)
	return o
}

// hopAnswers are answers a node may give (or a broken or hostile one), each with the request
// method and whether readResponse reads it itself.
var hopAnswers = []struct {
	name, method, raw string
	fast              bool
}{
	{"api GET", "GET", apiAnswer, true},
	{"bytes after the body", "GET", apiAnswer + "HTTP/1.1 200 OK\r\n", true},
	{"created", "POST", "HTTP/1.1 201 Created\r\nLocation: /v1/x\r\nContent-Length: 2\r\n\r\n{}", true},
	{"problem", "GET", "HTTP/1.1 404 Not Found\r\nContent-Type: application/problem+json\r\nContent-Length: 13\r\n\r\n{\"status\":404}", true},
	{"unusual reason", "GET", "HTTP/1.1 299 Fine By Me\r\nContent-Length: 0\r\n\r\n", true},
	{"no reason", "GET", "HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx", true},
	{"reason with trailing space", "GET", "HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\nx", true},
	{"reason with obs-text", "GET", "HTTP/1.1 200 \xffK\r\nContent-Length: 1\r\n\r\nx", true},
	{"204", "DELETE", "HTTP/1.1 204 No Content\r\nX-Request-Id: r\r\n\r\n", true},
	{"204 with a length and bytes", "DELETE", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", true},
	{"304", "GET", "HTTP/1.1 304 Not Modified\r\nEtag: \"1\"\r\n\r\n", true},
	{"HEAD with length", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 86\r\n\r\n", true},
	{"HEAD without length", "HEAD", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", true},
	{"HEAD chunked", "HEAD", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", true},
	{"204 chunked", "GET", "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", true},
	{"zero length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true},
	{"length padded", "GET", "HTTP/1.1 200 OK\r\nContent-Length: \t 3 \t\r\n\r\nabc", true},
	{"length with leading zeros", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 003\r\n\r\nabc", true},
	{"body cut short", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true},
	{"chunked", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n", true},
	{"chunked upper case", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n1\r\nx\r\n0\r\n\r\n", true},
	{"chunked Kelvin sign", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chun\u212aed\r\n\r\n1\r\nx\r\n0\r\n\r\n", false},
	{"chunked with length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\nafter", true},
	{"chunked with a bad length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", false},
	{"chunked trailer", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-Sum: 1\r\nx-other: 2\r\n\r\nleft", true},
	{"chunked trailer cut", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-Sum: 1\r\n", true},
	{"chunked trailer bad", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nbad line\r\n\r\n", true},
	{"chunked no end", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", true},
	{"chunked bad size", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", true},
	{"chunked missing CRLF", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n", true},
	{"chunked cut before trailer", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", true},
	{"two transfer encodings", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
	{"gzip transfer encoding", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", false},
	{"duplicate equal lengths", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", false},
	{"duplicate different lengths", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", false},
	{"length list", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc", false},
	{"negative length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc", false},
	{"plus length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc", false},
	{"empty length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nabc", false},
	{"huge length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nabc", false},
	{"largest length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\nabc", true},
	{"no length (close-delimited)", "GET", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close", false},
	{"connection close", "GET", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", false},
	{"connection keep-alive", "GET", "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", false},
	{"pragma", "GET", "HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 1\r\n\r\nx", false},
	{"declared trailer", "GET", "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Sum: 1\r\n\r\n", false},
	{"HTTP/1.0", "GET", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false},
	{"HTTP/1.0 keep-alive", "GET", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", false},
	{"HTTP/2.0", "GET", "HTTP/2.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false},
	{"lower-case version", "GET", "http/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", false},
	{"two spaces", "GET", "HTTP/1.1  200 OK\r\nContent-Length: 1\r\n\r\nx", false},
	{"short code", "GET", "HTTP/1.1 20 OK\r\nContent-Length: 1\r\n\r\nx", false},
	{"long code", "GET", "HTTP/1.1 2000 OK\r\nContent-Length: 1\r\n\r\nx", false},
	{"letters for a code", "GET", "HTTP/1.1 abc OK\r\nContent-Length: 1\r\n\r\nx", false},
	{"code 099", "GET", "HTTP/1.1 099 Low\r\nContent-Length: 1\r\n\r\nx", false},
	{"code 600", "GET", "HTTP/1.1 600 High\r\nContent-Length: 1\r\n\r\nx", false},
	{"no status", "GET", "HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", false},
	{"garbage", "GET", "\x00\x01\x02\r\n\r\n", false},
	{"control byte in reason", "GET", "HTTP/1.1 200 O\x01K\r\nContent-Length: 1\r\n\r\nx", false},
	{"CR in reason", "GET", "HTTP/1.1 200 O\rK\r\nContent-Length: 1\r\n\r\nx", false},
	{"bare LF lines", "GET", "HTTP/1.1 200 OK\nContent-Length: 1\n\nx\r\n\r\n", false},
	{"bare LF in the head", "GET", "HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 1\r\n\r\nx", false},
	{"LF LF before CRLF CRLF", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\nX-B: 2\r\n\r\nx", false},
	{"starts with LF", "GET", "\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", false},
	{"CR in a value", "GET", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 1\r\n\r\nx", false},
	{"NUL in a value", "GET", "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 1\r\n\r\nx", false},
	{"DEL in a value", "GET", "HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\nContent-Length: 1\r\n\r\nx", false},
	{"obs-text in a value", "GET", "HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9 \xff\r\nContent-Length: 1\r\n\r\nx", true},
	{"padded values", "GET", "HTTP/1.1 200 OK\r\nX-A:\t a b \t\r\nX-Empty:\r\nX-Blank:   \r\nContent-Length: 1\r\n\r\nx", true},
	{"lower-case names", "GET", "HTTP/1.1 200 OK\r\ncontent-type: a\r\nx-served-region: b\r\nX-SERVED-REGION: c\r\ncontent-length: 1\r\n\r\nx", true},
	{"odd names", "GET", "HTTP/1.1 200 OK\r\nx-a_b.c~d: 1\r\nfoo-bar-: 2\r\n-x: 3\r\nA--b: 4\r\n1a: 5\r\nContent-Length: 1\r\n\r\nx", true},
	{"repeated fields", "GET", "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nVary: A\r\nSet-Cookie: b=2\r\nvary: B\r\nContent-Length: 1\r\n\r\nx", true},
	{"long name", "GET", "HTTP/1.1 200 OK\r\n" + strings.Repeat("ab-", 30) + "x: 1\r\n" + strings.Repeat("Q", 64) + ": 2\r\nContent-Length: 1\r\n\r\nx", true},
	{"space before colon", "GET", "HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 1\r\n\r\nx", false},
	{"no colon", "GET", "HTTP/1.1 200 OK\r\nX-A 1\r\nContent-Length: 1\r\n\r\nx", false},
	{"empty name", "GET", "HTTP/1.1 200 OK\r\n: 1\r\nContent-Length: 1\r\n\r\nx", false},
	{"bad name byte", "GET", "HTTP/1.1 200 OK\r\nX(A): 1\r\nContent-Length: 1\r\n\r\nx", false},
	{"non-ASCII name", "GET", "HTTP/1.1 200 OK\r\nX-\xc3\xa9: 1\r\nContent-Length: 1\r\n\r\nx", false},
	{"folded line", "GET", "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 1\r\n\r\nx", false},
	{"leading space on the first field", "GET", "HTTP/1.1 200 OK\r\n X-A: 1\r\nContent-Length: 1\r\n\r\nx", false},
	{"many fields", "GET", "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-Many: v\r\n", 1000) + "Content-Length: 1\r\n\r\nx", true},
	{"head larger than the buffer", "GET", "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("b", 20<<10) + "\r\nContent-Length: 1\r\n\r\nx", false},
	{"head cut short", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n", false},
	{"status line only", "GET", "HTTP/1.1 200 OK\r\n", false},
	{"empty", "GET", "", false},
	{"1xx then the answer", "GET", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + apiAnswer, true},
	{"100 with a length", "GET", "HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\nHTTP/1.1 200 OK\r\n", true},
	{"101", "GET", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", false},
}

// TestReadResponseMatchesReadResponse: for every answer, readResponse returns what
// http.ReadResponse returns — the same fields, body reads (bytes and errors, read by read),
// trailers and bytes left on the connection, or the same error — with the hop's buffer, a tiny
// buffer and a connection that delivers a byte at a time; fast says which ones it reads itself.
func TestReadResponseMatchesReadResponse(t *testing.T) {
	readers := map[string]func(string) *bufio.Reader{
		"hop buffer":  func(s string) *bufio.Reader { return bufio.NewReaderSize(strings.NewReader(s), 16<<10) },
		"tiny buffer": func(s string) *bufio.Reader { return bufio.NewReaderSize(strings.NewReader(s), 16) },
		"byte at a time": func(s string) *bufio.Reader {
			return bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(s)), 16<<10)
		},
		"error with data": func(s string) *bufio.Reader {
			return bufio.NewReaderSize(iotest.DataErrReader(strings.NewReader(s)), 16<<10)
		},
	}
	for _, c := range hopAnswers {
		for rname, mk := range readers {
			t.Run(c.name+"/"+rname, func(t *testing.T) {
				compareReaders(t, c.method, c.raw, mk, rname == "hop buffer", c.fast)
			})
		}
	}
}

func compareReaders(t *testing.T, method, raw string, mk func(string) *bufio.Reader, checkFast, wantFast bool) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://10.0.0.1:8080/v1/x", nil)
	for i := 0; ; i++ { // 1xx answers precede the real one, as the hop reads them
		wbr, gbr := mk(raw), mk(raw)
		var wantResp, gotResp *http.Response
		var wantErr, gotErr error
		var fast bool
		for range i + 1 {
			wantResp, wantErr = http.ReadResponse(wbr, req)
			gotResp, fast, gotErr = readResponseFast(gbr, req)
		}
		want, got := outcome(t, wantResp, wantErr, wbr, req), outcome(t, gotResp, gotErr, gbr, req)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("answer %d differs\n got %+v\nwant %+v", i, got, want)
		}
		if checkFast && i == 0 && fast != wantFast {
			t.Errorf("read it itself: %v, want %v", fast, wantFast)
		}
		if wantErr != nil || wantResp.StatusCode >= 200 || wantResp.StatusCode < 100 || i > 3 {
			return
		}
	}
}

// FuzzReadResponse: go test -fuzz FuzzReadResponse ./internal/upstream/
func FuzzReadResponse(f *testing.F) {
	for _, c := range hopAnswers {
		f.Add(c.method == "HEAD", c.raw)
	}
	f.Fuzz(func(t *testing.T, head bool, raw string) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		compareReaders(t, method, raw, func(s string) *bufio.Reader {
			return bufio.NewReaderSize(strings.NewReader(s), 16<<10)
		}, false, false)
	})
}

// BenchmarkReadResponse: go test -run '^$' -bench ReadResponse -benchmem ./internal/upstream/
// An API node's answer to a record GET, head and body read as the hop reads them.
func BenchmarkReadResponse(b *testing.B) {
	req, _ := http.NewRequest("GET", "http://10.0.0.1:8080/v1/collections/c/records/x", nil)
	for _, bc := range []struct {
		name string
		read func(*bufio.Reader, *http.Request) (*http.Response, error)
	}{{"http.ReadResponse", http.ReadResponse}, {"readResponse", readResponse}} {
		b.Run(bc.name, func(b *testing.B) {
			src := strings.NewReader(apiAnswer)
			br := bufio.NewReaderSize(src, 16<<10)
			body := make([]byte, 512)
			b.ReportAllocs()
			before := testenv.ProcessCPU()
			for b.Loop() {
				src.Reset(apiAnswer)
				br.Reset(src)
				resp, err := bc.read(br, req)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(resp.Body, body[:resp.ContentLength]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((testenv.ProcessCPU()-before).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}
