package moves

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the controller's series. Label values are phase names only (a fixed set).
type metrics struct {
	phaseSeconds *prometheus.HistogramVec
	rowsCopied   prometheus.Counter
	repairs      prometheus.Counter
	active       prometheus.Gauge
	pause        prometheus.Histogram
	firstWrite   prometheus.Histogram
	stepErrors   *prometheus.CounterVec
	leaseHeld    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, log *slog.Logger) *metrics {
	m := &metrics{
		phaseSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "meridian_moves_phase_seconds",
			Help:    "Time a move's step took, by the phase it ran in (verify = passes before the fence; cutover = fence to the Cutover command applied).",
			Buckets: []float64{0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400}}, []string{"phase"}),
		rowsCopied: prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_moves_rows_copied_total",
			Help: "Rows copied by backfill batches (a resumed backfill copies again)."}),
		repairs: prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_moves_repairs_total",
			Help: "Target rows changed by verify repairs."}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meridian_moves_active",
			Help: "Non-terminal moves in the map, as seen by the controller holding the lease (0 on a standby)."}),
		pause: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meridian_moves_cutover_pause_seconds",
			Help:    "Fence set on the source to the Cutover command applied and visible to the controller.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}}),
		firstWrite: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meridian_moves_first_write_seconds",
			Help:    "Fence set on the source to the first client write accepted on the target (the databases' clocks).",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}}),
		stepErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_moves_step_errors_total",
			Help: "Failed move steps (each is retried; before cutover a move fails after the attempt limit)."}, []string{"phase"}),
		leaseHeld: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meridian_moves_lease_held",
			Help: "1 while this controller holds the rebalancer lease and drives moves."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.phaseSeconds, m.rowsCopied, m.repairs, m.active, m.pause, m.firstWrite, m.stepErrors, m.leaseHeld} {
			if err := reg.Register(c); err != nil {
				log.Warn("moves metrics not registered", "err", err)
			}
		}
	}
	return m
}
