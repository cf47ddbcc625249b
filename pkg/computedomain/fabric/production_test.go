package fabric_test

import (
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/google/uuid"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/fabric"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/installationtest"
)

// openNVML loads the installation's simulated libnvidia-ml.so.1 through
// go-nvml, as the node plugin loads NVIDIA's from the driver root.
func openNVML(t *testing.T, inst *installationtest.Installation) nvml.Interface {
	t.Helper()
	lib := nvml.New(nvml.WithLibraryPath(inst.Library))
	if ret := lib.Init(); ret != nvml.SUCCESS {
		t.Fatalf("nvmlInit: %s", nvml.ErrorString(ret))
	}
	t.Cleanup(func() { _ = lib.Shutdown() })
	return lib
}

// The production path: the clique of a simulated GB200 tray, read through
// the C library and the simulated kernel, follows the tray's rack
// placement and its registration's progress.
func TestProductionPathGB200Clique(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	inst := installationtest.Start(t, "gb200")
	lib := openNVML(t, inst)

	got, err := fabric.CliqueID(ctx, lib)
	if want := sim.DefaultFabricClusterUUID + ".1"; err != nil || got != want {
		t.Fatalf("default placement: CliqueID = %q, %v; want %q", got, err, want)
	}

	const placement = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0.3"
	f, err := sim.ParseClique(placement)
	if err != nil {
		t.Fatal(err)
	}
	if err := inst.Sim.SetFabric(-1, f); err != nil {
		t.Fatal(err)
	}
	if got, err := fabric.CliqueID(ctx, lib); err != nil || got != placement {
		t.Fatalf("rack placement: CliqueID = %q, %v; want %q", got, err, placement)
	}

	// The versioned call answers the same, with health.
	d, ret := lib.DeviceGetHandleByIndex(2)
	if ret != nvml.SUCCESS {
		t.Fatal(nvml.ErrorString(ret))
	}
	v3, ret := d.GetGpuFabricInfoV().V3()
	if ret != nvml.SUCCESS {
		t.Fatalf("nvmlDeviceGetGpuFabricInfoV v3: %s", nvml.ErrorString(ret))
	}
	cluster, _ := uuid.FromBytes(v3.ClusterUuid[:])
	if cluster.String()+".3" != placement || v3.CliqueId != 3 || v3.State != nvml.GPU_FABRIC_STATE_COMPLETED ||
		nvml.Return(v3.Status) != nvml.SUCCESS || v3.HealthSummary != nvml.GPU_FABRIC_HEALTH_SUMMARY_HEALTHY {
		t.Errorf("v3 fabric info %+v", v3)
	}
	v2, ret := d.GetGpuFabricInfoV().V2()
	if ret != nvml.SUCCESS || v2.CliqueId != 3 || v2.State != nvml.GPU_FABRIC_STATE_COMPLETED || v2.HealthMask != v3.HealthMask || v2.ClusterUuid != v3.ClusterUuid {
		t.Errorf("v2 fabric info %+v (%s), v3 %+v", v2, nvml.ErrorString(ret), v3)
	}

	// One GPU's registration still in progress: retry later.
	if err := inst.Sim.SetFabric(1, sim.FabricState{State: nvml.GPU_FABRIC_STATE_IN_PROGRESS}); err != nil {
		t.Fatal(err)
	}
	if got, err := fabric.CliqueID(ctx, lib); !fabric.IsPending(err) {
		t.Fatalf("registration in progress: CliqueID = %q, %v; want a pending error", got, err)
	}
	// It completes in another clique: the tray is miswired.
	other := f
	other.CliqueID = 4
	if err := inst.Sim.SetFabric(1, other); err != nil {
		t.Fatal(err)
	}
	if got, err := fabric.CliqueID(ctx, lib); err == nil || fabric.IsPending(err) {
		t.Fatalf("GPUs in two cliques: CliqueID = %q, %v; want an error", got, err)
	}
	// It fails.
	if err := inst.Sim.SetFabric(1, sim.FabricState{State: nvml.GPU_FABRIC_STATE_COMPLETED, Status: int32(nvml.ERROR_UNKNOWN)}); err != nil {
		t.Fatal(err)
	}
	if got, err := fabric.CliqueID(ctx, lib); err == nil || fabric.IsPending(err) {
		t.Fatalf("failed registration: CliqueID = %q, %v; want an error", got, err)
	}
}

// Read loads the library itself, as the node plugin does once at start.
func TestProductionPathRead(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	inst := installationtest.Start(t, "gb200:1")
	if got, err := fabric.Read(ctx, inst.Library); err != nil || got != sim.DefaultFabricClusterUUID+".1" {
		t.Fatalf("Read = %q, %v", got, err)
	}
	// No kernel side: the driver is not loaded, which is not "no fabric".
	inst.StopKernel()
	if got, err := fabric.Read(ctx, inst.Library); err == nil {
		t.Fatalf("Read without a driver = %q, want an error", got)
	}
}

// A GPU without fabric answers NVML_ERROR_NOT_SUPPORTED through the
// library, and the node has no clique.
func TestProductionPathNoFabric(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	inst := installationtest.Start(t, "dgxh100:2")
	lib := openNVML(t, inst)
	d, ret := lib.DeviceGetHandleByIndex(0)
	if ret != nvml.SUCCESS {
		t.Fatal(nvml.ErrorString(ret))
	}
	if _, ret := d.GetGpuFabricInfo(); ret != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("nvmlDeviceGetGpuFabricInfo on H100: %s, want NOT_SUPPORTED", nvml.ErrorString(ret))
	}
	if _, ret := d.GetGpuFabricInfoV().V3(); ret != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("nvmlDeviceGetGpuFabricInfoV on H100: %s, want NOT_SUPPORTED", nvml.ErrorString(ret))
	}
	if got, err := fabric.CliqueID(ctx, lib); err != nil || got != "" {
		t.Fatalf("CliqueID = %q, %v; want none", got, err)
	}
}
