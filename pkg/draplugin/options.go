package draplugin

import (
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// HelperConfig is what a plugin starts its kubelet plugin helper
// (kubeletplugin.Start) with.
type HelperConfig struct {
	DriverName string
	NodeName   string
	KubeClient kubernetes.Interface
	// PluginDir holds the DRA service's socket, RegistrarDir the
	// registration socket the kubelet watches for.
	PluginDir, RegistrarDir string
}

// Options are the helper's options: c's, both sockets owner-only
// (hostfs.ListenUnix), and claims not serialised, since each plugin
// serialises what must be itself (the GPU driver what shares a GPU; the
// ComputeDomain plugin calls for one claim, so that a daemon's claim does
// not queue behind a channel claim that waits for that daemon). A plugin
// appends its own.
func (c HelperConfig) Options() []kubeletplugin.Option {
	return []kubeletplugin.Option{
		kubeletplugin.DriverName(c.DriverName),
		kubeletplugin.NodeName(c.NodeName),
		kubeletplugin.KubeClient(c.KubeClient),
		kubeletplugin.PluginDataDirectoryPath(c.PluginDir),
		kubeletplugin.RegistrarDirectoryPath(c.RegistrarDir),
		kubeletplugin.PluginListener(hostfs.ListenUnix),
		kubeletplugin.RegistrarListener(hostfs.ListenUnix),
		kubeletplugin.Serialize(false),
	}
}
