package controller

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the controller's Prometheus counters.
type Metrics struct {
	// Reconciles counts reconciles by kind (domain, node, orphan) and
	// result (ok, error).
	Reconciles *prometheus.CounterVec
	// StatusWrites counts ComputeDomain status updates by result (ok,
	// conflict, error).
	StatusWrites *prometheus.CounterVec
	// NodePatches counts node label patches by result (ok, error).
	NodePatches *prometheus.CounterVec
	// Errors counts failed API calls by the action that failed.
	Errors *prometheus.CounterVec
}

// NewMetrics makes the counters and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "compute_domain_controller_reconciles_total",
			Help: "Reconciles of ComputeDomains, nodes and orphaned daemon objects, by kind and result.",
		}, []string{"kind", "result"}),
		StatusWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "compute_domain_controller_status_writes_total",
			Help: "ComputeDomain status updates, by result.",
		}, []string{"result"}),
		NodePatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "compute_domain_controller_node_label_patches_total",
			Help: "Node label patches, by result.",
		}, []string{"result"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "compute_domain_controller_errors_total",
			Help: "Failed API calls, by action.",
		}, []string{"action"}),
	}
	if reg != nil {
		reg.MustRegister(m.Reconciles, m.StatusWrites, m.NodePatches, m.Errors)
	}
	return m
}
