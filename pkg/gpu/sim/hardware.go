package sim

import (
	"fmt"
	"sort"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
)

// This file is the simulator's one source of truth for what a GPU model
// reports: NVIDIA's published MIG tables, one per model. go-nvml's mock GPU
// configurations supply only what the tables do not cover (architecture,
// brand, compute capability, PCI device ID, the set of compute-instance
// profiles and their placements); every value below replaces the mock's.
//
// Source of the engine counts, instance counts and memory fractions:
// NVIDIA Multi-Instance GPU User Guide, "Supported MIG Profiles",
// https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html
// (guide version v580; the tables are unchanged in the later unversioned
// page). Placements are those of "nvidia-smi mig -lgipp" in the same guide
// ("Getting Started with MIG"), counted in memory slices. The guide gives
// SMs only as fractions ("1/7"); the SM counts are what nvidia-smi mig
// -lgip reports on the hardware, see docs/hardware-models.md for which are
// verified and which are not.

// PublishedProfile is one row of a published MIG table: a GPU-instance
// profile as the hardware reports it.
type PublishedProfile struct {
	// ID is NVML's GPU_INSTANCE_PROFILE_* the row is created with.
	ID int
	// Name is NVIDIA's name of the profile, e.g. "1g.20gb".
	Name string
	// ComputeSlices is the "Ng" of the name.
	ComputeSlices int
	// MemorySlices is the profile's memory in memory slices of the GPU
	// (eighths on A100, H100, H200 and B200, quarters on A30); it is the
	// size of each placement.
	MemorySlices    int
	Multiprocessors int
	CopyEngines     int
	Decoders        int
	JPEGEngines     int
	OFAEngines      int
	MaxInstances    int
	// Starts are the placements' first memory slices.
	Starts []int
}

// PublishedModel is a GPU model as NVIDIA publishes it.
type PublishedModel struct {
	// Product is NVML's product name.
	Product string
	// MemoryMB is the GPU's memory the simulator reports, in MiB.
	MemoryMB uint64
	// MemorySlices is how many memory slices the GPU's memory is cut
	// into: 8 on A100, H100, H200 and B200, 4 on A30 (the guide's
	// "Fraction of Memory" column: eighths, quarters). Zero without MIG.
	MemorySlices int
	// Source names the table the profiles were copied from.
	Source string
	// Profiles are the model's GPU-instance profiles.
	Profiles []PublishedProfile
	// base supplies what the table does not: architecture, brand, compute
	// capability, PCI device ID and the compute-instance profile sets.
	base gpus.Config
}

const guideURL = "https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html (MIG User Guide v580)"

var sevenStarts = []int{0, 1, 2, 3, 4, 5, 6}

// a100Profiles is the guide's A100 table (A100-SXM4-40GB; the 80GB card has
// the same rows with twice the memory). SMs: 14 per slice, 98 for 7g, as
// nvidia-smi mig -lgip shows on A100.
func a100Profiles(gb int) []PublishedProfile {
	name := func(c, eighths int) string { return fmt.Sprintf("%dg.%dgb", c, gb*eighths/8) }
	return []PublishedProfile{
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE, name(1, 1), 1, 1, 14, 1, 0, 0, 0, 7, sevenStarts},
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, name(1, 1) + "+me", 1, 1, 14, 1, 1, 1, 1, 1, sevenStarts},
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2, name(1, 2), 1, 2, 14, 1, 1, 0, 0, 4, []int{0, 2, 4, 6}},
		{nvml.GPU_INSTANCE_PROFILE_2_SLICE, name(2, 2), 2, 2, 28, 2, 1, 0, 0, 3, []int{0, 2, 4}},
		{nvml.GPU_INSTANCE_PROFILE_3_SLICE, name(3, 4), 3, 4, 42, 3, 2, 0, 0, 2, []int{0, 4}},
		{nvml.GPU_INSTANCE_PROFILE_4_SLICE, name(4, 4), 4, 4, 56, 4, 2, 0, 0, 1, []int{0}},
		{nvml.GPU_INSTANCE_PROFILE_7_SLICE, name(7, 8), 7, 8, 98, 7, 5, 1, 1, 1, []int{0}},
	}
}

// hopperProfiles is the guide's H100 80GB table, and its H200 141GB table,
// which has the same engines. SMs: 16 per 1g, 26 for the double-memory 1g,
// 32/60/64/132, as nvidia-smi mig -lgip shows on H100 80GB HBM3.
func hopperProfiles(names [7]string) []PublishedProfile {
	return []PublishedProfile{
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE, names[0], 1, 1, 16, 1, 1, 1, 0, 7, sevenStarts},
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, names[1], 1, 1, 16, 1, 1, 1, 1, 1, sevenStarts},
		{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2, names[2], 1, 2, 26, 1, 1, 1, 0, 4, []int{0, 2, 4, 6}},
		{nvml.GPU_INSTANCE_PROFILE_2_SLICE, names[3], 2, 2, 32, 2, 2, 2, 0, 3, []int{0, 2, 4}},
		{nvml.GPU_INSTANCE_PROFILE_3_SLICE, names[4], 3, 4, 60, 3, 3, 3, 0, 2, []int{0, 4}},
		{nvml.GPU_INSTANCE_PROFILE_4_SLICE, names[5], 4, 4, 64, 4, 4, 4, 0, 1, []int{0}},
		{nvml.GPU_INSTANCE_PROFILE_7_SLICE, names[6], 7, 8, 132, 8, 7, 7, 1, 1, []int{0}},
	}
}

// b200Profiles is the guide's B200 180GB table. It lists one NVDEC and one
// JPEG for every profile, and that is what is recorded. The SMs are not
// published for B200 and stay go-nvml's (18 per slice, 126 for 7g).
var b200Profiles = []PublishedProfile{
	{nvml.GPU_INSTANCE_PROFILE_1_SLICE, "1g.23gb", 1, 1, 18, 2, 1, 1, 0, 7, sevenStarts},
	{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, "1g.23gb+me", 1, 1, 18, 2, 1, 1, 1, 1, sevenStarts},
	{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2, "1g.45gb", 1, 2, 18, 2, 1, 1, 0, 4, []int{0, 2, 4, 6}},
	{nvml.GPU_INSTANCE_PROFILE_2_SLICE, "2g.45gb", 2, 2, 36, 3, 1, 1, 0, 3, []int{0, 2, 4}},
	{nvml.GPU_INSTANCE_PROFILE_3_SLICE, "3g.90gb", 3, 4, 54, 6, 1, 1, 0, 2, []int{0, 4}},
	{nvml.GPU_INSTANCE_PROFILE_4_SLICE, "4g.90gb", 4, 4, 72, 8, 1, 1, 0, 1, []int{0}},
	{nvml.GPU_INSTANCE_PROFILE_7_SLICE, "7g.180gb", 7, 8, 126, 16, 1, 1, 1, 1, []int{0}},
}

// gb200Profiles is GB200 (186GB) as NVIDIA's mig-parted default
// configuration names its profiles (1g.23gb, 1g.23gb+me, 1g.47gb, 2g.47gb,
// 3g.93gb, 4g.93gb, 7g.186gb, with the same instance counts as B200) and
// the guide's "Supported GPUs" page lists it (GB100, 186GB, 7 instances).
// The guide has no GB200 profile table: engines and SMs are NOT published
// for GB200 and are B200's (the same GB100 GPU), see
// docs/hardware-models.md.
var gb200Profiles = []PublishedProfile{
	{nvml.GPU_INSTANCE_PROFILE_1_SLICE, "1g.23gb", 1, 1, 18, 2, 1, 1, 0, 7, sevenStarts},
	{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, "1g.23gb+me", 1, 1, 18, 2, 1, 1, 1, 1, sevenStarts},
	{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2, "1g.47gb", 1, 2, 18, 2, 1, 1, 0, 4, []int{0, 2, 4, 6}},
	{nvml.GPU_INSTANCE_PROFILE_2_SLICE, "2g.47gb", 2, 2, 36, 3, 1, 1, 0, 3, []int{0, 2, 4}},
	{nvml.GPU_INSTANCE_PROFILE_3_SLICE, "3g.93gb", 3, 4, 54, 6, 1, 1, 0, 2, []int{0, 4}},
	{nvml.GPU_INSTANCE_PROFILE_4_SLICE, "4g.93gb", 4, 4, 72, 8, 1, 1, 0, 1, []int{0}},
	{nvml.GPU_INSTANCE_PROFILE_7_SLICE, "7g.186gb", 7, 8, 126, 16, 1, 1, 1, 1, []int{0}},
}

// a30Profiles is the guide's A30-24GB table: four memory slices, not
// eight, so 1g.6gb is a quarter of the memory and its placements are
// 0..3. SMs: 14 per slice, 56 for 4g (A30 has 56 SMs), as go-nvml's A30
// configuration has them. Placements are go-nvml's A30 configuration's
// (nvidia-smi mig -lgipp on A30: 1g at 0..3, 2g at 0 and 2, 4g at 0).
var a30Profiles = []PublishedProfile{
	{nvml.GPU_INSTANCE_PROFILE_1_SLICE, "1g.6gb", 1, 1, 14, 1, 0, 0, 0, 4, []int{0, 1, 2, 3}},
	{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, "1g.6gb+me", 1, 1, 14, 1, 1, 1, 1, 1, []int{0, 1, 2, 3}},
	{nvml.GPU_INSTANCE_PROFILE_2_SLICE, "2g.12gb", 2, 2, 28, 2, 2, 0, 0, 2, []int{0, 2}},
	{nvml.GPU_INSTANCE_PROFILE_2_SLICE_REV1, "2g.12gb+me", 2, 2, 28, 2, 2, 1, 1, 1, []int{0, 2}},
	{nvml.GPU_INSTANCE_PROFILE_4_SLICE, "4g.24gb", 4, 4, 56, 4, 4, 1, 1, 1, []int{0}},
}

// Published GPU models, by the simulator's short name.
var (
	// L40S and L4 have no MIG: no profiles, and NVML answers
	// ERROR_NOT_SUPPORTED to their MIG calls. Name, memory (as nvidia-smi
	// reports it), compute capability and PCI device ID are the hardware's;
	// go-nvml's mock package has no configuration of them.
	L40S = PublishedModel{
		Product: "NVIDIA L40S", MemoryMB: 46068, Source: "NVIDIA L40S datasheet (no MIG)",
		base: gpus.Config{Architecture: nvml.DEVICE_ARCH_ADA, Brand: nvml.BRAND_NVIDIA, CudaMajor: 8, CudaMinor: 9, PciDeviceId: 0x26B910DE},
	}
	L4 = PublishedModel{
		Product: "NVIDIA L4", MemoryMB: 23034, Source: "NVIDIA L4 datasheet (no MIG)",
		base: gpus.Config{Architecture: nvml.DEVICE_ARCH_ADA, Brand: nvml.BRAND_NVIDIA, CudaMajor: 8, CudaMinor: 9, PciDeviceId: 0x27B810DE},
	}

	A100SXM440GB = PublishedModel{
		Product: "NVIDIA A100-SXM4-40GB", MemoryMB: 40960, MemorySlices: 8, Source: guideURL + ", A100 table",
		Profiles: a100Profiles(40), base: gpus.A100_SXM4_40GB,
	}
	A100SXM480GB = PublishedModel{
		Product: "NVIDIA A100-SXM4-80GB", MemoryMB: 81920, MemorySlices: 8, Source: guideURL + ", A100 table (80GB names)",
		Profiles: a100Profiles(80), base: gpus.A100_SXM4_80GB,
	}
	H100SXM580GB = PublishedModel{
		Product: "NVIDIA H100 80GB HBM3", MemoryMB: 81920, MemorySlices: 8, Source: guideURL + ", H100 80GB table",
		Profiles: hopperProfiles([7]string{"1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"}),
		base:     gpus.H100_SXM5_80GB,
	}
	H200SXM5141GB = PublishedModel{
		Product: "NVIDIA H200", MemoryMB: 144384, MemorySlices: 8, Source: guideURL + ", H200 141GB table",
		Profiles: hopperProfiles([7]string{"1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"}),
		base:     gpus.H200_SXM5_141GB,
	}
	// GH200 96GB: the Hopper GPU of a Grace Hopper superchip. Product
	// name as nvidia-smi -L prints it (NVIDIA's extended-resources demo
	// mig-1g-12gb.yaml); PCI device ID 0x2342 (mig-parted's "GH200"
	// device filter). Profile names and instance counts are mig-parted's
	// H100-96GB / GH200 configurations (1g.12gb x7, 1g.12gb+me x1,
	// 1g.24gb x4, 2g.24gb x3, 3g.48gb x2, 4g.48gb x1); engines, SMs and
	// placements are H100's (the same GH100), see docs/hardware-models.md.
	GH20096GB = PublishedModel{
		Product: "NVIDIA GH200 96GB HBM3", MemoryMB: 98304, MemorySlices: 8,
		Source:   "profile names, instances: NVIDIA mig-parted config-default.yaml (H100-96GB, GH200); engines, SMs, placements: " + guideURL + ", H100 80GB table",
		Profiles: hopperProfiles([7]string{"1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.48gb", "4g.48gb", "7g.96gb"}),
		base:     gh200Base(),
	}
	B200SXM180GB = PublishedModel{
		Product: "NVIDIA B200", MemoryMB: 184320, MemorySlices: 8, Source: guideURL + ", B200 180GB table",
		Profiles: b200Profiles, base: gpus.B200_SXM5_180GB,
	}
	// GB200 (the Blackwell GPU of a GB200 superchip, 186GB, NVLink
	// fabric attached): product name and PCI device ID (0x2941, mig-parted's
	// "GB200 HGX" device filter) as NVIDIA names them; the rest is B200's
	// (GB100, compute capability 10.0), see gb200Profiles.
	GB200186GB = PublishedModel{
		Product: "NVIDIA GB200", MemoryMB: 190464, MemorySlices: 8,
		Source:   "profile names: NVIDIA mig-parted config-default.yaml (GB200 HGX); memory, instances: " + guideURL + ", Supported GPUs; engines, SMs: B200's (not published for GB200)",
		Profiles: gb200Profiles, base: gb200Base(),
	}
	// A30 24GB (PCIe). NVML's product name on the hardware is "NVIDIA
	// A30"; go-nvml's configuration calls it "NVIDIA A30-PCIE-24GB".
	// Ampere: a MIG mode change waits for a GPU reset, as on A100.
	A3024GB = PublishedModel{
		Product: "NVIDIA A30", MemoryMB: 24576, MemorySlices: 4, Source: guideURL + ", A30-24GB table",
		Profiles: a30Profiles, base: gpus.A30_PCIE_24GB,
	}
)

// gb200Base is go-nvml's B200 configuration with GB200's PCI device ID.
func gb200Base() gpus.Config {
	cfg := gpus.B200_SXM5_180GB
	cfg.PciDeviceId = 0x294110DE
	return cfg
}

// gh200Base is go-nvml's H100 configuration with GH200's PCI device ID.
func gh200Base() gpus.Config {
	cfg := gpus.H100_SXM5_80GB
	cfg.PciDeviceId = 0x234210DE
	return cfg
}

// config returns the go-nvml configuration of a simulated GPU of model m.
func (m PublishedModel) config() gpus.Config {
	cfg := m.base
	cfg.Name = m.Product
	cfg.MemoryMB = m.MemoryMB
	mig := gpus.MIGProfileConfig{
		GpuInstanceProfiles:       map[int]nvml.GpuInstanceProfileInfo{},
		GpuInstancePlacements:     map[int][]nvml.GpuInstancePlacement{},
		ComputeInstanceProfiles:   map[int]map[int]nvml.ComputeInstanceProfileInfo{},
		ComputeInstancePlacements: m.base.MIGProfiles.ComputeInstancePlacements,
	}
	// standardSMs is the SM count of a compute instance of n slices that
	// does not fill its GPU instance: that of the standard n-slice GPU
	// instance (for n = 3 on H100: 60).
	standardSMs := map[int]uint32{}
	for _, p := range m.Profiles {
		if p.ID != nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1 && p.ID != nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2 {
			standardSMs[p.ComputeSlices] = uint32(p.Multiprocessors)
		}
	}
	for _, p := range m.Profiles {
		mig.GpuInstanceProfiles[p.ID] = nvml.GpuInstanceProfileInfo{
			Id:                  uint32(p.ID),
			IsP2pSupported:      m.base.MIGProfiles.GpuInstanceProfiles[p.ID].IsP2pSupported,
			SliceCount:          uint32(p.ComputeSlices),
			InstanceCount:       uint32(p.MaxInstances),
			MultiprocessorCount: uint32(p.Multiprocessors),
			CopyEngineCount:     uint32(p.CopyEngines),
			DecoderCount:        uint32(p.Decoders),
			JpegCount:           uint32(p.JPEGEngines),
			OfaCount:            uint32(p.OFAEngines),
			MemorySizeMB:        uint64(p.MemorySlices) * m.MemoryMB / uint64(m.MemorySlices),
		}
		var pls []nvml.GpuInstancePlacement
		for _, s := range p.Starts {
			pls = append(pls, nvml.GpuInstancePlacement{Start: uint32(s), Size: uint32(p.MemorySlices)})
		}
		mig.GpuInstancePlacements[p.ID] = pls
		// A compute instance that fills the GPU instance has all its SMs
		// and engines, as nvidia-smi mig -cci without a profile gives;
		// a smaller one has the SMs of the standard GPU instance of its
		// size.
		cis := map[int]nvml.ComputeInstanceProfileInfo{}
		for id, ci := range m.base.MIGProfiles.ComputeInstanceProfiles[p.ID] {
			ci.MultiprocessorCount = standardSMs[int(ci.SliceCount)]
			if int(ci.SliceCount) == p.ComputeSlices {
				ci.MultiprocessorCount = uint32(p.Multiprocessors)
			}
			ci.SharedCopyEngineCount = uint32(p.CopyEngines)
			ci.SharedDecoderCount = uint32(p.Decoders)
			ci.SharedJpegCount = uint32(p.JPEGEngines)
			ci.SharedOfaCount = uint32(p.OFAEngines)
			cis[id] = ci
		}
		mig.ComputeInstanceProfiles[p.ID] = cis
	}
	cfg.MIGProfiles = mig
	return cfg
}

// PublishedModels returns the published model of every GPU of the
// simulated node modelName, in PCI order.
func PublishedModels(modelName string) ([]PublishedModel, error) {
	m, err := lookupModel(modelName)
	if err != nil {
		return nil, err
	}
	return append([]PublishedModel(nil), m.gpus...), nil
}

// PublishedProducts returns every published model, sorted by product name.
func PublishedProducts() []PublishedModel {
	out := []PublishedModel{A3024GB, A100SXM440GB, A100SXM480GB, H100SXM580GB, GH20096GB, H200SXM5141GB, B200SXM180GB, GB200186GB}
	sort.Slice(out, func(a, b int) bool { return out[a].Product < out[b].Product })
	return out
}
