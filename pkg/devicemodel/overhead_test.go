package devicemodel

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

func TestParseOverhead(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "", want: ""},
		{in: "  ", want: ""},
		{in: "share:cpu=250m,share:memory=512Mi", want: "share:cpu=250m,share:memory=512Mi"},
		{in: " mig:memory=1Gi , gpu:cpu=1 ,share:memory=512Mi", want: "gpu:cpu=1,mig:memory=1Gi,share:memory=512Mi"},
		{in: "share:cpu", err: "want KIND:RESOURCE=QUANTITY"},
		{in: "cpu=1", err: "want KIND:RESOURCE=QUANTITY"},
		{in: "vfio:cpu=1", err: `kind "vfio" is none of gpu, mig, share`},
		{in: "share:nvidia.com/gpu=1", err: "neither cpu nor memory"},
		{in: "share:ephemeral-storage=1Gi", err: "neither cpu nor memory"},
		{in: "share:cpu=lots", err: "quantity"},
		{in: "share:cpu=0", err: "must be positive"},
		{in: "share:memory=-1Mi", err: "must be positive"},
		{in: "share:cpu=1,share:cpu=2", err: "given twice"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			o, err := ParseOverhead(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseOverhead(%q) = %v, %v; want an error with %q", tc.in, o, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseOverhead(%q): %v", tc.in, err)
			}
			if got := o.String(); got != tc.want {
				t.Errorf("ParseOverhead(%q) = %q, want %q", tc.in, got, tc.want)
			}
			if o.Empty() != (tc.want == "") {
				t.Errorf("ParseOverhead(%q).Empty() = %v", tc.in, o.Empty())
			}
		})
	}
}

// TestOverheadPublishedPerKind checks that each kind's overhead goes on
// exactly that kind's devices, as a per-pod overhead the API server
// accepts, and nowhere else.
func TestOverheadPublishedPerKind(t *testing.T) {
	for _, tc := range []struct {
		flag string
		// want maps a device type to the memory overhead its devices carry
		// ("" for none).
		want map[string]string
	}{
		{flag: "", want: map[string]string{names.TypeGPU: "", names.TypeMIG: "", names.TypeShared: "", names.TypeVFIO: ""}},
		{flag: "share:cpu=250m,share:memory=512Mi", want: map[string]string{names.TypeGPU: "", names.TypeMIG: "", names.TypeShared: "512Mi", names.TypeVFIO: ""}},
		{flag: "gpu:memory=1Gi,mig:memory=256Mi", want: map[string]string{names.TypeGPU: "1Gi", names.TypeMIG: "256Mi", names.TypeShared: "", names.TypeVFIO: ""}},
	} {
		t.Run(tc.flag, func(t *testing.T) {
			o, err := ParseOverhead(tc.flag)
			if err != nil {
				t.Fatal(err)
			}
			in, _ := busyInventory(t, "dgxh100")
			in.SharedGPUs, in.VFIO, in.Overhead = true, true, o
			m := build(t, in)
			validateSlices(t, m.ResourceSlices("node-a"))
			seen := map[string]int{}
			for _, s := range m.Slices {
				for _, d := range s.Devices {
					p, ok := names.ParseDevice(d.Name)
					if !ok {
						t.Fatalf("device %s: unknown name", d.Name)
					}
					seen[p.Type]++
					want := tc.want[p.Type]
					mem, hasMem := d.NodeAllocatableResources[corev1.ResourceMemory]
					if want == "" {
						if d.NodeAllocatableResources != nil {
							t.Errorf("device %s: overhead %v, want none", d.Name, d.NodeAllocatableResources)
						}
						continue
					}
					if !hasMem || mem.Overhead == nil || mem.Overhead.PerPod == nil || mem.Mapping != nil || mem.Overhead.PerContainer != nil {
						t.Fatalf("device %s: memory overhead %+v, want %s per pod only", d.Name, mem, want)
					}
					if mem.Overhead.PerPod.Cmp(resource.MustParse(want)) != 0 {
						t.Errorf("device %s: memory overhead per pod %s, want %s", d.Name, mem.Overhead.PerPod.String(), want)
					}
				}
			}
			for typ := range tc.want {
				if seen[typ] == 0 {
					t.Errorf("no device of type %s on the node: the case checks nothing for it", typ)
				}
			}
		})
	}
}

// TestOverheadNotShared checks that each device gets a map of its own:
// changing one device's overhead changes no other's.
func TestOverheadNotShared(t *testing.T) {
	o, err := ParseOverhead("share:memory=512Mi")
	if err != nil {
		t.Fatal(err)
	}
	m := build(t, Input{Inventory: inventory(t, "dgxh100"), SharedGPUs: true, Overhead: o})
	carrying := 0
	for si := range m.Slices {
		for di := range m.Slices[si].Devices {
			d := &m.Slices[si].Devices[di]
			if d.NodeAllocatableResources != nil {
				d.NodeAllocatableResources[corev1.ResourceMemory].Overhead.PerPod.Add(resource.MustParse("1Gi"))
				carrying++
			}
		}
	}
	if carrying != 8 {
		t.Fatalf("%d devices carry an overhead, want the 8 shared GPUs", carrying)
	}
	if got := o.Of(OverheadShare)[corev1.ResourceMemory]; got.Cmp(resource.MustParse("512Mi")) != 0 {
		t.Errorf("the configured overhead changed to %s through a published device", got.String())
	}
	for _, s := range m.Slices {
		for _, d := range s.Devices {
			if r, ok := d.NodeAllocatableResources[corev1.ResourceMemory]; ok && r.Overhead.PerPod.Cmp(resource.MustParse("1536Mi")) != 0 {
				t.Errorf("device %s: overhead %s, want its own 512Mi+1Gi", d.Name, r.Overhead.PerPod.String())
			}
		}
	}
}
