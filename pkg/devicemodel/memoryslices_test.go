package devicemodel

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// TestMemorySlicesArePerGPU: a GPU's counter set has one memory-slice
// counter per memory slice the GPU has, and each MIG device consumes the
// slices NVML places it on. An A30 has four (1g.6gb at 0..3, 2g.12gb at 0
// and 2, 4g.24gb at 0); until the slice count was read per GPU it was
// published with eight, and a 1g.6gb consumed two.
func TestMemorySlicesArePerGPU(t *testing.T) {
	cases := []struct {
		model string
		// counters are the GPU's counter set; devices are GPU 0's MIG
		// devices in publish order with the memory slices they consume.
		counters string
		devices  []string
	}{
		{
			model:    "a30",
			counters: "instances-1g6gbme instances-2g12gbme memory-slice-0 memory-slice-1 memory-slice-2 memory-slice-3",
			devices: []string{
				"gpu-0-mig-1g6gb-3 3", "gpu-0-mig-1g6gb-2 2", "gpu-0-mig-1g6gb-1 1", "gpu-0-mig-1g6gb-0 0",
				"gpu-0-mig-2g12gb-2 2,3", "gpu-0-mig-2g12gb-0 0,1",
				"gpu-0-mig-4g24gb-0 0,1,2,3",
				"gpu-0-mig-1g6gbme-3 3", "gpu-0-mig-1g6gbme-2 2", "gpu-0-mig-1g6gbme-1 1", "gpu-0-mig-1g6gbme-0 0",
				"gpu-0-mig-2g12gbme-2 2,3", "gpu-0-mig-2g12gbme-0 0,1",
			},
		},
		{
			model:    "dgxh100",
			counters: "instances-1g10gbme memory-slice-0 memory-slice-1 memory-slice-2 memory-slice-3 memory-slice-4 memory-slice-5 memory-slice-6 memory-slice-7",
			devices: []string{
				"gpu-0-mig-1g10gb-6 6", "gpu-0-mig-1g10gb-5 5", "gpu-0-mig-1g10gb-4 4", "gpu-0-mig-1g10gb-3 3",
				"gpu-0-mig-1g10gb-2 2", "gpu-0-mig-1g10gb-1 1", "gpu-0-mig-1g10gb-0 0",
				"gpu-0-mig-2g20gb-4 4,5", "gpu-0-mig-2g20gb-2 2,3", "gpu-0-mig-2g20gb-0 0,1",
				"gpu-0-mig-3g40gb-4 4,5,6,7", "gpu-0-mig-3g40gb-0 0,1,2,3",
				"gpu-0-mig-4g40gb-0 0,1,2,3",
				"gpu-0-mig-7g80gb-0 0,1,2,3,4,5,6,7",
				"gpu-0-mig-1g10gbme-6 6", "gpu-0-mig-1g10gbme-5 5", "gpu-0-mig-1g10gbme-4 4", "gpu-0-mig-1g10gbme-3 3",
				"gpu-0-mig-1g10gbme-2 2", "gpu-0-mig-1g10gbme-1 1", "gpu-0-mig-1g10gbme-0 0",
				"gpu-0-mig-1g20gb-6 6,7", "gpu-0-mig-1g20gb-4 4,5", "gpu-0-mig-1g20gb-2 2,3", "gpu-0-mig-1g20gb-0 0,1",
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.model, func(t *testing.T) {
			inv := inventory(t, tc.model)
			migOn(inv)
			m := build(t, Input{Inventory: inv})
			validateSlices(t, m.ResourceSlices("node-a"))
			for _, g := range inv.GPUs {
				var counters []string
				for _, s := range m.ResourceSlices("node-a") {
					for _, cs := range s.Spec.SharedCounters {
						if cs.Name == names.CounterSet(g.Minor) {
							for name := range cs.Counters {
								counters = append(counters, name)
							}
						}
					}
				}
				slices.Sort(counters)
				if got := strings.Join(counters, " "); got != tc.counters {
					t.Errorf("GPU %d counters:\n got %s\nwant %s", g.Minor, got, tc.counters)
				}
			}
			var devices []string
			for _, s := range m.ResourceSlices("node-a") {
				for _, d := range s.Spec.Devices {
					if strings.HasPrefix(d.Name, names.GPUDevice(0)+"-mig-") {
						devices = append(devices, d.Name+" "+consumedSlices(d))
					}
				}
			}
			if !slices.Equal(devices, tc.devices) {
				t.Errorf("GPU 0's MIG devices:\n got %q\nwant %q", devices, tc.devices)
			}
		})
	}
}

// consumedSlices lists the memory slices a device consumes, e.g. "2,3".
func consumedSlices(d resourceapi.Device) string {
	var out []int
	for _, cc := range d.ConsumesCounters {
		for name := range cc.Counters {
			if names.IsMemorySliceCounter(name) {
				var i int
				if _, err := fmt.Sscanf(name, "memory-slice-%d", &i); err == nil {
					out = append(out, i)
				}
			}
		}
	}
	slices.Sort(out)
	return strings.Trim(strings.Join(strings.Fields(fmt.Sprint(out)), ","), "[]")
}
