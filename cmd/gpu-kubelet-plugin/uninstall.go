package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/publish"
)

// newUninstallCommand removes the node's pool: what a clean uninstall (a
// Helm pre-delete hook, or an operator draining the driver off a node)
// runs after stopping the plugin. A plugin that merely restarts keeps its
// slices, so an upgrade never makes the pool disappear.
func newUninstallCommand(opts *options, ro *runOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "uninstall",
		Short: "Delete this node's ResourceSlices of gpu.nvidia.com",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.nodeName == "" {
				return fmt.Errorf("--node-name (or NODE_NAME) is required")
			}
			client, err := kubeClient(ro.kubeconfig)
			if err != nil {
				return err
			}
			n, err := publish.RemovePool(cmd.Context(), client, devicemodel.DriverName, opts.nodeName)
			if err != nil {
				return err
			}
			klog.FromContext(cmd.Context()).Info("Deleted the node's ResourceSlices", "node", opts.nodeName, "slices", n)
			return nil
		},
	}
}
