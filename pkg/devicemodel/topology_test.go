package devicemodel

import (
	"maps"
	"slices"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// dgxTopology is the simulated host's topology of a node's GPUs: two per
// PCIe root, the first four on NUMA node 0.
func dgxTopology(t *testing.T, inv *gpu.Inventory) map[string]gpu.Topology {
	t.Helper()
	topo, err := simhost.Topology(inv)
	if err != nil {
		t.Fatal(err)
	}
	return topo
}

func matching(attribute string, claimRequests ...resourceapi.DeviceRequest) *resourceapi.ResourceClaim {
	c := claim(claimRequests...)
	c.Spec.Devices.Constraints = []resourceapi.DeviceConstraint{{MatchAttribute: ptr.To(resourceapi.FullyQualifiedName(attribute))}}
	return c
}

func standard(name string) string {
	return `device.attributes["resource.kubernetes.io"].` + strings.TrimPrefix(name, "resource.kubernetes.io/")
}

func TestTopologyAttributesOnEveryDevice(t *testing.T) {
	inv := inventory(t, "dgxh100")
	topo := dgxTopology(t, inv)
	m := build(t, Input{Inventory: inv, Topology: topo, SharedGPUs: true})
	kinds := map[Kind]int{}
	for _, s := range m.Slices {
		for _, d := range s.Devices {
			info := m.Devices[d.Name]
			kinds[info.Kind]++
			want := topo[info.GPU.PCIBusID]
			if got := d.Attributes[names.AttrPCIeRoot].StringValue; got == nil || *got != want.PCIeRoot {
				t.Errorf("%s: pcieRoot = %v, want %s", d.Name, got, want.PCIeRoot)
			}
			if got := d.Attributes[names.AttrNUMANode].IntValue; got == nil || *got != int64(want.NUMANode) {
				t.Errorf("%s: numaNode = %v, want %d", d.Name, got, want.NUMANode)
			}
		}
	}
	if kinds[KindGPU] == 0 || kinds[KindMIGPlacement] == 0 || kinds[KindGPUShare] == 0 {
		t.Fatalf("want whole, MIG and shared devices, got %v", kinds)
	}
}

func TestTopologyUnknownIsNotPublished(t *testing.T) {
	inv := inventory(t, "dgxh100")
	topo := map[string]gpu.Topology{inv.GPUs[0].PCIBusID: {NUMANode: gpu.NoNUMANode}}
	m := build(t, Input{Inventory: inv, Topology: topo})
	for _, s := range m.Slices {
		for _, d := range s.Devices {
			for _, a := range []resourceapi.QualifiedName{names.AttrPCIeRoot, names.AttrNUMANode} {
				if v, ok := d.Attributes[a]; ok {
					t.Errorf("%s has %s = %+v, want none", d.Name, a, v)
				}
			}
		}
	}
}

// TestMatchAttributeOnTopology runs claims that align devices by
// matchAttribute on the standard attributes through the scheduler's
// allocator.
func TestMatchAttributeOnTopology(t *testing.T) {
	inv := inventory(t, "dgxh100")
	topo := dgxTopology(t, inv)
	byName := map[string]gpu.Topology{}
	for _, g := range inv.GPUs {
		byName[names.GPUDevice(g.Minor)] = topo[g.PCIBusID]
	}
	tests := []struct {
		name  string
		claim *resourceapi.ResourceClaim
		// want is the allocation, "<none>" when it must fail.
		want string
		// check, when set, tells whether the allocated devices line up.
		check func(t *testing.T, devs []string)
	}{
		{
			name:  "two GPUs on one PCIe root",
			claim: matching(names.AttrPCIeRoot, exactly("gpus", "gpu.nvidia.com", 2)),
			check: func(t *testing.T, devs []string) {
				if byName[devs[0]].PCIeRoot != byName[devs[1]].PCIeRoot {
					t.Errorf("%v are on roots %s and %s", devs, byName[devs[0]].PCIeRoot, byName[devs[1]].PCIeRoot)
				}
			},
		},
		{
			name:  "three GPUs on one PCIe root do not exist",
			claim: matching(names.AttrPCIeRoot, exactly("gpus", "gpu.nvidia.com", 3)),
			want:  "<none>",
		},
		{
			name:  "four GPUs on one NUMA node",
			claim: matching(names.AttrNUMANode, exactly("gpus", "gpu.nvidia.com", 4, standard(names.AttrNUMANode)+" == 1")),
			want:  "gpu-4,gpu-5,gpu-6,gpu-7",
		},
		{
			name:  "five GPUs on one NUMA node do not exist",
			claim: matching(names.AttrNUMANode, exactly("gpus", "gpu.nvidia.com", 5)),
			want:  "<none>",
		},
		{
			name: "a GPU and a MIG device on the GPU's PCIe root",
			claim: matching(names.AttrPCIeRoot,
				exactly("gpu", "gpu.nvidia.com", 1, attr("minor")+" == 6"),
				exactly("mig", "mig.nvidia.com", 1, attr("profile")+` == "1g.10gb"`)),
			check: func(t *testing.T, devs []string) {
				if !strings.HasPrefix(devs[1], "gpu-7-mig-") {
					t.Errorf("MIG device %s is not on gpu-7, the other GPU behind gpu-6's root", devs[1])
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, map[string]*Model{node: build(t, Input{Inventory: inv, Topology: topo})})
			got := c.allocate(node, tt.claim)
			if tt.want != "" && allocatedNames(got) != tt.want {
				t.Fatalf("allocated %s, want %s", allocatedNames(got), tt.want)
			}
			if tt.check != nil {
				if got == nil {
					t.Fatal("nothing allocated")
				}
				tt.check(t, strings.Split(allocatedNames(got), ","))
			}
		})
	}
}

// TestMIGDevicesKeepToFourteenAttributes guards the heap every informer
// pays per device: Go's maps hold 14 entries in a table half the size of
// 15's, and the MIG devices, two hundred of a DGX's 216, are the ones that
// count (docs/benchmarks.md, "What a device costs").
func TestMIGDevicesKeepToFourteenAttributes(t *testing.T) {
	for _, model := range []string{"dgxa100", "dgxh100", "dgxh200", "dgxb200"} {
		t.Run(model, func(t *testing.T) {
			inv := inventory(t, model)
			migOn(inv) // an A100 offers MIG devices only in MIG mode
			m := build(t, Input{Inventory: inv, Topology: dgxTopology(t, inv), SharedGPUs: true})
			migs := 0
			for _, s := range m.Slices {
				for _, d := range s.Devices {
					if m.Devices[d.Name].Kind != KindMIGPlacement {
						continue
					}
					migs++
					if n := len(d.Attributes); n > 14 {
						t.Errorf("%s has %d attributes, more than 14: %v", d.Name, n, slices.Sorted(maps.Keys(d.Attributes)))
					}
				}
			}
			if migs == 0 {
				t.Fatal("no MIG devices built")
			}
		})
	}
}
