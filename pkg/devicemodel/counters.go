package devicemodel

import (
	"sort"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// counterTotals are the sizes of one GPU's shared counters.
//
// The memory slices carry exclusivity: a placement consumes its slices, the
// whole GPU all of them, so overlapping devices can never be allocated
// together. Instance limits that
// the placements do not already imply (a GPU has one set of media engines,
// so only one "+me" instance fits although seven placements exist) are
// counters of their own.
type counterTotals struct {
	// memoryBytes is the one counter of a GPU without MIG placements.
	memoryBytes int64
	// multiprocessors is the most any valid set of MIG instances uses, the
	// whole GPU's capacity.
	multiprocessors int
	// limits maps a profile ID to its instance-limit counter, for the
	// profiles whose MaxInstances is below what their placements allow.
	limits map[int]limit
	// noMIG marks a GPU without MIG placements: its counter set has only
	// "memory".
	noMIG bool
	// memorySlices is the GPU's number of memory slices (gpu.GPU's), one
	// counter each: 8 on an H100, 4 on an A30.
	memorySlices int
}

type limit struct {
	counter string
	max     int
}

func computeTotals(g *gpu.GPU) counterTotals {
	t := counterTotals{limits: map[int]limit{}, memorySlices: g.MemorySlices}
	for i := range g.MIGProfiles {
		p := &g.MIGProfiles[i]
		if p.MaxInstances < disjointPlacements(p.Placements) {
			t.limits[p.ID] = limit{counter: names.InstanceLimitCounter(p.Name), max: p.MaxInstances}
		}
	}
	t.multiprocessors = bestPacking(g, t.limits)
	return t
}

// disjointPlacements is how many of the placements fit at once.
func disjointPlacements(pls []gpu.Placement) int {
	sorted := append([]gpu.Placement(nil), pls...)
	sort.Slice(sorted, func(a, b int) bool {
		return sorted[a].Start+sorted[a].Size < sorted[b].Start+sorted[b].Size
	})
	n, end := 0, -1
	for _, p := range sorted {
		if p.Start >= end {
			n++
			end = p.Start + p.Size
		}
	}
	return n
}

// bestPacking returns the largest multiprocessor sum over all sets of
// non-overlapping placements that respect the instance limits.
func bestPacking(g *gpu.GPU, limits map[int]limit) (multiprocessors int) {
	type option struct {
		profile *gpu.MIGProfile
		at      gpu.Placement
	}
	byStart := make([][]option, g.MemorySlices)
	for i := range g.MIGProfiles {
		p := &g.MIGProfiles[i]
		for _, pl := range p.Placements {
			if pl.Start >= 0 && pl.Start < g.MemorySlices {
				byStart[pl.Start] = append(byStart[pl.Start], option{p, pl})
			}
		}
	}
	used := map[int]int{}
	var walk func(slot int, mask uint32, mps int)
	walk = func(slot int, mask uint32, mps int) {
		if slot == g.MemorySlices {
			multiprocessors = max(multiprocessors, mps)
			return
		}
		walk(slot+1, mask, mps)
		for _, o := range byStart[slot] {
			if o.at.Mask()&mask != 0 {
				continue
			}
			if l, ok := limits[o.profile.ID]; ok && used[o.profile.ID] >= l.max {
				continue
			}
			used[o.profile.ID]++
			walk(slot+1, mask|o.at.Mask(), mps+o.profile.Multiprocessors)
			used[o.profile.ID]--
		}
	}
	walk(0, 0, 0)
	return multiprocessors
}

// counters are the counter set's totals: what the whole GPU consumes, plus
// the instance limits.
func (t counterTotals) counters() map[string]resourceapi.Counter {
	c := t.wholeGPU()
	for _, l := range t.limits {
		c[l.counter] = resourceapi.Counter{Value: *resource.NewQuantity(int64(l.max), resource.DecimalSI)}
	}
	return c
}

// wholeGPU is what the whole GPU consumes: every memory slice, or without
// MIG its memory.
//
// Memory and multiprocessors are no counters of a MIG-capable GPU: their
// totals are the most that any valid set of instances uses, so they never
// refused what the slices and instance limits allow, and they cost every
// device two Quantities the scheduler holds and the allocator sums
// (docs/benchmarks.md, "What a device costs").
func (t counterTotals) wholeGPU() map[string]resourceapi.Counter {
	if t.noMIG {
		return map[string]resourceapi.Counter{
			names.CapacityMemory: {Value: *resource.NewQuantity(t.memoryBytes, resource.BinarySI)},
		}
	}
	c := map[string]resourceapi.Counter{}
	for i := 0; i < t.memorySlices; i++ {
		c[names.MemorySliceCounter(i)] = one()
	}
	return c
}

// migConsumption is what a MIG profile at a placement consumes.
func (t counterTotals) migConsumption(p *gpu.MIGProfile, pl gpu.Placement) map[string]resourceapi.Counter {
	c := map[string]resourceapi.Counter{}
	for i := pl.Start; i < pl.Start+pl.Size; i++ {
		c[names.MemorySliceCounter(i)] = one()
	}
	if l, ok := t.limits[p.ID]; ok {
		c[l.counter] = one()
	}
	return c
}

func one() resourceapi.Counter {
	return resourceapi.Counter{Value: *resource.NewQuantity(1, resource.DecimalSI)}
}
