package kubectlgpu

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	statusv1 "github.com/gpu-dra/gpu-dra-driver/api/status/v1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const goldenNode = "node-1"

// modelNode is a simulated DGX H100's first four GPUs as the driver
// publishes them, with the simulated host's topology; GPU 2 has a fatal
// XID taint.
func modelNode(t *testing.T, shared bool) ([]resourceapi.ResourceSlice, *gpu.Inventory) {
	t.Helper()
	return modelNodeSharing(t, shared, devicemodel.ConsumableShares{})
}

// modelNodeSharing is modelNode with whole GPUs in consumable shares.
func modelNodeSharing(t *testing.T, shared bool, consumable devicemodel.ConsumableShares) ([]resourceapi.ResourceSlice, *gpu.Inventory) {
	t.Helper()
	n, err := nvmlnode.Open(nvmlnode.Options{Simulate: "dgxh100"})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	inv, err := n.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	inv.GPUs = inv.GPUs[:4]
	topo, err := simhost.Topology(inv)
	if err != nil {
		t.Fatal(err)
	}
	xid := resourceapi.DeviceTaint{Key: names.HealthTaintKey("xid"), Value: "79", Effect: resourceapi.DeviceTaintEffectNoExecute,
		TimeAdded: &metav1.Time{Time: t0.Add(-3 * time.Minute)}}
	m, err := devicemodel.Build(devicemodel.Input{Inventory: inv, Topology: topo, SharedGPUs: shared, ConsumableShares: consumable,
		GPUTaints: map[string][]resourceapi.DeviceTaint{inv.GPUs[2].UUID: {xid}}})
	if err != nil {
		t.Fatal(err)
	}
	slices := m.ResourceSlices(goldenNode)
	for i := range slices {
		slices[i].Name = fmt.Sprintf("%s%d", slices[i].GenerateName, i)
	}
	return slices, inv
}

// allocation is one device of a claim with what the plugin wrote for it.
type allocation struct {
	device, shareID, memory string
	data                    statusv1.DeviceStatus
}

// preparedClaim is a claim allocated the devices, reserved for one
// running pod of the same name, whose devices the plugin reported
// prepared and healthy 5 minutes ago.
func preparedClaim(t *testing.T, ns, name string, allocs ...allocation) (resourceapi.ResourceClaim, corev1.Pod) {
	t.Helper()
	c := resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name)}}
	c.Status.Allocation = &resourceapi.AllocationResult{}
	since := metav1.NewTime(t0.Add(-5 * time.Minute))
	for _, a := range allocs {
		r := resourceapi.DeviceRequestAllocationResult{Request: "gpu", Driver: names.DriverName, Pool: goldenNode, Device: a.device}
		st := resourceapi.AllocatedDeviceStatus{Driver: names.DriverName, Pool: goldenNode, Device: a.device,
			Conditions: []metav1.Condition{
				{Type: statusv1.ConditionReady, Status: metav1.ConditionTrue, Reason: statusv1.ReasonPrepared, LastTransitionTime: since},
				{Type: statusv1.ConditionHealthy, Status: metav1.ConditionTrue, Reason: statusv1.ReasonHealthy, LastTransitionTime: since},
			}}
		if a.shareID != "" {
			id := types.UID(a.shareID)
			r.ShareID = &id
			r.ConsumedCapacity = map[resourceapi.QualifiedName]resource.Quantity{names.CapacityMemory: resource.MustParse(a.memory)}
			st.ShareID = ptr(a.shareID)
		}
		raw, err := statusv1.Encode(a.data)
		if err != nil {
			t.Fatal(err)
		}
		st.Data = &runtime.RawExtension{Raw: raw}
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, r)
		c.Status.Devices = append(c.Status.Devices, st)
	}
	p := pod(ns, name+"-pod", "pod-"+name, corev1.PodRunning)
	p.Spec.NodeName = goldenNode
	c.Status.ReservedFor = []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: p.Name, UID: p.UID}}
	return c, p
}

func migData(g gpu.GPU, profile string, giid, start, size int) statusv1.DeviceStatus {
	return statusv1.DeviceStatus{Type: names.TypeMIG, GPU: statusv1.GPU{UUID: g.UUID, Minor: g.Minor, PCIBusID: g.PCIBusID, ProductName: g.Name},
		MIG:          &statusv1.MIG{UUID: fmt.Sprintf("MIG-%s-%d", g.UUID[4:12], giid), Profile: profile, GPUInstanceID: giid, PlacementStart: start, PlacementSize: size},
		CDIDeviceIDs: []string{fmt.Sprintf("k8s.gpu.nvidia.com/claim=uid-%d-%d", g.Minor, giid)}}
}

// runGolden runs kubectl gpu with args on the objects and compares its output
// with testdata/<golden>.
func runGolden(t *testing.T, golden string, objs []runtime.Object, args ...string) {
	t.Helper()
	objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: goldenNode}})
	a, out, errOut := testApp(fake.NewClientset(objs...))
	if code := a.execute(context.Background(), args); code != exitOK {
		t.Fatalf("kubectl gpu %v: exit %d: %s", args, code, errOut)
	}
	path := filepath.Join("testdata", golden)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if got := out.String(); got != string(want) {
		t.Errorf("kubectl gpu %v differs from %s (go test -update rewrites it):\n%s", args, path, got)
	}
}

// TestGoldenBusyMIGNode: GPU 0 carved into 4g.40gb, 2g.20gb and a
// 1g.10gb under maintenance, one slice free; GPU 1 used whole; GPU 2
// tainted and free; GPU 3 with one 3g.40gb at 4.
func TestGoldenBusyMIGNode(t *testing.T) {
	slices, inv := modelNode(t, false)
	g0, g1, g3 := inv.GPUs[0], inv.GPUs[1], inv.GPUs[3]
	var objs []runtime.Object
	for i := range slices {
		objs = append(objs, &slices[i])
	}
	add := func(c resourceapi.ResourceClaim, p corev1.Pod) { objs = append(objs, &c, &p) }
	add(preparedClaim(t, "team-a", "train",
		allocation{device: names.MIGDevice(0, "4g.40gb", 0), data: migData(g0, "4g.40gb", 1, 0, 4)}))
	add(preparedClaim(t, "team-b", "infer",
		allocation{device: names.MIGDevice(0, "2g.20gb", 4), data: migData(g0, "2g.20gb", 5, 4, 2)}))
	add(preparedClaim(t, "team-c", "notebook",
		allocation{device: names.MIGDevice(0, "1g.10gb", 6), data: migData(g0, "1g.10gb", 13, 6, 1)}))
	add(preparedClaim(t, "team-a", "big",
		allocation{device: names.GPUDevice(1), data: statusv1.DeviceStatus{Type: names.TypeGPU,
			GPU: statusv1.GPU{UUID: g1.UUID, Minor: 1, PCIBusID: g1.PCIBusID, ProductName: g1.Name}, CDIDeviceIDs: []string{"k8s.gpu.nvidia.com/claim=uid-big-gpu-1"}}}))
	add(preparedClaim(t, "team-d", "sim",
		allocation{device: names.MIGDevice(3, "3g.40gb", 4), data: migData(g3, "3g.40gb", 2, 4, 4)}))
	maint := foreignRule("maint-gpu-0-mig", goldenNode, names.MIGDevice(0, "1g.10gb", 6))
	maint.Spec.Taint = resourceapi.DeviceTaint{Key: names.MaintenanceTaintKey, Value: "ecc-check", Effect: resourceapi.DeviceTaintEffectNoSchedule,
		TimeAdded: &metav1.Time{Time: t0.Add(-time.Hour)}}
	objs = append(objs, &maint, &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: "e1", Namespace: "default"},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: goldenNode},
		Type:           corev1.EventTypeWarning, Reason: names.EventHealthTaintAdded,
		Message:       names.GPUEventMessage(2, "health taint gpu.nvidia.com/xid=79:NoExecute added on GPU "+inv.GPUs[2].UUID),
		Source:        corev1.EventSource{Component: names.PluginEventSource, Host: goldenNode},
		LastTimestamp: metav1.NewTime(t0.Add(-3 * time.Minute)), Count: 1,
	})
	runGolden(t, "ls-wide-busy-mig-node.golden", objs, "ls", goldenNode, "-o", "wide")
	runGolden(t, "describe-mig-gpu.golden", objs, "describe", goldenNode+"/gpu-0")
	runGolden(t, "describe-tainted-gpu.golden", objs, "describe", goldenNode+"/gpu-2")
}

// TestGoldenSharedGPU: three shares of GPU 1 with their memory.
func TestGoldenSharedGPU(t *testing.T) {
	slices, inv := modelNode(t, true)
	g1 := inv.GPUs[1]
	var objs []runtime.Object
	for i := range slices {
		objs = append(objs, &slices[i])
	}
	for _, s := range []struct {
		ns, name, id, memory string
		compute              int64
	}{
		{"team-a", "chat", "3f2a", "4Gi", 25}, {"team-b", "embed", "9c01", "8Gi", 0}, {"team-b", "rerank", "b7e4", "20Gi", 50},
	} {
		q := resource.MustParse(s.memory)
		c, p := preparedClaim(t, s.ns, s.name, allocation{device: names.SharedDevice(1), shareID: s.id, memory: s.memory,
			data: statusv1.DeviceStatus{Type: names.TypeShared, GPU: statusv1.GPU{UUID: g1.UUID, Minor: 1, PCIBusID: g1.PCIBusID, ProductName: g1.Name},
				MPS: true, Share: &statusv1.Share{ID: s.id, MemoryBytes: q.Value(), ComputePercent: s.compute},
				CDIDeviceIDs: []string{"k8s.gpu.nvidia.com/claim=uid-" + s.name + "-gpu-1-shared"}}})
		objs = append(objs, &c, &p)
	}
	runGolden(t, "ls-wide-shared-gpu.golden", objs, "ls", goldenNode+"/gpu-1", "-o", "wide")
	runGolden(t, "describe-shared-gpu.golden", objs, "describe", goldenNode+"/gpu-1")
}

// TestGoldenConsumableShares: two consumable shares of GPU 1 (NVIDIA's
// consumable shares, four a GPU), one with a 2Gi memory limit, one of no
// memory, which has none.
func TestGoldenConsumableShares(t *testing.T) {
	slices, inv := modelNodeSharing(t, false, devicemodel.ConsumableShares{Mode: devicemodel.SharesCount, Shares: 4})
	g1 := inv.GPUs[1]
	var objs []runtime.Object
	for i := range slices {
		objs = append(objs, &slices[i])
	}
	for _, s := range []struct {
		ns, name, id, memory string
		mps                  bool
	}{
		{"team-a", "infer", "5d2c", "2Gi", true}, {"team-b", "notebook", "e871", "0", false},
	} {
		q := resource.MustParse(s.memory)
		c, p := preparedClaim(t, s.ns, s.name, allocation{device: names.GPUDevice(1), shareID: s.id, memory: s.memory,
			data: statusv1.DeviceStatus{Type: names.TypeGPU, GPU: statusv1.GPU{UUID: g1.UUID, Minor: 1, PCIBusID: g1.PCIBusID, ProductName: g1.Name},
				MPS: s.mps, Share: &statusv1.Share{ID: s.id, MemoryBytes: q.Value()},
				CDIDeviceIDs: []string{"k8s.gpu.nvidia.com/claim=uid-" + s.name + "-gpu-1-" + s.id}}})
		objs = append(objs, &c, &p)
	}
	runGolden(t, "describe-consumable-shares.golden", objs, "describe", goldenNode+"/gpu-1")
}
