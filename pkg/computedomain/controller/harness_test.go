package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2/ktesting"
	testingclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	cdv1 "github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller/templates"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

const (
	driverNS = "gpu-dra"
	uid1     = "11111111-1111-1111-1111-111111111111"
	uid2     = "22222222-2222-2222-2222-222222222222"
	clique   = "0f3b1c2d-1111-2222-3333-444455556666.7"
)

// harness is a controller over fake clients, driven by the test: settle
// runs reconciles until nothing is left to do; tick moves the clock (the
// queue's delays and the status coalescing follow it).
type harness struct {
	t     *testing.T
	ctx   context.Context
	kube  *kubefake.Clientset
	dyn   *dynamicfake.FakeDynamicClient
	rec   *record.FakeRecorder
	clock *testingclock.FakeClock
	c     *Controller
}

func newHarness(t *testing.T, kubeObjs []runtime.Object, domains ...*cdv1.ComputeDomain) *harness {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	var dynObjs []runtime.Object
	for _, cd := range domains {
		u, err := cdv1.ToUnstructured(cd)
		if err != nil {
			t.Fatal(err)
		}
		dynObjs = append(dynObjs, u)
	}
	h := &harness{
		t:     t,
		ctx:   ctx,
		kube:  kubefake.NewClientset(kubeObjs...),
		dyn:   dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{cdv1.Resource: "ComputeDomainList"}, dynObjs...),
		rec:   record.NewFakeRecorder(1000),
		clock: testingclock.NewFakeClock(time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)),
	}
	c, err := New(h.kube, h.dyn, Options{
		Daemon:            templates.DaemonOptions{Namespace: driverNS, Image: "cd:1"},
		StatusMinInterval: time.Second,
		Recorder:          h.rec,
		Clock:             h.clock,
		NetworkPolicy:     true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h.c = c
	t.Cleanup(c.queue.ShutDown)
	h.settle()
	return h
}

// settle processes work items until the queue stayed empty for a while
// (informer events arrive asynchronously).
func (h *harness) settle() {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var idleSince time.Time
	for time.Now().Before(deadline) {
		if h.c.queue.Len() > 0 {
			h.c.processNext(h.ctx)
			idleSince = time.Time{}
			continue
		}
		if idleSince.IsZero() {
			idleSince = time.Now()
		} else if time.Since(idleSince) > 200*time.Millisecond {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.t.Fatal("the controller did not settle")
}

func (h *harness) tick(d time.Duration) {
	h.clock.Step(d)
	h.settle()
}

func domain(ns, name, uid string) *cdv1.ComputeDomain {
	return &cdv1.ComputeDomain{
		TypeMeta:   metav1.TypeMeta{APIVersion: cdv1.GroupVersion, Kind: cdv1.ComputeDomainKind},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)},
		Spec: cdv1.ComputeDomainSpec{Channel: &cdv1.ComputeDomainChannelSpec{
			ResourceClaimTemplate: cdv1.ComputeDomainResourceClaimTemplate{Name: name + "-channel"},
		}},
	}
}

func (h *harness) domain(ns, name string) *cdv1.ComputeDomain {
	h.t.Helper()
	u, err := h.dyn.Resource(cdv1.Resource).Namespace(ns).Get(h.ctx, name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatalf("get ComputeDomain %s/%s: %v", ns, name, err)
	}
	cd, err := cdv1.FromUnstructured(u)
	if err != nil {
		h.t.Fatal(err)
	}
	return cd
}

func (h *harness) updateDomain(cd *cdv1.ComputeDomain) {
	h.t.Helper()
	u, err := cdv1.ToUnstructured(cd)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.dyn.Resource(cdv1.Resource).Namespace(cd.Namespace).Update(h.ctx, u, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

// startDeletion marks the domain deleted as the API server does for an
// object with finalizers (the fake client deletes at once).
func (h *harness) startDeletion(ns, name string) {
	h.t.Helper()
	cd := h.domain(ns, name)
	cd.DeletionTimestamp = ptr.To(metav1.NewTime(h.clock.Now()))
	h.updateDomain(cd)
}

func node(name string, labels map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func (h *harness) nodeLabels(name string) map[string]string {
	h.t.Helper()
	n, err := h.kube.CoreV1().Nodes().Get(h.ctx, name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return n.Labels
}

// channelClaim is a claim in ns with a channel of domain uid allocated on
// each of nodes (none: unallocated).
func channelClaim(ns, name, uid string, nodes ...string) *resourcev1.ResourceClaim {
	c := &resourcev1.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if len(nodes) == 0 {
		return c
	}
	alloc := &resourcev1.AllocationResult{}
	for _, n := range nodes {
		alloc.Devices.Results = append(alloc.Devices.Results, resourcev1.DeviceRequestAllocationResult{
			Request: "channel", Driver: names.ComputeDomainDriverName, Pool: n, Device: names.ChannelDevice,
		})
	}
	alloc.Devices.Config = []resourcev1.DeviceAllocationConfiguration{{
		Source:   resourcev1.AllocationConfigSourceClaim,
		Requests: []string{"channel"},
		DeviceConfiguration: resourcev1.DeviceConfiguration{Opaque: &resourcev1.OpaqueDeviceConfiguration{
			Driver:     names.ComputeDomainDriverName,
			Parameters: runtime.RawExtension{Raw: []byte(`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"ComputeDomainChannelConfig","domainID":"` + uid + `"}`)},
		}},
	}}
	c.Status.Allocation = alloc
	return c
}

func cdSlice(nodeName, cliqueID string) *resourcev1.ResourceSlice {
	s := &resourcev1.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName + "-cd"},
		Spec: resourcev1.ResourceSliceSpec{
			Driver:   names.ComputeDomainDriverName,
			NodeName: ptr.To(nodeName),
			Pool:     resourcev1.ResourcePool{Name: nodeName, ResourceSliceCount: 1},
		},
	}
	if cliqueID != "" {
		for _, d := range []string{names.ChannelDevice, names.DomainDaemonDevice} {
			s.Spec.Devices = append(s.Spec.Devices, resourcev1.Device{Name: d, Attributes: map[resourcev1.QualifiedName]resourcev1.DeviceAttribute{
				names.AttrCliqueID: {StringValue: ptr.To(cliqueID)},
			}})
		}
	}
	return s
}

// daemonPod is a daemon pod of domain uid on node, as the DaemonSet makes it.
func daemonPod(uid, nodeName, ip string, ready bool) *corev1.Pod {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: driverNS, Name: names.DomainDaemonSetName(uid) + "-" + nodeName,
			Labels: templates.Labels(uid),
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "DaemonSet", Name: names.DomainDaemonSetName(uid), UID: "ds", Controller: ptr.To(true),
			}},
		},
		Spec: corev1.PodSpec{NodeName: nodeName},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}},
		},
	}
}

func (h *harness) createPod(p *corev1.Pod) {
	h.t.Helper()
	if _, err := h.kube.CoreV1().Pods(p.Namespace).Create(h.ctx, p, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) updatePod(p *corev1.Pod) {
	h.t.Helper()
	if _, err := h.kube.CoreV1().Pods(p.Namespace).Update(h.ctx, p, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) deletePods(uid string) {
	h.t.Helper()
	pods, err := h.kube.CoreV1().Pods(driverNS).List(h.ctx, metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Labels[names.ComputeDomainLabel] == uid {
			if err := h.kube.CoreV1().Pods(driverNS).Delete(h.ctx, p.Name, metav1.DeleteOptions{}); err != nil {
				h.t.Fatal(err)
			}
		}
	}
}

// exists reports whether the named template or daemon set exists.
func (h *harness) templateExists(ns, name string) bool {
	h.t.Helper()
	_, err := h.kube.ResourceV1().ResourceClaimTemplates(ns).Get(h.ctx, name, metav1.GetOptions{})
	return h.exists(err)
}

func (h *harness) daemonSet(uid string) (*appsv1.DaemonSet, bool) {
	h.t.Helper()
	ds, err := h.kube.AppsV1().DaemonSets(driverNS).Get(h.ctx, names.DomainDaemonSetName(uid), metav1.GetOptions{})
	return ds, h.exists(err)
}

func (h *harness) exists(err error) bool {
	h.t.Helper()
	if apierrors.IsNotFound(err) {
		return false
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return true
}

// statusWrites counts the status updates the controller sent.
func (h *harness) statusWrites() int {
	n := 0
	for _, a := range h.dyn.Actions() {
		if a.GetVerb() == "update" && a.GetSubresource() == "status" {
			n++
		}
	}
	return n
}

// events drains the recorded events.
func (h *harness) events() []string {
	var out []string
	for {
		select {
		case e := <-h.rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func hasEvent(events []string, parts ...string) bool {
	for _, e := range events {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(e, p)
		}
		if all {
			return true
		}
	}
	return false
}

// writes lists the kube client's mutating actions as "verb resource
// namespace/name".
func writes(actions []clienttesting.Action) []string {
	var out []string
	for _, a := range actions {
		name := ""
		switch a := a.(type) {
		case clienttesting.CreateAction: // also UpdateAction: the same methods
			if m, err := metaOf(a.GetObject()); err == nil {
				name = m.GetName()
			}
		case clienttesting.DeleteAction:
			name = a.GetName()
		case clienttesting.PatchAction:
			name = a.GetName()
		default:
			continue
		}
		out = append(out, a.GetVerb()+" "+a.GetResource().Resource+" "+a.GetNamespace()+"/"+name)
	}
	return out
}
