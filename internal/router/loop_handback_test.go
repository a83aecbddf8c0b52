package router

import (
	"bufio"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestLoopTakesBackDetachedConnections: a keep-alive connection the loop handed to net/http comes
// back to the loop between two requests once net/http has answered one without a body, and every
// answer on it is the right one, in order:
//   - a request the loop does not serve (Expect on a GET), then plain GETs: the first answered by
//     net/http, then the loop's again;
//   - the two sent in one write: net/http answers both (it has read the second);
//   - a non-native request and half of the next head in one write, the rest later: net/http
//     answers both (its buffer held part of the second);
//   - a POST whose body came after its head: net/http's, and the GET after it too (what it read
//     with the body may have held part of it).
//
// net/http's read that notices a client gone may take the first byte of a request sent the
// moment an answer arrives; that request is then net/http's, and the connection comes back
// after it. So the GETs after each case are sent until one is served on the loop, ten at most.
func TestLoopTakesBackDetachedConnections(t *testing.T) {
	l, c := dialLoop(t, newRig(t, nil), 30*time.Second)
	br := bufio.NewReader(c)
	get := func(id string, extra string) string {
		return "GET /v1/collections/c/records/" + id + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tokAcme + "\r\n" + extra + "\r\n"
	}
	detour := func(id string) string { return get(id, "Expect: 100-continue\r\n") } // not native: net/http's
	write := func(s string) {
		t.Helper()
		if _, err := io.WriteString(c, s); err != nil {
			t.Fatal(err)
		}
	}
	read := func(method, want string) {
		t.Helper()
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("answer for %s: %v", want, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
			t.Fatalf("answer for %s: %d %s", want, resp.StatusCode, b)
		}
	}
	native := func() float64 { return loopCount(t, l, "native") }
	// served sends one GET and says whether the loop served it natively.
	served := func(id string) bool {
		t.Helper()
		n := native()
		write(get(id, ""))
		read("GET", "/records/"+id+`"`)
		return native() > n
	}
	// untilNative sends GETs until one is the loop's.
	untilNative := func(name string) {
		t.Helper()
		for i := range 10 {
			if served(strings.ReplaceAll(name, " ", "-") + "-" + strconv.Itoa(i)) {
				return
			}
		}
		t.Fatalf("%s: ten GETs after it, none served on the loop", name)
	}
	notNative := func(name string, n0 float64) {
		t.Helper()
		if n := native(); n != n0 {
			t.Fatalf("%s: %v requests served on the loop, want none (net/http holds the connection)", name, n-n0)
		}
	}
	d0, r0 := loopCount(t, l, "detached"), testutil.ToFloat64(l.returned)

	write(detour("a"))
	read("GET", "/records/a\"")
	untilNative("after a detour")

	n0 := native()
	write(detour("b") + get("c", ""))
	read("GET", "/records/b\"")
	read("GET", "/records/c\"")
	notNative("a detour and a GET in one write", n0)
	untilNative("after a detour and a GET in one write")

	n0 = native()
	next := get("e", "")
	write(detour("d") + next[:20])
	read("GET", "/records/d\"")
	time.Sleep(50 * time.Millisecond)
	write(next[20:])
	read("GET", "/records/e\"")
	notNative("a detour and half a GET, the rest later", n0)
	untilNative("after a detour and half a GET")

	n0 = native()
	write("POST /v1/collections/c/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tokAcme + "\r\nContent-Length: 11\r\n\r\n{\"data\"")
	time.Sleep(50 * time.Millisecond)
	write(":{}}")
	read("POST", `"body":"{\"data\":{}}"`)
	write(get("f", ""))
	read("GET", "/records/f\"")
	notNative("a POST whose body came late, then a GET", n0)
	untilNative("after a POST whose body came late")

	if d, r := loopCount(t, l, "detached")-d0, testutil.ToFloat64(l.returned)-r0; d != 4 || r != 4 {
		t.Errorf("detached %v, returned %v: want 4 and 4 (each case's connection handed over once and back once)", d, r)
	}
}
