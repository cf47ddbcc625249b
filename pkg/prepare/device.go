package prepare

import (
	"context"
	"errors"
	"fmt"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// prepareDevice makes one device real and reports whether it created a MIG
// device. The caller holds the GPU's lock.
func (p *Preparer) prepareDevice(ctx context.Context, d *checkpoint.Device) (bool, error) {
	switch {
	case d.AdminAccess:
		return false, nil // as it is: no MIG mode, instance or daemon changed
	case d.Share != nil:
		// The claim's own MPS control daemon serves the share; it is
		// started once every device is ready.
		if err := p.setMIGMode(ctx, d.GPUUUID, false); err != nil {
			return false, err
		}
		return false, nil
	case d.MIG == nil:
		// A whole GPU is a plain CUDA device only with MIG mode off. This
		// fails, as it should, if MIG devices still exist on it.
		if err := p.setMIGMode(ctx, d.GPUUUID, false); err != nil {
			return false, err
		}
		if d.TimeSlice != "" {
			if err := p.gpus.SetTimeSlice(ctx, d.GPUUUID, d.TimeSlice); err != nil {
				return false, err
			}
		}
		return false, nil
	case d.MIG.UUID != "" && !d.MIG.Created:
		return false, nil // a pre-created instance: nothing to do
	}
	if err := p.setMIGMode(ctx, d.GPUUUID, true); err != nil {
		return false, err
	}
	inst, err := p.gpus.CreateMIG(ctx, gpu.MIGRequest{
		ParentUUID: d.GPUUUID, ProfileID: d.MIG.ProfileID,
		Placement: gpu.Placement{Start: d.MIG.Start, Size: d.MIG.Size},
	})
	if err != nil {
		return false, fmt.Errorf("create MIG device %s at %d:%d: %w", d.MIG.Profile, d.MIG.Start, d.MIG.Size, err)
	}
	d.MIG.Created, d.MIG.UUID, d.MIG.GIID, d.MIG.CIID = true, inst.UUID, inst.GIID, inst.CIID
	p.step(StepMIGCreated)
	return true, nil
}

// setMIGMode turns the GPU's MIG mode on or off. A GPU that another process
// holds open cannot change mode; the error then also names the per-node
// way around it, an offer that never needs a change.
func (p *Preparer) setMIGMode(ctx context.Context, uuid string, on bool) error {
	err := p.gpus.SetMIGMode(ctx, uuid, on)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, gpu.ErrGPUHeldOpen):
		return fmt.Errorf("turn MIG mode %s: %w; or have this node offer MIG devices or whole GPUs only (node label %s, docs/device-model.md)",
			map[bool]string{true: "on", false: "off"}[on], err, names.DeviceKindsLabel)
	default:
		return fmt.Errorf("turn MIG mode %s: %w", map[bool]string{true: "on", false: "off"}[on], err)
	}
}
