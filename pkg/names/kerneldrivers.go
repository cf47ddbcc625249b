package names

import "strings"

// Kernel PCI drivers that a GPU and the other functions of its IOMMU group
// are bound to, spelled as the kernel registers them under
// /sys/bus/pci/drivers. They are the kernel's names, not the driver's: the
// plugin's VFIO passthrough, the simulated kernel and the tests spell them
// here once.
const (
	// KernelDriverNVIDIA is a GPU's driver while the host drives it.
	KernelDriverNVIDIA = "nvidia"
	// KernelDriverVFIOPCI is the generic VFIO PCI driver, which hands a
	// function to a virtual machine (module vfio_pci).
	KernelDriverVFIOPCI = "vfio-pci"
	// KernelDriverNVGraceVFIO is NVIDIA's VFIO variant driver for the GPUs
	// of Grace Hopper and Grace Blackwell (module nvgrace_gpu_vfio_pci).
	KernelDriverNVGraceVFIO = "nvgrace_gpu_vfio_pci"
	// KernelDriverHDAudio is the native driver of a GPU's HDMI/DP audio
	// function, which shares the GPU's IOMMU group.
	KernelDriverHDAudio = "snd_hda_intel"
)

// IsVFIODriver says whether a kernel PCI driver is VFIO's: vfio-pci or one
// of its variants, whose names end in vfio_pci (nvgrace_gpu_vfio_pci, …).
func IsVFIODriver(name string) bool {
	return name == KernelDriverVFIOPCI || strings.HasSuffix(strings.ReplaceAll(name, "-", "_"), "vfio_pci")
}
