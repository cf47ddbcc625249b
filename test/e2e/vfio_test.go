//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/dynamic-resource-allocation/api/metadata"
	"k8s.io/dynamic-resource-allocation/devicemetadata"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// vfioPod is a pod of a claim for the GPU of minor for a VM: it lists
// its /dev/vfio nodes and prints its device metadata, as virt-launcher
// reads them.
func vfioPod(ns, name string, minor int) string {
	return fmt.Sprintf(`
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  spec:
    devices:
      requests:
      - {name: vm, exactly: {deviceClassName: vfio.gpu.nvidia.com, selectors: [{cel: {expression: "device.attributes['gpu.nvidia.com'].minor == %[3]d"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: ctr
    image: busybox:local
    imagePullPolicy: Never
    command: ["sh", "-c", "echo NODES $(ls /dev/vfio | tr '\\n' ' '); for f in $(find %[4]s -name '*%[5]s' | sort); do echo \"==FILE $f\"; cat $f; echo; echo ==END; done; echo DONE; sleep 3600"]
    resources: {claims: [{name: gpu}]}
  resourceClaims:
  - {name: gpu, resourceClaimTemplateName: %[2]s}
`, ns, name, minor, metadata.ContainerDir, metadata.MetadataFileSuffix)
}

// sysDriver is the driver the simulated host's PCI function is bound to.
func sysDriver(t *testing.T, bdf string) string {
	t.Helper()
	target, err := os.Readlink(filepath.Join(runDir, "sim/host/sys/sys/bus/pci/devices", bdf, "driver"))
	if err != nil {
		return ""
	}
	return filepath.Base(target)
}

// TestVFIOPassthrough: with passthrough on, a VM's pod gets its GPU bound
// to vfio-pci with its /dev/vfio nodes, and reads the GPU's PCI address
// from its device metadata with the upstream reader, as KubeVirt's
// virt-launcher does; while it has the GPU, no container's claim gets
// it; when it goes, the GPU is nvidia's again. A GPU held open by a
// process on the host is not taken, and the claim's pod says why. First,
// NVIDIA's quickstart VFIO specs (nvidiaVFIOSpecs).
func TestVFIOPassthrough(t *testing.T) {
	const ns, held, vm = "vfio", 6, 7
	// driver.sh remembers every values file given, in the order first
	// given: files of this run's own, on then off, keep passthrough off
	// for the rest of the suite and for later runs on a kept cluster.
	on, off := passthroughValues(t, true), passthroughValues(t, false)
	if err := script("driver.sh", "restart", "-f", on); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := script("driver.sh", "restart", "-f", off); err != nil {
			t.Errorf("turn passthrough off again: %v", err)
		}
	})
	kubectl(t, "create", "namespace", ns)
	t.Cleanup(func() { cleanNamespace(t, ns) })
	eventually(t, 60*time.Second, "GPUs for VMs published", func() (bool, error) {
		_, err := client.ResourceV1().DeviceClasses().Get(ctx(), names.VFIODeviceClass, metav1.GetOptions{})
		return err == nil && publishedNames(t)[names.VFIODevice(vm)], fmt.Errorf("class: %w; device %s published: %v", err, names.VFIODevice(vm), publishedNames(t)[names.VFIODevice(vm)])
	})
	// NVIDIA's own VFIO specs first, while every GPU is free.
	t.Run("NVIDIA's quickstart VFIO specs", nvidiaVFIOSpecs)
	bdf := *publishedDevice(t, names.VFIODevice(vm)).Attributes[names.AttrStandardPCIBusID].StringValue

	// A GPU held open is not taken.
	gpuSim(t, "client", fmt.Sprint(held), "e2e-monitor", "open")
	t.Cleanup(func() { gpuSim(t, "client", fmt.Sprint(held), "e2e-monitor", "close") })
	applyYAML(t, vfioPod(ns, "held", held))
	eventually(t, 60*time.Second, "the held GPU's prepare refused", func() (bool, error) {
		evs, err := client.CoreV1().Events(ns).List(ctx(), metav1.ListOptions{FieldSelector: "involvedObject.name=held,reason=FailedPrepareDynamicResources"})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			if strings.Contains(e.Message, "held open by e2e-monitor") {
				return true, nil
			}
		}
		return false, fmt.Errorf("%d events, none naming the holder", len(evs.Items))
	})
	kubectl(t, "delete", "pod", "-n", ns, "held", "--wait=false")

	// The VM's pod.
	applyYAML(t, vfioPod(ns, "vm", vm))
	waitPodRunning(t, ns, "vm")
	log := podLogs(t, ns, "vm", "DONE")
	if d := sysDriver(t, bdf); d != names.KernelDriverVFIOPCI {
		t.Errorf("while the VM's claim is prepared GPU %s is bound to %q, want vfio-pci", bdf, d)
	}
	nodes, _, _ := strings.Cut(strings.SplitN(log, "NODES", 2)[len(strings.SplitN(log, "NODES", 2))-1], "\n")
	if f := strings.Fields(nodes); len(f) != 2 || !slices.Contains(f, "vfio") {
		t.Errorf("the pod's /dev/vfio has %v, want the container node vfio and the GPU's group:\n%s", f, log)
	}
	var found bool
	for _, f := range metadataFile.FindAllStringSubmatch(log, -1) {
		var md metadata.DeviceMetadata
		if err := devicemetadata.DecodeMetadataFromStream(json.NewDecoder(bytes.NewReader([]byte(f[2]))), &md); err != nil {
			t.Fatalf("%s: the upstream reader: %v\n%s", f[1], err, f[2])
		}
		for _, r := range md.Requests {
			for _, d := range r.Devices {
				if a, ok := d.Attributes[names.AttrStandardPCIBusID]; ok && a.StringValue != nil && *a.StringValue == bdf {
					found = true
				}
			}
		}
	}
	if !found {
		t.Errorf("no metadata gives the VM's GPU's PCI address %s:\n%s", bdf, log)
	}
	// Meanwhile no container gets the GPU: its devices are gone from the
	// node's slices, and a pod that asks for it is not scheduled.
	eventually(t, 30*time.Second, "the VM's GPU offered to nobody else", func() (bool, error) {
		pub := publishedNames(t)
		return !pub[names.GPUDevice(vm)] && !pub[names.SharedDevice(vm)], fmt.Errorf("%s published: %v", names.GPUDevice(vm), pub[names.GPUDevice(vm)])
	})
	applyYAML(t, fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: container, namespace: %[1]s}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: ctr, image: busybox:local, imagePullPolicy: Never, command: ["sleep", "3600"], resources: {claims: [{name: gpu}]}}
  resourceClaims:
  - {name: gpu, resourceClaimTemplateName: whole-%[2]d}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: whole-%[2]d, namespace: %[1]s}
spec:
  spec:
    devices:
      requests:
      - {name: gpu, exactly: {deviceClassName: gpu.nvidia.com, selectors: [{cel: {expression: "device.attributes['gpu.nvidia.com'].minor == %[2]d"}}]}}
`, ns, vm))
	time.Sleep(5 * time.Second)
	if p, err := client.CoreV1().Pods(ns).Get(ctx(), "container", metav1.GetOptions{}); err != nil || p.Status.Phase != corev1.PodPending || p.Spec.NodeName != "" {
		t.Errorf("a container's pod for the VM's GPU: %v, phase %s on %q; want it unscheduled", err, p.Status.Phase, p.Spec.NodeName)
	}
	kubectl(t, "delete", "pod", "-n", ns, "container", "vm", "--wait=true", "--timeout=60s")
	eventually(t, 60*time.Second, "the GPU given back to nvidia", func() (bool, error) {
		d := sysDriver(t, bdf)
		return d == names.KernelDriverNVIDIA && publishedNames(t)[names.GPUDevice(vm)], fmt.Errorf("bound to %q", d)
	})
}

// publishedNames are the names of the devices the node publishes.
func publishedNames(t *testing.T) map[string]bool {
	t.Helper()
	l, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{FieldSelector: "spec.driver=" + names.DriverName})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, s := range l.Items {
		for _, d := range s.Spec.Devices {
			out[d.Name] = true
		}
	}
	return out
}

// passthroughValues writes, in the cluster's run directory, a chart values
// file of a name of its own that turns VFIO passthrough on or off.
func passthroughValues(t *testing.T, enabled bool) string {
	t.Helper()
	path := filepath.Join(runDir, fmt.Sprintf("vfio-passthrough-%t-%d.yaml", enabled, time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(fmt.Sprintf("vfioPassthrough: {enabled: %t}\n", enabled)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
