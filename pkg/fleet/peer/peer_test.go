package peer

import (
	"context"
	"encoding/json"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

func inventory(t *testing.T, model string) (*gpu.Inventory, map[string]gpu.Topology) {
	t.Helper()
	n, err := nvmlnode.Open(nvmlnode.Options{Simulate: model})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	inv, err := n.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	topo, err := simhost.Topology(inv)
	if err != nil {
		t.Fatal(err)
	}
	return inv, topo
}

// TestDGXH100 checks the shape NVIDIA's driver publishes for a DGX H100:
// 26 devices per GPU, one counter set of 15 counters per GPU, G+1 slices.
func TestDGXH100(t *testing.T) {
	inv, topo := inventory(t, "dgxh100")
	got, err := Slices(inv, topo)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(inv.GPUs)+1 {
		t.Fatalf("%d slices, want %d", len(got), len(inv.GPUs)+1)
	}
	if len(got[0].Devices) != 0 || len(got[0].SharedCounters) != len(inv.GPUs) {
		t.Fatalf("first slice: %d devices, %d counter sets; want 0 and %d", len(got[0].Devices), len(got[0].SharedCounters), len(inv.GPUs))
	}
	for _, cs := range got[0].SharedCounters {
		if len(cs.Counters) != 15 {
			t.Errorf("counter set %s: %d counters, want 15", cs.Name, len(cs.Counters))
		}
	}
	byName := map[string]resourceapi.Device{}
	for _, s := range got[1:] {
		if len(s.Devices) != 26 {
			t.Errorf("a GPU's slice has %d devices, want 26", len(s.Devices))
		}
		if len(s.SharedCounters) != 0 {
			t.Errorf("a GPU's slice has counter sets")
		}
		for _, d := range s.Devices {
			byName[d.Name] = d
		}
	}
	if got[1].Devices[0].Name != "gpu-0" {
		t.Errorf("first device %s, want gpu-0 (sorted by name)", got[1].Devices[0].Name)
	}
	tests := []struct {
		device      string
		attrs       int
		capacities  int
		counters    int
		absentAttrs []resourceapi.QualifiedName
		wantCounter string
	}{
		{"gpu-0", 10, 7, 15, []resourceapi.QualifiedName{"parentUUID", "profile"}, "memory-slice-7"},
		{"gpu-0-mig-1g10gb-19-3", 11, 7, 8, []resourceapi.QualifiedName{"uuid", "parentMinor", "pcieBusID", "minor"}, "memory-slice-3"},
		{"gpu-0-mig-1g10gb-me-20-6", 11, 7, 8, []resourceapi.QualifiedName{"uuid"}, "memory-slice-6"},
		{"gpu-7-mig-3g40gb-9-4", 11, 7, 11, nil, "memory-slice-7"},
		{"gpu-7-mig-7g80gb-0-0", 11, 7, 15, nil, "memory-slice-0"},
	}
	for _, tc := range tests {
		t.Run(tc.device, func(t *testing.T) {
			d, ok := byName[tc.device]
			if !ok {
				t.Fatalf("no device %s", tc.device)
			}
			if len(d.Attributes) != tc.attrs || len(d.Capacity) != tc.capacities {
				t.Errorf("%d attributes, %d capacities; want %d, %d", len(d.Attributes), len(d.Capacity), tc.attrs, tc.capacities)
			}
			if len(d.ConsumesCounters) != 1 || len(d.ConsumesCounters[0].Counters) != tc.counters {
				t.Fatalf("consumes %v, want %d counters of one set", d.ConsumesCounters, tc.counters)
			}
			if _, ok := d.ConsumesCounters[0].Counters[tc.wantCounter]; !ok {
				t.Errorf("does not consume %s", tc.wantCounter)
			}
			for _, a := range tc.absentAttrs {
				if _, ok := d.Attributes[a]; ok {
					t.Errorf("has attribute %s", a)
				}
			}
			for _, a := range []resourceapi.QualifiedName{"type", "productName", attrPCIBusID, attrPCIeRoot, attrCUDAComputeCapability} {
				if _, ok := d.Attributes[a]; !ok {
					t.Errorf("lacks attribute %s", a)
				}
			}
		})
	}
	// About 238 KB per node by a reading of NVIDIA's code (issue 29).
	n := 0
	for _, s := range got {
		data, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		n += len(data)
	}
	if n < 150_000 || n > 300_000 {
		t.Errorf("%d bytes of JSON, want about 238 KB", n)
	}
}

func TestSemver(t *testing.T) {
	tests := []struct {
		in, want string
		err      bool
	}{
		{"9.0", "9.0.0", false},
		{"12.4", "12.4.0", false},
		{"535.104.05", "535.104.5", false},
		{"", "", true},
		{"1.2.3.4", "", true},
		{"a.b", "", true},
	}
	for _, tc := range tests {
		got, err := semver(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("semver(%q) = %q, %v; want %q, error %t", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestCounterNames(t *testing.T) {
	caps := profileCapacities(&gpu.MIGProfile{})
	got := counters(caps)
	for _, want := range []string{"multiprocessors", "copy-engines", "decoders", "encoders", "jpeg-engines", "ofa-engines", "memory"} {
		if _, ok := got[want]; !ok {
			t.Errorf("no counter %s in %v", want, got)
		}
	}
}

// TestDeviceClasses: the classes are NVIDIA's chart's, selectors as it
// writes them (templates/deviceclass-gpu.yaml, deviceclass-mig.yaml).
func TestDeviceClasses(t *testing.T) {
	want := map[string]string{
		"gpu.nvidia.com": "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'",
		"mig.nvidia.com": "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'mig'",
	}
	got := DeviceClasses()
	if len(got) != len(want) {
		t.Fatalf("%d classes, want %d", len(got), len(want))
	}
	for _, c := range got {
		if len(c.Spec.Selectors) != 1 || c.Spec.Selectors[0].CEL == nil || c.Spec.Selectors[0].CEL.Expression != want[c.Name] {
			t.Errorf("class %s: selectors %+v, want %q", c.Name, c.Spec.Selectors, want[c.Name])
		}
	}
}
