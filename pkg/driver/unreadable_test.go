package driver

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

// TestUnreadableGPUIsNotOffered: a GPU that NVML cannot read any more
// stops being offered at the next refresh, whose other GPUs are still
// served, and is offered again once it can be read: its devices are never
// kept as if it were healthy.
func TestUnreadableGPUIsNotOffered(t *testing.T) {
	cases := []struct {
		name string
		call string
		ret  nvml.Return
	}{
		{"lost before its UUID was read", "GetUUID", nvml.ERROR_GPU_IS_LOST},
		{"unexpected NVML error", "GetMemoryInfo", nvml.ERROR_UNKNOWN},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			f := newNodeFixture(t)
			d := f.newDriver(ctx)
			t.Cleanup(d.publisher.Stop)
			offered := func(prefix string) int {
				_, m := d.state.current()
				n := 0
				for name := range m.Devices {
					if name == prefix || strings.HasPrefix(name, prefix+"-") {
						n++
					}
				}
				return n
			}
			if offered("gpu-3") == 0 || offered("gpu-4") == 0 {
				t.Fatal("GPUs 3 and 4 not offered at start")
			}
			injector, err := sim.Open("dgxh100", filepath.Join(f.dir, "sim"))
			if err != nil {
				t.Fatal(err)
			}
			if err := injector.SetCallError(3, tc.call, tc.ret); err != nil {
				t.Fatal(err)
			}
			if err := d.refreshAndPublish(ctx); err != nil {
				t.Fatalf("one unreadable GPU failed the refresh: %v", err)
			}
			if n := offered("gpu-3"); n != 0 {
				t.Errorf("unreadable GPU 3 still offers %d devices", n)
			}
			if offered("gpu-4") == 0 {
				t.Error("GPU 4 is no longer offered")
			}
			if err := injector.SetCallError(3, tc.call, nvml.SUCCESS); err != nil {
				t.Fatal(err)
			}
			if err := d.refreshAndPublish(ctx); err != nil {
				t.Fatal(err)
			}
			if offered("gpu-3") == 0 {
				t.Error("GPU 3 readable again but not offered")
			}
		})
	}
}
