package kubectlgpu

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
)

func TestBuildSliceMap(t *testing.T) {
	at := func(start int64) *int64 { return &start }
	alloc := []AllocationReport{{Namespace: "ns", Claim: "c"}}
	tests := []struct {
		name    string
		devices []DeviceReport
		row     string
		free    int
		// slices is the GPU's memory slices; 0 is a GPU without
		// memory-slice counters, drawn as eight.
		slices int
	}{
		{"empty GPU", []DeviceReport{{Name: "gpu-0", Type: "gpu"}}, "[........]", 8, 0},
		{"whole GPU in use", []DeviceReport{{Name: "gpu-0", Type: "gpu", Allocations: alloc}}, "[AAAAAAAA]", 0, 0},
		{"free MIG placements are not drawn", []DeviceReport{{Name: "gpu-0", Type: "gpu"},
			{Name: "gpu-0-mig-1g10gb-0", Type: "mig", PlacementStart: at(0), PlacementSize: 1}}, "[........]", 8, 0},
		{"MIG devices in placement order, not name order", []DeviceReport{{Name: "gpu-0", Type: "gpu"},
			{Name: "gpu-0-mig-1g10gb-6", Type: "mig", PlacementStart: at(6), PlacementSize: 1, Allocations: alloc},
			{Name: "gpu-0-mig-3g40gb-0", Type: "mig", PlacementStart: at(0), PlacementSize: 4, Allocations: alloc}}, "[AAAA|..|B|.]", 3, 0},
		{"neighbouring devices are told apart", []DeviceReport{{Name: "gpu-0", Type: "gpu"},
			{Name: "gpu-0-mig-1g10gb-0", Type: "mig", PlacementStart: at(0), PlacementSize: 1, Allocations: alloc},
			{Name: "gpu-0-mig-1g10gb-1", Type: "mig", PlacementStart: at(1), PlacementSize: 1, Allocations: alloc}}, "[A|B|......]", 6, 0},
		{"a free pre-created instance holds its slices", []DeviceReport{
			{Name: "gpu-0-mig-7g80gb-0-static", Type: "mig", PlacementStart: at(0), PlacementSize: 8, PreCreated: true}}, "[AAAAAAAA]", 0, 0},
		{"free slices of a tainted GPU", []DeviceReport{{Name: "gpu-0", Type: "gpu", Taints: []TaintReport{{Key: "k", Effect: "NoSchedule"}}},
			{Name: "gpu-0-mig-2g20gb-4", Type: "mig", PlacementStart: at(4), PlacementSize: 2, Allocations: alloc}}, "[xxxx|AA|xx]", 6, 0},
		{"a None taint leaves slices free", []DeviceReport{{Name: "gpu-0", Type: "gpu", Taints: []TaintReport{{Key: "k", Effect: "None"}}}}, "[........]", 8, 0},
		{"a placement before the first slice is not drawn", []DeviceReport{{Name: "gpu-0", Type: "gpu"},
			{Name: "gpu-0-mig-1g10gb-0", Type: "mig", PlacementStart: at(-1), PlacementSize: 1, Allocations: alloc}}, "[........]", 8, 0},
		{"a placement past the last slice is not drawn", []DeviceReport{{Name: "gpu-0", Type: "gpu"},
			{Name: "gpu-0-mig-1g10gb-0", Type: "mig", PlacementStart: at(9), PlacementSize: 1, Allocations: alloc}}, "[........]", 8, 0},
		{"a placement across the first slice draws its part", []DeviceReport{{Name: "gpu-0", Type: "gpu"},
			{Name: "gpu-0-mig-2g20gb-0", Type: "mig", PlacementStart: at(-1), PlacementSize: 2, Allocations: alloc}}, "[A|.......]", 7, 0},
		{"shares hold the GPU", []DeviceReport{{Name: "gpu-0", Type: "gpu"}, {Name: "gpu-0-shared", Type: "shared", Allocations: alloc}}, "[AAAAAAAA]", 0, 0},
		{"an H100's eight slices", []DeviceReport{{Name: "gpu-0", Type: "gpu"}}, "[........]", 8, 8},
		{"an empty A30: four slices", []DeviceReport{{Name: "gpu-0-mig-1g6gb-0", Type: "mig", PlacementStart: at(0), PlacementSize: 1}}, "[....]", 4, 4},
		{"an A30's 2g and 1g", []DeviceReport{
			{Name: "gpu-0-mig-1g6gb-3", Type: "mig", PlacementStart: at(3), PlacementSize: 1, Allocations: alloc},
			{Name: "gpu-0-mig-2g12gb-0", Type: "mig", PlacementStart: at(0), PlacementSize: 2, Allocations: alloc}}, "[AA|.|B]", 1, 4},
		{"a placement past an A30's last slice is not drawn", []DeviceReport{
			{Name: "gpu-0-mig-1g6gb-4", Type: "mig", PlacementStart: at(4), PlacementSize: 1, Allocations: alloc}}, "[....]", 4, 4},
		{"an A30 shared whole", []DeviceReport{{Name: "gpu-0", Type: "gpu"}, {Name: "gpu-0-shared", Type: "shared", Allocations: alloc}}, "[AAAA]", 0, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := buildSliceMap(GPUReport{Name: "gpu-0", Devices: tt.devices, MemorySlices: tt.slices})
			if m.Row != tt.row || m.Free != tt.free {
				t.Errorf("row %s, %d free; want %s, %d free", m.Row, m.Free, tt.row, tt.free)
			}
		})
	}
}

// TestSliceMapsFromPublishedSlices: kubectl gpu reads a GPU's memory
// slices from its counter set, four on an A30 and eight on an H100, and
// says in the header how the report's GPUs number them.
func TestSliceMapsFromPublishedSlices(t *testing.T) {
	cases := []struct {
		model  string
		claims map[string][]string // claim name -> devices on node-a
		header string
		rows   []string
	}{
		{"a30", map[string][]string{"small": {"gpu-0-mig-1g6gb-3"}, "pair": {"gpu-0-mig-2g12gb-0"}, "big": {"gpu-1-mig-4g24gb-0"}},
			"MEMORY SLICES (0-3;",
			[]string{"node-a/gpu-0  [AA|.|B]  1 of 4 slices free", "node-a/gpu-1  [AAAA]  0 of 4 slices free", "node-a/gpu-2  [....]  4 of 4 slices free"}},
		{"dgxh100", map[string][]string{"small": {"gpu-0-mig-1g10gb-6"}, "whole": {"gpu-1"}},
			"MEMORY SLICES (0-7;",
			[]string{"node-a/gpu-0  [......|A|.]  7 of 8 slices free", "node-a/gpu-1  [AAAAAAAA]  0 of 8 slices free"}},
	}
	for _, tc := range cases {
		t.Run(tc.model, func(t *testing.T) {
			n, err := nvmlnode.Open(nvmlnode.Options{Simulate: tc.model})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			inv, err := n.Inventory(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if tc.model == "a30" {
				// Ampere offers MIG devices only in MIG mode.
				for i := range inv.GPUs {
					inv.GPUs[i].MIGEnabled = true
				}
			}
			m, err := devicemodel.Build(devicemodel.Input{Inventory: inv})
			if err != nil {
				t.Fatal(err)
			}
			var claims []resourceapi.ResourceClaim
			for name, devices := range tc.claims {
				claims = append(claims, claim("ns", name, "node-a", devices))
			}
			r := buildReport(reportInput{slices: m.ResourceSlices("node-a"), claims: claims})
			var out bytes.Buffer
			if err := writeSliceMaps(&out, r, time.Unix(0, 0)); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out.String(), tc.header) {
				t.Errorf("no %q in:\n%s", tc.header, out.String())
			}
			for _, row := range tc.rows {
				if !strings.Contains(out.String(), row+"\n") {
					t.Errorf("no %q in:\n%s", row, out.String())
				}
			}
		})
	}
}

func TestSliceRangesOfMixedGPUs(t *testing.T) {
	r := Report{Nodes: []NodeReport{{GPUs: []GPUReport{{MemorySlices: 8}, {MemorySlices: 4}}}}}
	if got := sliceRanges(r); got != "0-3, 0-7" {
		t.Errorf("sliceRanges = %q, want %q", got, "0-3, 0-7")
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
