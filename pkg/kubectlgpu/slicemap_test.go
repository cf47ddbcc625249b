package kubectlgpu

import (
	"context"
	"testing"
)

func TestBuildSliceMap(t *testing.T) {
	at := func(start int64) *int64 { return &start }
	alloc := []AllocationReport{{Namespace: "ns", Claim: "c"}}
	tests := []struct {
		name    string
		devices []DeviceReport
		row     string
		free    int
	}{
		{"empty GPU", []DeviceReport{{Name: "gpu-0", Type: "gpu"}}, "[........]", 8},
		{"whole GPU in use", []DeviceReport{{Name: "gpu-0", Type: "gpu", Allocations: alloc}}, "[AAAAAAAA]", 0},
		{"free MIG placements are not drawn", []DeviceReport{{Name: "gpu-0", Type: "gpu"},
			{Name: "gpu-0-mig-1g10gb-0", Type: "mig", PlacementStart: at(0), PlacementSize: 1}}, "[........]", 8},
		{"MIG devices in placement order, not name order", []DeviceReport{{Name: "gpu-0", Type: "gpu"},
			{Name: "gpu-0-mig-1g10gb-6", Type: "mig", PlacementStart: at(6), PlacementSize: 1, Allocations: alloc},
			{Name: "gpu-0-mig-3g40gb-0", Type: "mig", PlacementStart: at(0), PlacementSize: 4, Allocations: alloc}}, "[AAAA|..|B|.]", 3},
		{"neighbouring devices are told apart", []DeviceReport{{Name: "gpu-0", Type: "gpu"},
			{Name: "gpu-0-mig-1g10gb-0", Type: "mig", PlacementStart: at(0), PlacementSize: 1, Allocations: alloc},
			{Name: "gpu-0-mig-1g10gb-1", Type: "mig", PlacementStart: at(1), PlacementSize: 1, Allocations: alloc}}, "[A|B|......]", 6},
		{"a free pre-created instance holds its slices", []DeviceReport{
			{Name: "gpu-0-mig-7g80gb-0-static", Type: "mig", PlacementStart: at(0), PlacementSize: 8, PreCreated: true}}, "[AAAAAAAA]", 0},
		{"free slices of a tainted GPU", []DeviceReport{{Name: "gpu-0", Type: "gpu", Taints: []TaintReport{{Key: "k", Effect: "NoSchedule"}}},
			{Name: "gpu-0-mig-2g20gb-4", Type: "mig", PlacementStart: at(4), PlacementSize: 2, Allocations: alloc}}, "[xxxx|AA|xx]", 6},
		{"a None taint leaves slices free", []DeviceReport{{Name: "gpu-0", Type: "gpu", Taints: []TaintReport{{Key: "k", Effect: "None"}}}}, "[........]", 8},
		{"a placement before the first slice is not drawn", []DeviceReport{{Name: "gpu-0", Type: "gpu"},
			{Name: "gpu-0-mig-1g10gb-0", Type: "mig", PlacementStart: at(-1), PlacementSize: 1, Allocations: alloc}}, "[........]", 8},
		{"a placement past the last slice is not drawn", []DeviceReport{{Name: "gpu-0", Type: "gpu"},
			{Name: "gpu-0-mig-1g10gb-0", Type: "mig", PlacementStart: at(9), PlacementSize: 1, Allocations: alloc}}, "[........]", 8},
		{"a placement across the first slice draws its part", []DeviceReport{{Name: "gpu-0", Type: "gpu"},
			{Name: "gpu-0-mig-2g20gb-0", Type: "mig", PlacementStart: at(-1), PlacementSize: 2, Allocations: alloc}}, "[A|.......]", 7},
		{"shares hold the GPU", []DeviceReport{{Name: "gpu-0", Type: "gpu"}, {Name: "gpu-0-shared", Type: "shared", Allocations: alloc}}, "[AAAAAAAA]", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := buildSliceMap(GPUReport{Name: "gpu-0", Devices: tt.devices})
			if m.Row != tt.row || m.Free != tt.free {
				t.Errorf("row %s, %d free; want %s, %d free", m.Row, m.Free, tt.row, tt.free)
			}
		})
	}
}

func TestDescribeNeedsOneGPU(t *testing.T) {
	a, _, errOut := testApp(fakeClient(t, nodeSlices(), nil, nil, nil))
	if code := a.execute(context.Background(), []string{"describe", "node-a"}); code != exitUsage {
		t.Errorf("describe NODE: exit %d, want %d (%s)", code, exitUsage, errOut)
	}
	a, _, errOut = testApp(fakeClient(t, nodeSlices(), nil, nil, nil))
	if code := a.execute(context.Background(), []string{"describe", "node-a/gpu-5"}); code != exitUsage {
		t.Errorf("describe an unknown GPU: exit %d, want %d (%s)", code, exitUsage, errOut)
	}
}
