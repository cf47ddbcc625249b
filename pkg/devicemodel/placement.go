package devicemodel

import (
	"fmt"
	"slices"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// PlacementOrder returns the placements of MIG profile p on GPU g in the
// order the scheduler's allocator should try them. The allocator takes the
// first free device in publish order, so this order is the MIG placement
// policy. It must return each of p's placements exactly once.
type PlacementOrder func(g *gpu.GPU, p *gpu.MIGProfile) []gpu.Placement

// PackingOrder is the driver's placement policy: every profile from the
// high end of the GPU, highest start first. Small instances fill the upper
// half (slices 4-7) before the lower one, so a 4g (only at 0) and a 3g at 0
// keep their room; a 3g goes to 4 first for the same reason; and since a
// node's GPUs are published one after the other, each profile fills a
// partially used GPU before it touches an empty one, which keeps empty GPUs
// for 7g, whole GPUs and shares. BenchmarkPacking compares it with
// pick-first (lowest start first, NVML's own choice) on the scheduler's
// allocator; docs/device-model.md has the figures and the orders that did
// not do better.
func PackingOrder(g *gpu.GPU, p *gpu.MIGProfile) []gpu.Placement {
	out := slices.Clone(p.Placements)
	slices.SortFunc(out, func(a, b gpu.Placement) int { return b.Start - a.Start })
	return out
}

// samePlacements reports whether a holds each placement of b exactly once.
func samePlacements(a, b []gpu.Placement) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[gpu.Placement]bool{}
	for _, pl := range a {
		if seen[pl] || !slices.Contains(b, pl) {
			return false
		}
		seen[pl] = true
	}
	return true
}

// GPUDevices is one GPU's devices as the model publishes them: the whole
// GPU, pre-created instances, each profile's placements in PlacementOrder
// and the shared device, with Info[i] what Devices[i] stands for.
type GPUDevices struct {
	Devices []resourceapi.Device
	Info    []*Device
}

// Layout arranges a node's devices, given GPU by GPU in PCI order, into
// device slices. The allocator tries slices in name order (the model's
// order) and devices in slice order and takes the first that fits, so for a
// claim of one MIG profile the layout decides on which GPU it lands, as
// PlacementOrder decides where on the GPU. It must return each device
// exactly once, in slices of at most MaxDevicesPerSlice devices; Build
// refuses a layout that does not.
type Layout func(gpus []GPUDevices) [][]resourceapi.Device

// GPUMajor is the driver's layout: GPUs in PCI order, each GPU's devices
// together in one slice with as many whole GPUs as fit the API's limit (two
// DGX H100 GPUs, 26 devices each, per slice). Every profile thus fills a
// partially used GPU before an empty one, and a change on one GPU (a taint,
// a new pre-created instance) rewrites one slice. BenchmarkPacking compares
// it with node-wide orders that interleave GPUs (docs/device-model.md).
//
// Within a slice the whole GPUs come first, then each GPU's other devices.
// That allocates exactly what GPU by GPU would: every device class selects
// one type of device, so a request matches only whole GPUs, or MIG devices,
// or shared GPUs, whose orders among themselves do not change. It saves the
// allocator work: it evaluates the class's selector on every device it
// walks until one fits, and a whole-GPU request on a node whose first GPU
// is busy no longer walks that GPU's 25 MIG devices to reach the second
// (BenchmarkAllocator, docs/benchmarks.md).
func GPUMajor(gpus []GPUDevices) [][]resourceapi.Device {
	var out [][]resourceapi.Device
	var whole, rest []resourceapi.Device
	flush := func() {
		if len(whole)+len(rest) > 0 {
			out = append(out, append(whole, rest...))
			whole, rest = nil, nil
		}
	}
	for _, g := range gpus {
		devs := g.Devices
		if len(whole)+len(rest)+len(devs) > MaxDevicesPerSlice {
			flush()
		}
		skip := 0
		for len(devs) > MaxDevicesPerSlice {
			out = append(out, devs[:MaxDevicesPerSlice])
			devs = devs[MaxDevicesPerSlice:]
			skip += MaxDevicesPerSlice
		}
		for i, d := range devs {
			if j := skip + i; j < len(g.Info) && g.Info[j] != nil && g.Info[j].Kind == KindGPU {
				whole = append(whole, d)
			} else {
				rest = append(rest, d)
			}
		}
	}
	flush()
	return out
}

// checkLayout reports why the slices a layout made are not the devices of
// gpus, each once, in slices the API accepts.
func checkLayout(gpus []GPUDevices, out [][]resourceapi.Device) error {
	want := map[string]bool{}
	for _, g := range gpus {
		for _, d := range g.Devices {
			want[d.Name] = true
		}
	}
	seen := map[string]bool{}
	for i, s := range out {
		if len(s) == 0 || len(s) > MaxDevicesPerSlice {
			return fmt.Errorf("slice %d has %d devices, want 1 to %d", i, len(s), MaxDevicesPerSlice)
		}
		for _, d := range s {
			if !want[d.Name] || seen[d.Name] {
				return fmt.Errorf("device %s is not one of the node's devices, or placed twice", d.Name)
			}
			seen[d.Name] = true
		}
	}
	if len(seen) != len(want) {
		return fmt.Errorf("%d of the node's %d devices are in no slice", len(want)-len(seen), len(want))
	}
	return nil
}
