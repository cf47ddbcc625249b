package driver

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/health"
	"github.com/gpu-dra/gpu-dra-driver/pkg/prepare"
)

// This file connects the health monitor (pkg/health) to the rest of the
// driver: the MIG devices the preparer creates and destroys go to the
// monitor, and the monitor's changes go to the publisher and to the
// kubelet's health streams (KEP-4680).

// migTracker tells the health monitor of every MIG device the preparer
// creates or destroys, as it happens: NVML reuses GI and CI IDs, so an
// XID on a new instance must not be blamed on the one destroyed before it
// until the next inventory refresh.
type migTracker struct {
	prepare.GPUs
	monitor *health.Monitor
	// destroys counts every DestroyMIG once it has returned, failed or
	// not (a failed destroy may have destroyed part): Driver.migDestroys.
	destroys *atomic.Uint64
}

// CreateMIG implements prepare.GPUs.
func (t migTracker) CreateMIG(ctx context.Context, req gpu.MIGRequest) (gpu.MIGInstance, error) {
	inst, err := t.GPUs.CreateMIG(ctx, req)
	if err == nil {
		t.monitor.MIGCreated(inst)
	}
	return inst, err
}

// DestroyMIG implements prepare.GPUs.
func (t migTracker) DestroyMIG(ctx context.Context, ref gpu.MIGRef) error {
	err := t.GPUs.DestroyMIG(ctx, ref)
	t.destroys.Add(1)
	if err == nil {
		t.monitor.MIGDestroyed(ctx, ref)
	}
	return err
}

// onHealthChange is the monitor's OnChange: republish, and tell kubelet.
func (d *Driver) onHealthChange() {
	select {
	case d.healthChanged <- struct{}{}:
	default: // a republish is already pending
	}
	d.healthNotify.notify()
	d.healthChangedIdentity()
}

// deviceHealth is a prepared device's health: unknown before the first
// inventory and for a GPU passed through to a VM, unhealthy when its GPU
// is gone, otherwise what the health
// monitor says of the GPU and, for a MIG device, of the instance.
func (d *Driver) deviceHealth(inv *gpu.Inventory, dev checkpoint.Device) (kubeletplugin.HealthStatus, string) {
	if inv == nil {
		return kubeletplugin.HealthStatusUnknown, "no inventory yet"
	}
	if dev.VFIO != nil {
		// A GPU passed through is the VM's: the host's driver, which
		// NVML reads through, no longer drives it, so NVML neither sees
		// nor monitors it, and its absence is no fault.
		return kubeletplugin.HealthStatusUnknown, "GPU " + dev.GPUUUID + " is passed through to a VM; the host does not monitor it"
	}
	if !slices.ContainsFunc(inv.GPUs, func(g gpu.GPU) bool { return g.UUID == dev.GPUUUID }) {
		return kubeletplugin.HealthStatusUnhealthy, "GPU " + dev.GPUUUID + " not found"
	}
	var migUUID string
	if dev.MIG != nil {
		migUUID = dev.MIG.UUID
	}
	status, msg := d.monitor.DeviceHealth(dev.GPUUUID, migUUID)
	switch status {
	case health.Unhealthy:
		return kubeletplugin.HealthStatusUnhealthy, msg
	case health.Unknown:
		return kubeletplugin.HealthStatusUnknown, msg
	}
	return kubeletplugin.HealthStatusHealthy, msg
}

// healthResendInterval keeps reports well inside the kubelet's 30 s window.
const healthResendInterval = 10 * time.Second

// WatchHealthStatus implements kubeletplugin.DRAPlugin: it reports every
// prepared device's health now, whenever a health condition changes, and
// at least every healthResendInterval.
func (d *Driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	ticker := d.clock.NewTicker(healthResendInterval)
	defer ticker.Stop()
	for {
		changed := d.healthNotify.wait()
		inv, _ := d.state.current()
		var report kubeletplugin.DeviceHealthReport
		now := d.clock.Now()
		reported := map[[2]string]bool{}
		for _, c := range d.preparer.Snapshot().Claims {
			for _, dev := range c.Devices {
				// The shares of a shared GPU are one device to the kubelet.
				key := [2]string{dev.Pool, dev.Name}
				if reported[key] {
					continue
				}
				reported[key] = true
				status, msg := d.deviceHealth(inv, dev)
				report.Devices = append(report.Devices, kubeletplugin.DeviceHealth{
					PoolName: dev.Pool, DeviceName: dev.Name, Health: status, Message: msg,
					LastUpdated: now, HealthCheckTimeout: 3 * healthResendInterval,
				})
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case reports <- report:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
		case <-changed:
		}
	}
}

// broadcaster wakes every waiter at once: wait returns a channel that
// notify closes.
type broadcaster struct {
	mu sync.Mutex
	ch chan struct{}
}

func (b *broadcaster) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

func (b *broadcaster) notify() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil {
		close(b.ch)
	}
	b.ch = make(chan struct{})
}
