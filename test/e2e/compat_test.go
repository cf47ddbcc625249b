//go:build e2e

package e2e

import (
	"strings"
	"testing"
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
