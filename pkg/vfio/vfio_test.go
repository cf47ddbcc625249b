package vfio_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/vfio/vfiotest"
)

var busIDs = []string{"0000:18:00.0", "0000:2a:00.0"}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func TestBindGroupToVFIOAndBack(t *testing.T) {
	h := vfiotest.Host(t, t.TempDir(), busIDs, simhost.PCIOptions{IOMMUFD: true})
	ctx := context.Background()
	gpu, audio := busIDs[1], simhost.AudioFunction(busIDs[1])
	group, err := h.Group(gpu)
	if err != nil || group != 1 {
		t.Fatalf("group of %s = %d, %v; want 1", gpu, group, err)
	}
	fns, err := h.GroupFunctions(group)
	if err != nil || strings.Join(fns, " ") != gpu+" "+audio {
		t.Fatalf("group functions = %v, %v", fns, err)
	}
	for _, step := range []struct {
		bdf, driver string
		groupNode   bool
	}{
		{gpu, names.KernelDriverVFIOPCI, true},
		{audio, names.KernelDriverVFIOPCI, true},
		{gpu, names.KernelDriverNVIDIA, true}, // the audio function still holds the group
		{audio, names.KernelDriverHDAudio, false},
		{audio, "", false},
		{audio, names.KernelDriverHDAudio, false},
	} {
		if err := h.Bind(ctx, step.bdf, step.driver); err != nil {
			t.Fatalf("bind %s to %q: %v", step.bdf, step.driver, err)
		}
		if got, err := h.Driver(step.bdf); err != nil || got != step.driver {
			t.Fatalf("after binding %s to %q its driver is %q (%v)", step.bdf, step.driver, got, err)
		}
		if got := exists(filepath.Join(h.DevRoot, "dev/vfio/1")); got != step.groupNode {
			t.Errorf("after binding %s to %q: /dev/vfio/1 exists = %v, want %v", step.bdf, step.driver, got, step.groupNode)
		}
		cdev, err := h.CharDevice(step.bdf)
		if err != nil || (cdev != "") != names.IsVFIODriver(step.driver) {
			t.Errorf("after binding %s to %q: character device %q (%v)", step.bdf, step.driver, cdev, err)
		}
	}
	if d, _ := h.Driver(busIDs[0]); d != names.KernelDriverNVIDIA {
		t.Errorf("the other GPU's driver changed to %q", d)
	}
	if !h.IOMMUFD() {
		t.Error("IOMMUFD() = false on a host with /dev/iommu")
	}
}

func TestBindToUnregisteredDriverUnbindsNothing(t *testing.T) {
	h := vfiotest.Host(t, t.TempDir(), busIDs, simhost.PCIOptions{})
	err := h.Bind(context.Background(), busIDs[0], names.KernelDriverNVGraceVFIO)
	if err == nil || !strings.Contains(err.Error(), "modprobe "+names.KernelDriverNVGraceVFIO) {
		t.Fatalf("error %v, want one that says to load the module", err)
	}
	if d, _ := h.Driver(busIDs[0]); d != names.KernelDriverNVIDIA {
		t.Errorf("driver %q after a refused bind, want nvidia", d)
	}
}

func TestNumVFs(t *testing.T) {
	h := vfiotest.Host(t, t.TempDir(), busIDs, simhost.PCIOptions{})
	if err := os.WriteFile(filepath.Join(h.SysRoot, "sys/bus/pci/devices", busIDs[0], "sriov_numvfs"), []byte("4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for bdf, want := range map[string]int{busIDs[0]: 4, busIDs[1]: 0, simhost.AudioFunction(busIDs[1]): 0} {
		if n, err := h.NumVFs(bdf); err != nil || n != want {
			t.Errorf("NumVFs(%s) = %d, %v; want %d", bdf, n, err, want)
		}
	}
}

func TestVariant(t *testing.T) {
	h := vfiotest.Host(t, t.TempDir(), busIDs, simhost.PCIOptions{})
	aliases := filepath.Join(t.TempDir(), "modules.alias")
	for _, tc := range []struct {
		name, aliases, want string
	}{
		{"no file", "", names.KernelDriverVFIOPCI},
		{"no match", "alias vfio_pci:v000015B3d0000101Esv*sd*bc*sc*i* mlx5_vfio_pci\n", names.KernelDriverVFIOPCI},
		{"the matching variant", "alias pci:v000010DEd*sv*sd*bc03sc*i* nvidia\n" +
			"alias vfio_pci:v000010DEd00002330sv*sd*bc*sc*i* nvgrace_gpu_vfio_pci\n", names.KernelDriverNVGraceVFIO},
		{"the closest of two", "alias vfio_pci:v000010DEd*sv*sd*bc*sc*i* any_nvidia_vfio_pci\n" +
			"alias vfio_pci:v000010DEd00002330sv*sd*bc*sc*i* nvgrace_gpu_vfio_pci\n", names.KernelDriverNVGraceVFIO},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := h
			h.ModulesAlias = aliases
			if tc.aliases == "" {
				h.ModulesAlias = filepath.Join(t.TempDir(), "missing")
			} else if err := os.WriteFile(aliases, []byte(tc.aliases), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := h.Variant(busIDs[0])
			if err != nil || got != tc.want {
				t.Errorf("Variant = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
