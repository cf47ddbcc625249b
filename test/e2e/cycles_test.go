//go:build e2e

package e2e

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// previousRelease is the commit whose chart and plugin the cycles go back
// and forth to: the last before handover (pinned: no release is tagged
// yet). Move it to each new release's commit. It must also read the
// simulated node's state as the harness writes it: the simulator keeps one
// state file per GPU since 07a7ada, and a plugin from before that fails
// every NVML call on such a node (ERROR_UNKNOWN), which says nothing about
// the driver. Real nodes have no such state.
const (
	previousRelease = "07a7adad15c07511c11eb562b24d08be9d4071b3"
	previousTag     = "0.0.9-previous"
)

// previousChartValues are chartValues for the previous release, which
// runs on the Go simulator (--simulate) on the same simulated node's
// state: its image lacks the C libraries that NVIDIA's libnvidia-ml.so.1
// (and the simulated one) needs, the defect this version fixed, so it
// cannot load NVML from the driver root.
func previousChartValues() []string {
	return append(chartValues(), "--set", "kubeletPlugin.simulate="+model,
		"--set", "kubeletPlugin.simulateStateDir="+filepath.Join(runDir, "sim/state"))
}

// TestUpgradeDowngradeCyclesWithThePreviousRelease builds the previous
// release's image from the repository history and installs its chart,
// starts pods holding a whole GPU and a 1g.10gb MIG device, then upgrades
// to this version and downgrades back, GPU_DRA_E2E_CYCLES times (20 by
// default). The previous release knows no handover, so each upgrade stops
// its plugin before starting the next (maxSurge 0, as docs/helm.md says);
// the downgrade is the previous chart's own roll. Every time: the held
// pods keep their containers, claims and MIG device, each version loads
// the other's checkpoint (no CheckpointCorrupt event), and at the end the
// previous release unprepares the claims and nothing is left (CDI specs,
// checkpoint entries, MIG instances). An MPS pod and a pod with a share
// of a GPU join them after the first upgrade (their daemons then run in
// pods of their own: the previous release ran daemons in its container,
// which its replacement ends once): from then on both claims' daemons are
// the same processes, never started again nor asked to quit, until the
// previous release unprepares the claims at the end. The previous release
// knows one daemon per shared GPU, not per share's claim: each downgrade
// starts such a daemon for the share's GPU (which each upgrade stops as a
// daemon of no share it knows), and its unprepare of the share leaves the
// claim's own daemon to its next start (docs/helm.md, "Changes that need
// attention"); the test restarts it at the end to see that done.
func TestUpgradeDowngradeCyclesWithThePreviousRelease(t *testing.T) {
	cycles := 20
	if v := os.Getenv("GPU_DRA_E2E_CYCLES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("GPU_DRA_E2E_CYCLES=%q", v)
		}
		cycles = n
	}
	helm := helmBinary(t)
	prevDir := t.TempDir()
	archive := exec.Command("sh", "-c", `git -C "$1" archive --format=tar "$2" | tar -x -C "$3"`, "sh", repoRoot, previousRelease, prevDir)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("check out the previous release %s: %v\n%s", previousRelease, err, out)
	}
	for _, b := range []struct{ root, tag string }{{prevDir, previousTag}, {repoRoot, newTag}} {
		cmd := exec.Command(filepath.Join(b.root, "test/cluster/image.sh"))
		cmd.Env = append(os.Environ(), "GPU_DRA_IMAGE_TAG="+b.tag)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("image.sh of %s (%s): %v\n%s", b.root, b.tag, err, out)
		}
	}
	useChartOnTheNode(t)
	capabilityNodesForThePreviousRelease(t)
	const ns, release = "gpu-dra-cycles", "e2e-cycles"
	prevChart := filepath.Join(prevDir, "deployments/helm/gpu-dra-driver")
	chart := filepath.Join(repoRoot, "deployments/helm/gpu-dra-driver")
	helmRun := installRelease(t, helm, ns, release, prevChart, previousTag, previousChartValues()...)
	plugin := waitChartPlugin(t, ns)
	if n := waitPoolComplete(t); n != 5 {
		t.Fatalf("the previous release's plugin published %d slices, want 5", n)
	}
	const podNS = "gpu-cycles"
	t.Cleanup(func() { cleanNamespace(t, podNS) })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: gpu-cycles}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: whole, namespace: gpu-cycles}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: mig, namespace: gpu-cycles}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: mig.nvidia.com, selectors: [{cel: {expression: 'device.attributes["gpu.nvidia.com"].profile == "1g.10gb"'}}]}}]}}}
---
`+mpsClaimTemplate("gpu-cycles")+`---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: share, namespace: gpu-cycles}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: shared.gpu.nvidia.com, capacity: {requests: {memory: 20Gi, compute: "25"}}}}]}}}
`)
	migBefore, specsBefore := migCount(t), cdiSpecs(t)
	corruptBefore := checkpointCorruptEvents(t)
	held := startHeldPods(t, podNS, "held")
	var daemons map[string]int
	var mpsStarts, mpsQuits int
	// events counts the starts or quits of the held claims' daemons.
	events := func(what string) int {
		n := 0
		for key := range daemons {
			n += mpsDaemonEventsOf(what, key)
		}
		return n
	}
	mpsKept := func(when string) {
		got := mpsDaemonPIDs(t)
		maps.DeleteFunc(got, func(key string, _ int) bool { _, held := daemons[key]; return !held })
		if !maps.Equal(got, daemons) {
			t.Errorf("%s: MPS daemons %v, want the same processes %v", when, got, daemons)
		}
		if n, q := events("start")-mpsStarts, events("quit")-mpsQuits; n != 0 || q != 0 {
			t.Errorf("%s: %d of the held claims' MPS daemons started and %d quit, want none", when, n, q)
		}
	}

	for i := range cycles {
		helmRun(append([]string{"upgrade", release, chart, "--wait", "--timeout", "3m", "--set", "image.tag=" + newTag,
			"--set", "kubeletPlugin.updateStrategy.rollingUpdate.maxSurge=0",
			"--set", "kubeletPlugin.updateStrategy.rollingUpdate.maxUnavailable=1"}, chartValues()...)...)
		plugin = assertPluginReplaced(t, ns, plugin, newTag)
		if i == 0 {
			held.add(t, "held-mps", "mps")
			held.add(t, "held-share", "share")
			if daemons = mpsDaemonPIDs(t); len(daemons) != 2 {
				t.Fatalf("MPS daemons %v, want the MPS claim's and the share's", daemons)
			}
			mpsStarts, mpsQuits = events("start"), events("quit")
		}
		held.assertKept(t, fmt.Sprintf("cycle %d, upgraded to this version", i+1))
		mpsKept(fmt.Sprintf("cycle %d, upgraded to this version", i+1))
		helmRun(append([]string{"upgrade", release, prevChart, "--wait", "--timeout", "3m", "--set", "image.tag=" + previousTag}, previousChartValues()...)...)
		plugin = assertPluginReplaced(t, ns, plugin, previousTag)
		held.assertKept(t, fmt.Sprintf("cycle %d, downgraded to the previous release", i+1))
		mpsKept(fmt.Sprintf("cycle %d, downgraded to the previous release", i+1))
		if n := checkpointCorruptEvents(t); n != corruptBefore {
			t.Fatalf("cycle %d: %d CheckpointCorrupt events, %d before: a version refused the other's checkpoint", i+1, n, corruptBefore)
		}
		if t.Failed() {
			t.Fatalf("stopped after cycle %d", i+1)
		}
	}
	t.Logf("%d upgrade/downgrade cycles %s <-> this version with a whole GPU, a MIG device, an MPS GPU and a share held", cycles, previousRelease[:12])
	held.release(t, migBefore, "the previous release")
	// The previous release stops the share's daemon as an orphan at its
	// next start.
	kubectl(t, "delete", "pod", "-n", ns, plugin.Name, "--wait=true")
	waitChartPlugin(t, ns)
	eventually(t, 60*time.Second, "both held claims' MPS daemons quit", func() (bool, error) {
		return events("quit")-mpsQuits == 2, fmt.Errorf("%d quit", events("quit")-mpsQuits)
	})
	// The daemon's supervisor found its directory gone and ended: no
	// daemon runs, and its pod is not running one.
	eventually(t, 60*time.Second, "the MPS daemon's pod ended", func() (bool, error) {
		pods, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=mps-control-daemon"})
		if err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if p.Status.Phase != corev1.PodSucceeded {
				return false, fmt.Errorf("pod %s is %s", p.Name, p.Status.Phase)
			}
		}
		return len(processPIDs("nvidia-cuda-mps-control")) == 0, fmt.Errorf("MPS control processes %v", processPIDs("nvidia-cuda-mps-control"))
	})
	if specs := cdiSpecs(t); !slices.Equal(specs, specsBefore) {
		t.Errorf("CDI specs left: %v, before %v", specs, specsBefore)
	}
}

func checkpointCorruptEvents(t *testing.T) int {
	t.Helper()
	evs, err := client.CoreV1().Events(metav1.NamespaceDefault).List(ctx(), metav1.ListOptions{FieldSelector: "reason=CheckpointCorrupt"})
	if err != nil {
		t.Fatal(err)
	}
	return len(evs.Items)
}

// capabilityNodesForThePreviousRelease makes /dev/nvidia-caps/nvidia-cap<N>
// in the simulated node's /dev for every MIG capability its kernel lists,
// as nvidia-modprobe or the GPU operator make them at boot on many nodes:
// the previous release looks up the capability nodes of the MIG devices it
// creates there, where this release numbers them from /proc and needs
// none (the simulated kernel makes none). They go when the test ends.
func capabilityNodesForThePreviousRelease(t *testing.T) {
	t.Helper()
	data, err := os.ReadFile(runDir + "/sim/host/proc/proc/driver/nvidia-caps/mig-minors")
	if err != nil {
		t.Fatal(err)
	}
	dir := runDir + "/sim/host/dev/dev/nvidia-caps"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var made []string
	t.Cleanup(func() {
		for _, p := range made {
			_ = os.Remove(p)
		}
	})
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		fields := strings.Fields(line)
		if len(fields) != 2 {
			continue
		}
		path := filepath.Join(dir, "nvidia-cap"+fields[1])
		if _, err := os.Lstat(path); err == nil {
			continue
		}
		// The simulated node's device nodes are all 1:3, /dev/null's.
		if err := syscall.Mknod(path, syscall.S_IFCHR|0o444, 1<<8|3); err != nil {
			t.Fatal(err)
		}
		made = append(made, path)
	}
}
