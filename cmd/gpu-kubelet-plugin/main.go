// Command gpu-kubelet-plugin is the node agent of the gpu.nvidia.com DRA
// driver. This file only parses flags; the work is done in pkg/.
package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/gpu-dra/gpu-dra-driver/pkg/command"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/flags"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// options are the flags every subcommand shares.
type options struct {
	nodeName      string
	simulate      string
	simStateDir   string
	simLatency    string
	simLatencies  sim.Latencies
	nvmlLibrary   string
	staticMIGOnly bool
	sharedGPUs    bool
	// vfio is --vfio-passthrough.
	vfio bool
	// consumableShares is --consumable-shares, checked as it is set.
	consumableShares devicemodel.ConsumableShares
}

// consumableSharesFlag is --consumable-shares: NVIDIA's values, read by
// devicemodel.ParseConsumableShares when the flag (or its environment
// twin) is set, so a bad value stops the plugin naming the flag.
type consumableSharesFlag struct{ v *devicemodel.ConsumableShares }

func (f consumableSharesFlag) String() string { return f.v.String() }
func (f consumableSharesFlag) Type() string   { return "mode" }
func (f consumableSharesFlag) Set(s string) error {
	c, err := devicemodel.ParseConsumableShares(s)
	if err != nil {
		return err
	}
	*f.v = c
	return nil
}

func (o *options) gpuOptions() nvmlnode.Options {
	return nvmlnode.Options{Simulate: o.simulate, SimStateDir: o.simStateDir, SimLatencies: &o.simLatencies, LibraryPath: o.nvmlLibrary}
}

// parseSimLatency checks --sim-latency (or its environment twin,
// GPU_DRA_SIM_LATENCY) for the simulated node.
func (o *options) parseSimLatency() error {
	l, err := sim.ParseLatencies(o.simLatency)
	if err != nil {
		return fmt.Errorf("--sim-latency: %w", err)
	}
	o.simLatencies = l
	return nil
}

func (o *options) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.nodeName, "node-name", "", "name of the Kubernetes node this plugin runs on; names the resource pool")
	fs.StringVar(&o.simulate, "simulate", "", "simulate a GPU node instead of using NVML: "+strings.Join(nvmlnode.SimulatedModels(), ", "))
	fs.StringVar(&o.simStateDir, "sim-state-dir", "", "directory of the simulated node's state file (shared with gpu-sim); empty keeps it in memory")
	fs.StringVar(&o.simLatency, "sim-latency", "", `the simulated hardware's timing: "off", "hardware" (MIG changes take as long as on a GPU and queue per GPU), or name=duration items (see docs/benchmarks.md)`)
	fs.StringVar(&o.nvmlLibrary, "nvml-library", "", "path of libnvidia-ml.so.1; empty uses the dynamic loader's search path")
	fs.BoolVar(&o.staticMIGOnly, "static-mig-only", false, "publish only pre-created MIG instances instead of every MIG placement")
	fs.BoolVar(&o.sharedGPUs, "shared-gpus", true, "also publish every whole GPU as a shared device (gpu-N-shared) whose shares of memory and compute claims consume, each served by an MPS daemon of its claim's own with the share's limits (per client process; see docs/security.md for what MPS cannot enforce)")
	fs.BoolVar(&o.vfio, "vfio-passthrough", false, "also publish every GPU offered whole as a device for a VM (gpu-N-vfio, class vfio.gpu.nvidia.com), which prepare binds to vfio-pci (or the VFIO variant driver that suits it) and unprepare gives back to nvidia; the node label "+names.DeviceKindsLabel+" may leave it out per node (docs/vms.md)")
	fs.Var(consumableSharesFlag{&o.consumableShares}, "consumable-shares", "NVIDIA's consumable shares of whole GPUs: disabled, memory, unlimited or a number of shares per GPU; each GPU offered whole is then one gpu.nvidia.com device that many claims share, each consuming some of its memory (and of its shares), a memory amount under the whole enforced as its claim's MPS pinned memory limit (docs/device-model.md). The node label "+names.ConsumableSharesLabel+" replaces it per node")
}

func main() {
	command.Main(newRootCommand())
}

func newRootCommand() *cobra.Command {
	opts := &options{}
	ro := &runOptions{}
	root := &cobra.Command{
		Use:   "gpu-kubelet-plugin",
		Short: "Kubelet plugin of the gpu.nvidia.com DRA driver",
		Long: `The node agent of the gpu.nvidia.com DRA driver: publishes the node's GPUs and
MIG devices as ResourceSlices and prepares allocated ResourceClaims for the
kubelet (MIG instances, CDI specs). Without a subcommand it runs the plugin.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := flags.ApplyEnv(cmd.Flags()); err != nil {
				return err
			}
			return opts.parseSimLatency()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), opts, ro)
		},
	}
	opts.addFlags(root.PersistentFlags())
	ro.addFlags(root.Flags())
	command.AddKlogFlags(root.PersistentFlags())
	uninstall := newUninstallCommand(opts, ro)
	uninstall.Flags().StringVar(&ro.kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster configuration")
	root.AddCommand(newInventoryCommand(opts), newCheckCommand(opts), uninstall, newProbeCommand(), newMPSDaemonCommand(),
		command.Version("Print the plugin's release"))
	flags.DocumentEnv(root.PersistentFlags())
	flags.DocumentEnv(root.Flags())
	return root
}
