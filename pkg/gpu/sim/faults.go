package sim

import (
	"fmt"
	"slices"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// InjectXID records an XID error on GPU index, delivered to event sets. A
// MIG-scoped XID names the GPU and compute instance; pass -1, -1 for a
// GPU-wide one.
func (n *Node) InjectXID(index int, xid uint64, giid, ciid int) error {
	return n.inject(index, EventState{Type: nvml.EventTypeXidCriticalError, Data: xid, GIID: giid, CIID: ciid})
}

// InjectDoubleBitECC records an uncorrectable (double-bit) ECC error: an
// event, and one more in the GPU's volatile uncorrected-error counter.
func (n *Node) InjectDoubleBitECC(index int) error {
	return n.inject(index, EventState{Type: nvml.EventTypeDoubleBitEccError, GIID: -1, CIID: -1})
}

func (n *Node) inject(index int, e EventState) error {
	if _, err := n.store.gpu(index); err != nil {
		return err
	}
	if e.Type == nvml.EventTypeDoubleBitEccError {
		// The counter first, as hardware counts the error before it reports it.
		if err := n.setGPU(index, func(g *GPUState) { g.VolatileDBE++ }); err != nil {
			return err
		}
	}
	e.GPU = index
	return n.store.node.update(0, func(st *nodeState) error {
		st.addEvent(e)
		return nil
	})
}

// SetRowRemapFailure sets whether GPU index has a failed row remapping.
func (n *Node) SetRowRemapFailure(index int, failed bool) error {
	return n.setGPU(index, func(g *GPUState) { g.RowRemapFailure = failed })
}

// Reset resets GPU index as nvidia-smi --gpu-reset would: it is back on
// the bus, pending memory repairs are done (a failed one is not undone:
// that memory stays broken), the volatile ECC counters start again from
// zero, and a pending MIG mode (Ampere) becomes the current one, without
// MIG devices when it turns MIG off. Otherwise MIG mode and instances are
// kept, which is what the driver's persistent MIG configuration would
// restore.
func (n *Node) Reset(index int) error {
	return n.setGPU(index, func(g *GPUState) {
		g.Lost = false
		g.RetiredPagesPending = false
		g.VolatileDBE = 0
		if g.MIGModePending {
			g.MIGMode, g.MIGModePending = pendingMIGMode(g), false
			if g.MIGMode == nvml.DEVICE_MIG_DISABLE {
				g.GPUInstances = nil
			}
		}
		g.Resets++
	})
}

// SetLost makes GPU index fall off the bus (every call fails with
// ERROR_GPU_IS_LOST) or come back.
func (n *Node) SetLost(index int, lost bool) error {
	return n.setGPU(index, func(g *GPUState) { g.Lost = lost })
}

// SetTemperature sets GPU index's core temperature in °C.
func (n *Node) SetTemperature(index int, celsius int) error {
	if celsius < -50 || celsius > 200 {
		return fmt.Errorf("temperature %d°C is out of range", celsius)
	}
	return n.setGPU(index, func(g *GPUState) { g.TemperatureC = celsius })
}

// SetRetiredPagesPending sets whether GPU index has page retirements pending
// a reset.
func (n *Node) SetRetiredPagesPending(index int, pending bool) error {
	return n.setGPU(index, func(g *GPUState) { g.RetiredPagesPending = pending })
}

// SetClient opens (open true) or closes GPU index for a process other
// than the driver, named name (e.g. "dcgm-exporter"): while any is open, a
// MIG mode change stays pending (see GPUState.Clients).
func (n *Node) SetClient(index int, name string, open bool) error {
	if name == "" {
		return fmt.Errorf("a client of GPU %d needs a name", index)
	}
	return n.setGPU(index, func(g *GPUState) {
		g.Clients = slices.DeleteFunc(slices.Clone(g.Clients), func(c string) bool { return c == name })
		if open {
			g.Clients = append(g.Clients, name)
		}
	})
}

// SetMIGMode sets GPU index's MIG mode directly, as an administrator's
// nvidia-smi would; it fails while GPU instances exist. On Ampere the
// change is pending until the GPU is reset (Reset), as on hardware.
func (n *Node) SetMIGMode(index int, enabled bool) error {
	d, err := n.device(index)
	if err != nil {
		return err
	}
	mode := nvml.DEVICE_MIG_DISABLE
	if enabled {
		mode = nvml.DEVICE_MIG_ENABLE
	}
	activation, ret := d.SetMigMode(mode)
	if ret != nvml.SUCCESS {
		return fmt.Errorf("set MIG mode of GPU %d: %s", index, nvml.ErrorString(ret))
	}
	if activation != nvml.SUCCESS && activation != nvml.ERROR_RESET_REQUIRED {
		return fmt.Errorf("activate MIG mode of GPU %d: %s", index, nvml.ErrorString(activation))
	}
	return nil
}

func (n *Node) device(index int) (nvml.Device, error) {
	if index < 0 || index >= len(n.Devices) {
		return nil, fmt.Errorf("GPU index %d out of range (node has %d GPUs)", index, len(n.Devices))
	}
	return n.Devices[index], nil
}

// setGPU changes GPU index's state at once, as a fault or an administrator
// does, waiting only for a change of the GPU in progress.
func (n *Node) setGPU(index int, fn func(*GPUState)) error {
	r, err := n.store.gpu(index)
	if err != nil {
		return err
	}
	return r.update(0, func(g *GPUState) error {
		fn(g)
		return nil
	})
}

// Calls SetCallError can make fail.
var injectableCalls = []string{"GetUUID", "GetMemoryInfo", "GetGpuFabricInfo"}

// SetCallError makes every call of the named NVML device method
// ("GetUUID", "GetMemoryInfo", "GetGpuFabricInfo") on GPU index fail with ret, as a GPU that
// fell off the bus before NVML was initialised (ERROR_GPU_IS_LOST on
// GetUUID) or a driver answering an unexpected code does; SUCCESS removes
// the fault.
func (n *Node) SetCallError(index int, call string, ret nvml.Return) error {
	if !slices.Contains(injectableCalls, call) {
		return fmt.Errorf("cannot inject an error into %q: want one of %v", call, injectableCalls)
	}
	return n.setGPU(index, func(g *GPUState) {
		if ret == nvml.SUCCESS {
			delete(g.CallErrors, call)
			return
		}
		if g.CallErrors == nil {
			g.CallErrors = map[string]int32{}
		}
		g.CallErrors[call] = int32(ret)
	})
}

// callError is the error injected into call on GPU index, or SUCCESS.
func (n *Node) callError(index int, call string) nvml.Return {
	g, err := n.store.gpus[index].read()
	if err != nil {
		return nvml.ERROR_UNKNOWN
	}
	if ret, ok := g.CallErrors[call]; ok {
		return nvml.Return(ret)
	}
	return nvml.SUCCESS
}
