package prepare

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// planWhenFree plans the claim, waiting up to HeldWait while one of its
// devices is still prepared for another claim.
func (p *Preparer) planWhenFree(ctx context.Context, claim *resourceapi.ResourceClaim) (*checkpoint.Claim, error) {
	deadline := time.NewTimer(p.opts.HeldWait)
	defer deadline.Stop()
	logged := false
	for {
		p.mu.Lock()
		released := p.released
		p.mu.Unlock()
		rec, err := p.plan(claim)
		var held *heldError
		if !errors.As(err, &held) {
			return rec, err
		}
		if !logged {
			klog.FromContext(ctx).Info("Device still prepared for another claim; waiting for its unprepare", "device", held.device, "holder", held.owner, "wait", p.opts.HeldWait)
			logged = true
		}
		select {
		case <-released:
		case <-deadline.C:
			return nil, fmt.Errorf("%w (still after %s)", err, p.opts.HeldWait)
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
	}
}

// plan resolves the claim's allocation into checkpoint devices.
func (p *Preparer) plan(claim *resourceapi.ResourceClaim) (*checkpoint.Claim, error) {
	if claim.Status.Allocation == nil {
		return nil, errors.New("claim is not allocated")
	}
	rec := &checkpoint.Claim{UID: string(claim.UID), Namespace: claim.Namespace, Name: claim.Name, State: checkpoint.PrepareStarted}
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != names.DriverName || r.Pool != p.opts.PoolName {
			continue
		}
		dev, ok := p.devices.Lookup(r.Device)
		if !ok {
			return nil, fmt.Errorf("device %s: not published by this node (pool %s)", r.Device, p.opts.PoolName)
		}
		d := checkpoint.Device{Requests: []string{r.Request}, Pool: r.Pool, Name: r.Device, GPUUUID: dev.GPU.UUID, GPUMinor: dev.GPU.Minor,
			AdminAccess: r.AdminAccess != nil && *r.AdminAccess}
		switch dev.Kind {
		case devicemodel.KindGPU:
			// A whole GPU in consumable shares is allocated with a share
			// ID; one allocated exclusively (consumable shares off when
			// the scheduler allocated it) has none and is used whole.
			if r.ShareID == nil {
				break
			}
			if d.AdminAccess {
				d.ShareID = string(*r.ShareID) // the GPU as it is, as for shared GPUs
				break
			}
			if err := p.planConsumableShare(rec.UID, &d, &r, dev.GPU.MemoryBytes); err != nil {
				return nil, fmt.Errorf("device %s: %w", r.Device, err)
			}
		case devicemodel.KindMIGPlacement:
			d.MIG = &checkpoint.MIG{ProfileID: dev.Profile.ID, Profile: dev.Profile.Name, Start: dev.Placement.Start, Size: dev.Placement.Size}
			if d.AdminAccess {
				if err := p.existingMIG(&d); err != nil {
					return nil, fmt.Errorf("device %s: %w", r.Device, err)
				}
			}
		case devicemodel.KindMIGStatic:
			d.MIG = &checkpoint.MIG{ProfileID: dev.Profile.ID, Profile: dev.Profile.Name, Start: dev.Placement.Start, Size: dev.Placement.Size,
				UUID: dev.Instance.UUID, GIID: dev.Instance.GIID, CIID: dev.Instance.CIID}
		case devicemodel.KindVFIO:
			if d.AdminAccess {
				return nil, fmt.Errorf("device %s: a GPU passed through to a VM is the VM's alone; admin access does not apply to it", r.Device)
			}
			// What its IOMMU group holds is read once the claim's
			// configuration is known (planVFIO).
			d.VFIO = &checkpoint.VFIO{BusID: dev.GPU.PCIBusID}
		case devicemodel.KindGPUShare:
			if d.AdminAccess {
				// The GPU as it is, without an MPS share. The allocation
				// still has a share ID, which the kubelet and the claim's
				// status name it by, and one claim may hold the GPU more
				// than once.
				if r.ShareID != nil {
					d.ShareID = string(*r.ShareID)
				}
				break
			}
			if err := p.planShare(rec.UID, &d, &r); err != nil {
				return nil, fmt.Errorf("device %s: %w", r.Device, err)
			}
		}
		p.mu.Lock()
		owner := p.cp.Owner(rec.UID, d)
		if owner == "" && dev.Kind == devicemodel.KindMIGPlacement && !d.AdminAccess {
			owner = p.cp.InstanceOwner(rec.UID, d.GPUUUID, dev.Profile.ID, dev.Profile.MaxInstances)
		}
		p.mu.Unlock()
		if owner != "" {
			return nil, &heldError{device: r.Device, owner: owner}
		}
		rec.Devices = append(rec.Devices, d)
	}
	return rec, nil
}

// planShare records what a share of a shared GPU was allocated: its share
// ID and the memory and compute it consumes, which become the limits of
// the claim's own MPS daemon.
func (p *Preparer) planShare(claimUID string, d *checkpoint.Device, r *resourceapi.DeviceRequestAllocationResult) error {
	if r.ShareID == nil {
		return errors.New("a shared GPU allocated without a share ID (is the DRAConsumableCapacity feature off in the scheduler?)")
	}
	if p.opts.MPS == nil {
		return errors.New("shares of a GPU are enforced through MPS, which is not available on this node")
	}
	memory, ok := r.ConsumedCapacity[names.CapacityMemory]
	if !ok || memory.Value() <= 0 {
		return fmt.Errorf("the allocation records no consumed %s", names.CapacityMemory)
	}
	compute := r.ConsumedCapacity[names.CapacityCompute]
	if c := compute.Value(); c < 0 || c > 100 {
		return fmt.Errorf("consumed %s %s is not a percentage", names.CapacityCompute, compute.String())
	}
	d.ShareID = string(*r.ShareID)
	d.Share = &checkpoint.Share{MemoryBytes: memory.Value(), ComputePercent: compute.Value()}
	d.MPSDir = p.opts.MPS.Dir(claimUID)
	return nil
}

// planConsumableShare records a consumable share of a whole GPU (NVIDIA's
// consumable shares, devicemodel.ConsumableShares) as a share: it
// coexists with the GPU's other shares and excludes exclusive use of it
// (checkpoint.Conflict). The memory it consumes, when some but not all of
// the GPU's, becomes the pinned memory limit of the claim's own MPS
// daemon, as for a share of a shared GPU. No memory (unlimited and
// counted shares by default) or all of it (memory mode by default) sets
// no limit and starts no daemon: the claim's processes use the GPU as
// they would whole, alongside the other shares' (docs/device-model.md,
// "Consumable shares"). The "shares" it consumes map to no hardware
// limit: they only count claims.
func (p *Preparer) planConsumableShare(claimUID string, d *checkpoint.Device, r *resourceapi.DeviceRequestAllocationResult, gpuMemoryBytes uint64) error {
	d.ShareID = string(*r.ShareID)
	memory := r.ConsumedCapacity[names.CapacityMemory]
	limit := memory.Value()
	if limit < 0 {
		return fmt.Errorf("consumed %s %s is negative", names.CapacityMemory, memory.String())
	}
	if all := int64(gpuMemoryBytes) / devicemodel.ShareMemoryStep * devicemodel.ShareMemoryStep; limit >= all {
		limit = 0
	}
	d.Share = &checkpoint.Share{MemoryBytes: limit}
	if limit == 0 {
		return nil
	}
	if p.opts.MPS == nil {
		return fmt.Errorf("the share's %s memory limit is enforced through MPS, which is not available on this node; ask for all of the GPU's memory (or, where the node's consumable-shares mode is unlimited or a number of shares, for none)", memory.String())
	}
	d.MPSDir = p.opts.MPS.Dir(claimUID)
	return nil
}

// existingMIG resolves admin access to a MIG placement: the device exists
// only while the claim that created it holds it, and admin access gives
// that instance without creating or destroying anything.
func (p *Preparer) existingMIG(d *checkpoint.Device) error {
	at, _ := d.Placement()
	p.mu.Lock()
	o, ok := p.cp.MIGAt(at)
	p.mu.Unlock()
	if !ok {
		return errors.New("admin access gives a MIG device that exists, and this one exists only while a claim holds it; none does now")
	}
	d.MIG.UUID, d.MIG.GIID, d.MIG.CIID = o.MIG.UUID, o.MIG.GIID, o.MIG.CIID
	return nil
}

// touchesHardware reports whether preparing d changes the node: creates a
// MIG device, sets a time slice, starts an MPS daemon or binds a GPU to
// VFIO.
func touchesHardware(d checkpoint.Device) bool {
	return !d.AdminAccess && ((d.MIG != nil && d.MIG.UUID == "") || d.TimeSlice != "" || d.MPSDir != "" || d.VFIO != nil)
}

// mergeEnv returns a copy of a with b's variables added.
func mergeEnv(a, b map[string]string) map[string]string {
	out := maps.Clone(a)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, b)
	return out
}
