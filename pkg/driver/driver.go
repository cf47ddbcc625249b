// Package driver wires the node agent together: it reconciles the
// checkpoint with the hardware and the CDI specs, publishes the node's
// ResourceSlices, and serves the kubelet's DRA calls through the
// kubeletplugin helper.
//
// New does the start-up steps, which must finish before anything is
// served, and starts no goroutine; Start serves. The order matters and is,
// in full:
//
//	New:
//	 1. read the node's boot ID;
//	 2. load the checkpoint; an untrusted one is set aside (reported as a
//	    Kubernetes Event on the node) and prepared claims are rebuilt from
//	    the CDI specs;
//	 3. read the GPU inventory;
//	 4. reconcile checkpoint, live MIG devices and CDI specs, and save;
//	 5. create the health monitor (pkg/health) and probe once, so the
//	    first slices already carry its taints, and build the device model;
//	Start:
//	 6. start the health monitor and the watch of admin clearances, start
//	    the gRPC servers and register with the kubelet;
//	 7. publish the ResourceSlices; then, in the background, refresh the
//	    inventory periodically, and republish when the model changes:
//	    after an inventory change or at once after a health change, which
//	    also wakes every health stream (health.go).
//
// The shutdown order is in serve.
package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/draplugin"
	"github.com/gpu-dra/gpu-dra-driver/pkg/health"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/prepare"
	"github.com/gpu-dra/gpu-dra-driver/pkg/publish"
)

// GPUs is what the driver needs of the hardware.
type GPUs interface {
	Inventory
	prepare.GPUs
	health.Source
}

// Config is everything the driver needs.
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
	// DeviceMetadata has the kubelet plugin helper write each prepared
	// device's metadata (KEP-5304) into its containers, through a CDI spec
	// in CDIRoot (the container runtime's CDI directory).
	DeviceMetadata bool
	CDIRoot        string
	// GPUHolders, if set, names the processes that hold a GPU open (see
	// prepare.Options.GPUHolders).
	GPUHolders func(minor int) ([]string, error)
	// InventoryInterval is how often the inventory is re-read.
	InventoryInterval time.Duration
	// HeldDeviceWait is prepare.Options.HeldWait.
	HeldDeviceWait time.Duration
	StaticMIGOnly  bool
	// SharedGPUs publishes every whole GPU also as a shared device.
	SharedGPUs bool
	// VFIO, when set, publishes every GPU offered whole also as a device
	// for a VM, passed through with it (prepare.Options.VFIO).
	VFIO prepare.Passthrough
	// ConsumableShares offers whole GPUs in NVIDIA's consumable shares
	// (devicemodel.Input.ConsumableShares); the node's label replaces it.
	ConsumableShares devicemodel.ConsumableShares
	// Overhead is the node-allocatable overhead published per device kind
	// (KEP-5517); nil publishes none. The plugin sets it only where the
	// API server keeps the field (publish.KeepsNodeAllocatable).
	Overhead devicemodel.Overhead
	// Topology, when set, gives the GPUs' pcieRoot and numaNode attributes.
	Topology Topology
	// HealthPolicy classifies GPU faults into taints; HealthStorePath
	// keeps sticky conditions across restarts ("" keeps them in memory).
	HealthPolicy    health.Policy
	HealthStorePath string
	// AfterStep is passed to the Preparer (fault-injection tests).
	AfterStep func(prepare.Step)
	Metrics   *Metrics
	// Uninstalling, when set, is asked at shutdown whether the driver is
	// being uninstalled (its DaemonSet is gone) rather than restarted; then
	// the node's ResourceSlices are removed, so that no stale device can
	// be allocated. A restart or upgrade keeps them.
	Uninstalling func(ctx context.Context) (bool, error)
	// ProcRoot is the directory under which proc/ is read for the boot
	// ID; "" means "/". The boot ID is the kernel's, the same inside a
	// container.
	ProcRoot string
	// Clock times the inventory refresh, the health stream, the health
	// conditions, admin clearances and Events; nil is the real clock.
	Clock clock.WithTicker
	// StartHelper starts the kubelet plugin helper; nil starts
	// kubeletplugin's.
	StartHelper draplugin.StartHelperFunc
}

// Driver implements kubeletplugin.DRAPlugin.
type Driver struct {
	cfg       Config
	clock     clock.WithTicker
	state     *nodeState
	preparer  *prepare.Preparer
	monitor   *health.Monitor
	publisher *publish.Publisher
	// clearances are the admin clearances already handled (clear.go).
	clearances clearances

	// healthChanged wakes the main loop to republish after the taints
	// changed; healthNotify wakes every WatchHealthStatus stream.
	healthChanged chan struct{}
	// bindingChanged wakes the main loop to read the inventory again
	// after a GPU was bound to VFIO or given back (bindingNotifier).
	bindingChanged chan struct{}
	healthNotify   broadcaster
	// migDestroys counts the MIG devices the plugin destroyed (or tried
	// to: migTracker), and invDestroys what it counted before the
	// inventory in state was read. An inventory read before a destroy
	// still lists the instance; once the claim that made it is
	// forgotten, a model built from that inventory would publish the
	// instance as a pre-created (static) MIG device that no longer
	// exists, and the scheduler could allocate it. Models are built only
	// from inventories read after the last destroy (freshModel).
	migDestroys atomic.Uint64
	invDestroys uint64

	// Set by Start.
	helper draplugin.Helper
	cancel context.CancelCauseFunc
	// done is closed when serve has shut down, with err its cause.
	done chan struct{}
	err  error
	// identity writes prepared devices' identity into claim status
	// (status.go); started by Start.
	identity identity
	// nodeInformers watch the node for clearances and offers (clear.go);
	// set by Start, nil without a Kubernetes client.
	nodeInformers informers.SharedInformerFactory
}

var _ kubeletplugin.DRAPlugin = (*Driver)(nil)

// New does the start-up steps 1 to 5 (see the package doc): when it
// returns, the checkpoint agrees with the hardware and the CDI specs and
// the device model is built. It starts no goroutine and serves nothing.
func New(ctx context.Context, cfg Config) (*Driver, error) {
	logger := klog.FromContext(ctx)
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/"
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.StartHelper == nil {
		cfg.StartHelper = draplugin.StartKubeletHelper
	}
	d := &Driver{cfg: cfg, clock: cfg.Clock, state: &nodeState{staticMIGOnly: cfg.StaticMIGOnly, sharedGPUs: cfg.SharedGPUs, vfio: cfg.VFIO != nil, consumableShares: cfg.ConsumableShares, overhead: cfg.Overhead, topology: cfg.Topology},
		healthChanged: make(chan struct{}, 1), bindingChanged: make(chan struct{}, 1), done: make(chan struct{})}
	if cfg.VFIO != nil {
		cfg.VFIO = bindingNotifier{Passthrough: cfg.VFIO, changed: d.bindingChanged}
		d.cfg.VFIO = cfg.VFIO
	}

	// 1-2. Boot ID and checkpoint.
	bootID, err := checkpoint.ReadBootID(cfg.ProcRoot)
	if err != nil {
		return nil, err
	}
	cp, err := cfg.Store.Load()
	var corrupt *checkpoint.CorruptError
	rebuild := errors.As(err, &corrupt)
	switch {
	case rebuild:
		logger.Error(err, "Checkpoint set aside; rebuilding prepared claims from CDI specs and live MIG devices")
		d.nodeEvent(ctx, corev1.EventTypeWarning, "CheckpointCorrupt", err.Error())
	case err != nil:
		return nil, fmt.Errorf("load checkpoint: %w", err)
	}
	if cp.BootID != "" && cp.BootID != bootID {
		logger.Info("Node rebooted since the checkpoint was written", "previousBootID", cp.BootID, "bootID", bootID)
	}
	cp.BootID = bootID

	// 3-4. Inventory and reconciliation.
	readAt := d.clock.Now()
	inv, err := cfg.GPUs.Inventory(ctx)
	if err != nil {
		return nil, fmt.Errorf("read GPU inventory: %w", err)
	}
	cp, report, err := prepare.Reconciler{GPUs: cfg.GPUs, CDI: cfg.CDI, MPS: cfg.MPS, VFIO: cfg.VFIO}.Reconcile(ctx, prepare.Found{Checkpoint: cp, Inventory: inv, Lost: corrupt})
	if err != nil {
		return nil, fmt.Errorf("reconcile prepared claims: %w", err)
	}
	logger.Info("Reconciled prepared claims with the hardware and CDI specs", "claims", len(cp.Claims),
		"rolledBack", report.RolledBack, "dropped", report.Dropped, "rebuilt", report.Rebuilt,
		"specsRewritten", report.SpecsRewritten, "orphanSpecs", report.OrphanSpecs, "migDestroyed", report.MIGDestroyed,
		"mpsRestarted", report.MPSRestarted, "orphanMPS", report.OrphanMPS, "timeSlicesApplied", report.TimeSlicesApplied,
		"unreadable", report.Unreadable, "failed", len(report.Failed))
	if err := cfg.Store.Save(cp); err != nil {
		return nil, fmt.Errorf("save reconciled checkpoint: %w", err)
	}
	rebound := false
	select {
	case <-d.bindingChanged:
		// Reconciliation gave a GPU back to nvidia (a VM's claim rolled
		// back) or bound one: NVML sees other GPUs than it read above,
		// and a device of a GPU it did not see would not be published.
		rebound = true
	default:
	}
	if len(report.MIGDestroyed) > 0 || rebound {
		readAt = d.clock.Now()
		if inv, err = cfg.GPUs.Inventory(ctx); err != nil {
			return nil, fmt.Errorf("read GPU inventory: %w", err)
		}
	}

	// 5. Health, then the model with its taints.
	var healthStore *health.Store
	if cfg.HealthStorePath != "" {
		healthStore = health.NewStore(cfg.HealthStorePath)
	}
	d.monitor, err = health.NewMonitor(ctx, health.Options{
		Policy: cfg.HealthPolicy, Source: cfg.GPUs, Store: healthStore, BootID: bootID,
		OnChange: d.onHealthChange, Now: d.clock.Now,
	})
	if err != nil {
		return nil, err
	}
	d.monitor.SetInventory(ctx, inv, readAt)
	d.state.taints = d.monitor.Taints
	d.preparer = prepare.New(migTracker{cfg.GPUs, d.monitor, &d.migDestroys}, d.state, cfg.CDI, cfg.Store, cp, prepare.Options{
		PoolName: cfg.NodeName, AfterStep: cfg.AfterStep, MPS: cfg.MPS, HeldWait: cfg.HeldDeviceWait, GPUHolders: cfg.GPUHolders, VFIO: cfg.VFIO,
	})
	d.monitor.Probe(ctx)
	if err := d.state.refresh(ctx, inv, d.preparer); err != nil {
		return nil, err
	}
	d.cfg.Metrics.setPrepared(cp)
	d.publisher = publish.New(publish.Options{
		// Publishing errors are logged and retried with backoff: none of
		// them is fixed by restarting the plugin.
		DriverName: names.DriverName, NodeName: cfg.NodeName, Client: cfg.KubeClient,
	})
	return d, nil
}

// Start does the start-up steps 6 and 7 (see the package doc): it returns
// once the plugin serves the kubelet and the slices are published, and
// keeps the model current in the background until ctx ends or a fatal
// error happens; Wait tells when it has shut down. Call it once.
func (d *Driver) Start(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	d.cancel = cancel
	d.monitor.Start(ctx)
	// The offer is read before the node is watched: the watch would set
	// it first, and the first model would be built without it.
	if d.readOffer(ctx) {
		if err := d.rebuild(ctx); err != nil {
			return d.failStart(err)
		}
	}
	d.watchClearances(ctx)
	d.startIdentity(ctx, d.preparer.Snapshot())
	helper, err := d.cfg.StartHelper(ctx, d, helperOptions(d.cfg)...)
	if err != nil {
		return d.failStart(fmt.Errorf("start kubelet plugin: %w", err))
	}
	d.helper = helper
	if err := d.publish(ctx); err != nil {
		d.publisher.Stop()
		helper.Stop()
		return d.failStart(err)
	}
	go d.serve(ctx)
	return nil
}

// failStart stops what Start started before err, and makes err what Wait
// returns.
func (d *Driver) failStart(err error) error {
	d.cancel(err)
	d.stopWriters()
	d.err = err
	close(d.done)
	return err
}

// stopWriters waits, once Start's context has ended, for everything of the
// Driver that runs in the background and writes to the plugin's data
// directory outside a kubelet call: the node watch (its clearances clear
// sticky health conditions, which saves health.json) and the health
// monitor's goroutines (what they saw until then is saved). The monitor
// writes nothing afterwards. The MPS check is waited for in serve, the
// kubelet's calls by the handover's gate.
func (d *Driver) stopWriters() {
	if d.nodeInformers != nil {
		d.nodeInformers.Shutdown()
	}
	d.monitor.Close()
}

// Wait waits until the driver started by Start has shut down, and returns
// the fatal error that stopped it (or Start's error); nil after ctx ended.
func (d *Driver) Wait() error {
	<-d.done
	return d.err
}

// serve keeps the model current until ctx ends, then shuts down in this
// order:
//  1. if the driver is being uninstalled (a clean shutdown only), stop
//     publishing and remove the node's slices;
//  2. wait for the check of the MPS daemons;
//  3. stop publishing; the slices stay, so that a restarting plugin does
//     not make its devices disappear from the scheduler;
//  4. stop the gRPC servers; the kubelet sees the plugin go;
//  5. wait for the other writers of the data directory, the node watch
//     and the health monitor (stopWriters);
//  6. close done. A handover releases the node only then (serveTerm), so
//     the successor loads a checkpoint and a health.json that nothing of
//     this Driver writes any more.
func (d *Driver) serve(ctx context.Context) {
	logger := klog.FromContext(ctx)
	defer close(d.done)
	defer d.stopWriters()
	defer d.helper.Stop()
	defer d.publisher.Stop()
	// The daemons' check runs beside the loop (a daemon's start waits
	// for its pod), one at a time, and ends before the Driver is done:
	// a successor must not find this Driver still starting daemons.
	var daemons sync.WaitGroup
	var checking atomic.Bool
	defer daemons.Wait()
	ticker := d.clock.NewTicker(d.cfg.InventoryInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				d.err = cause
				return
			}
			logger.Info("Shutting down")
			d.removePoolIfUninstalled(logger)
			return
		case <-ticker.C():
			if err := d.refreshAndPublish(ctx); err != nil {
				logger.Error(err, "Refreshing the GPU inventory failed; keeping the published slices")
			}
			if checking.CompareAndSwap(false, true) {
				daemons.Add(1)
				go func() {
					defer daemons.Done()
					defer checking.Store(false)
					if err := d.preparer.EnsureDaemons(ctx); err != nil {
						logger.Error(err, "Some MPS control daemons of prepared claims could not be started again; retrying at the next inventory refresh")
					}
				}()
			}
		case <-d.bindingChanged:
			// A GPU went to a VM or came back: NVML's GPUs changed.
			if err := d.refreshAndPublish(ctx); err != nil {
				logger.Error(err, "Refreshing the GPU inventory after a GPU was passed through or given back failed; retrying with the next inventory refresh")
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
	if err := d.freshModel(ctx); err != nil {
		return err
	}
	return d.publish(ctx)
}

// freshReadAttempts bounds how often freshModel reads the inventory again
// while claims destroy MIG devices under it.
const freshReadAttempts = 3

// freshModel reads the inventory and rebuilds the model from it, again
// while a MIG device was destroyed between the read and the end of the
// build (migDestroys). After freshReadAttempts it gives up, leaving the
// model it has, for a caller not to publish: the next refresh tries again.
func (d *Driver) freshModel(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		before := d.migDestroys.Load()
		readAt := d.clock.Now()
		inv, err := d.cfg.GPUs.Inventory(ctx)
		if err != nil {
			return fmt.Errorf("read GPU inventory: %w", err)
		}
		d.monitor.SetInventory(ctx, inv, readAt)
		if err := d.state.refresh(ctx, inv, d.preparer); err != nil {
			return err
		}
		d.invDestroys = before
		if d.migDestroys.Load() == before {
			return nil
		}
		if attempt == freshReadAttempts {
			return fmt.Errorf("MIG devices were destroyed during each of %d inventory reads; not publishing a model that may list one of them", attempt)
		}
	}
}

// rebuildAndPublish rebuilds the model from the inventory last read, with
// the current taints, and republishes if it changed. An inventory read
// before a MIG device was destroyed is read again first (migDestroys).
func (d *Driver) rebuildAndPublish(ctx context.Context) error {
	if d.migDestroys.Load() != d.invDestroys {
		return d.refreshAndPublish(ctx)
	}
	if err := d.rebuild(ctx); err != nil {
		return err
	}
	if d.migDestroys.Load() != d.invDestroys {
		return d.refreshAndPublish(ctx)
	}
	return d.publish(ctx)
}

// rebuild rebuilds the model from the inventory last read.
func (d *Driver) rebuild(ctx context.Context) error {
	inv, _ := d.state.current()
	return d.state.refresh(ctx, inv, d.preparer)
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

// nodeEvent records a Kubernetes Event on the node; failures are logged.
func (d *Driver) nodeEvent(ctx context.Context, eventType, reason, message string) {
	if d.cfg.KubeClient == nil {
		return
	}
	now := metav1.NewTime(d.clock.Now())
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: d.cfg.NodeName + ".", Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: d.cfg.NodeName, UID: types.UID(d.cfg.NodeName), APIVersion: "v1"},
		Reason:         reason, Message: message, Type: eventType,
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		Source: corev1.EventSource{Component: names.PluginEventSource, Host: d.cfg.NodeName},
	}
	if _, err := d.cfg.KubeClient.CoreV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		klog.FromContext(ctx).Error(err, "Cannot record event on node", "reason", reason)
	}
}

// bindingNotifier tells the serve loop of every PCI driver binding a
// prepare, unprepare or reconciliation changes, so the GPUs NVML sees
// are read again at once rather than at the next inventory refresh.
type bindingNotifier struct {
	prepare.Passthrough
	changed chan<- struct{}
}

// Bind implements prepare.Passthrough.
func (n bindingNotifier) Bind(ctx context.Context, bdf, driver string) error {
	err := n.Passthrough.Bind(ctx, bdf, driver)
	select {
	case n.changed <- struct{}{}:
	default: // a refresh is already pending
	}
	return err
}
