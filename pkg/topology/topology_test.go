package topology

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/dynamic-resource-allocation/deviceattribute"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

func TestNamesAreTheStandardAttributes(t *testing.T) {
	if names.AttrPCIeRoot != string(deviceattribute.StandardDeviceAttributePCIeRoot) {
		t.Errorf("names.AttrPCIeRoot = %q, want %q", names.AttrPCIeRoot, deviceattribute.StandardDeviceAttributePCIeRoot)
	}
	if names.AttrNUMANode != string(deviceattribute.StandardDeviceAttributeNUMANode) {
		t.Errorf("names.AttrNUMANode = %q, want %q", names.AttrNUMANode, deviceattribute.StandardDeviceAttributeNUMANode)
	}
}

// dgxBusIDs are the GPUs of a DGX H100, as the simulator numbers them.
var dgxBusIDs = []string{"0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0", "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"}

func TestReaderReadsTheSimulatedHost(t *testing.T) {
	dir := t.TempDir()
	root, err := simhost.CreateSysRoot(dir, dgxBusIDs)
	if err != nil {
		t.Fatal(err)
	}
	// Created twice, as the cluster scripts do on every start.
	if _, err := simhost.CreateSysRoot(dir, dgxBusIDs); err != nil {
		t.Fatalf("second CreateSysRoot: %v", err)
	}
	r, err := NewReader(klogDiscard(), root)
	if err != nil {
		t.Fatal(err)
	}
	want := []gpu.Topology{
		{PCIeRoot: "pci0000:15", NUMANode: 0}, {PCIeRoot: "pci0000:15", NUMANode: 0},
		{PCIeRoot: "pci0000:37", NUMANode: 0}, {PCIeRoot: "pci0000:37", NUMANode: 0},
		{PCIeRoot: "pci0000:97", NUMANode: 1}, {PCIeRoot: "pci0000:97", NUMANode: 1},
		{PCIeRoot: "pci0000:b7", NUMANode: 1}, {PCIeRoot: "pci0000:b7", NUMANode: 1},
	}
	for i, id := range dgxBusIDs {
		if got := r.Topology(id); got != want[i] {
			t.Errorf("Topology(%s) = %+v, want %+v", id, got, want[i])
		}
	}
}

func TestReaderOmitsWhatSysfsLacks(t *testing.T) {
	const id = "0000:18:00.0"
	tests := []struct {
		name  string
		setup func(t *testing.T, sys string)
		want  gpu.Topology
	}{
		{
			name:  "device unknown to sysfs",
			setup: func(t *testing.T, sys string) {},
			want:  gpu.Topology{NUMANode: gpu.NoNUMANode},
		},
		{
			name: "no NUMA affinity",
			setup: func(t *testing.T, sys string) {
				device(t, sys, "devices/pci0000:17/0000:17:01.0/"+id, "-1\n")
			},
			want: gpu.Topology{PCIeRoot: "pci0000:17", NUMANode: gpu.NoNUMANode},
		},
		{
			name: "link outside /sys/devices",
			setup: func(t *testing.T, sys string) {
				device(t, sys, "class/other/"+id, "1\n")
			},
			want: gpu.Topology{NUMANode: 1},
		},
		{
			name: "root complex directly above the device",
			setup: func(t *testing.T, sys string) {
				device(t, sys, "devices/pci0000:16/"+id, "3\n")
			},
			want: gpu.Topology{PCIeRoot: "pci0000:16", NUMANode: 3},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			sys := filepath.Join(root, "sys")
			if err := os.MkdirAll(filepath.Join(sys, "bus/pci/devices"), 0o755); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, sys)
			r, err := NewReader(klogDiscard(), root)
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Topology(id); got != tt.want {
				t.Errorf("Topology = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestNewReaderRefusesAMissingSysfs(t *testing.T) {
	if _, err := NewReader(klogDiscard(), t.TempDir()); err == nil {
		t.Fatal("NewReader on a root without sys/ succeeded")
	}
}

// device makes sys/<rel>/numa_node and links sys/bus/pci/devices/<base> to it.
func device(t *testing.T, sys, rel, numa string) {
	t.Helper()
	dir := filepath.Join(sys, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "numa_node"), []byte(numa), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join("../../..", rel), filepath.Join(sys, "bus/pci/devices", filepath.Base(rel))); err != nil {
		t.Fatal(err)
	}
}

func klogDiscard() klog.Logger { return klog.Logger{} }
