package kubectlgpu

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
)

// t0 is the fixed "now" of the tests.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// stepClock is a Clock whose time moves only when something waits on it:
// After advances it by d and fires at once, so that drain's loop runs
// without real time passing.
type stepClock struct{ now time.Time }

func (c *stepClock) Now() time.Time                  { return c.now }
func (c *stepClock) Since(t time.Time) time.Duration { return c.now.Sub(t) }
func (c *stepClock) After(d time.Duration) <-chan time.Time {
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

// gpuDevice is a whole-GPU device as the driver publishes it.
func gpuDevice(minor int, taints ...resourceapi.DeviceTaint) resourceapi.Device {
	return resourceapi.Device{
		Name: names.GPUDevice(minor),
		Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
			"type":        {StringValue: ptr("gpu")},
			"uuid":        {StringValue: ptr(fmt.Sprintf("GPU-%04d", minor))},
			"productName": {StringValue: ptr("NVIDIA H100 80GB HBM3")},
			"minor":       {IntValue: ptr(int64(minor))},
		},
		Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{"memory": {Value: resource.MustParse("80Gi")}},
		Taints:   taints,
	}
}

// migDevice is a MIG placement of GPU minor.
func migDevice(minor int, profile string, start int, taints ...resourceapi.DeviceTaint) resourceapi.Device {
	return resourceapi.Device{
		Name: names.MIGDevice(minor, profile, start),
		Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
			"type":           {StringValue: ptr("mig")},
			"profile":        {StringValue: ptr(profile)},
			"parentMinor":    {IntValue: ptr(int64(minor))},
			"placementStart": {IntValue: ptr(int64(start))},
		},
		Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{"memory": {Value: resource.MustParse("10Gi")}},
		Taints:   taints,
	}
}

// slice is a ResourceSlice of the driver for node.
func slice(name, node string, devices ...resourceapi.Device) resourceapi.ResourceSlice {
	return resourceapi.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: resourceapi.ResourceSliceSpec{
			Driver:   names.DriverName,
			Pool:     resourceapi.ResourcePool{Name: node, Generation: 1, ResourceSliceCount: 1},
			NodeName: ptr(node),
			Devices:  devices,
		},
	}
}

// nodeSlices is node-a with GPUs 3, 30 and 4: enough to catch prefix
// mistakes (gpu-3 vs gpu-30), each with two MIG placements.
func nodeSlices() []resourceapi.ResourceSlice {
	return []resourceapi.ResourceSlice{
		slice("a-0", "node-a", gpuDevice(3), migDevice(3, "1g.10gb", 0), migDevice(3, "1g.10gb+me", 2), gpuDevice(4), migDevice(4, "1g.10gb", 0)),
		slice("a-1", "node-a", gpuDevice(30), migDevice(30, "1g.10gb", 0), migDevice(30, "3g.40gb", 4)),
		slice("b-0", "node-b", gpuDevice(0), migDevice(0, "1g.10gb", 0)),
	}
}

// claim is a ResourceClaim allocated on devices of pool, reserved for pods
// (name/uid pairs "name:uid").
func claim(ns, name, pool string, devices []string, pods ...string) resourceapi.ResourceClaim {
	c := resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("claim-" + name)}}
	alloc := &resourceapi.AllocationResult{}
	for _, d := range devices {
		alloc.Devices.Results = append(alloc.Devices.Results, resourceapi.DeviceRequestAllocationResult{
			Request: "gpu", Driver: names.DriverName, Pool: pool, Device: d,
		})
	}
	c.Status.Allocation = alloc
	for _, p := range pods {
		n, uid, _ := strings.Cut(p, ":")
		c.Status.ReservedFor = append(c.Status.ReservedFor, resourceapi.ResourceClaimConsumerReference{Resource: "pods", Name: n, UID: types.UID(uid)})
	}
	return c
}

// pod is a pod in a phase.
func pod(ns, name, uid string, phase corev1.PodPhase) corev1.Pod {
	return corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)},
		Spec:       corev1.PodSpec{NodeName: "node-a"},
		Status:     corev1.PodStatus{Phase: phase},
	}
}

// foreignRule is a DeviceTaintRule someone else created.
func foreignRule(name, pool, device string) resourceapi.DeviceTaintRule {
	r := resourceapi.DeviceTaintRule{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: resourceapi.DeviceTaintRuleSpec{
			DeviceSelector: &resourceapi.DeviceTaintSelector{Driver: ptr(names.DriverName), Pool: ptr(pool)},
			Taint:          resourceapi.DeviceTaint{Key: "example.com/other", Value: "x", Effect: resourceapi.DeviceTaintEffectNoSchedule, TimeAdded: &metav1.Time{Time: t0.Add(-time.Hour)}},
		},
	}
	if device != "" {
		r.Spec.DeviceSelector.Device = ptr(device)
	}
	return r
}

// fakeClient returns a fake clientset holding the objects.
func fakeClient(t *testing.T, slices []resourceapi.ResourceSlice, claims []resourceapi.ResourceClaim, rules []resourceapi.DeviceTaintRule, pods []corev1.Pod) *fake.Clientset {
	t.Helper()
	var objs []runtime.Object
	for i := range slices {
		objs = append(objs, &slices[i])
	}
	for i := range claims {
		objs = append(objs, &claims[i])
	}
	for i := range rules {
		objs = append(objs, &rules[i])
	}
	for i := range pods {
		objs = append(objs, &pods[i])
	}
	objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}})
	return fake.NewClientset(objs...)
}

// testApp is an app on a fake client and a step clock, writing to buffers.
func testApp(c kubernetes.Interface) (*app, *bytes.Buffer, *bytes.Buffer) {
	var out, errOut bytes.Buffer
	return &app{
		out: &out, errOut: &errOut,
		newClient:    func() (kubernetes.Interface, error) { return c, nil },
		clock:        &stepClock{now: t0},
		pollInterval: 10 * time.Second,
	}, &out, &errOut
}

// ruleNames lists the names of the rules in the fake client, sorted.
func ruleNames(t *testing.T, c kubernetes.Interface) []string {
	t.Helper()
	list, err := c.ResourceV1().DeviceTaintRules().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range list.Items {
		names = append(names, r.Name)
	}
	sort.Strings(names)
	return names
}
