package gpu

// Topology is where a GPU sits in the host: its PCIe root complex and its
// NUMA node, read from sysfs (package topology), not from NVML.
type Topology struct {
	// PCIeRoot is the root complex, "pci<domain>:<bus>"; empty when unknown.
	PCIeRoot string
	// NUMANode is the GPU's NUMA node; NoNUMANode when the device has no
	// NUMA affinity or it is unknown.
	NUMANode int
}

// NoNUMANode is Topology.NUMANode of a GPU with no known NUMA node.
const NoNUMANode = -1
