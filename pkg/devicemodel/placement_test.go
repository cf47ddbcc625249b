package devicemodel

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
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
