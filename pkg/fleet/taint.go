package fleet

import (
	"context"
	"encoding/json"
	"fmt"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// poolSlices lists a node's ResourceSlices by name.
func (h *harness) poolSlices(ctx context.Context, node string) (map[string]resourceapi.ResourceSlice, error) {
	list, err := h.client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{
		FieldSelector: resourceapi.ResourceSliceSelectorNodeName + "=" + node,
	})
	if err != nil {
		return nil, fmt.Errorf("list ResourceSlices of node %s: %w", node, err)
	}
	out := map[string]resourceapi.ResourceSlice{}
	for _, s := range list.Items {
		out[s.Name] = s
	}
	return out, nil
}

// taintsPublished says whether the slices carry exactly the taints wanted
// (by GPU UUID, on the GPU's devices), i.e. the publisher is done.
func taintsPublished(slices map[string]resourceapi.ResourceSlice, want map[string][]resourceapi.DeviceTaint) bool {
	wanted := 0
	for _, ts := range want {
		wanted += len(ts)
	}
	tainted := 0
	for _, s := range slices {
		for _, d := range s.Spec.Devices {
			if len(d.Taints) > 0 {
				tainted++
			}
		}
	}
	if wanted == 0 {
		return tainted == 0
	}
	return tainted > 0
}

// rewritten counts the slices of after that are new or changed since
// before, and their JSON size.
func rewritten(before, after map[string]resourceapi.ResourceSlice) (objects, bytes int) {
	for name, s := range after {
		if old, ok := before[name]; ok && old.ResourceVersion == s.ResourceVersion {
			continue
		}
		objects++
		if data, err := json.Marshal(&s); err == nil {
			bytes += len(data)
		}
	}
	return objects, bytes
}

// generation is the pool's highest generation among its slices.
func generation(slices map[string]resourceapi.ResourceSlice) int64 {
	var g int64
	for _, s := range slices {
		g = max(g, s.Spec.Pool.Generation)
	}
	return g
}
