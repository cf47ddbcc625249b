package cdi

import (
	"fmt"
	"path"

	specs "tags.cncf.io/container-device-interface/specs-go"
)

// VFIODevice is a GPU passed through to a VM: the device nodes through
// which the VM's process (KubeVirt's virt-launcher) reaches it.
type VFIODevice struct {
	// Group is the GPU's IOMMU group: /dev/vfio/<Group>.
	Group int
	// IOMMUFD gives the GPU through its iommufd character device,
	// /dev/vfio/devices/<CharDevice>, instead of its group.
	IOMMUFD    bool
	CharDevice string
	// APIDevice also gives /dev/iommu with IOMMUFD. The legacy backend's
	// API device, /dev/vfio/vfio (the VFIO container), is always given:
	// without it no process can use a group.
	APIDevice bool
}

// vfioNodes are the device nodes of a GPU passed through: the legacy
// backend's container and group nodes, or the iommufd backend's
// character device (and /dev/iommu if asked for). They are the host's
// nodes, read from DevRoot: the kernel numbers them at run time.
func (w *Writer) vfioNodes(v VFIODevice) ([]*specs.DeviceNode, error) {
	paths := []string{"/dev/vfio/vfio", path.Join("/dev/vfio", fmt.Sprint(v.Group))}
	if v.IOMMUFD {
		if v.CharDevice == "" {
			return nil, fmt.Errorf("iommufd asked for, but the GPU has no VFIO character device")
		}
		paths = []string{path.Join("/dev/vfio/devices", v.CharDevice)}
		if v.APIDevice {
			paths = append(paths, "/dev/iommu")
		}
	}
	nodes := make([]*specs.DeviceNode, 0, len(paths))
	for _, p := range paths {
		n, err := w.deviceNode(p)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}
