package devicemodel

import (
	"slices"
	"strings"
	"testing"

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
