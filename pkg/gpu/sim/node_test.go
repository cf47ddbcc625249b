package sim

import (
	"strings"
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

// TestMIGModeChangeByArchitecture: on Ampere a MIG mode change is pending
// (activation ERROR_RESET_REQUIRED) until the GPU is reset; on Hopper it
// takes effect at once.
func TestMIGModeChangeByArchitecture(t *testing.T) {
	cases := []struct {
		model          string
		gpu            int
		wantActivation nvml.Return
		// current and pending are the MIG modes after SetMigMode(enable),
		// before and after a reset.
		current, pending, afterReset int
	}{
		{"dgxa100", 0, nvml.ERROR_RESET_REQUIRED, nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE},
		{"a30", 0, nvml.ERROR_RESET_REQUIRED, nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE},
		{"mixed", 3, nvml.ERROR_RESET_REQUIRED, nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE},
		{"mixed", 4, nvml.SUCCESS, nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE},
		{"dgxh100", 0, nvml.SUCCESS, nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE},
	}
	for _, tc := range cases {
		t.Run(tc.model, func(t *testing.T) {
			n, err := Open(tc.model, "")
			if err != nil {
				t.Fatal(err)
			}
			d := n.Devices[tc.gpu]
			activation, ret := d.SetMigMode(nvml.DEVICE_MIG_ENABLE)
			if ret != nvml.SUCCESS || activation != tc.wantActivation {
				t.Fatalf("SetMigMode = (%s, %s), want (%s, SUCCESS)", nvml.ErrorString(activation), nvml.ErrorString(ret), nvml.ErrorString(tc.wantActivation))
			}
			current, pending, ret := d.GetMigMode()
			if ret != nvml.SUCCESS || current != tc.current || pending != tc.pending {
				t.Fatalf("before reset: current %d pending %d (%s), want %d %d", current, pending, nvml.ErrorString(ret), tc.current, tc.pending)
			}
			if err := n.Reset(tc.gpu); err != nil {
				t.Fatal(err)
			}
			current, pending, _ = d.GetMigMode()
			if current != tc.afterReset || pending != tc.afterReset {
				t.Fatalf("after reset: current %d pending %d, want %d", current, pending, tc.afterReset)
			}
			// Turning it back off is pending again on Ampere; asking for
			// the current mode cancels the pending change.
			if activation, _ := d.SetMigMode(nvml.DEVICE_MIG_DISABLE); activation != tc.wantActivation {
				t.Errorf("disable: activation %s, want %s", nvml.ErrorString(activation), nvml.ErrorString(tc.wantActivation))
			}
			if tc.wantActivation == nvml.ERROR_RESET_REQUIRED {
				if activation, ret := d.SetMigMode(nvml.DEVICE_MIG_ENABLE); activation != nvml.SUCCESS || ret != nvml.SUCCESS {
					t.Errorf("cancelling the pending change: (%s, %s)", nvml.ErrorString(activation), nvml.ErrorString(ret))
				}
				if current, pending, _ := d.GetMigMode(); current != nvml.DEVICE_MIG_ENABLE || pending != nvml.DEVICE_MIG_ENABLE {
					t.Errorf("after cancelling: current %d pending %d, want enabled", current, pending)
				}
			}
		})
	}
}

// TestModelWithGPUCount: "<model>:<n>" is that node with its first n GPUs;
// a count out of range or a wrong name is refused with the valid choices.
func TestModelWithGPUCount(t *testing.T) {
	for _, tc := range []struct {
		name    string
		gpus    int
		wantErr string
	}{
		{name: "dgxh100", gpus: 8},
		{name: "dgxh100:2", gpus: 2},
		{name: "a30:4", gpus: 4},
		{name: "dgxh100:0", wantErr: "must be 1 to 8"},
		{name: "dgxh100:9", wantErr: "must be 1 to 8"},
		{name: "dgxh100:two", wantErr: "must be 1 to 8"},
		{name: "dgxz900:2", wantErr: "unknown simulated node"},
	} {
		m, err := lookupModel(tc.name)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("lookupModel(%q): error %v, want one containing %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("lookupModel(%q): %v", tc.name, err)
		}
		if len(m.gpus) != tc.gpus {
			t.Errorf("lookupModel(%q): %d GPUs, want %d", tc.name, len(m.gpus), tc.gpus)
		}
	}
	// The table itself is untouched by a shorter node.
	if m, _ := lookupModel("dgxh100"); len(m.gpus) != 8 {
		t.Errorf("dgxh100 has %d GPUs after dgxh100:2 was looked up", len(m.gpus))
	}
}
