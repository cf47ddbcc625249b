package simtools

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim/miguuid"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

// TestListGPUs checks "nvidia-smi -L" against NVIDIA's format: GPUs in
// the node's order, numbered from 0 as a container sees them, MIG devices
// indented under their parent, numbered from 0 per parent.
func TestListGPUs(t *testing.T) {
	table := []GPU{
		{Index: 0, Minor: 10, UUID: "GPU-00000000-0000-0000-0000-000000000000", Name: "NVIDIA H100 80GB HBM3",
			MIGProfiles: map[string]string{"0": "1g.10gb", "5": "4g.40gb", "2": "3g.40gb"}},
		{Index: 1, Minor: 11, UUID: "GPU-11111111-1111-1111-1111-111111111111", Name: "NVIDIA H100 80GB HBM3"},
		{Index: 2, Minor: 12, UUID: "GPU-22222222-2222-2222-2222-222222222222", Name: "NVIDIA H100 80GB HBM3",
			MIGProfiles: map[string]string{"0": "1g.10gb"}},
	}
	mig := func(w miguuid.Where) string {
		s, err := miguuid.New(w)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b, c := mig(miguuid.Where{GPU: 0, GIProfile: 0}), mig(miguuid.Where{GPU: 0, GIProfile: 2, CIProfile: 1}), mig(miguuid.Where{GPU: 2, GIProfile: 0, CIProfile: 0})
	foreign := "MIG-12345678-1234-4234-8234-123456789abc"
	for _, tc := range []struct {
		name, uuids string
		devs        []int // minors of the container's /dev/nvidia<minor>
		wantCode    int
		want        string
	}{
		{name: "one whole GPU", uuids: table[1].UUID, want: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-1111-1111-1111-111111111111)\n"},
		{name: "two GPUs in the node's order", uuids: table[2].UUID + "," + table[0].UUID,
			want: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)\n" +
				"GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-22222222-2222-2222-2222-222222222222)\n"},
		{name: "MIG devices under their parents", uuids: c + "," + a + "," + b,
			want: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)\n" +
				"  MIG 1g.10gb     Device  0: (UUID: " + a + ")\n" +
				"  MIG 2c.3g.40gb  Device  1: (UUID: " + b + ")\n" +
				"GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-22222222-2222-2222-2222-222222222222)\n" +
				"  MIG 1g.10gb     Device  0: (UUID: " + c + ")\n"},
		{name: "a GPU of another claim of the container, by its device node", uuids: table[0].UUID, devs: []int{0, 11},
			want: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)\n" +
				"GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-1111-1111-1111-111111111111)\n"},
		{name: "a MIG device's parent has its node too", uuids: c, devs: []int{12},
			want: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-22222222-2222-2222-2222-222222222222)\n" +
				"  MIG 1g.10gb     Device  0: (UUID: " + c + ")\n"},
		{name: "a GPU not in the table", uuids: "GPU-99999999-9999-9999-9999-999999999999",
			want: "GPU 0: NVIDIA GPU (UUID: GPU-99999999-9999-9999-9999-999999999999)\n"},
		{name: "no device", uuids: "", wantCode: 6, want: "No devices were found\n"},
		{name: "a MIG UUID not the simulator's", uuids: foreign, wantCode: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			bin := filepath.Join(root, "usr/bin")
			if err := os.MkdirAll(bin, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := Install(simhosttest.Tools(t), bin, "550.54.15", table...); err != nil {
				t.Fatal(err)
			}
			for _, minor := range tc.devs {
				if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(root, "dev", fmt.Sprintf("nvidia%d", minor)), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			code, stdout, _ := run(root, SMI, "", map[string]string{deviceUUIDsEnv: tc.uuids}, "-L")
			if code != tc.wantCode || stdout != tc.want {
				t.Errorf("exit %d, stdout:\n%s\nwant exit %d, stdout:\n%s", code, stdout, tc.wantCode, tc.want)
			}
		})
	}
}

// TestInstallReplacesTheTable: a copy installed again, from a copy, with
// another table or none, carries that one only, and its version.
func TestInstallReplacesTheTable(t *testing.T) {
	bin := t.TempDir()
	smi := filepath.Join(bin, SMI)
	one := []GPU{{Index: 0, UUID: "GPU-a", Name: "first"}}
	if err := Install(simhosttest.Tools(t), bin, "550.1", one...); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		version string
		gpus    []GPU
	}{
		{"550.2", []GPU{{Index: 0, UUID: "GPU-b", Name: "second"}, {Index: 1, UUID: "GPU-c", Name: "third"}}},
		{"550.3", nil},
		{"550.4", one},
	} {
		if err := Install(smi, bin, tc.version, tc.gpus...); err != nil {
			t.Fatal(err)
		}
		v, gpus, err := readTags(smi)
		if err != nil || v != tc.version || len(gpus) != len(tc.gpus) {
			t.Fatalf("%s: version %q, GPUs %+v (%v); want %q, %+v", tc.version, v, gpus, err, tc.version, tc.gpus)
		}
		for i := range gpus {
			if gpus[i].UUID != tc.gpus[i].UUID || gpus[i].Name != tc.gpus[i].Name {
				t.Errorf("%s: GPU %d %+v, want %+v", tc.version, i, gpus[i], tc.gpus[i])
			}
		}
	}
}
