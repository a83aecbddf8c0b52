package api

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the node's Prometheus series, on a registry of its own so tests can run several
// servers in one process.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	errors   *prometheus.CounterVec
	duration *prometheus.HistogramVec
	idemHits prometheus.Counter
	// reads counts reads by the source that answered them (primary, replica).
	reads *prometheus.CounterVec
	// readFallbacks counts standby reads retried on the primary.
	readFallbacks prometheus.Counter
	// streams is the number of open /v1/changes streams.
	streams prometheus.Gauge
	// mirrors counts writes mirrored to a move's target shard, by records.MirrorResult.
	mirrors *prometheus.CounterVec
}

func newMetrics(extra ...prometheus.Collector) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_api_requests_total",
			Help: "HTTP requests by route, method and status code."}, []string{"route", "method", "code"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_api_request_errors_total",
			Help: "HTTP requests answered with a 5xx, by route and method."}, []string{"route", "method"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "meridian_api_request_duration_seconds",
			Help: "HTTP request duration by route and method.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"route", "method"}),
		idemHits: prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_api_idempotency_replays_total",
			Help: "Requests answered from a stored Idempotency-Key response."}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_api_reads_total",
			Help: "Read transactions by the source that answered them."}, []string{"source"}),
		readFallbacks: prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_api_read_fallbacks_total",
			Help: "Standby reads retried on the primary (standby behind its token, failed or missing the tenant)."}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meridian_api_change_streams",
			Help: "Open /v1/changes streams."}),
		mirrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_api_mirror_writes_total",
			Help: "Writes of a moving tenant mirrored to the move's target shard, by result (ok, failed, skipped: no tenant row there)."}, []string{"result"}),
	}
	m.reg.MustRegister(m.requests, m.errors, m.duration, m.idemHits, m.reads, m.readFallbacks, m.streams, m.mirrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(extra...)
	return m
}

func (m *metrics) observe(route, method string, status int, d time.Duration) {
	m.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	if status >= 500 {
		m.errors.WithLabelValues(route, method).Inc()
	}
	m.duration.WithLabelValues(route, method).Observe(d.Seconds())
}
