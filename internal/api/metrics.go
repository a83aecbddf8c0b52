package api

import (
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
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
}

func newMetrics(pools *Pools) *metrics {
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
	}
	m.reg.MustRegister(m.requests, m.errors, m.duration, m.idemHits, m.reads, m.readFallbacks, poolCollector{pools},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observe(route, method string, status int, d time.Duration) {
	m.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	if status >= 500 {
		m.errors.WithLabelValues(route, method).Inc()
	}
	m.duration.WithLabelValues(route, method).Observe(d.Seconds())
}

// poolCollector exports pgxpool.Stat per shard at scrape time.
type poolCollector struct{ pools *Pools }

var _ prometheus.Collector = poolCollector{}

var (
	poolConns    = prometheus.NewDesc("meridian_api_pool_conns", "Connections of a shard pool by state.", []string{"shard", "state"}, nil)
	poolMax      = prometheus.NewDesc("meridian_api_pool_max_conns", "Maximum size of a shard pool.", []string{"shard"}, nil)
	poolAcquires = prometheus.NewDesc("meridian_api_pool_acquires_total", "Successful acquires from a shard pool.", []string{"shard"}, nil)
	poolWaits    = prometheus.NewDesc("meridian_api_pool_empty_acquires_total", "Acquires that had to wait for a connection.", []string{"shard"}, nil)
	poolWaitSecs = prometheus.NewDesc("meridian_api_pool_acquire_wait_seconds_total", "Time spent waiting for connections.", []string{"shard"}, nil)
)

func (pc poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolConns, poolMax, poolAcquires, poolWaits, poolWaitSecs} {
		ch <- d
	}
}

func (pc poolCollector) Collect(ch chan<- prometheus.Metric) {
	pc.pools.Each(func(shard string, p *pgxpool.Pool) {
		st := p.Stat()
		ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(st.AcquiredConns()), shard, "acquired")
		ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(st.IdleConns()), shard, "idle")
		ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(st.ConstructingConns()), shard, "constructing")
		ch <- prometheus.MustNewConstMetric(poolMax, prometheus.GaugeValue, float64(st.MaxConns()), shard)
		ch <- prometheus.MustNewConstMetric(poolAcquires, prometheus.CounterValue, float64(st.AcquireCount()), shard)
		ch <- prometheus.MustNewConstMetric(poolWaits, prometheus.CounterValue, float64(st.EmptyAcquireCount()), shard)
		ch <- prometheus.MustNewConstMetric(poolWaitSecs, prometheus.CounterValue, st.AcquireDuration().Seconds(), shard)
	})
}
