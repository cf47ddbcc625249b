package publish

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/dynamic-resource-allocation/resourceslice"
)

const (
	driverName = "gpu.nvidia.com"
	nodeName   = "node-1"
)

func slicesOf(devicesPerSlice ...[]string) []resourceslice.Slice {
	var out []resourceslice.Slice
	for _, names := range devicesPerSlice {
		var s resourceslice.Slice
		for _, n := range names {
			s.Devices = append(s.Devices, resourceapi.Device{Name: n})
		}
		out = append(out, s)
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s: %s", what, last)
}

func stored(t *testing.T, client *fake.Clientset) map[string]*resourceapi.ResourceSlice {
	t.Helper()
	list, err := client.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*resourceapi.ResourceSlice{}
	for i := range list.Items {
		s := &list.Items[i]
		if len(s.Spec.Devices) > 0 {
			out[s.Spec.Devices[0].Name] = s
		}
	}
	return out
}

// TestPublishChangesFewSlicesAndRepairs publishes a pool of three slices,
// changes one device, republishes the same model, and deletes a slice
// behind the publisher's back.
func TestPublishChangesFewSlicesAndRepairs(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, UID: "node-uid"}})
	// The fake neither generates names nor sets resource versions as the
	// API server does. The controller's mutation cache needs increasing
	// versions to tell its own writes from an informer's older copy;
	// without them it may write the same change twice.
	var seq, version int
	client.PrependReactor("create", "resourceslices", func(action k8stesting.Action) (bool, runtime.Object, error) {
		obj := action.(k8stesting.CreateAction).GetObject().(*resourceapi.ResourceSlice)
		if obj.Name == "" {
			seq++
			obj.Name = fmt.Sprintf("%s%d", obj.GenerateName, seq)
		}
		version++
		obj.ResourceVersion = strconv.Itoa(version)
		return false, nil, nil
	})
	client.PrependReactor("update", "resourceslices", func(action k8stesting.Action) (bool, runtime.Object, error) {
		version++
		action.(k8stesting.UpdateAction).GetObject().(*resourceapi.ResourceSlice).ResourceVersion = strconv.Itoa(version)
		return false, nil, nil
	})
	p := New(Options{DriverName: driverName, NodeName: nodeName, Client: client, RepairDelay: 50 * time.Millisecond})
	defer p.Stop()

	model := slicesOf([]string{"gpu-0"}, []string{"gpu-1"}, []string{"gpu-2"})
	if changed, err := p.Publish(ctx, model); err != nil || !changed {
		t.Fatalf("first publish: changed=%v err=%v", changed, err)
	}
	waitFor(t, "three slices", func() (bool, string) {
		s := stored(t, client)
		// The controller counts a create after the object is stored.
		return len(s) == 3 && p.Stats().NumCreates == 3, fmt.Sprintf("%d slices, %+v", len(s), p.Stats())
	})
	for name, s := range stored(t, client) {
		if s.Spec.NodeName == nil || *s.Spec.NodeName != nodeName || s.Spec.Pool.Name != nodeName || s.Spec.Pool.ResourceSliceCount != 3 {
			t.Errorf("slice of %s: node %v, pool %+v", name, s.Spec.NodeName, s.Spec.Pool)
		}
		if len(s.OwnerReferences) != 1 || s.OwnerReferences[0].Kind != "Node" || s.OwnerReferences[0].UID != "node-uid" {
			t.Errorf("slice of %s: owners %+v, want the node", name, s.OwnerReferences)
		}
	}
	before := p.Stats()
	generation := stored(t, client)["gpu-0"].Spec.Pool.Generation

	// A taint on GPU 1 changes one slice: one update, same generation.
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	tainted := slicesOf([]string{"gpu-0"}, []string{"gpu-1"}, []string{"gpu-2"})
	tainted[1].Devices[0].Taints = []resourceapi.DeviceTaint{{Key: "gpu.nvidia.com/xid", Value: "79", Effect: resourceapi.DeviceTaintEffectNoExecute, TimeAdded: &now}}
	if changed, err := p.Publish(ctx, tainted); err != nil || !changed {
		t.Fatalf("publish with a taint: changed=%v err=%v", changed, err)
	}
	waitFor(t, "the taint stored", func() (bool, string) {
		s := stored(t, client)["gpu-1"]
		// The controller counts an update after the object is stored.
		return s != nil && len(s.Spec.Devices[0].Taints) == 1 && p.Stats().NumUpdates > before.NumUpdates, fmt.Sprintf("%+v, %+v", s, p.Stats())
	})
	time.Sleep(200 * time.Millisecond) // let any further sync happen
	after := p.Stats()
	if after.NumUpdates-before.NumUpdates != 1 || after.NumCreates != before.NumCreates || after.NumDeletes != before.NumDeletes {
		t.Errorf("API calls for one changed slice: %+v -> %+v", before, after)
	}
	for name, s := range stored(t, client) {
		if s.Spec.Pool.Generation != generation {
			t.Errorf("slice of %s: generation %d, want %d kept", name, s.Spec.Pool.Generation, generation)
		}
	}

	// The same model again: nothing to do.
	if changed, err := p.Publish(ctx, tainted); err != nil || changed {
		t.Errorf("republishing the same model: changed=%v err=%v", changed, err)
	}

	// Someone deletes a slice: it is back within the repair delay.
	victim := stored(t, client)["gpu-2"]
	if err := client.ResourceV1().ResourceSlices().Delete(ctx, victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deleted slice recreated", func() (bool, string) {
		s := stored(t, client)
		return len(s) == 3, fmt.Sprintf("%d slices", len(s))
	})
}

func TestRemovePool(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	for i := range 3 {
		if _, err := client.ResourceV1().ResourceSlices().Create(ctx, &resourceapi.ResourceSlice{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s%d", i)},
			Spec:       resourceapi.ResourceSliceSpec{Driver: driverName, NodeName: ptrTo(nodeName), Pool: resourceapi.ResourcePool{Name: nodeName}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := RemovePool(ctx, client, driverName, nodeName)
	if err != nil || n != 3 {
		t.Fatalf("RemovePool = %d, %v", n, err)
	}
	if left := stored(t, client); len(left) != 0 {
		t.Errorf("left: %v", left)
	}
	if n, err := RemovePool(ctx, client, driverName, nodeName); err != nil || n != 0 {
		t.Errorf("second RemovePool = %d, %v", n, err)
	}
}

func ptrTo[T any](v T) *T { return &v }
