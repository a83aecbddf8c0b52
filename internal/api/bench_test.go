package api

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/cache"
	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/testenv"
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

// cachedReads is the records store with Get and List served through the cache, as cmd/api
// wires it.
type cachedReads struct {
	Store
	r cache.Reader
}

func (s cachedReads) Get(ctx context.Context, t records.Target, ro records.ReadOptions, coll, id string) (records.Record, records.ReadInfo, error) {
	return s.r.Get(ctx, t, ro, coll, id)
}

func (s cachedReads) List(ctx context.Context, t records.Target, ro records.ReadOptions, coll string, q records.ListQuery) (records.Page, records.ReadInfo, error) {
	return s.r.List(ctx, t, ro, coll, q)
}

// BenchmarkGetHandler measures the node's own work for one record GET: its handler chain called
// in process (no client and no sockets on the HTTP side, so what is left is the middleware,
// auth, routing, the read and the answer), uncached (the records store on a real Postgres) and
// cached (the same store through internal/cache on a real Redis, every read a hit). The request
// logs its line (to io.Discard) and counts its metrics as in production. cpu-µs/op is this
// process's CPU time per GET (Postgres and Redis are other processes), which on a shared
// machine says more than ns/op:
//
//	go test -run '^$' -bench BenchmarkGetHandler -benchtime 5000x -count 3 ./internal/api/
func BenchmarkGetHandler(b *testing.B) {
	e := newEnv(b)
	e.createTenant("bench", "s1")
	a := "Bearer " + e.token("bench", "data:read data:write")
	const path = "/v1/collections/zipf/records/zipf-1"
	if r := e.do("PUT", path, a, `{"data":{"n":1,"note":"meridian bench zipf record"}}`, nil); r.StatusCode != 201 {
		b.Fatalf("put: %d %s", r.StatusCode, r.Body)
	}
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(b).Addr(), MaxRetries: -1})
	b.Cleanup(func() { rdb.Close() })
	c, err := cache.New(cache.Config{Redis: rdb, Fresh: func(string) (time.Time, bool) { return time.Now(), true }})
	if err != nil {
		b.Fatal(err)
	}
	verifier, err := auth.NewVerifier(auth.Config{Secret: testSecret})
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name   string
		store  Store
		source string
	}{
		{"uncached", e.store, "primary"},
		{"cached", cachedReads{Store: e.store, r: c.Wrap(e.store)}, "cache"},
	} {
		srv, err := New(Config{Region: region, CursorKey: []byte("cursor-key"), Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))},
			e.maps, bc.store, verifier, nil)
		if err != nil {
			b.Fatal(err)
		}
		h := srv.Handler()
		get := func() *httptest.ResponseRecorder {
			req := httptest.NewRequest("GET", path, nil)
			req.Header.Set("Authorization", a)
			req.Header.Set("Accept-Encoding", "gzip")
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			return w
		}
		b.Run(bc.name, func(b *testing.B) {
			for range 2 { // the first cached read fills the entry
				get()
			}
			if w := get(); w.Code != 200 || w.Header().Get("X-Read-Source") != bc.source {
				b.Fatalf("GET: %d %v %s", w.Code, w.Header(), w.Body)
			}
			b.ReportAllocs()
			before := testenv.ProcessCPU()
			for b.Loop() {
				if w := get(); w.Code != 200 {
					b.Fatalf("GET: %d %s", w.Code, w.Body)
				}
			}
			b.ReportMetric(float64((testenv.ProcessCPU()-before).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}
