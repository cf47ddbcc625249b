package prepare

import (
	"context"
	"fmt"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
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
		if err := p.gpus.SetMIGMode(ctx, d.GPUUUID, false); err != nil {
			return false, fmt.Errorf("turn MIG mode off: %w", err)
		}
		return false, nil
	case d.MIG == nil:
		// A whole GPU is a plain CUDA device only with MIG mode off. This
		// fails, as it should, if MIG devices still exist on it.
		if err := p.gpus.SetMIGMode(ctx, d.GPUUUID, false); err != nil {
			return false, fmt.Errorf("turn MIG mode off: %w", err)
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
	if err := p.gpus.SetMIGMode(ctx, d.GPUUUID, true); err != nil {
		return false, fmt.Errorf("turn MIG mode on: %w", err)
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
