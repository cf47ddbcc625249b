package nvmlnode

import (
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

// fakeGI offers the given compute-instance profiles, by ID.
func fakeGI(profiles map[int]nvml.ComputeInstanceProfileInfo) nvml.GpuInstance {
	return &mock.GpuInstance{
		GetComputeInstanceProfileInfoFunc: func(id, _ int) (nvml.ComputeInstanceProfileInfo, nvml.Return) {
			p, ok := profiles[id]
			if !ok {
				return p, nvml.ERROR_NOT_SUPPORTED
			}
			return p, nvml.SUCCESS
		},
	}
}

func ciProfile(id, slices, sms int) nvml.ComputeInstanceProfileInfo {
	return nvml.ComputeInstanceProfileInfo{Id: uint32(id), SliceCount: uint32(slices), MultiprocessorCount: uint32(sms)}
}

// TestFullComputeProfileChoosesAllSMs: of the profiles that span the GPU
// instance, the one with its SMs wins, whatever its ID.
func TestFullComputeProfileChoosesAllSMs(t *testing.T) {
	const one, rev1, two = nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE_REV1, nvml.COMPUTE_INSTANCE_PROFILE_2_SLICE
	cases := []struct {
		name        string
		profiles    map[int]nvml.ComputeInstanceProfileInfo
		slices, sms int
		want        int // -1: an error
	}{
		{"1g.20gb whose full profile is a revision", map[int]nvml.ComputeInstanceProfileInfo{one: ciProfile(one, 1, 16), rev1: ciProfile(rev1, 1, 26)}, 1, 26, rev1},
		{"1g.20gb whose standard profile has all SMs", map[int]nvml.ComputeInstanceProfileInfo{one: ciProfile(one, 1, 26), rev1: ciProfile(rev1, 1, 26)}, 1, 26, one},
		{"no exact match: the most SMs", map[int]nvml.ComputeInstanceProfileInfo{one: ciProfile(one, 1, 16), rev1: ciProfile(rev1, 1, 20)}, 1, 26, rev1},
		{"2g ignores 1-slice profiles", map[int]nvml.ComputeInstanceProfileInfo{one: ciProfile(one, 1, 16), two: ciProfile(two, 2, 32)}, 2, 32, two},
		{"nothing spans", map[int]nvml.ComputeInstanceProfileInfo{one: ciProfile(one, 1, 16)}, 2, 32, -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := fullComputeProfile(fakeGI(tc.profiles), tc.slices, tc.sms)
			if tc.want < 0 {
				if err == nil {
					t.Fatalf("chose %d, want an error", got.Id)
				}
				return
			}
			if err != nil || int(got.Id) != tc.want {
				t.Fatalf("chose %d (%v), want %d", got.Id, err, tc.want)
			}
		})
	}
}

// TestDoubleMemory1gGetsAllItsSMs creates every double-memory 1g profile
// on the simulated hardware and checks the compute instance CreateMIG
// would make has all the GPU instance's SMs (H100 1g.20gb: 26, not 16).
func TestDoubleMemory1gGetsAllItsSMs(t *testing.T) {
	for _, model := range []string{"dgxa100", "dgxh100", "dgxh200", "dgxb200"} {
		t.Run(model, func(t *testing.T) {
			lib, err := sim.Open(model, "")
			if err != nil {
				t.Fatal(err)
			}
			dev := lib.Devices[0]
			// As an admin does: on Ampere the mode takes effect at a reset.
			if err := lib.SetMIGMode(0, true); err != nil {
				t.Fatal(err)
			}
			if err := lib.Reset(0); err != nil {
				t.Fatal(err)
			}
			info, ret := dev.GetGpuInstanceProfileInfo(nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2)
			if ret != nvml.SUCCESS {
				t.Fatal(nvml.ErrorString(ret))
			}
			gi, ret := dev.CreateGpuInstance(&info)
			if ret != nvml.SUCCESS {
				t.Fatal(nvml.ErrorString(ret))
			}
			ci, err := fullComputeProfile(gi, int(info.SliceCount), int(info.MultiprocessorCount))
			if err != nil {
				t.Fatal(err)
			}
			if ci.MultiprocessorCount != info.MultiprocessorCount {
				t.Errorf("compute profile %d has %d SMs, the GPU instance %d", ci.Id, ci.MultiprocessorCount, info.MultiprocessorCount)
			}
		})
	}
}
