package nvmlnode

import (
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"

	"context"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Probe reads every GPU's health counters. Only a failure to enumerate
// GPUs is an error; a GPU that cannot be read has Lost or Err set.
func (n *Node) Probe(ctx context.Context) ([]gpu.Reading, error) {
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("count GPUs: %w", nvmlError(ret))
	}
	out := make([]gpu.Reading, 0, count)
	for i := 0; i < count; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		r := gpu.Reading{Index: i}
		err := probeGPU(n.lib, i, &r)
		switch {
		case isLost(err):
			r.Lost = true
		case err != nil:
			r.Err = err
		}
		out = append(out, r)
	}
	return out, nil
}

func probeGPU(lib nvml.Interface, index int, r *gpu.Reading) error {
	dev, ret := lib.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		return fmt.Errorf("open GPU %d: %w", index, nvmlError(ret))
	}
	if r.UUID, ret = dev.GetUUID(); ret != nvml.SUCCESS {
		return fmt.Errorf("UUID of GPU %d: %w", index, nvmlError(ret))
	}
	// supported turns NOT_SUPPORTED into "no reading".
	supported := func(what string, ret nvml.Return) (bool, error) {
		switch ret {
		case nvml.SUCCESS:
			return true, nil
		case nvml.ERROR_NOT_SUPPORTED:
			return false, nil
		}
		return false, fmt.Errorf("%s of %s: %w", what, r.UUID, nvmlError(ret))
	}
	temp, ret := dev.GetTemperature(nvml.TEMPERATURE_GPU)
	if ok, err := supported("temperature", ret); err != nil {
		return err
	} else if ok {
		r.TemperatureC = int(temp)
	}
	for _, th := range []struct {
		kind nvml.TemperatureThresholds
		dst  *int
	}{{nvml.TEMPERATURE_THRESHOLD_SLOWDOWN, &r.SlowdownC}, {nvml.TEMPERATURE_THRESHOLD_SHUTDOWN, &r.ShutdownC}} {
		v, ret := dev.GetTemperatureThreshold(th.kind)
		if ok, err := supported("temperature threshold", ret); err != nil {
			return err
		} else if ok {
			*th.dst = int(v)
		}
	}
	pending, ret := dev.GetRetiredPagesPendingStatus()
	if ok, err := supported("pending page retirement", ret); err != nil {
		return err
	} else if ok && pending == nvml.FEATURE_ENABLED {
		r.RepairPending = true
	}
	_, _, rowsPending, failed, ret := dev.GetRemappedRows()
	if ok, err := supported("remapped rows", ret); err != nil {
		return err
	} else if ok {
		r.RepairPending = r.RepairPending || rowsPending
		r.RemapFailure = failed
	}
	ecc, ret := dev.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC)
	if ok, err := supported("volatile ECC errors", ret); err != nil {
		return err
	} else if ok {
		r.VolatileUncorrectedECC = ecc
	}
	return nil
}
