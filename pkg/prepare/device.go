package prepare

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// prepareDevice makes one device real and reports whether it created a MIG
// device. The caller holds the GPU's lock.
func (p *Preparer) prepareDevice(ctx context.Context, d *checkpoint.Device) (bool, error) {
	switch {
	case d.VFIO != nil:
		return false, p.bindVFIO(ctx, d)
	case d.AdminAccess:
		return false, nil // as it is: no MIG mode, instance or daemon changed
	case d.Share != nil:
		// The claim's own MPS control daemon serves the share; it is
		// started once every device is ready.
		if err := p.setMIGMode(ctx, d, false); err != nil {
			return false, err
		}
		return false, nil
	case d.MIG == nil:
		// A whole GPU is a plain CUDA device only with MIG mode off. This
		// fails, as it should, if MIG devices still exist on it.
		if err := p.setMIGMode(ctx, d, false); err != nil {
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
	if err := p.setMIGMode(ctx, d, true); err != nil {
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

// setMIGMode turns the MIG mode of d's GPU on or off. A GPU that another
// process holds open cannot change mode; the error then also names those
// processes, where they can be found, and the per-node way around it, an
// offer that never needs a change.
func (p *Preparer) setMIGMode(ctx context.Context, d *checkpoint.Device, on bool) error {
	what := map[bool]string{true: "on", false: "off"}[on]
	err := p.gpus.SetMIGMode(ctx, d.GPUUUID, on)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, gpu.ErrGPUHeldOpen):
		held := ""
		if p.opts.GPUHolders != nil {
			switch holders, herr := p.opts.GPUHolders(d.GPUMinor); {
			case herr != nil:
				klog.FromContext(ctx).Error(herr, "Could not find what holds the GPU open", "gpu", d.GPUUUID)
			case len(holders) > 0:
				held = fmt.Sprintf(" (held open by %s)", strings.Join(holders, ", "))
			}
		}
		return fmt.Errorf("turn MIG mode %s: %w%s; or have this node offer MIG devices or whole GPUs only (node label %s, docs/device-model.md)",
			what, err, held, names.DeviceKindsLabel)
	default:
		return fmt.Errorf("turn MIG mode %s: %w", what, err)
	}
}
