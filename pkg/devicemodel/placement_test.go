package devicemodel

import (
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// TestPackingOrderOnH100 pins the driver's placement policy on an H100:
// every profile from the highest start down.
func TestPackingOrderOnH100(t *testing.T) {
	inv := inventory(t, "dgxh100")
	want := map[string][]int{
		"1g.10gb": {6, 5, 4, 3, 2, 1, 0}, "1g.10gb+me": {6, 5, 4, 3, 2, 1, 0}, "1g.20gb": {6, 4, 2, 0},
		"2g.20gb": {4, 2, 0}, "3g.40gb": {4, 0}, "4g.40gb": {0}, "7g.80gb": {0},
	}
	g := &inv.GPUs[0]
	for i := range g.MIGProfiles {
		p := &g.MIGProfiles[i]
		var starts []int
		for _, pl := range PackingOrder(g, p) {
			starts = append(starts, pl.Start)
		}
		if !slices.Equal(starts, want[p.Name]) {
			t.Errorf("%s: starts %v, want %v", p.Name, starts, want[p.Name])
		}
	}
}

// TestBuildRefusesAnOrderThatIsNoPermutation: a placement order that drops,
// repeats or invents a placement would publish devices the hardware does
// not have, or the same device twice.
func TestBuildRefusesAnOrderThatIsNoPermutation(t *testing.T) {
	inv := inventory(t, "dgxh100")
	cases := map[string]PlacementOrder{
		"drops one": func(_ *gpu.GPU, p *gpu.MIGProfile) []gpu.Placement { return p.Placements[1:] },
		"repeats one": func(_ *gpu.GPU, p *gpu.MIGProfile) []gpu.Placement {
			return append(slices.Clone(p.Placements[1:]), p.Placements[len(p.Placements)-1])
		},
		"invents one": func(_ *gpu.GPU, p *gpu.MIGProfile) []gpu.Placement {
			out := slices.Clone(p.Placements)
			out[0].Start = 7
			return out
		},
	}
	for name, order := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Build(Input{Inventory: inv, PlacementOrder: order})
			if err == nil || !strings.Contains(err.Error(), "not a permutation") {
				t.Fatalf("Build: %v, want a refused placement order", err)
			}
		})
	}
	if _, err := Build(Input{Inventory: inv, PlacementOrder: lowestStartFirst}); err != nil {
		t.Fatalf("a permutation was refused: %v", err)
	}
}

// TestBuildRefusesABadLayout: a layout that drops, repeats or invents a
// device, or overfills a slice, would publish what the node does not have
// or slices the API rejects.
func TestBuildRefusesABadLayout(t *testing.T) {
	inv := inventory(t, "dgxh100")
	cases := []struct {
		name   string
		layout Layout
		want   string
	}{
		{"drops one", func(gpus []GPUDevices) [][]resourceapi.Device {
			out := GPUMajor(gpus)
			out[0] = out[0][1:]
			return out
		}, "in no slice"},
		{"repeats one", func(gpus []GPUDevices) [][]resourceapi.Device {
			out := GPUMajor(gpus)
			return append(out, out[0][:1])
		}, "placed twice"},
		{"invents one", func(gpus []GPUDevices) [][]resourceapi.Device {
			out := GPUMajor(gpus)
			return append(out, []resourceapi.Device{{Name: "gpu-99"}})
		}, "not one of the node's devices"},
		{"overfills a slice", func(gpus []GPUDevices) [][]resourceapi.Device {
			return [][]resourceapi.Device{slices.Concat(GPUMajor(gpus)...)}
		}, "devices, want 1 to 64"},
		{"an empty slice", func(gpus []GPUDevices) [][]resourceapi.Device {
			return append(GPUMajor(gpus), nil)
		}, "devices, want 1 to 64"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(Input{Inventory: inv, Layout: tc.layout})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Build: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// TestGPUMajorKeepsGPUsWhole: each GPU's devices sit in one slice, in PCI
// order, as many GPUs to a slice as fit, so a taint on one GPU rewrites one
// slice.
func TestGPUMajorKeepsGPUsWhole(t *testing.T) {
	dev := func(n int, prefix string) []resourceapi.Device {
		var out []resourceapi.Device
		for i := range n {
			out = append(out, resourceapi.Device{Name: fmt.Sprintf("%s-%d", prefix, i)})
		}
		return out
	}
	cases := []struct {
		name  string
		sizes []int
		want  []int // devices per slice
	}{
		{"two DGX H100 GPUs to a slice", []int{26, 26, 26, 26, 26}, []int{52, 52, 26}},
		{"a GPU that does not fit starts a slice", []int{40, 30, 30}, []int{40, 60}},
		{"a GPU over the limit is split", []int{70, 10}, []int{64, 16}},
		{"no devices", []int{0, 0}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var gpus []GPUDevices
			var want []string
			for i, n := range tc.sizes {
				d := dev(n, fmt.Sprintf("gpu-%d", i))
				gpus = append(gpus, GPUDevices{Devices: d})
				for _, x := range d {
					want = append(want, x.Name)
				}
			}
			out := GPUMajor(gpus)
			var got []int
			var names []string
			for _, s := range out {
				got = append(got, len(s))
				for _, x := range s {
					names = append(names, x.Name)
				}
			}
			if !slices.Equal(got, tc.want) || !slices.Equal(names, want) {
				t.Errorf("slices of %v devices, order %v; want %v in GPU order", got, names, tc.want)
			}
			if err := checkLayout(gpus, out); err != nil {
				t.Error(err)
			}
		})
	}
}

// gpuByGPU is GPUMajor's slices with every GPU's devices in the GPU's own
// order, as the driver laid them out before whole GPUs came first.
func gpuByGPU(gpus []GPUDevices) [][]resourceapi.Device {
	var out [][]resourceapi.Device
	var cur []resourceapi.Device
	for _, g := range gpus {
		if len(cur)+len(g.Devices) > MaxDevicesPerSlice {
			out, cur = append(out, cur), nil
		}
		cur = append(cur, g.Devices...)
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// TestWholeGPUsFirstInASliceChangesNoAllocation: putting a slice's whole
// GPUs first changes the allocator's work, never its choice. The same
// seeded stream of claims of every kind, with releases, gets the same
// devices as GPU by GPU.
func TestWholeGPUsFirstInASliceChangesNoAllocation(t *testing.T) {
	for _, model := range []string{"dgxh100", "mixed"} {
		t.Run(model, func(t *testing.T) {
			inv := inventory(t, model)
			first := newCluster(t, map[string]*Model{node: build(t, Input{Inventory: inv, SharedGPUs: true})})
			major := newCluster(t, map[string]*Model{node: build(t, Input{Inventory: inv, SharedGPUs: true, Layout: gpuByGPU})})
			var profiles []string
			for _, d := range major.devices[node] {
				if strAttr(d, "type") == "mig" {
					profiles = append(profiles, strAttr(d, "profile"))
				}
			}
			slices.Sort(profiles)
			profiles = slices.Compact(profiles)
			rng := rand.New(rand.NewSource(7))
			var liveFirst, liveMajor []*resourceapi.AllocationResult
			granted := 0
			for step := range 600 {
				if len(liveFirst) > 0 && rng.Intn(3) == 0 {
					i := rng.Intn(len(liveFirst))
					first.free(liveFirst[i])
					major.free(liveMajor[i])
					liveFirst = slices.Delete(liveFirst, i, i+1)
					liveMajor = slices.Delete(liveMajor, i, i+1)
					continue
				}
				var reqs []resourceapi.DeviceRequest
				switch rng.Intn(6) {
				case 0:
					reqs = []resourceapi.DeviceRequest{exactly("gpu", "gpu.nvidia.com", 1)}
				case 1:
					reqs = []resourceapi.DeviceRequest{share(fmt.Sprintf("%dGi", 1+rng.Intn(40)), "")}
				case 2:
					reqs = []resourceapi.DeviceRequest{{Name: "r", FirstAvailable: []resourceapi.DeviceSubRequest{
						{Name: "mig", DeviceClassName: "mig.nvidia.com", AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
							Selectors: selectors([]string{attr("profile") + `.startsWith("3g.")`})},
						{Name: "whole", DeviceClassName: "gpu.nvidia.com", AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1},
					}}}
				case 3:
					// Two requests in one claim: the search backtracks
					// across kinds.
					reqs = []resourceapi.DeviceRequest{
						exactly("gpu", "gpu.nvidia.com", 1),
						exactly("mig", "mig.nvidia.com", 1, fmt.Sprintf("%s == %q", attr("profile"), profiles[rng.Intn(len(profiles))])),
					}
				default:
					reqs = []resourceapi.DeviceRequest{exactly("mig", "mig.nvidia.com", 1, fmt.Sprintf("%s == %q", attr("profile"), profiles[rng.Intn(len(profiles))]))}
				}
				a, b := first.allocate(node, claim(reqs...)), major.allocate(node, claim(reqs...))
				if allocatedNames(a) != allocatedNames(b) {
					t.Fatalf("step %d: GPUMajor allocated %s, GPU by GPU %s", step, allocatedNames(a), allocatedNames(b))
				}
				if a == nil {
					continue
				}
				granted++
				liveFirst, liveMajor = append(liveFirst, a), append(liveMajor, b)
			}
			if granted < 100 {
				t.Fatalf("only %d claims granted: the stream does not exercise the allocator", granted)
			}
		})
	}
}

// TestGPUMajorPutsEachSlicesWholeGPUsFirst: on a DGX H100 with shared
// GPUs, each device slice holds two GPUs, their whole devices first, then
// the first GPU's other devices, then the second's.
func TestGPUMajorPutsEachSlicesWholeGPUsFirst(t *testing.T) {
	m := build(t, Input{Inventory: inventory(t, "dgxh100"), SharedGPUs: true})
	gpu := 0
	for _, s := range m.Slices {
		if len(s.Devices) == 0 {
			continue
		}
		perGPU := len(s.Devices) / 2 // whole, 25 MIG placements, shared
		if perGPU != 27 || len(s.Devices)%2 != 0 {
			t.Fatalf("slice of %d devices, want two GPUs' 27", len(s.Devices))
		}
		if s.Devices[0].Name != names.GPUDevice(gpu) || s.Devices[1].Name != names.GPUDevice(gpu+1) {
			t.Errorf("slice starts %s, %s; want the whole GPUs %s, %s", s.Devices[0].Name, s.Devices[1].Name, names.GPUDevice(gpu), names.GPUDevice(gpu+1))
		}
		for i, d := range s.Devices[2:] {
			owner := gpu
			if i >= perGPU-1 {
				owner = gpu + 1
			}
			if k := m.Devices[d.Name]; k.Kind == KindGPU || k.GPU.Minor != owner {
				t.Errorf("device %d of the slice is %s, want one of GPU %d's other devices", i+2, d.Name, owner)
			}
		}
		gpu += 2
	}
	if gpu != 8 {
		t.Fatalf("slices held %d GPUs, want 8", gpu)
	}
}
