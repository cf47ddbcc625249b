package publish

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// KeepsNodeAllocatable reports whether the API server stores a device's
// nodeAllocatableResources (KEP-5517): it drops the field, without an
// error, where its feature gate DRANodeAllocatableResources is off. It
// asks with a dry-run create of a one-device slice of the node's own pool
// (what the plugin may write), so nothing is stored and no watcher sees
// it. A server that drops the field would also make the slice controller
// rewrite the pool forever, the stored slices never equal to the model.
func KeepsNodeAllocatable(ctx context.Context, client kubernetes.Interface, driverName, nodeName string) (bool, error) {
	probe := &resourceapi.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{GenerateName: nodeName + "-" + driverName + "-probe-"},
		Spec: resourceapi.ResourceSliceSpec{
			Driver:   driverName,
			NodeName: ptr.To(nodeName),
			Pool:     resourceapi.ResourcePool{Name: nodeName, ResourceSliceCount: 1},
			Devices: []resourceapi.Device{{
				Name: "node-allocatable-probe",
				NodeAllocatableResources: map[corev1.ResourceName]resourceapi.NodeAllocatableResource{
					corev1.ResourceCPU: {Overhead: &resourceapi.NodeAllocatableOverhead{PerPod: ptr.To(resource.MustParse("1m"))}},
				},
			}},
		},
	}
	got, err := client.ResourceV1().ResourceSlices().Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		return false, fmt.Errorf("dry-run create of a ResourceSlice with nodeAllocatableResources: %w", err)
	}
	return len(got.Spec.Devices) == 1 && len(got.Spec.Devices[0].NodeAllocatableResources) == 1, nil
}
