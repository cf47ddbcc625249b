package driver

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/version"
)

// Metrics are the plugin's Prometheus metrics.
type Metrics struct {
	Registry         *prometheus.Registry
	Operations       *prometheus.CounterVec
	Latency          *prometheus.HistogramVec
	PreparedDevices  prometheus.Gauge
	PreparedClaims   prometheus.Gauge
	PublishedDevices prometheus.Gauge
}

// NewMetrics creates the metrics in a registry of their own.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Operations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gpu_dra_operations_total", Help: "Prepare and unprepare calls per claim, by operation and result.",
		}, []string{"operation", "result"}),
		Latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gpu_dra_operation_duration_seconds", Help: "Time to prepare or unprepare one claim.",
			// 50 µs to ~13 s: sub-millisecond prepares are resolved.
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 19),
		}, []string{"operation"}),
		PreparedDevices:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "gpu_dra_prepared_devices", Help: "Devices of prepared claims."}),
		PreparedClaims:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "gpu_dra_prepared_claims", Help: "Prepared claims."}),
		PublishedDevices: prometheus.NewGauge(prometheus.GaugeOpts{Name: "gpu_dra_published_devices", Help: "Devices in the published ResourceSlices."}),
	}
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gpu_dra_build_info", Help: "Always 1; the version label is the plugin's release."}, []string{"version"})
	buildInfo.WithLabelValues(version.Get()).Set(1)
	m.Registry.MustRegister(m.Operations, m.Latency, m.PreparedDevices, m.PreparedClaims, m.PublishedDevices, buildInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) observe(op string, start time.Time, err error) {
	result := "success"
	if err != nil {
		result = "error"
	}
	m.Operations.WithLabelValues(op, result).Inc()
	m.Latency.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

func (m *Metrics) setPrepared(cp *checkpoint.Checkpoint) {
	devices := 0
	for _, c := range cp.Claims {
		devices += len(c.Devices)
	}
	m.PreparedClaims.Set(float64(len(cp.Claims)))
	m.PreparedDevices.Set(float64(devices))
}
