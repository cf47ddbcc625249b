package publish

import (
	"context"
	"errors"
	"slices"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestKeepsNodeAllocatable: the answer follows what the server returns
// (a server with the gate off drops the field), the question is a dry run
// of the node's own pool, and a failed call is an error, not a "no".
func TestKeepsNodeAllocatable(t *testing.T) {
	for _, tc := range []struct {
		name     string
		reactor  func(*resourceapi.ResourceSlice) (runtime.Object, error)
		want     bool
		wantsErr bool
	}{
		{name: "kept", reactor: func(s *resourceapi.ResourceSlice) (runtime.Object, error) { return s, nil }, want: true},
		{name: "dropped", reactor: func(s *resourceapi.ResourceSlice) (runtime.Object, error) {
			s = s.DeepCopy()
			s.Spec.Devices[0].NodeAllocatableResources = nil
			return s, nil
		}},
		{name: "refused", reactor: func(*resourceapi.ResourceSlice) (runtime.Object, error) { return nil, errors.New("forbidden") }, wantsErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset()
			var asked *resourceapi.ResourceSlice
			var opts metav1.CreateOptions
			client.PrependReactor("create", "resourceslices", func(a k8stesting.Action) (bool, runtime.Object, error) {
				c := a.(k8stesting.CreateActionImpl)
				asked, opts = c.GetObject().(*resourceapi.ResourceSlice), c.CreateOptions
				obj, err := tc.reactor(asked)
				return true, obj, err
			})
			got, err := KeepsNodeAllocatable(context.Background(), client, "gpu.nvidia.com", "node-a")
			if (err != nil) != tc.wantsErr || got != tc.want {
				t.Fatalf("KeepsNodeAllocatable = %v, %v; want %v, error %v", got, err, tc.want, tc.wantsErr)
			}
			if !slices.Equal(opts.DryRun, []string{metav1.DryRunAll}) {
				t.Errorf("create options %+v: not a dry run", opts)
			}
			if s := asked.Spec; s.Driver != "gpu.nvidia.com" || s.NodeName == nil || *s.NodeName != "node-a" || s.Pool.Name != "node-a" {
				t.Errorf("asked with a slice of driver %s, node %v, pool %s: not the node's own", s.Driver, s.NodeName, s.Pool.Name)
			}
		})
	}
}
