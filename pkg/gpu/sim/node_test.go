package sim

import (
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// TestSetMigModeReturnsInGoNVMLOrder: the simulator's SetMigMode returns
// (activationStatus, ret) as go-nvml's does, and a failed call leaves the
// activation status at go-nvml's zero value, SUCCESS.
func TestSetMigModeReturnsInGoNVMLOrder(t *testing.T) {
	n, err := Open("dgxh100", "")
	if err != nil {
		t.Fatal(err)
	}
	d := n.Devices[0]
	cases := []struct {
		name                string
		mode                int
		setup               func()
		activation, wantRet nvml.Return
	}{
		{"invalid mode", 7, nil, nvml.SUCCESS, nvml.ERROR_INVALID_ARGUMENT},
		{"enable", nvml.DEVICE_MIG_ENABLE, nil, nvml.SUCCESS, nvml.SUCCESS},
		{"disable with a GPU instance", nvml.DEVICE_MIG_DISABLE, func() {
			info, ret := d.GetGpuInstanceProfileInfo(nvml.GPU_INSTANCE_PROFILE_1_SLICE)
			if ret != nvml.SUCCESS {
				t.Fatal(nvml.ErrorString(ret))
			}
			if _, ret := d.CreateGpuInstance(&info); ret != nvml.SUCCESS {
				t.Fatal(nvml.ErrorString(ret))
			}
		}, nvml.SUCCESS, nvml.ERROR_IN_USE},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			activation, ret := d.SetMigMode(tc.mode)
			if activation != tc.activation || ret != tc.wantRet {
				t.Errorf("SetMigMode(%d) = (%s, %s), want (%s, %s)", tc.mode,
					nvml.ErrorString(activation), nvml.ErrorString(ret), nvml.ErrorString(tc.activation), nvml.ErrorString(tc.wantRet))
			}
		})
	}
}
