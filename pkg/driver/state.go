package driver

import (
	"context"
	"fmt"
	"reflect"
	"sync"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// Inventory reads the node's GPUs.
type Inventory interface {
	Inventory(ctx context.Context) (*gpu.Inventory, error)
}

// Topology says where a GPU sits in the host (package topology reads it
// from sysfs).
type Topology interface {
	Topology(pciBusID string) gpu.Topology
}

// nodeState is the node's current view: inventory, and the device model
// built from it and from what the plugin has prepared. Prepare resolves
// device names through it; the publisher publishes its slices.
type nodeState struct {
	staticMIGOnly bool
	sharedGPUs    bool
	vfio          bool
	// consumableShares is the plugin's setting; the node's offer (its
	// label) replaces it.
	consumableShares devicemodel.ConsumableShares
	// overhead is published on the devices of the kinds it names.
	overhead devicemodel.Overhead
	// taints returns the health taints by GPU UUID and by MIG device UUID;
	// nil means none.
	taints func() (gpuTaints, migTaints map[string][]resourceapi.DeviceTaint)
	// topology, when set, says where a GPU sits, by PCI bus ID.
	topology Topology

	mu    sync.RWMutex
	inv   *gpu.Inventory
	model *devicemodel.Model
	// offer is what the node's labels let it advertise; nil: everything.
	offer *devicemodel.Offer
}

// setOffer sets what the next model offers and reports whether it changed.
func (s *nodeState) setOffer(o devicemodel.Offer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.offer != nil && reflect.DeepEqual(*s.offer, o) || s.offer == nil && reflect.DeepEqual(o, devicemodel.OfferAll) {
		return false
	}
	s.offer = &o
	return true
}

// Lookup implements prepare.Devices.
func (s *nodeState) Lookup(name string) (*devicemodel.Device, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.model == nil {
		return nil, false
	}
	d, ok := s.model.Devices[name]
	return d, ok
}

// current returns the inventory and model last built.
func (s *nodeState) current() (*gpu.Inventory, *devicemodel.Model) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.inv, s.model
}

// migOwner says which live MIG devices the plugin created for claims
// (*prepare.Preparer): those recorded, and for a claim still being
// prepared, the one at a planned placement (created, not yet recorded).
type migOwner interface {
	ManagesMIG(m gpu.MIGInstance) bool
}

// refresh rebuilds the model from a new inventory and the plugin's claims.
func (s *nodeState) refresh(ctx context.Context, inv *gpu.Inventory, owner migOwner) error {
	in := devicemodel.Input{
		Inventory:        inv,
		Managed:          owner.ManagesMIG,
		StaticMIGOnly:    s.staticMIGOnly,
		SharedGPUs:       s.sharedGPUs,
		VFIO:             s.vfio,
		ConsumableShares: s.consumableShares,
		Overhead:         s.overhead,
	}
	if s.taints != nil {
		in.GPUTaints, in.MIGTaints = s.taints()
	}
	if s.topology != nil {
		in.Topology = map[string]gpu.Topology{}
		for _, g := range inv.GPUs {
			if g.PCIBusID != "" {
				in.Topology[g.PCIBusID] = s.topology.Topology(g.PCIBusID)
			}
		}
	}
	s.mu.RLock()
	in.Offer = s.offer
	s.mu.RUnlock()
	model, err := devicemodel.Build(in)
	if err != nil {
		return fmt.Errorf("build device model: %w", err)
	}
	s.mu.Lock()
	prev := s.model
	s.inv, s.model = inv, model
	s.mu.Unlock()
	// GPU instances someone else made that are no single MIG device are
	// offered as nothing: say so once, when they appear or change.
	if len(model.Withheld) > 0 && (prev == nil || !reflect.DeepEqual(prev.Withheld, model.Withheld)) {
		for _, w := range model.Withheld {
			klog.FromContext(ctx).Info("GPU instance is not offered; its memory slices stay occupied", "gpu", w.GPU, "giid", w.GIID, "profile", w.Profile, "placement", w.Placement.String(), "reason", w.Reason)
		}
	}
	return nil
}
