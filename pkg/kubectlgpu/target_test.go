package kubectlgpu

import (
	"reflect"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
)

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in      string
		want    Target
		wantErr string
	}{
		{in: "node-a", want: Target{Node: "node-a"}},
		{in: "127.0.0.1", want: Target{Node: "127.0.0.1"}},
		{in: "node-a/gpu-3", want: Target{Node: "node-a", GPU: 3, HasGPU: true}},
		{in: "node-a/gpu-30", want: Target{Node: "node-a", GPU: 30, HasGPU: true}},
		{in: "node-a/7", want: Target{Node: "node-a", GPU: 7, HasGPU: true}},
		{in: "", wantErr: "invalid target"},
		{in: "/gpu-3", wantErr: "invalid target"},
		{in: "node-a/", wantErr: "invalid GPU"},
		{in: "node-a/gpu-", wantErr: "invalid GPU"},
		{in: "node-a/gpu-x", wantErr: "invalid GPU"},
		{in: "node-a/gpu--1", wantErr: "invalid GPU"},
		{in: "node-a/gpu-03", wantErr: "invalid GPU"},
		{in: "node-a/gpu-3-mig-1g10gb-0", wantErr: "invalid GPU"},
		{in: "node-a/gpu-3/x", wantErr: "invalid GPU"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseTarget(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseTarget(%q) = %+v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				if code := exitCode(err); code != exitUsage {
					t.Errorf("exit code %d, want %d", code, exitUsage)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseTarget(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if back, _ := ParseTarget(got.String()); back != got {
				t.Errorf("String() %q does not parse back to %+v", got.String(), got)
			}
		})
	}
}

func TestGPUOfReadsAttributes(t *testing.T) {
	withAttrs := func(name string, attrs map[resourceapi.QualifiedName]resourceapi.DeviceAttribute) resourceapi.Device {
		return resourceapi.Device{Name: name, Attributes: attrs}
	}
	str := func(s string) resourceapi.DeviceAttribute { return resourceapi.DeviceAttribute{StringValue: &s} }
	num := func(n int64) resourceapi.DeviceAttribute { return resourceapi.DeviceAttribute{IntValue: &n} }
	tests := []struct {
		what   string
		device resourceapi.Device
		minor  int
		valid  bool
	}{
		{"whole GPU", gpuDevice(3), 3, true},
		{"GPU 30", gpuDevice(30), 30, true},
		{"MIG device", migDevice(3, "1g.10gb", 0), 3, true},
		{"MIG device of GPU 30", migDevice(30, "3g.40gb", 4), 30, true},
		{"shared GPU", withAttrs("gpu-3-shared", map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{"type": str("shared"), "minor": num(3)}), 3, true},
		{"MIG device says its parent, not a name", withAttrs("gpu-4-mig-1g10gb-0", map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{"type": str("mig"), "parentMinor": num(3)}), 3, true},
		{"no attributes", resourceapi.Device{Name: "gpu-3"}, 0, false},
		{"MIG device without parentMinor", withAttrs("gpu-3-mig-1g10gb-0", map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{"type": str("mig"), "minor": num(3)}), 0, false},
		{"unknown type", withAttrs("gpu-3", map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{"type": str("nic"), "minor": num(3)}), 0, false},
		{"negative minor", withAttrs("gpu-3", map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{"type": str("gpu"), "minor": num(-1)}), 0, false},
	}
	for _, tt := range tests {
		minor, ok := gpuOf(tt.device)
		if ok != tt.valid || (ok && minor != tt.minor) {
			t.Errorf("%s: gpuOf(%s) = %d, %v; want %d, %v", tt.what, tt.device.Name, minor, ok, tt.minor, tt.valid)
		}
	}
}

func TestResolve(t *testing.T) {
	slices := nodeSlices()
	// A device whose name only looks like GPU 3's must not count.
	slices[1].Spec.Devices = append(slices[1].Spec.Devices, resourceapi.Device{Name: "gpu-3x"})
	inv := NewInventory(slices)
	tests := []struct {
		target  string
		want    []string
		wantErr string
	}{
		{target: "node-a/gpu-3", want: []string{"gpu-3", "gpu-3-mig-1g10gb-0", "gpu-3-mig-1g10gbme-2"}},
		{target: "node-a/gpu-30", want: []string{"gpu-30", "gpu-30-mig-1g10gb-0", "gpu-30-mig-3g40gb-4"}},
		{target: "node-b", want: []string{"gpu-0", "gpu-0-mig-1g10gb-0"}},
		{target: "node-a/gpu-5", wantErr: `unknown GPU gpu-5 on node "node-a": it has gpu-3, gpu-4, gpu-30`},
		{target: "node-c", wantErr: `unknown node "node-c"`},
		{target: "node-c/gpu-0", wantErr: "nodes with GPUs: node-a, node-b"},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			target, err := ParseTarget(tt.target)
			if err != nil {
				t.Fatal(err)
			}
			got, err := inv.Resolve(target)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || exitCode(err) != exitUsage {
					t.Fatalf("Resolve = %v, %v; want usage error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Resolve = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestInventoryUsesLatestGeneration(t *testing.T) {
	old := slice("old", "node-a", gpuDevice(1))
	cur := slice("new", "node-a", gpuDevice(2))
	cur.Spec.Pool.Generation = 2
	other := slice("other", "node-a", gpuDevice(9))
	other.Spec.Driver = "example.com/other"
	inv := NewInventory([]resourceapi.ResourceSlice{old, cur, other})
	if got := inv.Nodes["node-a"].Minors(); !reflect.DeepEqual(got, []int{2}) {
		t.Fatalf("minors %v, want [2]", got)
	}
}
