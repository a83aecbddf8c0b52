// Package testenv gives tests real, throwaway servers: Postgres clusters and hot standbys,
// redis-server, and in-process NATS (alone or joined by gateways, one server per region).
// Each is on a free 127.0.0.1 port and is removed by t.Cleanup with no process or directory
// left behind. It is a thin wrapper over internal/localsrv, which does the work and is shared
// with the local launcher.
//
// Tests must use this package rather than fakes: Postgres, Redis and NATS are never mocked.
// A missing binary fails the test (t.Fatal) naming the Debian package to install; it never
// skips. Independent test processes (go test runs packages in parallel) can start clusters at
// the same time: the initdb template is built once under a file lock and every cluster gets
// its own directory and port.
//
// Measured on the 2-core CI machine (Postgres 15.18, as root so postgres runs as nobody), with
// the initdb template already cached:
//
//	go test -run '^$' -bench BenchmarkStartPostgres -benchtime 10x ./internal/testenv/
//
// StartPostgres (template copy + postgres start + first connection) took 1.76 s/op while the
// machine was shared (load average 17 on 2 cores) and about 0.6 s when quieter (copy 0.3 s,
// start to first connection 0.3 s), under the 3 s budget. Building the template (initdb) costs
// 3–5 s once per machine, Postgres version and server user. A 3-region NATS gateway mesh takes
// about 6 s, almost all of it nats-server's JetStream meta-leader election.
package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/meridian-dev/meridian/internal/localsrv"
)

// startTimeout bounds each server start, so a wedged start fails instead of hanging the test.
const startTimeout = 2 * time.Minute

func startCtx(t testing.TB) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), startTimeout)
}

// Postgres starts a fresh cluster with default settings, stopped and removed at cleanup.
func Postgres(t testing.TB) *localsrv.Postgres {
	t.Helper()
	return PostgresWith(t, localsrv.PostgresOptions{})
}

// PostgresWith is Postgres with options (settings, a fixed port). opts.Keep is ignored: tests
// leave nothing behind.
func PostgresWith(t testing.TB, opts localsrv.PostgresOptions) *localsrv.Postgres {
	t.Helper()
	opts.Keep = false
	ctx, cancel := startCtx(t)
	defer cancel()
	p, err := localsrv.StartPostgres(ctx, opts)
	if err != nil {
		t.Fatalf("testenv: start postgres: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("testenv: stop postgres %s: %v", p.Addr(), err)
		}
	})
	return p
}

// Standby starts a streaming hot standby of primary, stopped and removed at cleanup (before
// the primary, since cleanups run last-in first-out).
func Standby(t testing.TB, primary *localsrv.Postgres) *localsrv.Postgres {
	t.Helper()
	return StandbyWith(t, primary, localsrv.PostgresOptions{})
}

// StandbyWith is Standby with options: opts.PrimaryAddr, say, streams the WAL through a proxy
// a test can cut. opts.Keep is ignored: tests leave nothing behind.
func StandbyWith(t testing.TB, primary *localsrv.Postgres, opts localsrv.PostgresOptions) *localsrv.Postgres {
	t.Helper()
	opts.Keep = false
	ctx, cancel := startCtx(t)
	defer cancel()
	s, err := localsrv.StartStandby(ctx, primary, opts)
	if err != nil {
		t.Fatalf("testenv: start standby of %s: %v", primary.Addr(), err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("testenv: stop standby %s: %v", s.Addr(), err)
		}
	})
	return s
}

// Redis starts redis-server (no persistence), stopped and removed at cleanup.
func Redis(t testing.TB) *localsrv.Redis {
	t.Helper()
	ctx, cancel := startCtx(t)
	defer cancel()
	r, err := localsrv.StartRedis(ctx, localsrv.RedisOptions{})
	if err != nil {
		t.Fatalf("testenv: start redis: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("testenv: stop redis %s: %v", r.Addr(), err)
		}
	})
	return r
}

// NATS starts an in-process nats-server with JetStream, shut down at cleanup. Its client URL
// is s.ClientURL().
func NATS(t testing.TB) *server.Server {
	t.Helper()
	s, err := localsrv.StartNATS(localsrv.NATSOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("testenv: start nats: %v", err)
	}
	t.Cleanup(func() {
		if err := localsrv.StopNATS(s); err != nil {
			t.Errorf("testenv: stop nats: %v", err)
		}
	})
	return s
}

// NATSGateways starts one in-process server per region (named after it) joined by gateways,
// with JetStream on, and returns them by region once the mesh is fully connected.
func NATSGateways(t testing.TB, regions ...string) map[string]*server.Server {
	t.Helper()
	servers, err := localsrv.StartNATSGateways(regions, t.TempDir())
	if err != nil {
		t.Fatalf("testenv: start nats gateways %v: %v", regions, err)
	}
	t.Cleanup(func() {
		if err := localsrv.ShutdownNATS(servers); err != nil {
			t.Errorf("testenv: stop nats gateways: %v", err)
		}
	})
	return servers
}

// NewPool opens a pgxpool on dsn, closed at cleanup.
func NewPool(t testing.TB, dsn string) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := startCtx(t)
	defer cancel()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatalf("testenv: pgxpool %s: %v", dsn, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		t.Fatalf("testenv: pgxpool ping %s: %v", dsn, err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// WaitFor calls f until it returns nil, failing the test with f's last error after timeout.
// Use it instead of sleeps.
func WaitFor(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	delay := 5 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: condition not met after %v: %v", timeout, err)
			return // only reached with a testing.TB whose Fatalf does not stop the goroutine
		}
		time.Sleep(delay)
		if delay < 100*time.Millisecond {
			delay *= 2
		}
	}
}

// ProcessCPU is this process's user and system CPU time so far: benchmarks report it per
// operation (cpu-µs/op) because on a shared machine ns/op is wall time and counts the
// neighbours' load, while this counts only the process's own work (GC included).
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// EdgeCounts scrapes a router's /metrics (base URL router) for
// meridian_edge_cache_requests_total by result; a result not yet counted is absent (0).
func EdgeCounts(ctx context.Context, c *http.Client, router string) (map[string]float64, error) {
	return labelCounts(ctx, c, router, `meridian_edge_cache_requests_total{result="`)
}

// LoopCounts scrapes a router's /metrics (base URL router) for
// meridian_router_loop_requests_total by path (native, edge, offloop, detached): the requests
// its event-loop listener took; absent when it has none.
func LoopCounts(ctx context.Context, c *http.Client, router string) (map[string]float64, error) {
	return labelCounts(ctx, c, router, `meridian_router_loop_requests_total{path="`)
}

// labelCounts scrapes router's /metrics for the series of one counter with one label, series
// being the counter's name and the label up to its value's opening quote.
func labelCounts(ctx context.Context, c *http.Client, router, series string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, router+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s/metrics: %w", router, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s/metrics: status %d", router, resp.StatusCode)
	}
	counts := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), series)
		if !ok {
			continue
		}
		result, value, ok := strings.Cut(rest, `"} `)
		v, err := strconv.ParseFloat(value, 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("scrape %s/metrics: line %q", router, sc.Text())
		}
		counts[result] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scrape %s/metrics: %w", router, err)
	}
	return counts, nil
}
