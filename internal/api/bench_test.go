package api

import (
	"net"
	"sync"
	"testing"
	"time"
)

// BenchmarkReads measures a record GET, a list page and an ids= batch read through the whole
// handler against a real Postgres, on loopback and behind a proxy that adds a fixed round-trip
// time to every Postgres round trip, so the per-request figure shows how many the read costs:
//
//	go test -run '^$' -bench BenchmarkReads -benchtime 200x ./internal/api/
func BenchmarkReads(b *testing.B) {
	for _, rtt := range []time.Duration{0, 4 * time.Millisecond} {
		name := "loopback"
		if rtt > 0 {
			name = "rtt=" + rtt.String()
		}
		b.Run(name, func(b *testing.B) {
			e := newEnv(b, func(nc *nodeConfig) {
				if rtt > 0 {
					// Every connection of this node goes through the proxy.
					nc.Conns.DialVia = map[string]string{nc.PG.Addr(): delayProxy(b, nc.PG.Addr(), rtt/2)}
				}
			})
			e.createTenant("bench", "s1")
			a := "Bearer " + e.token("bench", "data:read data:write")
			r := e.do("PUT", "/v1/collections/c/records/r1", a, `{"data":{"n":1}}`, nil)
			if r.StatusCode != 201 {
				b.Fatalf("put: %d %s", r.StatusCode, r.Body)
			}
			for _, bc := range []struct{ name, path string }{
				{"get", "/v1/collections/c/records/r1"},
				{"list", "/v1/collections/c/records?limit=10"},
				{"batch", "/v1/collections/c/records?ids=r1,r2"},
			} {
				b.Run(bc.name, func(b *testing.B) {
					for b.Loop() {
						if r := e.do("GET", bc.path, a, "", nil); r.StatusCode != 200 {
							b.Fatalf("%s: %d %s", bc.path, r.StatusCode, r.Body)
						}
					}
				})
			}
		})
	}
}

// delayProxy forwards TCP connections to target, delivering every chunk oneWay after it was
// read, in each direction, and returns its address. It stops with the benchmark.
func delayProxy(tb testing.TB, target string, oneWay time.Duration) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); delayCopy(out, in, oneWay) }()
			go func() { defer wg.Done(); delayCopy(in, out, oneWay) }()
		}
	}()
	return ln.Addr().String()
}

// delayCopy copies src to dst, each chunk delivered d after it was read, in order.
func delayCopy(dst, src net.Conn, d time.Duration) {
	type chunk struct {
		at   time.Time
		data []byte
	}
	ch := make(chan chunk, 1024)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				ch <- chunk{time.Now().Add(d), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		time.Sleep(time.Until(c.at))
		if _, err := dst.Write(c.data); err != nil {
			break
		}
	}
	// Closing both ends stops the other direction and the reader above.
	dst.Close()
	src.Close()
	for range ch {
	}
}
