package prepare

import (
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
)

// TestDaemonLimitsSharesOnly: a claim's daemon serves only shares when
// every device it serves is a share of a shared GPU; a consumable share
// of a whole GPU, or a GPU or MIG device with an MPS configuration, is
// not one, and devices without the daemon do not count.
func TestDaemonLimitsSharesOnly(t *testing.T) {
	share := func(name, uuid string) checkpoint.Device {
		return checkpoint.Device{Name: name, GPUUUID: uuid, MPSDir: "/mps", ShareID: "s", Share: &checkpoint.Share{MemoryBytes: 1 << 30}}
	}
	for _, tc := range []struct {
		name    string
		devices []checkpoint.Device
		want    bool
	}{
		{"one share", []checkpoint.Device{share("gpu-0-shared", "GPU-0")}, true},
		{"shares of two GPUs", []checkpoint.Device{share("gpu-0-shared", "GPU-0"), share("gpu-1-shared", "GPU-1")}, true},
		{"a share and a plain GPU", []checkpoint.Device{share("gpu-0-shared", "GPU-0"), {Name: "gpu-1", GPUUUID: "GPU-1"}}, true},
		{"a share and an MPS GPU", []checkpoint.Device{share("gpu-0-shared", "GPU-0"), {Name: "gpu-1", GPUUUID: "GPU-1", MPSDir: "/mps"}}, false},
		{"a consumable share", []checkpoint.Device{share("gpu-0", "GPU-0")}, false},
		{"an MPS GPU", []checkpoint.Device{{Name: "gpu-0", GPUUUID: "GPU-0", MPSDir: "/mps"}}, false},
		{"a name of no device", []checkpoint.Device{share("gpu-00-shared", "GPU-0")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := daemonLimits(&checkpoint.Claim{UID: "u", Devices: tc.devices})
			if err != nil {
				t.Fatal(err)
			}
			if l.SharesOnly != tc.want {
				t.Errorf("SharesOnly = %v, want %v", l.SharesOnly, tc.want)
			}
		})
	}
}
