//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// TestTimeSlicedClaimSharedByTwoPods applies the time-slicing demo: both
// pods (three containers) see the same GPU, the driver's nvidia-smi set
// its time slice to Long, and deleting the pods and the claim restores
// the default.
func TestTimeSlicedClaimSharedByTwoPods(t *testing.T) {
	const ns = "gpu-sharing"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	kubectl(t, "apply", "-f", repoRoot+"/demo/sharing/time-slicing.yaml")
	a := waitPodRunning(t, ns, "time-sliced-a")
	waitPodRunning(t, ns, "time-sliced-b")
	dev := claimOf(t, a, "shared-gpu").Status.Allocation.Devices.Results[0].Device
	uuid := gpuUUIDs(t)[dev]
	if uuid == "" {
		t.Fatalf("allocated %q, not a whole GPU", dev)
	}
	for _, p := range []struct{ pod, container string }{{"time-sliced-a", "ctr0"}, {"time-sliced-a", "ctr1"}, {"time-sliced-b", ""}} {
		eventually(t, 30*time.Second, p.pod+"/"+p.container+" sees "+uuid, func() (bool, error) {
			out, err := kubectlErr("logs", "-n", ns, p.pod, "-c", containerOr(p.container))
			return strings.Contains(out, "NVIDIA_VISIBLE_DEVICES="+uuid), fmt.Errorf("%v: %s", err, out)
		})
	}
	slice := func() string {
		data, err := os.ReadFile(simhost.TimeSlicePath(runDir+"/sim/host/driver", uuid))
		if err != nil {
			return err.Error()
		}
		return strings.TrimSpace(string(data))
	}
	if got := slice(); got != "3" {
		t.Errorf("time slice of %s is %s, want 3 (Long)", dev, got)
	}
	kubectl(t, "delete", "pod", "-n", ns, "time-sliced-a", "time-sliced-b", "--wait=true")
	kubectl(t, "delete", "resourceclaim", "-n", ns, "time-sliced-gpu", "--wait=true")
	eventually(t, 60*time.Second, "the default time slice restored", func() (bool, error) {
		got := slice()
		return got == "0", fmt.Errorf("time slice %s", got)
	})
}

func containerOr(name string) string {
	if name == "" {
		return "ctr"
	}
	return name
}

// TestMPSClaimSharedByTwoPods applies the MPS demo: one daemon serves both
// pods, whose containers see its pipe directory and the limits; a plugin
// restart neither loses nor duplicates the daemon; deleting the claim's
// pods and the claim stops it.
func TestMPSClaimSharedByTwoPods(t *testing.T) {
	const ns = "gpu-mps"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	mpsLog := simhost.MPSLogPath(runDir + "/sim/host/driver")
	count := func(what string) int {
		data, _ := os.ReadFile(mpsLog)
		return strings.Count(string(data), " "+what+" ")
	}
	startsBefore, quitsBefore := count("start"), count("quit")
	kubectl(t, "apply", "-f", repoRoot+"/demo/sharing/mps.yaml")
	waitPodRunning(t, ns, "mps-a")
	waitPodRunning(t, ns, "mps-b")
	for _, pod := range []string{"mps-a", "mps-b"} {
		log := podLogs(t, ns, pod, "control")
		for _, want := range []string{"CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=10240M"} {
			if !strings.Contains(log, want) {
				t.Errorf("%s lacks %q:\n%s", pod, want, log)
			}
		}
	}
	if n := count("start") - startsBefore; n != 1 {
		data, err := os.ReadFile(mpsLog)
		t.Fatalf("%d MPS daemons started for one claim (%d before); %s (%v):\n%s", n, startsBefore, mpsLog, err, data)
	}
	if err := script("driver.sh", "restart"); err != nil {
		t.Fatal(err)
	}
	if n := count("start") - startsBefore; n != 1 || count("quit") != quitsBefore {
		t.Errorf("after a plugin restart: %d starts, %d quits", n, count("quit")-quitsBefore)
	}
	kubectl(t, "delete", "pod", "-n", ns, "mps-a", "mps-b", "--wait=true")
	kubectl(t, "delete", "resourceclaim", "-n", ns, "mps-gpu", "--wait=true")
	eventually(t, 60*time.Second, "the MPS daemon stopped", func() (bool, error) {
		return count("quit")-quitsBefore == 1, fmt.Errorf("%d quits", count("quit")-quitsBefore)
	})
	dirs, _ := os.ReadDir(runDir + "/kubelet/plugins/gpu.nvidia.com/mps")
	if len(dirs) != 0 {
		t.Errorf("MPS directories left: %v", dirs)
	}
}
