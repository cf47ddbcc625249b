//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

func TestSlicesAndClassesArePublished(t *testing.T) {
	// A test before may have restarted the plugin: its pool may still be
	// on its way to the API server.
	eventually(t, 30*time.Second, "the node's pool published", func() (bool, error) {
		slices, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeName})
		if err != nil {
			return false, err
		}
		devices, counterSets := 0, 0
		for _, s := range slices.Items {
			if s.Spec.Driver != "gpu.nvidia.com" {
				continue
			}
			devices += len(s.Spec.Devices)
			counterSets += len(s.Spec.SharedCounters)
		}
		// A DGX H100: 8 GPUs, each whole, shared and at 25 MIG placements,
		// one counter set each.
		return devices == 216 && counterSets == 8 && len(slices.Items) == 5,
			fmt.Errorf("got %d slices, %d devices, %d counter sets; want 5, 216, 8", len(slices.Items), devices, counterSets)
	})
	for _, name := range []string{"gpu.nvidia.com", "mig.nvidia.com", "shared.gpu.nvidia.com"} {
		if _, err := client.ResourceV1().DeviceClasses().Get(ctx(), name, metav1.GetOptions{}); err != nil {
			t.Errorf("DeviceClass %s: %v", name, err)
		}
	}
}

func applyDemo(t *testing.T, dir string) {
	t.Helper()
	kubectl(t, "apply", "-f", filepath.Join(repoRoot, "demo", dir))
}

func TestWholeGPU(t *testing.T) {
	t.Cleanup(func() { cleanNamespace(t, "gpu-demo") })
	applyDemo(t, "whole-gpu")
	pod := waitPodRunning(t, "gpu-demo", "whole-gpu")
	claim := claimOf(t, pod, "gpu")
	res := claim.Status.Allocation.Devices.Results
	if len(res) != 1 || !strings.HasPrefix(res[0].Device, "gpu-") || strings.Contains(res[0].Device, "mig") {
		t.Fatalf("allocation %+v", res)
	}
	uuid := gpuUUIDs(t)[res[0].Device]
	minor := strings.TrimPrefix(res[0].Device, "gpu-")
	log := podLogs(t, "gpu-demo", "whole-gpu", "GPU_DRA_DEVICE_UUIDS=")
	for _, want := range []string{"GPU_DRA_DEVICE_UUIDS=" + uuid, "/dev/nvidia" + minor, "/dev/nvidiactl"} {
		if !strings.Contains(log, want) {
			t.Errorf("container output lacks %q:\n%s", want, log)
		}
	}
}

func TestMIGDeviceLifecycle(t *testing.T) {
	t.Cleanup(func() { cleanNamespace(t, "gpu-demo") })
	before := migCount(t)
	applyDemo(t, "mig")
	pod := waitPodRunning(t, "gpu-demo", "mig-1g")
	claim := claimOf(t, pod, "mig")
	dev := claim.Status.Allocation.Devices.Results[0].Device
	// gpu-<minor>-mig-1g10gb-<start>
	var minor, start int
	if _, err := fmt.Sscanf(dev, "gpu-%d-mig-1g10gb-%d", &minor, &start); err != nil {
		t.Fatalf("allocated %q: %v", dev, err)
	}
	var uuid string
	for _, gi := range simState(t).GPUs[minor].GPUInstances {
		if gi.Start == start && gi.ProfileID == 0 && len(gi.ComputeInstances) == 1 {
			uuid = gi.ComputeInstances[0].UUID
		}
	}
	if uuid == "" {
		t.Fatalf("no 1g.10gb instance at %d on GPU %d: %+v", start, minor, simState(t).GPUs[minor])
	}
	log := podLogs(t, "gpu-demo", "mig-1g", "GPU_DRA_DEVICE_UUIDS=")
	if !strings.Contains(log, "GPU_DRA_DEVICE_UUIDS="+uuid) || !strings.Contains(log, "nvidia-cap") {
		t.Errorf("container output lacks the MIG UUID %s or its capability nodes:\n%s", uuid, log)
	}
	spec := filepath.Join(runDir, "cdi", "k8s.gpu.nvidia.com-claim_"+string(claim.UID)+".json")
	if _, err := os.Stat(spec); err != nil {
		t.Fatalf("CDI spec: %v", err)
	}
	checkCapNodes(t, spec)
	kubectl(t, "delete", "pod", "-n", "gpu-demo", "mig-1g", "--wait=true")
	eventually(t, 60*time.Second, "MIG device destroyed and CDI spec removed", func() (bool, error) {
		_, err := os.Stat(spec)
		return migCount(t) == before && os.IsNotExist(err), fmt.Errorf("%d MIG devices, spec: %w", migCount(t), err)
	})
}

// checkCapNodes checks that a MIG device's spec numbers its capability
// nodes from the kernel's files, as on a GPU node where NVML made no
// /dev/nvidia-caps node for the new instance: major of nvidia-caps in the
// simulated proc/devices, and no node under the simulated /dev.
func checkCapNodes(t *testing.T, specPath string) {
	t.Helper()
	data, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Devices []struct {
			ContainerEdits struct {
				DeviceNodes []struct {
					Path         string
					Major, Minor int64
				}
			}
		}
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	caps := 0
	for _, d := range spec.Devices {
		for _, n := range d.ContainerEdits.DeviceNodes {
			if !strings.HasPrefix(n.Path, "/dev/nvidia-caps/") {
				continue
			}
			caps++
			if n.Major != simhost.CapsMajor || n.Path != fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", n.Minor) {
				t.Errorf("capability node %s is %d:%d, want major %d (nvidia-caps) and its own minor", n.Path, n.Major, n.Minor, simhost.CapsMajor)
			}
			if _, err := os.Lstat(filepath.Join(runDir, "sim/host/dev", n.Path)); !os.IsNotExist(err) {
				t.Errorf("the simulated /dev has %s (%v): NVML makes none, the spec must not need it", n.Path, err)
			}
		}
	}
	if caps != 2 {
		t.Errorf("%d capability nodes in %s, want 2 (GPU and compute instance)", caps, specPath)
	}
}

func applyYAML(t *testing.T, yaml string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "obj.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	kubectl(t, "apply", "-f", f)
}

func TestEightGPUsFillTheNodeAndANinthWaits(t *testing.T) {
	t.Cleanup(func() { cleanNamespace(t, "gpu-fill") })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: gpu-fill}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: one-gpu, namespace: gpu-fill}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}}
`)
	var all strings.Builder
	for i := 0; i < 8; i++ {
		all.WriteString(claimPod("gpu-fill", fmt.Sprintf("fill-%d", i), "one-gpu"))
	}
	applyYAML(t, all.String())
	seen := map[string]bool{}
	for i := 0; i < 8; i++ {
		pod := waitPodRunning(t, "gpu-fill", fmt.Sprintf("fill-%d", i))
		seen[claimOf(t, pod, "gpu").Status.Allocation.Devices.Results[0].Device] = true
	}
	if len(seen) != 8 {
		t.Fatalf("8 pods got %d distinct GPUs", len(seen))
	}
	applyYAML(t, claimPod("gpu-fill", "fill-8", "one-gpu"))
	eventually(t, 60*time.Second, "the ninth pod to be unschedulable", func() (bool, error) {
		p, err := client.CoreV1().Pods("gpu-fill").Get(ctx(), "fill-8", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
				t.Logf("scheduler: %s", c.Message)
				return strings.Contains(c.Message, "cannot allocate all claims") || strings.Contains(c.Message, "claim"), fmt.Errorf("message %q", c.Message)
			}
		}
		return false, fmt.Errorf("conditions %+v", p.Status.Conditions)
	})
	kubectl(t, "delete", "pod", "-n", "gpu-fill", "fill-3", "--wait=true")
	waitPodRunning(t, "gpu-fill", "fill-8")
}

func TestFirstAvailableFallsThrough(t *testing.T) {
	t.Cleanup(func() { cleanNamespace(t, "gpu-demo") })
	applyDemo(t, "prioritized-list")
	waitPodRunning(t, "gpu-demo", "prioritized")
	c, err := client.ResourceV1().ResourceClaims("gpu-demo").Get(ctx(), "prioritized", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The node has no A100: the second alternative is used.
	if got := c.Status.Allocation.Devices.Results[0].Request; got != "gpu/h100" {
		t.Fatalf("request %q, want gpu/h100", got)
	}
}

func TestSharedClaimAndDeployment(t *testing.T) {
	t.Cleanup(func() { cleanNamespace(t, "gpu-demo") })
	applyDemo(t, "shared-claim")
	a := waitPodRunning(t, "gpu-demo", "shared-a")
	waitPodRunning(t, "gpu-demo", "shared-b")
	dev := claimOf(t, a, "gpu").Status.Allocation.Devices.Results[0].Device
	uuid := gpuUUIDs(t)[dev]
	for _, p := range []string{"shared-a", "shared-b"} {
		podLogs(t, "gpu-demo", p, "GPU_DRA_DEVICE_UUIDS="+uuid)
	}

	applyYAML(t, `apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: replica-gpu, namespace: gpu-demo}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: replicas, namespace: gpu-demo}
spec:
  replicas: 3
  selector: {matchLabels: {app: replicas}}
  template:
    metadata: {labels: {app: replicas}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: ctr
        image: busybox:local
        imagePullPolicy: Never
        command: ["sh", "-c", "echo GPU_DRA_DEVICE_UUIDS=$GPU_DRA_DEVICE_UUIDS; sleep 3600"]
        resources: {claims: [{name: gpu}]}
      resourceClaims:
      - {name: gpu, resourceClaimTemplateName: replica-gpu}
`)
	eventually(t, 120*time.Second, "3 replicas running on 3 distinct GPUs", func() (bool, error) {
		pods, err := client.CoreV1().Pods("gpu-demo").List(ctx(), metav1.ListOptions{LabelSelector: "app=replicas"})
		if err != nil {
			return false, err
		}
		devs := map[string]bool{}
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.Status.Phase != corev1.PodRunning {
				return false, fmt.Errorf("%s is %s", p.Name, p.Status.Phase)
			}
			devs[claimOf(t, p, "gpu").Status.Allocation.Devices.Results[0].Device] = true
		}
		return len(pods.Items) == 3 && len(devs) == 3 && !devs[dev], fmt.Errorf("%d pods on %v", len(pods.Items), devs)
	})
}

// TestOneClaimOfSeveralRequests: a claim of a 1g and a 2g MIG device on one
// GPU (matchAttribute parentUUID), as users write for NVIDIA's driver, and
// a second claim of a whole GPU, all in one container: it gets every
// device's nodes and no CUDA_VISIBLE_DEVICES that would hide some from
// CUDA; GPU_DRA_DEVICE_UUIDS names the devices of one of its requests
// (the runtime keeps a variable's last value), never another container's;
// NVIDIA_VISIBLE_DEVICES, set to "all" by the pod as CUDA images set it, is
// "void" for the NVIDIA runtime's legacy hook. A container given one
// request of the MIG claim gets that request's capability nodes only.
func TestOneClaimOfSeveralRequests(t *testing.T) {
	const ns = "gpu-requests"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: gpu-requests}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: mig-pair, namespace: gpu-requests}
spec:
  spec:
    devices:
      requests:
      - {name: small, exactly: {deviceClassName: mig.nvidia.com, selectors: [{cel: {expression: "device.attributes['gpu.nvidia.com'].profile == '1g.10gb'"}}]}}
      - {name: large, exactly: {deviceClassName: mig.nvidia.com, selectors: [{cel: {expression: "device.attributes['gpu.nvidia.com'].profile == '2g.20gb'"}}]}}
      constraints:
      - {requests: [small, large], matchAttribute: gpu.nvidia.com/parentUUID}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: whole, namespace: gpu-requests}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}}
---
apiVersion: v1
kind: Pod
metadata: {name: several, namespace: gpu-requests}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: all
    image: busybox:local
    imagePullPolicy: Never
    command: ["sh", "-c", "echo GPU_DRA_DEVICE_UUIDS=$GPU_DRA_DEVICE_UUIDS; echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; echo NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES; ls /dev /dev/nvidia-caps; sleep 3600"]
    env: [{name: NVIDIA_VISIBLE_DEVICES, value: all}]
    resources: {claims: [{name: mig}, {name: gpu}]}
  - name: small-only
    image: busybox:local
    imagePullPolicy: Never
    command: ["sh", "-c", "echo GPU_DRA_DEVICE_UUIDS=$GPU_DRA_DEVICE_UUIDS; ls /dev/nvidia-caps; sleep 3600"]
    resources: {claims: [{name: mig, request: small}]}
  resourceClaims:
  - {name: mig, resourceClaimTemplateName: mig-pair}
  - {name: gpu, resourceClaimTemplateName: whole}
`)
	pod := waitPodRunning(t, ns, "several")
	mig := claimOf(t, pod, "mig").Status.Allocation.Devices.Results
	whole := claimOf(t, pod, "gpu").Status.Allocation.Devices.Results
	if len(mig) != 2 || len(whole) != 1 {
		t.Fatalf("allocated %d MIG devices and %d GPUs", len(mig), len(whole))
	}
	log := podLogsOf(t, ns, "several", "all", "GPU_DRA_DEVICE_UUIDS=")
	gpuMinor := strings.TrimPrefix(whole[0].Device, "gpu-")
	parentMinor := strings.SplitN(strings.TrimPrefix(mig[0].Device, "gpu-"), "-", 2)[0]
	for _, want := range []string{"nvidia" + gpuMinor, "nvidia" + parentMinor} {
		if !regexp.MustCompile("(?m)^" + want + "$").MatchString(log) {
			t.Errorf("the container lacks /dev/%s:\n%s", want, log)
		}
	}
	caps := regexp.MustCompile(`(?m)^nvidia-cap[0-9]+$`)
	small := podLogsOf(t, ns, "several", "small-only", "GPU_DRA_DEVICE_UUIDS=")
	if all, one := len(caps.FindAllString(log, -1)), len(caps.FindAllString(small, -1)); all-one != 2 || one < 2 {
		t.Errorf("MIG capability nodes: %d in the container of both MIG devices, %d in that of one; want 2 more (the GPU and compute instance of the other):\n%s\n%s", all, one, log, small)
	}
	if !strings.Contains(log, "CUDA_VISIBLE_DEVICES=\n") {
		t.Errorf("CUDA_VISIBLE_DEVICES is set, hiding devices from CUDA:\n%s", log)
	}
	// "all", as CUDA images set it, would make the NVIDIA runtime's legacy
	// hook inject every GPU of the node.
	if !strings.Contains(log, "NVIDIA_VISIBLE_DEVICES=void\n") {
		t.Errorf("NVIDIA_VISIBLE_DEVICES is not void: the NVIDIA runtime in legacy mode would inject GPUs:\n%s", log)
	}
	// Each variable names the devices of one request the container has.
	visible := regexp.MustCompile(`GPU_DRA_DEVICE_UUIDS=(\S*)`).FindStringSubmatch(log)[1]
	wholeUUID := gpuUUIDs(t)[whole[0].Device]
	if visible != wholeUUID && (strings.Contains(visible, ",") || !strings.HasPrefix(visible, "MIG-")) {
		t.Errorf("GPU_DRA_DEVICE_UUIDS=%s: not the whole GPU %s nor one MIG device", visible, wholeUUID)
	}
	smallVisible := regexp.MustCompile(`GPU_DRA_DEVICE_UUIDS=(\S*)`).FindStringSubmatch(small)[1]
	if strings.Contains(smallVisible, ",") || !strings.HasPrefix(smallVisible, "MIG-") {
		t.Errorf("the container of request small: GPU_DRA_DEVICE_UUIDS=%s, want its one MIG device", smallVisible)
	}
}
