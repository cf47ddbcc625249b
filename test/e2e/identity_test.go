//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	statusv1 "github.com/gpu-dra/gpu-dra-driver/api/status/v1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// identityTemplates are one claim template per way of getting a GPU: a
// whole GPU, a MIG device, a share of a shared GPU, a whole GPU shared
// through MPS, and two GPUs on one PCIe root.
const identityTemplates = `---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: whole, namespace: gpu-identity}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: mig, namespace: gpu-identity}
spec:
  spec:
    devices:
      requests:
      - name: mig
        exactly:
          deviceClassName: mig.nvidia.com
          selectors: [{cel: {expression: 'device.attributes["gpu.nvidia.com"].profile == "1g.10gb"'}}]
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: share, namespace: gpu-identity}
spec:
  spec:
    devices:
      requests:
      - name: share
        exactly: {deviceClassName: shared.gpu.nvidia.com, capacity: {requests: {memory: 8Gi, compute: "25"}}}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: mps, namespace: gpu-identity}
spec:
  spec:
    devices:
      requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]
      config:
      - requests: [gpu]
        opaque:
          driver: gpu.nvidia.com
          parameters:
            apiVersion: resource.nvidia.com/v1beta1
            kind: GpuConfig
            sharing: {strategy: MPS, mpsConfig: {defaultActiveThreadPercentage: 50}}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: pcie-pair, namespace: gpu-identity}
spec:
  spec:
    devices:
      requests: [{name: gpus, exactly: {deviceClassName: gpu.nvidia.com, count: 2}}]
      constraints: [{matchAttribute: resource.kubernetes.io/pcieRoot}]
`

// TestClaimStatusAndPodResourcesNameWhatContainersSee runs a pod for every
// way of getting a GPU and checks, for each, that the claim's
// status.devices (written by the plugin) names exactly the UUIDs the
// container saw in GPU_DRA_DEVICE_UUIDS, written by the time the
// container started (to the API's second), and that a PodResources client,
// as dcgm-exporter uses, resolves every device of every container to
// those UUIDs through the claim status.
func TestClaimStatusAndPodResourcesNameWhatContainersSee(t *testing.T) {
	const ns = "gpu-identity"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	t.Cleanup(func() {
		if t.Failed() {
			p := pluginPod(t)
			out, _ := kubectlErr("logs", "-n", p.Namespace, p.Name, "--tail=200")
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, "status") || strings.Contains(line, "rror") {
					t.Log("plugin: " + line)
				}
			}
		}
	})
	pods := map[string]string{"whole": "whole", "mig": "mig", "share-a": "share", "share-b": "share", "mps": "mps", "pair": "pcie-pair"}
	manifest := "apiVersion: v1\nkind: Namespace\nmetadata: {name: " + ns + "}\n" + identityTemplates
	var podNames []string
	for pod, template := range pods {
		manifest += claimPod(ns, pod, template)
		podNames = append(podNames, pod)
	}
	sort.Strings(podNames)
	applyYAML(t, manifest)

	seen := map[string][]string{} // pod -> UUIDs in its container
	claims := map[string]*resourceapi.ResourceClaim{}
	for _, name := range podNames {
		pod := waitPodRunning(t, ns, name)
		log := podLogs(t, ns, name, "GPU_DRA_DEVICE_UUIDS=")
		line := log[strings.Index(log, "GPU_DRA_DEVICE_UUIDS=")+len("GPU_DRA_DEVICE_UUIDS="):]
		line, _, _ = strings.Cut(line, "\n")
		seen[name] = sortedSplit(line)
		started := containerStarted(pod)

		var claim *resourceapi.ResourceClaim
		eventually(t, 10*time.Second, "status.devices of "+name+"'s claim", func() (bool, error) {
			claim = claimOf(t, pod, "gpu")
			got, err := statusUUIDs(claim)
			return err == nil && slices.Equal(got, seen[name]), fmt.Errorf("status names %v, the container saw %v: %w", got, seen[name], err)
		})
		claims[name] = claim
		for _, e := range ours(claim) {
			if c := condition(e, statusv1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue {
				t.Errorf("%s: %s has Ready %+v", name, e.Device, c)
			}
			if c := condition(e, statusv1.ConditionHealthy); c == nil || c.Status != metav1.ConditionTrue {
				t.Errorf("%s: %s has Healthy %+v", name, e.Device, c)
			}
		}
		if w := statusWritten(claim); w.IsZero() || w.After(started.Add(time.Second)) {
			t.Errorf("%s: status written at %v, container started at %v: want within 1 s", name, w, started)
		}
	}

	// Two GPUs on one PCIe root, as published.
	var roots []string
	for _, r := range claims["pair"].Status.Allocation.Devices.Results {
		roots = append(roots, publishedAttr(t, r.Device, names.AttrPCIeRoot))
	}
	if len(roots) != 2 || roots[0] == "" || roots[0] != roots[1] {
		t.Errorf("pcie-pair got GPUs on roots %v, want one root", roots)
	}

	// PodResources, joined with the claims' status.
	resolved := podResourcesUUIDs(t, ns)
	for _, name := range podNames {
		if got := resolved[name+"/ctr"]; !slices.Equal(got, seen[name]) {
			t.Errorf("PodResources resolves %s/ctr to %v, the container saw %v", name, got, seen[name])
		}
	}
}

func sortedSplit(s string) []string {
	var out []string
	for _, p := range strings.Split(strings.TrimSpace(s), ",") {
		if p != "" {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// ours returns the plugin's entries of a claim's status.devices.
func ours(c *resourceapi.ResourceClaim) []resourceapi.AllocatedDeviceStatus {
	var out []resourceapi.AllocatedDeviceStatus
	for _, e := range c.Status.Devices {
		if e.Driver == names.DriverName {
			out = append(out, e)
		}
	}
	return out
}

// statusUUIDs are the UUIDs the claim's status names: a MIG device's, or
// the GPU's.
func statusUUIDs(c *resourceapi.ResourceClaim) ([]string, error) {
	var out []string
	for _, e := range ours(c) {
		u, err := entryUUID(e)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	sort.Strings(out)
	return out, nil
}

func entryUUID(e resourceapi.AllocatedDeviceStatus) (string, error) {
	if e.Data == nil {
		return "", fmt.Errorf("%s has no data", e.Device)
	}
	d, err := statusv1.Decode(e.Data.Raw)
	if err != nil {
		return "", err
	}
	if d.MIG != nil {
		return d.MIG.UUID, nil
	}
	return d.GPU.UUID, nil
}

func condition(e resourceapi.AllocatedDeviceStatus, typ string) *metav1.Condition {
	for i := range e.Conditions {
		if e.Conditions[i].Type == typ {
			return &e.Conditions[i]
		}
	}
	return nil
}

// statusWritten is when the plugin's field manager last wrote the status.
func statusWritten(c *resourceapi.ResourceClaim) time.Time {
	for _, m := range c.ManagedFields {
		if m.Manager == names.StatusFieldManager && m.Subresource == "status" && m.Time != nil {
			return m.Time.Time
		}
	}
	return time.Time{}
}

func containerStarted(p *corev1.Pod) time.Time {
	for _, s := range p.Status.ContainerStatuses {
		if s.State.Running != nil {
			return s.State.Running.StartedAt.Time
		}
	}
	return time.Time{}
}

// publishedAttr is a string attribute of one of the node's devices.
func publishedAttr(t *testing.T, device string, attr resourceapi.QualifiedName) string {
	t.Helper()
	list, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list.Items {
		if s.Spec.Driver != names.DriverName {
			continue
		}
		for _, d := range s.Spec.Devices {
			if a, ok := d.Attributes[attr]; ok && d.Name == device && a.StringValue != nil {
				return *a.StringValue
			}
		}
	}
	return ""
}

// podResourcesUUIDs lists the kubelet's PodResources (as dcgm-exporter
// does) and maps every container of the namespace's pods to the UUIDs of
// its devices of our driver, through the claims' status.devices. A device
// that cannot be resolved fails the test.
func podResourcesUUIDs(t *testing.T, ns string) map[string][]string {
	t.Helper()
	socket := filepath.Join(runDir, "kubelet/pod-resources/kubelet.sock")
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("connect to the kubelet's PodResources socket %s: %v", socket, err)
	}
	defer conn.Close()
	c, cancel := context.WithTimeout(ctx(), 10*time.Second)
	defer cancel()
	resp, err := podresourcesv1.NewPodResourcesListerClient(conn).List(c, &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		t.Fatalf("PodResources List: %v", err)
	}
	out := map[string][]string{}
	devices, unresolved := 0, 0
	for _, p := range resp.GetPodResources() {
		if p.GetNamespace() != ns {
			continue
		}
		for _, ctr := range p.GetContainers() {
			var uuids []string
			for _, dr := range ctr.GetDynamicResources() {
				claim, err := client.ResourceV1().ResourceClaims(dr.GetClaimNamespace()).Get(ctx(), dr.GetClaimName(), metav1.GetOptions{})
				if err != nil {
					t.Errorf("%s/%s: claim %s/%s: %v", p.GetName(), ctr.GetName(), dr.GetClaimNamespace(), dr.GetClaimName(), err)
					continue
				}
				for _, cr := range dr.GetClaimResources() {
					if cr.GetDriverName() != names.DriverName {
						continue
					}
					devices++
					u, ok := resolve(claim, cr)
					if !ok {
						unresolved++
						t.Errorf("%s/%s: device %s/%s (share %q) of claim %s not in its status.devices", p.GetName(), ctr.GetName(),
							cr.GetPoolName(), cr.GetDeviceName(), cr.GetShareId(), claim.Name)
						continue
					}
					uuids = append(uuids, u)
				}
			}
			sort.Strings(uuids)
			out[p.GetName()+"/"+ctr.GetName()] = uuids
		}
	}
	t.Logf("PodResources: %d devices of %s, %d unresolved", devices, names.DriverName, unresolved)
	if devices == 0 {
		t.Error("PodResources reported no device of the driver")
	}
	return out
}

// resolve finds a PodResources claim resource in the claim's status.
func resolve(claim *resourceapi.ResourceClaim, cr *podresourcesv1.ClaimResource) (string, bool) {
	for _, e := range ours(claim) {
		share := ""
		if e.ShareID != nil {
			share = *e.ShareID
		}
		if e.Pool == cr.GetPoolName() && e.Device == cr.GetDeviceName() && share == cr.GetShareId() {
			u, err := entryUUID(e)
			return u, err == nil
		}
	}
	return "", false
}

// TestHealthChangesReachClaimStatusAndEvents heats a prepared GPU: the
// claim's Healthy condition names the thermal condition, the plugin
// records a node Event for the GPU's taint, and kubectl gpu describe shows
// both; when the GPU cools, the condition's message clears and a removal
// Event follows.
func TestHealthChangesReachClaimStatusAndEvents(t *testing.T) {
	const ns = "gpu-health"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, healthNamespace+claimPod(ns, "warm-status", "whole"))
	pod := waitPodRunning(t, ns, "warm-status")
	dev := claimOf(t, pod, "gpu").Status.Allocation.Devices.Results[0].Device
	var minor int
	if _, err := fmt.Sscanf(dev, "gpu-%d", &minor); err != nil {
		t.Fatalf("allocated %q: %v", dev, err)
	}
	healthy := func() *metav1.Condition {
		for _, e := range ours(claimOf(t, pod, "gpu")) {
			if c := condition(e, statusv1.ConditionHealthy); c != nil {
				return c
			}
		}
		return nil
	}
	gpuSim(t, "temperature", fmt.Sprint(minor), "90")
	t.Cleanup(func() { gpuSim(t, "temperature", fmt.Sprint(minor), "40") })
	eventually(t, 30*time.Second, "the Healthy condition naming the thermal condition", func() (bool, error) {
		c := healthy()
		return c != nil && c.Status == metav1.ConditionTrue && strings.Contains(c.Message, "thermal"), fmt.Errorf("Healthy %+v", c)
	})
	events := func(reason string) int {
		list, err := client.CoreV1().Events("").List(ctx(), metav1.ListOptions{FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + nodeName})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range list.Items {
			if m, _, ok := names.ParseGPUEventMessage(e.Message); ok && m == minor && e.Reason == reason {
				n++
			}
		}
		return n
	}
	eventually(t, 30*time.Second, "a GPUHealthTaintAdded Event for the GPU", func() (bool, error) {
		return events(names.EventHealthTaintAdded) > 0, nil
	})
	out, stderr, code := runKubectlGPU(t, buildKubectlGPU(t), "describe", fmt.Sprintf("%s/gpu-%d", nodeName, minor))
	if code != 0 {
		t.Fatalf("kubectl gpu describe: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"gpu.nvidia.com/thermal", names.EventHealthTaintAdded, "Ready=True (Prepared"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl gpu describe lacks %q:\n%s", want, out)
		}
	}
	gpuSim(t, "temperature", fmt.Sprint(minor), "40")
	eventually(t, 60*time.Second, "the Healthy condition clear of the thermal condition", func() (bool, error) {
		c := healthy()
		return c != nil && !strings.Contains(c.Message, "thermal"), fmt.Errorf("Healthy %+v", c)
	})
	eventually(t, 30*time.Second, "a GPUHealthTaintRemoved Event for the GPU", func() (bool, error) {
		return events(names.EventHealthTaintRemoved) > 0, nil
	})
}
