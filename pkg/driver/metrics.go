package driver

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
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
	// DeviceInfo is 1 for every prepared device and pod of its claim (see
	// DeviceInfoLabels), so dashboards join device metrics to workloads.
	DeviceInfo *prometheus.GaugeVec
	// HealthTaints is 1 for every health taint the plugin puts on a GPU or
	// MIG device (see HealthTaintLabels).
	HealthTaints *prometheus.GaugeVec
}

// HealthTaintLabels are the labels of gpu_dra_health_taint: the node, the
// GPU's UUID, the MIG device's UUID for a taint of one MIG instance ("" for
// the whole GPU and all its devices), the taint's key, value and effect.
var HealthTaintLabels = []string{"node", "gpu_uuid", "mig_uuid", "key", "value", "effect"}

// DeviceInfoLabels are the labels of gpu_dra_prepared_device_info: the
// node and device (pool and name in the ResourceSlice), the device's type,
// the GPU's UUID, for a MIG device its UUID, profile and GPU instance ID
// (dcgm-exporter's UUID and GPU_I_ID), and the claim's namespace, name and
// pod ("" until the pod is known).
var DeviceInfoLabels = []string{"node", "device", "type", "gpu_uuid", "mig_uuid", "profile", "gpu_instance_id", "namespace", "claim", "pod"}

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
		DeviceInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gpu_dra_prepared_device_info", Help: "Always 1: one series per prepared device and pod of its claim, naming the GPU and MIG device and the workload.",
		}, DeviceInfoLabels),
		HealthTaints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gpu_dra_health_taint", Help: "Always 1: one series per health taint on a GPU (mig_uuid empty) or one MIG device.",
		}, HealthTaintLabels),
	}
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gpu_dra_build_info", Help: "Always 1; the version label is the plugin's release."}, []string{"version"})
	buildInfo.WithLabelValues(version.Get()).Set(1)
	m.Registry.MustRegister(m.Operations, m.Latency, m.PreparedDevices, m.PreparedClaims, m.PublishedDevices, m.DeviceInfo, m.HealthTaints, buildInfo,
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

// setDeviceInfo sets gpu_dra_prepared_device_info to the prepared devices
// of cp; pods gives a claim's pods by claim UID.
func (m *Metrics) setDeviceInfo(node string, cp *checkpoint.Checkpoint, pods func(uid string) []string) {
	m.DeviceInfo.Reset()
	for _, c := range cp.Claims {
		if c.State != checkpoint.PrepareCompleted {
			continue
		}
		claimPods := pods(c.UID)
		if len(claimPods) == 0 {
			claimPods = []string{""}
		}
		for _, d := range c.Devices {
			var typ, migUUID, profile, giid string
			if p, ok := names.ParseDevice(d.Name); ok {
				typ = p.Type
			}
			if d.MIG != nil {
				migUUID, profile, giid = d.MIG.UUID, d.MIG.Profile, strconv.Itoa(d.MIG.GIID)
			}
			for _, pod := range claimPods {
				m.DeviceInfo.WithLabelValues(node, d.Name, typ, d.GPUUUID, migUUID, profile, giid, c.Namespace, c.Name, pod).Set(1)
			}
		}
	}
}

// setHealthTaints sets gpu_dra_health_taint to the taints now, by GPU UUID
// and by MIG device UUID (the health monitor's Taints).
func (m *Metrics) setHealthTaints(node string, gpuTaints, migTaints map[string][]resourceapi.DeviceTaint, parentOf func(migUUID string) string) {
	m.HealthTaints.Reset()
	for uuid, ts := range gpuTaints {
		for _, t := range ts {
			m.HealthTaints.WithLabelValues(node, uuid, "", t.Key, t.Value, string(t.Effect)).Set(1)
		}
	}
	for uuid, ts := range migTaints {
		for _, t := range ts {
			m.HealthTaints.WithLabelValues(node, parentOf(uuid), uuid, t.Key, t.Value, string(t.Effect)).Set(1)
		}
	}
}
