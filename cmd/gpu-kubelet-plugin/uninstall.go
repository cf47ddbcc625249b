package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/publish"
)

// newUninstallCommand removes the driver's ResourceSlices: what a clean
// uninstall runs. A plugin that merely restarts keeps its slices, so an
// upgrade never makes the pool disappear.
//
// With --daemonset (the Helm chart's pre-delete hook) it first deletes the
// plugin's DaemonSet in the foreground and waits for its pods to go: each
// stopping plugin sees its DaemonSet being deleted and removes its own
// node's slices while its permissions still exist. Whatever is left (a
// node that was down) is then deleted for every node (--all-nodes) or for
// --node-name.
func newUninstallCommand(opts *options, ro *runOptions) *cobra.Command {
	var daemonSet string
	var allNodes bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Delete the ResourceSlices of gpu.nvidia.com of this node (--node-name) or of every node (--all-nodes)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.nodeName == "" && !allNodes {
				return errors.New("--node-name (or NODE_NAME) or --all-nodes is required")
			}
			client, err := kubeClient(ro.kubeconfig)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			logger := klog.FromContext(ctx)
			if daemonSet != "" {
				if err := deleteDaemonSet(ctx, client, daemonSet); err != nil {
					return err
				}
			}
			node := opts.nodeName
			if allNodes {
				node = ""
			}
			n, err := publish.RemovePool(ctx, client, names.DriverName, node)
			if err != nil {
				return err
			}
			logger.Info("Deleted ResourceSlices of gpu.nvidia.com", "node", node, "allNodes", allNodes, "slices", n)
			return nil
		},
	}
	cmd.Flags().StringVar(&daemonSet, "daemonset", "", "NAMESPACE/NAME of the plugin's DaemonSet to delete first, waiting for its pods to go")
	cmd.Flags().BoolVar(&allNodes, "all-nodes", false, "delete the slices of every node, not only --node-name's")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Minute, "how long the whole uninstall may take")
	return cmd
}

// deleteDaemonSet deletes a DaemonSet in the foreground and waits until it
// is gone, which is when its pods are.
func deleteDaemonSet(ctx context.Context, client kubernetes.Interface, ref string) error {
	ns, name, err := publish.ParseDaemonSet(ref)
	if err != nil {
		return fmt.Errorf("--daemonset: %w", err)
	}
	logger := klog.FromContext(ctx)
	foreground := metav1.DeletePropagationForeground
	err = client.AppsV1().DaemonSets(ns).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &foreground})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete DaemonSet %s: %w", ref, err)
	}
	logger.Info("Deleting the plugin's DaemonSet; each plugin removes its node's slices as it stops", "daemonset", ref)
	for {
		_, err := client.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("DaemonSet %s still there: %w", ref, context.Cause(ctx))
		case <-time.After(500 * time.Millisecond):
		}
	}
}
