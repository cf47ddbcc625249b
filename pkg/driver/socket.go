package driver

import (
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/gpu-dra/gpu-dra-driver/pkg/draplugin"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// helperOptions are the kubeletplugin options of the driver.
func helperOptions(cfg Config) []kubeletplugin.Option {
	return draplugin.HelperConfig{
		DriverName: names.DriverName, NodeName: cfg.NodeName, KubeClient: cfg.KubeClient,
		PluginDir: cfg.PluginDir, RegistrarDir: cfg.RegistrarDir,
	}.Options()
}
