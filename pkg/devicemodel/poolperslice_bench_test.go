package devicemodel

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/dynamic-resource-allocation/structured"
)

// poolLayouts are the ways BenchmarkPoolPerSlice publishes a node's
// devices: the driver's one pool per node, and the two splits.
var poolLayouts = []struct {
	name  string
	split func(testing.TB, []*resourceapi.ResourceSlice) []*resourceapi.ResourceSlice
}{
	{"pool-per-node", nil},
	{"pool-per-slice", poolPerDeviceSlice},
	{"pool-per-gpu", poolPerGPU},
}

// BenchmarkPoolPerSlice measures issue 29's last lever: publishing each
// device slice (or each GPU) as a pool of its own instead of one pool per
// node.
//
// On v1.37 the allocator learns what a pool's counters have left by walking
// every device of the pool and asking whether it is allocated, and that
// question walks every share allocated in the cluster
// (structured/internal.IsDeviceAllocated, once per pool a claim touches on
// a node); every counter check then compares every counter set of the
// pool. A smaller pool lets a claim that fits on the node's first GPUs pay
// for those GPUs' devices and counter sets only.
//
// 100 simulated DGX H100 nodes with shared GPUs, every node holding the same
// number of 10Gi shares (the allocator places them, seven to a GPU from
// GPU 0 on), so the cluster holds 100 times that many. One op is what the
// scheduler's Filter does for one claim: build the allocator and try every
// node. Each pool of a split is a counters slice with its GPUs' counter
// sets and a device slice; device names, order and allocations stay
// (TestPoolSplitsPublishAndAllocateTheSame).
func BenchmarkPoolPerSlice(b *testing.B) {
	const nodes = 100
	inv := inventory(b, "dgxh100")
	for _, sharesPerNode := range []int{0, 8, 16, 32} {
		for _, layout := range poolLayouts {
			b.Run(fmt.Sprintf("shares-per-node=%d/%s", sharesPerNode, layout.name), func(b *testing.B) {
				models := map[string]*Model{}
				for i := 0; i < nodes; i++ {
					models[fmt.Sprintf("node-%03d", i)] = build(b, Input{Inventory: inv, SharedGPUs: true})
				}
				c := newCluster(b, models)
				if layout.split != nil {
					c.slices = layout.split(b, c.slices)
				}
				for n := range c.models {
					for j := 0; j < sharesPerNode; j++ {
						if c.allocate(n, claim(share("10Gi", ""))) == nil {
							b.Fatalf("share %d does not fit on %s", j, n)
						}
					}
				}
				benchmarkClaims(b, c, []string{"whole-gpu", "mig-1g", "share-10Gi"}, map[string]*resourceapi.ResourceClaim{
					"whole-gpu":  claim(exactly("gpu", "gpu.nvidia.com", 1)),
					"mig-1g":     claim(exactly("mig", "mig.nvidia.com", 1, attr("profile")+` == "1g.10gb"`)),
					"share-10Gi": claim(share("10Gi", "")),
				})
			})
		}
	}
}

// benchmarkClaims times, for each claim named, building the allocator and
// trying every node of c, as the scheduler's Filter does; every node must
// fit it.
func benchmarkClaims(b *testing.B, c *cluster, names []string, claims map[string]*resourceapi.ResourceClaim) {
	nodeObjs := make([]*v1.Node, 0, len(c.models))
	for n := range c.models {
		nodeObjs = append(nodeObjs, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	state := structured.AllocatedState{AllocatedDevices: c.allocated, AllocatedSharedDeviceIDs: c.shares, AggregatedCapacity: c.consumed}
	ctx := context.Background()
	for _, name := range names {
		cl := claims[name]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				alloc, err := structured.NewAllocator(ctx, features, state, c.classes, c.slices, c.celCache)
				if err != nil {
					b.Fatal(err)
				}
				for _, n := range nodeObjs {
					res, err := alloc.Allocate(ctx, n, []*resourceapi.ResourceClaim{cl})
					if err != nil {
						b.Fatal(err)
					}
					if res == nil {
						b.Fatalf("%s does not fit on %s", name, n.Name)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(nodeObjs))/1000, "µs/node")
		})
	}
}

// poolPerDeviceSlice rewrites each node's pool as one pool per device
// slice, named "<node>-<index>": a counters slice with the counter sets the
// slice's devices consume, then the device slice.
func poolPerDeviceSlice(t testing.TB, in []*resourceapi.ResourceSlice) []*resourceapi.ResourceSlice {
	return splitPools(t, in, func(*resourceapi.Device) string { return "" })
}

// poolPerGPU rewrites each node's pool as one pool per GPU: every device
// of ours consumes the counters of exactly its own GPU.
func poolPerGPU(t testing.TB, in []*resourceapi.ResourceSlice) []*resourceapi.ResourceSlice {
	return splitPools(t, in, func(d *resourceapi.Device) string {
		if len(d.ConsumesCounters) != 1 {
			t.Fatalf("device %s consumes %d counter sets, want 1", d.Name, len(d.ConsumesCounters))
		}
		return d.ConsumesCounters[0].CounterSet
	})
}

// splitPools makes a pool of each group of a device slice's devices that
// share a key, in the order the groups first appear, so the allocator
// tries the devices in the order it did.
func splitPools(t testing.TB, in []*resourceapi.ResourceSlice, key func(*resourceapi.Device) string) []*resourceapi.ResourceSlice {
	counterSets := map[string]map[string]resourceapi.CounterSet{} // node -> set name -> set
	for _, s := range in {
		for _, cs := range s.Spec.SharedCounters {
			if counterSets[s.Spec.Pool.Name] == nil {
				counterSets[s.Spec.Pool.Name] = map[string]resourceapi.CounterSet{}
			}
			counterSets[s.Spec.Pool.Name][cs.Name] = cs
		}
	}
	var out []*resourceapi.ResourceSlice
	index := map[string]int{}
	for _, s := range in {
		if len(s.Spec.Devices) == 0 {
			continue
		}
		node := s.Spec.Pool.Name
		var keys []string
		groups := map[string][]resourceapi.Device{}
		for _, d := range s.Spec.Devices {
			k := key(&d)
			if _, ok := groups[k]; !ok {
				keys = append(keys, k)
			}
			groups[k] = append(groups[k], d)
		}
		for _, k := range keys {
			pool := fmt.Sprintf("%s-%02d", node, index[node])
			index[node]++
			var sets []resourceapi.CounterSet
			seen := map[string]bool{}
			for _, d := range groups[k] {
				for _, cc := range d.ConsumesCounters {
					if seen[cc.CounterSet] {
						continue
					}
					cs, ok := counterSets[node][cc.CounterSet]
					if !ok {
						t.Fatalf("device %s of %s consumes unknown counter set %s", d.Name, node, cc.CounterSet)
					}
					seen[cc.CounterSet] = true
					sets = append(sets, cs)
				}
			}
			counters := s.DeepCopy()
			counters.Name = pool + "-0"
			counters.Spec.Pool = resourceapi.ResourcePool{Name: pool, Generation: 1, ResourceSliceCount: 2}
			counters.Spec.Devices = nil
			counters.Spec.SharedCounters = sets
			devices := s.DeepCopy()
			devices.Name = pool + "-1"
			devices.Spec.Pool = counters.Spec.Pool
			devices.Spec.Devices = groups[k]
			devices.Spec.SharedCounters = nil
			out = append(out, counters, devices)
		}
	}
	return out
}

// TestPoolSplitsPublishAndAllocateTheSame checks that the pool splits
// BenchmarkPoolPerSlice compares publish the same devices and allocate the
// same ones as the driver's pool per node, and logs what each costs in
// published bytes per DGX H100 node (JSON, as the plugin sends slices).
func TestPoolSplitsPublishAndAllocateTheSame(t *testing.T) {
	m := build(t, Input{Inventory: inventory(t, "dgxh100"), SharedGPUs: true})
	size := func(slices []*resourceapi.ResourceSlice) (n, devices int) {
		for _, s := range slices {
			c := s.DeepCopy()
			c.Name, c.GenerateName = "", ""
			data, err := json.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			n += len(data)
			devices += len(s.Spec.Devices)
		}
		return n, devices
	}
	claims := func() []*resourceapi.ResourceClaim {
		return []*resourceapi.ResourceClaim{
			claim(share("10Gi", "")),
			claim(exactly("gpu", "gpu.nvidia.com", 1)),
			claim(exactly("mig", "mig.nvidia.com", 1, attr("profile")+` == "1g.10gb"`)),
			claim(exactly("mig", "mig.nvidia.com", 1, attr("profile")+` == "3g.40gb"`)),
			claim(exactly("mig", "mig.nvidia.com", 1, attr("profile")+` == "7g.80gb"`)),
			claim(exactly("gpu", "gpu.nvidia.com", 2)),
			claim(exactly("mig", "mig.nvidia.com", 3, attr("profile")+` == "2g.20gb"`)),
		}
	}
	base := newCluster(t, map[string]*Model{node: m})
	baseBytes, baseDevices := size(base.slices)
	var want []string
	for _, r := range claims() {
		res := base.allocate(node, r)
		if res == nil {
			t.Fatalf("claim %s does not fit one pool per node", r.Name)
		}
		want = append(want, allocatedNames(res))
	}
	for _, layout := range poolLayouts[1:] {
		c := newCluster(t, map[string]*Model{node: m})
		c.slices = layout.split(t, c.slices)
		n, devices := size(c.slices)
		if devices != baseDevices {
			t.Fatalf("%s publishes %d devices, want %d", layout.name, devices, baseDevices)
		}
		t.Logf("%s: %d slices, %d bytes, %+.2f%% against one pool per node (%d slices, %d bytes)",
			layout.name, len(c.slices), n, 100*float64(n-baseBytes)/float64(baseBytes), len(base.slices), baseBytes)
		for i, r := range claims() {
			if got := allocatedNames(c.allocate(node, r)); got != want[i] {
				t.Errorf("%s: claim %d allocates %s, one pool per node %s", layout.name, i, got, want[i])
			}
		}
	}
}
