package prepare

import (
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// deviceMetadata is what a prepared device's containers read of it
// (KEP-5304 device metadata, written by the kubelet plugin helper when the
// plugin enables it): the attributes the device is published with (nil
// when the node no longer publishes it), for a MIG device what exists
// only once it is made: its UUID, GPU instance and compute instance, and
// for a GPU passed through to a VM its PCI bus ID, type and UUID whether
// or not it is published.
func deviceMetadata(published map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, d checkpoint.Device) *kubeletplugin.DeviceMetadata {
	attrs := make(map[string]resourceapi.DeviceAttribute, len(published)+3)
	for k, v := range published {
		attrs[string(k)] = v
	}
	if d.MIG != nil && d.MIG.UUID != "" {
		attrs[names.AttrUUID] = resourceapi.DeviceAttribute{StringValue: ptr.To(d.MIG.UUID)}
		attrs[names.AttrGPUInstanceID] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(d.MIG.GIID))}
		attrs[names.AttrComputeInstanceID] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(d.MIG.CIID))}
	}
	if d.VFIO != nil {
		// What KubeVirt's virt-launcher finds the GPU by, recorded so it
		// is there while the GPU, bound to VFIO, is unseen by NVML and
		// so perhaps not published.
		attrs[names.AttrStandardPCIBusID] = resourceapi.DeviceAttribute{StringValue: ptr.To(d.VFIO.BusID)}
		attrs[names.AttrType] = resourceapi.DeviceAttribute{StringValue: ptr.To(names.TypeVFIO)}
		attrs[names.AttrUUID] = resourceapi.DeviceAttribute{StringValue: ptr.To(d.GPUUUID)}
	}
	if len(attrs) == 0 {
		return nil
	}
	return &kubeletplugin.DeviceMetadata{Attributes: attrs}
}
