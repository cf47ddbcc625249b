//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// nvidiaSpec applies one of NVIDIA's consumable shares test specs
// (testdata/nvidia-gpu-consumable-shares-*.yaml) in ns, as it is but for
// the image, which the local cluster has under its own name (with bash and
// the simulated driver's nvidia-smi). It returns the spec's path.
func nvidiaSpec(t *testing.T, ns, kind string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "test/e2e/testdata/nvidia-gpu-consumable-shares-"+kind+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	spec := string(data)
	for old, repl := range map[string]string{"image: ubuntu:24.04": "image: busybox:local"} {
		if strings.Count(spec, old) != 2 {
			t.Fatalf("NVIDIA's %s spec has %d of %q, want 2 (one per pod)", kind, strings.Count(spec, old), old)
		}
		spec = strings.ReplaceAll(spec, old, repl)
	}
	f := filepath.Join(t.TempDir(), kind+".yaml")
	if err := os.WriteFile(f, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	kubectl(t, "apply", "-n", ns, "-f", f)
	return f
}

// sharesOf returns the allocation results of the two pods' claims, named
// as NVIDIA's spec names them (pod-share-<kind>-0 and -1), once both run,
// and checks that each container saw its claim's GPU ("nvidia-smi -L").
func sharesOf(t *testing.T, ns, kind string, uuids map[string]string) [2]resourceapi.DeviceRequestAllocationResult {
	t.Helper()
	var out [2]resourceapi.DeviceRequestAllocationResult
	for i := range out {
		pod := waitPodRunning(t, ns, fmt.Sprintf("pod-share-%s-%d", kind, i))
		c := claimOf(t, pod, "gpu")
		if c.Status.Allocation == nil || len(c.Status.Allocation.Devices.Results) != 1 {
			t.Fatalf("claim of %s: allocation %+v", pod.Name, c.Status.Allocation)
		}
		out[i] = c.Status.Allocation.Devices.Results[0]
		uuid := uuids[out[i].Device]
		if uuid == "" {
			t.Fatalf("%s got %s, not a whole GPU", pod.Name, out[i].Device)
		}
		podLogs(t, ns, pod.Name, "(UUID: "+uuid+")\n")
	}
	return out
}

// consumableGPU0 waits until the node publishes gpu-0 as allowing multiple
// allocations (want) or not.
func consumableGPU0(t *testing.T, want bool) {
	t.Helper()
	eventually(t, 60*time.Second, fmt.Sprintf("gpu-0 allowing multiple allocations: %v", want), func() (bool, error) {
		for _, s := range waitPoolCompleteOn(t, nodeName) {
			for _, d := range s.Spec.Devices {
				if d.Name == "gpu-0" {
					got := d.AllowMultipleAllocations != nil && *d.AllowMultipleAllocations
					return got == want, fmt.Errorf("allowMultipleAllocations %v, capacity %v", got, d.Capacity)
				}
			}
		}
		return false, fmt.Errorf("gpu-0 not published")
	})
}

// TestNVIDIAConsumableSharesSpecs runs NVIDIA's own consumable shares
// test specs (its tests/bats/test_gpu_consumable_shares.bats runs them
// with --consumable-shares=4) on this driver. With the node labelled
// gpu.nvidia.com/consumable-shares=4, both pods of each spec get the same
// GPU, each its own share of it; the memory spec's 2Gi shares each run
// under their claim's MPS daemon with a 2048 MiB pinned memory limit.
// Without the setting (the default) the memory spec's pods get a whole
// GPU each, and the shares spec's pods are unschedulable (whole GPUs have
// no "shares").
func TestNVIDIAConsumableSharesSpecs(t *testing.T) {
	const ns = "gpu-consumable-shares"
	t.Cleanup(func() {
		cleanNamespace(t, ns)
		kubectlErr("label", "node", nodeName, "gpu.nvidia.com/consumable-shares-")
	})
	applyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")
	uuids := gpuUUIDs(t)
	consumableGPU0(t, false)

	// Off: exclusive whole GPUs.
	spec := nvidiaSpec(t, ns, "memory")
	off := sharesOf(t, ns, "memory", uuids)
	if off[0].Device == off[1].Device || off[0].ShareID != nil || off[1].ShareID != nil {
		t.Errorf("consumable shares off: the memory spec's claims got %s (share %v) and %s (share %v), want two whole GPUs",
			off[0].Device, off[0].ShareID, off[1].Device, off[1].ShareID)
	}
	kubectl(t, "delete", "-n", ns, "-f", spec, "--wait=true")
	spec = nvidiaSpec(t, ns, "integer")
	t.Logf("consumable shares off, NVIDIA's shares spec: %s", unschedulable(t, ns, "pod-share-integer-0"))
	kubectl(t, "delete", "-n", ns, "-f", spec, "--wait=true")

	// On, four shares a GPU, as NVIDIA's test runs its driver.
	kubectl(t, "label", "node", nodeName, "gpu.nvidia.com/consumable-shares=4", "--overwrite")
	consumableGPU0(t, true)
	for _, kind := range []string{"integer", "memory"} {
		spec := nvidiaSpec(t, ns, kind)
		on := sharesOf(t, ns, kind, uuids)
		if on[0].Device != on[1].Device || on[0].ShareID == nil || on[1].ShareID == nil || *on[0].ShareID == *on[1].ShareID {
			t.Errorf("consumable shares on: the %s spec's claims got %s (share %v) and %s (share %v), want two shares of the same GPU",
				kind, on[0].Device, on[0].ShareID, on[1].Device, on[1].ShareID)
		}
		want := map[string]string{"integer": "1", "memory": "2Gi"}[kind]
		capacity := map[string]resourceapi.QualifiedName{"integer": "shares", "memory": "memory"}[kind]
		for i, r := range on {
			if q, ok := r.ConsumedCapacity[capacity]; !ok || q.String() != want {
				t.Errorf("%s spec, claim %d consumed %v, want %s %s", kind, i, r.ConsumedCapacity, capacity, want)
			}
		}
		if kind == "memory" {
			// Each claim's own daemon enforces its 2Gi.
			for i := range on {
				pod, err := client.CoreV1().Pods(ns).Get(ctx(), fmt.Sprintf("pod-share-memory-%d", i), metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				uid := string(claimOf(t, pod, "gpu").UID)
				if mpsDaemonEventsOf("start", uid) != 1 || !strings.Contains(mpsLogText(), "pipe="+runDir+"/kubelet/plugins/gpu.nvidia.com/mps/"+uid+"/pipe pinned_device_mem_limit=0=2048M") {
					t.Errorf("claim %s has no MPS daemon started once with a 2048 MiB limit:\n%s", uid, mpsLogText())
				}
			}
		}
		kubectl(t, "delete", "-n", ns, "-f", spec, "--wait=true")
	}
	waitNoClaims(t, ns)
	kubectl(t, "label", "node", nodeName, "gpu.nvidia.com/consumable-shares-")
	consumableGPU0(t, false)
}

// waitNoClaims waits until the namespace's claims are gone (their pods
// deleted, the controller deletes them, the kubelet has unprepared them).
func waitNoClaims(t *testing.T, ns string) {
	t.Helper()
	eventually(t, 60*time.Second, "the claims of "+ns+" gone", func() (bool, error) {
		l, err := client.ResourceV1().ResourceClaims(ns).List(ctx(), metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		return len(l.Items) == 0, fmt.Errorf("%d claims left", len(l.Items))
	})
}

// TestNVIDIAConsumableSharesDemos applies NVIDIA's consumable shares demos
// (demo/specs/consumable-shares: a Deployment per mode, unchanged but for
// the image), each with the node in the mode NVIDIA's README runs it with
// (--consumable-shares=unlimited, memory, 4; here the node label). As the
// README says, every replica's claim gets a share of a whole GPU, and the
// replicas share it: they all land on one GPU, each with its own share,
// consuming what the mode gives a claim that asks for nothing (unlimited:
// no memory; integer: one share) or what it asks (memory: 4Gi). Each
// container sees its GPU (nvidia-smi -L).
func TestNVIDIAConsumableSharesDemos(t *testing.T) {
	uuids := gpuUUIDs(t)
	for _, tc := range []struct {
		mode, file, ns, app string
		// consumed is what each claim consumes, by capacity.
		consumed map[resourceapi.QualifiedName]string
	}{
		{"unlimited", "unlimited-sharing.yaml", "gpu-share-unlimited", "unlimited-sharing", map[resourceapi.QualifiedName]string{"memory": "0"}},
		{"memory", "memory-sharing.yaml", "gpu-share-memory", "memory-sharing", map[resourceapi.QualifiedName]string{"memory": "4Gi"}},
		{"4", "integer-sharing.yaml", "gpu-share-integer", "integer-sharing", map[resourceapi.QualifiedName]string{"shares": "1"}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Cleanup(func() {
				// The demo's containers run bash as PID 1, which ignores
				// SIGTERM: stop them at once, not after the default 30 s.
				kubectlErr("delete", "deployment,replicaset", "--all", "-n", tc.ns, "--cascade=orphan")
				kubectlErr("delete", "pods", "--all", "-n", tc.ns, "--grace-period=1")
				cleanNamespace(t, tc.ns)
				kubectlErr("label", "node", nodeName, "gpu.nvidia.com/consumable-shares-")
				consumableGPU0(t, false)
			})
			kubectl(t, "label", "node", nodeName, "gpu.nvidia.com/consumable-shares="+tc.mode, "--overwrite")
			consumableGPU0(t, true)
			applyYAML(t, nvidiaManifest(t, "dra-driver-nvidia-gpu/demo/specs/consumable-shares/"+tc.file, tc.ns))
			var replicas int32
			eventually(t, 90*time.Second, "the demo's replicas ready", func() (bool, error) {
				d, err := client.AppsV1().Deployments(tc.ns).Get(ctx(), tc.app, metav1.GetOptions{})
				if err != nil {
					return false, err
				}
				replicas = *d.Spec.Replicas
				return d.Status.ReadyReplicas == replicas, fmt.Errorf("%d of %d replicas ready", d.Status.ReadyReplicas, replicas)
			})
			pods, err := client.CoreV1().Pods(tc.ns).List(ctx(), metav1.ListOptions{LabelSelector: "app=" + tc.app})
			if err != nil {
				t.Fatal(err)
			}
			devices, shares := map[string]bool{}, map[string]bool{}
			for _, pod := range pods.Items {
				if pod.DeletionTimestamp != nil {
					continue
				}
				c := claimOf(t, &pod, "gpu")
				if c.Status.Allocation == nil || len(c.Status.Allocation.Devices.Results) != 1 {
					t.Fatalf("claim of %s: allocation %+v", pod.Name, c.Status.Allocation)
				}
				r := c.Status.Allocation.Devices.Results[0]
				if uuids[r.Device] == "" || r.ShareID == nil {
					t.Fatalf("%s got %s (share %v), want a share of a whole GPU", pod.Name, r.Device, r.ShareID)
				}
				devices[r.Device], shares[string(*r.ShareID)] = true, true
				for name, want := range tc.consumed {
					// Nothing recorded of a capacity is none of it.
					if q, ok := r.ConsumedCapacity[name]; (ok || want != "0") && q.String() != want {
						t.Errorf("%s consumed %v, want %s %s", pod.Name, r.ConsumedCapacity, name, want)
					}
				}
				podLogs(t, tc.ns, pod.Name, "(UUID: "+uuids[r.Device]+")\n")
			}
			if len(devices) != 1 || len(shares) != int(replicas) {
				t.Errorf("%d replicas got shares %v of GPUs %v, want each its own share of one GPU", replicas, shares, devices)
			}
		})
	}
}
