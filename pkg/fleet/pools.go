package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/google/uuid"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/resourceslice"

	cdslices "github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/slices"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/fleet/peer"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/publish"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// Inventories reads a simulated node's inventory per model name.
type Inventories func(ctx context.Context, model string) (*gpu.Inventory, error)

// SimulatedInventories reads each simulated model's inventory once,
// through the plugin's own NVML code.
func SimulatedInventories() Inventories {
	var mu sync.Mutex
	cache := map[string]*gpu.Inventory{}
	return func(ctx context.Context, model string) (*gpu.Inventory, error) {
		mu.Lock()
		defer mu.Unlock()
		if inv, ok := cache[model]; ok {
			return inv, nil
		}
		node, err := nvmlnode.Open(nvmlnode.Options{Simulate: model})
		if err != nil {
			return nil, err
		}
		defer node.Close()
		inv, err := node.Inventory(ctx)
		if err != nil {
			return nil, fmt.Errorf("read inventory of %s: %w", model, err)
		}
		cache[model] = inv
		return inv, nil
	}
}

// pool is one simulated node's pool, published by the plugin's own code:
// the device model built from the node's inventory and labels, kept in the
// API server by a publish.Publisher, as the plugin on that node would. A
// peer pool is instead the pool NVIDIA's driver publishes for the same
// hardware (package peer), kept by the same publisher.
type pool struct {
	node string
	in   devicemodel.Input
	// peer: slices are NVIDIA's shape, not our device model's.
	peer   bool
	slices []resourceslice.Slice
	pub    *publish.Publisher
	// clique is the node's NVLink clique when the fleet runs a
	// ComputeDomain: cdPub then publishes the node's pool of the
	// ComputeDomain driver, built by the node plugin's own code.
	clique string
	cdPub  *publish.Publisher
}

// NodeInput is what the plugin on simulated node `node` of a fleet would
// build its pool from: the model's inventory, with GPU UUIDs of the node's
// own so that no two nodes share one, and the GPUs where the simulated
// host's sysfs puts them (pcieRoot, numaNode).
func NodeInput(node string, inv *gpu.Inventory, offer devicemodel.Offer, shared bool) (devicemodel.Input, error) {
	own := *inv
	own.GPUs = append([]gpu.GPU(nil), inv.GPUs...)
	for i := range own.GPUs {
		sum := sha256.Sum256(fmt.Appendf(nil, "%s/%s", node, own.GPUs[i].UUID))
		u, err := uuid.FromBytes(sum[:16])
		if err != nil {
			return devicemodel.Input{}, fmt.Errorf("UUID of GPU %d of node %s: %w", i, node, err)
		}
		own.GPUs[i].UUID = "GPU-" + u.String()
	}
	topo, err := simhost.Topology(&own)
	if err != nil {
		return devicemodel.Input{}, fmt.Errorf("topology of node %s: %w", node, err)
	}
	return devicemodel.Input{Inventory: &own, SharedGPUs: shared, Offer: &offer, Topology: topo}, nil
}

// newPool builds a node's model from NodeInput, or NVIDIA's pool for the
// same input if peer is set.
func newPool(node string, inv *gpu.Inventory, offer devicemodel.Offer, shared, peer bool) (*pool, error) {
	in, err := NodeInput(node, inv, offer, shared)
	if err != nil {
		return nil, err
	}
	p := &pool{node: node, in: in, peer: peer}
	if err := p.rebuild(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *pool) rebuild() error {
	if p.peer {
		s, err := peer.Slices(p.in.Inventory, p.in.Topology)
		if err != nil {
			return fmt.Errorf("build NVIDIA's pool of node %s: %w", p.node, err)
		}
		p.slices = s
		return nil
	}
	m, err := devicemodel.Build(p.in)
	if err != nil {
		return fmt.Errorf("build device model of node %s: %w", p.node, err)
	}
	p.slices = m.Slices
	return nil
}

// stats counts the pool's slices and devices.
func (p *pool) stats() (slices, devices int) {
	for _, s := range p.slices {
		devices += len(s.Devices)
	}
	return len(p.slices), devices
}

// resourceSlices are the pool's ResourceSlice objects as the kubeletplugin
// helper names them (both drivers publish through it).
func (p *pool) resourceSlices() []resourceapi.ResourceSlice {
	return (&devicemodel.Model{Slices: p.slices}).ResourceSlices(p.node)
}

// start publishes the pool; it returns once the publisher's informer has
// synced and the slices are handed over.
func (p *pool) start(ctx context.Context, client kubernetes.Interface) error {
	p.pub = publish.New(publish.Options{DriverName: names.DriverName, NodeName: p.node, Client: client})
	if _, err := p.pub.Publish(ctx, p.slices); err != nil {
		return fmt.Errorf("publish pool of node %s: %w", p.node, err)
	}
	if p.clique == "" {
		return nil
	}
	p.cdPub = publish.New(publish.Options{DriverName: names.ComputeDomainDriverName, NodeName: p.node, Client: client})
	if _, err := p.cdPub.Publish(ctx, cdslices.Slices(p.clique)); err != nil {
		return fmt.Errorf("publish ComputeDomain pool of node %s: %w", p.node, err)
	}
	return nil
}

// created is how many slices the pool's publishers created.
func (p *pool) created() int64 {
	n := p.pub.Stats().NumCreates
	if p.cdPub != nil {
		n += p.cdPub.Stats().NumCreates
	}
	return n
}

// stop stops the pool's publishers.
func (p *pool) stop() {
	if p.pub != nil {
		p.pub.Stop()
	}
	if p.cdPub != nil {
		p.cdPub.Stop()
	}
}

// bytes is the size of the pool's ResourceSlice objects in JSON, as the
// plugin sends them.
func (p *pool) bytes() (int, error) {
	n := 0
	for _, s := range p.resourceSlices() {
		data, err := json.Marshal(&s)
		if err != nil {
			return 0, fmt.Errorf("encode slice of node %s: %w", p.node, err)
		}
		n += len(data)
	}
	return n, nil
}

// device finds a published device by name, with the counter sets of its pool.
func (p *pool) device(name string) (*resourceapi.Device, bool) {
	for _, s := range p.slices {
		for i := range s.Devices {
			if s.Devices[i].Name == name {
				return &s.Devices[i], true
			}
		}
	}
	return nil, false
}

// counterSets are the pool's counter sets by name.
func (p *pool) counterSets() map[string]resourceapi.CounterSet {
	out := map[string]resourceapi.CounterSet{}
	for _, s := range p.slices {
		for _, cs := range s.SharedCounters {
			out[cs.Name] = cs
		}
	}
	return out
}
