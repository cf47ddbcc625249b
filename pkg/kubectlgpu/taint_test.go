package kubectlgpu

import (
	"context"
	"reflect"
	"sort"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

func TestRulesFor(t *testing.T) {
	longNode := strings.Repeat("n", 70) + ".example.com"
	tests := []struct {
		name        string
		target      Target
		wantDevices []string // per-rule device selectors; nil entry for none
	}{
		{
			name:        "node",
			target:      Target{Node: "node-a"},
			wantDevices: []string{""},
		},
		{
			name:        "GPU 3 covers its MIG devices, not GPU 30's",
			target:      Target{Node: "node-a", GPU: 3, HasGPU: true},
			wantDevices: []string{"gpu-3", "gpu-3-mig-1g10gb-0", "gpu-3-mig-1g10gbme-2"},
		},
		{
			name:        "GPU 30",
			target:      Target{Node: "node-a", GPU: 30, HasGPU: true},
			wantDevices: []string{"gpu-30", "gpu-30-mig-1g10gb-0", "gpu-30-mig-3g40gb-4"},
		},
		{
			name:        "long node name",
			target:      Target{Node: longNode, GPU: 0, HasGPU: true},
			wantDevices: []string{"gpu-0"},
		},
	}
	slices := nodeSlices()
	slices = append(slices, slice("long", longNode, gpuDevice(0)))
	inv := NewInventory(slices)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			devices, err := inv.Resolve(tt.target)
			if err != nil {
				t.Fatal(err)
			}
			rules := rulesFor(tt.target, devices, resourceapi.DeviceTaintEffectNoExecute, "fan-swap")
			var got []string
			seen := map[string]bool{}
			for _, r := range rules {
				sel := r.Spec.DeviceSelector
				if sel == nil || sel.Driver == nil || *sel.Driver != names.DriverName || sel.Pool == nil || *sel.Pool != tt.target.Node {
					t.Fatalf("rule %s: selector %+v, want driver %s and pool %s", r.Name, sel, names.DriverName, tt.target.Node)
				}
				dev := ""
				if sel.Device != nil {
					dev = *sel.Device
				}
				got = append(got, dev)
				if errs := validation.IsDNS1123Subdomain(r.Name); len(errs) > 0 {
					t.Errorf("rule name %q: %v", r.Name, errs)
				}
				if seen[r.Name] {
					t.Errorf("duplicate rule name %q", r.Name)
				}
				seen[r.Name] = true
				for k, v := range r.Labels {
					if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
						t.Errorf("rule %s label %s=%q: %v", r.Name, k, v, errs)
					}
				}
				if r.Labels[labelManagedBy] != managedByValue || r.Labels[names.TaintRuleNodeLabel] != nodeLabelValue(tt.target.Node) {
					t.Errorf("rule %s labels %v", r.Name, r.Labels)
				}
				if wantGPU := ""; tt.target.HasGPU {
					wantGPU = names.GPUDevice(tt.target.GPU)
					if r.Labels[names.TaintRuleGPULabel] != wantGPU {
						t.Errorf("rule %s: label %s=%q, want %q", r.Name, names.TaintRuleGPULabel, r.Labels[names.TaintRuleGPULabel], wantGPU)
					}
				} else if _, ok := r.Labels[names.TaintRuleGPULabel]; ok {
					t.Errorf("node rule %s has label %s", r.Name, names.TaintRuleGPULabel)
				}
				if r.Annotations[names.TaintRuleNodeAnnotation] != tt.target.Node {
					t.Errorf("rule %s annotations %v", r.Name, r.Annotations)
				}
				want := resourceapi.DeviceTaint{Key: names.MaintenanceTaintKey, Value: "fan-swap", Effect: resourceapi.DeviceTaintEffectNoExecute}
				if !reflect.DeepEqual(r.Spec.Taint, want) {
					t.Errorf("rule %s taint %+v, want %+v", r.Name, r.Spec.Taint, want)
				}
			}
			if !reflect.DeepEqual(got, tt.wantDevices) {
				t.Fatalf("devices %v, want %v", got, tt.wantDevices)
			}
			// Deterministic: computing again gives the same rules.
			if again := rulesFor(tt.target, devices, resourceapi.DeviceTaintEffectNoExecute, "fan-swap"); !reflect.DeepEqual(again, rules) {
				t.Errorf("rulesFor is not deterministic")
			}
		})
	}
}

func TestRuleNamesDoNotCollide(t *testing.T) {
	a := strings.Repeat("a", 240) + "-1"
	b := strings.Repeat("a", 240) + "-2"
	if ruleName(a, "gpu-0") == ruleName(b, "gpu-0") || nodeLabelValue(a) == nodeLabelValue(b) {
		t.Fatalf("long node names collide: %s, %s", ruleName(a, "gpu-0"), nodeLabelValue(a))
	}
	if got := ruleName("127.0.0.1", "gpu-3"); got != "gpu-maintenance-127.0.0.1-gpu-3" {
		t.Errorf("ruleName = %q", got)
	}
	if got := ruleName("node-a", ""); got != "gpu-maintenance-node-a-all" {
		t.Errorf("ruleName = %q", got)
	}
}

func TestValidateReasonAndEffect(t *testing.T) {
	for _, ok := range []string{"drain", "fan-swap", "RMA.1234", strings.Repeat("x", 63)} {
		if err := validateReason(ok); err != nil {
			t.Errorf("validateReason(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{strings.Repeat("x", 64), "fan swap", "-x", "a/b"} {
		err := validateReason(bad)
		if err == nil || !strings.Contains(err.Error(), "--reason") || exitCode(err) != exitUsage {
			t.Errorf("validateReason(%q) = %v, want a usage error naming --reason", bad, err)
		}
	}
	if _, err := parseEffect("PreferNoSchedule"); err == nil || exitCode(err) != exitUsage {
		t.Errorf("parseEffect(PreferNoSchedule) = %v", err)
	}
	if e, err := parseEffect("NoExecute"); err != nil || e != resourceapi.DeviceTaintEffectNoExecute {
		t.Errorf("parseEffect(NoExecute) = %v, %v", e, err)
	}
}

func TestTaintIsIdempotent(t *testing.T) {
	ctx := context.Background()
	c := fakeClient(t, nodeSlices(), nil, nil, nil)
	a, out, _ := testApp(c)
	target := Target{Node: "node-a", GPU: 3, HasGPU: true}

	if err := a.taint(ctx, c, target, resourceapi.DeviceTaintEffectNoSchedule, "fan"); err != nil {
		t.Fatal(err)
	}
	want := []string{"gpu-maintenance-node-a-gpu-3", "gpu-maintenance-node-a-gpu-3-mig-1g10gb-0", "gpu-maintenance-node-a-gpu-3-mig-1g10gbme-2"}
	if got := ruleNames(t, c); !reflect.DeepEqual(got, want) {
		t.Fatalf("rules %v, want %v", got, want)
	}
	if err := a.taint(ctx, c, target, resourceapi.DeviceTaintEffectNoSchedule, "fan"); err != nil {
		t.Fatal(err)
	}
	if err := a.taint(ctx, c, target, resourceapi.DeviceTaintEffectNoExecute, "fan"); err != nil {
		t.Fatal(err)
	}
	if got := ruleNames(t, c); !reflect.DeepEqual(got, want) {
		t.Fatalf("after re-running: rules %v, want %v", got, want)
	}
	r, err := c.ResourceV1().DeviceTaintRules().Get(ctx, want[1], metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Spec.Taint.Effect != resourceapi.DeviceTaintEffectNoExecute {
		t.Errorf("effect %s after update", r.Spec.Taint.Effect)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	for i, wantLine := range []string{"3 DeviceTaintRules created, 0 updated, 0 unchanged", "0 DeviceTaintRules created, 0 updated, 3 unchanged", "0 DeviceTaintRules created, 3 updated, 0 unchanged"} {
		if i >= len(lines) || !strings.Contains(lines[i], wantLine) {
			t.Errorf("output line %d: want %q in:\n%s", i, wantLine, out)
		}
	}
}

func TestTaintRefusesForeignRuleWithOurName(t *testing.T) {
	foreign := foreignRule("gpu-maintenance-node-a-gpu-4", "node-a", "gpu-4")
	c := fakeClient(t, nodeSlices(), nil, []resourceapi.DeviceTaintRule{foreign}, nil)
	a, _, _ := testApp(c)
	err := a.taint(context.Background(), c, Target{Node: "node-a", GPU: 4, HasGPU: true}, resourceapi.DeviceTaintEffectNoSchedule, "x")
	if err == nil || !strings.Contains(err.Error(), "not managed by kubectl-gpu") {
		t.Fatalf("err = %v", err)
	}
}

func TestUntaintDeletesOnlyOurs(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name       string
		target     Target
		wantLeft   []string
		wantOutput string
	}{
		{
			name:   "GPU 3",
			target: Target{Node: "node-a", GPU: 3, HasGPU: true},
			wantLeft: []string{
				"gpu-maintenance-node-a-all", "gpu-maintenance-node-a-gpu-30", "gpu-maintenance-node-a-gpu-30-mig-1g10gb-0",
				"gpu-maintenance-node-a-gpu-30-mig-3g40gb-4", "gpu-maintenance-node-b-gpu-0", "gpu-maintenance-node-b-gpu-0-mig-1g10gb-0",
				"other-node-a", "other-node-a-gpu-3",
			},
			wantOutput: "3 DeviceTaintRules deleted",
		},
		{
			name:   "node",
			target: Target{Node: "node-a"},
			wantLeft: []string{
				"gpu-maintenance-node-b-gpu-0", "gpu-maintenance-node-b-gpu-0-mig-1g10gb-0", "other-node-a", "other-node-a-gpu-3",
			},
			wantOutput: "7 DeviceTaintRules deleted",
		},
		{
			name:       "nothing to delete",
			target:     Target{Node: "node-a", GPU: 4, HasGPU: true},
			wantOutput: "no DeviceTaintRules of kubectl gpu to delete",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := NewInventory(nodeSlices())
			var rules []resourceapi.DeviceTaintRule
			for _, target := range []Target{{Node: "node-a", GPU: 3, HasGPU: true}, {Node: "node-a", GPU: 30, HasGPU: true}, {Node: "node-a"}, {Node: "node-b", GPU: 0, HasGPU: true}} {
				devices, err := inv.Resolve(target)
				if err != nil {
					t.Fatal(err)
				}
				rules = append(rules, rulesFor(target, devices, resourceapi.DeviceTaintEffectNoSchedule, "x")...)
			}
			rules = append(rules, foreignRule("other-node-a", "node-a", ""), foreignRule("other-node-a-gpu-3", "node-a", "gpu-3"))
			c := fakeClient(t, nodeSlices(), nil, rules, nil)
			a, out, _ := testApp(c)
			if err := a.untaint(ctx, c, tt.target); err != nil {
				t.Fatal(err)
			}
			all := map[string]bool{}
			for _, r := range rules {
				all[r.Name] = true
			}
			if tt.wantLeft == nil {
				for n := range all {
					tt.wantLeft = append(tt.wantLeft, n)
				}
				sort.Strings(tt.wantLeft)
			}
			if got := ruleNames(t, c); !reflect.DeepEqual(got, tt.wantLeft) {
				t.Errorf("left %v\nwant %v", got, tt.wantLeft)
			}
			if !strings.Contains(out.String(), tt.wantOutput) {
				t.Errorf("output %q, want %q", out, tt.wantOutput)
			}
		})
	}
}

// TestTaintCoversSharedDevice: the taint of a GPU covers its shared device,
// so a drain evicts the pods holding shares of it too; ls lists it under
// its GPU.
func TestTaintCoversSharedDevice(t *testing.T) {
	ctx := context.Background()
	shared := gpuDevice(3)
	shared.Name = "gpu-3-shared"
	shared.Attributes["type"] = resourceapi.DeviceAttribute{StringValue: ptr("shared")}
	c := fakeClient(t, []resourceapi.ResourceSlice{slice("a-0", "node-a", gpuDevice(3), migDevice(3, "1g.10gb", 0), shared, gpuDevice(4))}, nil, nil, nil)
	a, _, _ := testApp(c)
	if err := a.taint(ctx, c, Target{Node: "node-a", GPU: 3, HasGPU: true}, resourceapi.DeviceTaintEffectNoExecute, "repair"); err != nil {
		t.Fatal(err)
	}
	want := []string{"gpu-maintenance-node-a-gpu-3", "gpu-maintenance-node-a-gpu-3-mig-1g10gb-0", "gpu-maintenance-node-a-gpu-3-shared"}
	if got := ruleNames(t, c); !reflect.DeepEqual(got, want) {
		t.Fatalf("rules %v, want %v", got, want)
	}
	inv := NewInventory([]resourceapi.ResourceSlice{slice("a-0", "node-a", gpuDevice(3), shared)})
	if devs := inv.Nodes["node-a"].GPUs[3].Devices; len(devs) != 2 || devs[1].Name != "gpu-3-shared" {
		t.Errorf("GPU 3's devices: %+v", devs)
	}
}
