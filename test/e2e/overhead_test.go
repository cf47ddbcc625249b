//go:build e2e

package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// setNodeAllocatableOverhead turns the harness release's
// kubeletPlugin.nodeAllocatableOverhead on or off, as an operator does
// (helm upgrade --reuse-values), and waits until the node's shared GPUs
// carry the overhead, or carry none.
func setNodeAllocatableOverhead(t *testing.T, on bool) {
	t.Helper()
	cmd := exec.Command(helmBinary(t), "--kubeconfig", filepath.Join(runDir, "kubeconfig/admin.kubeconfig"), "--namespace", driverNamespace,
		"upgrade", driverRelease, filepath.Join(repoRoot, "deployments/helm/gpu-dra-driver"), "--reuse-values",
		"--set", fmt.Sprintf("kubeletPlugin.nodeAllocatableOverhead.enabled=%v", on))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	eventually(t, 180*time.Second, fmt.Sprintf("shared GPUs published with node-allocatable overhead %v", on), func() (bool, error) {
		slices, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeName})
		if err != nil {
			return false, err
		}
		shared, carrying, others := 0, 0, 0
		for _, s := range slices.Items {
			for _, d := range s.Spec.Devices {
				has := len(d.NodeAllocatableResources) > 0
				switch {
				case strings.HasSuffix(d.Name, "-shared"):
					shared++
					if has {
						carrying++
					}
				case has:
					others++
				}
			}
		}
		want := 0
		if on {
			want = shared
		}
		return shared > 0 && carrying == want && others == 0, fmt.Errorf("%d of %d shared GPUs carry an overhead, and %d other devices", carrying, shared, others)
	})
	kubectl(t, "rollout", "status", "-n", driverNamespace, "daemonset/"+driverRelease+"-kubelet-plugin", "--timeout=180s")
}

// freeCPU is the node's allocatable CPU less what the scheduler counts
// for its pods: their containers' requests and the node-allocatable
// overhead in their status.
func freeCPU(t *testing.T) int64 {
	t.Helper()
	eventually(t, 120*time.Second, "no pod of the node being deleted", func() (bool, error) {
		pods, err := client.CoreV1().Pods("").List(ctx(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeName})
		if err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				return false, fmt.Errorf("%s/%s is being deleted", p.Namespace, p.Name)
			}
		}
		return true, nil
	})
	node, err := client.CoreV1().Nodes().Get(ctx(), nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	free := node.Status.Allocatable.Cpu().MilliValue()
	pods, err := client.CoreV1().Pods("").List(ctx(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeName})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, c := range p.Spec.Containers {
			free -= c.Resources.Requests.Cpu().MilliValue()
		}
		for _, s := range p.Status.NodeAllocatableResourceClaimStatuses {
			for _, o := range s.Overhead {
				if o.Name == corev1.ResourceCPU && o.PerPod != nil {
					free -= o.PerPod.MilliValue()
				}
			}
		}
	}
	return free
}

// sharePodWithCPU is a pod of the test's node with a share of a GPU (1Gi
// of its memory) that requests cpuMilli of CPU.
func sharePodWithCPU(ns, name string, cpuMilli int64) string {
	return fmt.Sprintf(`---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: %[1]s, namespace: %[2]s}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: shared.gpu.nvidia.com, capacity: {requests: {memory: 1Gi}}}}]}}}
---
apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector: {kubernetes.io/hostname: "%[4]s"}
  containers:
  - name: ctr
    image: busybox:local
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 3600"]
    resources: {requests: {cpu: %[3]dm}, claims: [{name: gpu}]}
  resourceClaims:
  - {name: gpu, resourceClaimTemplateName: %[1]s}
`, name, ns, cpuMilli, nodeName)
}

// TestNodeAllocatableOverheadOfShares: with kubeletPlugin.
// nodeAllocatableOverhead on (and the cluster's DRANodeAllocatableResources
// gate, test/cluster/up.sh), every share reserves its claim's MPS daemon
// (250m, 512Mi by default) on the node as part of its pod: the scheduler
// writes it into the pod's status, the daemon's pod requests none of it
// (its limits unchanged), the kubelet counts it at admission, and a pod
// whose CPU fits only without the daemon's is refused. With the setting
// off, the same pod is scheduled: the node is then over-committed, its
// daemon left without room.
func TestNodeAllocatableOverheadOfShares(t *testing.T) {
	const ns = "node-overhead"
	t.Cleanup(func() {
		cleanNamespace(t, ns)
		setNodeAllocatableOverhead(t, false)
	})
	setNodeAllocatableOverhead(t, true)
	applyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")

	// A share whose pod leaves 100m of the node's CPU free, once its
	// daemon's 250m is counted.
	free := freeCPU(t)
	if free < 600 {
		t.Fatalf("only %dm of the node's CPU is free: the test needs 600m", free)
	}
	applyYAML(t, sharePodWithCPU(ns, "fits", free-250-100))
	fits := waitPodRunning(t, ns, "fits")
	var cpuOverhead, memoryOverhead string
	for _, s := range fits.Status.NodeAllocatableResourceClaimStatuses {
		for _, o := range s.Overhead {
			if o.PerPod != nil && o.Name == corev1.ResourceCPU {
				cpuOverhead = o.PerPod.String()
			}
			if o.PerPod != nil && o.Name == corev1.ResourceMemory {
				memoryOverhead = o.PerPod.String()
			}
		}
	}
	if cpuOverhead != "250m" || memoryOverhead != "512Mi" {
		t.Fatalf("the pod's node-allocatable status %+v: want an overhead of cpu 250m and memory 512Mi per pod", fits.Status.NodeAllocatableResourceClaimStatuses)
	}
	claim := claimOf(t, fits, "gpu")
	daemons, err := client.CoreV1().Pods(driverNamespace).List(ctx(), metav1.ListOptions{LabelSelector: "gpu.nvidia.com/mps-daemon=" + string(claim.UID)})
	if err != nil || len(daemons.Items) != 1 {
		t.Fatalf("the claim's MPS daemon pod: %v, %d pods", err, len(daemons.Items))
	}
	r := daemons.Items[0].Spec.Containers[0].Resources
	if !r.Requests.Cpu().IsZero() || !r.Requests.Memory().IsZero() ||
		r.Limits.Cpu().Cmp(resource.MustParse("250m")) != 0 || r.Limits.Memory().Cmp(resource.MustParse("512Mi")) != 0 {
		t.Errorf("the daemon pod's resources %+v: want no requests (its shares' pods reserve them) and limits cpu 250m, memory 512Mi", r)
	}

	// The kubelet counts it too: a pod bound to the node directly (no
	// scheduler) that fits only if the share's overhead were not counted
	// is refused at admission.
	free = freeCPU(t)
	applyYAML(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: direct, namespace: %s}
spec:
  nodeName: %q
  terminationGracePeriodSeconds: 1
  containers:
  - {name: ctr, image: busybox:local, imagePullPolicy: Never, command: ["sleep", "3600"], resources: {requests: {cpu: %dm}}}
`, ns, nodeName, free+150))
	eventually(t, 60*time.Second, "the kubelet refusing a pod that fits only without the share's overhead", func() (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx(), "direct", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return p.Status.Phase == corev1.PodFailed && p.Status.Reason == "OutOfcpu", fmt.Errorf("phase %s, reason %q", p.Status.Phase, p.Status.Reason)
	})
	kubectl(t, "delete", "pod", "-n", ns, "direct", "--wait=true")

	// A second share whose own request fits, but not with its daemon's.
	free = freeCPU(t)
	if free < 1 {
		t.Fatalf("%dm of the node's CPU is free after the first share: want some", free)
	}
	applyYAML(t, sharePodWithCPU(ns, "over", free))
	eventually(t, 60*time.Second, "the pod that over-commits the node's CPU with its daemon refused", func() (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx(), "over", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && strings.Contains(c.Message, "Insufficient cpu") {
				return p.Spec.NodeName == "", fmt.Errorf("bound to %q", p.Spec.NodeName)
			}
		}
		return false, fmt.Errorf("node %q, conditions %+v", p.Spec.NodeName, p.Status.Conditions)
	})

	// Off, nothing is reserved: the scheduler places the same pod, on a
	// node that has no room left for its daemon.
	setNodeAllocatableOverhead(t, false)
	eventually(t, 120*time.Second, "the same pod scheduled with the setting off", func() (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx(), "over", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return p.Spec.NodeName == nodeName && len(p.Status.NodeAllocatableResourceClaimStatuses) == 0,
			fmt.Errorf("node %q, node-allocatable status %+v", p.Spec.NodeName, p.Status.NodeAllocatableResourceClaimStatuses)
	})
	t.Logf("with the setting off the pod is bound, with no CPU left on the node for its daemon's 250m")
}
