package nvmlnode

import (
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"

	"context"
	"fmt"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"
)

// eventWaitTimeout bounds one wait so that cancellation is noticed.
const eventWaitTimeout = 500 // milliseconds

// lostWaitBackoff is how long the watch waits after NVML reported a GPU
// lost instead of waiting for events: NVML then answers every wait at
// once, and the watch must not spin.
var lostWaitBackoff = time.Second

// lostRegisterInterval is how often the GPUs that were lost when the
// watch started are tried again.
var lostRegisterInterval = 10 * time.Second

// WatchEvents delivers NVML health events (critical XIDs, double-bit ECC
// errors, a GPU lost) of every GPU to handle until ctx ends. It returns an
// error if the event set cannot be set up; the caller then has to report
// the GPUs as unmonitored. A GPU fallen off the bus takes no registration:
// it is left out, lest the other GPUs go unwatched while it is lost (the
// probe reports it lost), and registered once it is back.
func (n *Node) WatchEvents(ctx context.Context, handle func(gpu.Event)) error {
	logger := klog.FromContext(ctx)
	set, ret := n.lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("create NVML event set: %w", nvmlError(ret))
	}
	defer func() {
		if ret := set.Free(); ret != nvml.SUCCESS {
			logger.Error(nvmlError(ret), "Freeing the NVML event set failed")
		}
	}()
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("count GPUs: %w", nvmlError(ret))
	}
	uuids := map[nvml.Device]string{}
	var lost []int
	for i := 0; i < count; i++ {
		err := n.registerEvents(set, i, uuids)
		if isLost(err) {
			logger.Info("GPU lost: its events are watched once it is back", "index", i)
			lost = append(lost, i)
			continue
		}
		if err != nil {
			return err
		}
	}
	lastTry := time.Now()
	for ctx.Err() == nil {
		if len(lost) > 0 && time.Since(lastTry) >= lostRegisterInterval {
			lastTry = time.Now()
			var still []int
			for _, i := range lost {
				err := n.registerEvents(set, i, uuids)
				switch {
				case isLost(err):
					still = append(still, i)
				case err != nil:
					return err
				default:
					logger.Info("GPU back: its events are watched", "index", i)
				}
			}
			lost = still
		}
		data, ret := set.Wait(eventWaitTimeout)
		switch ret {
		case nvml.SUCCESS:
		case nvml.ERROR_TIMEOUT:
			continue
		case nvml.ERROR_GPU_IS_LOST:
			logger.V(2).Info("NVML reports a GPU lost while waiting for events; waiting before the next wait", "backoff", lostWaitBackoff)
			select {
			case <-ctx.Done():
			case <-time.After(lostWaitBackoff):
			}
			continue
		default:
			return fmt.Errorf("wait for NVML events: %w", nvmlError(ret))
		}
		e := gpu.Event{GPUUUID: uuids[data.Device], GIID: -1, CIID: -1}
		if data.GpuInstanceId != 0xFFFFFFFF {
			e.GIID, e.CIID = int(data.GpuInstanceId), int(data.ComputeInstanceId)
		}
		switch data.EventType {
		case nvml.EventTypeXidCriticalError:
			e.Kind, e.XID = gpu.EventXID, data.EventData
		case nvml.EventTypeDoubleBitEccError:
			e.Kind = gpu.EventDoubleBitECC
		default:
			continue
		}
		handle(e)
	}
	return nil
}

// registerEvents registers GPU index's health events in set and records
// its UUID. An error of a lost GPU is one isLost reports.
func (n *Node) registerEvents(set nvml.EventSet, index int, uuids map[nvml.Device]string) error {
	dev, ret := n.lib.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		return fmt.Errorf("open GPU %d: %w", index, nvmlError(ret))
	}
	uuid, ret := dev.GetUUID()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("UUID of GPU %d: %w", index, nvmlError(ret))
	}
	supported, ret := dev.GetSupportedEventTypes()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("supported events of %s: %w", uuid, nvmlError(ret))
	}
	want := supported & (nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError)
	if ret := dev.RegisterEvents(want, set); ret != nvml.SUCCESS {
		return fmt.Errorf("register events of %s: %w", uuid, nvmlError(ret))
	}
	uuids[dev] = uuid
	return nil
}
