package devicemodel

import (
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

const vfioClass = "vfio.gpu.nvidia.com"

// TestVFIOExcludesEveryOtherUseOfItsGPU allocates, with the scheduler's
// allocator, GPU 0 to a VM and then every other kind of device on it, and
// the other way round: a GPU is a VM's or the host's, never both.
func TestVFIOExcludesEveryOtherUseOfItsGPU(t *testing.T) {
	onGPU0Any := attr("minor") + " == 0"
	others := []struct {
		name  string
		input Input
		class string
		exprs []string
	}{
		{"whole", Input{}, "gpu.nvidia.com", []string{onGPU0Any}},
		{"MIG", Input{}, "mig.nvidia.com", []string{attr("parentMinor") + " == 0", attr("profile") + ` == "1g.10gb"`}},
		{"share", Input{SharedGPUs: true}, sharedClass, []string{onGPU0Any}},
		{"whole without MIG on offer", Input{Offer: &Offer{Whole: true, VFIO: true}}, "gpu.nvidia.com", []string{onGPU0Any}},
		{"share without MIG on offer", Input{SharedGPUs: true, Offer: &Offer{Shared: true, VFIO: true}}, sharedClass, []string{onGPU0Any}},
		{"consumable share", Input{ConsumableShares: ConsumableShares{Mode: SharesMemory}, Offer: &Offer{Whole: true, VFIO: true}}, "gpu.nvidia.com", []string{onGPU0Any}},
	}
	for _, o := range others {
		t.Run(o.name, func(t *testing.T) {
			in := o.input
			in.Inventory, in.VFIO = inventory(t, "dgxh100"), true
			c := newCluster(t, map[string]*Model{node: build(t, in)})
			vm := c.allocate(node, claim(exactly("vm", vfioClass, 1, onGPU0Any)))
			if got := allocatedNames(vm); got != names.VFIODevice(0) {
				t.Fatalf("VM: got %q, want %s", got, names.VFIODevice(0))
			}
			if got := c.allocate(node, claim(exactly("other", o.class, 1, o.exprs...))); got != nil {
				t.Fatalf("%s allocated beside the VM's GPU", allocatedNames(got))
			}
			c.free(vm)
			other := c.allocate(node, claim(exactly("other", o.class, 1, o.exprs...)))
			if other == nil {
				t.Fatal("nothing allocated on a free GPU")
			}
			if got := c.allocate(node, claim(exactly("vm", vfioClass, 1, onGPU0Any))); got != nil {
				t.Fatalf("%s allocated to a VM beside %s", allocatedNames(got), allocatedNames(other))
			}
			// Other GPUs stay free for VMs.
			if got := allocatedNames(c.allocate(node, claim(exactly("vm", vfioClass, 1, attr("minor")+" == 1")))); got != names.VFIODevice(1) {
				t.Errorf("VM on GPU 1: got %q", got)
			}
		})
	}
}

func TestVFIODevicesOnlyWhenOn(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    Input
		want  int
		attrs []string
	}{
		{name: "off by default", in: Input{}, want: 0},
		{name: "on", in: Input{VFIO: true}, want: 8, attrs: []string{"type", "uuid", "productName", "pcieBusID", "resource.kubernetes.io/pciBusID", "minor", "index"}},
		{name: "on, not offered by the node", in: Input{VFIO: true, Offer: &Offer{Whole: true, MIG: true}}, want: 0},
		{name: "offered alone", in: Input{VFIO: true, Offer: &Offer{VFIO: true}}, want: 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			in.Inventory = inventory(t, "dgxh100")
			m := build(t, in)
			if got := m.Stats().VFIOGPUs; got != tc.want {
				t.Fatalf("%d VFIO devices, want %d", got, tc.want)
			}
			for _, d := range m.Devices {
				if d.Kind != KindVFIO {
					continue
				}
				if *d.Attributes["type"].StringValue != names.TypeVFIO {
					t.Errorf("%s: type %q", d.Name, *d.Attributes["type"].StringValue)
				}
				for _, a := range tc.attrs {
					if _, ok := d.Attributes[resourceapi.QualifiedName(a)]; !ok {
						t.Errorf("%s lacks attribute %s", d.Name, a)
					}
				}
			}
		})
	}
}

func TestParseOfferVFIO(t *testing.T) {
	o, err := ParseOffer(map[string]string{names.DeviceKindsLabel: "whole_vfio"})
	if err != nil || !o.Whole || !o.VFIO || o.MIG || o.Shared {
		t.Errorf("whole_vfio: %+v, %v", o, err)
	}
	if _, err := ParseOffer(map[string]string{names.DeviceKindsLabel: "vm"}); err == nil || !strings.Contains(err.Error(), "vfio") {
		t.Errorf("an unknown kind: error %v, want one listing vfio", err)
	}
}
