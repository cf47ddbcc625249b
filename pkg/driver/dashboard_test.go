package driver

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
)

// dashboards are the Grafana dashboards the chart ships.
const dashboards = "../../deployments/helm/gpu-dra-driver/dashboards"

// targetLabels are added by the scrape (the node label by relabeling, see
// docs/metrics.md) or by PromQL itself.
var targetLabels = map[string]bool{"node": true, "instance": true, "job": true, "le": true}

// exportedMetrics returns every metric the plugin registers with its
// labels, each having been used once, with the series names a histogram
// exposes.
func exportedMetrics(t *testing.T) map[string]map[string]bool {
	t.Helper()
	m := NewMetrics()
	m.observe("prepare", time.Now(), nil)
	cp := checkpoint.New("boot")
	cp.Claims["uid"] = &checkpoint.Claim{UID: "uid", Namespace: "ns", Name: "c", State: checkpoint.PrepareCompleted,
		Devices: []checkpoint.Device{migDevice}}
	m.setDeviceInfo("node-1", cp, func(string) []string { return []string{"pod"} })
	m.setHealthTaints("node-1", map[string][]resourceapi.DeviceTaint{"GPU-0": {{Key: "k", Effect: resourceapi.DeviceTaintEffectNoSchedule}}}, nil, nil)
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]bool{}
	for _, f := range families {
		labels := map[string]bool{}
		for _, metric := range f.GetMetric() {
			for _, l := range metric.GetLabel() {
				labels[l.GetName()] = true
			}
		}
		out[f.GetName()] = labels
		if f.GetType().String() == "HISTOGRAM" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				out[f.GetName()+suffix] = labels
			}
		}
	}
	return out
}

// queries returns every PromQL expression of a dashboard: panel targets
// (rows' panels included) and template variable queries.
func queries(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []string
	var walk func(v any, key string)
	walk = func(v any, key string) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				walk(c, k)
			}
		case []any:
			for _, c := range v {
				walk(c, key)
			}
		case string:
			if key == "expr" || key == "definition" || (key == "query" && strings.Contains(v, "(")) {
				out = append(out, v)
			}
		}
	}
	walk(doc, "")
	return out
}

var (
	metricName = regexp.MustCompile(`\bgpu_dra_[a-z_]+\b`)
	// byLabels are the label lists of by (...) and without (...).
	byLabels = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	// matcherLabels are the names in {name="…", name=~"…"}.
	matcherLabels = regexp.MustCompile(`[{,]\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	// labelValues is label_values(metric, label).
	labelValues = regexp.MustCompile(`label_values\(\s*[a-z_]+\s*,\s*([a-z_]+)\s*\)`)
)

// TestDashboardQueriesNameExportedMetrics fails when a dashboard query
// names a metric, or groups or filters by a label, that the plugin does not
// export: a panel that would stay empty.
func TestDashboardQueriesNameExportedMetrics(t *testing.T) {
	exported := exportedMetrics(t)
	files, err := filepath.Glob(filepath.Join(dashboards, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in %s: %v", dashboards, err)
	}
	for _, file := range files {
		qs := queries(t, file)
		if len(qs) == 0 {
			t.Fatalf("%s: no queries found", file)
		}
		for _, q := range qs {
			used := metricName.FindAllString(q, -1)
			if len(used) == 0 {
				t.Errorf("%s: query %q names none of the plugin's metrics", file, q)
			}
			labels := map[string]bool{}
			for _, name := range used {
				ls, ok := exported[name]
				if !ok {
					t.Errorf("%s: query %q names %s, which the plugin does not export", file, q, name)
				}
				for l := range ls {
					labels[l] = true
				}
			}
			var names []string
			for _, m := range byLabels.FindAllStringSubmatch(q, -1) {
				names = append(names, strings.Split(m[1], ",")...)
			}
			for _, m := range matcherLabels.FindAllStringSubmatch(q, -1) {
				names = append(names, m[1])
			}
			for _, m := range labelValues.FindAllStringSubmatch(q, -1) {
				names = append(names, m[1])
			}
			for _, l := range names {
				if l = strings.TrimSpace(l); l != "" && !labels[l] && !targetLabels[l] {
					t.Errorf("%s: query %q uses label %q, which none of %v has", file, q, l, used)
				}
			}
		}
	}
}
