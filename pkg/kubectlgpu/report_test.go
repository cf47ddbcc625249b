package kubectlgpu

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// reportFixture: GPU 3 has a fatal XID taint in its slice; a maintenance
// rule selects GPU 30's MIG device; a node-wide rule selects all of node-b;
// a claim on gpu-3-mig-1g10gb-0 is held by a running pod.
func reportFixture() reportInput {
	slices := nodeSlices()
	xid := resourceapi.DeviceTaint{Key: "gpu.nvidia.com/xid", Value: "79", Effect: resourceapi.DeviceTaintEffectNoExecute, TimeAdded: &metav1.Time{Time: t0.Add(-5 * time.Minute)}}
	slices[0].Spec.Devices[0].Taints = []resourceapi.DeviceTaint{xid}
	rule30 := foreignRule("maint-gpu-30-mig", "node-a", "gpu-30-mig-1g10gb-0")
	rule30.Spec.Taint = resourceapi.DeviceTaint{Key: names.MaintenanceTaintKey, Value: "fan", Effect: resourceapi.DeviceTaintEffectNoSchedule, TimeAdded: &metav1.Time{Time: t0.Add(-2 * time.Hour)}}
	rule30.Status.Conditions = []metav1.Condition{{Type: resourceapi.DeviceTaintConditionEvictionInProgress, Message: "Eviction only happens for the NoExecute effect."}}
	ruleB := foreignRule("node-b-all", "node-b", "")
	noSelector := foreignRule("matches-nothing", "node-a", "")
	noSelector.Spec.DeviceSelector = nil
	otherDriver := foreignRule("other-driver", "node-a", "gpu-3")
	otherDriver.Spec.DeviceSelector.Driver = ptr("example.com/nic")
	return reportInput{
		slices: slices,
		claims: []resourceapi.ResourceClaim{
			claim("team", "train", "node-a", []string{"gpu-3-mig-1g10gb-0"}, "trainer:uid-1"),
			claim("team", "pending", "node-a", []string{"gpu-4"}),
			claim("team", "gone", "node-a", []string{"gpu-4"}, "old:uid-old"),
		},
		rules: []resourceapi.DeviceTaintRule{rule30, ruleB, noSelector, otherDriver},
		pods: []corev1.Pod{
			pod("team", "trainer", "uid-1", corev1.PodRunning),
			pod("team", "old", "uid-new", corev1.PodRunning), // same name, another pod
		},
	}
}

func TestBuildReport(t *testing.T) {
	r := buildReport(reportFixture())
	if r.APIVersion != reportAPIVersion || r.Kind != reportKind {
		t.Errorf("apiVersion %q kind %q", r.APIVersion, r.Kind)
	}
	var nodes []string
	for _, n := range r.Nodes {
		nodes = append(nodes, n.Name)
	}
	if !reflect.DeepEqual(nodes, []string{"node-a", "node-b"}) {
		t.Fatalf("nodes %v", nodes)
	}
	var gpus []string
	for _, g := range r.Nodes[0].GPUs {
		gpus = append(gpus, g.Name)
	}
	if !reflect.DeepEqual(gpus, []string{"gpu-3", "gpu-4", "gpu-30"}) {
		t.Fatalf("GPUs of node-a %v: want numeric order", gpus)
	}
	dev := func(node, name string) DeviceReport {
		t.Helper()
		for _, n := range r.Nodes {
			for _, g := range n.GPUs {
				for _, d := range g.Devices {
					if n.Name == node && d.Name == name {
						return d
					}
				}
			}
		}
		t.Fatalf("no device %s/%s", node, name)
		return DeviceReport{}
	}

	gpu3 := r.Nodes[0].GPUs[0]
	if gpu3.UUID != "GPU-0003" || gpu3.ProductName != "NVIDIA H100 80GB HBM3" || gpu3.Memory != "80Gi" || gpu3.Minor != 3 {
		t.Errorf("gpu-3 %+v", gpu3)
	}
	if d := dev("node-a", "gpu-3"); len(d.Taints) != 1 || d.Taints[0].Source != SourceSlice || d.Taints[0].Key != "gpu.nvidia.com/xid" || d.Taints[0].Value != "79" {
		t.Errorf("gpu-3 taints %+v", d.Taints)
	}
	// The slice taint of the GPU does not cover its MIG devices.
	mig := dev("node-a", "gpu-3-mig-1g10gb-0")
	if len(mig.Taints) != 0 || mig.Type != "mig" || mig.Profile != "1g.10gb" {
		t.Errorf("gpu-3-mig-1g10gb-0 %+v", mig)
	}
	wantAlloc := []AllocationReport{{Namespace: "team", Claim: "train", Request: "gpu", Pods: []PodReport{{Namespace: "team", Name: "trainer", Phase: "Running"}}}}
	if !reflect.DeepEqual(mig.Allocations, wantAlloc) {
		t.Errorf("allocations %+v, want %+v", mig.Allocations, wantAlloc)
	}
	// A pod with the claim's pod name but another UID is not the holder.
	gpu4 := dev("node-a", "gpu-4")
	wantAlloc = []AllocationReport{
		{Namespace: "team", Claim: "gone", Request: "gpu", Pods: []PodReport{{Namespace: "team", Name: "old"}}},
		{Namespace: "team", Claim: "pending", Request: "gpu"},
	}
	if !reflect.DeepEqual(gpu4.Allocations, wantAlloc) {
		t.Errorf("gpu-4 allocations %+v, want %+v", gpu4.Allocations, wantAlloc)
	}
	// The rule selects only the one MIG device of GPU 30.
	if d := dev("node-a", "gpu-30-mig-1g10gb-0"); len(d.Taints) != 1 || d.Taints[0].Source != SourceRule || d.Taints[0].Rule != "maint-gpu-30-mig" || d.Taints[0].Eviction == "" {
		t.Errorf("gpu-30-mig-1g10gb-0 taints %+v", d.Taints)
	}
	for _, name := range []string{"gpu-30", "gpu-30-mig-3g40gb-4", "gpu-4-mig-1g10gb-0"} {
		if d := dev("node-a", name); len(d.Taints) != 0 {
			t.Errorf("%s has taints %+v", name, d.Taints)
		}
	}
	// The node rule covers every device of node-b.
	for _, name := range []string{"gpu-0", "gpu-0-mig-1g10gb-0"} {
		if d := dev("node-b", name); len(d.Taints) != 1 || d.Taints[0].Rule != "node-b-all" {
			t.Errorf("node-b %s taints %+v", name, d.Taints)
		}
	}
}

func TestBuildReportTarget(t *testing.T) {
	in := reportFixture()
	in.target = &Target{Node: "node-a", GPU: 3, HasGPU: true}
	r := buildReport(in)
	if len(r.Nodes) != 1 || len(r.Nodes[0].GPUs) != 1 || r.Nodes[0].GPUs[0].Name != "gpu-3" || len(r.Nodes[0].GPUs[0].Devices) != 3 {
		t.Fatalf("report for node-a/gpu-3: %+v", r)
	}
}

func TestPrintReport(t *testing.T) {
	r := buildReport(reportFixture())
	tests := []struct {
		output          string
		want, wantNot   []string
		wantFirstColumn string
	}{
		{
			output: "",
			want: []string{
				"NODE    GPU     DEVICE",
				"gpu.nvidia.com/xid=79:NoExecute (slice, 5m)",
				"gpu.nvidia.com/maintenance=fan:NoSchedule (rule, 120m)",
				"team/train",
				"team/trainer",
				"gpu-3-mig-1g10gb-0",
			},
			// Free, untainted MIG placements are left out.
			wantNot: []string{"gpu-3-mig-1g10gbme-2", "gpu-30-mig-3g40gb-4", "UUID"},
		},
		{
			output: "wide",
			want:   []string{"UUID", "PRODUCT", "MEMORY", "GPU-0003", "NVIDIA H100 80GB HBM3", "gpu-3-mig-1g10gbme-2", "gpu-30-mig-3g40gb-4", "MIG 1g.10gb+me"},
		},
	}
	for _, tt := range tests {
		t.Run("output="+tt.output, func(t *testing.T) {
			var buf bytes.Buffer
			if err := printReport(&buf, r, tt.output, t0); err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(buf.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, buf.String())
				}
			}
			for _, w := range tt.wantNot {
				if strings.Contains(buf.String(), w) {
					t.Errorf("output has %q:\n%s", w, buf.String())
				}
			}
		})
	}
}

func TestPrintReportStructured(t *testing.T) {
	r := buildReport(reportFixture())
	for _, output := range []string{"json", "yaml"} {
		t.Run(output, func(t *testing.T) {
			var buf bytes.Buffer
			if err := printReport(&buf, r, output, t0); err != nil {
				t.Fatal(err)
			}
			data := buf.Bytes()
			if output == "yaml" {
				var err error
				if data, err = yaml.YAMLToJSON(data); err != nil {
					t.Fatal(err)
				}
			}
			var back Report
			if err := json.Unmarshal(data, &back); err != nil {
				t.Fatal(err)
			}
			// metav1.Time decodes into local time: compare encodings.
			again, _ := json.Marshal(back)
			orig, _ := json.Marshal(r)
			if !bytes.Equal(again, orig) {
				t.Errorf("%s does not round-trip:\n%s", output, buf.String())
			}
			// Field names scripts rely on.
			for _, key := range []string{`"apiVersion"`, `"nodes"`, `"gpus"`, `"devices"`, `"taints"`, `"source"`, `"allocations"`, `"claim"`, `"pods"`} {
				if !strings.Contains(string(data), key) {
					t.Errorf("%s lacks %s", output, key)
				}
			}
		})
	}
}

func TestLsCommand(t *testing.T) {
	in := reportFixture()
	c := fakeClient(t, in.slices, in.claims, in.rules, in.pods)
	a, out, _ := testApp(c)
	if code := a.execute(context.Background(), []string{"ls", "node-a/gpu-3", "-o", "json"}); code != exitOK {
		t.Fatalf("exit code %d", code)
	}
	var r Report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Nodes) != 1 || len(r.Nodes[0].GPUs) != 1 || r.Nodes[0].GPUs[0].Devices[1].Allocations[0].Pods[0].Phase != "Running" {
		t.Fatalf("report %+v", r)
	}
}

// TestPrintReportFoldsInheritedTaints: a GPU's taint repeated on each of
// its MIG devices is one line; a MIG device with a taint of its own, or in
// use, still has its line.
func TestPrintReportFoldsInheritedTaints(t *testing.T) {
	drain := TaintReport{Key: "gpu.nvidia.com/maintenance", Value: "fw", Effect: "NoExecute", Source: "rule"}
	xid := TaintReport{Key: "gpu.nvidia.com/xid", Value: "48", Effect: "NoExecute", Source: "slice"}
	r := Report{Nodes: []NodeReport{{Name: "n", GPUs: []GPUReport{{Name: "gpu-1", Devices: []DeviceReport{
		{Name: "gpu-1", Type: "gpu", Taints: []TaintReport{drain}},
		{Name: "gpu-1-mig-1g10gb-0", Type: "mig", Taints: []TaintReport{drain}},
		{Name: "gpu-1-mig-1g10gb-1", Type: "mig", Taints: []TaintReport{drain}},
		{Name: "gpu-1-mig-1g10gb-2", Type: "mig", Taints: []TaintReport{drain, xid}},
		{Name: "gpu-1-mig-1g10gb-3", Type: "mig", Taints: []TaintReport{drain}, Allocations: []AllocationReport{{Namespace: "ns", Claim: "c"}}},
	}}}}}}
	var buf bytes.Buffer
	if err := printReport(&buf, r, "", t0); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"[also on 3 MIG devices]", "gpu-1-mig-1g10gb-2", "gpu.nvidia.com/xid=48", "gpu-1-mig-1g10gb-3", "ns/c"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for _, notWant := range []string{"gpu-1-mig-1g10gb-0", "gpu-1-mig-1g10gb-1"} {
		if strings.Contains(out, notWant) {
			t.Errorf("output has %q:\n%s", notWant, out)
		}
	}
}

// TestPrintReportSharedDevice: a GPU in shares shows its shared device with
// every claim holding a share; the GPU's taint on it is folded like on MIG
// devices, and -o wide names it a shared GPU.
func TestPrintReportSharedDevice(t *testing.T) {
	drain := TaintReport{Key: "gpu.nvidia.com/maintenance", Value: "fw", Effect: "NoExecute", Source: "rule"}
	r := Report{Nodes: []NodeReport{{Name: "n", GPUs: []GPUReport{{Name: "gpu-2", ProductName: "NVIDIA H100 80GB HBM3", Devices: []DeviceReport{
		{Name: "gpu-2", Type: "gpu", Taints: []TaintReport{drain}},
		{Name: "gpu-2-shared", Type: "shared", Taints: []TaintReport{drain}, Allocations: []AllocationReport{{Namespace: "ns", Claim: "a"}, {Namespace: "ns", Claim: "b"}}},
	}}}}}}
	var buf bytes.Buffer
	if err := printReport(&buf, r, "", t0); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[also on its shared device]", "gpu-2-shared", "ns/a", "ns/b"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, buf.String())
		}
	}
	buf.Reset()
	if err := printReport(&buf, r, "wide", t0); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "shared NVIDIA H100 80GB HBM3") || strings.Contains(buf.String(), "MIG \t") {
		t.Errorf("wide output:\n%s", buf.String())
	}
}
