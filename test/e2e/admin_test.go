//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestAdminAccessHoldsOffNobody: a monitoring pod's claim with admin access
// (in a namespace labelled for it) gets a GPU's device nodes, and a user's
// pod whose claim is then allocated the same GPU starts at once: the
// monitor's claim neither holds the GPU nor makes the user's prepare wait.
func TestAdminAccessHoldsOffNobody(t *testing.T) {
	const ns = "gpu-admin"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	pinned := func(name string, admin bool) string {
		return fmt.Sprintf(`---
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: %s, namespace: gpu-admin}
spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com, adminAccess: %t, selectors: [{cel: {expression: "device.attributes['gpu.nvidia.com'].index == 7"}}]}}]}}
---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: gpu-admin}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: ctr
    image: busybox:local
    imagePullPolicy: Never
    command: ["sh", "-c", "echo GPU_DRA_DEVICE_UUIDS=$GPU_DRA_DEVICE_UUIDS; sleep 3600"]
    resources: {claims: [{name: gpu}]}
  resourceClaims: [{name: gpu, resourceClaimName: %s}]
`, name, admin, name, name)
	}
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata:
  name: gpu-admin
  labels: {resource.kubernetes.io/admin-access: "true"}
`+pinned("monitor", true))
	waitPodRunning(t, ns, "monitor")
	uuid := gpuUUIDs(t)["gpu-7"]
	podLogs(t, ns, "monitor", "GPU_DRA_DEVICE_UUIDS="+uuid)

	start := time.Now()
	applyYAML(t, pinned("user", false))
	waitPodRunning(t, ns, "user")
	took := time.Since(start)
	podLogs(t, ns, "user", "GPU_DRA_DEVICE_UUIDS="+uuid)
	evs, err := client.CoreV1().Events(ns).List(ctx(), metav1.ListOptions{FieldSelector: "involvedObject.name=user,reason=FailedPrepareDynamicResources"})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		t.Errorf("the user's prepare failed while a monitor had the GPU: %s", e.Message)
	}
	t.Logf("the user's pod ran %s after it was created, beside the monitor", took.Round(10*time.Millisecond))
	// A prepare that waited for the monitor would take the held-device wait (20 s).
	if took > 10*time.Second {
		t.Errorf("the user's pod took %s to run: its prepare waited for the monitor", took.Round(time.Second))
	}
	if p, err := client.CoreV1().Pods(ns).Get(ctx(), "monitor", metav1.GetOptions{}); err != nil || p.Status.Phase != corev1.PodRunning {
		t.Errorf("the monitor: %v", err)
	}
}
