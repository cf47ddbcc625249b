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

// profileName builds NVIDIA's canonical MIG profile name, e.g. "1g.10gb" or
// "1g.10gb+me": compute slices, then the profile's share of the GPU's memory
// (its memory slices of the GPU's) in whole GB of the GPU's total.
func profileName(id, computeSlices, memorySlices, gpuMemorySlices int, totalBytes uint64) string {
	const gib = 1 << 30
	totalGB := float64((totalBytes + gib - 1) / gib)
	var memGB uint64
	if gpuMemorySlices > 0 {
		memGB = uint64(math.Round(float64(memorySlices) / float64(gpuMemorySlices) * totalGB))
	}
	return fmt.Sprintf("%dg.%dgb%s", computeSlices, memGB, profileSuffix[id])
}

// memorySlicesOf returns how many memory slices a profile of profileMB
// occupies on a GPU of gpuMemorySlices slices and totalBytes of memory,
// rounded up. It is what a profile without placements is counted as;
// NVML's placements say it for every other profile.
func memorySlicesOf(profileMB, totalBytes uint64, gpuMemorySlices int) int {
	if totalBytes == 0 {
		return 0
	}
	frac := float64(profileMB) * (1 << 20) / float64(totalBytes)
	// A profile's memory is a little less than its share of the GPU; a tiny
	// epsilon keeps an exact share from rounding up through float error.
	return int(math.Ceil(frac*float64(gpuMemorySlices) - 1e-9))
}

// gpuMemorySlices is how many memory slices a GPU has, from its
// GPU-instance profiles' placements: the end of the placement that ends
// last.
//
// NVML has no call for the number itself. Its placements count memory
// slices (nvmlGpuInstancePlacement_t: "index of first occupied memory
// slice", "number of memory slices occupied"), and some profile's
// placement reaches the GPU's last slice: the full profile (7g.80gb on
// H100, 4g.24gb on A30) spans them all at 0. The largest end is used
// rather than the full profile's size because which profile is full
// differs by GPU (4_SLICE is the whole A30 and half an H100) and a driver
// may not list it; the largest end needs no table of GPUs, and equals the
// full profile's size whenever that one is listed. Memory fractions
// (MemorySizeMB over the GPU's memory) are no substitute: they do not say
// whether a quarter is one slice of four or two of eight.
func gpuMemorySlices(placements [][]gpu.Placement) int {
	n := 0
	for _, pls := range placements {
		for _, pl := range pls {
			n = max(n, pl.Start+pl.Size)
		}
	}
	return n
}
