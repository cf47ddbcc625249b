package main

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

func TestGPUMinorOf(t *testing.T) {
	tests := []struct {
		name         string
		minor        int
		whole, valid bool
	}{
		{"gpu-3", 3, true, true},
		{"gpu-30", 30, true, true},
		{"gpu-3-mig-1g10gb-0", 3, false, true},
		{"gpu-3-mig-1g10gbme-2", 3, false, true},
		{"gpu-3-mig-1g10gb-0-static", 3, false, true},
		{"gpu-30-mig-3g40gb-4", 30, false, true},
		{"gpu-3-shared", 3, false, true},
		{"gpu-3-shared-x", 0, false, false},
		{"gpu-3x", 0, false, false},
		{"gpu-3-mig-", 0, false, false},
		{"gpu-3-other", 0, false, false},
		{"gpu-03", 0, false, false},
		{"nic-3", 0, false, false},
	}
	for _, tt := range tests {
		minor, whole, ok := gpuMinorOf(tt.name)
		if ok != tt.valid || (ok && (minor != tt.minor || whole != tt.whole)) {
			t.Errorf("gpuMinorOf(%q) = %d, %v, %v; want %d, %v, %v", tt.name, minor, whole, ok, tt.minor, tt.whole, tt.valid)
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
