package shards

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports pgxpool.Stat of every open primary pool of c at scrape time; the API node
// registers it on its registry.
func Collector(c *Conns) prometheus.Collector { return poolCollector{c} }

type poolCollector struct{ conns *Conns }

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
	pc.conns.Each(func(shard string, p *pgxpool.Pool) {
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
