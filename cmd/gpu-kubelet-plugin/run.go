package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/cdi"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/command"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/driver"
	"github.com/gpu-dra/gpu-dra-driver/pkg/driverroot"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpuholders"
	"github.com/gpu-dra/gpu-dra-driver/pkg/health"
	"github.com/gpu-dra/gpu-dra-driver/pkg/httpserve"
	"github.com/gpu-dra/gpu-dra-driver/pkg/kubeclient"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps/daemonpod"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/ownership"
	"github.com/gpu-dra/gpu-dra-driver/pkg/prepare"
	"github.com/gpu-dra/gpu-dra-driver/pkg/publish"
	"github.com/gpu-dra/gpu-dra-driver/pkg/topology"
	"github.com/gpu-dra/gpu-dra-driver/pkg/version"
	"github.com/gpu-dra/gpu-dra-driver/pkg/vfio"
)

// runOptions are the flags of the plugin itself.
type runOptions struct {
	kubeconfig        string
	claimReaderConfig string
	cdiRoot           string
	deviceMetadata    bool
	pluginDir         string
	pluginDataDir     string
	registrarDir      string
	driverRoot        string
	driverRootMount   string
	devRoot           string
	procRoot          string
	sysRoot           string
	vfioModulesDir    string
	httpEndpoint      string
	probeSocket       string
	podUID            string
	inventoryInterval time.Duration
	heldDeviceWait    time.Duration
	startTimeout      time.Duration
	daemonSet         string
	healthPolicy      string
	healthProbe       time.Duration
	healthClearAfter  time.Duration
	crashAt           string
	mpsDaemonPods     daemonpod.Launcher
	mpsFSSize         string
	mpsFSInodes       int64
	// The MPS daemon pods' requests and limits, copied into mpsDaemonPods.
	mpsDaemonCPU, mpsDaemonMemory resource.QuantityValue
	// overhead is --node-allocatable-overhead, checked as it is set.
	overhead devicemodel.Overhead
}

// overheadFlag is --node-allocatable-overhead (devicemodel.ParseOverhead).
type overheadFlag struct{ v *devicemodel.Overhead }

func (f overheadFlag) String() string { return f.v.String() }
func (f overheadFlag) Type() string   { return "KIND:RESOURCE=QUANTITY,..." }
func (f overheadFlag) Set(s string) error {
	o, err := devicemodel.ParseOverhead(s)
	if err != nil {
		return err
	}
	*f.v = o
	return nil
}

// nvmlLibrary is the file name the NVIDIA driver installs NVML as.
const nvmlLibrary = "libnvidia-ml.so.1"

func (o *runOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster configuration")
	fs.StringVar(&o.claimReaderConfig, "claim-reader-kubeconfig", "", "the kubelet's kubeconfig (identity system:node:<node>), with which the claims to prepare are read: the API server's Node authorizer lets it read only the claims of pods bound to this node, and the plugin's own identity needs no read of claims. Empty reads them with --kubeconfig's identity, which RBAC lets read any claim by name")
	fs.StringVar(&o.cdiRoot, "cdi-root", "/var/run/cdi", "directory the container runtime reads CDI specs from")
	fs.BoolVar(&o.deviceMetadata, "device-metadata", true, "write each prepared device's metadata (KEP-5304: its attributes; a MIG device's UUID and instances) into the claim's containers at /var/run/kubernetes.io/dra-device-attributes/, through a CDI spec in --cdi-root")
	fs.StringVar(&o.pluginDir, "plugin-dir", "/var/lib/kubelet/plugins/gpu.nvidia.com", "directory of the plugin's gRPC socket (under the kubelet's plugins directory)")
	fs.StringVar(&o.pluginDataDir, "plugin-data-dir", "", "directory of the checkpoint; empty means --plugin-dir")
	fs.StringVar(&o.registrarDir, "registrar-dir", "/var/lib/kubelet/plugins_registry", "the kubelet's plugin registration directory")
	fs.StringVar(&o.driverRoot, "driver-root", "/", "host path of the NVIDIA driver installation (libraries and binaries)")
	fs.StringVar(&o.driverRootMount, "driver-root-mount", "", "where this process finds --driver-root: its mount in the plugin's container (the chart mounts it at /driver-root); NVML, nvidia-smi and the MPS control are taken from there, CDI specs name the host paths; empty means --driver-root")
	fs.StringVar(&o.devRoot, "dev-root", "/", "host root under which /dev/nvidia* are found")
	fs.StringVar(&o.procRoot, "proc-root", "/", "host root under which /proc is found")
	fs.StringVar(&o.sysRoot, "sys-root", "/", "host root under which /sys is found, for the GPUs' PCIe root and NUMA node, and their DRM nodes")
	fs.StringVar(&o.vfioModulesDir, "vfio-modules-dir", "/lib/modules", "the host's kernel modules directory, whose <release>/modules.alias says which VFIO variant driver suits a GPU (e.g. nvgrace_gpu_vfio_pci on Grace); without it, GPUs for VMs are bound to vfio-pci (with --vfio-passthrough)")
	fs.StringVar(&o.httpEndpoint, "http-endpoint", "", "host:port for /metrics, /healthz and /readyz; empty disables it. A port in use (by the plugin being replaced in a roll) is retried until it is free")
	fs.StringVar(&o.probeSocket, "probe-socket", "", "Unix socket for /healthz, /readyz and /metrics, asked by \"gpu-kubelet-plugin probe\" (the chart's probes: no host port, so two plugins on a node during a roll do not collide); empty disables it")
	fs.StringVar(&o.podUID, "pod-uid", "", "UID of the plugin's pod (the chart passes it from the downward API): enables rolling updates, in which the next plugin registers with the kubelet under its own socket names while this one serves, and takes the node over from it; empty registers the fixed socket names once the node is owned")
	fs.DurationVar(&o.inventoryInterval, "inventory-interval", 30*time.Second, "how often the GPU inventory is re-read for changes")
	fs.DurationVar(&o.startTimeout, "start-timeout", driver.DefaultStartTimeout, "the most the plugin may take to start (checkpoint, reconcile, publish) once it owns the node; a start that takes longer (a hung GPU or disk) exits the plugin, which gives the node back to the plugin it took it over from during a roll")
	fs.DurationVar(&o.heldDeviceWait, "held-device-wait", prepare.DefaultHeldWait, "how long a prepare waits for a device still prepared for a deleted pod's claim before failing (a negative value fails at once)")
	fs.StringVar(&o.daemonSet, "daemonset", "", "NAMESPACE/NAME of the DaemonSet running this plugin: when it is gone at shutdown, the driver is being uninstalled and the node's ResourceSlices are removed; empty keeps them always")
	fs.StringVar(&o.healthPolicy, "health-policy", "", "YAML or JSON file overriding the default health policy (XID classes, effects, thresholds); see docs/health.md")
	fs.DurationVar(&o.healthProbe, "health-probe-interval", 0, "how often every GPU's temperature, memory repairs and reachability are read; overrides the policy (default 5s)")
	fs.DurationVar(&o.healthClearAfter, "health-clear-after", 0, "how long the cause of a transient condition must be gone before its taint is removed; overrides the policy (default 30s)")
	fs.StringVar(&o.mpsDaemonPods.Image, "mps-daemon-image", "", "image of the pods that run the MPS control daemons, one pod per daemon, on this node (the chart passes the plugin's own): they outlive this plugin's container, so its restarts and upgrades leave MPS clients running; empty runs the daemons as children of this process, and they end with its container")
	fs.StringVar(&o.mpsDaemonPods.Namespace, "mps-daemon-namespace", "", "namespace of the MPS control daemons' pods: the plugin's own (the chart passes it)")
	fs.StringVar(&o.mpsDaemonPods.PriorityClassName, "mps-daemon-priority-class", "", "priority class of the MPS control daemons' pods (the chart passes its own, high but not critical: the kubelet evicts other pods to admit a critical one)")
	o.mpsDaemonCPU.Quantity, o.mpsDaemonMemory.Quantity = daemonpod.DefaultCPU.DeepCopy(), daemonpod.DefaultMemory.DeepCopy()
	fs.Var(&o.mpsDaemonCPU, "mps-daemon-cpu", "CPU limit, and request, of each MPS control daemon's pod (equal: the pod is Guaranteed, unless --node-allocatable-overhead lowers the requests of daemons of shares); the MPS servers of its clients run in the pod too")
	fs.Var(&o.mpsDaemonMemory, "mps-daemon-memory", "memory limit, and request, of each MPS control daemon's pod (equal: the pod is Guaranteed, unless --node-allocatable-overhead lowers the requests of daemons of shares); the MPS servers of its clients run in the pod too, and one over the limit is killed")
	fs.Var(overheadFlag{&o.overhead}, "node-allocatable-overhead", "what each pod using a device of a kind costs the node beyond its containers' requests, published as the devices' node-allocatable overhead per pod (KEP-5517; needs the feature gate DRANodeAllocatableResources on the API server, scheduler and kubelets): KIND:RESOURCE=QUANTITY pairs, comma-separated, KIND gpu, mig or share, RESOURCE cpu or memory, e.g. share:cpu=250m,share:memory=512Mi. The pod of an MPS control daemon that serves only shares then requests that much less (docs/helm.md). Empty, or an API server that drops the field, publishes none")
	fs.StringVar((*string)(&o.mpsDaemonPods.ImagePullPolicy), "mps-daemon-image-pull-policy", "", "image pull policy of the MPS control daemons' pods (the chart passes the plugin's)")
	fs.StringVar(&o.mpsFSSize, "mps-fs-size", "64Mi", "size of the tmpfs each MPS control daemon gets for its pipe directory and shared memory (/dev/shm of the daemon and its clients), which its clients' containers write to: what a tenant writes there is bounded by it, not by the node's disk; 0 gives plain directories of the plugin's data directory, unbounded, and no shared /dev/shm")
	fs.Int64Var(&o.mpsFSInodes, "mps-fs-inodes", 4096, "the most files and directories each MPS control daemon's tmpfs holds (see --mps-fs-size)")
	fs.StringVar(&o.crashAt, "test-crash-at", "", "testing only: SIGKILL the plugin after this prepare/unprepare step")
	_ = fs.MarkHidden("test-crash-at")
}

// mpsFilesystem is the tmpfs each MPS daemon gets, from --mps-fs-size and
// --mps-fs-inodes: under the data directory, beside the daemons'
// directories.
func (o *runOptions) mpsFilesystem() (mps.Filesystem, error) {
	size, err := resource.ParseQuantity(o.mpsFSSize)
	if err != nil {
		return mps.Filesystem{}, fmt.Errorf("--mps-fs-size %q: %w", o.mpsFSSize, err)
	}
	switch {
	case size.Sign() == 0:
		return mps.Filesystem{}, nil
	case size.Value() < 1<<20:
		return mps.Filesystem{}, fmt.Errorf("--mps-fs-size %s: less than 1Mi leaves an MPS daemon no room; 0 turns the bound off", o.mpsFSSize)
	case o.mpsFSInodes < 64:
		return mps.Filesystem{}, fmt.Errorf("--mps-fs-inodes %d: less than 64 leaves an MPS daemon no room", o.mpsFSInodes)
	}
	return mps.Filesystem{Root: filepath.Join(o.pluginDataDir, "mps-fs"), SizeBytes: size.Value(), Inodes: o.mpsFSInodes}, nil
}

func kubeClient(file string) (kubernetes.Interface, error) {
	cfg, err := kubeclient.Config(file, "gpu-kubelet-plugin")
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

func run(ctx context.Context, opts *options, ro *runOptions) error {
	logger := klog.FromContext(ctx)
	if opts.nodeName == "" {
		return errors.New("--node-name (or NODE_NAME) is required")
	}
	if ro.pluginDataDir == "" {
		ro.pluginDataDir = ro.pluginDir
	}
	client, err := kubeClient(ro.kubeconfig)
	if err != nil {
		return err
	}
	if ro.claimReaderConfig != "" {
		if client, err = nodeClaimReads(ctx, client, ro.claimReaderConfig, opts.nodeName); err != nil {
			return err
		}
	} else {
		logger.Info("Reading claims with the plugin's own identity (no --claim-reader-kubeconfig): RBAC lets it get any claim by name")
	}
	uninstalling, err := publish.Uninstalling(client, ro.daemonSet)
	if err != nil {
		return fmt.Errorf("--daemonset: %w", err)
	}
	driverRoot := ro.driverRoot
	if ro.driverRootMount != "" {
		driverRoot = ro.driverRootMount
	}
	gpuOpts := opts.gpuOptions()
	gpuOpts.DriverRoot = driverRoot
	if gpuOpts.Simulate == "" && gpuOpts.LibraryPath == "" {
		if gpuOpts.LibraryPath, err = findNVML(driverRoot, ro.driverRootMount != ""); err != nil {
			return err
		}
	}
	node, err := nvmlnode.Open(gpuOpts)
	if err != nil {
		return err
	}
	defer node.Close()
	writer, err := cdi.New(cdi.Options{CDIRoot: ro.cdiRoot, DriverRoot: ro.driverRoot, DriverRootMount: ro.driverRootMount,
		DevRoot: ro.devRoot, ProcRoot: ro.procRoot, SysRoot: ro.sysRoot, Logger: logger})
	if err != nil {
		return err
	}
	store, err := prepareDirs(logger, ro)
	if err != nil {
		return err
	}
	policy, err := ro.policy()
	if err != nil {
		return err
	}
	daemons := mps.NewManager(filepath.Join(ro.pluginDataDir, "mps"), driverRoot)
	daemons.Logger = logger
	if daemons.FS, err = ro.mpsFilesystem(); err != nil {
		return err
	}
	overhead := ro.publishedOverhead(ctx, client, opts.nodeName)
	if pods := ro.mpsDaemonPods; pods.Image != "" {
		pods.Client, pods.NodeName, pods.DriverRoot = client, opts.nodeName, ro.driverRoot
		pods.CPU, pods.Memory = ro.mpsDaemonCPU.Quantity, ro.mpsDaemonMemory.Quantity
		pods.Reserved = overhead.Of(devicemodel.OverheadShare)
		if err := pods.Validate(); err != nil {
			return fmt.Errorf("--mps-daemon-image: %w", err)
		}
		daemons.Launcher = &pods
		// No tool this process starts outlives it.
		defer removeToolLinks(logger)
	} else {
		// Its MPS control daemons outlive this process (outside a
		// container) and start their servers with the links: they are
		// left, to go with the container's /tmp.
		logger.Info("MPS control daemons run in this process: they end with the plugin's container (--mps-daemon-image is not set)")
	}
	topo, err := topology.NewReader(logger, ro.sysRoot)
	if err != nil {
		return err
	}
	metrics := driver.NewMetrics()
	var ready atomic.Bool
	mux := httpserve.ProbeMux(metrics.Registry, ready.Load, notReady)
	if ro.probeSocket != "" {
		if err := serveProbes(ctx, ro.probeSocket, mux); err != nil {
			return err
		}
	}
	if ro.httpEndpoint != "" {
		if err := httpserve.ServeTCP(ctx, ro.httpEndpoint, mux); err != nil {
			return err
		}
	}
	var afterStep func(prepare.Step)
	if ro.crashAt != "" {
		afterStep = command.CrashAfter(logger, prepare.Step(ro.crashAt))
	}
	logger.Info("Starting", "version", version.Get(), "node", opts.nodeName, "simulate", opts.simulate, "cdiRoot", ro.cdiRoot,
		"driverRoot", ro.driverRoot, "driverRootMount", ro.driverRootMount, "nvml", gpuOpts.LibraryPath,
		"pluginDir", ro.pluginDir, "checkpoint", filepath.Join(ro.pluginDataDir, checkpoint.FileName))
	return driver.RunHandingOver(ctx, driver.Config{
		NodeName: opts.nodeName, KubeClient: client, GPUs: node, CDI: writer, Store: store,
		MPS:       daemons,
		PluginDir: ro.pluginDir, RegistrarDir: ro.registrarDir, DeviceMetadata: ro.deviceMetadata, CDIRoot: ro.cdiRoot,
		GPUHolders:        gpuHolders(ro.procRoot, ro.devRoot),
		VFIO:              passthrough(logger, opts.vfio, ro),
		InventoryInterval: ro.inventoryInterval, HeldDeviceWait: ro.heldDeviceWait, StaticMIGOnly: opts.staticMIGOnly, SharedGPUs: opts.sharedGPUs, ConsumableShares: opts.consumableShares, Overhead: overhead, Topology: topo,
		HealthPolicy: policy, HealthStorePath: filepath.Join(ro.pluginDataDir, health.StoreFileName),
		AfterStep: afterStep, Metrics: metrics, Uninstalling: uninstalling,
	}, driver.HandoverConfig{
		Lock: ownership.New(ro.pluginDataDir, 0), PodUID: types.UID(ro.podUID), Ready: ready.Store, StartTimeout: ro.startTimeout,
	})
}

// publishedOverhead is --node-allocatable-overhead where the API server
// keeps it, and none where it drops the field (its feature gate is off)
// or cannot be asked: the daemons' pods then keep their full requests, as
// without the flag. It is decided once, at start.
func (o *runOptions) publishedOverhead(ctx context.Context, client kubernetes.Interface, nodeName string) devicemodel.Overhead {
	if o.overhead.Empty() {
		return nil
	}
	logger := klog.FromContext(ctx)
	probeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	kept, err := publish.KeepsNodeAllocatable(probeCtx, client, names.DriverName, nodeName)
	if err != nil {
		// Publishing none is safe: the daemons' pods then keep their
		// full requests. The next start asks again.
		logger.Error(err, "Cannot tell whether the API server keeps node-allocatable overhead; publishing none until the plugin restarts",
			"nodeAllocatableOverhead", o.overhead.String())
		return nil
	}
	if !kept {
		logger.Error(nil, "The API server drops the devices' nodeAllocatableResources: its feature gate DRANodeAllocatableResources is off. Publishing no node-allocatable overhead; MPS daemon pods request their full resources",
			"nodeAllocatableOverhead", o.overhead.String())
		return nil
	}
	logger.Info("Publishing node-allocatable overhead (KEP-5517); the scheduler and the kubelets need the feature gate DRANodeAllocatableResources too", "nodeAllocatableOverhead", o.overhead.String())
	return o.overhead
}

// findNVML is libnvidia-ml.so.1 under the driver root, where the plugin
// reads it (its mount in the plugin's container, when inContainer): the
// container's own loader knows nothing of the host's libraries, and a
// GPU-operator root (/run/nvidia/driver) is not in any loader's path.
// Outside a container, a root without it leaves NVML to the loader's
// search path ("" here), which a distribution's own layout may need.
func findNVML(root string, inContainer bool) (string, error) {
	lib, err := driverroot.FindLibrary(root, nvmlLibrary)
	if err != nil && inContainer {
		return "", fmt.Errorf("NVML (--nvml-library, else under --driver-root-mount): %w", err)
	}
	if err != nil {
		return "", nil
	}
	return lib, nil
}

// policy is the health policy from --health-policy and the flags that
// override it.
func (o *runOptions) policy() (health.Policy, error) {
	p, err := health.LoadPolicy(o.healthPolicy)
	if err != nil {
		return p, fmt.Errorf("--health-policy: %w", err)
	}
	if o.healthProbe != 0 {
		p.ProbeInterval.Duration = o.healthProbe
	}
	if o.healthClearAfter != 0 {
		p.ClearAfter.Duration = o.healthClearAfter
	}
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("health policy with --health-probe-interval/--health-clear-after: %w", err)
	}
	return p, nil
}

// removeToolLinks removes the links to the driver's libraries that this
// process made for the driver's tools (driverroot.Cleanup), on its way
// out, when none of the tools it started runs any more.
func removeToolLinks(logger klog.Logger) {
	if err := driverroot.Cleanup(); err != nil {
		logger.Error(err, "Links to the driver's libraries left behind")
	}
}

// passthrough is the host's PCI sysfs for --vfio-passthrough, or nil.
// The VFIO variant drivers are those the running kernel's modules.alias
// names.
func passthrough(logger klog.Logger, on bool, ro *runOptions) prepare.Passthrough {
	if !on {
		return nil
	}
	h := vfio.Host{SysRoot: ro.sysRoot, DevRoot: ro.devRoot}
	release, err := os.ReadFile(filepath.Join(ro.procRoot, "proc/sys/kernel/osrelease"))
	if err != nil {
		logger.Error(err, "Kernel release unknown; GPUs for VMs are bound to vfio-pci, not to a variant driver")
		return h
	}
	h.ModulesAlias = filepath.Join(ro.vfioModulesDir, strings.TrimSpace(string(release)), "modules.alias")
	logger.Info("VFIO passthrough on", "sysRoot", ro.sysRoot, "modulesAlias", h.ModulesAlias, "iommufd", h.IOMMUFD())
	return h
}

// gpuHolders names the host's processes, other than the plugin, that hold
// a GPU's device node open (the plugin's pod is in the host's PID
// namespace).
func gpuHolders(procRoot, devRoot string) func(minor int) ([]string, error) {
	f := gpuholders.Finder{ProcRoot: procRoot, DevRoot: devRoot, Self: os.Getpid()}
	return func(minor int) ([]string, error) {
		procs, err := f.HoldersOf(minor)
		out := make([]string, 0, len(procs))
		for _, p := range procs {
			out = append(out, p.String())
		}
		return out, err
	}
}
