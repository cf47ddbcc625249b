package devicemodel

import (
	"context"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// foreignGI is a GPU instance an administrator makes on GPU 0, with one
// compute instance of each of cis.
type foreignGI struct {
	profile, start int
	cis            []int
}

// foreignInventory is a node whose GPU 0 is in MIG mode with the given
// GPU instances, made by someone else.
func foreignInventory(t *testing.T, model string, gis []foreignGI) *gpu.Inventory {
	t.Helper()
	dir := t.TempDir()
	n, err := nvmlnode.Open(nvmlnode.Options{Simulate: model, SimStateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	admin, err := sim.Open(model, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.SetMIGMode(0, true); err != nil {
		t.Fatal(err)
	}
	if err := admin.Reset(0); err != nil {
		t.Fatal(err)
	}
	for _, g := range gis {
		if _, err := admin.CreateGPUInstance(0, g.profile, g.start, g.cis...); err != nil {
			t.Fatal(err)
		}
	}
	inv, err := n.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

// TestForeignGPUInstances: GPU instances that are no single MIG device (no
// compute instance, or two) are published as no device, every name is
// published once, nothing overlapping them is offered, and the slices pass
// the API server's validation.
func TestForeignGPUInstances(t *testing.T) {
	one := nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE
	twoCIs := foreignGI{nvml.GPU_INSTANCE_PROFILE_2_SLICE, 0, []int{one, one}}
	bare := foreignGI{nvml.GPU_INSTANCE_PROFILE_3_SLICE, 4, nil}
	whole1g := foreignGI{nvml.GPU_INSTANCE_PROFILE_1_SLICE, 2, []int{one}}
	cases := []struct {
		name     string
		model    string
		gis      []foreignGI
		occupied uint32 // memory slices no offered device may touch
		static   []string
		withheld string
	}{
		{"GPU instance with two compute instances", "dgxh100", []foreignGI{twoCIs}, 0b00000011, nil, "2g.20gb@0:2"},
		{"GPU instance without compute instance", "dgxh100", []foreignGI{bare}, 0b11110000, nil, "3g.40gb@4:4"},
		{"both beside a pre-created instance", "dgxh100", []foreignGI{twoCIs, whole1g, bare}, 0b11110111,
			[]string{names.StaticMIGDevice(0, "1g.10gb", 2)}, "2g.20gb@0:2 3g.40gb@4:4"},
		{"both on an Ampere GPU", "dgxa100", []foreignGI{twoCIs, bare}, 0b11110011, nil, "2g.10gb@0:2 3g.20gb@4:4"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inv := foreignInventory(t, tc.model, tc.gis)
			g := &inv.GPUs[0]
			for _, opts := range []Input{{}, {SharedGPUs: true}, {StaticMIGOnly: true}} {
				in := opts
				in.Inventory = inv
				m := build(t, in)

				seen := map[string]bool{}
				var static []string
				for _, s := range m.ResourceSlices("node-a") {
					for _, d := range s.Spec.Devices {
						if seen[d.Name] {
							t.Errorf("device %s is published twice", d.Name)
						}
						seen[d.Name] = true
					}
				}
				for name, d := range m.Devices {
					if d.GPU != g {
						continue
					}
					switch d.Kind {
					case KindGPU, KindGPUShare:
						t.Errorf("%s: GPU 0 holds GPU instances, it is not offered whole", name)
					case KindMIGPlacement:
						if d.Placement.Mask()&tc.occupied != 0 {
							t.Errorf("%s at %s overlaps an occupied placement", name, d.Placement)
						}
					case KindMIGStatic:
						static = append(static, name)
					}
				}
				if got, want := strings.Join(static, " "), strings.Join(tc.static, " "); got != want {
					t.Errorf("static devices %q, want %q", got, want)
				}
				var withheld []string
				for _, w := range m.Withheld {
					if w.GPU != g.UUID || w.Reason == "" {
						t.Errorf("withheld %+v", w)
					}
					withheld = append(withheld, w.Profile+"@"+w.Placement.String())
				}
				if got := strings.Join(withheld, " "); got != tc.withheld {
					t.Errorf("withheld %q, want %q", got, tc.withheld)
				}
				if _, ok := m.Devices[names.GPUDevice(inv.GPUs[1].Minor)]; !ok {
					t.Error("GPU 1 must still be offered whole")
				}
				validateSlices(t, m.ResourceSlices("node-a"))
			}
		})
	}
}
