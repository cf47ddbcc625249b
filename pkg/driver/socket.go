package driver

import (
	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"
)

// helperOptions are the kubeletplugin options of the driver.
func helperOptions(cfg Config) []kubeletplugin.Option {
	return []kubeletplugin.Option{
		kubeletplugin.DriverName(names.DriverName),
		kubeletplugin.NodeName(cfg.NodeName),
		kubeletplugin.KubeClient(cfg.KubeClient),
		kubeletplugin.PluginDataDirectoryPath(cfg.PluginDir),
		kubeletplugin.RegistrarDirectoryPath(cfg.RegistrarDir),
		kubeletplugin.PluginListener(hostfs.ListenUnix),
		kubeletplugin.RegistrarListener(hostfs.ListenUnix),
		// Claims on different GPUs prepare in parallel; the Preparer
		// serialises what must be serialised.
		kubeletplugin.Serialize(false),
	}
}
