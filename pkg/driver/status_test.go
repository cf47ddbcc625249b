package driver

import (
	"context"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	"k8s.io/utils/clock"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	statusv1 "github.com/gpu-dra/gpu-dra-driver/api/status/v1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

var (
	migDevice = checkpoint.Device{Pool: "node-1", Name: "gpu-0-mig-1g10gb-6", GPUUUID: "GPU-0", GPUMinor: 0,
		MIG:          &checkpoint.MIG{ProfileID: 19, Profile: "1g.10gb", Start: 6, Size: 1, Created: true, UUID: "MIG-6", GIID: 9, CIID: 0},
		CDIDeviceIDs: []string{"k8s.gpu.nvidia.com/claim=a"}}
	shareDevice = checkpoint.Device{Pool: "node-1", Name: "gpu-1-shared", GPUUUID: "GPU-1", GPUMinor: 1, MPSDir: "/run/mps/GPU-1",
		ShareID: "share-a", Share: &checkpoint.Share{MemoryBytes: 4 << 30, ComputePercent: 50}}
	wholeDevice = checkpoint.Device{Pool: "node-1", Name: "gpu-2", GPUUUID: "GPU-2", GPUMinor: 2, AdminAccess: true}
)

func TestDeviceStatus(t *testing.T) {
	inv := &gpu.Inventory{GPUs: []gpu.GPU{
		{UUID: "GPU-0", Minor: 0, PCIBusID: "0000:18:00.0", Name: "NVIDIA H100 80GB HBM3"},
		{UUID: "GPU-1", Minor: 1, PCIBusID: "0000:2a:00.0", Name: "NVIDIA H100 80GB HBM3"},
	}}
	tests := []struct {
		name string
		dev  checkpoint.Device
		want statusv1.DeviceStatus
	}{
		{"MIG device", migDevice, statusv1.DeviceStatus{Type: "mig",
			GPU:          statusv1.GPU{UUID: "GPU-0", Minor: 0, PCIBusID: "0000:18:00.0", ProductName: "NVIDIA H100 80GB HBM3"},
			MIG:          &statusv1.MIG{UUID: "MIG-6", Profile: "1g.10gb", GPUInstanceID: 9, ComputeInstanceID: 0, PlacementStart: 6, PlacementSize: 1},
			CDIDeviceIDs: []string{"k8s.gpu.nvidia.com/claim=a"}}},
		{"share", shareDevice, statusv1.DeviceStatus{Type: "shared",
			GPU: statusv1.GPU{UUID: "GPU-1", Minor: 1, PCIBusID: "0000:2a:00.0", ProductName: "NVIDIA H100 80GB HBM3"},
			MPS: true, Share: &statusv1.Share{ID: "share-a", MemoryBytes: 4 << 30, ComputePercent: 50}}},
		{"whole GPU no longer in the inventory", wholeDevice, statusv1.DeviceStatus{Type: "gpu",
			GPU: statusv1.GPU{UUID: "GPU-2", Minor: 2}, AdminAccess: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := deviceStatus(inv, tt.dev); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("deviceStatus = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestDeviceInfoMetric(t *testing.T) {
	m := NewMetrics()
	cp := checkpoint.New("boot")
	cp.Claims["uid-a"] = &checkpoint.Claim{UID: "uid-a", Namespace: "team-a", Name: "train", State: checkpoint.PrepareCompleted,
		Devices: []checkpoint.Device{migDevice, shareDevice}}
	cp.Claims["uid-b"] = &checkpoint.Claim{UID: "uid-b", Namespace: "team-b", Name: "half-done", State: checkpoint.PrepareStarted,
		Devices: []checkpoint.Device{wholeDevice}}
	cp.Claims["uid-c"] = &checkpoint.Claim{UID: "uid-c", Namespace: "team-c", Name: "restored", State: checkpoint.PrepareCompleted,
		Devices: []checkpoint.Device{wholeDevice}}
	pods := map[string][]string{"uid-a": {"worker-0", "worker-1"}}
	m.setDeviceInfo("node-1", cp, func(uid string) []string { return pods[uid] })

	want := `
# HELP gpu_dra_prepared_device_info Always 1: one series per prepared device and pod of its claim, naming the GPU and MIG device and the workload.
# TYPE gpu_dra_prepared_device_info gauge
gpu_dra_prepared_device_info{claim="restored",device="gpu-2",gpu_instance_id="",gpu_uuid="GPU-2",mig_uuid="",namespace="team-c",node="node-1",pod="",profile="",type="gpu"} 1
gpu_dra_prepared_device_info{claim="train",device="gpu-0-mig-1g10gb-6",gpu_instance_id="9",gpu_uuid="GPU-0",mig_uuid="MIG-6",namespace="team-a",node="node-1",pod="worker-0",profile="1g.10gb",type="mig"} 1
gpu_dra_prepared_device_info{claim="train",device="gpu-0-mig-1g10gb-6",gpu_instance_id="9",gpu_uuid="GPU-0",mig_uuid="MIG-6",namespace="team-a",node="node-1",pod="worker-1",profile="1g.10gb",type="mig"} 1
gpu_dra_prepared_device_info{claim="train",device="gpu-1-shared",gpu_instance_id="",gpu_uuid="GPU-1",mig_uuid="",namespace="team-a",node="node-1",pod="worker-0",profile="",type="shared"} 1
gpu_dra_prepared_device_info{claim="train",device="gpu-1-shared",gpu_instance_id="",gpu_uuid="GPU-1",mig_uuid="",namespace="team-a",node="node-1",pod="worker-1",profile="",type="shared"} 1
`
	if err := testutil.CollectAndCompare(m.DeviceInfo, strings.NewReader(want)); err != nil {
		t.Error(err)
	}

	// Unprepared: its series go.
	delete(cp.Claims, "uid-a")
	m.setDeviceInfo("node-1", cp, func(uid string) []string { return pods[uid] })
	if n := testutil.CollectAndCount(m.DeviceInfo); n != 1 {
		t.Errorf("%d series after unprepare, want 1", n)
	}
}

func TestReservedPods(t *testing.T) {
	c := &resourceapi.ResourceClaim{Status: resourceapi.ResourceClaimStatus{ReservedFor: []resourceapi.ResourceClaimConsumerReference{
		{Resource: "pods", Name: "b"}, {APIGroup: "example.com", Resource: "pods", Name: "not-a-pod"}, {Resource: "pods", Name: "a"},
	}}}
	if got := reservedPods(c); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("reservedPods = %v, want [a b]", got)
	}
}

func TestHealthTaintMetric(t *testing.T) {
	m := NewMetrics()
	gpuTaints := map[string][]resourceapi.DeviceTaint{"GPU-0": {{Key: "gpu.nvidia.com/xid", Value: "79", Effect: resourceapi.DeviceTaintEffectNoExecute}}}
	migTaints := map[string][]resourceapi.DeviceTaint{"MIG-6": {{Key: "gpu.nvidia.com/xid", Value: "43", Effect: resourceapi.DeviceTaintEffectNoSchedule}}}
	m.setHealthTaints("node-1", gpuTaints, migTaints, func(mig string) string { return map[string]string{"MIG-6": "GPU-1"}[mig] })
	want := `
# HELP gpu_dra_health_taint Always 1: one series per health taint on a GPU (mig_uuid empty) or one MIG device.
# TYPE gpu_dra_health_taint gauge
gpu_dra_health_taint{effect="NoExecute",gpu_uuid="GPU-0",key="gpu.nvidia.com/xid",mig_uuid="",node="node-1",value="79"} 1
gpu_dra_health_taint{effect="NoSchedule",gpu_uuid="GPU-1",key="gpu.nvidia.com/xid",mig_uuid="MIG-6",node="node-1",value="43"} 1
`
	if err := testutil.CollectAndCompare(m.HealthTaints, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	m.setHealthTaints("node-1", nil, nil, nil)
	if n := testutil.CollectAndCount(m.HealthTaints); n != 0 {
		t.Errorf("%d series after the taints went, want 0", n)
	}
}

func TestHealthTaintEvents(t *testing.T) {
	client := fake.NewClientset()
	// The API server makes names from generateName; the fake does not.
	n := 0
	client.PrependReactor("create", "events", func(a k8stesting.Action) (bool, runtime.Object, error) {
		e := a.(k8stesting.CreateAction).GetObject().(*corev1.Event)
		n++
		e.Name = e.GenerateName + strconv.Itoa(n)
		return false, nil, nil
	})
	var gpuTaints, migTaints map[string][]resourceapi.DeviceTaint
	d := &Driver{
		cfg: Config{NodeName: "node-1", KubeClient: client, Metrics: NewMetrics()}, clock: clock.RealClock{},
		state: &nodeState{
			taints: func() (map[string][]resourceapi.DeviceTaint, map[string][]resourceapi.DeviceTaint) {
				return gpuTaints, migTaints
			},
			inv: &gpu.Inventory{GPUs: []gpu.GPU{{UUID: "GPU-0", Minor: 0}, {UUID: "GPU-3", Minor: 3,
				MIGInstances: []gpu.MIGInstance{{UUID: "MIG-6", ParentUUID: "GPU-3"}}}}},
		},
	}
	events := func() []string {
		list, err := client.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range list.Items {
			out = append(out, e.Type+" "+e.Reason+" "+e.Message)
		}
		sort.Strings(out)
		return out
	}
	ctx := context.Background()
	xid79 := resourceapi.DeviceTaint{Key: "gpu.nvidia.com/xid", Value: "79", Effect: resourceapi.DeviceTaintEffectNoExecute}
	xid43 := resourceapi.DeviceTaint{Key: "gpu.nvidia.com/xid", Value: "43", Effect: resourceapi.DeviceTaintEffectNoSchedule}

	// The taints found at start are not news.
	gpuTaints = map[string][]resourceapi.DeviceTaint{"GPU-0": {xid79}}
	d.refreshHealth(ctx)
	if got := events(); len(got) != 0 {
		t.Fatalf("events at start: %v", got)
	}
	gpuTaints = nil
	migTaints = map[string][]resourceapi.DeviceTaint{"MIG-6": {xid43}}
	d.refreshHealth(ctx)
	d.refreshHealth(ctx) // unchanged: no more events
	want := []string{
		"Normal GPUHealthTaintRemoved gpu-0: health taint gpu.nvidia.com/xid=79:NoExecute removed on GPU GPU-0",
		"Warning GPUHealthTaintAdded gpu-3: health taint gpu.nvidia.com/xid=43:NoSchedule added on MIG device MIG-6",
	}
	if got := events(); !reflect.DeepEqual(got, want) {
		t.Errorf("events\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
