// Package plugin is the ComputeDomain driver's kubelet plugin: it wires
// the node packages together and serves the kubelet's DRA calls through
// the kubeletplugin helper.
//
// Run does, in order:
//  1. create or tighten the plugin's directories; load the checkpoint (an
//     untrusted one is set aside and prepared claims are adopted from
//     their CDI specs) and recover (prepare.Recover);
//  2. start the ComputeDomain informer (cluster-wide, dynamic client) and
//     the daemon pod informer (driver namespace, this node);
//  3. read the node's clique and publish its pool;
//  4. start the nodes.cfg syncer, the periodic clique refresh, and the
//     gRPC servers, registering with the kubelet; then report ready.
//
// At shutdown, in order: stop the gRPC servers (the kubelet sees the plugin
// go), stop publishing (the slices stay, so a restart does not make the
// devices disappear), stop the syncer and the informers.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/cdispec"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/devnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/domains"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/imexcfg"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/nodescfg"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/prepare"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/readiness"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/slices"
	"github.com/gpu-dra/gpu-dra-driver/pkg/draplugin"
	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/publish"
)

// DomainsDir is the directory of the domains' IMEX directories in the
// plugin directory.
const DomainsDir = "domains"

// RegistrarDirMode is the most the kubelet's registration directory may
// allow (it is the kubelet's; only write for group and others is taken).
const RegistrarDirMode fs.FileMode = 0o755

// Config is everything the plugin needs.
type Config struct {
	NodeName string
	// DriverNamespace is where daemon claims and daemon pods live.
	DriverNamespace string
	KubeClient      kubernetes.Interface
	DynamicClient   dynamic.Interface
	// CliqueID reads the node's clique ("" for none).
	CliqueID slices.CliqueFunc
	// PluginDir holds the DRA socket, the checkpoint and the domains'
	// IMEX directories: <kubelet plugins dir>/compute-domain.nvidia.com.
	PluginDir    string
	RegistrarDir string
	CDIRoot      string
	// DriverRoot is the host's driver root; DriverRootMount where this
	// process sees it ("" means DriverRoot).
	DriverRoot, DriverRootMount string
	DevRoot, ProcRoot           string
	ReadinessWait               time.Duration
	// CliqueInterval is how often the clique is re-read (0: default).
	CliqueInterval time.Duration
	// NodesResync is how often every nodes.cfg is checked (0: default).
	NodesResync time.Duration
	Metrics     *Metrics
	// Ready is told when the plugin serves and has published, and when
	// it stops; nil ignores.
	Ready func(bool)
	// AfterStep is prepare.Options.AfterStep (fault-injection tests).
	AfterStep func(prepare.Step)
	// Uninstalling, when set, is asked at a clean shutdown whether the
	// driver is being uninstalled (its DaemonSet is gone) rather than
	// restarted; then the node's ResourceSlices are removed.
	Uninstalling func(ctx context.Context) (bool, error)
	// StartHelper nil starts kubeletplugin's.
	StartHelper draplugin.StartHelperFunc
	// Mknod nil is unix.Mknod (tests without CAP_MKNOD replace it, with
	// Stat and Unlink).
	Mknod  devnode.MknodFunc
	Stat   func(string, *unixStat) error
	Unlink func(string) error
}

// Plugin implements kubeletplugin.DRAPlugin.
type Plugin struct {
	cfg      Config
	preparer *prepare.Preparer
	cancel   context.CancelCauseFunc
}

var _ kubeletplugin.DRAPlugin = (*Plugin)(nil)

// Run runs the plugin until ctx ends or a fatal error happens.
func Run(ctx context.Context, cfg Config) error {
	logger := klog.FromContext(ctx)
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	if cfg.Ready == nil {
		cfg.Ready = func(bool) {}
	}
	if cfg.StartHelper == nil {
		cfg.StartHelper = draplugin.StartKubeletHelper
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	// 1.
	store, err := checkpoint.NewStore(logger, cfg.PluginDir, nil)
	if err != nil {
		return fmt.Errorf("plugin directory: %w", err)
	}
	if err := hostfs.EnsureDir(logger, cfg.RegistrarDir, RegistrarDirMode); err != nil {
		return fmt.Errorf("registrar directory: %w", err)
	}
	cdiWriter, err := cdispec.New(logger, cfg.CDIRoot)
	if err != nil {
		return err
	}
	cp, err := store.Load()
	var corrupt *checkpoint.CorruptError
	lost := errors.As(err, &corrupt)
	switch {
	case lost:
		logger.Error(err, "Checkpoint set aside; adopting prepared claims from their CDI specs")
	case err != nil:
		return fmt.Errorf("load checkpoint: %w", err)
	}
	doms, err := domains.New(cfg.DynamicClient)
	if err != nil {
		return err
	}
	pods := readiness.New(readiness.Options{Client: cfg.KubeClient, NodeName: cfg.NodeName, Namespace: cfg.DriverNamespace})
	publisher := publish.New(publish.Options{DriverName: names.ComputeDomainDriverName, NodeName: cfg.NodeName, Client: cfg.KubeClient})
	pool := slices.New(cfg.CliqueID, publisher, cfg.CliqueInterval)
	dirs := &imexcfg.Dirs{Root: filepath.Join(cfg.PluginDir, DomainsDir), Logger: logger}
	var syncer *nodescfg.Syncer
	p := &Plugin{cfg: cfg, cancel: cancel}
	p.preparer = prepare.New(prepare.Options{
		NodeName: cfg.NodeName, DriverNamespace: cfg.DriverNamespace,
		DriverRoot: cfg.DriverRoot, DriverRootMount: cfg.DriverRootMount,
		ReadinessWait: cfg.ReadinessWait, CliqueID: pool.CliqueID,
		OnDaemonPrepared: func(uid string) { syncer.Enqueue(uid) },
		AfterStep:        cfg.AfterStep,
	}, prepare.Deps{
		Domains: doms, Readiness: pods, CDI: cdiWriter, Dirs: dirs, Store: store,
		DevNodes: &devnode.Maker{DevRoot: cfg.DevRoot, ProcRoot: cfg.ProcRoot, Mknod: cfg.Mknod, Stat: cfg.Stat, Unlink: cfg.Unlink},
	}, cp)
	syncer = nodescfg.New(doms, p.preparer, dirs, cfg.NodesResync)
	rep, err := p.preparer.Recover(ctx, lost)
	if err != nil {
		return fmt.Errorf("recover prepared claims: %w", err)
	}
	for uid, err := range rep.Failed {
		logger.Error(err, "Files of a prepared claim could not be made again; the kubelet's next prepare retries", "claimUID", uid)
	}
	logger.Info("Recovered prepared claims", "claims", len(p.preparer.Snapshot().Claims), "adopted", rep.Adopted,
		"rolledBack", rep.RolledBack, "restored", rep.Restored, "orphanSpecs", rep.OrphanSpecs, "orphanDirs", rep.OrphanDirs)
	cfg.Metrics.setPrepared(p.preparer.Snapshot())

	// 2.
	if err := doms.OnChange(syncer.Enqueue); err != nil {
		return err
	}
	if err := doms.Start(ctx); err != nil {
		return err
	}
	defer doms.Shutdown()
	if err := pods.Start(ctx); err != nil {
		return err
	}
	defer pods.Shutdown()

	// 3.
	if err := pool.Refresh(ctx); err != nil {
		return fmt.Errorf("publish the node's pool: %w", err)
	}
	defer publisher.Stop()

	// 4.
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { syncer.Run(ctx) })
	wg.Go(func() { pool.Run(ctx) })
	opts := draplugin.HelperConfig{
		DriverName: names.ComputeDomainDriverName, NodeName: cfg.NodeName, KubeClient: cfg.KubeClient,
		PluginDir: cfg.PluginDir, RegistrarDir: cfg.RegistrarDir,
	}.Options()
	// No device health to report: channels and daemons are not hardware
	// the plugin watches.
	helper, err := cfg.StartHelper(ctx, p, append(opts, kubeletplugin.HealthService(false))...)
	if err != nil {
		cancel(err)
		return fmt.Errorf("start kubelet plugin: %w", err)
	}
	defer helper.Stop()
	cfg.Ready(true)
	defer cfg.Ready(false)
	logger.Info("Serving", "node", cfg.NodeName, "clique", pool.CliqueID(), "pluginDir", cfg.PluginDir)
	<-ctx.Done()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	logger.Info("Shutting down")
	p.removePoolIfUninstalled(logger, publisher)
	return nil
}

// removePoolIfUninstalled deletes the node's ResourceSlices when the
// driver is being uninstalled, so that no stale device can be allocated.
// It runs after the plugin's context ended, with its own deadline.
func (p *Plugin) removePoolIfUninstalled(logger klog.Logger, publisher *publish.Publisher) {
	if p.cfg.Uninstalling == nil {
		return
	}
	ctx, cancel := context.WithTimeout(klog.NewContext(context.Background(), logger), 10*time.Second)
	defer cancel()
	uninstalling, err := p.cfg.Uninstalling(ctx)
	if err != nil {
		logger.Error(err, "Cannot tell an uninstall from a restart; keeping the node's ResourceSlices")
		return
	}
	if !uninstalling {
		return
	}
	publisher.Stop()
	n, err := publish.RemovePool(ctx, p.cfg.KubeClient, names.ComputeDomainDriverName, p.cfg.NodeName)
	if err != nil {
		logger.Error(err, "Driver uninstalled, but the node's ResourceSlices could not be removed")
		return
	}
	logger.Info("Driver uninstalled: removed the node's ResourceSlices", "slices", n)
}

// PrepareResourceClaims implements kubeletplugin.DRAPlugin: claims are
// prepared concurrently (calls for one claim are serialised).
func (p *Plugin) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	results := draplugin.PrepareAll(claims, func(claim *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
		start := time.Now()
		devices, err := p.preparer.Prepare(ctx, claim)
		p.cfg.Metrics.observe("prepare", start, err)
		if err != nil {
			klog.FromContext(ctx).Error(err, "Prepare failed", "claim", klog.KObj(claim))
		}
		return kubeletplugin.PrepareResult{Devices: devices, Err: err}
	})
	p.cfg.Metrics.setPrepared(p.preparer.Snapshot())
	return results, nil
}

// UnprepareResourceClaims implements kubeletplugin.DRAPlugin.
func (p *Plugin) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	results := draplugin.UnprepareAll(claims, func(claim kubeletplugin.NamespacedObject) error {
		start := time.Now()
		err := p.preparer.Unprepare(ctx, claim)
		p.cfg.Metrics.observe("unprepare", start, err)
		if err != nil {
			klog.FromContext(ctx).Error(err, "Unprepare failed", "claim", claim.NamespacedName)
		}
		return err
	})
	p.cfg.Metrics.setPrepared(p.preparer.Snapshot())
	return results, nil
}

// HandleError implements kubeletplugin.DRAPlugin: recoverable errors are
// logged; others stop the plugin (its DaemonSet restarts it).
func (p *Plugin) HandleError(ctx context.Context, err error, msg string) {
	runtime.HandleErrorWithContext(ctx, err, msg)
	if !errors.Is(err, kubeletplugin.ErrRecoverable) {
		p.cancel(fmt.Errorf("fatal error: %s: %w", msg, err))
	}
}

// WatchHealthStatus implements kubeletplugin.DRAPlugin: the driver reports
// no device health (the service is turned off, so the kubelet never asks).
func (p *Plugin) WatchHealthStatus(context.Context, chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}
