package main

import (
	"fmt"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
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
			sel := metav1.ListOptions{FieldSelector: "spec.nodeName=" + opts.nodeName + ",spec.driver=" + devicemodel.DriverName}
			list, err := client.ResourceV1().ResourceSlices().List(cmd.Context(), sel)
			if err != nil {
				return fmt.Errorf("list ResourceSlices of node %s: %w", opts.nodeName, err)
			}
			for _, s := range list.Items {
				if err := client.ResourceV1().ResourceSlices().Delete(cmd.Context(), s.Name, metav1.DeleteOptions{}); err != nil {
					return fmt.Errorf("delete ResourceSlice %s: %w", s.Name, err)
				}
			}
			klog.FromContext(cmd.Context()).Info("Deleted the node's ResourceSlices", "node", opts.nodeName, "slices", len(list.Items))
			return nil
		},
	}
}
