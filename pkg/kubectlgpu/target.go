package kubectlgpu

import (
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	resourceapi "k8s.io/api/resource/v1"
)

// Target is what a command acts on: every device of the driver on a node,
// or one GPU on that node together with all of its MIG devices.
type Target struct {
	// Node is the node name, which is also the driver's pool name.
	Node string
	// GPU is the GPU's minor number; it is meaningful only if HasGPU.
	GPU int
	// HasGPU is false when the target is the whole node.
	HasGPU bool
}

// String formats the target the way ParseTarget reads it.
func (t Target) String() string {
	if !t.HasGPU {
		return t.Node
	}
	return t.Node + "/" + names.GPUDevice(t.GPU)
}

// ParseTarget reads NODE or NODE/GPU, where GPU is "gpu-<minor>" (the name
// of the whole-GPU device) or just "<minor>". Anything else is a usage error.
func ParseTarget(s string) (Target, error) {
	node, gpu, hasGPU := strings.Cut(s, "/")
	if node == "" {
		return Target{}, usageErrorf("invalid target %q: want NODE or NODE/gpu-<minor>", s)
	}
	if !hasGPU {
		return Target{Node: node}, nil
	}
	minor, ok := names.ParseGPUDevice(gpu)
	if !ok {
		return Target{}, usageErrorf("invalid GPU %q in target %q: want gpu-<minor>, e.g. %s/gpu-0", gpu, s, node)
	}
	return Target{Node: node, GPU: minor, HasGPU: true}, nil
}

// gpuOf returns the minor of the GPU a published device is or is carved
// from, as the device's own attributes say: "minor" on a whole or shared
// GPU, "parentMinor" on a MIG device. A device without them is not one of
// the driver's GPU devices.
func gpuOf(d resourceapi.Device) (int, bool) {
	key := resourceapi.QualifiedName(names.AttrMinor)
	switch t := d.Attributes[names.AttrType]; {
	case t.StringValue == nil:
		return 0, false
	case *t.StringValue == names.TypeMIG:
		key = names.AttrParentMinor
	case *t.StringValue != names.TypeGPU && *t.StringValue != names.TypeShared:
		return 0, false
	}
	m := d.Attributes[key].IntValue
	if m == nil || *m < 0 || *m > math.MaxInt32 {
		return 0, false
	}
	return int(*m), true
}

// Inventory is what the driver publishes in its current ResourceSlices,
// grouped by node (pool) and GPU.
type Inventory struct {
	// Nodes maps a node (pool) name to its GPUs.
	Nodes map[string]*NodeInventory
}

// NodeInventory holds the GPUs the driver publishes for one node.
type NodeInventory struct {
	// Name is the node and pool name.
	Name string
	// GPUs maps a GPU minor to its devices.
	GPUs map[int]*GPUInventory
}

// GPUInventory holds the published devices of one GPU.
type GPUInventory struct {
	// Minor is the GPU's minor number (the N in gpu-N).
	Minor int
	// Devices are the whole GPU and its MIG devices, sorted by name
	// (so the whole GPU, a prefix of the others, comes first).
	Devices []resourceapi.Device
	// MemorySlices is how many memory-slice counters the GPU's counter
	// set has: its memory slices (8 on an H100, 4 on an A30), or 0
	// without MIG placements.
	MemorySlices int
}

// NewInventory groups the devices of the driver's slices by pool and GPU.
// Slices of other drivers, and slices of a pool's older generations (which
// the driver is about to replace), are ignored.
func NewInventory(slices []resourceapi.ResourceSlice) *Inventory {
	latest := map[string]int64{}
	for i := range slices {
		s := &slices[i]
		if s.Spec.Driver != names.DriverName {
			continue
		}
		if g, ok := latest[s.Spec.Pool.Name]; !ok || s.Spec.Pool.Generation > g {
			latest[s.Spec.Pool.Name] = s.Spec.Pool.Generation
		}
	}
	inv := &Inventory{Nodes: map[string]*NodeInventory{}}
	for i := range slices {
		s := &slices[i]
		if s.Spec.Driver != names.DriverName || s.Spec.Pool.Generation != latest[s.Spec.Pool.Name] {
			continue
		}
		node := inv.Nodes[s.Spec.Pool.Name]
		if node == nil {
			node = &NodeInventory{Name: s.Spec.Pool.Name, GPUs: map[int]*GPUInventory{}}
			inv.Nodes[node.Name] = node
		}
		for _, d := range s.Spec.Devices {
			minor, ok := gpuOf(d)
			if !ok {
				continue
			}
			g := node.GPUs[minor]
			if g == nil {
				g = &GPUInventory{Minor: minor}
				node.GPUs[minor] = g
			}
			g.Devices = append(g.Devices, d)
		}
	}
	for i := range slices {
		s := &slices[i]
		node := inv.Nodes[s.Spec.Pool.Name]
		if s.Spec.Driver != names.DriverName || s.Spec.Pool.Generation != latest[s.Spec.Pool.Name] || node == nil {
			continue
		}
		for _, cs := range s.Spec.SharedCounters {
			minor, ok := counterSetGPU(cs.Name)
			if g := node.GPUs[minor]; ok && g != nil {
				for name := range cs.Counters {
					if names.IsMemorySliceCounter(name) {
						g.MemorySlices++
					}
				}
			}
		}
	}
	for _, node := range inv.Nodes {
		for _, g := range node.GPUs {
			sort.Slice(g.Devices, func(i, j int) bool { return g.Devices[i].Name < g.Devices[j].Name })
		}
	}
	return inv
}

// counterSetGPU returns the minor of the GPU whose counter set is named
// name (names.CounterSet).
func counterSetGPU(name string) (int, bool) {
	minor, err := strconv.Atoi(name[strings.LastIndexByte(name, '-')+1:])
	if err != nil || minor < 0 || names.CounterSet(minor) != name {
		return 0, false
	}
	return minor, true
}

// NodeNames returns the node names in sorted order.
func (inv *Inventory) NodeNames() []string { return slices.Sorted(maps.Keys(inv.Nodes)) }

// Minors returns the node's GPU minors in numeric order.
func (n *NodeInventory) Minors() []int { return slices.Sorted(maps.Keys(n.GPUs)) }

// Resolve checks that the target exists and returns the names of its
// devices, sorted. A node without slices of the driver, or a GPU the node
// does not publish, is a usage error that lists what exists.
func (inv *Inventory) Resolve(t Target) ([]string, error) {
	node := inv.Nodes[t.Node]
	if node == nil {
		return nil, usageErrorf("unknown node %q: no ResourceSlices of driver %s in pool %q (nodes with GPUs: %s)",
			t.Node, names.DriverName, t.Node, listOrNone(inv.NodeNames()))
	}
	var minors []int
	if t.HasGPU {
		if node.GPUs[t.GPU] == nil {
			var have []string
			for _, m := range node.Minors() {
				have = append(have, names.GPUDevice(m))
			}
			return nil, usageErrorf("unknown GPU %s on node %q: it has %s", names.GPUDevice(t.GPU), t.Node, listOrNone(have))
		}
		minors = []int{t.GPU}
	} else {
		minors = node.Minors()
	}
	var devices []string
	for _, m := range minors {
		for _, d := range node.GPUs[m].Devices {
			devices = append(devices, d.Name)
		}
	}
	sort.Strings(devices)
	return devices, nil
}

// listOrNone joins names with commas, or says "none".
func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
