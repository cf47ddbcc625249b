//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestInvalidConfigIsReportedAndNothingIsHalfPrepared: a claim whose opaque
// configuration is wrong for its allocation (admission cannot know that)
// leaves its pod with an event naming the field, and the plugin keeps
// nothing of it.
func TestInvalidConfigIsReportedAndNothingIsHalfPrepared(t *testing.T) {
	const ns = "gpu-badconfig"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: gpu-badconfig}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: bad, namespace: gpu-badconfig}
spec:
  devices:
    requests:
    - {name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}
    config:
    - requests: [gpu]
      opaque:
        driver: gpu.nvidia.com
        parameters:
          apiVersion: resource.nvidia.com/v1beta1
          kind: GpuConfig
          # Valid on its own, so admission lets it in; wrong for what was
          # allocated (one device), which only prepare can tell.
          sharing: {strategy: MPS, mpsConfig: {defaultPerDevicePinnedMemoryLimit: {"3": 1Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: bad, namespace: gpu-badconfig}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: ctr
    image: busybox:local
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    resources: {claims: [{name: gpu}]}
  resourceClaims:
  - {name: gpu, resourceClaimName: bad}
`)
	eventually(t, 90*time.Second, "an event naming the bad field", func() (bool, error) {
		evs, err := client.CoreV1().Events(ns).List(ctx(), metav1.ListOptions{FieldSelector: "involvedObject.name=bad"})
		if err != nil {
			return false, err
		}
		var seen []string
		for _, e := range evs.Items {
			if strings.Contains(e.Message, "defaultPerDevicePinnedMemoryLimit[3]") && strings.Contains(e.Message, "no such MPS device") {
				t.Logf("event %s: %s", e.Reason, e.Message)
				return true, nil
			}
			seen = append(seen, e.Reason+": "+e.Message)
		}
		return false, fmt.Errorf("events: %v", seen)
	})
	c, err := client.ResourceV1().ResourceClaims(ns).Get(ctx(), "bad", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := checkpointClaims(t)[string(c.UID)]; ok {
		t.Error("the rejected claim is in the checkpoint")
	}
	if _, err := os.Stat(filepath.Join(runDir, "cdi", "k8s.gpu.nvidia.com-claim_"+string(c.UID)+".json")); !os.IsNotExist(err) {
		t.Errorf("the rejected claim has a CDI spec: %v", err)
	}
}

// TestPluginKilledWhilePodsStart kills the cluster's plugin with SIGKILL
// while the kubelet prepares MIG claims of several pods, restarts it, and
// checks every pod ends Running with nothing leaked.
func TestPluginKilledWhilePodsStart(t *testing.T) {
	const ns = "gpu-killed"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	baseline := migCount(t)
	var y strings.Builder
	y.WriteString("apiVersion: v1\nkind: Namespace\nmetadata: {name: gpu-killed}\n")
	profiles := []string{"1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb", "1g.20gb", "4g.40gb"}
	for i, p := range profiles {
		fmt.Fprintf(&y, `---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: t%d, namespace: gpu-killed}
spec: {spec: {devices: {requests: [{name: mig, exactly: {deviceClassName: mig.nvidia.com, selectors: [{cel: {expression: 'device.attributes["gpu.nvidia.com"].profile == "%s"'}}]}}]}}}
---
apiVersion: v1
kind: Pod
metadata: {name: p%d, namespace: gpu-killed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: ctr, image: busybox:local, imagePullPolicy: Never, command: ["sleep", "3600"], resources: {claims: [{name: mig}]}}
  resourceClaims: [{name: mig, resourceClaimTemplateName: t%d}]
`, i, p, i, i)
	}
	// The plugin kills itself (SIGKILL) right after it created the first
	// MIG device of the first claim it prepares, as a node failure would;
	// the kubelet restarts its container, which dies the same way, until
	// the plugin is restarted without the fault.
	if err := script("driver.sh", "restart", "--test-crash-at", "prepare-mig-created"); err != nil {
		t.Fatal(err)
	}
	crashing := pluginPod(t).Name
	applyYAML(t, y.String())
	eventually(t, 60*time.Second, "the plugin killed during a prepare", func() (bool, error) {
		p, err := client.CoreV1().Pods(driverNamespace).Get(ctx(), crashing, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range p.Status.ContainerStatuses {
			if c.RestartCount > 0 || c.LastTerminationState.Terminated != nil || c.State.Terminated != nil {
				return true, nil
			}
		}
		return false, fmt.Errorf("container statuses %+v", p.Status.ContainerStatuses)
	})
	t.Logf("the plugin was killed with %d of %d MIG devices created", migCount(t)-baseline, len(profiles))
	time.Sleep(2 * time.Second)
	if err := script("driver.sh", "restart"); err != nil {
		t.Fatal(err)
	}
	for i := range profiles {
		waitPodRunning(t, ns, fmt.Sprintf("p%d", i))
	}
	if got := migCount(t); got != baseline+len(profiles) {
		t.Errorf("%d MIG devices for %d pods (baseline %d): something leaked", got, len(profiles), baseline)
	}
	cp := checkpointClaims(t)
	for uid, state := range cp {
		if state != "PrepareCompleted" {
			t.Errorf("claim %s is %s", uid, state)
		}
	}
	for _, spec := range cdiSpecs(t) {
		uid := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(spec), "k8s.gpu.nvidia.com-claim_"), ".json")
		if _, ok := cp[uid]; !ok {
			t.Errorf("orphan CDI spec %s", spec)
		}
	}
	cleanNamespace(t, ns)
	eventually(t, 60*time.Second, "every MIG device of the pods destroyed", func() (bool, error) {
		return migCount(t) == baseline, fmt.Errorf("%d MIG devices", migCount(t))
	})
}
