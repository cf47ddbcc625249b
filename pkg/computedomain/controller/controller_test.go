package controller

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	cdv1 "github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller/templates"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// TestCreate: a domain gets the finalizer, its workload template (owned,
// labelled, in its namespace), the daemons' template and DaemonSet (in the
// driver's namespace) and a NotReady status.
func TestCreate(t *testing.T) {
	h := newHarness(t, nil, domain("team", "job", uid1))
	cd := h.domain("team", "job")
	if !slices.Contains(cd.Finalizers, names.ComputeDomainFinalizer) {
		t.Errorf("finalizers %v", cd.Finalizers)
	}
	rct, err := h.kube.ResourceV1().ResourceClaimTemplates("team").Get(h.ctx, "job-channel", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("workload template: %v", err)
	}
	if rct.Labels[names.ComputeDomainLabel] != uid1 || len(rct.OwnerReferences) != 1 || rct.OwnerReferences[0].UID != uid1 {
		t.Errorf("workload template metadata %+v", rct.ObjectMeta)
	}
	if !h.templateExists(driverNS, names.DomainDaemonTemplateName(uid1)) {
		t.Error("no daemon template")
	}
	ds, ok := h.daemonSet(uid1)
	if !ok || ds.Spec.Template.Spec.Containers[0].Image != "cd:1" {
		t.Errorf("daemon set %v", ds)
	}
	if cd.Status.Status != cdv1.StatusNotReady || len(cd.Status.Nodes) != 0 {
		t.Errorf("status %+v", cd.Status)
	}
	np, err := h.kube.NetworkingV1().NetworkPolicies(driverNS).Get(h.ctx, names.DomainDaemonSetName(uid1), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("network policy: %v", err)
	}
	if len(np.OwnerReferences) != 1 || np.OwnerReferences[0].Kind != "DaemonSet" || np.OwnerReferences[0].Name != ds.Name ||
		np.Spec.PodSelector.MatchLabels[names.ComputeDomainLabel] != uid1 || len(np.Spec.Ingress) != 1 ||
		np.Spec.Ingress[0].From[0].PodSelector.MatchLabels[names.ComputeDomainLabel] != uid1 {
		t.Errorf("network policy %+v", np)
	}
	// Idempotent: another pass over the same state writes nothing.
	before := len(writes(h.kube.Actions()))
	h.c.enqueue(key{kind: kindDomain, namespace: "team", name: "job"})
	h.settle()
	if got := writes(h.kube.Actions())[before:]; len(got) != 0 {
		t.Errorf("a second reconcile wrote %v", got)
	}
}

// TestTemplateRecreated: a workload template the user deletes comes back.
func TestTemplateRecreated(t *testing.T) {
	h := newHarness(t, nil, domain("team", "job", uid1))
	if err := h.kube.ResourceV1().ResourceClaimTemplates("team").Delete(h.ctx, "job-channel", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.settle()
	if !h.templateExists("team", "job-channel") {
		t.Error("workload template not recreated")
	}
}

// TestTemplateConflict: a template of that name that is not the domain's is
// left alone, reported in an Event, and the domain stays NotReady.
func TestTemplateConflict(t *testing.T) {
	foreign := &resourcev1.ResourceClaimTemplate{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "job-channel", Labels: map[string]string{"app": "mine"}}}
	h := newHarness(t, []runtime.Object{foreign, node("n1", nil), cdSlice("n1", clique)}, domain("team", "job", uid1))
	got, err := h.kube.ResourceV1().ResourceClaimTemplates("team").Get(h.ctx, "job-channel", metav1.GetOptions{})
	if err != nil || !reflect.DeepEqual(got.Labels, foreign.Labels) || len(got.OwnerReferences) != 0 {
		t.Errorf("foreign template changed: %+v, %v", got, err)
	}
	for _, w := range writes(h.kube.Actions()) {
		if w == "update resourceclaimtemplates team/job-channel" || w == "delete resourceclaimtemplates team/job-channel" {
			t.Errorf("touched the foreign template: %s", w)
		}
	}
	if ev := h.events(); !hasEvent(ev, "Warning", ReasonTemplateConflict, "team/job-channel") {
		t.Errorf("events %v", ev)
	}
	h.createPod(daemonPod(uid1, "n1", "10.0.0.1", true))
	h.tick(time.Second)
	if st := h.domain("team", "job").Status; st.Status != cdv1.StatusNotReady {
		t.Errorf("status %+v with a conflicting template", st)
	}
	// Once the name is free, the domain gets its template.
	if err := h.kube.ResourceV1().ResourceClaimTemplates("team").Delete(h.ctx, "job-channel", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.tick(ConflictRetryInterval)
	h.tick(time.Second)
	rct, err := h.kube.ResourceV1().ResourceClaimTemplates("team").Get(h.ctx, "job-channel", metav1.GetOptions{})
	if err != nil || rct.Labels[names.ComputeDomainLabel] != uid1 {
		t.Errorf("template after the conflict ended: %+v, %v", rct, err)
	}
	if st := h.domain("team", "job").Status; st.Status != cdv1.StatusReady {
		t.Errorf("status %+v after the conflict ended", st)
	}
}

// TestRestartMidCreation: a controller started with part of a domain's
// objects made completes them.
func TestRestartMidCreation(t *testing.T) {
	h0 := newHarness(t, nil, domain("team", "job", uid1))
	daemonTmpl, _ := h0.kube.ResourceV1().ResourceClaimTemplates(driverNS).Get(h0.ctx, names.DomainDaemonTemplateName(uid1), metav1.GetOptions{})
	cd := h0.domain("team", "job")
	h := newHarness(t, []runtime.Object{daemonTmpl}, cd)
	if !h.templateExists("team", "job-channel") {
		t.Error("no workload template")
	}
	if _, ok := h.daemonSet(uid1); !ok {
		t.Error("no daemon set")
	}
	for _, w := range writes(h.kube.Actions()) {
		if w == "create resourceclaimtemplates "+driverNS+"/"+names.DomainDaemonTemplateName(uid1) {
			t.Error("created the daemon template again")
		}
	}
}

// TestTemplateRenamed: a template of a name the spec no longer gives goes.
func TestTemplateRenamed(t *testing.T) {
	h := newHarness(t, nil, domain("team", "job", uid1))
	cd := h.domain("team", "job")
	cd.Spec.Channel.ResourceClaimTemplate.Name = "renamed"
	h.updateDomain(cd)
	h.settle()
	if h.templateExists("team", "job-channel") || !h.templateExists("team", "renamed") {
		t.Error("templates did not follow the rename")
	}
}

// TestInvalidSpec: an invalid spec makes no objects, only an Event naming
// the field.
func TestInvalidSpec(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*cdv1.ComputeDomain)
		field string
	}{
		{name: "no channel", edit: func(cd *cdv1.ComputeDomain) { cd.Spec.Channel = nil }, field: "spec.channel"},
		{name: "bad template name", edit: func(cd *cdv1.ComputeDomain) { cd.Spec.Channel.ResourceClaimTemplate.Name = "Not_A_Name" }, field: "spec.channel.resourceClaimTemplate.name"},
		{name: "bad allocation mode", edit: func(cd *cdv1.ComputeDomain) { cd.Spec.Channel.AllocationMode = "Some" }, field: "spec.channel.allocationMode"},
		{name: "negative numNodes", edit: func(cd *cdv1.ComputeDomain) { cd.Spec.NumNodes = -1 }, field: "spec.numNodes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cd := domain("team", "job", uid1)
			tt.edit(cd)
			h := newHarness(t, nil, cd)
			for _, w := range writes(h.kube.Actions()) {
				t.Errorf("wrote %s for an invalid domain", w)
			}
			if ev := h.events(); !hasEvent(ev, "Warning", ReasonInvalidSpec, tt.field) {
				t.Errorf("events %v, want one naming %s", ev, tt.field)
			}
			if st := h.domain("team", "job").Status.Status; st != cdv1.StatusNotReady {
				t.Errorf("status %q", st)
			}
		})
	}
}

// TestNodeLabels: a node carries one label per domain with an allocated
// channel there, from a claim in the domain's own namespace; labels follow
// claims as they come and go.
func TestNodeLabels(t *testing.T) {
	l1, l2 := names.DomainNodeLabel(uid1), names.DomainNodeLabel(uid2)
	type step struct {
		create []*resourcev1.ResourceClaim
		delete []string // claim names in namespace team
		want   map[string][]string
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "added then removed",
			steps: []step{
				{create: []*resourcev1.ResourceClaim{channelClaim("team", "c1", uid1, "n1")}, want: map[string][]string{"n1": {l1}, "n2": nil}},
				{delete: []string{"c1"}, want: map[string][]string{"n1": nil, "n2": nil}},
			},
		},
		{
			name: "two domains on one node, separate keys",
			steps: []step{
				{create: []*resourcev1.ResourceClaim{channelClaim("team", "c1", uid1, "n1", "n2"), channelClaim("team", "c2", uid2, "n1")}, want: map[string][]string{"n1": {l1, l2}, "n2": {l1}}},
				{delete: []string{"c1"}, want: map[string][]string{"n1": {l2}, "n2": nil}},
			},
		},
		{
			name: "two claims of one domain on a node: the label stays until the last goes",
			steps: []step{
				{create: []*resourcev1.ResourceClaim{channelClaim("team", "c1", uid1, "n1"), channelClaim("team", "c2", uid1, "n1")}, want: map[string][]string{"n1": {l1}}},
				{delete: []string{"c1"}, want: map[string][]string{"n1": {l1}}},
				{delete: []string{"c2"}, want: map[string][]string{"n1": nil}},
			},
		},
		{
			name: "unallocated claim, another namespace's domain, unknown domain: no label",
			steps: []step{
				{create: []*resourcev1.ResourceClaim{
					channelClaim("team", "c1", uid1),
					channelClaim("other", "c2", uid1, "n1"),
					channelClaim("team", "c3", "33333333-3333-3333-3333-333333333333", "n2"),
				}, want: map[string][]string{"n1": nil, "n2": nil}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, []runtime.Object{node("n1", map[string]string{"keep": "me"}), node("n2", nil)}, domain("team", "a", uid1), domain("team", "b", uid2))
			for i, s := range tt.steps {
				for _, c := range s.create {
					if _, err := h.kube.ResourceV1().ResourceClaims(c.Namespace).Create(h.ctx, c, metav1.CreateOptions{}); err != nil {
						t.Fatal(err)
					}
				}
				for _, n := range s.delete {
					if err := h.kube.ResourceV1().ResourceClaims("team").Delete(h.ctx, n, metav1.DeleteOptions{}); err != nil {
						t.Fatal(err)
					}
				}
				h.settle()
				for n, want := range s.want {
					labels := h.nodeLabels(n)
					var got []string
					for k := range labels {
						if k != "keep" {
							got = append(got, k)
						}
					}
					slices.Sort(got)
					if !slices.Equal(got, want) {
						t.Errorf("step %d: node %s has domain labels %v, want %v", i, n, got, want)
					}
					if n == "n1" && labels["keep"] != "me" {
						t.Errorf("step %d: other labels of n1 changed: %v", i, labels)
					}
				}
			}
		})
	}
}

// TestNodeSyncedTwiceBeforeItsInformer: a node synced again before the
// informer shows the controller's own label patch is not patched again
// (the scale run saw 1-2 such repeats per 64 nodes).
func TestNodeSyncedTwiceBeforeItsInformer(t *testing.T) {
	h := newHarness(t, []runtime.Object{node("n1", nil)}, domain("team", "a", uid1))
	// The fake client keeps no resource versions; the API server's are
	// integers, and the controller compares them to know which copy of a
	// node is newer: the patched copy gets one here.
	var patches atomic.Int32
	patch := clienttesting.ObjectReaction(h.kube.Tracker())
	h.kube.PrependReactor("patch", "nodes", func(a clienttesting.Action) (bool, runtime.Object, error) {
		n := patches.Add(1)
		handled, obj, err := patch(a)
		if node, ok := obj.(*corev1.Node); ok && err == nil {
			node = node.DeepCopy()
			node.ResourceVersion = fmt.Sprint(1000 + n)
			return handled, node, nil
		}
		return handled, obj, err
	})
	if _, err := h.kube.ResourceV1().ResourceClaims("team").Create(h.ctx, channelClaim("team", "c1", uid1, "n1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(h.c.inf.claimsOnNode("n1")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the claim never reached the informer")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for range 2 {
		if err := h.c.syncNode(h.ctx, "n1"); err != nil {
			t.Fatal(err)
		}
	}
	if got := patches.Load(); got != 1 {
		t.Errorf("%d label patches for one label, want 1", got)
	}
	h.settle()
	if _, ok := h.nodeLabels("n1")[names.DomainNodeLabel(uid1)]; !ok || patches.Load() != 1 {
		t.Errorf("after settling: labels %v, %d patches; want the domain's label from one patch", h.nodeLabels("n1"), patches.Load())
	}
}

// TestCliqueLabel: nvidia.com/gpu.clique follows the node's slice.
func TestCliqueLabel(t *testing.T) {
	h := newHarness(t, []runtime.Object{node("n1", nil), node("n2", map[string]string{names.GPUCliqueLabel: "old.1"}), node("n3", map[string]string{names.GPUCliqueLabel: "gfd.2"}),
		cdSlice("n1", clique), cdSlice("n2", "")})
	want := map[string]string{"n1": clique, "n2": "", "n3": "gfd.2"}
	for n, w := range want {
		if got := h.nodeLabels(n)[names.GPUCliqueLabel]; got != w {
			t.Errorf("node %s clique label %q, want %q", n, got, w)
		}
	}
	s := cdSlice("n1", "abc.3")
	if _, err := h.kube.ResourceV1().ResourceSlices().Update(h.ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.settle()
	if got := h.nodeLabels("n1")[names.GPUCliqueLabel]; got != "abc.3" {
		t.Errorf("after the slice changed: %q", got)
	}
}

// TestStatus: the status lists the daemon pods' nodes with stable indices
// per clique, and N pod updates within the coalescing interval make few
// writes; the last state is written once the interval ends.
func TestStatus(t *testing.T) {
	const other = "99999999-0000-0000-0000-000000000000.1"
	objs := []runtime.Object{node("n1", nil), node("n2", nil), node("n3", nil), cdSlice("n1", clique), cdSlice("n2", clique), cdSlice("n3", other)}
	cd := domain("team", "job", uid1)
	cd.Spec.NumNodes = 3
	h := newHarness(t, objs, cd)
	h.tick(time.Second)

	base := h.statusWrites()
	pods := []*corev1.Pod{daemonPod(uid1, "n2", "10.0.0.2", false), daemonPod(uid1, "n1", "10.0.0.1", false), daemonPod(uid1, "n3", "10.0.0.3", false)}
	for _, p := range pods {
		h.createPod(p)
		h.settle() // n2 is written first, and gets index 0 of its clique
	}
	// Ten updates within one interval: readiness flips, then all ready.
	for i := range 10 {
		p := pods[i%3].DeepCopy()
		p.Status.Conditions[0].Status = corev1.ConditionStatus(map[bool]string{true: "True", false: "False"}[i >= 7])
		h.updatePod(p)
		pods[i%3] = p
		h.settle()
	}
	if got := h.statusWrites() - base; got != 1 {
		t.Errorf("%d status writes within one interval, want 1", got)
	}
	h.tick(time.Second)
	if got := h.statusWrites() - base; got != 2 {
		t.Errorf("%d status writes after the interval, want 2", got)
	}
	st := h.domain("team", "job").Status
	want := []cdv1.ComputeDomainNode{
		{Name: "n1", IPAddress: "10.0.0.1", CliqueID: clique, Index: 1, Status: cdv1.StatusReady},
		{Name: "n2", IPAddress: "10.0.0.2", CliqueID: clique, Index: 0, Status: cdv1.StatusReady},
		{Name: "n3", IPAddress: "10.0.0.3", CliqueID: other, Index: 0, Status: cdv1.StatusReady},
	}
	if st.Status != cdv1.StatusReady || len(st.Nodes) != 3 {
		t.Fatalf("status %+v", st)
	}
	for i, n := range st.Nodes {
		if *n != want[i] {
			t.Errorf("node %d: %+v, want %+v", i, *n, want[i])
		}
	}
	// A node leaves and another joins its clique: it takes the free index;
	// the others keep theirs.
	h.deletePods(uid1)
	h.createPod(daemonPod(uid1, "n1", "10.0.0.1", true))
	h.createPod(daemonPod(uid1, "n3", "10.0.0.3", true))
	h.tick(time.Second)
	h.tick(time.Second) // the first write may have seen only part of the change
	st = h.domain("team", "job").Status
	if st.Status != cdv1.StatusNotReady || len(st.Nodes) != 2 || st.Nodes[0].Index != 1 || st.Nodes[1].Index != 0 {
		t.Errorf("after n2 left: %+v", st)
	}
	// Unchanged state: no write.
	before := h.statusWrites()
	h.c.enqueue(key{kind: kindDomain, namespace: "team", name: "job"})
	h.tick(time.Second)
	if h.statusWrites() != before {
		t.Error("rewrote an unchanged status")
	}
}

// TestStatusConflict: a status write that conflicts is retried, not forced.
func TestStatusConflict(t *testing.T) {
	h := newHarness(t, []runtime.Object{node("n1", nil), cdSlice("n1", clique)}, domain("team", "job", uid1))
	h.tick(time.Second)
	conflicts := 1
	h.dyn.PrependReactor("update", "computedomains", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() == "status" && conflicts > 0 {
			conflicts--
			return true, nil, apierrors.NewConflict(schema.GroupResource{Group: cdv1.GroupName, Resource: "computedomains"}, "job", fmt.Errorf("stale"))
		}
		return false, nil, nil
	})
	h.createPod(daemonPod(uid1, "n1", "10.0.0.1", true))
	h.settle()
	if st := h.domain("team", "job").Status; st.Status == cdv1.StatusReady {
		t.Fatal("a conflicting write went through")
	}
	h.tick(time.Minute)
	if st := h.domain("team", "job").Status; st.Status != cdv1.StatusReady {
		t.Errorf("after the retry: %+v", st)
	}
}

// TestDeletion: workload template and DaemonSet go first; the daemons'
// template, the node labels and the finalizer only once the daemon pods
// are gone, in that order.
func TestDeletion(t *testing.T) {
	h := newHarness(t, []runtime.Object{node("n1", nil)}, domain("team", "job", uid1), domain("team", "other", uid2))
	for _, c := range []*resourcev1.ResourceClaim{channelClaim("team", "c1", uid1, "n1"), channelClaim("team", "c2", uid2, "n1")} {
		if _, err := h.kube.ResourceV1().ResourceClaims("team").Create(h.ctx, c, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	h.createPod(daemonPod(uid1, "n1", "10.0.0.1", true))
	h.settle()
	if _, ok := h.nodeLabels("n1")[names.DomainNodeLabel(uid1)]; !ok {
		t.Fatal("node not labelled")
	}

	start := len(h.kube.Actions())
	h.startDeletion("team", "job")
	h.settle()
	if h.templateExists("team", "job-channel") {
		t.Error("workload template left")
	}
	if _, ok := h.daemonSet(uid1); ok {
		t.Error("daemon set left")
	}
	if !h.templateExists(driverNS, names.DomainDaemonTemplateName(uid1)) {
		t.Error("daemon template deleted while a daemon pod is left")
	}
	if !slices.Contains(h.domain("team", "job").Finalizers, names.ComputeDomainFinalizer) {
		t.Error("finalizer removed while a daemon pod is left")
	}

	h.deletePods(uid1) // as the garbage collector does
	h.tick(DeletionPollInterval)
	if h.templateExists(driverNS, names.DomainDaemonTemplateName(uid1)) {
		t.Error("daemon template left")
	}
	labels := h.nodeLabels("n1")
	if _, ok := labels[names.DomainNodeLabel(uid1)]; ok {
		t.Error("node label of the deleted domain left")
	}
	if _, ok := labels[names.DomainNodeLabel(uid2)]; !ok {
		t.Error("node label of the other domain removed")
	}
	if slices.Contains(h.domain("team", "job").Finalizers, names.ComputeDomainFinalizer) {
		t.Error("finalizer left")
	}
	var got []string
	for _, w := range writes(h.kube.Actions()[start:]) {
		if w != "delete pods "+driverNS+"/"+names.DomainDaemonSetName(uid1)+"-n1" {
			got = append(got, w)
		}
	}
	want := []string{
		"delete resourceclaimtemplates team/job-channel",
		"delete daemonsets " + driverNS + "/" + names.DomainDaemonSetName(uid1),
		"delete resourceclaimtemplates " + driverNS + "/" + names.DomainDaemonTemplateName(uid1),
		"patch nodes /n1",
	}
	// A node reconcile on a cache that lags behind may repeat the
	// (idempotent) label removal; the order is what matters.
	if got = slices.Compact(got); !slices.Equal(got, want) {
		t.Errorf("writes during deletion:\n got %q\nwant %q", got, want)
	}
	if !h.templateExists("team", "other-channel") {
		t.Error("the other domain's template was deleted")
	}
}

// TestRestartMidDeletion: a controller started at any point of a deletion
// finishes it.
func TestRestartMidDeletion(t *testing.T) {
	deleting := func() *cdv1.ComputeDomain {
		cd := domain("team", "job", uid1)
		cd.Finalizers = []string{names.ComputeDomainFinalizer, "other/keep"}
		cd.DeletionTimestamp = &metav1.Time{Time: time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)}
		return cd
	}
	labelled := node("n1", map[string]string{names.DomainNodeLabel(uid1): ""})
	cd := deleting()
	h0 := newHarness(t, nil, domain("team", "job", uid1))
	workload, _ := h0.kube.ResourceV1().ResourceClaimTemplates("team").Get(h0.ctx, "job-channel", metav1.GetOptions{})
	daemonTmpl, _ := h0.kube.ResourceV1().ResourceClaimTemplates(driverNS).Get(h0.ctx, names.DomainDaemonTemplateName(uid1), metav1.GetOptions{})
	ds, _ := h0.daemonSet(uid1)
	tests := []struct {
		name string
		objs []runtime.Object
	}{
		{name: "nothing deleted yet", objs: []runtime.Object{workload, daemonTmpl, ds, labelled}},
		{name: "templates and daemon set gone, node labelled", objs: []runtime.Object{labelled.DeepCopy()}},
		{name: "daemon set gone", objs: []runtime.Object{workload, daemonTmpl, labelled.DeepCopy()}},
		{name: "only the finalizer left", objs: []runtime.Object{node("n1", nil)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.objs, cd)
			h.tick(DeletionPollInterval)
			got := h.domain("team", "job")
			if !slices.Equal(got.Finalizers, []string{"other/keep"}) {
				t.Errorf("finalizers %v", got.Finalizers)
			}
			if h.templateExists("team", "job-channel") || h.templateExists(driverNS, names.DomainDaemonTemplateName(uid1)) {
				t.Error("template left")
			}
			if _, ok := h.daemonSet(uid1); ok {
				t.Error("daemon set left")
			}
			if _, ok := h.nodeLabels("n1")[names.DomainNodeLabel(uid1)]; ok {
				t.Error("node label left")
			}
		})
	}
}

// TestOrphan: daemon objects of a domain that is gone without its
// finalizer's clean-up are removed.
func TestOrphan(t *testing.T) {
	h0 := newHarness(t, nil, domain("team", "job", uid1))
	daemonTmpl, _ := h0.kube.ResourceV1().ResourceClaimTemplates(driverNS).Get(h0.ctx, names.DomainDaemonTemplateName(uid1), metav1.GetOptions{})
	ds, _ := h0.daemonSet(uid1)
	h := newHarness(t, []runtime.Object{daemonTmpl, ds, node("n1", map[string]string{names.DomainNodeLabel(uid1): ""})})
	if _, ok := h.daemonSet(uid1); ok {
		t.Error("orphaned daemon set left")
	}
	if h.templateExists(driverNS, names.DomainDaemonTemplateName(uid1)) {
		t.Error("orphaned daemon template left")
	}
	if _, ok := h.nodeLabels("n1")[names.DomainNodeLabel(uid1)]; ok {
		t.Error("orphaned node label left")
	}
}

// TestStartNamesACacheThatStaysEmpty: with NetworkPolicies on but no right
// to list them (RBAC), Start fails within its timeout naming them, rather
// than waiting forever.
func TestStartNamesACacheThatStaysEmpty(t *testing.T) {
	kube := kubefake.NewClientset()
	kube.PrependReactor("list", "networkpolicies", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "networking.k8s.io", Resource: "networkpolicies"}, "", errors.New("RBAC"))
	})
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{cdv1.Resource: "ComputeDomainList"})
	c, err := New(kube, dyn, Options{
		Daemon:           templates.DaemonOptions{Namespace: driverNS, Image: "cd:1"},
		Recorder:         record.NewFakeRecorder(10),
		NetworkPolicy:    true,
		CacheSyncTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = c.Start(ctx)
	if err == nil || !strings.Contains(err.Error(), "networkpolicies in "+driverNS) || strings.Contains(err.Error(), "daemonsets") {
		t.Fatalf("Start: %v, want an error naming the NetworkPolicy cache only", err)
	}
}
