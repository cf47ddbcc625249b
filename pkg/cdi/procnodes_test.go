package cdi

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// TestNodesNumberedFromProc: the nvidia-uvm nodes and a MIG device's
// capability nodes are numbered from the kernel's files under the proc
// root, with no node needed under the dev root; what cannot be read says
// which file and which GPU, GPU instance and compute instance.
func TestNodesNumberedFromProc(t *testing.T) {
	// gpu0/gi2/access is minor 21 in the table of GPUs 0..2, its ci0 22.
	const giMinor, ciMinor = 21, 22
	mig := Device{Name: "gpu-0-mig", Request: "a", GPUMinor: 0, UUID: "MIG-1", MIG: &MIGDevice{GIID: 2, CIID: 0}}
	giAccess := filepath.Join(CapabilitiesDir, "gpu0/mig/gi2/access")
	ciAccess := filepath.Join(CapabilitiesDir, "gpu0/mig/gi2/ci0/access")
	write := func(rel, content string) func(*testing.T, simhost.Roots) {
		return func(t *testing.T, r simhost.Roots) {
			t.Helper()
			if err := os.WriteFile(filepath.Join(r.ProcRoot, rel), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	cases := []struct {
		name      string
		breakHost func(*testing.T, simhost.Roots)
		// wantErr are parts of WriteClaimSpec's error; none: it succeeds.
		wantErr []string
		// wantUVM is whether the spec has the nvidia-uvm nodes.
		wantUVM bool
	}{
		{name: "kernel files present, no node in /dev", wantUVM: true},
		{
			// The minors are the table's; the access files only check them.
			name:      "no access files",
			breakHost: func(t *testing.T, r simhost.Roots) { withInstances(t, r, 0) },
			wantUVM:   true,
		},
		{
			name: "instance in neither the table nor the access files",
			breakHost: func(t *testing.T, r simhost.Roots) {
				remove(t, filepath.Join(r.ProcRoot, ciAccess))
				dropLine(t, filepath.Join(r.ProcRoot, MIGMinorsFile), "gpu0/gi2/ci0/access 22")
			},
			wantErr: []string{"GPU minor 0 GPU instance 2 compute instance 0", ciAccess, MIGMinorsFile, `no entry "gpu0/gi2/ci0/access"`},
		},
		{
			name: "access file the table lacks",
			breakHost: func(t *testing.T, r simhost.Roots) {
				dropLine(t, filepath.Join(r.ProcRoot, MIGMinorsFile), "gpu0/gi2/access 21")
			},
			wantErr: []string{"GPU minor 0 GPU instance 2:", giAccess, `no entry "gpu0/gi2/access"`},
		},
		{
			name:      "access file without a minor",
			breakHost: write(giAccess, "DeviceFileMode: 292\nDeviceFileModify: 1\n"),
			wantErr:   []string{"GPU minor 0 GPU instance 2", giAccess, "no DeviceFileMinor"},
		},
		{
			name:      "access file with a malformed minor",
			breakHost: write(ciAccess, "DeviceFileMinor: twenty\nDeviceFileMode: 292\n"),
			wantErr:   []string{"compute instance 0", ciAccess, `invalid or repeated DeviceFileMinor "twenty"`},
		},
		{
			name:      "access file with a malformed mode",
			breakHost: write(ciAccess, "DeviceFileMinor: 22\nDeviceFileMode: 4095\n"),
			wantErr:   []string{ciAccess, `invalid DeviceFileMode "4095"`},
		},
		{
			name:      "access file and mig-minors disagree",
			breakHost: write(ciAccess, "DeviceFileMinor: 23\nDeviceFileMode: 292\n"),
			wantErr:   []string{ciAccess, "says minor 23", "mig-minors says 22"},
		},
		{
			name: "access file is a FIFO",
			breakHost: func(t *testing.T, r simhost.Roots) {
				remove(t, filepath.Join(r.ProcRoot, giAccess))
				if err := syscall.Mkfifo(filepath.Join(r.ProcRoot, giAccess), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: []string{giAccess, "not a regular file"},
		},
		{
			name:      "no mig-minors",
			breakHost: func(t *testing.T, r simhost.Roots) { remove(t, filepath.Join(r.ProcRoot, MIGMinorsFile)) },
			wantErr:   []string{MIGMinorsFile},
		},
		{
			name: "no nvidia-caps in /proc/devices",
			breakHost: func(t *testing.T, r simhost.Roots) {
				dropLine(t, filepath.Join(r.ProcRoot, ProcDevicesFile), "nvidia-caps")
			},
			wantErr: []string{"GPU minor 0 GPU instance 2", ProcDevicesFile, `no character device "nvidia-caps"`},
		},
		{
			name:      "no /proc/devices",
			breakHost: func(t *testing.T, r simhost.Roots) { remove(t, filepath.Join(r.ProcRoot, ProcDevicesFile)) },
			wantErr:   []string{"/dev/nvidia-uvm", ProcDevicesFile, "no such file"},
		},
		{
			name:      "malformed /proc/devices",
			breakHost: write(ProcDevicesFile, "Character devices:\n  1 mem\nx nvidia-uvm\n"),
			wantErr:   []string{ProcDevicesFile + ":3", `"x nvidia-uvm"`},
		},
		{
			name:      "nvidia-caps only among block devices",
			breakHost: write(ProcDevicesFile, "Character devices:\n510 nvidia-uvm\n\nBlock devices:\n511 nvidia-caps\n"),
			wantErr:   []string{`no character device "nvidia-caps"`},
		},
		{
			name: "nvidia-uvm not loaded",
			breakHost: func(t *testing.T, r simhost.Roots) {
				dropLine(t, filepath.Join(r.ProcRoot, ProcDevicesFile), "nvidia-uvm")
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, roots := newWriter(t)
			if err := os.RemoveAll(filepath.Join(roots.DevRoot, "dev/nvidia-caps")); err != nil {
				t.Fatal(err)
			}
			for _, n := range []string{"dev/nvidia-uvm", "dev/nvidia-uvm-tools"} {
				remove(t, filepath.Join(roots.DevRoot, n))
			}
			if tc.breakHost != nil {
				tc.breakHost(t, roots)
			}
			_, err := w.WriteClaimSpec(context.Background(), uid, []Device{mig})
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("spec written, want an error with %q", tc.wantErr)
				}
				for _, want := range tc.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q lacks %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			nodes := map[string]specs.DeviceNode{}
			spec := inject(t, w, DeviceID(uid, mig.Name))
			for _, d := range spec.Linux.Devices {
				nodes[d.Path] = specs.DeviceNode{Type: d.Type, Major: d.Major, Minor: d.Minor}
			}
			want := map[string][2]int64{
				"/dev/nvidia-caps/nvidia-cap21": {simhost.CapsMajor, giMinor},
				"/dev/nvidia-caps/nvidia-cap22": {simhost.CapsMajor, ciMinor},
			}
			if tc.wantUVM {
				want["/dev/nvidia-uvm"] = [2]int64{simhost.UVMMajor, 0}
				want["/dev/nvidia-uvm-tools"] = [2]int64{simhost.UVMMajor, 1}
			} else if _, ok := nodes["/dev/nvidia-uvm"]; ok {
				t.Error("nvidia-uvm, not loaded, is in the spec")
			}
			for path, num := range want {
				n, ok := nodes[path]
				if !ok || n.Type != "c" || n.Major != num[0] || n.Minor != num[1] {
					t.Errorf("%s: %+v (in spec %t), want c %d:%d", path, n, ok, num[0], num[1])
				}
			}
		})
	}
}

func TestParseProcDevices(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devices")
	if err := os.WriteFile(path, []byte("Character devices:\n  1 mem\n  4 /dev/vc/0\n195 nvidia-frontend\n195 nvidia\n511 nvidia-caps\n\nBlock devices:\n  7 loop\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ParseProcDevices(path)
	if err != nil {
		t.Fatal(err)
	}
	if got["nvidia-caps"] != 511 || got["nvidia"] != 195 || got["/dev/vc/0"] != 4 || got["loop"] != 0 {
		t.Errorf("majors %v", got)
	}
	if err := os.WriteFile(path, []byte("Block devices:\n  7 loop\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseProcDevices(path); err == nil || !strings.Contains(err.Error(), "no character devices") {
		t.Errorf("no character devices: %v", err)
	}
}
