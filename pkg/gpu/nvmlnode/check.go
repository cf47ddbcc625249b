package nvmlnode

import (
	"context"
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// This file holds the read-only accessors of the hardware check
// (gpu-kubelet-plugin check): each calls NVML getters only, never a call
// that changes a GPU (MIG mode, instances, resets, time slices).

// SystemInfo is what NVML reports of the node as a whole.
type SystemInfo struct {
	// DriverVersion is the kernel driver's version, e.g. "550.54.15".
	DriverVersion string
	// CUDADriverVersion is the highest CUDA version the driver supports,
	// "major.minor".
	CUDADriverVersion string
	// GPUCount is the number of GPUs NVML enumerates.
	GPUCount int
}

// System reads the driver version, the CUDA driver version and the number
// of GPUs. It is read-only: NVML getters only. A field that cannot be read
// is left empty and its error is part of the returned error; the others
// are still read.
func (n *Node) System() (SystemInfo, error) {
	var info SystemInfo
	var errs []error
	var ret nvml.Return
	if info.DriverVersion, ret = n.lib.SystemGetDriverVersion(); ret != nvml.SUCCESS {
		errs = append(errs, fmt.Errorf("read driver version: %w", nvmlError(ret)))
	}
	if cuda, ret := n.lib.SystemGetCudaDriverVersion(); ret != nvml.SUCCESS {
		errs = append(errs, fmt.Errorf("read CUDA driver version: %w", nvmlError(ret)))
	} else {
		info.CUDADriverVersion = fmt.Sprintf("%d.%d", cuda/1000, (cuda%1000)/10)
	}
	if info.GPUCount, ret = n.lib.DeviceGetCount(); ret != nvml.SUCCESS {
		errs = append(errs, fmt.Errorf("count GPUs: %w", nvmlError(ret)))
	}
	return info, errors.Join(errs...)
}

// GPUDetails is what the hardware check reads of one GPU.
type GPUDetails struct {
	// GPU is the GPU as Inventory reads it. When ReadGPUDetails fails, only
	// the fields read before the failure are set, and Lost tells a GPU
	// fallen off the bus.
	GPU gpu.GPU
	// MIGPendingEnabled is the MIG mode the GPU takes at its next reset; it
	// differs from GPU.MIGEnabled while a mode change waits for a reset.
	// Meaningful only when GPU.MIGCapable.
	MIGPendingEnabled bool
	// GPUInstances are the GPU instances that exist now, with or without
	// compute instances, in profile then creation order. Empty unless MIG
	// is enabled.
	GPUInstances []GPUInstanceDetails
}

// GPUInstanceDetails is a GPU instance that exists, with the
// compute-instance profiles it reports.
type GPUInstanceDetails struct {
	// ID is the GPU instance ID; ProfileID its GPU-instance profile.
	ID, ProfileID int
	// Placement is where it lives, in memory slices.
	Placement gpu.Placement
	// ComputeProfiles are the compute-instance profiles (shared engines)
	// the GPU instance reports, in ID order.
	ComputeProfiles []ComputeProfileInfo
}

// ComputeProfileInfo is a compute-instance profile as a GPU instance
// reports it.
type ComputeProfileInfo struct {
	// ID is NVML's compute-instance profile ID (COMPUTE_INSTANCE_PROFILE_*).
	ID int
	// Slices is the number of compute slices it spans.
	Slices int
	// Multiprocessors is its number of streaming multiprocessors.
	Multiprocessors int
	// MaxInstances is how many compute instances of it fit in the GPU
	// instance.
	MaxInstances int
}

// ReadGPUDetails reads GPU index (NVML's index) as Inventory does, with
// its pending MIG mode and its existing GPU instances' compute-instance
// profiles. It is read-only: NVML getters only; it creates no instance, so
// the compute-instance profiles of a GPU-instance profile with no instance
// cannot be read. On error the details read so far are returned with it.
func (n *Node) ReadGPUDetails(ctx context.Context, index int) (GPUDetails, error) {
	var d GPUDetails
	if err := ctx.Err(); err != nil {
		return d, err
	}
	dev, ret := n.lib.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		d.GPU.Index = index
		return d, fmt.Errorf("open GPU %d: %w", index, nvmlError(ret))
	}
	g, err := readGPU(dev, index)
	d.GPU = g
	if err != nil {
		d.GPU.Lost = isLost(err)
		return d, fmt.Errorf("read GPU %d: %w", index, err)
	}
	if !g.MIGCapable {
		return d, nil
	}
	_, pending, ret := dev.GetMigMode()
	if ret != nvml.SUCCESS {
		d.GPU.Lost = ret == nvml.ERROR_GPU_IS_LOST
		return d, fmt.Errorf("pending MIG mode of %s: %w", g.UUID, nvmlError(ret))
	}
	d.MIGPendingEnabled = pending == nvml.DEVICE_MIG_ENABLE
	if !g.MIGEnabled {
		return d, nil
	}
	for _, p := range g.MIGProfiles {
		info, ret := dev.GetGpuInstanceProfileInfo(p.ID)
		if ret != nvml.SUCCESS {
			return d, fmt.Errorf("MIG profile %s of %s: %w", p.Name, g.UUID, nvmlError(ret))
		}
		gis, ret := dev.GetGpuInstances(&info)
		if ret != nvml.SUCCESS {
			return d, fmt.Errorf("GPU instances of profile %s of %s: %w", p.Name, g.UUID, nvmlError(ret))
		}
		for _, gi := range gis {
			giInfo, ret := gi.GetInfo()
			if ret != nvml.SUCCESS {
				return d, fmt.Errorf("GPU instance of profile %s of %s: %w", p.Name, g.UUID, nvmlError(ret))
			}
			cps, err := computeProfiles(gi)
			if err != nil {
				return d, fmt.Errorf("compute profiles of GPU instance %d of %s: %w", giInfo.Id, g.UUID, err)
			}
			d.GPUInstances = append(d.GPUInstances, GPUInstanceDetails{
				ID:              int(giInfo.Id),
				ProfileID:       p.ID,
				Placement:       gpu.Placement{Start: int(giInfo.Placement.Start), Size: int(giInfo.Placement.Size)},
				ComputeProfiles: cps,
			})
		}
	}
	return d, nil
}

// computeProfiles reads the compute-instance profiles (shared engines) a
// GPU instance supports. It is read-only.
func computeProfiles(gi nvml.GpuInstance) ([]ComputeProfileInfo, error) {
	profiles, err := supportedComputeProfiles(gi)
	if err != nil {
		return nil, err
	}
	out := make([]ComputeProfileInfo, 0, len(profiles))
	for _, p := range profiles {
		out = append(out, ComputeProfileInfo{
			ID:              p.id,
			Slices:          int(p.info.SliceCount),
			Multiprocessors: int(p.info.MultiprocessorCount),
			MaxInstances:    int(p.info.InstanceCount),
		})
	}
	return out, nil
}
