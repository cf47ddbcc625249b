package sim

import (
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// TestCreateGPUInstance: an administrator's GPU instances, without a
// compute instance or with two, are in the state as created; what the
// hardware refuses is refused.
func TestCreateGPUInstance(t *testing.T) {
	cases := []struct {
		name      string
		profile   int
		start     int
		cis       []int
		wantCIs   int
		wantError bool
	}{
		{"without compute instance", nvml.GPU_INSTANCE_PROFILE_3_SLICE, 4, nil, 0, false},
		{"with two compute instances", nvml.GPU_INSTANCE_PROFILE_2_SLICE, 0, []int{nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE}, 2, false},
		{"overlapping one is refused", nvml.GPU_INSTANCE_PROFILE_1_SLICE, 5, nil, 0, true},
		{"compute instances beyond the GPU instance are refused", nvml.GPU_INSTANCE_PROFILE_1_SLICE, 2, []int{nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE, nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE}, 0, true},
	}
	n, err := Open("dgxh100", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.SetMIGMode(0, true); err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := n.CreateGPUInstance(0, tc.profile, tc.start, tc.cis...)
			if tc.wantError {
				if err == nil {
					t.Fatal("succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st, err := n.State()
			if err != nil {
				t.Fatal(err)
			}
			for _, gi := range st.GPUs[0].GPUInstances {
				if gi.ID == id {
					if gi.Start != tc.start || len(gi.ComputeInstances) != tc.wantCIs {
						t.Fatalf("GPU instance %+v, want start %d and %d compute instances", gi, tc.start, tc.wantCIs)
					}
					return
				}
			}
			t.Fatalf("GPU instance %d is not in the state", id)
		})
	}
}
