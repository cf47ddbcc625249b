package cdi

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

// TestInspector checks that the Inspector finds what specs carry, and
// reports what they would fail on or leave out, writing nothing.
func TestInspector(t *testing.T) {
	hostfstest.RequireRoot(t, "the simulated /dev needs root")
	cases := []struct {
		name string
		// breakHost changes the simulated host before the inspection.
		breakHost func(t *testing.T, r simhost.Roots)
		// wantMissing are the required libraries reported missing.
		wantMissing []string
		// wantControl is, per control node, "ok", "left out" or "error".
		wantControl []string
		wantGPU0    string // "ok" or "error"
		wantCap     string // gpu0/gi1/ci0: "ok" or "error"
	}{
		{name: "complete host", wantControl: []string{"ok", "ok", "ok", "ok"}, wantGPU0: "ok", wantCap: "ok"},
		{
			// nvidia-modeset not loaded, as on many compute nodes.
			name: "no nvidia-modeset node",
			breakHost: func(t *testing.T, r simhost.Roots) {
				remove(t, filepath.Join(r.DevRoot, "dev/nvidia-modeset"))
			},
			wantControl: []string{"ok", "left out", "ok", "ok"}, wantGPU0: "ok", wantCap: "ok",
		},
		{
			name: "nvidia-uvm not loaded, no libcuda",
			breakHost: func(t *testing.T, r simhost.Roots) {
				dropLine(t, filepath.Join(r.ProcRoot, ProcDevicesFile), "nvidia-uvm")
				remove(t, filepath.Join(r.DriverRoot, "usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15"))
			},
			wantMissing: []string{"libcuda.so.*"},
			wantControl: []string{"ok", "ok", "left out", "left out"}, wantGPU0: "ok", wantCap: "ok",
		},
		{
			// Loaded after the plugin's /dev was copied: numbered from
			// /proc/devices all the same.
			name: "nvidia-uvm loaded, no node in /dev",
			breakHost: func(t *testing.T, r simhost.Roots) {
				remove(t, filepath.Join(r.DevRoot, "dev/nvidia-uvm"))
				remove(t, filepath.Join(r.DevRoot, "dev/nvidia-uvm-tools"))
			},
			wantControl: []string{"ok", "ok", "ok", "ok"}, wantGPU0: "ok", wantCap: "ok",
		},
		{
			name: "no nvidiactl, no GPU node, a compute instance's access file disagrees",
			breakHost: func(t *testing.T, r simhost.Roots) {
				remove(t, filepath.Join(r.DevRoot, "dev/nvidiactl"))
				remove(t, filepath.Join(r.DevRoot, "dev/nvidia0"))
				access := filepath.Join(r.ProcRoot, CapabilitiesDir, "gpu0/mig/gi1/ci0/access")
				if err := os.WriteFile(access, []byte("DeviceFileMinor: 99\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			wantControl: []string{"error", "ok", "ok", "ok"}, wantGPU0: "error", wantCap: "error",
		},
		{
			name: "no /proc/devices",
			breakHost: func(t *testing.T, r simhost.Roots) {
				remove(t, filepath.Join(r.ProcRoot, ProcDevicesFile))
			},
			wantControl: []string{"ok", "ok", "error", "error"}, wantGPU0: "ok", wantCap: "error",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			roots, err := simhost.Create(filepath.Join(t.TempDir(), "host"), []int{0}, "550.54.15", simhosttest.Tools(t))
			if err != nil {
				t.Fatal(err)
			}
			withInstances(t, roots, 0, simhost.GPUInstanceCaps{ID: 1, ComputeInstances: []int{0}})
			if tc.breakHost != nil {
				tc.breakHost(t, roots)
			}
			cdiRoot := filepath.Join(t.TempDir(), "cdi")
			in, err := NewInspector(Options{CDIRoot: cdiRoot, DriverRoot: roots.DriverRoot, DevRoot: roots.DevRoot, ProcRoot: roots.ProcRoot})
			if err != nil {
				t.Fatal(err)
			}
			files, err := in.DriverFiles()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(files.MissingLibraries, tc.wantMissing) {
				t.Errorf("missing libraries %v, want %v", files.MissingLibraries, tc.wantMissing)
			}
			var paths []string
			for _, m := range files.Mounts {
				paths = append(paths, m.ContainerPath)
			}
			for _, want := range []string{"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15", "/usr/bin/nvidia-smi", "/usr/bin/nvidia-cuda-mps-control"} {
				if !slices.Contains(paths, want) {
					t.Errorf("mounts %v lack %s", paths, want)
				}
			}
			var control []string
			for _, l := range in.ControlNodes() {
				control = append(control, outcome(l))
			}
			if !slices.Equal(control, tc.wantControl) {
				t.Errorf("control nodes %v, want %v", control, tc.wantControl)
			}
			if got := outcome(in.GPUNode(0)); got != tc.wantGPU0 {
				t.Errorf("/dev/nvidia0: %s, want %s", got, tc.wantGPU0)
			}
			minors, err := ParseMIGMinors(in.MIGMinorsPath())
			if err != nil {
				t.Fatal(err)
			}
			caps := in.MIGCapNodes(minors, 0, MIGDevice{GIID: 1, CIID: 0})
			got := "ok"
			for _, l := range caps {
				if l.Err != nil {
					got = "error"
				}
			}
			if got != tc.wantCap {
				t.Errorf("capability nodes of gpu0/gi1/ci0: %s, want %s", got, tc.wantCap)
			}
			if l := in.MIGCapNodes(minors, 0, MIGDevice{GIID: 99})[0]; l.Err == nil {
				t.Error("GPU instance 99, which the table lacks, was found")
			}
			if _, err := os.Stat(cdiRoot); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the inspector touched the CDI root: %v", err)
			}
		})
	}
}

func remove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

// dropLine rewrites the file at path without its lines that end in suffix.
func dropLine(t *testing.T, path, suffix string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasSuffix(line, suffix) {
			keep = append(keep, line)
		}
	}
	if err := os.WriteFile(path, []byte(strings.Join(keep, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
}

func outcome(l NodeLookup) string {
	switch {
	case l.LeftOut():
		return "left out"
	case l.Err != nil:
		return "error"
	}
	return "ok"
}
