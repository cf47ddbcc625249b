package driver

import (
	"context"
	"fmt"
	"reflect"
	"sync"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// Inventory reads the node's GPUs.
type Inventory interface {
	Inventory(ctx context.Context) (*gpu.Inventory, error)
}

// nodeState is the node's current view: inventory, and the device model
// built from it and from what the plugin has prepared. Prepare resolves
// device names through it; the publisher publishes its slices.
type nodeState struct {
	staticMIGOnly bool
	sharedGPUs    bool
	// taints returns the health taints by GPU UUID and by MIG device UUID;
	// nil means none.
	taints func() (gpuTaints, migTaints map[string][]resourceapi.DeviceTaint)

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

// refresh rebuilds the model from a new inventory and the checkpoint.
func (s *nodeState) refresh(inv *gpu.Inventory, cp *checkpoint.Checkpoint) (*devicemodel.Model, error) {
	in := devicemodel.Input{
		Inventory:     inv,
		Managed:       managedBy(cp),
		StaticMIGOnly: s.staticMIGOnly,
		SharedGPUs:    s.sharedGPUs,
	}
	if s.taints != nil {
		in.GPUTaints, in.MIGTaints = s.taints()
	}
	s.mu.RLock()
	in.Offer = s.offer
	s.mu.RUnlock()
	model, err := devicemodel.Build(in)
	if err != nil {
		return nil, fmt.Errorf("build device model: %w", err)
	}
	s.mu.Lock()
	s.inv, s.model = inv, model
	s.mu.Unlock()
	return model, nil
}

// managedBy says which live MIG instances the plugin created for claims:
// those recorded with their UUID, and, for a claim still being prepared,
// the instance at a planned placement (created, not yet recorded).
func managedBy(cp *checkpoint.Checkpoint) func(gpu.MIGInstance) bool {
	uuids := map[string]bool{}
	planned := map[[3]any]bool{}
	for _, c := range cp.Claims {
		for _, d := range c.Devices {
			if d.MIG == nil {
				continue
			}
			if d.MIG.Created && d.MIG.UUID != "" {
				uuids[d.MIG.UUID] = true
			}
			if c.State == checkpoint.PrepareStarted && d.MIG.UUID == "" {
				planned[[3]any{d.GPUUUID, d.MIG.ProfileID, d.MIG.Start}] = true
			}
		}
	}
	return func(m gpu.MIGInstance) bool {
		return uuids[m.UUID] || planned[[3]any{m.ParentUUID, m.ProfileID, m.Placement.Start}]
	}
}
