package sim

import (
	"fmt"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// publishedRow is a row of NVIDIA's "Supported MIG Profiles" tables as
// recorded in docs/hardware-models.md: name, memory slices (eighths of
// the memory, quarters on A30), SMs, copy engines, NVDEC, JPEG, OFA, max
// instances, then placements.
type publishedRow struct {
	id                                       int
	name                                     string
	slices, sms, ce, dec, jpeg, ofa, maxInst int
	placements                               string
}

const (
	p1  = nvml.GPU_INSTANCE_PROFILE_1_SLICE
	p1m = nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1
	p1d = nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2
	p2  = nvml.GPU_INSTANCE_PROFILE_2_SLICE
	p2m = nvml.GPU_INSTANCE_PROFILE_2_SLICE_REV1
	p3  = nvml.GPU_INSTANCE_PROFILE_3_SLICE
	p4  = nvml.GPU_INSTANCE_PROFILE_4_SLICE
	p7  = nvml.GPU_INSTANCE_PROFILE_7_SLICE
	all = "0:1 1:1 2:1 3:1 4:1 5:1 6:1"
)

func a100Rows(gb int) []publishedRow {
	n := func(c, e int) string { return fmt.Sprintf("%dg.%dgb", c, gb*e/8) }
	return []publishedRow{
		{p1, n(1, 1), 1, 14, 1, 0, 0, 0, 7, all},
		{p1m, n(1, 1) + "+me", 1, 14, 1, 1, 1, 1, 1, all},
		{p1d, n(1, 2), 2, 14, 1, 1, 0, 0, 4, "0:2 2:2 4:2 6:2"},
		{p2, n(2, 2), 2, 28, 2, 1, 0, 0, 3, "0:2 2:2 4:2"},
		{p3, n(3, 4), 4, 42, 3, 2, 0, 0, 2, "0:4 4:4"},
		{p4, n(4, 4), 4, 56, 4, 2, 0, 0, 1, "0:4"},
		{p7, n(7, 8), 8, 98, 7, 5, 1, 1, 1, "0:8"},
	}
}

func hopperRows(names ...string) []publishedRow {
	return []publishedRow{
		{p1, names[0], 1, 16, 1, 1, 1, 0, 7, all},
		{p1m, names[1], 1, 16, 1, 1, 1, 1, 1, all},
		{p1d, names[2], 2, 26, 1, 1, 1, 0, 4, "0:2 2:2 4:2 6:2"},
		{p2, names[3], 2, 32, 2, 2, 2, 0, 3, "0:2 2:2 4:2"},
		{p3, names[4], 4, 60, 3, 3, 3, 0, 2, "0:4 4:4"},
		{p4, names[5], 4, 64, 4, 4, 4, 0, 1, "0:4"},
		{p7, names[6], 8, 132, 8, 7, 7, 1, 1, "0:8"},
	}
}

// TestSimulatorMatchesPublishedTables checks every simulated GPU against
// the published tables recorded here, independently of hardware.go.
func TestSimulatorMatchesPublishedTables(t *testing.T) {
	cases := []struct {
		model, product string
		memoryMB       uint64
		// slices is the GPU's number of memory slices.
		slices uint64
		rows   []publishedRow
	}{
		{"a30", "NVIDIA A30", 24576, 4, []publishedRow{
			{p1, "1g.6gb", 1, 14, 1, 0, 0, 0, 4, "0:1 1:1 2:1 3:1"},
			{p1m, "1g.6gb+me", 1, 14, 1, 1, 1, 1, 1, "0:1 1:1 2:1 3:1"},
			{p2, "2g.12gb", 2, 28, 2, 2, 0, 0, 2, "0:2 2:2"},
			{p2m, "2g.12gb+me", 2, 28, 2, 2, 1, 1, 1, "0:2 2:2"},
			{p4, "4g.24gb", 4, 56, 4, 4, 1, 1, 1, "0:4"},
		}},
		{"dgxa100", "NVIDIA A100-SXM4-40GB", 40960, 8, a100Rows(40)},
		{"dgxa100-80gb", "NVIDIA A100-SXM4-80GB", 81920, 8, a100Rows(80)},
		{"dgxh100", "NVIDIA H100 80GB HBM3", 81920, 8, hopperRows("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")},
		// GH200: names from mig-parted; engines, SMs and placements H100's.
		{"gh200", "NVIDIA GH200 96GB HBM3", 98304, 8, hopperRows("1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.48gb", "4g.48gb", "7g.96gb")},
		{"dgxh200", "NVIDIA H200", 144384, 8, hopperRows("1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb")},
		{"dgxb200", "NVIDIA B200", 184320, 8, []publishedRow{
			{p1, "1g.23gb", 1, 18, 2, 1, 1, 0, 7, all},
			{p1m, "1g.23gb+me", 1, 18, 2, 1, 1, 1, 1, all},
			{p1d, "1g.45gb", 2, 18, 2, 1, 1, 0, 4, "0:2 2:2 4:2 6:2"},
			{p2, "2g.45gb", 2, 36, 3, 1, 1, 0, 3, "0:2 2:2 4:2"},
			{p3, "3g.90gb", 4, 54, 6, 1, 1, 0, 2, "0:4 4:4"},
			{p4, "4g.90gb", 4, 72, 8, 1, 1, 0, 1, "0:4"},
			{p7, "7g.180gb", 8, 126, 16, 1, 1, 1, 1, "0:8"},
		}},
		// GB200: names from mig-parted, memory from the guide's Supported
		// GPUs page; engines and SMs are B200's (not published for GB200).
		{"gb200", "NVIDIA GB200", 190464, 8, []publishedRow{
			{p1, "1g.23gb", 1, 18, 2, 1, 1, 0, 7, all},
			{p1m, "1g.23gb+me", 1, 18, 2, 1, 1, 1, 1, all},
			{p1d, "1g.47gb", 2, 18, 2, 1, 1, 0, 4, "0:2 2:2 4:2 6:2"},
			{p2, "2g.47gb", 2, 36, 3, 1, 1, 0, 3, "0:2 2:2 4:2"},
			{p3, "3g.93gb", 4, 54, 6, 1, 1, 0, 2, "0:4 4:4"},
			{p4, "4g.93gb", 4, 72, 8, 1, 1, 0, 1, "0:4"},
			{p7, "7g.186gb", 8, 126, 16, 1, 1, 1, 1, "0:8"},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.model, func(t *testing.T) {
			n, err := Open(tc.model, "")
			if err != nil {
				t.Fatal(err)
			}
			pms, err := PublishedModels(tc.model)
			if err != nil {
				t.Fatal(err)
			}
			if pms[0].Source == "" {
				t.Errorf("model has no source")
			}
			d := n.Devices[0]
			if name, _ := d.GetName(); name != tc.product {
				t.Errorf("product %q, want %q", name, tc.product)
			}
			if mem, _ := d.GetMemoryInfo(); mem.Total != tc.memoryMB<<20 {
				t.Errorf("memory %d MiB, want %d", mem.Total>>20, tc.memoryMB)
			}
			for _, r := range tc.rows {
				info, ret := d.GetGpuInstanceProfileInfo(r.id)
				if ret != nvml.SUCCESS {
					t.Fatalf("%s: %s", r.name, nvml.ErrorString(ret))
				}
				got := fmt.Sprintf("mem=%d sm=%d ce=%d dec=%d jpeg=%d ofa=%d max=%d", info.MemorySizeMB,
					info.MultiprocessorCount, info.CopyEngineCount, info.DecoderCount, info.JpegCount, info.OfaCount, info.InstanceCount)
				want := fmt.Sprintf("mem=%d sm=%d ce=%d dec=%d jpeg=%d ofa=%d max=%d", uint64(r.slices)*tc.memoryMB/tc.slices,
					r.sms, r.ce, r.dec, r.jpeg, r.ofa, r.maxInst)
				if got != want {
					t.Errorf("%s: %s, want %s", r.name, got, want)
				}
				pls, ret := d.GetGpuInstancePossiblePlacements(&info)
				if ret != nvml.SUCCESS {
					t.Fatalf("%s placements: %s", r.name, nvml.ErrorString(ret))
				}
				var ps []string
				for _, p := range pls {
					ps = append(ps, fmt.Sprintf("%d:%d", p.Start, p.Size))
				}
				if strings.Join(ps, " ") != r.placements {
					t.Errorf("%s placements %q, want %q", r.name, strings.Join(ps, " "), r.placements)
				}
			}
		})
	}
}

// TestFullComputeInstanceHasTheGPUInstancesSMs checks that on every GPU
// instance profile some compute-instance profile spans all its slices with
// all its SMs, as "nvidia-smi mig -cci" without a profile gives on the
// hardware; a double-memory 1g (1g.20gb) is no exception.
func TestFullComputeInstanceHasTheGPUInstancesSMs(t *testing.T) {
	for _, pm := range PublishedProducts() {
		cfg := pm.config()
		for id, gi := range cfg.MIGProfiles.GpuInstanceProfiles {
			ok := false
			for _, ci := range cfg.MIGProfiles.ComputeInstanceProfiles[id] {
				if ci.SliceCount == gi.SliceCount && ci.MultiprocessorCount == gi.MultiprocessorCount {
					ok = true
				}
			}
			if !ok {
				t.Errorf("%s profile %d: no compute profile with its %d slices and %d SMs", pm.Product, id, gi.SliceCount, gi.MultiprocessorCount)
			}
		}
	}
}
