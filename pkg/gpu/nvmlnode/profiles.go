package nvmlnode

import (
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"

	"fmt"
	"math"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// profileSuffix is the part of a MIG profile's canonical name that follows
// "<compute>g.<memory>gb" for the profile IDs that share their slice counts
// with another profile. It is the single table of profile variants.
var profileSuffix = map[int]string{
	nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1:   "+me",
	nvml.GPU_INSTANCE_PROFILE_2_SLICE_REV1:   "+me",
	nvml.GPU_INSTANCE_PROFILE_1_SLICE_GFX:    "+gfx",
	nvml.GPU_INSTANCE_PROFILE_2_SLICE_GFX:    "+gfx",
	nvml.GPU_INSTANCE_PROFILE_3_SLICE_GFX:    "+gfx",
	nvml.GPU_INSTANCE_PROFILE_4_SLICE_GFX:    "+gfx",
	nvml.GPU_INSTANCE_PROFILE_1_SLICE_NO_ME:  "-me",
	nvml.GPU_INSTANCE_PROFILE_2_SLICE_NO_ME:  "-me",
	nvml.GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME: "+me.all",
	nvml.GPU_INSTANCE_PROFILE_2_SLICE_ALL_ME: "+me.all",
}

// memoryEighths returns how many eighths of the GPU's memory a profile of
// profileMB occupies, rounded up: this is its number of memory slices.
func memoryEighths(profileMB, totalBytes uint64) int {
	if totalBytes == 0 {
		return 0
	}
	frac := float64(profileMB) * (1 << 20) / float64(totalBytes)
	// A profile's memory is a little less than its share of the GPU; a tiny
	// epsilon keeps an exact 1/8 from rounding up to 2/8 through float error.
	return int(math.Ceil(frac*gpu.MemorySlices - 1e-9))
}

// profileName builds NVIDIA's canonical MIG profile name, e.g. "1g.10gb" or
// "1g.10gb+me": compute slices, then the profile's share of the GPU's memory
// rounded up to an eighth and expressed in whole GB of the GPU's total.
func profileName(id int, computeSlices int, profileMB, totalBytes uint64) string {
	const gib = 1 << 30
	totalGB := float64((totalBytes + gib - 1) / gib)
	memGB := uint64(math.Round(float64(memoryEighths(profileMB, totalBytes)) / gpu.MemorySlices * totalGB))
	return fmt.Sprintf("%dg.%dgb%s", computeSlices, memGB, profileSuffix[id])
}
