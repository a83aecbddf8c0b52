package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/loadgen"
)

// readEchoArg, as the first argument, makes the test binary serve as the read echo child
// (see serveReadEcho); only BenchmarkCacheClientCPU starts it.
const readEchoArg = "internal-read-echo"

// serveReadEcho is the read echo child: it answers every request with 200, echoBody (a
// record-sized JSON body) and X-Read-Source: cache, as a cached record GET does, until stdin
// closes.
func serveReadEcho() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	return serveUntilStdinCloses(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["X-Read-Source"] = []string{"cache"}
		_, _ = w.Write(echoBody)
	}))
}

// BenchmarkCacheClientCPU measures the CPU time the cache scenario's load generator spends per
// request, without a cluster: the scenario's client (useCacheClient: each -client engine, its
// answers counted by readCounter) and targets (Zipf-drawn record GETs with its headers), 16
// closed-loop workers, against the read echo child. The server runs in a process of its own, so
// the benchmark's process is the load generator alone and its getrusage(RUSAGE_SELF) is the
// load generator's CPU time (user + system, every thread, GC included); the child's is read
// from /proc/<pid>/stat and reported beside it. b.N is the measured requests of the cached
// variant, after a 300 ms warm-up; run it with a fixed count, e.g.
//
//	go test -run '^$' -bench CacheClientCPU -benchtime 40000x -count 1 ./cmd/bench
//
// Metrics: client-µs/req and server-µs/req (CPU per request), req/s, and allocs/op (the client
// process's allocations per request).
func BenchmarkCacheClientCPU(b *testing.B) {
	ctx := context.Background()
	base, pid, stop, err := startChild(ctx, readEchoArg, "")
	if err != nil {
		b.Fatal(err)
	}
	defer stop()

	const workers = 16
	pairs := []cachePair{{via: viaRouter, base: base, uncached: uncachedPhase, cached: cachedPhase}}
	for _, client := range []string{clientGoroutines, clientLoop} {
		b.Run(client, func(b *testing.B) {
			targets := cacheTargets(pairs, "bench-token", "cpu", workers, 10_000, 1.1)[1:] // the cached GET
			var counter *readCounter                                                       // set below, before the first round
			var cpu0 time.Duration
			var srv0 int64
			var wall0 time.Time
			cfg := loadgen.Config{Concurrency: workers, Requests: b.N, Warmup: 300 * time.Millisecond,
				BeforeRound: func(_ context.Context, target string, warmup bool) error {
					if warmup {
						counter.setPhase("")
						return nil
					}
					counter.setPhase(target)
					b.ResetTimer()
					cpu0, srv0, wall0 = selfCPU(b), childTicks(b, pid), time.Now()
					return nil
				}}
			counter = useCacheClient(&cfg, client)
			b.ReportAllocs()
			rep, err := loadgen.Run(ctx, cfg, targets)
			if err != nil {
				b.Fatal(err)
			}
			cpu, srv, wall := selfCPU(b)-cpu0, childTicks(b, pid)-srv0, time.Since(wall0)
			b.StopTimer()

			// Every count stays exact: the counter saw every request, and every one was a cached 200.
			tr := rep.Targets[0]
			rc := counter.get(cachedPhase)
			if tr.Requests != int64(b.N) || tr.OK != tr.Requests || rc.status["200"] != tr.Requests || rc.source200["cache"] != tr.Requests {
				b.Fatalf("requests %d, ok %d, counted %v / %v; want %d of each", tr.Requests, tr.OK, rc.status, rc.source200, b.N)
			}
			n := float64(tr.Requests)
			b.ReportMetric(float64(cpu.Microseconds())/n, "client-µs/req")
			b.ReportMetric(float64(srv)*1e6/clockTicks/n, "server-µs/req")
			b.ReportMetric(n/wall.Seconds(), "req/s")
			b.ReportMetric(0, "ns/op") // wall time per request of 16 workers says little; req/s says it
		})
	}
}

// selfCPU is this process's user + system CPU time so far.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// childTicks is pid's CPU time so far in clock ticks.
func childTicks(b *testing.B, pid int) int64 {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	st, ok := parseProcStat(raw)
	if !ok {
		b.Fatalf("unparsable /proc/%d/stat", pid)
	}
	return st.own
}
