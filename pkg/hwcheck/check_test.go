package hwcheck

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

// want is one expected item: its status, and a part of its message or
// details.
type want struct {
	section, name string
	status        Status
	contains      string
}

// TestRun checks a simulated DGX H100 in the states an operator may find a
// node in. Each case also checks that the check changed nothing: neither
// the simulated GPUs' state nor the driver, /dev and /proc trees.
func TestRun(t *testing.T) {
	hostfstest.RequireRoot(t, "the simulated /dev needs root")
	ctx := context.Background()
	cases := []struct {
		name string
		// model is the simulated node; dgxh100 when empty.
		model string
		// simulated is false for a real-NVML run (which must not get as
		// far as loading a library).
		notSimulated bool
		// setup changes the node before the check, through the simulator
		// and the host trees.
		setup func(t *testing.T, s *sim.Node, r simhost.Roots)
		// mutateLib changes the simulated NVML the check opens.
		mutateLib  func(s *sim.Node)
		wantFailed bool
		want       []want
		// wantOtherGPUs are GPUs whose UUID must still be reported.
		wantOtherGPUs []int
	}{
		{
			name: "healthy node",
			want: []want{
				{"NVML", "GPU count", Pass, "8"},
				{"NVML", "driver version", Pass, "550.54.15"},
				{"GPU 0", "MIG mode", Pass, "current disabled, pending disabled"},
				{"GPU 0", "memory slices", Pass, "8 (placements and memory-slice counters 0-7)"},
				{"GPU 0", "MIG profile 3g.40gb", Pass, "publishes 2: gpu-0-mig-3g40gb-0, gpu-0-mig-3g40gb-4"},
				{"GPU 0", "MIG profile 3g.40gb", Pass, "none of this profile exists"},
				{"GPU 0", "published devices", Pass, "gpu-0-shared"},
				{"Driver files (CDI)", "libraries", Pass, "libnvidia-ml.so.550.54.15"},
				{"Driver files (CDI)", "libraries", Pass, "/usr/lib/x86_64-linux-gnu/libnvidia-encode.so.1"},
				{"Driver files (CDI)", "configuration", Pass, "-> /etc/vulkan/icd.d/nvidia_icd.json"},
				{"Device nodes (CDI)", "/dev/nvidia7", Pass, "c 1:3"},
				{"Device nodes (CDI)", "/dev/nvidia-modeset", Pass, "c 1:3"},
				{"Tools", "nvidia-smi", Pass, "not run"},
			},
		},
		{
			name:  "an A30 has four memory slices",
			model: "a30",
			want: []want{
				{"NVML", "GPU count", Pass, "4"},
				{"GPU 0", "memory slices", Pass, "4 (placements and memory-slice counters 0-3)"},
				{"GPU 0", "MIG profile 1g.6gb", Pass, "6144 MiB (1 memory slices), 14 SMs, max 4 instances, placements 0:1 1:1 2:1 3:1"},
				{"GPU 0", "MIG profile 2g.12gb", Pass, "12288 MiB (2 memory slices), 28 SMs, max 2 instances, placements 0:2 2:2"},
				{"GPU 3", "memory slices", Pass, "4 ("},
			},
		},
		{
			name: "a lost GPU fails alone",
			setup: func(t *testing.T, s *sim.Node, _ simhost.Roots) {
				if err := s.SetLost(3, true); err != nil {
					t.Fatal(err)
				}
			},
			wantFailed: true,
			want: []want{
				{"GPU 3", "GPU", Fail, "is lost"},
				{"NVML", "GPU count", Pass, "8"},
				{"Device nodes (CDI)", "/dev/nvidia4", Pass, ""},
			},
			wantOtherGPUs: []int{0, 1, 2, 4, 5, 6, 7},
		},
		{
			// A headless driver: no graphics libraries nor the Vulkan
			// ICD; specs leave them out, the node still serves.
			name: "no graphics files",
			setup: func(t *testing.T, _ *sim.Node, r simhost.Roots) {
				for _, f := range []string{"usr/lib/x86_64-linux-gnu/libEGL_nvidia.so.550.54.15", "usr/share/vulkan/icd.d/nvidia_icd.json"} {
					if err := os.Remove(filepath.Join(r.DriverRoot, f)); err != nil {
						t.Fatal(err)
					}
				}
			},
			want: []want{
				{"Driver files (CDI)", "left out", Pass, "graphics: libEGL_nvidia.so.*, vulkan/icd.d/nvidia_icd.json"},
				{"Driver files (CDI)", "libraries", Pass, "libnvcuvid.so.1"},
			},
		},
		{
			name: "MIG mode change pending a reset",
			mutateLib: func(s *sim.Node) {
				s.Devices[2].(*server.Device).GetMigModeFunc = func() (int, int, nvml.Return) {
					return nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS
				}
			},
			want: []want{{"GPU 2", "MIG mode", Warn, "a GPU reset is due"}},
		},
		{
			name: "MIG enabled with an existing MIG device",
			setup: func(t *testing.T, s *sim.Node, r simhost.Roots) {
				n, err := nvmlnode.NewNode(s)
				if err != nil {
					t.Fatal(err)
				}
				defer n.Close()
				d, err := n.ReadGPUDetails(ctx, 1)
				if err != nil {
					t.Fatal(err)
				}
				if err := n.SetMIGMode(ctx, d.GPU.UUID, true); err != nil {
					t.Fatal(err)
				}
				mig, err := n.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: d.GPU.UUID, ProfileID: nvml.GPU_INSTANCE_PROFILE_3_SLICE, Placement: gpu.Placement{Start: 4, Size: 4}})
				if err != nil {
					t.Fatal(err)
				}
				// The kernel shows the instance's capabilities; no
				// kernel side runs here, so the test writes them.
				caps, err := simhost.OpenCapabilities(r.ProcRoot)
				if err != nil {
					t.Fatal(err)
				}
				if err := caps.Sync(d.GPU.Minor, []simhost.GPUInstanceCaps{{ID: mig.GIID, ComputeInstances: []int{mig.CIID}}}); err != nil {
					t.Fatal(err)
				}
			},
			want: []want{
				{"GPU 1", "MIG mode", Pass, "current enabled, pending enabled"},
				{"GPU 1", "MIG profile 3g.40gb", Pass, "asks for profile 2: 3 slices, 60 of the GPU instance's 60 SMs"},
				{"GPU 1", "published devices", Pass, "1 existing MIG devices"},
				{"Device nodes (CDI)", "gpu1/gi", Pass, "no host node needed"},
				{"Device nodes (CDI)", "device majors", Pass, "nvidia-uvm 510, nvidia-caps 511"},
				{"Device nodes (CDI)", "/dev/nvidia-uvm", Pass, "c 510:0"},
			},
		},
		{
			name: "missing GPU node, nvidia-uvm and nvidia-smi",
			setup: func(t *testing.T, _ *sim.Node, r simhost.Roots) {
				for _, p := range []string{filepath.Join(r.DevRoot, "dev/nvidia5"), filepath.Join(r.DevRoot, "dev/nvidia-uvm"), filepath.Join(r.DriverRoot, "usr/bin/nvidia-smi")} {
					if err := os.Remove(p); err != nil {
						t.Fatal(err)
					}
				}
				// nvidia-uvm not loaded: no line in /proc/devices.
				devices := filepath.Join(r.ProcRoot, "proc/devices")
				data, err := os.ReadFile(devices)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(devices, []byte(strings.ReplaceAll(string(data), "510 nvidia-uvm\n", "")), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			wantFailed: true,
			want: []want{
				{"Device nodes (CDI)", "/dev/nvidia5", Fail, "no such file"},
				{"Device nodes (CDI)", "/dev/nvidia-uvm", Warn, "specs leave it out"},
				{"Tools", "nvidia-smi", Warn, "time slice"},
				{"GPU 5", "UUID", Pass, "GPU-"},
			},
		},
		{
			name: "no NVML library under the driver root",
			setup: func(t *testing.T, _ *sim.Node, r simhost.Roots) {
				if err := os.Remove(filepath.Join(r.DriverRoot, "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")); err != nil {
					t.Fatal(err)
				}
			},
			notSimulated: true,
			wantFailed:   true,
			want: []want{
				{"NVML", "library", Fail, "libnvidia-ml.so.1 not found under the driver root"},
				{"NVML", "load and initialise", Fail, "not attempted"},
				{"Device nodes (CDI)", "/dev/nvidiactl", Pass, ""},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			stateDir := filepath.Join(dir, "state")
			model := tc.model
			if model == "" {
				model = "dgxh100"
			}
			s, err := sim.Open(model, stateDir)
			if err != nil {
				t.Fatal(err)
			}
			var minors []int
			for i := range s.Devices {
				minors = append(minors, i)
			}
			roots, err := simhost.Create(filepath.Join(dir, "host"), minors, "550.54.15", simhosttest.Tools(t))
			if err != nil {
				t.Fatal(err)
			}
			if tc.setup != nil {
				tc.setup(t, s, roots)
			}
			cfg := Config{
				GPUs:       nvmlnode.Options{Simulate: model, SimStateDir: stateDir},
				DriverRoot: roots.DriverRoot, DevRoot: roots.DevRoot, ProcRoot: roots.ProcRoot,
				SharedGPUs: true,
			}
			if tc.notSimulated {
				cfg.GPUs = nvmlnode.Options{}
				cfg.Open = func(nvmlnode.Options) (*nvmlnode.Node, error) {
					t.Fatal("the check opened NVML without a library")
					return nil, nil
				}
			}
			if tc.mutateLib != nil {
				cfg.Open = func(nvmlnode.Options) (*nvmlnode.Node, error) {
					lib, err := sim.Open(model, stateDir)
					if err != nil {
						return nil, err
					}
					tc.mutateLib(lib)
					return nvmlnode.NewNode(lib)
				}
			}
			stateBefore, err := s.State()
			if err != nil {
				t.Fatal(err)
			}
			treeBefore := snapshot(t, dir, stateDir)

			report, err := Run(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			var text bytes.Buffer
			if err := report.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			t.Logf("report:\n%s", text.String())

			if report.Failed() != tc.wantFailed {
				t.Errorf("failed %t, want %t", report.Failed(), tc.wantFailed)
			}
			for _, w := range tc.want {
				if !hasItem(report, w) {
					t.Errorf("no %s item %q in section %q with %q", w.status, w.name, w.section, w.contains)
				}
			}
			for _, i := range tc.wantOtherGPUs {
				if !hasItem(report, want{fmt.Sprintf("GPU %d", i), "UUID", Pass, "GPU-"}) {
					t.Errorf("GPU %d is not reported", i)
				}
			}
			var decoded Report
			var js bytes.Buffer
			if err := report.WriteJSON(&js); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(js.Bytes(), &decoded); err != nil {
				t.Fatalf("JSON report: %v", err)
			}
			if !reflect.DeepEqual(&decoded, report) {
				t.Error("the JSON report does not read back as the report")
			}

			stateAfter, err := s.State()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(stateBefore, stateAfter) {
				t.Errorf("the check changed the simulated GPUs:\nbefore %+v\nafter  %+v", stateBefore, stateAfter)
			}
			if treeAfter := snapshot(t, dir, stateDir); !reflect.DeepEqual(treeBefore, treeAfter) {
				t.Errorf("the check changed the host trees:\nbefore %v\nafter  %v", treeBefore, treeAfter)
			}
		})
	}
}

// hasItem reports whether the report has the item, with w.contains in its
// message or details (a name that is a prefix matches too).
func hasItem(r *Report, w want) bool {
	for _, s := range r.Sections {
		if s.Title != w.section {
			continue
		}
		for _, it := range s.Items {
			if it.Status != w.status || !strings.HasPrefix(it.Name, w.name) {
				continue
			}
			text := it.Message + "\n" + strings.Join(it.Details, "\n")
			if strings.Contains(text, w.contains) {
				return true
			}
		}
	}
	return false
}

// snapshot describes every file under dir but the simulator's lock files,
// which its readers may create: path, mode, size, modification time and
// content digest.
func snapshot(t *testing.T, dir, stateDir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(p, stateDir) && strings.HasSuffix(p, ".lock") {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := fmt.Sprintf("%v %d %d", fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %x", sha256.Sum256(data))
		}
		out[p] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
