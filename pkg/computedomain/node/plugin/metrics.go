package plugin

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sys/unix"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/checkpoint"
)

// unixStat is the stat buffer of Config.Stat.
type unixStat = unix.Stat_t

// Metrics are the plugin's Prometheus metrics, in a registry of their own.
type Metrics struct {
	Registry *prometheus.Registry
	// Calls counts prepare and unprepare calls by result.
	Calls *prometheus.CounterVec
	// Duration observes them.
	Duration *prometheus.HistogramVec
	// Prepared counts the prepared claims by kind.
	Prepared *prometheus.GaugeVec
}

// NewMetrics registers the metrics (and the Go and process collectors).
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "compute_domain_plugin_claim_operations_total",
			Help: "Prepare and unprepare calls of the ComputeDomain kubelet plugin, by operation and result.",
		}, []string{"operation", "result"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "compute_domain_plugin_claim_operation_duration_seconds",
			Help:    "Duration of prepare and unprepare calls (a channel claim's includes the wait for its domain's daemon).",
			Buckets: []float64{.005, .01, .05, .1, .5, 1, 2, 5, 10, 20},
		}, []string{"operation"}),
		Prepared: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "compute_domain_plugin_prepared_claims",
			Help: "Claims prepared (or being prepared) on the node, by kind (channel, daemon).",
		}, []string{"kind"}),
	}
	m.Registry.MustRegister(m.Calls, m.Duration, m.Prepared,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) observe(op string, start time.Time, err error) {
	result := "success"
	if err != nil {
		result = "error"
	}
	m.Calls.WithLabelValues(op, result).Inc()
	m.Duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

func (m *Metrics) setPrepared(cp *checkpoint.Checkpoint) {
	counts := map[checkpoint.Kind]int{checkpoint.KindChannel: 0, checkpoint.KindDaemon: 0}
	for _, c := range cp.Claims {
		counts[c.Kind]++
	}
	for k, n := range counts {
		m.Prepared.WithLabelValues(string(k)).Set(float64(n))
	}
}
