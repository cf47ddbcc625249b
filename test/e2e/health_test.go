//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// gpuSimOut runs the simulated node's tool and returns what it printed.
func gpuSimOut(args ...string) (string, error) {
	full := append([]string{"--model", model, "--state-dir", filepath.Join(runDir, "sim/state")}, args...)
	cmd := exec.Command(filepath.Join(runDir, "bin", "gpu-sim"), full...)
	out, err := cmd.Output()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		err = fmt.Errorf("gpu-sim %s: %w: %s", strings.Join(args, " "), err, ee.Stderr)
	}
	return string(out), err
}

// gpuSim runs the simulated node's fault-injection tool.
func gpuSim(t testing.TB, args ...string) {
	t.Helper()
	if _, err := gpuSimOut(args...); err != nil {
		t.Fatal(err)
	}
}

// deviceTaints returns the published taints of every device of our pool
// whose name is gpu-<minor> or starts with gpu-<minor>-mig-, by device.
func deviceTaints(t testing.TB, minor int) map[string][]resourceapi.DeviceTaint {
	t.Helper()
	list, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{
		FieldSelector: "spec.nodeName=" + nodeName + ",spec.driver=gpu.nvidia.com",
	})
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("gpu-%d", minor)
	out := map[string][]resourceapi.DeviceTaint{}
	for _, s := range list.Items {
		for _, d := range s.Spec.Devices {
			if d.Name == name || strings.HasPrefix(d.Name, name+"-mig-") {
				out[d.Name] = d.Taints
			}
		}
	}
	return out
}

// allTainted reports whether every device of GPU minor has a taint with
// key and effect; it returns how many do.
func allTainted(t testing.TB, minor int, key string, effect resourceapi.DeviceTaintEffect) (bool, int) {
	devs := deviceTaints(t, minor)
	n := 0
	for _, ts := range devs {
		for _, tn := range ts {
			if tn.Key == key && tn.Effect == effect {
				n++
				break
			}
		}
	}
	return len(devs) > 0 && n == len(devs), n
}

// clearHealth asks the plugin to clear sticky conditions of every GPU, as
// `kubectl gpu clear` does, and waits until no device of GPU minor is
// tainted.
func clearHealth(t testing.TB, minor int) {
	t.Helper()
	kubectl(t, "annotate", "node", nodeName, "--overwrite",
		"gpu.nvidia.com/health-cleared="+time.Now().UTC().Format(time.RFC3339Nano))
	eventually(t, 30*time.Second, fmt.Sprintf("GPU %d untainted", minor), func() (bool, error) {
		_, n := allTainted(t, minor, "gpu.nvidia.com/xid", resourceapi.DeviceTaintEffectNoExecute)
		return n == 0, fmt.Errorf("%d devices tainted", n)
	})
}

// healthNamespace is the health tests' namespace with a template for a
// whole GPU. Its claims may tolerate the driver's taints (the chart's
// toleration policy).
const healthNamespace = `apiVersion: v1
kind: Namespace
metadata: {name: gpu-health, labels: {` + names.MayTolerateDriverTaintsLabel + `: "true"}}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: whole, namespace: gpu-health}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}}
`

// TestFatalXIDEvictsPodsOfThatGPUOnly injects XID 79 (fallen off the bus)
// on the GPU of two MIG pods: the GPU and all its MIG devices are tainted
// NoExecute, the controller-manager evicts the pod that does not tolerate
// it, the one whose claim tolerates it stays and sees its device
// Unhealthy in pod status, a pod on another GPU is untouched, and a new
// pod cannot land on the GPU until an admin clears it.
func TestFatalXIDEvictsPodsOfThatGPUOnly(t *testing.T) {
	const ns = "gpu-health"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, healthNamespace+`---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: mig, namespace: gpu-health}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: mig.nvidia.com, selectors: [{cel: {expression: 'device.attributes["gpu.nvidia.com"].profile == "1g.10gb"'}}]}}]}}}
`+claimPod("gpu-health", "first", "mig")+claimPod("gpu-health", "other-gpu", "whole"))
	first := waitPodRunning(t, ns, "first")
	var minor, start int
	dev := claimOf(t, first, "gpu").Status.Allocation.Devices.Results[0].Device
	if _, err := fmt.Sscanf(dev, "gpu-%d-mig-1g10gb-%d", &minor, &start); err != nil {
		t.Fatalf("allocated %q: %v", dev, err)
	}
	other := claimOf(t, waitPodRunning(t, ns, "other-gpu"), "gpu").Status.Allocation.Devices.Results[0].Device
	if other == fmt.Sprintf("gpu-%d", minor) {
		t.Fatalf("the whole-GPU pod got GPU %d, which also runs a MIG device", minor)
	}
	// Two more MIG pods on the same GPU: one tolerates the XID taint.
	sameGPU := fmt.Sprintf(`device.attributes["gpu.nvidia.com"].profile == "1g.10gb" && device.attributes["gpu.nvidia.com"].parentMinor == %d`, minor)
	applyYAML(t, fmt.Sprintf(`apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: same-gpu, namespace: gpu-health}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: mig.nvidia.com, selectors: [{cel: {expression: '%[1]s'}}]}}]}}}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: tolerant, namespace: gpu-health}
spec:
  spec:
    devices:
      requests:
      - name: gpu
        exactly:
          deviceClassName: mig.nvidia.com
          selectors: [{cel: {expression: '%[1]s'}}]
          tolerations: [{key: gpu.nvidia.com/xid, operator: Exists, effect: NoExecute}]
`, sameGPU)+claimPod("gpu-health", "tolerant", "tolerant"))
	tolerant := waitPodRunning(t, ns, "tolerant")

	gpuSim(t, "xid", fmt.Sprint(minor), "79")
	t.Cleanup(func() { clearHealth(t, minor) })
	eventually(t, 30*time.Second, fmt.Sprintf("GPU %d and all its MIG devices tainted NoExecute", minor), func() (bool, error) {
		ok, n := allTainted(t, minor, "gpu.nvidia.com/xid", resourceapi.DeviceTaintEffectNoExecute)
		return ok, fmt.Errorf("%d devices tainted", n)
	})
	eventually(t, 60*time.Second, "the pod without toleration evicted", func() (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx(), "first", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		return p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodFailed, fmt.Errorf("phase %s", p.Status.Phase)
	})
	tolerantDevice := claimOf(t, tolerant, "gpu").Status.Allocation.Devices.Results[0].Device
	eventually(t, 60*time.Second, "the tolerating pod's device Unhealthy in its status", func() (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx(), "tolerant", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			t.Fatalf("the tolerating pod is going: phase %s", p.Status.Phase)
		}
		var seen []string
		for _, cs := range p.Status.ContainerStatuses {
			for _, rs := range cs.AllocatedResourcesStatus {
				for _, r := range rs.Resources {
					seen = append(seen, fmt.Sprintf("%s %s=%s", rs.Name, r.ResourceID, r.Health))
					if strings.HasSuffix(string(r.ResourceID), "-"+tolerantDevice) && r.Health == corev1.ResourceHealthStatusUnhealthy {
						return true, nil
					}
				}
			}
		}
		return false, fmt.Errorf("allocatedResourcesStatus %v", seen)
	})
	if p, err := client.CoreV1().Pods(ns).Get(ctx(), "other-gpu", metav1.GetOptions{}); err != nil || p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		t.Errorf("the pod on another GPU was affected: %v %+v", err, p.Status)
	}
	applyYAML(t, claimPod("gpu-health", "late", "same-gpu"))
	time.Sleep(3 * time.Second)
	if p, err := client.CoreV1().Pods(ns).Get(ctx(), "late", metav1.GetOptions{}); err != nil || p.Spec.NodeName != "" {
		t.Errorf("a new pod was scheduled onto the tainted GPU: %v node %q", err, p.Spec.NodeName)
	}
	// An admin checks the GPU and clears it: the waiting pod runs.
	clearHealth(t, minor)
	waitPodRunning(t, ns, "late")
}

// TestThermalTaintKeepsPodsAndClearsItself heats the GPU of a running pod
// past its slowdown threshold: its devices are tainted NoSchedule, the pod
// keeps running, and the taint goes by itself once the GPU cools.
func TestThermalTaintKeepsPodsAndClearsItself(t *testing.T) {
	const ns = "gpu-health"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, healthNamespace+claimPod("gpu-health", "warm", "whole"))
	pod := waitPodRunning(t, ns, "warm")
	var minor int
	dev := claimOf(t, pod, "gpu").Status.Allocation.Devices.Results[0].Device
	if _, err := fmt.Sscanf(dev, "gpu-%d", &minor); err != nil {
		t.Fatalf("allocated %q: %v", dev, err)
	}
	gpuSim(t, "temperature", fmt.Sprint(minor), "90")
	t.Cleanup(func() { gpuSim(t, "temperature", fmt.Sprint(minor), "40") })
	eventually(t, 30*time.Second, "thermal NoSchedule taint on the GPU and its MIG devices", func() (bool, error) {
		ok, n := allTainted(t, minor, "gpu.nvidia.com/thermal", resourceapi.DeviceTaintEffectNoSchedule)
		return ok, fmt.Errorf("%d devices tainted", n)
	})
	time.Sleep(3 * time.Second)
	if p, err := client.CoreV1().Pods(ns).Get(ctx(), "warm", metav1.GetOptions{}); err != nil || p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		t.Fatalf("the pod did not keep running under a NoSchedule taint: %v", err)
	}
	gpuSim(t, "temperature", fmt.Sprint(minor), "40")
	eventually(t, 60*time.Second, "the thermal taint gone after the GPU cooled", func() (bool, error) {
		_, n := allTainted(t, minor, "gpu.nvidia.com/thermal", resourceapi.DeviceTaintEffectNoSchedule)
		return n == 0, fmt.Errorf("%d devices still tainted", n)
	})
}
