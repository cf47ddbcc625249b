package devicemodel

import (
	"fmt"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

const sharedClass = "shared.gpu.nvidia.com"

// share is a request for one share of a shared GPU with the given
// capacity requests ("" leaves a capacity to its default).
func share(memory, compute string, exprs ...string) resourceapi.DeviceRequest {
	r := exactly("share", sharedClass, 1, exprs...)
	if memory != "" || compute != "" {
		r.Exactly.Capacity = &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{}}
		if memory != "" {
			r.Exactly.Capacity.Requests[names.CapacityMemory] = resource.MustParse(memory)
		}
		if compute != "" {
			r.Exactly.Capacity.Requests[names.CapacityCompute] = resource.MustParse(compute)
		}
	}
	return r
}

func sharedH100Cluster(t testing.TB) *cluster {
	return newCluster(t, map[string]*Model{node: build(t, Input{Inventory: inventory(t, "dgxh100"), SharedGPUs: true})})
}

// consumed is what the allocation's only device consumes, "memory/compute".
func consumed(t *testing.T, res *resourceapi.AllocationResult) string {
	t.Helper()
	r := res.Devices.Results[0]
	if r.ShareID == nil {
		t.Fatalf("%s allocated without a share ID", r.Device)
	}
	m, c := r.ConsumedCapacity[names.CapacityMemory], r.ConsumedCapacity[names.CapacityCompute]
	return fmt.Sprintf("%s/%s", m.String(), c.String())
}

// TestQuarterSharesFillOneGPUThenTheNext: four 20Gi shares fit on one 80 GB
// H100; the fifth goes to the next GPU.
func TestQuarterSharesFillOneGPUThenTheNext(t *testing.T) {
	c := sharedH100Cluster(t)
	for i, want := range []string{"gpu-0-shared", "gpu-0-shared", "gpu-0-shared", "gpu-0-shared", "gpu-1-shared"} {
		res := c.allocate(node, claim(share("20Gi", "")))
		if allocatedNames(res) != want {
			t.Fatalf("share %d: got %s, want %s", i, allocatedNames(res), want)
		}
		if got := consumed(t, res); got != "20Gi/0" {
			t.Errorf("share %d consumes %s, want 20Gi/0", i, got)
		}
	}
}

// TestShareCapacityPolicy: requests are rounded up by the request policy,
// compute adds up to 100 per GPU, a share that does not say consumes all
// the memory, and what no GPU has is refused.
func TestShareCapacityPolicy(t *testing.T) {
	for _, tc := range []struct {
		name            string
		memory, compute string
		want            string // consumed memory/compute, "" for refused
	}{
		{"decimal memory rounds up to whole MiB", "20G", "", "19074Mi/0"},
		{"less than the minimum gets the minimum", "100Mi", "", "1Gi/0"},
		{"compute", "10Gi", "50", "10Gi/50"},
		{"default memory is all of it", "", "25", "80Gi/25"},
		{"more memory than a GPU has", "81Gi", "", ""},
		{"more than all the compute", "1Gi", "101", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := sharedH100Cluster(t)
			res := c.allocate(node, claim(share(tc.memory, tc.compute)))
			switch {
			case tc.want == "" && res != nil:
				t.Fatalf("allocated %s (%s), want refused", allocatedNames(res), consumed(t, res))
			case tc.want == "":
			case res == nil:
				t.Fatalf("refused, want %s", tc.want)
			case consumed(t, res) != tc.want:
				t.Fatalf("consumes %s, want %s", consumed(t, res), tc.want)
			}
		})
	}
	t.Run("compute adds up to 100", func(t *testing.T) {
		c := sharedH100Cluster(t)
		for i, want := range []string{"gpu-0-shared", "gpu-0-shared", "gpu-1-shared"} {
			if got := allocatedNames(c.allocate(node, claim(share("1Gi", "40")))); got != want {
				t.Fatalf("share %d: got %s, want %s", i, got, want)
			}
		}
	})
}

// TestSharedAndExclusiveNeverOverlap proves on the scheduler's allocator that
// a GPU with a share can be allocated neither whole nor as any MIG device,
// that a GPU allocated whole or partly as MIG cannot be shared, and that the
// last share freed makes the GPU whole again.
func TestSharedAndExclusiveNeverOverlap(t *testing.T) {
	onMinor0 := attr("minor") + " == 0"
	whole := func() *resourceapi.ResourceClaim { return claim(exactly("gpu", "gpu.nvidia.com", 1, onMinor0)) }
	mig := func() *resourceapi.ResourceClaim {
		return claim(exactly("mig", "mig.nvidia.com", 1, attr("parentMinor")+" == 0", attr("profile")+` == "1g.10gb"`))
	}
	shareOf0 := func() *resourceapi.ResourceClaim { return claim(share("10Gi", "", onMinor0)) }

	c := sharedH100Cluster(t)
	s1, s2 := c.allocate(node, shareOf0()), c.allocate(node, shareOf0())
	if allocatedNames(s1) != "gpu-0-shared" || allocatedNames(s2) != "gpu-0-shared" {
		t.Fatalf("two shares of GPU 0: got %s and %s", allocatedNames(s1), allocatedNames(s2))
	}
	if got := c.allocate(node, whole()); got != nil {
		t.Fatalf("%s allocated whole beside its shares", allocatedNames(got))
	}
	if got := c.allocate(node, mig()); got != nil {
		t.Fatalf("%s allocated beside shares of its GPU", allocatedNames(got))
	}
	c.free(s1)
	if got := c.allocate(node, whole()); got != nil {
		t.Fatalf("%s allocated whole beside its last share", allocatedNames(got))
	}
	c.free(s2)
	w := c.allocate(node, whole())
	if allocatedNames(w) != "gpu-0" {
		t.Fatalf("GPU 0 without shares: got %s, want it whole", allocatedNames(w))
	}
	if got := c.allocate(node, shareOf0()); got != nil {
		t.Fatalf("%s allocated on a GPU in exclusive use", allocatedNames(got))
	}
	c.free(w)
	m := c.allocate(node, mig())
	if m == nil {
		t.Fatal("no MIG device on a free GPU 0")
	}
	if got := c.allocate(node, shareOf0()); got != nil {
		t.Fatalf("%s allocated on a GPU with MIG device %s", allocatedNames(got), allocatedNames(m))
	}
	c.free(m)
	if got := c.allocate(node, shareOf0()); allocatedNames(got) != "gpu-0-shared" {
		t.Fatalf("GPU 0 free again: got %s, want a share", allocatedNames(got))
	}
}

// TestSharedWithoutMIG: a GPU offered without MIG placements still cannot
// be whole and shared at once.
func TestSharedWithoutMIG(t *testing.T) {
	m := build(t, Input{Inventory: inventory(t, "dgxa100"), SharedGPUs: true, StaticMIGOnly: true})
	c := newCluster(t, map[string]*Model{node: m})
	onMinor0 := attr("minor") + " == 0"
	s := c.allocate(node, claim(share("10Gi", "", onMinor0)))
	if allocatedNames(s) != "gpu-0-shared" {
		t.Fatalf("share: got %s", allocatedNames(s))
	}
	if got := c.allocate(node, claim(exactly("gpu", "gpu.nvidia.com", 1, onMinor0))); got != nil {
		t.Fatalf("%s allocated whole beside its share", allocatedNames(got))
	}
	c.free(s)
	if got := c.allocate(node, claim(exactly("gpu", "gpu.nvidia.com", 1, onMinor0))); allocatedNames(got) != "gpu-0" {
		t.Fatalf("GPU 0 without shares: got %s", allocatedNames(got))
	}
}

// TestWholeGPUClassNeverGetsAShare: claims written for whole GPUs and MIG
// devices (the classes NVIDIA's users name) never land on a shared device,
// even when every whole GPU is taken.
func TestWholeGPUClassNeverGetsAShare(t *testing.T) {
	c := sharedH100Cluster(t)
	for i := 0; i < 8; i++ {
		if res := c.allocate(node, claim(exactly("gpu", "gpu.nvidia.com", 1))); res == nil || res.Devices.Results[0].ShareID != nil {
			t.Fatalf("whole GPU %d: got %s", i, allocatedNames(res))
		}
	}
	if res := c.allocate(node, claim(exactly("gpu", "gpu.nvidia.com", 1))); res != nil {
		t.Fatalf("a ninth whole GPU: got %s", allocatedNames(res))
	}
}
