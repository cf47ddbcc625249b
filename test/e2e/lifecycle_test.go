//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestCorruptCheckpointUnderRunningPod truncates the checkpoint while a pod
// holds a MIG device and the plugin is down. The restarted plugin must set
// the file aside, report it as an Event on the node, rebuild the claim
// from its CDI spec and the live MIG device, and still unprepare it when
// the pod goes: nothing leaked, nothing lost.
func TestCorruptCheckpointUnderRunningPod(t *testing.T) {
	t.Cleanup(func() { cleanNamespace(t, "gpu-demo") })
	before := migCount(t)
	applyDemo(t, "mig")
	pod := waitPodRunning(t, "gpu-demo", "mig-1g")
	claim := claimOf(t, pod, "mig")
	if state := checkpointClaims(t)[string(claim.UID)]; state != "PrepareCompleted" {
		t.Fatalf("claim %s is %q in the checkpoint before the test", claim.UID, state)
	}
	cpPath := filepath.Join(runDir, "kubelet/plugins/gpu.nvidia.com/checkpoint.json")
	if err := script("driver.sh", "stop"); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(cpPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cpPath, data[:len(data)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := script("driver.sh", "restart"); err != nil {
		t.Fatal(err)
	}
	aside, _ := filepath.Glob(cpPath + ".corrupt-*")
	if len(aside) == 0 {
		t.Error("the corrupt checkpoint was not set aside")
	}
	if state := checkpointClaims(t)[string(claim.UID)]; state != "PrepareCompleted" {
		t.Errorf("claim %s is %q in the rebuilt checkpoint, want PrepareCompleted", claim.UID, state)
	}
	eventually(t, 30*time.Second, "a CheckpointCorrupt event on the node", func() (bool, error) {
		evs, err := client.CoreV1().Events(metav1.NamespaceDefault).List(ctx(), metav1.ListOptions{FieldSelector: "reason=CheckpointCorrupt"})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == nodeName && strings.Contains(e.Message, "checkpoint") {
				return true, nil
			}
		}
		return false, fmt.Errorf("%d events", len(evs.Items))
	})
	spec := filepath.Join(runDir, "cdi", "k8s.gpu.nvidia.com-claim_"+string(claim.UID)+".json")
	kubectl(t, "delete", "pod", "-n", "gpu-demo", "mig-1g", "--wait=true")
	eventually(t, 60*time.Second, "the rebuilt claim unprepared: MIG device destroyed, CDI spec removed", func() (bool, error) {
		_, err := os.Stat(spec)
		_, inCheckpoint := checkpointClaims(t)[string(claim.UID)]
		return migCount(t) == before && os.IsNotExist(err) && !inCheckpoint,
			errors.Join(err, fmt.Errorf("%d MIG devices (want %d), in checkpoint: %v", migCount(t), before, inCheckpoint))
	})
	for _, f := range aside {
		os.Remove(f)
	}
}

// TestUninstallRemovesThePoolAndReinstallRepublishes uninstalls the
// harness's release with helm while a pod holds a MIG device: the node's
// slices go (the chart's pre-delete hook), and the pod keeps its container,
// its claim's CDI spec, its checkpoint entry and its MIG instance. Installed
// again (driver.sh start), the plugin republishes the pool, still holds the
// claim, and unprepares it when the pod goes.
func TestUninstallRemovesThePoolAndReinstallRepublishes(t *testing.T) {
	sliceCount := func() int {
		list, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{
			FieldSelector: "spec.nodeName=" + nodeName + ",spec.driver=gpu.nvidia.com",
		})
		if err != nil {
			t.Fatal(err)
		}
		return len(list.Items)
	}
	want := waitPoolComplete(t)
	t.Cleanup(func() { cleanNamespace(t, "gpu-demo") })
	before := migCount(t)
	applyDemo(t, "mig")
	pod := waitPodRunning(t, "gpu-demo", "mig-1g")
	claim := claimOf(t, pod, "mig")
	spec := filepath.Join(runDir, "cdi", "k8s.gpu.nvidia.com-claim_"+string(claim.UID)+".json")
	kept := func(when string) {
		t.Helper()
		p, err := client.CoreV1().Pods("gpu-demo").Get(ctx(), "mig-1g", metav1.GetOptions{})
		if err != nil || p.Status.ContainerStatuses[0].ContainerID != pod.Status.ContainerStatuses[0].ContainerID || p.Status.Phase != corev1.PodRunning {
			t.Errorf("%s: the pod lost its container (%v)", when, err)
		}
		if _, err := os.Stat(spec); err != nil {
			t.Errorf("%s: the claim's CDI spec: %v", when, err)
		}
		if state := checkpointClaims(t)[string(claim.UID)]; state != "PrepareCompleted" {
			t.Errorf("%s: the claim is %q in the checkpoint", when, state)
		}
		if n := migCount(t); n != before+1 {
			t.Errorf("%s: %d MIG devices, want %d", when, n, before+1)
		}
	}

	helm := helmBinary(t)
	out, err := exec.Command(helm, "uninstall", driverRelease, "--namespace", driverNamespace, "--wait",
		"--kubeconfig", filepath.Join(runDir, "kubeconfig/admin.kubeconfig")).CombinedOutput()
	if err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	reinstalled := false
	t.Cleanup(func() {
		if !reinstalled {
			script("driver.sh", "start")
		}
	})
	if n := sliceCount(); n != 0 {
		t.Errorf("%d slices left after helm uninstall", n)
	}
	kept("after helm uninstall")

	if err := script("driver.sh", "start"); err != nil {
		t.Fatal(err)
	}
	reinstalled = true
	// driver.sh start returns once the plugin reports ready, which it
	// does only after publishing.
	eventually(t, 10*time.Second, "the pool republished", func() (bool, error) {
		n := sliceCount()
		return n == want, fmt.Errorf("%d slices, want %d", n, want)
	})
	kept("after the reinstall")
	kubectl(t, "delete", "pod", "-n", "gpu-demo", "mig-1g", "--wait=true")
	eventually(t, 60*time.Second, "the claim unprepared by the reinstalled plugin", func() (bool, error) {
		_, err := os.Stat(spec)
		return migCount(t) == before && os.IsNotExist(err), errors.Join(err, fmt.Errorf("%d MIG devices (want %d)", migCount(t), before))
	})
}
