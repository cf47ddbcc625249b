// Package driver wires the node agent together: it reconciles the
// checkpoint with the hardware and the CDI specs, publishes the node's
// ResourceSlices, and serves the kubelet's DRA calls through the
// kubeletplugin helper.
//
// Start-up order matters and is, in full:
//  1. read the node's boot ID;
//  2. load the checkpoint; an untrusted one is set aside (reported as a
//     Kubernetes Event on the node) and prepared claims are rebuilt from
//     the CDI specs;
//  3. read the GPU inventory;
//  4. reconcile checkpoint, live MIG devices and CDI specs, and save;
//  5. start the health monitor (pkg/health) with one probe, so the first
//     slices already carry its taints, and build the device model;
//  6. start the gRPC servers and register with the kubelet;
//  7. publish the ResourceSlices; then refresh the inventory periodically,
//     and republish when the model changes: after an inventory change or
//     at once after a health change, which also wakes every health stream.
package driver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/health"
	"github.com/gpu-dra/gpu-dra-driver/pkg/prepare"
	"github.com/gpu-dra/gpu-dra-driver/pkg/publish"
)

// GPUs is what the driver needs of the hardware.
type GPUs interface {
	Inventory
	prepare.GPUs
	health.Source
}

// Config is everything Run needs.
type Config struct {
	NodeName   string
	KubeClient kubernetes.Interface
	GPUs       GPUs
	CDI        prepare.ReconcileCDI
	// MPS runs the MPS control daemons of claims that share through MPS.
	MPS   prepare.MPS
	Store *checkpoint.Store
	// PluginDir holds the plugin's gRPC socket; RegistrarDir is where the
	// kubelet looks for plugin registrations.
	PluginDir, RegistrarDir string
	// InventoryInterval is how often the inventory is re-read.
	InventoryInterval time.Duration
	// HeldDeviceWait is prepare.Options.HeldWait.
	HeldDeviceWait time.Duration
	StaticMIGOnly  bool
	// SharedGPUs publishes every whole GPU also as a shared device.
	SharedGPUs bool
	// Topology, when set, gives the GPUs' pcieRoot and numaNode attributes.
	Topology Topology
	// HealthPolicy classifies GPU faults into taints; HealthStorePath
	// keeps sticky conditions across restarts ("" keeps them in memory).
	HealthPolicy    health.Policy
	HealthStorePath string
	// AfterStep is passed to the Preparer (fault-injection tests).
	AfterStep func(prepare.Step)
	Metrics   *Metrics
	// Ready is called once the plugin is registered and has published.
	Ready func()
	// Uninstalling, when set, is asked at shutdown whether the driver is
	// being uninstalled (its DaemonSet is gone) rather than restarted; then
	// the node's ResourceSlices are removed, so that no stale device can
	// be allocated. A restart or upgrade keeps them.
	Uninstalling func(ctx context.Context) (bool, error)
}

// Driver implements kubeletplugin.DRAPlugin.
type Driver struct {
	cfg      Config
	state    *nodeState
	preparer *prepare.Preparer
	helper   *kubeletplugin.Helper
	cancel   context.CancelCauseFunc

	monitor *health.Monitor
	// healthChanged wakes the main loop to republish after the taints
	// changed; healthNotify wakes every WatchHealthStatus stream.
	healthChanged chan struct{}
	healthNotify  broadcaster

	publisher *publish.Publisher
	identity  identity
}

var _ kubeletplugin.DRAPlugin = (*Driver)(nil)

// Run runs the driver until ctx ends or a fatal error happens.
func Run(ctx context.Context, cfg Config) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	logger := klog.FromContext(ctx)
	d := &Driver{cfg: cfg, state: &nodeState{staticMIGOnly: cfg.StaticMIGOnly, sharedGPUs: cfg.SharedGPUs, topology: cfg.Topology}, cancel: cancel,
		healthChanged: make(chan struct{}, 1)}
	if d.cfg.Metrics == nil {
		d.cfg.Metrics = NewMetrics()
	}

	// 1-2. Boot ID and checkpoint.
	// The boot ID is the kernel's, the same inside a container.
	bootID, err := checkpoint.ReadBootID("/")
	if err != nil {
		return err
	}
	cp, err := cfg.Store.Load()
	var corrupt *checkpoint.CorruptError
	rebuild := errors.As(err, &corrupt)
	switch {
	case rebuild:
		logger.Error(err, "Checkpoint set aside; rebuilding prepared claims from CDI specs and live MIG devices")
		d.nodeEvent(ctx, corev1.EventTypeWarning, "CheckpointCorrupt", err.Error())
	case err != nil:
		return fmt.Errorf("load checkpoint: %w", err)
	}
	if cp.BootID != "" && cp.BootID != bootID {
		logger.Info("Node rebooted since the checkpoint was written", "previousBootID", cp.BootID, "bootID", bootID)
	}
	cp.BootID = bootID

	// 3-4. Inventory and reconciliation.
	inv, err := cfg.GPUs.Inventory(ctx)
	if err != nil {
		return fmt.Errorf("read GPU inventory: %w", err)
	}
	cp, report, err := prepare.Reconcile(ctx, cp, inv, cfg.GPUs, cfg.CDI, cfg.MPS, rebuild)
	if err != nil {
		return fmt.Errorf("reconcile prepared claims: %w", err)
	}
	logger.Info("Reconciled prepared claims with the hardware and CDI specs", "claims", len(cp.Claims),
		"rolledBack", report.RolledBack, "dropped", report.Dropped, "rebuilt", report.Rebuilt,
		"specsRewritten", report.SpecsRewritten, "orphanSpecs", report.OrphanSpecs, "migDestroyed", report.MIGDestroyed,
		"mpsRestarted", report.MPSRestarted, "orphanMPS", report.OrphanMPS)
	if err := cfg.Store.Save(cp); err != nil {
		return fmt.Errorf("save reconciled checkpoint: %w", err)
	}
	if len(report.MIGDestroyed) > 0 {
		if inv, err = cfg.GPUs.Inventory(ctx); err != nil {
			return fmt.Errorf("read GPU inventory: %w", err)
		}
	}

	// 5. Health, then the model with its taints.
	var healthStore *health.Store
	if cfg.HealthStorePath != "" {
		healthStore = health.NewStore(cfg.HealthStorePath)
	}
	d.monitor, err = health.NewMonitor(ctx, health.Options{
		Policy: cfg.HealthPolicy, Source: cfg.GPUs, Store: healthStore, BootID: bootID,
		OnChange: d.onHealthChange, ResolveMIG: d.preparedMIG,
	})
	if err != nil {
		return err
	}
	d.monitor.SetInventory(inv)
	d.state.taints = d.monitor.Taints
	// The preparer exists before the monitor starts: the monitor asks it
	// for MIG devices created since the inventory was read.
	d.preparer = prepare.New(cfg.GPUs, d.state, cfg.CDI, cfg.Store, cp, prepare.Options{
		PoolName: cfg.NodeName, AfterStep: cfg.AfterStep, MPS: cfg.MPS, HeldWait: cfg.HeldDeviceWait,
	})
	d.monitor.Start(ctx)
	if _, err := d.state.refresh(inv, cp); err != nil {
		return err
	}
	d.cfg.Metrics.setPrepared(cp)
	d.startIdentity(ctx, cp)
	d.watchClearances(ctx)

	// 6. gRPC servers and registration.
	helper, err := kubeletplugin.Start(ctx, d, helperOptions(cfg)...)
	if err != nil {
		return fmt.Errorf("start kubelet plugin: %w", err)
	}
	d.helper = helper
	defer helper.Stop()
	d.publisher = publish.New(publish.Options{
		// Publishing errors are logged and retried with backoff: none of
		// them is fixed by restarting the plugin.
		DriverName: names.DriverName, NodeName: cfg.NodeName, Client: cfg.KubeClient,
	})
	defer d.publisher.Stop()

	// 7. Publish, then keep the model current.
	if err := d.publish(ctx); err != nil {
		return err
	}
	if cfg.Ready != nil {
		cfg.Ready()
	}
	ticker := time.NewTicker(cfg.InventoryInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				return cause
			}
			logger.Info("Shutting down")
			d.removePoolIfUninstalled(logger)
			return nil
		case <-ticker.C:
			if err := d.refreshAndPublish(ctx); err != nil {
				logger.Error(err, "Refreshing the GPU inventory failed; keeping the published slices")
			}
		case <-d.healthChanged:
			if err := d.rebuildAndPublish(ctx); err != nil {
				logger.Error(err, "Republishing after a health change failed; retrying with the next inventory refresh")
			}
		}
	}
}

// removePoolIfUninstalled deletes the node's ResourceSlices when the driver
// is being uninstalled. It runs after the plugin's context ended, so it
// has its own deadline.
func (d *Driver) removePoolIfUninstalled(logger klog.Logger) {
	if d.cfg.Uninstalling == nil {
		return
	}
	ctx, cancel := context.WithTimeout(klog.NewContext(context.Background(), logger), 10*time.Second)
	defer cancel()
	uninstalling, err := d.cfg.Uninstalling(ctx)
	if err != nil {
		logger.Error(err, "Cannot tell an uninstall from a restart; keeping the node's ResourceSlices")
		return
	}
	if !uninstalling {
		return
	}
	d.publisher.Stop()
	n, err := publish.RemovePool(ctx, d.cfg.KubeClient, names.DriverName, d.cfg.NodeName)
	if err != nil {
		logger.Error(err, "Driver uninstalled, but the node's ResourceSlices could not be removed; run gpu-kubelet-plugin uninstall")
		return
	}
	logger.Info("Driver uninstalled: removed the node's ResourceSlices", "slices", n)
}

// refreshAndPublish re-reads the inventory and republishes if the model
// changed.
func (d *Driver) refreshAndPublish(ctx context.Context) error {
	inv, err := d.cfg.GPUs.Inventory(ctx)
	if err != nil {
		return fmt.Errorf("read GPU inventory: %w", err)
	}
	d.monitor.SetInventory(inv)
	if _, err := d.state.refresh(inv, d.preparer.Snapshot()); err != nil {
		return err
	}
	return d.publish(ctx)
}

// rebuildAndPublish rebuilds the model from the inventory last read, with
// the current taints, and republishes if it changed.
func (d *Driver) rebuildAndPublish(ctx context.Context) error {
	inv, _ := d.state.current()
	if _, err := d.state.refresh(inv, d.preparer.Snapshot()); err != nil {
		return err
	}
	return d.publish(ctx)
}

// preparedMIG finds a MIG device this plugin created, by its GPU and
// compute instance, in the prepared claims: one created since the last
// inventory refresh is already there.
func (d *Driver) preparedMIG(gpuUUID string, giid, ciid int) string {
	for _, c := range d.preparer.Snapshot().Claims {
		for _, dev := range c.Devices {
			if dev.GPUUUID == gpuUUID && dev.MIG != nil && dev.MIG.UUID != "" && dev.MIG.GIID == giid && dev.MIG.CIID == ciid {
				return dev.MIG.UUID
			}
		}
	}
	return ""
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

// publish hands the current model to the publisher, which changes only
// the slices that differ, and nothing if none does.
func (d *Driver) publish(ctx context.Context) error {
	d.refreshHealth(ctx)
	_, model := d.state.current()
	changed, err := d.publisher.Publish(ctx, model.Slices)
	if err != nil || !changed {
		return err
	}
	st := model.Stats()
	d.cfg.Metrics.PublishedDevices.Set(float64(st.Devices))
	klog.FromContext(ctx).Info("Published ResourceSlices", "slices", st.Slices, "devices", st.Devices, "gpus", st.GPUs, "migDevices", st.MIGDevices, "sharedGPUs", st.SharedGPUs)
	return nil
}

// PrepareResourceClaims implements kubeletplugin.DRAPlugin: claims are
// prepared concurrently; the Preparer orders what shares a GPU.
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	results := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, claim := range claims {
		wg.Go(func() {
			start := time.Now()
			devices, err := d.preparer.Prepare(ctx, claim)
			d.cfg.Metrics.observe("prepare", start, err)
			if err != nil {
				klog.FromContext(ctx).Error(err, "Prepare failed", "claim", klog.KObj(claim))
			}
			mu.Lock()
			results[claim.UID] = kubeletplugin.PrepareResult{Devices: devices, Err: err}
			mu.Unlock()
		})
	}
	wg.Wait()
	d.cfg.Metrics.setPrepared(d.preparer.Snapshot())
	d.claimsPrepared(claims, results)
	return results, nil
}

// UnprepareResourceClaims implements kubeletplugin.DRAPlugin.
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	results := make(map[types.UID]error, len(claims))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, claim := range claims {
		wg.Go(func() {
			start := time.Now()
			err := d.preparer.Unprepare(ctx, claim)
			d.cfg.Metrics.observe("unprepare", start, err)
			mu.Lock()
			results[claim.UID] = err
			mu.Unlock()
		})
	}
	wg.Wait()
	d.cfg.Metrics.setPrepared(d.preparer.Snapshot())
	d.claimsUnprepared(claims)
	return results, nil
}

// HandleError implements kubeletplugin.DRAPlugin: recoverable errors are
// logged; others stop the plugin (the DaemonSet restarts it).
func (d *Driver) HandleError(ctx context.Context, err error, msg string) {
	runtime.HandleErrorWithContext(ctx, err, msg)
	if !errors.Is(err, kubeletplugin.ErrRecoverable) {
		d.cancel(fmt.Errorf("fatal error: %s: %w", msg, err))
	}
}

// nodeEvent records a Kubernetes Event on the node; failures are logged.
func (d *Driver) nodeEvent(ctx context.Context, eventType, reason, message string) {
	if d.cfg.KubeClient == nil {
		return
	}
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: d.cfg.NodeName + ".", Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: d.cfg.NodeName, UID: types.UID(d.cfg.NodeName), APIVersion: "v1"},
		Reason:         reason, Message: message, Type: eventType,
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		Source: corev1.EventSource{Component: "gpu-kubelet-plugin", Host: d.cfg.NodeName},
	}
	if _, err := d.cfg.KubeClient.CoreV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		klog.FromContext(ctx).Error(err, "Cannot record event on node", "reason", reason)
	}
}

// deviceHealth is a prepared device's health: unknown before the first
// inventory, unhealthy when its GPU is gone, otherwise what the health
// monitor says of the GPU and, for a MIG device, of the instance.
func (d *Driver) deviceHealth(inv *gpu.Inventory, dev checkpoint.Device) (kubeletplugin.HealthStatus, string) {
	if inv == nil {
		return kubeletplugin.HealthStatusUnknown, "no inventory yet"
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
	ticker := time.NewTicker(healthResendInterval)
	defer ticker.Stop()
	for {
		changed := d.healthNotify.wait()
		inv, _ := d.state.current()
		var report kubeletplugin.DeviceHealthReport
		now := time.Now()
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
		case <-ticker.C:
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
