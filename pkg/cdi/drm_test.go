package cdi

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

// TestDRMNodes: a whole GPU gets the DRM nodes of its PCI device, found
// through the driver's information files and sysfs as nvidia-drm numbers
// them (not by the GPU's minor); a MIG device gets them only where its
// profile has graphics ("+gfx"). Whatever cannot
// be given is left out, logged, never an error.
func TestDRMNodes(t *testing.T) {
	hostfstest.RequireRoot(t, "the simulated /dev needs root")
	// Minors out of bus order, as NVML may number them.
	gpus := []simhost.GPUAddress{{Minor: 2, BusID: "0000:18:00.0"}, {Minor: 0, BusID: "0000:2a:00.0"}, {Minor: 1, BusID: "0000:3a:00.0"}}
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, host string)
		want   map[string][]string // device -> DRM node paths
		logged string              // in the warning; "" for none
	}{
		{
			name: "nvidia-drm loaded",
			want: map[string][]string{"gpu-0": {"/dev/dri/card2", "/dev/dri/renderD129"}, "gpu-2": {"/dev/dri/card1", "/dev/dri/renderD128"}, "gpu-0-mig": nil,
				"gpu-0-mig-gfx": {"/dev/dri/card2", "/dev/dri/renderD129"}},
		},
		{
			name: "nvidia-drm not loaded: no drm directories",
			change: func(t *testing.T, host string) {
				for _, g := range gpus {
					removeAll(t, filepath.Join(host, "sys/sys/bus/pci/devices", g.BusID, "drm"))
				}
			},
			want: map[string][]string{"gpu-0": nil, "gpu-2": nil, "gpu-0-mig-gfx": nil},
		},
		{
			name:   "a node sysfs names is not under the dev root",
			change: func(t *testing.T, host string) { removeAll(t, filepath.Join(host, "dev/dev/dri/renderD129")) },
			want:   map[string][]string{"gpu-0": {"/dev/dri/card2"}, "gpu-2": {"/dev/dri/card1", "/dev/dri/renderD128"}},
			logged: "renderD129",
		},
		{
			name:   "no information files",
			change: func(t *testing.T, host string) { removeAll(t, filepath.Join(host, "proc", GPUsDir)) },
			want:   map[string][]string{"gpu-0": nil, "gpu-2": nil},
		},
		{
			name: "an information file whose bus location is no PCI bus ID",
			change: func(t *testing.T, host string) {
				p := filepath.Join(host, "proc", GPUsDir, "0000:2a:00.0/information")
				if err := os.WriteFile(p, []byte("Bus Location: ../../../..\nDevice Minor: 0\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			want:   map[string][]string{"gpu-0": nil, "gpu-2": {"/dev/dri/card1", "/dev/dri/renderD128"}},
			logged: "no PCI bus ID",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := filepath.Join(t.TempDir(), "host")
			roots, err := simhost.Create(host, []int{0, 1, 2}, "550.54.15", simhosttest.Tools(t))
			if err != nil {
				t.Fatal(err)
			}
			busIDs := []string{gpus[0].BusID, gpus[1].BusID, gpus[2].BusID}
			sysRoot, err := simhost.CreateSysRoot(host, busIDs)
			if err != nil {
				t.Fatal(err)
			}
			if err := simhost.CreateDRM(host, gpus); err != nil {
				t.Fatal(err)
			}
			withInstances(t, roots, 0, simhost.GPUInstanceCaps{ID: 1, ComputeInstances: []int{0}}, simhost.GPUInstanceCaps{ID: 2, ComputeInstances: []int{0}})
			if tc.change != nil {
				tc.change(t, host)
			}
			w, err := New(Options{CDIRoot: filepath.Join(t.TempDir(), "cdi"), DriverRoot: roots.DriverRoot, DevRoot: roots.DevRoot, ProcRoot: roots.ProcRoot, SysRoot: sysRoot})
			if err != nil {
				t.Fatal(err)
			}
			var log bytes.Buffer
			ctx := klog.NewContext(context.Background(), textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(&log))))
			devs := []Device{
				{Name: "gpu-0", Request: "a", GPUMinor: 0, UUID: "GPU-0"},
				{Name: "gpu-2", Request: "a", GPUMinor: 2, UUID: "GPU-2"},
				{Name: "gpu-0-mig", Request: "b", GPUMinor: 0, UUID: "MIG-0", MIG: &MIGDevice{GIID: 1, CIID: 0}},
				{Name: "gpu-0-mig-gfx", Request: "c", GPUMinor: 0, UUID: "MIG-1", MIG: &MIGDevice{GIID: 2, CIID: 0, Graphics: true}},
			}
			ids, err := w.WriteClaimSpec(ctx, uid, devs)
			if err != nil {
				t.Fatalf("spec: %v", err)
			}
			for dev, want := range tc.want {
				var got []string
				for _, p := range devicePaths(inject(t, w, ids[dev]...)) {
					if strings.HasPrefix(p, "/dev/dri/") {
						got = append(got, p)
					}
				}
				if !slices.Equal(got, want) {
					t.Errorf("%s: DRM nodes %v, want %v", dev, got, want)
				}
			}
			warned := strings.Contains(log.String(), "DRM nodes left out")
			if warned != (tc.logged != "") || !strings.Contains(log.String(), tc.logged) {
				t.Errorf("log %q, want a warning naming %q", log.String(), tc.logged)
			}
		})
	}
}

func TestParseGPUInformation(t *testing.T) {
	for _, tc := range []struct {
		name, content string
		want          GPUInformation
		wantErr       bool
	}{
		{name: "the driver's", content: "Model: \t\t NVIDIA H100 80GB HBM3\nGPU UUID: \t GPU-1\nBus Location: \t 0000:18:00.0\nDevice Minor: \t 3\nGPU Excluded:\t No\n",
			want: GPUInformation{Minor: 3, BusID: "0000:18:00.0"}},
		{name: "upper-case bus ID", content: "Bus Location: 0000:AB:00.0\nDevice Minor: 0\n", want: GPUInformation{Minor: 0, BusID: "0000:ab:00.0"}},
		{name: "no minor", content: "Bus Location: 0000:18:00.0\n", wantErr: true},
		{name: "negative minor", content: "Bus Location: 0000:18:00.0\nDevice Minor: -1\n", wantErr: true},
		{name: "a path for a bus ID", content: "Bus Location: ../x\nDevice Minor: 0\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "information")
			if err := os.WriteFile(p, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := ParseGPUInformation(p)
			if (err != nil) != tc.wantErr || (!tc.wantErr && got != tc.want) {
				t.Errorf("got %+v, %v; want %+v, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func removeAll(t *testing.T, path string) {
	t.Helper()
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
}
