package sim

import (
	"fmt"
	"slices"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// HoldMIG records that holder (a process, such as an MPS control daemon
// named by its pipe directory) uses the MIG device migUUID: until
// ReleaseMIG, its compute instance cannot be destroyed (ERROR_IN_USE), as a
// GPU with a CUDA context on it refuses. A MIG device the node does not
// have is an error.
func (n *Node) HoldMIG(migUUID, holder string) error {
	return n.updateHolders(migUUID, func(hs []string) []string {
		if slices.Contains(hs, holder) {
			return hs
		}
		return append(slices.Clip(hs), holder)
	})
}

// ReleaseMIG ends every hold of holder, on every GPU.
func (n *Node) ReleaseMIG(holder string) error {
	for i := range n.store.gpus {
		err := n.mutate(i, 0, func(g *GPUState) nvml.Return {
			for gi := range g.GPUInstances {
				for ci := range g.GPUInstances[gi].ComputeInstances {
					c := &g.GPUInstances[gi].ComputeInstances[ci]
					if slices.Contains(c.Holders, holder) {
						c.Holders = slices.DeleteFunc(slices.Clone(c.Holders), func(h string) bool { return h == holder })
					}
				}
			}
			return nvml.SUCCESS
		})
		if err != nvml.SUCCESS && err != nvml.ERROR_GPU_IS_LOST {
			return fmt.Errorf("release MIG devices held by %s on GPU %d: %s", holder, i, nvml.ErrorString(err))
		}
	}
	return nil
}

func (n *Node) updateHolders(migUUID string, fn func([]string) []string) error {
	for i := range n.store.gpus {
		found := false
		ret := n.mutate(i, 0, func(g *GPUState) nvml.Return {
			for gi := range g.GPUInstances {
				for ci := range g.GPUInstances[gi].ComputeInstances {
					c := &g.GPUInstances[gi].ComputeInstances[ci]
					if c.UUID == migUUID {
						c.Holders = fn(c.Holders)
						found = true
					}
				}
			}
			return nvml.SUCCESS
		})
		if found {
			if ret != nvml.SUCCESS {
				return fmt.Errorf("hold MIG device %s: %s", migUUID, nvml.ErrorString(ret))
			}
			return nil
		}
	}
	return fmt.Errorf("hold MIG device %s: no such MIG device", migUUID)
}
