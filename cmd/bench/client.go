package main

import (
	"github.com/meridian-dev/meridian/internal/loadgen"
	"github.com/meridian-dev/meridian/internal/upstream"
)

// Values of -client: the load generator's engine for the cache and proxy scenarios.
const (
	// clientLoop is loadgen's event-loop engine (the default).
	clientLoop = "loop"
	// clientGoroutines is loadgen's goroutine engine over upstream.HopTransport.
	clientGoroutines = "goroutines"
)

// useLoadClient sets cfg to send with the load generator client names: clientLoop, loadgen's
// event-loop engine (one gnet loop, a keep-alive connection per worker and host, requests and
// answers handled on the loop); clientGoroutines, a goroutine per worker straight through
// upstream.HopTransport, kept alive for cfg.Concurrency workers (no http.Client: loadgen applies
// cfg.Timeout itself, and a RoundTripper never follows redirects; no reader and writer
// goroutines per connection). Either way the load generator shares the machine's CPUs with what
// it measures, and its cost per request dilutes the ratios the scenarios report.
func useLoadClient(cfg *loadgen.Config, client string) {
	cfg.Client, cfg.Transport = nil, nil
	if client == clientGoroutines {
		cfg.Engine = loadgen.EngineGoroutines
		cfg.Transport = &upstream.HopTransport{MaxIdlePerHost: cfg.Concurrency}
		return
	}
	cfg.Engine = loadgen.EngineLoop
}

// loadClientText names the load generator client for a run's description in BENCHMARKS.
func loadClientText(client string) string {
	if client == clientGoroutines {
		return "bench `-client goroutines` (loadgen's goroutine engine: a goroutine per worker over upstream.HopTransport, no goroutines per connection)"
	}
	return "bench `-client loop` (loadgen's event-loop engine: one gnet event loop, one keep-alive HTTP/1.1 connection per worker, no goroutine per connection or request)"
}
