package devicemodel

import (
	"slices"

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
