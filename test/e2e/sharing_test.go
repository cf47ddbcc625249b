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
	applyDemo(t, "sharing")
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
