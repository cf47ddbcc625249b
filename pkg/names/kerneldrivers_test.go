package names

import "testing"

func TestIsVFIODriver(t *testing.T) {
	for _, tt := range []struct {
		driver string
		want   bool
	}{
		{KernelDriverVFIOPCI, true},
		{KernelDriverNVGraceVFIO, true},
		{"mlx5_vfio_pci", true},
		{"vfio_pci", true},
		{"some-vfio-pci", true},
		{KernelDriverNVIDIA, false},
		{KernelDriverHDAudio, false},
		{"vfio", false},
		{"vfio-pci-x", false},
		{"", false},
	} {
		if got := IsVFIODriver(tt.driver); got != tt.want {
			t.Errorf("IsVFIODriver(%q) = %v, want %v", tt.driver, got, tt.want)
		}
	}
}
