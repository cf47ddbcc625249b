//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	resourceapi "k8s.io/api/resource/v1"
	resourcev1beta1 "k8s.io/api/resource/v1beta1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	resourceac "k8s.io/client-go/applyconfigurations/resource/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// TestPluginClaimStatusOnlyOfItsNodesClaims: on the real API server, the
// plugin's identity, which may get no claim, could patch the status of
// any claim with a patch that changes nothing, and was answered with the
// whole claim (the API server checks the driver's status entries against
// the claim's node only when they change). With the chart's claim status
// policy, every patch of a claim not allocated on the token's node is
// refused, a no-op one too, and the refusal carries nothing of the claim;
// the plugin's own writes (server-side applies of its entries, as
// pkg/claimstatus makes them) of its node's claims still pass.
func TestPluginClaimStatusOnlyOfItsNodesClaims(t *testing.T) {
	const ns, release, claimNS = "gpu-dra-claimstatus", "claimstatus", "gpu-dra-claimstatus-claims"
	const marker = "tenant-data-7f3c"
	asPluginOn, applyPolicies := pluginIdentityWithoutPolicies(t, release, ns)
	plugin := asPluginOn("node-a")
	t.Cleanup(func() { cleanNamespace(t, claimNS) })
	applyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+claimNS+"}\n")
	claims := map[string]*resourceapi.ResourceClaim{}
	for name, node := range map[string]string{"on-a": "node-a", "on-b": "node-b", "unallocated": ""} {
		c, err := client.ResourceV1().ResourceClaims(claimNS).Create(ctx(), &resourceapi.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{"e2e.gpu.nvidia.com/secret": marker}},
			Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{
				Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: "gpu.nvidia.com"}}}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if node != "" {
			// As the scheduler allocates a device of the node's pool.
			c.Status.Allocation = &resourceapi.AllocationResult{
				Devices: resourceapi.DeviceAllocationResult{Results: []resourceapi.DeviceRequestAllocationResult{{
					Request: "gpu", Driver: names.DriverName, Pool: node, Device: "gpu-0"}}},
				NodeSelector: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
					MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}}}},
			}
			if c, err = client.ResourceV1().ResourceClaims(claimNS).UpdateStatus(ctx(), c, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		claims[name] = c
	}
	// noOpPatch patches a claim's status with nothing and returns the body
	// of the answer, whatever it is.
	noOpPatch := func(c kubernetes.Interface, name string) ([]byte, error) {
		return c.ResourceV1().RESTClient().Patch(types.MergePatchType).Namespace(claimNS).Resource("resourceclaims").
			Name(name).SubResource("status").Body([]byte(`{}`)).Do(ctx()).Raw()
	}
	// refusal is what a refused request was answered: client-go does not
	// always make the error of a 422 from its Status.
	refusal := func(body []byte, err error) string { return err.Error() + " " + string(body) }
	// leaks says what of claim name an answer's body holds.
	leaks := func(name string, body []byte) []string {
		var found []string
		for _, s := range []string{string(claims[name].UID), marker, "node-b", "deviceClassName", "allocation"} {
			if strings.Contains(string(body), s) {
				found = append(found, s)
			}
		}
		return found
	}

	// Without the policy: the identity may not get on-b, but a no-op
	// patch of it is answered with all of it, and writes nothing.
	if _, err := plugin.ResourceV1().ResourceClaims(claimNS).Get(ctx(), "on-b", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the plugin's identity may get a claim (want Forbidden): %v", err)
	}
	var body []byte
	eventually(t, 30*time.Second, "without the policy, a no-op patch of another node's claim answered", func() (bool, error) {
		var err error
		body, err = noOpPatch(plugin, "on-b")
		return err == nil, err
	})
	if got := leaks("on-b", body); len(got) < 5 {
		t.Fatalf("without the policy, the answer to a no-op patch holds only %q of the claim: the premise of this test does not hold", got)
	}
	if c, err := client.ResourceV1().ResourceClaims(claimNS).Get(ctx(), "on-b", metav1.GetOptions{}); err != nil ||
		c.ResourceVersion != claims["on-b"].ResourceVersion {
		t.Fatalf("the no-op patch wrote the claim (resourceVersion %s, was %s): %v", c.ResourceVersion, claims["on-b"].ResourceVersion, err)
	}

	applyPolicies()
	policy := release + "-node-claim-status"
	eventually(t, 30*time.Second, "the claim status policy in effect", func() (bool, error) {
		body, err := noOpPatch(plugin, "on-b")
		return err != nil && strings.Contains(refusal(body, err), policy), fmt.Errorf("%w: %s", err, body)
	})
	// The plugin's own entry, as pkg/claimstatus applies it.
	entry := func(node string) *resourceac.ResourceClaimStatusApplyConfiguration {
		return resourceac.ResourceClaimStatus().WithDevices(resourceac.AllocatedDeviceStatus().
			WithDriver(names.DriverName).WithPool(node).WithDevice("gpu-0"))
	}
	apply := func(c kubernetes.Interface, name string, status *resourceac.ResourceClaimStatusApplyConfiguration) ([]byte, error) {
		if status == nil {
			status = resourceac.ResourceClaimStatus()
		}
		_, err := c.ResourceV1().ResourceClaims(claimNS).ApplyStatus(ctx(),
			resourceac.ResourceClaim(name, claimNS).WithUID(claims[name].UID).WithStatus(status),
			metav1.ApplyOptions{FieldManager: names.StatusFieldManager, Force: true})
		var body []byte
		if status, ok := err.(apierrors.APIStatus); ok {
			// The Status the API server answered, as client-go decoded it.
			st := status.Status()
			body = []byte(st.String())
		}
		return body, err
	}
	for _, tc := range []struct {
		name    string
		call    func() ([]byte, error)
		message string
	}{
		{"a no-op patch of another node's claim", func() ([]byte, error) { return noOpPatch(plugin, "on-b") }, "allocated on node node-a"},
		{"a no-op patch of a claim not allocated", func() ([]byte, error) { return noOpPatch(plugin, "unallocated") }, "allocated on node node-a"},
		// Changes the API server refuses itself (resourceclaims/driver,
		// associated-node:patch), before admission: the policy adds nothing.
		{"an apply of its entry to another node's claim", func() ([]byte, error) { return apply(plugin, "on-b", entry("node-a")) }, ""},
		{"an apply of another node's entry", func() ([]byte, error) { return apply(plugin, "on-b", entry("node-b")) }, ""},
		{"an empty apply of another node's claim", func() ([]byte, error) { return apply(plugin, "on-b", nil) }, "allocated on node node-a"},
		{"a no-op patch with a token of no node", func() ([]byte, error) { return noOpPatch(asPluginOn(""), "on-a") }, "does not name its node"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body, err := tc.call()
			switch {
			case err == nil:
				t.Fatal("not refused")
			case tc.message != "" && (!strings.Contains(refusal(body, err), policy) || !strings.Contains(refusal(body, err), tc.message)):
				t.Fatalf("want refused by %s (%q): %v: %s", policy, tc.message, err, body)
			}
			name := "on-b"
			if strings.Contains(tc.name, "not allocated") {
				name = "unallocated"
			}
			if got := leaks(name, body); len(got) > 0 || len(body) == 0 {
				t.Errorf("the refusal holds %q of the claim (body %d bytes): %s", got, len(body), body)
			}
		})
	}
	// Its own node's claim: the plugin writes its entry and removes it.
	if _, err := apply(plugin, "on-a", entry("node-a")); err != nil {
		t.Fatalf("the plugin on node-a may not write its entry of its node's claim: %v", err)
	}
	if c, err := client.ResourceV1().ResourceClaims(claimNS).Get(ctx(), "on-a", metav1.GetOptions{}); err != nil || len(c.Status.Devices) != 1 {
		t.Errorf("its node's claim after the write: %v devices (%v)", c.Status.Devices, err)
	}
	if _, err := apply(plugin, "on-a", nil); err != nil {
		t.Fatalf("the plugin on node-a may not remove its entry of its node's claim: %v", err)
	}
	if c, err := client.ResourceV1().ResourceClaims(claimNS).Get(ctx(), "on-a", metav1.GetOptions{}); err != nil || len(c.Status.Devices) != 0 {
		t.Errorf("its node's claim after the removal: %v devices (%v)", c.Status.Devices, err)
	}
	if _, err := noOpPatch(plugin, "on-a"); err != nil {
		t.Errorf("the plugin on node-a may not patch its node's claim: %v", err)
	}
}

// TestPluginEventsOnlyAboutItsNode: on the real API server, the plugin's
// identity, which may create Events in default, could record one about
// another node; with the chart's Event policy it may record them only
// about its own node, reported from it, as pkg/driver does.
func TestPluginEventsOnlyAboutItsNode(t *testing.T) {
	const ns, release = "gpu-dra-events", "events"
	asPluginOn, applyPolicies := pluginIdentityWithoutPolicies(t, release, ns)
	plugin := asPluginOn("node-a")
	dryCreate := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	// event is the Event pkg/driver's nodeEvent records on node.
	event := func(node string) *corev1.Event {
		return &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{GenerateName: node + ".", Namespace: metav1.NamespaceDefault},
			InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: node, UID: types.UID(node), APIVersion: "v1"},
			Reason:         names.EventHealthTaintAdded, Message: names.GPUEventMessage(0, "health taint added"), Type: corev1.EventTypeWarning,
			Source: corev1.EventSource{Component: "gpu-kubelet-plugin", Host: node},
		}
	}
	create := func(c kubernetes.Interface, e *corev1.Event) error {
		_, err := c.CoreV1().Events(metav1.NamespaceDefault).Create(ctx(), e, dryCreate)
		return err
	}
	eventually(t, 30*time.Second, "without the policy, an Event about another node recorded (dry run)", func() (bool, error) {
		err := create(plugin, event("node-b"))
		return err == nil, err
	})

	applyPolicies()
	policy := release + "-node-events"
	eventually(t, 30*time.Second, "the Event policy in effect", func() (bool, error) {
		err := create(plugin, event("node-b"))
		return err != nil && strings.Contains(err.Error(), policy), err
	})
	if err := create(plugin, event("node-a")); err != nil {
		t.Fatalf("the plugin on node-a may not record its Event on node-a: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(e *corev1.Event)
	}{
		{"about another node", func(e *corev1.Event) { e.InvolvedObject.Name = "node-b" }},
		{"about a pod", func(e *corev1.Event) {
			e.InvolvedObject = corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "victim", APIVersion: "v1"}
		}},
		{"about a claim", func(e *corev1.Event) {
			e.InvolvedObject = corev1.ObjectReference{Kind: "ResourceClaim", Namespace: "default", Name: "c", APIVersion: "resource.k8s.io/v1"}
		}},
		{"about its node in a namespace", func(e *corev1.Event) { e.InvolvedObject.Namespace = "default" }},
		{"with a related object", func(e *corev1.Event) {
			e.Related = &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "victim", APIVersion: "v1"}
		}},
		{"from another host", func(e *corev1.Event) { e.Source.Host = "node-b" }},
		{"from another reporting instance", func(e *corev1.Event) {
			e.ReportingController, e.ReportingInstance = "gpu.nvidia.com/kubelet-plugin", "node-b"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := event("node-a")
			tc.change(e)
			if err := create(plugin, e); err == nil || !strings.Contains(err.Error(), policy) {
				t.Errorf("recorded (dry run), or refused by something else than %s: %v", policy, err)
			}
		})
	}
	if err := create(asPluginOn(""), event("node-a")); err == nil || !strings.Contains(err.Error(), "does not name its node") {
		t.Errorf("a token without a node recorded an Event: %v", err)
	}
	// events.k8s.io: RBAC grants none; were it granted, the policy judges
	// regarding as it judges involvedObject. RBAC answers first.
	_, err := plugin.EventsV1().Events(metav1.NamespaceDefault).Create(ctx(), &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "node-a."}, EventTime: metav1.NowMicro(),
		ReportingController: "gpu.nvidia.com/kubelet-plugin", ReportingInstance: "node-a", Action: "Test", Reason: "PolicyTest",
		Regarding: corev1.ObjectReference{Kind: "Node", Name: "node-b"}, Type: corev1.EventTypeNormal,
	}, dryCreate)
	if !apierrors.IsForbidden(err) {
		t.Errorf("an events.k8s.io Event about another node (want Forbidden): %v", err)
	}
}

// TestDriverTaintTolerationsOnlyInMarkedNamespaces: on the real API
// server, with the harness's release of the chart, a claim or claim
// template that tolerates a taint of the driver (gpu.nvidia.com/...: a
// health condition, maintenance) or every taint is refused in a namespace
// without the label names.MayTolerateDriverTaintsLabel=true and admitted
// in one with it, whichever field (exactly, a firstAvailable subrequest)
// or API version (v1beta1's flat requests) holds it; tolerations of other
// keys are not judged.
func TestDriverTaintTolerationsOnlyInMarkedNamespaces(t *testing.T) {
	const unmarked, marked, falseNS = "gpu-tolerate-unmarked", "gpu-tolerate-marked", "gpu-tolerate-false"
	policy := driverRelease + "-driver-taint-tolerations"
	for _, ns := range []string{unmarked, marked, falseNS} {
		t.Cleanup(func() { cleanNamespace(t, ns) })
	}
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: `+unmarked+`}
---
apiVersion: v1
kind: Namespace
metadata: {name: `+marked+`, labels: {`+names.MayTolerateDriverTaintsLabel+`: "true"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: `+falseNS+`, labels: {`+names.MayTolerateDriverTaintsLabel+`: "false"}}
`)
	dryCreate := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	xid := resourceapi.DeviceToleration{Key: names.HealthTaintKey("xid"), Operator: resourceapi.DeviceTolerationOpExists, Effect: resourceapi.DeviceTaintEffectNoExecute}
	maintenance := resourceapi.DeviceToleration{Key: names.MaintenanceTaintKey, Operator: resourceapi.DeviceTolerationOpEqual, Value: "upgrade"}
	everything := resourceapi.DeviceToleration{Operator: resourceapi.DeviceTolerationOpExists}
	other := resourceapi.DeviceToleration{Key: "example.com/flaky", Operator: resourceapi.DeviceTolerationOpExists}
	exactly := func(tolerations ...resourceapi.DeviceToleration) resourceapi.DeviceClaim {
		return resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{Name: "gpu",
			Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: names.GPUDeviceClass, Tolerations: tolerations}}}}
	}
	firstAvailable := func(tolerations ...resourceapi.DeviceToleration) resourceapi.DeviceClaim {
		return resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{Name: "gpu", FirstAvailable: []resourceapi.DeviceSubRequest{
			{Name: "mig", DeviceClassName: names.MIGDeviceClass},
			{Name: "whole", DeviceClassName: names.GPUDeviceClass, Tolerations: tolerations},
		}}}}
	}
	claim := func(ns string, devices resourceapi.DeviceClaim) error {
		_, err := client.ResourceV1().ResourceClaims(ns).Create(ctx(), &resourceapi.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "tolerating-"}, Spec: resourceapi.ResourceClaimSpec{Devices: devices}}, dryCreate)
		return err
	}
	template := func(ns string, devices resourceapi.DeviceClaim) error {
		_, err := client.ResourceV1().ResourceClaimTemplates(ns).Create(ctx(), &resourceapi.ResourceClaimTemplate{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "tolerating-"},
			Spec:       resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{Devices: devices}}}, dryCreate)
		return err
	}
	v1beta1Claim := func(ns string, tolerations ...resourcev1beta1.DeviceToleration) error {
		_, err := client.ResourceV1beta1().ResourceClaims(ns).Create(ctx(), &resourcev1beta1.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "tolerating-"},
			Spec: resourcev1beta1.ResourceClaimSpec{Devices: resourcev1beta1.DeviceClaim{Requests: []resourcev1beta1.DeviceRequest{{
				Name: "gpu", DeviceClassName: names.GPUDeviceClass, Tolerations: tolerations}}}}}, dryCreate)
		return err
	}
	eventually(t, 30*time.Second, "the toleration policy in effect", func() (bool, error) {
		err := claim(unmarked, exactly(xid))
		return err != nil && strings.Contains(err.Error(), policy), err
	})
	for _, tc := range []struct {
		name   string
		create func(ns string) error
		judged bool // refused outside marked namespaces
	}{
		{"an XID toleration", func(ns string) error { return claim(ns, exactly(xid)) }, true},
		{"a maintenance toleration", func(ns string) error { return claim(ns, exactly(other, maintenance)) }, true},
		{"a toleration of every taint", func(ns string) error { return claim(ns, exactly(everything)) }, true},
		{"a toleration in a subrequest", func(ns string) error { return claim(ns, firstAvailable(xid)) }, true},
		{"a template's toleration", func(ns string) error { return template(ns, exactly(maintenance)) }, true},
		{"a template's toleration in a subrequest", func(ns string) error { return template(ns, firstAvailable(everything)) }, true},
		{"a v1beta1 claim's toleration", func(ns string) error {
			return v1beta1Claim(ns, resourcev1beta1.DeviceToleration{Key: names.HealthTaintKey("xid"), Operator: resourcev1beta1.DeviceTolerationOpExists})
		}, true},
		{"another key's toleration", func(ns string) error { return claim(ns, exactly(other)) }, false},
		{"another key's toleration in a template", func(ns string) error { return template(ns, firstAvailable(other)) }, false},
		{"no toleration", func(ns string) error { return claim(ns, exactly()) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, ns := range []string{unmarked, falseNS} {
				err := tc.create(ns)
				switch refused := err != nil && strings.Contains(err.Error(), policy); {
				case tc.judged && !refused:
					t.Errorf("namespace %s: not refused by %s: %v", ns, policy, err)
				case !tc.judged && err != nil:
					t.Errorf("namespace %s: refused: %v", ns, err)
				}
			}
			if err := tc.create(marked); err != nil {
				t.Errorf("namespace %s (labelled): refused: %v", marked, err)
			}
		})
	}
}

// TestChartPoliciesTypeCheck: the API server type-checks every
// ValidatingAdmissionPolicy of the harness's release against the schemas
// of the resources it matches, and finds no expression that names a field
// they do not have or compares values of different types (a policy whose
// expression is wrong that way refuses, or admits, at run time instead).
func TestChartPoliciesTypeCheck(t *testing.T) {
	selector := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + driverRelease}
	var policies []admissionregistrationv1.ValidatingAdmissionPolicy
	eventually(t, 30*time.Second, "every policy of the release type-checked", func() (bool, error) {
		list, err := client.AdmissionregistrationV1().ValidatingAdmissionPolicies().List(ctx(), selector)
		if err != nil {
			return false, err
		}
		policies = list.Items
		for _, p := range policies {
			if p.Status.ObservedGeneration != p.Generation {
				return false, fmt.Errorf("%s: generation %d not type-checked yet", p.Name, p.Generation)
			}
		}
		return len(policies) > 0, nil
	})
	if len(policies) != 5 {
		t.Errorf("%d policies of the release, want 5 (slices, claim status, Events, MPS daemon pods, tolerations)", len(policies))
	}
	for _, p := range policies {
		if tc := p.Status.TypeChecking; tc != nil {
			for _, w := range tc.ExpressionWarnings {
				t.Errorf("%s: %s: %s", p.Name, w.FieldRef, w.Warning)
			}
		}
	}
}
