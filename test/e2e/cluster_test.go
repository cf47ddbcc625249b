//go:build e2e

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

// The cluster tests run on the harness's three nodes (GPU_DRA_E2E_NODES=3):
// an H100 node, an A100 node and an L40S node, two GPUs each
// (clusterModels), one plugin on each from the chart's DaemonSet.

// needCluster skips a test written for several nodes when the suite runs
// on one.
func needCluster(t *testing.T) {
	t.Helper()
	if clusterNodes < len(clusterModels) {
		t.Skipf("a cluster test: it runs with GPU_DRA_E2E_NODES=%d -run '^TestCluster' (make e2e runs it so)", len(clusterModels))
	}
}

// clusterNode is the name of node i of the harness.
func clusterNode(i int) string { return fmt.Sprintf("127.0.0.%d", i+1) }

// clusterNodeDir is where node i's own directories are on this machine.
func clusterNodeDir(i int) string {
	if i == 0 {
		return runDir
	}
	return filepath.Join(runDir, "nodes", clusterNode(i))
}

// Node indexes of clusterModels.
const (
	h100Node = 0
	a100Node = 1
	l40sNode = 2
)

// placed is where a pod's claim was allocated: its node and the request
// (with the subrequest of a firstAvailable list) and device.
type placed struct{ node, request, device string }

func placement(t *testing.T, ns, pod, entry string) placed {
	t.Helper()
	p := waitPodRunning(t, ns, pod)
	c := claimOf(t, p, entry)
	r := c.Status.Allocation.Devices.Results[0]
	if r.Pool != p.Spec.NodeName {
		t.Errorf("pod %s runs on %s with a device of pool %s", pod, p.Spec.NodeName, r.Pool)
	}
	return placed{node: p.Spec.NodeName, request: r.Request, device: r.Device}
}

// unschedulable waits until the scheduler reports pod ns/name unschedulable
// and returns its message.
func unschedulable(t *testing.T, ns, name string) string {
	t.Helper()
	var msg string
	eventually(t, 60*time.Second, "pod "+ns+"/"+name+" unschedulable", func() (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx(), name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
				msg = c.Message
				return true, nil
			}
		}
		return false, fmt.Errorf("node %q, conditions %+v", p.Spec.NodeName, p.Status.Conditions)
	})
	return msg
}

// celTemplate is a ResourceClaimTemplate (YAML, with its "---") of one
// device of class chosen by a CEL expression.
func celTemplate(ns, name, class, expression string) string {
	return fmt.Sprintf(`---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: %s, namespace: %s}
spec:
  spec:
    devices:
      requests:
      - name: gpu
        exactly:
          deviceClassName: %s
          selectors:
          - cel: {expression: '%s'}
`, name, ns, class, expression)
}

// anyGPUTemplate is ResourceClaimTemplate any-gpu (YAML, with its "---"):
// one whole GPU of any model.
func anyGPUTemplate(ns string) string {
	return `---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: any-gpu, namespace: ` + ns + `}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}}
`
}

// namespaceWithAnyGPU is namespace ns (YAML) with anyGPUTemplate in it.
func namespaceWithAnyGPU(ns string) string {
	return "apiVersion: v1\nkind: Namespace\nmetadata: {name: " + ns + "}\n" + anyGPUTemplate(ns)
}

const (
	isH100 = `device.attributes["gpu.nvidia.com"].productName.startsWith("NVIDIA H100")`
	isA100 = `device.attributes["gpu.nvidia.com"].productName.startsWith("NVIDIA A100")`
)

// TestClusterFirstAvailablePrefersHopperThenAmpereThenAShare: the list
// users write ("an H100 or H200 first, an A100 next, a share last") across
// nodes of three models. Pods created one after another fill the H100 node,
// then land on the A100 node, then take shares of the L40S node's GPUs.
func TestClusterFirstAvailablePrefersHopperThenAmpereThenAShare(t *testing.T) {
	needCluster(t)
	const ns = "cluster-first"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: `+ns+`}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: best-gpu, namespace: `+ns+`}
spec:
  spec:
    devices:
      requests:
      - name: gpu
        firstAvailable:
        - name: hopper
          deviceClassName: gpu.nvidia.com
          selectors:
          - cel:
              expression: |
                device.attributes["gpu.nvidia.com"].productName.startsWith("NVIDIA H100") ||
                device.attributes["gpu.nvidia.com"].productName.startsWith("NVIDIA H200")
        - name: ampere
          deviceClassName: gpu.nvidia.com
          selectors:
          - cel: {expression: '`+isA100+`'}
        - name: share
          deviceClassName: shared.gpu.nvidia.com
          capacity: {requests: {memory: 8Gi}}
`)
	want := []placed{
		{node: clusterNode(h100Node), request: "gpu/hopper"},
		{node: clusterNode(h100Node), request: "gpu/hopper"},
		{node: clusterNode(a100Node), request: "gpu/ampere"},
		{node: clusterNode(a100Node), request: "gpu/ampere"},
		{node: clusterNode(l40sNode), request: "gpu/share"},
		{node: clusterNode(l40sNode), request: "gpu/share"},
	}
	for i, w := range want {
		name := fmt.Sprintf("job-%d", i)
		applyYAML(t, claimPod(ns, name, "best-gpu"))
		got := placement(t, ns, name, "gpu")
		t.Logf("%s: %s %s %s", name, got.node, got.request, got.device)
		if got.node != w.node || got.request != w.request {
			t.Errorf("%s got %s on %s, want %s on %s", name, got.request, got.node, w.request, w.node)
		}
	}
}

// TestClusterClaimsFollowTheirNodes: a claim allocated on one node stays
// there (a pod forced onto another node waits, as Kubernetes requires);
// node affinity and CEL on model and memory choose the node.
func TestClusterClaimsFollowTheirNodes(t *testing.T) {
	needCluster(t)
	const ns = "cluster-pinned"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: `+ns+`}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: an-a100, namespace: `+ns+`}
spec:
  devices:
    requests:
    - name: gpu
      exactly:
        deviceClassName: gpu.nvidia.com
        selectors:
        - cel: {expression: '`+isA100+`'}
`+celTemplate(ns, "big-not-hopper", "gpu.nvidia.com", `device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("44Gi")) >= 0 && !`+isH100)+
		celTemplate(ns, "huge", "gpu.nvidia.com", `device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("100Gi")) >= 0`)+
		anyGPUTemplate(ns))
	// The shared claim: its first pod allocates it on the A100 node.
	applyYAML(t, sharedClaimPod(ns, "first", "an-a100", ""))
	first := placement(t, ns, "first", "gpu")
	if first.node != clusterNode(a100Node) {
		t.Fatalf("the A100 claim was allocated on %s", first.node)
	}
	// A second pod of that claim, forced onto the H100 node, waits.
	applyYAML(t, sharedClaimPod(ns, "elsewhere", "an-a100", clusterNode(h100Node)))
	t.Logf("a pod of the claim forced onto %s: %s", clusterNode(h100Node), unschedulable(t, ns, "elsewhere"))
	// One on the claim's node shares it.
	applyYAML(t, sharedClaimPod(ns, "beside", "an-a100", clusterNode(a100Node)))
	if got := placement(t, ns, "beside", "gpu"); got.device != first.device {
		t.Errorf("a second pod of the claim got %s, want %s", got.device, first.device)
	}

	// Node affinity chooses the node of a claim from a template.
	applyYAML(t, affinityPod(ns, "pinned", "any-gpu", clusterNode(l40sNode)))
	if got := placement(t, ns, "pinned", "gpu"); got.node != clusterNode(l40sNode) {
		t.Errorf("a pod with affinity to %s runs on %s", clusterNode(l40sNode), got.node)
	}
	// CEL on memory and model: only the L40S (45 GiB) is 44Gi or more and not an H100.
	applyYAML(t, claimPod(ns, "big", "big-not-hopper"))
	if got := placement(t, ns, "big", "gpu"); got.node != clusterNode(l40sNode) {
		t.Errorf("a 44Gi non-H100 GPU was found on %s", got.node)
	}
	// No node has a GPU of 100Gi.
	applyYAML(t, claimPod(ns, "too-big", "huge"))
	t.Logf("a pod asking for a GPU of 100Gi: %s", unschedulable(t, ns, "too-big"))
}

// sharedClaimPod is claimPod holding ResourceClaim claim instead of one
// from a template; with node set, bound to it by a node selector.
func sharedClaimPod(ns, name, claim, node string) string {
	pod := strings.Replace(claimPod(ns, name, ""), "resourceClaimTemplateName: ", "resourceClaimName: "+claim, 1)
	if node == "" {
		return pod
	}
	return strings.Replace(pod, "spec:\n", "spec:\n  nodeSelector: {kubernetes.io/hostname: \""+node+"\"}\n", 1)
}

// affinityPod is claimPod with a required node affinity to node.
func affinityPod(ns, name, template, node string) string {
	return strings.Replace(claimPod(ns, name, template), "spec:\n", `spec:
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions:
          - {key: kubernetes.io/hostname, operator: In, values: ["`+node+`"]}
`, 1)
}

// TestClusterEachNodeWritesOnlyItsOwnPool: with each node's own
// credentials, the kubelet's (system:node:<name>) and its plugin pod's
// service-account token, a node writes its own slices and cannot create,
// update or delete another node's, nor read a claim of a pod on another
// node. Tried from every node against every other.
func TestClusterEachNodeWritesOnlyItsOwnPool(t *testing.T) {
	needCluster(t)
	const ns = "cluster-identity"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, namespaceWithAnyGPU(ns))
	// A claim on every node, each read by its pod's node.
	claims := make([]string, len(clusterModels))
	for i := range clusterModels {
		name := fmt.Sprintf("on-%d", i)
		applyYAML(t, affinityPod(ns, name, "any-gpu", clusterNode(i)))
		claims[i] = claimOf(t, waitPodRunning(t, ns, name), "gpu").Name
	}
	plugins := pluginPodsByNode(t)
	versions := map[string]string{}
	for i := range clusterModels {
		for _, s := range waitPoolCompleteOn(t, clusterNode(i)) {
			versions[s.Name] = s.ResourceVersion
		}
	}
	// Every write is a dry run: authorization and admission decide as for
	// a real one, and a regression changes nothing.
	dryRun := []string{metav1.DryRunAll}
	for i := range clusterModels {
		asKubelet := nodeKubeletClient(t, i)
		asPlugin := tokenClient(t, pluginToken(t, plugins[clusterNode(i)]))
		for who, c := range map[string]kubernetes.Interface{"kubelet": asKubelet, "plugin": asPlugin} {
			own := deviceSlice(t, clusterNode(i))
			if _, err := c.ResourceV1().ResourceSlices().Update(ctx(), &own, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
				t.Errorf("the %s of %s may not update its own slice %s: %v", who, clusterNode(i), own.Name, err)
			}
			for j := range clusterModels {
				if j == i {
					continue
				}
				other := deviceSlice(t, clusterNode(j))
				refused := func(what string, err error) {
					if err == nil || (!apierrors.IsForbidden(err) && !apierrors.IsInvalid(err)) {
						t.Errorf("the %s of %s could %s of %s (want Forbidden or Invalid): %v", who, clusterNode(i), what, clusterNode(j), err)
					}
				}
				changed := other.DeepCopy()
				changed.Spec.Devices = changed.Spec.Devices[:1]
				_, err := c.ResourceV1().ResourceSlices().Update(ctx(), changed, metav1.UpdateOptions{DryRun: dryRun})
				refused("update a slice", err)
				refused("delete a slice", c.ResourceV1().ResourceSlices().Delete(ctx(), other.Name, metav1.DeleteOptions{DryRun: dryRun}))
				forged := &resourceapi.ResourceSlice{
					ObjectMeta: metav1.ObjectMeta{GenerateName: "forged-"},
					Spec: resourceapi.ResourceSliceSpec{
						Driver: "gpu.nvidia.com", NodeName: ptrTo(clusterNode(j)),
						Pool:    resourceapi.ResourcePool{Name: clusterNode(j), Generation: other.Spec.Pool.Generation + 1, ResourceSliceCount: 1},
						Devices: other.Spec.Devices[:1],
					},
				}
				_, err = c.ResourceV1().ResourceSlices().Create(ctx(), forged, metav1.CreateOptions{DryRun: dryRun})
				refused("create a slice in the pool", err)
				_, err = c.ResourceV1().ResourceClaims(ns).Get(ctx(), claims[j], metav1.GetOptions{})
				if who == "kubelet" {
					if !apierrors.IsForbidden(err) {
						t.Errorf("the kubelet of %s could read the claim of a pod on %s (want Forbidden): %v", clusterNode(i), clusterNode(j), err)
					}
				} else if !apierrors.IsForbidden(err) {
					t.Errorf("the plugin token of %s could read a claim (want Forbidden): %v", clusterNode(i), err)
				}
			}
			if who == "kubelet" {
				if _, err := c.ResourceV1().ResourceClaims(ns).Get(ctx(), claims[i], metav1.GetOptions{}); err != nil {
					t.Errorf("the kubelet of %s may not read the claim of its own pod: %v", clusterNode(i), err)
				}
			}
		}
	}
	// Nothing changed.
	for i := range clusterModels {
		for _, s := range waitPoolCompleteOn(t, clusterNode(i)) {
			if versions[s.Name] != s.ResourceVersion {
				t.Errorf("slice %s of %s changed", s.Name, clusterNode(i))
			}
		}
	}
}

func ptrTo[T any](v T) *T { return &v }

// pluginPodsByNode returns the harness's plugin pod on each node, by node
// name, once there is one Ready on every node.
func pluginPodsByNode(t *testing.T) map[string]*corev1.Pod {
	t.Helper()
	var out map[string]*corev1.Pod
	eventually(t, 120*time.Second, "a Ready plugin pod on every node", func() (bool, error) {
		l, err := client.CoreV1().Pods(driverNamespace).List(ctx(), metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/instance=" + driverRelease + ",app.kubernetes.io/component=kubelet-plugin",
		})
		if err != nil {
			return false, err
		}
		out = map[string]*corev1.Pod{}
		for i := range l.Items {
			p := &l.Items[i]
			if p.DeletionTimestamp == nil && podReady(p) {
				out[p.Spec.NodeName] = p
			}
		}
		return len(out) == len(clusterModels), fmt.Errorf("ready on %d nodes of %d", len(out), len(clusterModels))
	})
	return out
}

// nodeKubeletClient is a client with node i's kubelet credentials.
func nodeKubeletClient(t *testing.T, i int) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(clusterNodeDir(i), "kubeconfig/kubelet.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	// Node i's kubeconfig names the CA at the path its namespace sees; the CA is the same.
	cfg.CAFile = filepath.Join(runDir, "pki/ca.crt")
	return kubernetes.NewForConfigOrDie(cfg)
}

// pluginToken is a service-account token of the plugin's identity bound to
// its pod, as the pod's own projected token is: it names the pod's node.
func pluginToken(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	return strings.TrimSpace(kubectl(t, "create", "token", "-n", pod.Namespace, pod.Spec.ServiceAccountName,
		"--bound-object-kind=Pod", "--bound-object-name="+pod.Name, "--bound-object-uid="+string(pod.UID), "--duration=10m"))
}

func tokenClient(t *testing.T, token string) kubernetes.Interface {
	t.Helper()
	cfg := &rest.Config{Host: "https://127.0.0.1:6443", BearerToken: token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(runDir, "pki/ca.crt")}}
	return kubernetes.NewForConfigOrDie(cfg)
}

// nodeSlices returns the driver's slices of node.
func nodeSlices(t *testing.T, node string) []resourceapi.ResourceSlice {
	t.Helper()
	l, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{
		FieldSelector: "spec.nodeName=" + node + ",spec.driver=gpu.nvidia.com",
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) == 0 {
		t.Fatalf("node %s has no slices", node)
	}
	return l.Items
}

// deviceSlice returns a slice of node that lists devices (its counter
// sets may be in a slice of their own).
func deviceSlice(t *testing.T, node string) resourceapi.ResourceSlice {
	t.Helper()
	for _, s := range nodeSlices(t, node) {
		if len(s.Spec.Devices) > 0 {
			return s
		}
	}
	t.Fatalf("node %s has no slice of devices", node)
	return resourceapi.ResourceSlice{}
}

// waitPoolCompleteOn is waitPoolComplete for any node: its slices make a
// complete pool, of a generation all of them share.
func waitPoolCompleteOn(t *testing.T, node string) []resourceapi.ResourceSlice {
	t.Helper()
	var items []resourceapi.ResourceSlice
	eventually(t, 60*time.Second, "the pool of "+node+" complete", func() (bool, error) {
		l, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{
			FieldSelector: "spec.nodeName=" + node + ",spec.driver=gpu.nvidia.com",
		})
		if err != nil {
			return false, err
		}
		items = l.Items
		for _, s := range items {
			if s.Spec.Pool.ResourceSliceCount != int64(len(items)) || s.Spec.Pool.Generation != items[0].Spec.Pool.Generation {
				return false, fmt.Errorf("%d slices, pool of %d", len(items), s.Spec.Pool.ResourceSliceCount)
			}
			if s.Spec.Pool.Name != node {
				return false, fmt.Errorf("slice %s of node %s in pool %s", s.Name, node, s.Spec.Pool.Name)
			}
		}
		return len(items) > 0, errors.New("no slices")
	})
	return items
}

// deviceNames returns the names of the devices of slices.
func deviceNames(slices []resourceapi.ResourceSlice) map[string]bool {
	out := map[string]bool{}
	for _, s := range slices {
		for _, d := range s.Spec.Devices {
			out[d.Name] = true
		}
	}
	return out
}

// TestClusterRelabelingOneNodeChangesOnlyItsSlices: the offer of each node
// is its own (gpu.nvidia.com/device-kinds): relabelling the A100 node to
// whole GPUs only takes its shared devices out of its slices, and no other
// node's slice changes. The scheduler honours what a node offers
// (gpu.nvidia.com/mig-profiles).
func TestClusterRelabelingOneNodeChangesOnlyItsSlices(t *testing.T) {
	needCluster(t)
	node := clusterNode(a100Node)
	before := map[string]string{}
	for i := range clusterModels {
		for _, s := range waitPoolCompleteOn(t, clusterNode(i)) {
			before[s.Name] = s.ResourceVersion
		}
	}
	full := deviceNames(nodeSlices(t, node))
	kubectl(t, "label", "node", node, "gpu.nvidia.com/device-kinds=whole", "--overwrite")
	t.Cleanup(func() {
		kubectlErr("label", "node", node, "gpu.nvidia.com/device-kinds-")
		waitPoolCompleteOn(t, node)
	})
	eventually(t, 60*time.Second, "the A100 node to offer whole GPUs only", func() (bool, error) {
		got := deviceNames(waitPoolCompleteOn(t, node))
		return len(got) == 2, fmt.Errorf("%d devices: %v", len(got), got)
	})
	for i := range clusterModels {
		if clusterNode(i) == node {
			continue
		}
		for _, s := range nodeSlices(t, clusterNode(i)) {
			if before[s.Name] != s.ResourceVersion {
				t.Errorf("slice %s of %s changed when %s was relabelled", s.Name, clusterNode(i), node)
			}
		}
	}
	kubectl(t, "label", "node", node, "gpu.nvidia.com/device-kinds-")
	eventually(t, 60*time.Second, "the A100 node to offer everything again", func() (bool, error) {
		got := deviceNames(waitPoolCompleteOn(t, node))
		return len(got) == len(full), fmt.Errorf("%d devices, want %d", len(got), len(full))
	})

	// The scheduler honours the offer: with the H100 node offering 3g
	// profiles only, a claim for an H100's 1g.10gb waits and one for a
	// 3g.40gb runs; relabelled, the 1g.10gb claim runs too.
	const ns = "cluster-offer"
	hopper := clusterNode(h100Node)
	t.Cleanup(func() {
		kubectlErr("label", "node", hopper, "gpu.nvidia.com/mig-profiles-")
		cleanNamespace(t, ns)
	})
	kubectl(t, "label", "node", hopper, "gpu.nvidia.com/mig-profiles=3g", "--overwrite")
	eventually(t, 60*time.Second, hopper+" to offer 3g profiles only", func() (bool, error) {
		for name := range deviceNames(waitPoolCompleteOn(t, hopper)) {
			if strings.Contains(name, "-mig-1g") {
				return false, fmt.Errorf("%s still published", name)
			}
		}
		return true, nil
	})
	migTemplate := func(name, profile string) string {
		return celTemplate(ns, name, "mig.nvidia.com", `device.attributes["gpu.nvidia.com"].profile == "`+profile+`" && `+isH100)
	}
	applyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n"+migTemplate("small", "1g.10gb")+migTemplate("large", "3g.40gb"))
	applyYAML(t, claimPod(ns, "large", "large"))
	if got := placement(t, ns, "large", "gpu"); got.node != hopper {
		t.Errorf("the 3g.40gb pod runs on %s", got.node)
	}
	applyYAML(t, claimPod(ns, "small", "small"))
	t.Logf("a 1g.10gb claim while no node offers 1g: %s", unschedulable(t, ns, "small"))
	kubectl(t, "label", "node", hopper, "gpu.nvidia.com/mig-profiles-")
	if got := placement(t, ns, "small", "gpu"); got.node != hopper {
		t.Errorf("the 1g.10gb pod runs on %s", got.node)
	}
}

// TestClusterDrainOneNodeWhileOthersServe: kubectl gpu drain NODE empties
// the A100 node; pods created meanwhile start on the other nodes; kubectl
// gpu ls shows the whole cluster.
func TestClusterDrainOneNodeWhileOthersServe(t *testing.T) {
	needCluster(t)
	const ns = "cluster-drain"
	node := clusterNode(a100Node)
	bin := buildKubectlGPU(t)
	t.Cleanup(func() {
		runKubectlGPU(t, bin, "untaint", node)
		cleanNamespace(t, ns)
	})
	applyYAML(t, namespaceWithAnyGPU(ns)+celTemplate(ns, "an-a100", "gpu.nvidia.com", isA100))
	for i := 0; i < 2; i++ {
		applyYAML(t, claimPod(ns, fmt.Sprintf("a100-%d", i), "an-a100"))
	}
	for i := 0; i < 2; i++ {
		if got := placement(t, ns, fmt.Sprintf("a100-%d", i), "gpu"); got.node != node {
			t.Fatalf("an A100 pod runs on %s", got.node)
		}
	}
	drained := make(chan error, 1)
	go func() {
		// Not runKubectlGPU: no t.Fatal outside the test's goroutine.
		out, err := exec.Command(bin, "--kubeconfig", filepath.Join(runDir, "kubeconfig/admin.kubeconfig"),
			"drain", node, "--timeout=2m", "--reason=cluster-test").CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, out)
		}
		drained <- err
	}()
	// While the node drains, new work starts elsewhere.
	applyYAML(t, claimPod(ns, "during", "any-gpu"))
	if got := placement(t, ns, "during", "gpu"); got.node == node {
		t.Errorf("a pod started on the node being drained")
	}
	if err := <-drained; err != nil {
		t.Fatalf("kubectl gpu drain %s: %v", node, err)
	}
	// Drained, its GPUs are free but tainted: new work still goes elsewhere.
	applyYAML(t, claimPod(ns, "after", "any-gpu"))
	if got := placement(t, ns, "after", "gpu"); got.node == node {
		t.Errorf("a pod started on the drained node")
	}
	for i := 0; i < 2; i++ {
		name := fmt.Sprintf("a100-%d", i)
		eventually(t, 60*time.Second, name+" gone", func() (bool, error) {
			_, err := client.CoreV1().Pods(ns).Get(ctx(), name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), err
		})
	}
	stdout, stderr, code := runKubectlGPU(t, bin, "ls", "-o", "json")
	if code != 0 {
		t.Fatalf("kubectl gpu ls: exit code %d: %s", code, stderr)
	}
	var report kubectlGPUReport
	if err := json.Unmarshal([]byte(stdout), &report); err != nil {
		t.Fatalf("kubectl gpu ls -o json: %v", err)
	}
	if len(report.Nodes) != len(clusterModels) {
		t.Errorf("kubectl gpu ls shows %d nodes, want %d:\n%s", len(report.Nodes), len(clusterModels), stdout)
	}
	wide, _, _ := runKubectlGPU(t, bin, "ls")
	t.Logf("kubectl gpu ls:\n%s", wide)
}

// TestClusterNodeLostAndBack: the A100 node's kubelet and plugin are
// killed. The node goes NotReady, pods keep starting on the other nodes, a
// pod that tolerates an unreachable node for a second only is evicted as
// Kubernetes does it. Back, the node's plugin restarts from its
// checkpoint: the evicted pod's MIG device is destroyed and its claim
// released, the other pod keeps its MIG device, and no other node's slice
// changed.
func TestClusterNodeLostAndBack(t *testing.T) {
	needCluster(t)
	const ns = "cluster-lost"
	node := clusterNode(a100Node)
	// The admin turns MIG on for the A100 node's second GPU: on Ampere that
	// takes a GPU reset, done before the node serves MIG devices. It is
	// turned off again once the test's pods are gone (cleanups run last
	// first).
	a100Sim(t, "mig-mode", "1", "on")
	a100Sim(t, "reset", "1")
	t.Cleanup(func() {
		a100Sim(t, "mig-mode", "1", "off")
		a100Sim(t, "reset", "1")
	})
	t.Cleanup(func() {
		script("node.sh", "start", node)
		cleanNamespace(t, ns)
	})
	applyYAML(t, namespaceWithAnyGPU(ns)+celTemplate(ns, "a100-mig", "mig.nvidia.com", `device.attributes["gpu.nvidia.com"].profile == "1g.5gb"`))
	eventually(t, 60*time.Second, "MIG devices published on "+node, func() (bool, error) {
		for name := range deviceNames(waitPoolCompleteOn(t, node)) {
			if strings.Contains(name, "-mig-1g5gb") {
				return true, nil
			}
		}
		return false, errors.New("no 1g.5gb device")
	})
	applyYAML(t, claimPod(ns, "stays", "a100-mig"))
	applyYAML(t, strings.Replace(claimPod(ns, "evicted", "a100-mig"), "spec:\n", `spec:
  tolerations:
  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 1}
`, 1))
	stays, evicted := placement(t, ns, "stays", "gpu"), placement(t, ns, "evicted", "gpu")
	if stays.node != node || evicted.node != node {
		t.Fatalf("the MIG pods run on %s and %s, want %s", stays.node, evicted.node, node)
	}
	if got := nodeMIGCount(t, a100Node); got != 2 {
		t.Fatalf("%d MIG devices on %s, want 2", got, node)
	}
	others := map[string]string{}
	for _, i := range []int{h100Node, l40sNode} {
		for _, s := range waitPoolCompleteOn(t, clusterNode(i)) {
			others[s.Name] = s.ResourceVersion
		}
	}

	// Lost: the kubelet, then the plugin.
	plugin := pluginPodsByNode(t)[node]
	pids := nodeProcesses(a100Node, "gpu-kubelet-plugin")
	if len(pids) == 0 {
		t.Fatalf("no plugin process found in the containers of %s", node)
	}
	if err := script("node.sh", "stop", node); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if err := killPID(pid); err != nil {
			t.Fatal(err)
		}
	}
	lost := time.Now()
	eventually(t, 120*time.Second, node+" NotReady", func() (bool, error) {
		ready, err := nodeReady(node)
		return err == nil && !ready, err
	})
	t.Logf("%s NotReady %s after its kubelet was killed", node, time.Since(lost).Round(time.Second))
	applyYAML(t, claimPod(ns, "meanwhile", "any-gpu"))
	if got := placement(t, ns, "meanwhile", "gpu"); got.node == node {
		t.Errorf("a new pod was placed on the lost node")
	}
	eventually(t, 120*time.Second, "the evicted pod marked for deletion", func() (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx(), "evicted", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return err == nil && p.DeletionTimestamp != nil, err
	})

	// Back.
	if err := script("node.sh", "start", node); err != nil {
		t.Fatal(err)
	}
	eventually(t, 120*time.Second, node+" Ready", func() (bool, error) {
		ready, err := nodeReady(node)
		return err == nil && ready, err
	})
	eventually(t, 120*time.Second, "the evicted pod gone", func() (bool, error) {
		_, err := client.CoreV1().Pods(ns).Get(ctx(), "evicted", metav1.GetOptions{})
		return apierrors.IsNotFound(err), err
	})
	eventually(t, 120*time.Second, "one MIG device left on "+node, func() (bool, error) {
		n := nodeMIGCount(t, a100Node)
		return n == 1, fmt.Errorf("%d MIG devices", n)
	})
	if p := pluginPodsByNode(t)[node]; p.UID != plugin.UID {
		t.Logf("the plugin pod of %s was replaced (%s, was %s)", node, p.Name, plugin.Name)
	}
	if got := placement(t, ns, "stays", "gpu"); got.node != node || got.device != stays.device {
		t.Errorf("stays now holds %s on %s, was %s on %s", got.device, got.node, stays.device, node)
	}
	for _, i := range []int{h100Node, l40sNode} {
		for _, s := range nodeSlices(t, clusterNode(i)) {
			if others[s.Name] != s.ResourceVersion {
				t.Errorf("slice %s of %s changed while %s was lost", s.Name, clusterNode(i), node)
			}
		}
	}
}

// a100Sim runs gpu-sim on the A100 node's simulated GPUs, as an admin runs
// nvidia-smi there.
func a100Sim(t *testing.T, args ...string) {
	t.Helper()
	full := append([]string{"--model", clusterModels[a100Node], "--state-dir", filepath.Join(clusterNodeDir(a100Node), "sim/state")}, args...)
	if out, err := exec.Command(filepath.Join(runDir, "bin/gpu-sim"), full...).CombinedOutput(); err != nil {
		t.Fatalf("gpu-sim %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// nodeReady reports whether node's Ready condition is True.
func nodeReady(node string) (bool, error) {
	n, err := client.CoreV1().Nodes().Get(ctx(), node, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue, nil
		}
	}
	return false, errors.New("no Ready condition")
}

// nodeMIGCount counts the MIG devices of node i's simulated GPUs.
func nodeMIGCount(t *testing.T, i int) int {
	t.Helper()
	n, err := sim.Open(clusterModels[i], filepath.Join(clusterNodeDir(i), "sim/state"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := n.State()
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	for _, g := range st.GPUs {
		for _, gi := range g.GPUInstances {
			count += len(gi.ComputeInstances)
		}
	}
	return count
}

// nodeProcesses returns the PIDs of the processes named name in node i's
// containers: those in its kubelet's cgroups (gpu-dra-node-<i>; node 0's
// are the machine's /kubepods).
func nodeProcesses(i int, name string) []int {
	var out []int
	for _, pid := range processPIDs(name) {
		cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil {
			continue
		}
		mine := strings.Contains(string(cg), fmt.Sprintf("/gpu-dra-node-%d/", i))
		if i == 0 {
			mine = strings.Contains(string(cg), ":/kubepods")
		}
		if mine {
			out = append(out, pid)
		}
	}
	return out
}

func killPID(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}

// TestClusterChartUpgradeRollsEveryNode: a chart upgrade replaces the
// plugin on every node (how one node's pods hand over is
// TestRollsWithoutAGap's); pods created on every node during the roll
// start, and the time they take is logged beside that of an idle cluster.
func TestClusterChartUpgradeRollsEveryNode(t *testing.T) {
	needCluster(t)
	const ns = "cluster-roll"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, namespaceWithAnyGPU(ns))
	startAll := func(round string) time.Duration {
		start := time.Now()
		for i := range clusterModels {
			applyYAML(t, affinityPod(ns, fmt.Sprintf("%s-%d", round, i), "any-gpu", clusterNode(i)))
		}
		for i := range clusterModels {
			waitPodRunning(t, ns, fmt.Sprintf("%s-%d", round, i))
		}
		took := time.Since(start)
		for i := range clusterModels {
			kubectl(t, "delete", "pod", "-n", ns, fmt.Sprintf("%s-%d", round, i), "--wait=true")
		}
		return took
	}
	idle := startAll("idle")
	before := pluginPodsByNode(t)

	helm := helmBinary(t)
	upgrade := func(verbosity string) {
		cmd := exec.Command(helm, "--kubeconfig", filepath.Join(runDir, "kubeconfig/admin.kubeconfig"), "--namespace", driverNamespace,
			"upgrade", driverRelease, filepath.Join(repoRoot, "deployments/helm/gpu-dra-driver"), "--reuse-values",
			"--set", "kubeletPlugin.logVerbosity="+verbosity)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("helm upgrade: %v\n%s", err, out)
		}
	}
	upgrade("3")
	t.Cleanup(func() {
		upgrade("2")
		kubectl(t, "rollout", "status", "-n", driverNamespace, "daemonset/"+driverRelease+"-kubelet-plugin", "--timeout=300s")
		pluginPodsByNode(t)
	})
	during := startAll("rolling")
	eventually(t, 300*time.Second, "a new plugin pod on every node", func() (bool, error) {
		now := pluginPodsByNode(t)
		for node, p := range before {
			if now[node].UID == p.UID {
				return false, fmt.Errorf("%s still runs %s", node, p.Name)
			}
		}
		return true, nil
	})
	t.Logf("three pods, one per node, Running in %s on the idle cluster, %s during the roll (ratio %.2f)",
		idle.Round(time.Millisecond), during.Round(time.Millisecond), float64(during)/float64(idle))
	after := startAll("after")
	t.Logf("and %s after it", after.Round(time.Millisecond))
}

// TestClusterPodsReachEachOtherAcrossNodes: pod networking spans the nodes:
// a pod on the H100 node fetches a page from a pod on the L40S node, and the
// webhook answers the API server from whichever node it runs on.
func TestClusterPodsReachEachOtherAcrossNodes(t *testing.T) {
	needCluster(t)
	const ns = "cluster-net"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: `+ns+`}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: `+ns+`}
spec:
  nodeSelector: {kubernetes.io/hostname: "`+clusterNode(l40sNode)+`"}
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: busybox:local
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && echo served-by-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
`)
	server := waitPodRunning(t, ns, "server")
	applyYAML(t, `apiVersion: v1
kind: Pod
metadata: {name: client, namespace: `+ns+`}
spec:
  nodeSelector: {kubernetes.io/hostname: "`+clusterNode(h100Node)+`"}
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 1
  containers:
  - name: wget
    image: busybox:local
    imagePullPolicy: Never
    # busybox's nc: its static wget crashes on this machine's C library.
    command:
    - sh
    - -c
    - |
      printf 'GET /index.html HTTP/1.0\r\n\r\n' | nc -w 5 `+server.Status.PodIP+` 8080 && sleep 3600
`)
	waitPodRunning(t, ns, "client")
	podLogs(t, ns, "client", "served-by-server")
	t.Logf("a pod on %s (%s) fetched a page from a pod on %s (%s)", clusterNode(h100Node), waitPodRunning(t, ns, "client").Status.PodIP,
		clusterNode(l40sNode), server.Status.PodIP)

	l, err := client.CoreV1().Pods(driverNamespace).List(ctx(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=webhook"})
	if err != nil || len(l.Items) == 0 {
		t.Fatalf("the webhook's pods: %v (%d)", err, len(l.Items))
	}
	// The webhook refuses an opaque config of an unknown kind: the API server reached it.
	out, err := kubectlErr("create", "--dry-run=server", "-f", writeTemp(t, `apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: webhook-probe, namespace: `+ns+`}
spec:
  devices:
    requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]
    config:
    - opaque:
        driver: gpu.nvidia.com
        parameters: {apiVersion: resource.nvidia.com/v1beta1, kind: TpuConfig}
`))
	if err == nil || !strings.Contains(err.Error(), "denied") {
		t.Errorf("the webhook on %s did not refuse a bad claim: %s %v", l.Items[0].Spec.NodeName, out, err)
	}
	t.Logf("the webhook runs on %s at %s", l.Items[0].Spec.NodeName, l.Items[0].Status.PodIP)
}

// writeTemp writes content to a file of the test's temporary directory.
func writeTemp(t *testing.T, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "obj.yaml")
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
