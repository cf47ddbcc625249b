package driver

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	metadatav1alpha1 "k8s.io/dynamic-resource-allocation/api/metadata/v1alpha1"
	metadatav1beta1 "k8s.io/dynamic-resource-allocation/api/metadata/v1beta1"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/gpu-dra/gpu-dra-driver/pkg/draplugin"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// MetadataVersions are the versions of device metadata (KEP-5304) written
// into containers, newest first: v1beta1 (Kubernetes 1.37), and v1alpha1
// for readers built against 1.36.
var MetadataVersions = []schema.GroupVersion{metadatav1beta1.SchemeGroupVersion, metadatav1alpha1.SchemeGroupVersion}

// helperOptions are the kubeletplugin options of the driver. With
// DeviceMetadata, the helper writes each prepared device's metadata under
// the plugin's directory and a CDI spec in CDIRoot that mounts it into the
// claim's containers.
func helperOptions(cfg Config) []kubeletplugin.Option {
	opts := draplugin.HelperConfig{
		DriverName: names.DriverName, NodeName: cfg.NodeName, KubeClient: cfg.KubeClient,
		PluginDir: cfg.PluginDir, RegistrarDir: cfg.RegistrarDir,
	}.Options()
	if cfg.DeviceMetadata {
		opts = append(opts, kubeletplugin.EnableDeviceMetadata(true, MetadataVersions), kubeletplugin.CDIDirectory(cfg.CDIRoot))
	}
	return opts
}
