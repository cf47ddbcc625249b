package driver

import (
	"testing"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// TestGPUPassedThroughIsNotUnhealthy: a GPU bound to VFIO is gone from
// NVML's inventory; its claim's device is not reported unhealthy for it,
// as any other device whose GPU is gone is.
func TestGPUPassedThroughIsNotUnhealthy(t *testing.T) {
	inv := &gpu.Inventory{GPUs: []gpu.GPU{{UUID: "GPU-other"}}}
	for _, tc := range []struct {
		name string
		dev  checkpoint.Device
		want kubeletplugin.HealthStatus
	}{
		{"passed through", checkpoint.Device{GPUUUID: "GPU-vm", VFIO: &checkpoint.VFIO{BusID: "0000:18:00.0"}}, kubeletplugin.HealthStatusUnknown},
		{"whole GPU gone", checkpoint.Device{GPUUUID: "GPU-vm"}, kubeletplugin.HealthStatusUnhealthy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, msg := (&Driver{}).deviceHealth(inv, tc.dev); got != tc.want {
				t.Errorf("health %v (%s), want %v", got, msg, tc.want)
			}
		})
	}
}
