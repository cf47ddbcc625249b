// Command compute-domain-kubelet-plugin is the node agent of the
// compute-domain.nvidia.com DRA driver: it publishes the node's IMEX channel
// and daemon devices, prepares channel claims (the domain's IMEX channel)
// and daemon claims (the domain's IMEX configuration), and keeps each
// prepared domain's nodes.cfg. This file only parses flags; the work is
// done in pkg/computedomain/node.
package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/command"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/plugin"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/prepare"
	cdslices "github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/slices"
	"github.com/gpu-dra/gpu-dra-driver/pkg/driverroot"
	"github.com/gpu-dra/gpu-dra-driver/pkg/flags"
	"github.com/gpu-dra/gpu-dra-driver/pkg/httpserve"
	"github.com/gpu-dra/gpu-dra-driver/pkg/kubeclient"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/publish"
	"github.com/gpu-dra/gpu-dra-driver/pkg/version"
)

// options are the plugin's flags.
type options struct {
	nodeName        string
	namespace       string
	pluginsDir      string
	registryDir     string
	cdiRoot         string
	driverRoot      string
	driverRootMount string
	devRoot         string
	procRoot        string
	kubeconfig      string
	httpEndpoint    string
	readinessWait   time.Duration
	cliqueInterval  time.Duration
	cliqueID        string
	nvmlLibrary     string
	daemonSet       string
	crashAt         string
}

func (o *options) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.nodeName, "node-name", "", "name of the Kubernetes node this plugin runs on; names the resource pool")
	fs.StringVar(&o.namespace, "namespace", "", "the driver's namespace: the only one whose claims may be daemon claims, and where the domains' daemon pods run")
	fs.StringVar(&o.pluginsDir, "plugins-dir", "/var/lib/kubelet/plugins", "the kubelet's plugins directory; the plugin keeps its socket, checkpoint and the domains' IMEX directories in its "+names.ComputeDomainDriverName+" subdirectory")
	fs.StringVar(&o.registryDir, "registry-dir", "/var/lib/kubelet/plugins_registry", "the kubelet's plugin registration directory")
	fs.StringVar(&o.cdiRoot, "cdi-root", "/var/run/cdi", "directory the container runtime reads CDI specs from")
	fs.StringVar(&o.driverRoot, "driver-root", "/", "host path of the NVIDIA driver installation: CDI specs mount its usr/bin/nvidia-imex and nvidia-imex-ctl into daemon containers by this path")
	fs.StringVar(&o.driverRootMount, "driver-root-mount", "", "where this process finds --driver-root: its mount in the plugin's container (e.g. /driver-root); NVML and the IMEX tools are looked up there, CDI specs name the host paths; empty means --driver-root")
	fs.StringVar(&o.devRoot, "dev-root", "/", "host root under which /dev/nvidia-caps-imex-channels is made")
	fs.StringVar(&o.procRoot, "proc-root", "/", "host root under which /proc/devices is read")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster configuration")
	fs.StringVar(&o.httpEndpoint, "http-endpoint", "", "host:port for /metrics, /healthz and /readyz; empty disables it")
	fs.DurationVar(&o.readinessWait, "readiness-wait", prepare.DefaultReadinessWait, "how long a channel claim's prepare waits for its domain's daemon pod on the node to be Ready before failing (the kubelet retries)")
	fs.DurationVar(&o.cliqueInterval, "clique-interval", cdslices.DefaultInterval, "how often the node's NVLink clique is re-read (fabric registration may complete after start)")
	fs.StringVar(&o.cliqueID, "clique-id", "", "testing only: publish this clique instead of reading it from NVML")
	fs.StringVar(&o.nvmlLibrary, "nvml-library", "", "path of libnvidia-ml.so.1 (in this container); empty looks under --driver-root-mount")
	fs.StringVar(&o.daemonSet, "daemonset", "", "NAMESPACE/NAME of the DaemonSet running this plugin: when it is gone at shutdown, the driver is being uninstalled and the node's ResourceSlices are removed; empty keeps them always")
	fs.StringVar(&o.crashAt, "test-crash-at", "", "testing only: SIGKILL the plugin after this prepare/unprepare step ("+strings.Join(stepNames(), ", ")+")")
	_ = fs.MarkHidden("clique-id")
	_ = fs.MarkHidden("test-crash-at")
}

func main() {
	command.Main(newRootCommand())
}

func newRootCommand() *cobra.Command {
	opts := &options{}
	root := &cobra.Command{
		Use:   "compute-domain-kubelet-plugin",
		Short: "Kubelet plugin of the " + names.ComputeDomainDriverName + " DRA driver",
		Long: `The node agent of the ` + names.ComputeDomainDriverName + ` DRA driver: publishes the
node's IMEX channel and daemon devices when its GPUs are in a multi-node
NVLink clique, and prepares ComputeDomain channel and daemon claims.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return flags.ApplyEnv(cmd.Flags())
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), opts)
		},
	}
	opts.addFlags(root.Flags())
	command.AddKlogFlags(root.PersistentFlags())
	root.AddCommand(command.Version("Print the plugin's release"))
	flags.DocumentEnv(root.Flags())
	return root
}

func (o *options) validate() error {
	switch {
	case o.nodeName == "":
		return errors.New("--node-name (or NODE_NAME) is required")
	case o.namespace == "":
		return fmt.Errorf("--namespace (or %s) is required", flags.EnvName("namespace"))
	case o.readinessWait <= 0:
		return fmt.Errorf("--readiness-wait %s: must be positive", o.readinessWait)
	case o.crashAt != "" && !slices.Contains(stepNames(), o.crashAt):
		return fmt.Errorf("--test-crash-at %q: want one of %s", o.crashAt, strings.Join(stepNames(), ", "))
	}
	return nil
}

func clients(file string) (kubernetes.Interface, dynamic.Interface, error) {
	cfg, err := kubeclient.Config(file, "compute-domain-kubelet-plugin")
	if err != nil {
		return nil, nil, err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	return kube, dyn, nil
}

func run(ctx context.Context, o *options) error {
	logger := klog.FromContext(ctx)
	if err := o.validate(); err != nil {
		return err
	}
	kube, dyn, err := clients(o.kubeconfig)
	if err != nil {
		return err
	}
	mount := o.driverRoot
	if o.driverRootMount != "" {
		mount = o.driverRootMount
	}
	clique, err := o.cliqueFunc(ctx, mount)
	if err != nil {
		return err
	}
	metrics := plugin.NewMetrics()
	var ready atomic.Bool
	if o.httpEndpoint != "" {
		mux := httpserve.ProbeMux(metrics.Registry, ready.Load, "not serving yet")
		if err := httpserve.ServeTCP(ctx, o.httpEndpoint, mux); err != nil {
			return err
		}
	}
	uninstalling, err := publish.Uninstalling(kube, o.daemonSet)
	if err != nil {
		return fmt.Errorf("--daemonset: %w", err)
	}
	var afterStep func(prepare.Step)
	if o.crashAt != "" {
		afterStep = command.CrashAfter(logger, prepare.Step(o.crashAt))
	}
	pluginDir := filepath.Join(o.pluginsDir, names.ComputeDomainDriverName)
	logger.Info("Starting", "version", version.Get(), "node", o.nodeName, "namespace", o.namespace, "pluginDir", pluginDir,
		"cdiRoot", o.cdiRoot, "driverRoot", o.driverRoot, "driverRootMount", o.driverRootMount, "devRoot", o.devRoot, "procRoot", o.procRoot)
	return plugin.Run(ctx, plugin.Config{
		NodeName: o.nodeName, DriverNamespace: o.namespace, KubeClient: kube, DynamicClient: dyn, CliqueID: clique,
		PluginDir: pluginDir, RegistrarDir: o.registryDir, CDIRoot: o.cdiRoot,
		DriverRoot: o.driverRoot, DriverRootMount: o.driverRootMount, DevRoot: o.devRoot, ProcRoot: o.procRoot,
		ReadinessWait: o.readinessWait, CliqueInterval: o.cliqueInterval, Metrics: metrics, Ready: ready.Store,
		AfterStep: afterStep, Uninstalling: uninstalling,
	})
}

// cliqueFunc is how the node's clique is read: --clique-id, else NVML
// from the driver root through readFabric.
func (o *options) cliqueFunc(ctx context.Context, driverRootMount string) (cdslices.CliqueFunc, error) {
	if o.cliqueID != "" {
		return func() (string, error) { return o.cliqueID, nil }, nil
	}
	lib := o.nvmlLibrary
	if lib == "" {
		var err error
		if lib, err = driverroot.FindLibrary(driverRootMount, nvmlLibrary); err != nil {
			return nil, fmt.Errorf("NVML (--nvml-library, else under --driver-root-mount): %w", err)
		}
	}
	return func() (string, error) { return readFabric(ctx, lib) }, nil
}

// nvmlLibrary is the file name the NVIDIA driver installs NVML as.
const nvmlLibrary = "libnvidia-ml.so.1"

// stepNames are the steps --test-crash-at accepts.
func stepNames() []string {
	var out []string
	for _, s := range []prepare.Step{prepare.StepRecorded, prepare.StepDevNodes, prepare.StepDaemonDir, prepare.StepCDI, prepare.StepCompleted, prepare.StepUndone} {
		out = append(out, string(s))
	}
	return out
}
