//go:build e2e

package e2e

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// replaceGPUs replaces the one node's GPUs by those of the simulated node
// to (test/cluster/driver.sh replace-gpus): the plugin stopped, the node
// served as to, the plugin started again. The suite's model follows.
func replaceGPUs(to string) error {
	model = to
	os.Setenv("GPU_DRA_SIMULATE", to)
	return script("driver.sh", "replace-gpus", to)
}

// publishedGPUs are the product names of the node's published whole GPUs,
// by device name.
func publishedGPUs(t testing.TB) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range nodeDevices(t) {
		if a := d.Attributes[names.AttrType]; a.StringValue == nil || *a.StringValue != names.TypeGPU {
			continue
		}
		if a := d.Attributes[names.AttrProductName]; a.StringValue != nil {
			out[d.Name] = *a.StringValue
		} else {
			out[d.Name] = ""
		}
	}
	return out
}

// nodeDevices are the devices of the one node's published slices.
func nodeDevices(t testing.TB) []resourceapi.Device {
	t.Helper()
	l, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{
		FieldSelector: "spec.nodeName=" + nodeName + ",spec.driver=" + names.DriverName,
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []resourceapi.Device
	for _, s := range l.Items {
		out = append(out, s.Spec.Devices...)
	}
	return out
}

// wantPublishedGPUs waits until the node publishes n whole GPUs, gpu-0 to
// gpu-<n-1>, all of the product, and no other.
func wantPublishedGPUs(t testing.TB, n int, product string) {
	t.Helper()
	want := map[string]string{}
	for i := range n {
		want[fmt.Sprintf("gpu-%d", i)] = product
	}
	eventually(t, 60*time.Second, fmt.Sprintf("%d %s published", n, product), func() (bool, error) {
		got := publishedGPUs(t)
		return maps.Equal(got, want), fmt.Errorf("published GPUs %v", got)
	})
}

// allMIGModeOff takes every GPU of the node out of MIG mode, as the
// administrator finds new GPUs (a node replaced before, whose state
// driver.sh kept, may come back with some in MIG mode).
func allMIGModeOff(t *testing.T) {
	t.Helper()
	for i, g := range simState(t).GPUs {
		if g.MIGMode == nvml.DEVICE_MIG_ENABLE || g.MIGModePending {
			setMIGMode(t, i, false)
		}
	}
}

// TestNVIDIAManifestsOnA100AndGH200 runs NVIDIA's manifests written for
// other GPUs than the suite's DGX H100, unchanged but for the image, on the
// same node with its GPUs replaced, as an administrator replaces a drained
// node's GPUs (driver.sh replace-gpus): the plugin, stopped meanwhile,
// finds and publishes the new GPUs and nothing of the old.
//
//   - DGX A100 (eight A100-SXM4-40GB): quickstart gpu-test6 (four replicas,
//     each a time-sliced A100 of index 0, 2, 4 or 6, interval Long) and
//     gpu-test4 (four replicas, each with four MIG devices, 1g.5gb twice,
//     2g.10gb and 3g.20gb, of one MIG-enabled GPU: the whole GPU), the odd
//     GPUs put in MIG mode by the administrator as NVIDIA's comment asks.
//   - Two GH200 96GB: the extended-resources demo mig-1g-12gb (a
//     DeviceClass per MIG profile with extendedResourceName
//     nvidia.com/mig-1g.12gb, a pod asking for one in its limits), with
//     both GPUs in MIG mode.
//
// Then the DGX H100 is put back, its GPUs and state as they were.
func TestNVIDIAManifestsOnA100AndGH200(t *testing.T) {
	if clusterNodes != 1 || model != "dgxh100" {
		t.Skipf("replaces the one-node suite's DGX H100; this node is a %s", model)
	}
	start := time.Now()
	// A node's GPUs are replaced once it is drained.
	drained := func(what string) {
		t.Helper()
		eventually(t, 90*time.Second, what, func() (bool, error) {
			c := checkpointClaims(t)
			return len(c) == 0, fmt.Errorf("claims still prepared: %v", c)
		})
	}
	drained("no claim prepared before the GPUs are replaced")
	h100s, h100sPublished := gpuUUIDs(t), publishedGPUs(t)
	const migClass = "mig-1g-12gb.gpu.nvidia.com"
	nss := []string{"gpu-test4", "gpu-test6", "extended-resource-mig-1g12gb"}
	t.Cleanup(func() {
		kubectlErr("delete", "pod", "-n", "extended-resource-mig-1g12gb", "--all", "--ignore-not-found", "--grace-period=1")
		kubectlErr(append([]string{"delete", "namespace", "--ignore-not-found", "--wait=true", "--timeout=120s"}, nss...)...)
		kubectlErr("delete", "deviceclass", "--ignore-not-found", migClass)
		if model == "dgxh100" {
			return
		}
		// The node drained again (MIG devices destroyed on the GPUs they
		// were made on), then the DGX H100 back, whatever happened.
		for deadline := time.Now().Add(60 * time.Second); len(checkpointClaims(t)) > 0 && time.Now().Before(deadline); {
			time.Sleep(time.Second)
		}
		if err := replaceGPUs("dgxh100"); err != nil {
			t.Errorf("cleanup: the DGX H100 back: %v", err)
			return
		}
		if got := gpuUUIDs(t); !maps.Equal(got, h100s) {
			t.Errorf("cleanup: the DGX H100 came back with GPUs %v, had %v", got, h100s)
		}
		eventually(t, 60*time.Second, "the DGX H100's GPUs published as before", func() (bool, error) {
			got := publishedGPUs(t)
			return maps.Equal(got, h100sPublished), fmt.Errorf("published GPUs %v, want %v", got, h100sPublished)
		})
	})

	// The DGX A100.
	if err := replaceGPUs("dgxa100"); err != nil {
		t.Fatal(err)
	}
	allMIGModeOff(t)
	wantPublishedGPUs(t, 8, "NVIDIA A100-SXM4-40GB")
	a100s := gpuUUIDs(t)
	if slices.ContainsFunc(slices.Collect(maps.Values(a100s)), func(u string) bool { return slices.Contains(slices.Collect(maps.Values(h100s)), u) }) {
		t.Fatalf("the A100s %v share UUIDs with the H100s %v", a100s, h100s)
	}
	t.Logf("GPUs replaced by a DGX A100's at %s", time.Since(start).Round(time.Second))

	// The administrator puts the odd GPUs in MIG mode (A100: with a
	// reset), as gpu-test4's comment asks. An A100 offers MIG devices in
	// MIG mode and the whole GPU out of it: gpu-test4's replicas get the
	// odd GPUs, gpu-test6's the even ones.
	odd := map[string]bool{}
	for _, i := range []int{1, 3, 5, 7} {
		setMIGMode(t, i, true)
		odd[a100s[fmt.Sprintf("gpu-%d", i)]] = true
	}
	applyNVIDIA(t, quickstart+"gpu-test6.yaml", "gpu-test6", true, false)
	applyNVIDIA(t, quickstart+"gpu-test4.yaml", "gpu-test4", true, false)

	// gpu-test6: each replica a time-sliced A100 of index 0, 2, 4 or 6.
	even := map[string]bool{a100s["gpu-0"]: true, a100s["gpu-2"]: true, a100s["gpu-4"]: true, a100s["gpu-6"]: true}
	seen := map[string]string{}
	for _, p := range deploymentPods(t, "gpu-test6", "pod", "app=pod", 4, 120*time.Second) {
		u := oneGPU(t, "gpu-test6", p, "")
		if !even[u] {
			t.Errorf("gpu-test6 %s sees %s, want one of the A100s of index 0, 2, 4, 6 %v", p, u, slices.Sorted(maps.Keys(even)))
		}
		if other, ok := seen[u]; ok {
			t.Errorf("gpu-test6 %s and %s both see %s, want a GPU each", p, other, u)
		}
		seen[u] = p
		data, err := os.ReadFile(simhost.TimeSlicePath(runDir+"/sim/host/driver", u))
		if got := strings.TrimSpace(string(data)); err != nil || got != "3" {
			t.Errorf("time slice of %s: %q (%v), want 3 (Long)", u, got, err)
		}
	}

	// gpu-test4: each replica four MIG devices of one MIG-enabled GPU.
	profiles := map[string]string{"ctr0": "1g.5gb", "ctr1": "1g.5gb", "ctr2": "2g.10gb", "ctr3": "3g.20gb"}
	requests := map[string]string{"ctr0": "mig-1g-5gb-0", "ctr1": "mig-1g-5gb-1", "ctr2": "mig-2g-10gb", "ctr3": "mig-3g-20gb"}
	parents := map[string]string{}
	for _, p := range deploymentPods(t, "gpu-test4", "pod", "app=pod", 4, 120*time.Second) {
		c := claimOf(t, waitPodRunning(t, "gpu-test4", p), "mig-devices")
		byRequest := map[string]string{}
		for _, r := range c.Status.Allocation.Devices.Results {
			byRequest[r.Request] = r.Device
		}
		parent := ""
		for _, ctr := range slices.Sorted(maps.Keys(profiles)) {
			o := nvidiaSMI(t, "gpu-test4", p, ctr)
			if len(o.gpus) != 1 || len(o.migs) != 1 || o.migs[0].profile != profiles[ctr] {
				t.Errorf("gpu-test4 %s %s: nvidia-smi -L printed %q, want a GPU and a MIG %s", p, ctr, o.lines, profiles[ctr])
				continue
			}
			checkMIG(t, "gpu-test4", p, ctr, byRequest[requests[ctr]])
			if parent != "" && o.migs[0].parent != parent {
				t.Errorf("gpu-test4 %s %s: its MIG device is on %s, the pod's others on %s (matchAttribute parentUUID)", p, ctr, o.migs[0].parent, parent)
			}
			parent = o.migs[0].parent
		}
		if !odd[parent] {
			t.Errorf("gpu-test4 %s: MIG devices on %s, want one of the GPUs in MIG mode %v", p, parent, slices.Sorted(maps.Keys(odd)))
		}
		if other, ok := parents[parent]; ok {
			t.Errorf("gpu-test4 %s and %s both have MIG devices on %s", p, other, parent)
		}
		parents[parent] = p
	}
	t.Logf("gpu-test6 and gpu-test4 ran on the DGX A100 at %s", time.Since(start).Round(time.Second))
	kubectl(t, "delete", "namespace", "gpu-test4", "gpu-test6", "--wait=true", "--timeout=120s")
	drained("the A100s' claims unprepared")
	if live := liveMIGs(t); len(live) != 0 {
		t.Errorf("MIG devices left on the A100s: %v", slices.Sorted(maps.Keys(live)))
	}

	// The GH200s, both in MIG mode (Hopper: at once).
	if err := replaceGPUs("gh200"); err != nil {
		t.Fatal(err)
	}
	allMIGModeOff(t)
	wantPublishedGPUs(t, 2, "NVIDIA GH200 96GB HBM3")
	for _, i := range []int{0, 1} {
		setMIGMode(t, i, true)
	}
	t.Logf("GPUs replaced by two GH200s at %s", time.Since(start).Round(time.Second))
	const ns = "extended-resource-mig-1g12gb"
	applyNVIDIA(t, "dra-driver-nvidia-gpu/demo/specs/extended-resources/mig-1g-12gb.yaml", ns, true, false)
	pod := waitPodRunning(t, ns, "mig-1g12gb-pod")
	st := pod.Status.ExtendedResourceClaimStatus
	if st == nil || len(st.RequestMappings) != 1 || st.RequestMappings[0].ResourceName != "nvidia.com/mig-1g.12gb" ||
		st.RequestMappings[0].ContainerName != "cuda-container" || !strings.HasPrefix(st.ResourceClaimName, "mig-1g12gb-pod-extended-resources-") {
		t.Fatalf("extended resource claim status %+v, want the scheduler's claim for cuda-container's nvidia.com/mig-1g.12gb", st)
	}
	c, err := client.ResourceV1().ResourceClaims(ns).Get(ctx(), st.ResourceClaimName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Annotations["resource.kubernetes.io/extended-resource-claim"] != "true" || c.Status.Allocation == nil ||
		len(c.Status.Allocation.Devices.Results) != 1 || c.Status.Allocation.Devices.Results[0].Driver != names.DriverName {
		t.Fatalf("claim %s: annotations %v, allocation %+v; want NVIDIA's expected claim, one gpu.nvidia.com device", c.Name, c.Annotations, c.Status.Allocation)
	}
	device := c.Status.Allocation.Devices.Results[0].Device
	out := kubectl(t, "exec", "-n", ns, "mig-1g12gb-pod", "-c", "cuda-container", "--", "nvidia-smi", "-L")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	gpuLine, migLine := smiGPULine.FindStringSubmatch(lines[0]), []string(nil)
	if len(lines) == 2 {
		migLine = smiMIGLine.FindStringSubmatch(lines[1])
	}
	if gpuLine == nil || migLine == nil || migLine[1] != "1g.12gb" || gpuLine[3] != gpuOfDevice(t, device) || !strings.Contains(device, "-mig-1g12gb-") {
		t.Errorf("mig-1g12gb-pod, allocated %s: nvidia-smi -L printed %q, want its GH200 and a MIG 1g.12gb under it", device, lines)
	}
	t.Logf("mig-1g-12gb ran on the GH200s at %s", time.Since(start).Round(time.Second))
}
