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
	if err := script("driver.sh", "start"); err != nil {
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
			fmt.Errorf("%d MIG devices (want %d), spec: %v, in checkpoint: %v", migCount(t), before, err, inCheckpoint)
	})
	for _, f := range aside {
		os.Remove(f)
	}
}

// TestUninstallRemovesThePoolAndReinstallRepublishes runs the clean
// uninstall an operator runs after stopping the plugin, then installs
// again: the pool must be gone in between and complete afterwards.
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
	if err := script("driver.sh", "stop"); err != nil {
		t.Fatal(err)
	}
	out, err := runPlugin("uninstall", "--node-name", nodeName, "--kubeconfig", filepath.Join(runDir, "kubeconfig/plugin.kubeconfig"))
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if n := sliceCount(); n != 0 {
		t.Errorf("%d slices left after uninstall", n)
	}
	if err := script("driver.sh", "start"); err != nil {
		t.Fatal(err)
	}
	// driver.sh start returns once the plugin reports ready, which it
	// does only after publishing.
	eventually(t, 10*time.Second, "the pool republished", func() (bool, error) {
		n := sliceCount()
		return n == want, fmt.Errorf("%d slices, want %d", n, want)
	})
}
