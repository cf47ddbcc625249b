package devicemodel

import (
	"fmt"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
)

// BenchmarkAllocator measures the scheduler's allocator on a cluster of 100
// simulated DGX H100 nodes (800 GPUs, every MIG placement published). One
// op is what the scheduler's Filter does for one claim: build the allocator
// over all slices and try every node. Half the nodes already hold work (a
// whole GPU, three 1g instances and a third GPU), so the allocator has to skip
// occupied devices as it would in a busy cluster.
//
// It runs twice on the same occupancy: with exclusive devices only, where
// the busy nodes also hold a third GPU whole, and with every GPU also
// published as a shared device (the plugin's default), where that third
// GPU holds two 20Gi shares instead. The difference is what offering
// shares costs claims that do not use them; "share-20Gi" is the cost of a
// share itself.
//
// "with-shared-gpu-by-gpu" is "with-shared" with every GPU's devices in
// the GPU's own order, as before GPUMajor put each slice's whole GPUs
// first; the allocations are the same, the difference is the allocator's
// work.
func BenchmarkAllocator(b *testing.B) {
	for _, mode := range []struct {
		name   string
		shared bool
		layout Layout
	}{
		{"exclusive-only", false, nil},
		{"with-shared", true, nil},
		{"with-shared-gpu-by-gpu", true, gpuByGPU},
	} {
		b.Run(mode.name, func(b *testing.B) { benchmarkAllocator(b, mode.shared, mode.layout) })
	}
}

func benchmarkAllocator(b *testing.B, shared bool, layout Layout) {
	const nodes = 100
	inv := inventory(b, "dgxh100")
	models := map[string]*Model{}
	for i := 0; i < nodes; i++ {
		models[fmt.Sprintf("node-%03d", i)] = build(b, Input{Inventory: inv, SharedGPUs: shared, Layout: layout})
	}
	c := newCluster(b, models)
	for i := 0; i < nodes; i += 2 {
		n := fmt.Sprintf("node-%03d", i)
		c.allocate(n, claim(exactly("gpu", "gpu.nvidia.com", 1)))
		for j := 0; j < 3; j++ {
			c.allocate(n, claim(exactly("mig", "mig.nvidia.com", 1, attr("profile")+` == "1g.10gb"`)))
		}
		if !shared {
			c.allocate(n, claim(exactly("gpu", "gpu.nvidia.com", 1)))
			continue
		}
		for j := 0; j < 2; j++ {
			if c.allocate(n, claim(share("20Gi", ""))) == nil {
				b.Fatalf("no share on %s", n)
			}
		}
	}
	claims := map[string]*resourceapi.ResourceClaim{
		"whole-gpu": claim(exactly("gpu", "gpu.nvidia.com", 1)),
		"mig-1g":    claim(exactly("mig", "mig.nvidia.com", 1, attr("profile")+` == "1g.10gb"`)),
		"mig-3g":    claim(exactly("mig", "mig.nvidia.com", 1, attr("profile")+` == "3g.40gb"`)),
		"gpu-cel":   claim(exactly("gpu", "gpu.nvidia.com", 1, attr("cudaComputeCapability")+`.compareTo(semver("9.0.0")) >= 0`, `device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("80Gi")) >= 0`)),
		"first-available": claim(resourceapi.DeviceRequest{Name: "r", FirstAvailable: []resourceapi.DeviceSubRequest{
			{Name: "a100", DeviceClassName: "gpu.nvidia.com", AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1, Selectors: selectors([]string{attr("architecture") + ` == "Ampere"`})},
			{Name: "mig", DeviceClassName: "mig.nvidia.com", AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1, Selectors: selectors([]string{attr("profile") + ` == "2g.20gb"`})},
		}}),
		"share-20Gi": claim(share("20Gi", "25")),
	}
	names := []string{"whole-gpu", "mig-1g", "mig-3g", "gpu-cel", "first-available"}
	if shared {
		names = append(names, "share-20Gi")
	}
	benchmarkClaims(b, c, names, claims)
}
