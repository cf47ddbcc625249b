//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/dynamic-resource-allocation/api/metadata"
	"k8s.io/dynamic-resource-allocation/devicemetadata"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// metadataFile is one metadata file a container printed: its path and
// content, between the markers the test pod writes.
var metadataFile = regexp.MustCompile(`(?s)==FILE (\S+)\n(.*?)\n==END`)

// TestDeviceMetadataInContainers: a pod with a whole GPU and a MIG device
// made for it finds each device's metadata (KEP-5304) where Kubernetes
// documents it, and reads it with the upstream reader
// (k8s.io/dynamic-resource-allocation/devicemetadata), as KubeVirt's
// virt-launcher does: the whole GPU with its published attributes, the
// standard resource.kubernetes.io/pciBusID among them, and the MIG device
// with the UUID, GPU instance and compute instance the node created.
func TestDeviceMetadataInContainers(t *testing.T) {
	ns := "metadata"
	kubectl(t, "create", "namespace", ns)
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, `
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: gpu-and-mig, namespace: metadata}
spec:
  spec:
    devices:
      requests:
      - {name: whole, exactly: {deviceClassName: gpu.nvidia.com}}
      - {name: small, exactly: {deviceClassName: mig.nvidia.com, selectors: [{cel: {expression: "device.attributes['gpu.nvidia.com'].profile == '1g.10gb'"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {name: reader, namespace: metadata}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: ctr
    image: busybox:local
    imagePullPolicy: Never
    command: ["sh", "-c", "for f in $(find `+metadata.ContainerDir+` -name '*`+metadata.MetadataFileSuffix+`' | sort); do echo \"==FILE $f\"; cat $f; echo; echo ==END; done; echo DONE; sleep 3600"]
    resources: {claims: [{name: gpus}]}
  resourceClaims:
  - {name: gpus, resourceClaimTemplateName: gpu-and-mig}
`)
	pod := waitPodRunning(t, ns, "reader")
	log := podLogs(t, ns, "reader", "DONE")
	claim := claimOf(t, pod, "gpus")
	files := metadataFile.FindAllStringSubmatch(log, -1)
	if len(files) == 0 {
		t.Fatalf("no metadata file under %s; log:\n%s", metadata.ContainerDir, log)
	}
	got := map[string]metadata.Device{} // by request
	for _, f := range files {
		var md metadata.DeviceMetadata
		if err := devicemetadata.DecodeMetadataFromStream(json.NewDecoder(bytes.NewReader([]byte(f[2]))), &md); err != nil {
			t.Fatalf("%s: the upstream reader: %v\n%s", f[1], err, f[2])
		}
		if md.Name != claim.Name || md.Namespace != ns || md.UID != claim.UID {
			t.Errorf("%s names claim %s/%s (%s), want %s/%s (%s)", f[1], md.Namespace, md.Name, md.UID, ns, claim.Name, claim.UID)
		}
		for _, r := range md.Requests {
			for _, d := range r.Devices {
				if d.Driver == names.DriverName {
					got[r.Name] = d
				}
			}
		}
	}
	allocated := map[string]string{} // request → device
	for _, r := range claim.Status.Allocation.Devices.Results {
		allocated[r.Request] = r.Device
	}
	whole, ok := got["whole"]
	if !ok || whole.Name != allocated["whole"] {
		t.Fatalf("metadata of request whole: %+v, want device %s", whole, allocated["whole"])
	}
	slice := publishedDevice(t, whole.Name)
	for _, attr := range []resourceapi.QualifiedName{names.AttrUUID, names.AttrStandardPCIBusID, names.AttrProductName, names.AttrArchitecture} {
		if fmt.Sprint(attrValue(whole.Attributes[attr])) != fmt.Sprint(attrValue(slice.Attributes[attr])) || attrValue(whole.Attributes[attr]) == nil {
			t.Errorf("whole GPU's %s: metadata %v, published %v", attr, attrValue(whole.Attributes[attr]), attrValue(slice.Attributes[attr]))
		}
	}
	mig, ok := got["small"]
	if !ok || mig.Name != allocated["small"] {
		t.Fatalf("metadata of request small: %+v, want device %s", mig, allocated["small"])
	}
	uuid, _ := attrValue(mig.Attributes[names.AttrUUID]).(string)
	if !strings.HasPrefix(uuid, "MIG-") || mig.Attributes[names.AttrGPUInstanceID].IntValue == nil || mig.Attributes[names.AttrComputeInstanceID].IntValue == nil {
		t.Errorf("MIG device's metadata %v: want its MIG UUID and instance IDs", mig.Attributes)
	}
	found := false
	for _, inst := range simState(t).GPUs {
		for _, gi := range inst.GPUInstances {
			for _, ci := range gi.ComputeInstances {
				if ci.UUID == uuid && int64(gi.ID) == *mig.Attributes[names.AttrGPUInstanceID].IntValue && int64(ci.ID) == *mig.Attributes[names.AttrComputeInstanceID].IntValue {
					found = true
				}
			}
		}
	}
	if !found {
		t.Errorf("MIG device %s (gi %v, ci %v) is not one the node has", uuid, attrValue(mig.Attributes[names.AttrGPUInstanceID]), attrValue(mig.Attributes[names.AttrComputeInstanceID]))
	}
	if profile, _ := attrValue(mig.Attributes[names.AttrProfile]).(string); profile != "1g.10gb" {
		t.Errorf("MIG device's profile %q, want 1g.10gb", profile)
	}
}

// publishedDevice is the node's published device of that name.
func publishedDevice(t *testing.T, name string) resourceapi.Device {
	t.Helper()
	slices, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{FieldSelector: "spec.driver=" + names.DriverName})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slices.Items {
		for _, d := range s.Spec.Devices {
			if d.Name == name {
				return d
			}
		}
	}
	t.Fatalf("no published device %s", name)
	return resourceapi.Device{}
}

// attrValue is an attribute's value, whatever its type; nil if unset.
func attrValue(a resourceapi.DeviceAttribute) any {
	switch {
	case a.StringValue != nil:
		return *a.StringValue
	case a.IntValue != nil:
		return *a.IntValue
	case a.BoolValue != nil:
		return *a.BoolValue
	case a.VersionValue != nil:
		return *a.VersionValue
	}
	return nil
}
