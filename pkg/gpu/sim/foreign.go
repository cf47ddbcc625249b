package sim

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// CreateGPUInstance creates on GPU index, as an administrator with
// nvidia-smi or another tool would, a GPU instance of GPU-instance profile
// giProfile (nvml.GPU_INSTANCE_PROFILE_*) at memory slice start, and in it
// one compute instance of each of ciProfiles
// (nvml.COMPUTE_INSTANCE_PROFILE_*). Without ciProfiles it leaves a GPU
// instance without any compute instance, which is no MIG device; with
// several it makes as many MIG devices that share one GPU instance. It
// returns the GPU instance's ID.
func (n *Node) CreateGPUInstance(index, giProfile, start int, ciProfiles ...int) (int, error) {
	if index < 0 || index >= len(n.Devices) {
		return 0, fmt.Errorf("no GPU %d", index)
	}
	dev := n.Devices[index]
	info, ret := dev.GetGpuInstanceProfileInfo(giProfile)
	if ret != nvml.SUCCESS {
		return 0, fmt.Errorf("GPU instance profile %d of GPU %d: %s", giProfile, index, nvml.ErrorString(ret))
	}
	possible, ret := dev.GetGpuInstancePossiblePlacements(&info)
	if ret != nvml.SUCCESS {
		return 0, fmt.Errorf("placements of profile %d on GPU %d: %s", giProfile, index, nvml.ErrorString(ret))
	}
	placement := nvml.GpuInstancePlacement{Start: uint32(start), Size: 1}
	for _, p := range possible {
		if p.Start == uint32(start) {
			placement = p
		}
	}
	gi, ret := dev.CreateGpuInstanceWithPlacement(&info, &placement)
	if ret != nvml.SUCCESS {
		return 0, fmt.Errorf("create GPU instance of profile %d at %d on GPU %d: %s", giProfile, start, index, nvml.ErrorString(ret))
	}
	giInfo, ret := gi.GetInfo()
	if ret != nvml.SUCCESS {
		return 0, fmt.Errorf("read GPU instance on GPU %d: %s", index, nvml.ErrorString(ret))
	}
	for _, cp := range ciProfiles {
		ci, ret := gi.GetComputeInstanceProfileInfo(cp, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
		if ret != nvml.SUCCESS {
			return 0, fmt.Errorf("compute instance profile %d of GPU instance %d on GPU %d: %s", cp, giInfo.Id, index, nvml.ErrorString(ret))
		}
		if _, ret := gi.CreateComputeInstance(&ci); ret != nvml.SUCCESS {
			return 0, fmt.Errorf("create compute instance of profile %d in GPU instance %d on GPU %d: %s", cp, giInfo.Id, index, nvml.ErrorString(ret))
		}
	}
	return int(giInfo.Id), nil
}
