//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestClaimsWrittenForOlderReleases: users of NVIDIA's driver still have
// manifests in resource.k8s.io/v1beta1 (the device class directly under
// the request) and pods that ask for the extended resource nvidia.com/gpu
// as with the device plugin. Both get a whole GPU from our driver.
func TestClaimsWrittenForOlderReleases(t *testing.T) {
	const ns = "gpu-compat"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: gpu-compat}
---
apiVersion: resource.k8s.io/v1beta1
kind: ResourceClaimTemplate
metadata: {name: one-gpu-v1beta1, namespace: gpu-compat}
spec:
  spec:
    devices:
      requests:
      - name: gpu
        deviceClassName: gpu.nvidia.com
---
apiVersion: resource.k8s.io/v1beta2
kind: ResourceClaimTemplate
metadata: {name: one-gpu-v1beta2, namespace: gpu-compat}
spec:
  spec:
    devices:
      requests:
      - name: gpu
        exactly:
          deviceClassName: gpu.nvidia.com
          selectors:
          - cel:
              expression: device.attributes["gpu.nvidia.com"].productName.startsWith("NVIDIA H100")
`+claimPod(ns, "v1beta1", "one-gpu-v1beta1")+claimPod(ns, "v1beta2", "one-gpu-v1beta2")+`---
apiVersion: v1
kind: Pod
metadata: {name: extended-resource, namespace: gpu-compat}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: ctr
    image: busybox:local
    imagePullPolicy: Never
    command: ["sh", "-c", "env | grep GPU_DRA_DEVICE_UUIDS; sleep 86400"]
    resources:
      limits:
        nvidia.com/gpu: "1"
`)
	uuids := map[string]bool{}
	for _, uuid := range gpuUUIDs(t) {
		uuids[uuid] = true
	}
	for _, pod := range []string{"v1beta1", "v1beta2", "extended-resource"} {
		waitPodRunning(t, ns, pod)
		log := podLogs(t, ns, pod, "GPU_DRA_DEVICE_UUIDS=GPU-")
		found := false
		for uuid := range uuids {
			if strings.Contains(log, "GPU_DRA_DEVICE_UUIDS="+uuid+"\n") {
				found = true
			}
		}
		if !found {
			t.Errorf("pod %s did not get a whole GPU:\n%s", pod, log)
		}
	}
}

// TestArchitectureAsNVIDIAsDriverPublishesIt: the architecture attribute
// carries the values NVIDIA's driver publishes (go-nvlib's, "Hopper"), so a
// selector from NVIDIA's GPU allocation guide, here with 80Gi or more as the
// simulated H100 has exactly 80Gi, selects the node's H100s; the lowercase
// value of this driver's first releases selects nothing.
func TestArchitectureAsNVIDIAsDriverPublishesIt(t *testing.T) {
	const ns = "gpu-compat-arch"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	template := func(name, expression string) string {
		return `---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: ` + name + `, namespace: ` + ns + `}
spec:
  spec:
    devices:
      requests:
      - name: gpu
        exactly:
          deviceClassName: gpu.nvidia.com
          selectors:
          - cel:
              expression: |
                ` + expression + "\n"
	}
	applyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n"+
		template("hopper", `device.attributes['gpu.nvidia.com'].architecture == 'Hopper' && device.capacity['gpu.nvidia.com'].memory.compareTo(quantity("80Gi")) >= 0`)+
		template("lowercase", `device.attributes['gpu.nvidia.com'].architecture == 'hopper'`)+
		claimPod(ns, "hopper", "hopper")+claimPod(ns, "lowercase", "lowercase"))
	pod := waitPodRunning(t, ns, "hopper")
	if dev := claimOf(t, pod, "gpu").Status.Allocation.Devices.Results[0].Device; !strings.HasPrefix(dev, "gpu-") {
		t.Errorf("architecture == 'Hopper' got %s", dev)
	}
	var msg string
	eventually(t, 60*time.Second, "the lowercase selector unschedulable", func() (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx(), "lowercase", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Reason == corev1.PodReasonUnschedulable {
				msg = c.Message
				return true, nil
			}
		}
		return false, fmt.Errorf("phase %s", p.Status.Phase)
	})
	t.Logf("architecture == 'hopper': %s", msg)
}
