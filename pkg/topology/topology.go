// Package topology reads where each GPU sits in the host, its PCIe root
// complex and NUMA node, from the host's sysfs, for the standard
// resource.kubernetes.io/pcieRoot and numaNode attributes.
//
// sysfs is read under a root (the plugin's --sys-root, "/" on a real node,
// the simulated host's tree in the local cluster and in tests), through
// k8s.io/dynamic-resource-allocation/deviceattribute, so the values are
// computed exactly as every other DRA driver computes them and
// matchAttribute can align a GPU with another driver's NIC or CPU.
package topology

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"k8s.io/dynamic-resource-allocation/deviceattribute"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// Reader reads and caches GPUs' topology. A PCI device does not move while
// it exists, so each bus ID is read once; what could not be read is logged
// once and published without the attribute.
type Reader struct {
	sys    string
	logger klog.Logger

	mu    sync.Mutex
	cache map[string]gpu.Topology
}

// NewReader reads sysfs at <hostRoot>/sys. logger may be the zero Logger.
func NewReader(logger klog.Logger, hostRoot string) (*Reader, error) {
	sys := filepath.Join(hostRoot, "sys")
	fi, err := os.Stat(sys)
	if err != nil {
		return nil, fmt.Errorf("sysfs under the host root (--sys-root): %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("sysfs under the host root (--sys-root): %s is not a directory", sys)
	}
	return &Reader{sys: sys, logger: logger, cache: map[string]gpu.Topology{}}, nil
}

// Topology returns the topology of the PCI device with a bus ID in
// domain:bus:device.function form, e.g. "0000:18:00.0".
func (r *Reader) Topology(pciBusID string) gpu.Topology {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.cache[pciBusID]; ok {
		return t
	}
	t := gpu.Topology{NUMANode: gpu.NoNUMANode}
	fs := deviceattribute.WithFSFromRoot(r.sys)
	if a, err := deviceattribute.GetPCIeRootAttributeByPCIBusID(pciBusID, fs); err != nil {
		r.logger.Info("Warning: no PCIe root for the GPU; publishing it without the pcieRoot attribute", "pciBusID", pciBusID, "err", err)
	} else if a.Value.StringValue != nil {
		t.PCIeRoot = *a.Value.StringValue
	}
	// A device without NUMA affinity is an error here too: it must not
	// publish the attribute, which would match every other such device.
	if a, err := deviceattribute.GetNUMANodeAttributeByPCIBusID(pciBusID, deviceattribute.ScalarAttribute, fs); err != nil {
		r.logger.V(2).Info("No NUMA node for the GPU; publishing it without the numaNode attribute", "pciBusID", pciBusID, "err", err)
	} else if a.Value.IntValue != nil {
		t.NUMANode = int(*a.Value.IntValue)
	}
	r.cache[pciBusID] = t
	return t
}
