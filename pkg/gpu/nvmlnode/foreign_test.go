package nvmlnode

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

// TestInventoryOfForeignGPUInstances: GPU instances someone else made are
// in the inventory with their placements, whether they have one compute
// instance, several or none.
func TestInventoryOfForeignGPUInstances(t *testing.T) {
	type gi struct {
		profile, start int
		cis            []int
	}
	one := nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE
	cases := []struct {
		name      string
		gis       []gi
		instances string // "profile@placement/GIID.CIID"
		bare      string // "profile@placement/GIID"
	}{
		{"without compute instance", []gi{{nvml.GPU_INSTANCE_PROFILE_3_SLICE, 4, nil}}, "", "3g.40gb@4:4/1"},
		{"with two compute instances", []gi{{nvml.GPU_INSTANCE_PROFILE_2_SLICE, 0, []int{one, one}}}, "2g.20gb@0:2/1.0 2g.20gb@0:2/1.1", ""},
		{"both beside a whole one", []gi{
			{nvml.GPU_INSTANCE_PROFILE_2_SLICE, 0, []int{one, one}},
			{nvml.GPU_INSTANCE_PROFILE_1_SLICE, 2, []int{one}},
			{nvml.GPU_INSTANCE_PROFILE_3_SLICE, 4, nil},
		}, "2g.20gb@0:2/1.0 2g.20gb@0:2/1.1 1g.10gb@2:1/2.0", "3g.40gb@4:4/3"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			n := openSim(t, "dgxh100", dir)
			admin, err := sim.Open("dgxh100", dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := admin.SetMIGMode(0, true); err != nil {
				t.Fatal(err)
			}
			for _, g := range tc.gis {
				if _, err := admin.CreateGPUInstance(0, g.profile, g.start, g.cis...); err != nil {
					t.Fatal(err)
				}
			}
			inv, err := n.Inventory(ctx)
			if err != nil {
				t.Fatal(err)
			}
			g := inv.GPUs[0]
			var insts, bare []string
			uuids := map[string]bool{}
			for _, m := range g.MIGInstances {
				insts = append(insts, fmt.Sprintf("%s@%s/%d.%d", m.Profile, m.Placement, m.GIID, m.CIID))
				if !strings.HasPrefix(m.UUID, "MIG-") || uuids[m.UUID] {
					t.Errorf("instance %+v has no UUID of its own", m)
				}
				uuids[m.UUID] = true
			}
			for _, b := range g.BareGPUInstances {
				if b.ParentUUID != g.UUID {
					t.Errorf("bare GPU instance %+v: parent %s, want %s", b, b.ParentUUID, g.UUID)
				}
				bare = append(bare, fmt.Sprintf("%s@%s/%d", b.Profile, b.Placement, b.GIID))
			}
			if got := strings.Join(insts, " "); got != tc.instances {
				t.Errorf("MIG instances = %q, want %q", got, tc.instances)
			}
			if got := strings.Join(bare, " "); got != tc.bare {
				t.Errorf("bare GPU instances = %q, want %q", got, tc.bare)
			}
			for _, other := range inv.GPUs[1:] {
				if len(other.MIGInstances)+len(other.BareGPUInstances) != 0 {
					t.Errorf("GPU %s has instances it should not", other.UUID)
				}
			}
			// The driver cannot create over a bare GPU instance either.
			if len(g.BareGPUInstances) > 0 {
				b := g.BareGPUInstances[0]
				p1g := profileByName(t, g, "1g.10gb")
				if _, err := n.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: p1g.ID, Placement: gpu.Placement{Start: b.Placement.Start, Size: 1}}); err == nil {
					t.Error("creating inside a GPU instance without compute instance succeeded")
				}
			}
		})
	}
}
