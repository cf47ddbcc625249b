package draplugin

import (
	"context"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"
)

// Helper is what a plugin uses of the kubelet plugin helper
// (*kubeletplugin.Helper), which serves the plugin's gRPC services to the
// kubelet; tests start a plugin without a kubelet through a fake.
type Helper interface {
	// Stop stops the gRPC servers and removes their sockets.
	Stop()
}

// StartHelperFunc starts the kubelet plugin helper that serves plugin.
type StartHelperFunc func(ctx context.Context, plugin kubeletplugin.DRAPlugin, opts ...kubeletplugin.Option) (Helper, error)

// StartKubeletHelper is the StartHelperFunc of a real kubelet
// (kubeletplugin.Start).
func StartKubeletHelper(ctx context.Context, plugin kubeletplugin.DRAPlugin, opts ...kubeletplugin.Option) (Helper, error) {
	h, err := kubeletplugin.Start(ctx, plugin, opts...)
	if err != nil {
		return nil, err
	}
	return h, nil
}
