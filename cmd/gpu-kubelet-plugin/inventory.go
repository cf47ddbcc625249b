package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/topology"

	"github.com/spf13/cobra"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
)

func newInventoryCommand(opts *options) *cobra.Command {
	var output, sysRoot string
	cmd := &cobra.Command{
		Use:   "inventory",
		Short: "Print the ResourceSlices this node would publish",
		Long: `Discover the node's GPUs (or a simulated node's) and print the complete
resource.k8s.io/v1 ResourceSlice objects the plugin would publish, as a YAML
stream or a JSON list. Nothing is written to the cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.nodeName == "" {
				return fmt.Errorf("--node-name is required: the pool is named after the node")
			}
			if output != "yaml" && output != "json" {
				return fmt.Errorf("-o/--output must be yaml or json, not %q", output)
			}
			node, err := nvmlnode.Open(opts.gpuOptions())
			if err != nil {
				return err
			}
			defer node.Close()
			inv, err := node.Inventory(cmd.Context())
			if err != nil {
				return fmt.Errorf("read GPU inventory: %w", err)
			}
			topo, err := topology.NewReader(klog.FromContext(cmd.Context()), sysRoot)
			if err != nil {
				return err
			}
			where := map[string]gpu.Topology{}
			for _, g := range inv.GPUs {
				where[g.PCIBusID] = topo.Topology(g.PCIBusID)
			}
			model, err := devicemodel.Build(devicemodel.Input{Inventory: inv, Topology: where, StaticMIGOnly: opts.staticMIGOnly, SharedGPUs: opts.sharedGPUs, VFIO: opts.vfio, ConsumableShares: opts.consumableShares})
			if err != nil {
				return err
			}
			return writeSlices(cmd.OutOrStdout(), model.ResourceSlices(opts.nodeName), output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "yaml", "output format: yaml (a stream of documents) or json (a v1 List)")
	cmd.Flags().StringVar(&sysRoot, "sys-root", "/", "host root under which /sys is found, for the GPUs' pcieRoot and numaNode attributes (as the plugin's --sys-root)")
	return cmd
}

func writeSlices(w io.Writer, slices []resourceapi.ResourceSlice, format string) error {
	if format == "json" {
		list := map[string]any{"apiVersion": "v1", "kind": "List", "items": slices}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	for i := range slices {
		data, err := yaml.Marshal(&slices[i])
		if err != nil {
			return fmt.Errorf("encode slice %d: %w", i, err)
		}
		if _, err := fmt.Fprintf(w, "---\n%s", data); err != nil {
			return err
		}
	}
	return nil
}
