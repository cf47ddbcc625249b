//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps/daemonpod"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// policyImageTag is the image tag pluginIdentity renders the chart with:
// the MPS daemon pod policy admits that image only.
const policyImageTag = "policy-test"

// pluginIdentity applies the chart's identity of the kubelet plugin and
// its admission policies (node-scoped slices, claim status, Events, MPS
// daemon pods; no pods) as release release in namespace ns, with claims
// read as the node as the harness installs it, and returns a client of
// that identity as its pod on node would have it (a token naming the
// node). A cleanup removes them.
func pluginIdentity(t *testing.T, release, ns string) func(node string) kubernetes.Interface {
	t.Helper()
	asPluginOn, applyPolicies := pluginIdentityWithoutPolicies(t, release, ns)
	applyPolicies()
	return asPluginOn
}

// pluginIdentityWithoutPolicies is pluginIdentity with the admission
// policies left out until the function it returns too is called: a test
// shows what the identity could do without them first.
func pluginIdentityWithoutPolicies(t *testing.T, release, ns string) (asPluginOn func(node string) kubernetes.Interface, applyPolicies func()) {
	t.Helper()
	helm := helmBinary(t)
	rendered, err := exec.Command(helm, "template", release, filepath.Join(repoRoot, "deployments/helm/gpu-dra-driver"),
		"--namespace", ns, "--kube-version", "1.37.2", "--set", "deviceClasses.create=false", "--set", "webhook.enabled=false",
		"--set", "kubeletPlugin.claimReads.kubeletKubeconfig="+filepath.Join(runDir, "kubeconfig/kubelet.kubeconfig"),
		"--set", "image.tag="+policyImageTag,
		"--show-only", "templates/slice-policy.yaml", "--show-only", "templates/mps-daemon-policy.yaml",
		"--show-only", "templates/claim-status-policy.yaml", "--show-only", "templates/event-policy.yaml",
		"--show-only", "templates/kubelet-plugin.yaml").Output()
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	var identity, policies []string
	for _, doc := range strings.Split(string(rendered), "\n---") {
		switch {
		case strings.Contains(doc, "kind: DaemonSet"):
		case strings.Contains(doc, "kind: ValidatingAdmissionPolicy"):
			policies = append(policies, doc)
		default:
			identity = append(identity, doc)
		}
	}
	dir := t.TempDir()
	write := func(name string, docs []string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(strings.Join(docs, "\n---")), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	identityFile, policyFile := write("identity.yaml", identity), write("policies.yaml", policies)
	applyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")
	kubectl(t, "apply", "-f", identityFile)
	t.Cleanup(func() {
		kubectlErr("delete", "-f", policyFile, "--ignore-not-found", "--wait=false")
		kubectlErr("delete", "-f", identityFile, "--ignore-not-found", "--wait=false")
		cleanNamespace(t, ns)
	})
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(runDir, "kubeconfig/admin.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	return func(node string) kubernetes.Interface {
			c := rest.CopyConfig(cfg)
			c.Impersonate = rest.ImpersonationConfig{
				UserName: "system:serviceaccount:" + ns + ":" + release + "-kubelet-plugin",
				Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			}
			if node != "" {
				c.Impersonate.Extra = map[string][]string{"authentication.kubernetes.io/node-name": {node}}
			}
			return kubernetes.NewForConfigOrDie(c)
		}, func() {
			kubectl(t, "apply", "-f", policyFile)
		}
}

// TestPluginRBACIsWhatTheCodeCalls: on the real API server, the kubelet
// plugin's identity from the chart may make the calls the plugin makes
// (list, watch and write its node's slices, get and watch its node, create
// Events in default) and is refused everything the ClusterRole used to
// grant beyond them: getting, listing or watching claims, reading
// DeviceClasses and DeviceTaintRules, patching or collection-deleting
// slices, Events elsewhere, updating Events. The slice policy refuses a
// slice of its own node in a pool named after another node. Claims are
// read as the node, with the kubelet's kubeconfig: the Node authorizer
// lets it read no claim but those of pods bound to it (the rest of the
// suite prepares the node's own pods' claims that way).
func TestPluginRBACIsWhatTheCodeCalls(t *testing.T) {
	const ns, release = "gpu-dra-rbac", "rbac"
	asPluginOn := pluginIdentity(t, release, ns)
	plugin := asPluginOn("node-a")
	dryCreate := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}

	// A claim to read, in a namespace of its own.
	const claimNS = "gpu-dra-rbac-claims"
	t.Cleanup(func() { cleanNamespace(t, claimNS) })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: `+claimNS+`}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: some-claim, namespace: `+claimNS+`}
spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}
`)
	slice := func(node, pool string) *resourceapi.ResourceSlice {
		return &resourceapi.ResourceSlice{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "rbac-e2e-"},
			Spec: resourceapi.ResourceSliceSpec{Driver: "gpu.nvidia.com", NodeName: &node,
				Pool:    resourceapi.ResourcePool{Name: pool, ResourceSliceCount: 1},
				Devices: []resourceapi.Device{{Name: "gpu-0"}}},
		}
	}
	ownSlices := metav1.ListOptions{FieldSelector: "spec.nodeName=node-a,spec.driver=gpu.nvidia.com"}
	event := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: "node-a."},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: "node-a", UID: types.UID("node-a"), APIVersion: "v1"},
		Reason:         "RBACTest", Message: "dry run", Type: corev1.EventTypeNormal,
		Source: corev1.EventSource{Component: "gpu-kubelet-plugin", Host: "node-a"},
	}
	node := nodeName

	// RBAC is cached for a moment after the apply: wait for the first grant.
	eventually(t, 30*time.Second, "the plugin's identity may list its node's slices", func() (bool, error) {
		_, err := plugin.ResourceV1().ResourceSlices().List(ctx(), ownSlices)
		return err == nil, err
	})
	for _, tc := range []struct {
		what string
		call func() error
	}{
		{"list and watch its node's slices", func() error {
			if _, err := plugin.ResourceV1().ResourceSlices().List(ctx(), ownSlices); err != nil {
				return err
			}
			w, err := plugin.ResourceV1().ResourceSlices().Watch(ctx(), ownSlices)
			if err == nil {
				w.Stop()
			}
			return err
		}},
		{"create its node's slice", func() error {
			_, err := plugin.ResourceV1().ResourceSlices().Create(ctx(), slice("node-a", "node-a"), dryCreate)
			return err
		}},
		{"get and watch its node", func() error {
			if _, err := plugin.CoreV1().Nodes().Get(ctx(), node, metav1.GetOptions{}); err != nil {
				return err
			}
			w, err := plugin.CoreV1().Nodes().Watch(ctx(), metav1.ListOptions{FieldSelector: "metadata.name=" + node})
			if err == nil {
				w.Stop()
			}
			return err
		}},
		{"create an Event on its node in default", func() error {
			_, err := plugin.CoreV1().Events(metav1.NamespaceDefault).Create(ctx(), event, dryCreate)
			return err
		}},
	} {
		if err := tc.call(); err != nil {
			t.Errorf("the plugin may not %s: %v", tc.what, err)
		}
	}

	for _, tc := range []struct {
		what string
		call func() error
	}{
		{"get a claim by name", func() error {
			_, err := plugin.ResourceV1().ResourceClaims(claimNS).Get(ctx(), "some-claim", metav1.GetOptions{})
			return err
		}},
		{"list claims in all namespaces", func() error {
			_, err := plugin.ResourceV1().ResourceClaims("").List(ctx(), metav1.ListOptions{})
			return err
		}},
		{"list claims in a namespace", func() error {
			_, err := plugin.ResourceV1().ResourceClaims(claimNS).List(ctx(), metav1.ListOptions{})
			return err
		}},
		{"watch claims", func() error {
			w, err := plugin.ResourceV1().ResourceClaims("").Watch(ctx(), metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		}},
		{"update a claim's status", func() error {
			c, err := client.ResourceV1().ResourceClaims(claimNS).Get(ctx(), "some-claim", metav1.GetOptions{})
			if err != nil {
				return err
			}
			_, err = plugin.ResourceV1().ResourceClaims(claimNS).UpdateStatus(ctx(), c, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
			return err
		}},
		{"get a DeviceClass", func() error {
			_, err := plugin.ResourceV1().DeviceClasses().Get(ctx(), "gpu.nvidia.com", metav1.GetOptions{})
			return err
		}},
		{"list DeviceClasses", func() error {
			_, err := plugin.ResourceV1().DeviceClasses().List(ctx(), metav1.ListOptions{})
			return err
		}},
		{"list DeviceTaintRules", func() error {
			_, err := plugin.ResourceV1().DeviceTaintRules().List(ctx(), metav1.ListOptions{})
			return err
		}},
		{"get a slice by name", func() error {
			_, err := plugin.ResourceV1().ResourceSlices().Get(ctx(), "any", metav1.GetOptions{})
			return err
		}},
		{"patch a slice", func() error {
			_, err := plugin.ResourceV1().ResourceSlices().Patch(ctx(), "any", types.MergePatchType, []byte(`{}`), metav1.PatchOptions{})
			return err
		}},
		{"delete a collection of slices", func() error {
			return plugin.ResourceV1().ResourceSlices().DeleteCollection(ctx(), metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}, ownSlices)
		}},
		{"update a node", func() error {
			n, err := client.CoreV1().Nodes().Get(ctx(), node, metav1.GetOptions{})
			if err != nil {
				return err
			}
			_, err = plugin.CoreV1().Nodes().Update(ctx(), n, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
			return err
		}},
		{"create an Event in another namespace", func() error {
			_, err := plugin.CoreV1().Events(ns).Create(ctx(), event, dryCreate)
			return err
		}},
		{"patch an Event", func() error {
			_, err := plugin.CoreV1().Events(metav1.NamespaceDefault).Patch(ctx(), "any", types.MergePatchType, []byte(`{}`), metav1.PatchOptions{})
			return err
		}},
		{"create an events.k8s.io Event", func() error {
			_, err := plugin.EventsV1().Events(metav1.NamespaceDefault).Create(ctx(), &eventsv1.Event{
				ObjectMeta: metav1.ObjectMeta{GenerateName: "node-a."}, EventTime: metav1.NowMicro(),
				ReportingController: "gpu.nvidia.com/kubelet-plugin", ReportingInstance: "node-a", Action: "Test", Reason: "RBACTest",
				Regarding: corev1.ObjectReference{Kind: "Node", Name: "node-a"}, Type: corev1.EventTypeNormal,
			}, dryCreate)
			return err
		}},
		{"read a Secret", func() error {
			_, err := plugin.CoreV1().Secrets(ns).List(ctx(), metav1.ListOptions{})
			return err
		}},
	} {
		if err := tc.call(); !apierrors.IsForbidden(err) {
			t.Errorf("the plugin may %s (want Forbidden): %v", tc.what, err)
		}
	}

	// The slice policy: its own node's slice, but in another node's pool.
	eventually(t, 30*time.Second, "the plugin on node-a refused a slice of pool node-b", func() (bool, error) {
		_, err := plugin.ResourceV1().ResourceSlices().Create(ctx(), slice("node-a", "node-b"), dryCreate)
		return err != nil && strings.Contains(err.Error(), "may only write ResourceSlices of pool node-a, not of pool node-b"), err
	})
	if _, err := plugin.ResourceV1().ResourceSlices().Create(ctx(), slice("node-b", "node-b"), dryCreate); err == nil ||
		!strings.Contains(err.Error(), "may only write gpu.nvidia.com ResourceSlices of its own node") {
		t.Errorf("the plugin on node-a wrote node-b's slice: %v", err)
	}
	if _, err := asPluginOn("").ResourceV1().ResourceSlices().Create(ctx(), slice("node-a", "node-a"), dryCreate); err == nil ||
		!strings.Contains(err.Error(), "does not name its node") {
		t.Errorf("a token without a node wrote a slice: %v", err)
	}

	nodeReadsOnlyItsPodsClaims(t, claimNS)
}

// nodeReadsOnlyItsPodsClaims: the identity the plugin reads claims with,
// the kubelet's kubeconfig, may get a claim only when a pod bound to its
// node references it. Claim some-claim in claimNS has no pod; a pod bound
// to node-b (a node that does not exist: nothing runs it) references
// other-claim. node-b's identity may read other-claim once the API server
// knows the pod, and then this node's is still refused it.
func nodeReadsOnlyItsPodsClaims(t *testing.T, claimNS string) {
	t.Helper()
	const otherNode = "node-b"
	applyYAML(t, `apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: other-claim, namespace: `+claimNS+`}
spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}
`)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "on-" + otherNode, Namespace: claimNS},
		Spec: corev1.PodSpec{
			NodeName: otherNode, AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{Name: "ctr", Image: "busybox:local",
				Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}}}},
			ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: ptr.To("other-claim")}},
		},
	}
	// The namespace's default ServiceAccount, which admission wants, comes a moment after it.
	eventually(t, 30*time.Second, "a pod bound to "+otherNode, func() (bool, error) {
		_, err := client.CoreV1().Pods(claimNS).Create(ctx(), pod, metav1.CreateOptions{})
		return err == nil || apierrors.IsAlreadyExists(err), err
	})
	// No kubelet confirms the pod's end: deleted at once, before its namespace.
	t.Cleanup(func() {
		_ = client.CoreV1().Pods(claimNS).Delete(ctx(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	})

	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(runDir, "kubeconfig/kubelet.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	thisNode := kubernetes.NewForConfigOrDie(cfg)
	admin, err := clientcmd.BuildConfigFromFlags("", filepath.Join(runDir, "kubeconfig/admin.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	admin.Impersonate = rest.ImpersonationConfig{UserName: "system:node:" + otherNode, Groups: []string{"system:nodes", "system:authenticated"}}
	asOtherNode := kubernetes.NewForConfigOrDie(admin)

	eventually(t, 30*time.Second, otherNode+" may get the claim of its pod", func() (bool, error) {
		_, err := asOtherNode.ResourceV1().ResourceClaims(claimNS).Get(ctx(), "other-claim", metav1.GetOptions{})
		return err == nil, err
	})
	for _, tc := range []struct {
		who    string
		client kubernetes.Interface
		claim  string
	}{
		{"this node", thisNode, "other-claim"},
		{"this node", thisNode, "some-claim"},
		{otherNode, asOtherNode, "some-claim"},
	} {
		if _, err := tc.client.ResourceV1().ResourceClaims(claimNS).Get(ctx(), tc.claim, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("%s may get claim %s of no pod of its own (want Forbidden): %v", tc.who, tc.claim, err)
		}
	}
	if _, err := thisNode.ResourceV1().ResourceClaims(claimNS).List(ctx(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("this node may list claims (want Forbidden): %v", err)
	}
}

// TestMPSDaemonPodPolicy: on the real API server, the kubelet plugin's
// identity may create (dry run) the MPS daemon pod its code makes
// (daemonpod.Launcher.Pod) on its own node, and no variant of it that
// would run other code, reach other host paths or another node: a stolen
// plugin token runs nothing of its choosing (docs/security.md).
func TestMPSDaemonPodPolicy(t *testing.T) {
	const ns, release = "gpu-dra-mps-policy", "mpspolicy"
	plugin := pluginIdentity(t, release, ns)("node-a")
	dryCreate := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	launcher := &daemonpod.Launcher{Namespace: ns, NodeName: "node-a", Image: "gpu-dra-driver:" + policyImageTag,
		PriorityClassName: release + "-mps-daemon", DriverRoot: "/"}
	const key = "2f0e0a4c-0000-4000-8000-000000000001"
	good := func() *corev1.Pod {
		return launcher.Pod(mps.Daemon{Key: key, Dir: "/var/lib/kubelet/plugins/gpu.nvidia.com/mps/" + key, GPUs: []string{"GPU-a", "MIG-b"},
			Filesystem: "/var/lib/kubelet/plugins/gpu.nvidia.com/mps-fs/" + key})
	}
	// The API server applies a policy some time after it was created:
	// until it refuses a pod of another node, it is not in effect yet.
	eventually(t, 30*time.Second, "the MPS daemon pod policy in effect", func() (bool, error) {
		p := good()
		p.Spec.NodeName = "node-b"
		_, err := plugin.CoreV1().Pods(ns).Create(ctx(), p, dryCreate)
		return err != nil && strings.Contains(err.Error(), release+"-mps-daemon-pods"), fmt.Errorf("another node's pod: %w", err)
	})
	if _, err := plugin.CoreV1().Pods(ns).Create(ctx(), good(), dryCreate); err != nil {
		t.Fatalf("the plugin's own MPS daemon pod is refused: %v", err)
	}
	// A daemon without a tmpfs (--mps-fs-size=0) has two volumes.
	plain := launcher.Pod(mps.Daemon{Key: key, Dir: "/var/lib/kubelet/plugins/gpu.nvidia.com/mps/" + key, GPUs: []string{"GPU-a"}})
	if _, err := plugin.CoreV1().Pods(ns).Create(ctx(), plain, dryCreate); err != nil {
		t.Fatalf("the plugin's own MPS daemon pod without a tmpfs is refused: %v", err)
	}
	ctr := func(p *corev1.Pod) *corev1.Container { return &p.Spec.Containers[0] }
	for _, tc := range []struct {
		name   string
		change func(p *corev1.Pod)
	}{
		{"on another node", func(p *corev1.Pod) { p.Spec.NodeName = "node-b" }},
		{"another image", func(p *corev1.Pod) { ctr(p).Image = "busybox:local" }},
		{"a command of its own", func(p *corev1.Pod) { ctr(p).Command = []string{"sh", "-c", "id"} }},
		{"an extra flag", func(p *corev1.Pod) { ctr(p).Command = append(ctr(p).Command, "--log_file=/root/.ssh/authorized_keys") }},
		{"arguments", func(p *corev1.Pod) { ctr(p).Args = []string{"--logtostderr=false"} }},
		{"environment", func(p *corev1.Pod) { ctr(p).Env = []corev1.EnvVar{{Name: "GPU_DRA_LOG_FILE", Value: "/etc/passwd"}} }},
		{"a hook", func(p *corev1.Pod) {
			ctr(p).Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"sh"}}}}
		}},
		{"an exec probe", func(p *corev1.Pod) {
			ctr(p).LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"sh"}}}}
		}},
		{"a second container", func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, *ctr(p).DeepCopy())
			p.Spec.Containers[1].Name = "two"
		}},
		{"an init container", func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{*ctr(p).DeepCopy()}
			p.Spec.InitContainers[0].Name = "init"
		}},
		{"another claim's directory", func(p *corev1.Pod) {
			ctr(p).Command[2] = "--dir=/var/lib/kubelet/plugins/gpu.nvidia.com/mps/another-claim"
		}},
		{"a directory out of the daemons'", func(p *corev1.Pod) {
			p.Labels[names.MPSDaemonLabel] = "x"
			ctr(p).Command[2] = "--dir=/etc/x"
		}},
		{"the host's root writable", func(p *corev1.Pod) { ctr(p).VolumeMounts[1].ReadOnly = false }},
		{"another host path", func(p *corev1.Pod) { p.Spec.Volumes[0].HostPath.Path = "/etc" }},
		{"a host path made on demand", func(p *corev1.Pod) {
			p.Spec.Volumes[0].HostPath.Type = ptr.To(corev1.HostPathDirectoryOrCreate)
		}},
		{"a third volume", func(p *corev1.Pod) {
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "x", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
		}},
		{"a sub-path", func(p *corev1.Pod) { ctr(p).VolumeMounts[0].SubPath = "another-claim" }},
		{"another daemon's shared memory", func(p *corev1.Pod) {
			p.Spec.Volumes[3].HostPath.Path = "/var/lib/kubelet/plugins/gpu.nvidia.com/mps-fs/another-claim/shm"
		}},
		{"the host's /dev/shm", func(p *corev1.Pod) { p.Spec.Volumes[3].HostPath.Path = "/dev/shm" }},
		{"the tmpfs root elsewhere", func(p *corev1.Pod) { p.Spec.Volumes[2].HostPath.Path = "/" }},
		{"mounts propagated back to the host", func(p *corev1.Pod) {
			ctr(p).VolumeMounts[2].MountPropagation = ptr.To(corev1.MountPropagationBidirectional)
		}},
		{"shared memory mounted elsewhere", func(p *corev1.Pod) { ctr(p).VolumeMounts[3].MountPath = "/etc" }},
		{"the shared memory volume without the tmpfs root", func(p *corev1.Pod) {
			p.Spec.Volumes = slices.Delete(p.Spec.Volumes, 2, 3)
			ctr(p).VolumeMounts = slices.Delete(ctr(p).VolumeMounts, 2, 3)
		}},
		{"an API token", func(p *corev1.Pod) { p.Spec.AutomountServiceAccountToken = nil }},
		{"another priority class", func(p *corev1.Pod) { p.Spec.PriorityClassName = "system-cluster-critical" }},
		// Critical: the kubelet would evict other pods to admit it.
		{"node-critical", func(p *corev1.Pod) { p.Spec.PriorityClassName = "system-node-critical" }},
		{"no priority class", func(p *corev1.Pod) { p.Spec.PriorityClassName = "" }},
		{"more memory", func(p *corev1.Pod) { ctr(p).Resources.Limits[corev1.ResourceMemory] = resource.MustParse("64Gi") }},
		{"no limits (Burstable)", func(p *corev1.Pod) { ctr(p).Resources.Limits = nil }},
		{"no CPU limit", func(p *corev1.Pod) { delete(ctr(p).Resources.Limits, corev1.ResourceCPU) }},
		{"another resource", func(p *corev1.Pod) {
			ctr(p).Resources.Requests["hugepages-2Mi"] = resource.MustParse("2Mi")
			ctr(p).Resources.Limits["hugepages-2Mi"] = resource.MustParse("2Mi")
		}},
		{"pod-level resources", func(p *corev1.Pod) {
			p.Spec.Resources = &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("64")}}
		}},
		// A finalizer would keep a deleted daemon pod, and its name, until
		// someone else removed it; the plugin sets none.
		{"a finalizer", func(p *corev1.Pod) { p.Finalizers = []string{"example.com/keep"} }},
		{"an owner", func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: "node-a", UID: "node-a"}}
		}},
		{"no daemon label", func(p *corev1.Pod) { delete(p.Labels, "app.kubernetes.io/component") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := good()
			tc.change(p)
			_, err := plugin.CoreV1().Pods(ns).Create(ctx(), p, dryCreate)
			if err == nil || !strings.Contains(err.Error(), release+"-mps-daemon-pods") {
				t.Errorf("created (dry run), or refused by something else than the policy: %v", err)
			}
		})
	}
}
