package prepare

import (
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/api/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
)

// TestMPSPinnedMemoryLimits: every per-device limit applies to the device
// it names, by ordinal or UUID, or the claim is refused naming the key;
// none is dropped because its key is spelt in a way no device matches.
func TestMPSPinnedMemoryLimits(t *testing.T) {
	const uuid0, uuid1 = "GPU-00000000-0000-4000-8000-000000000000", "GPU-11111111-1111-4111-8111-111111111111"
	rec := &checkpoint.Claim{Devices: []checkpoint.Device{
		{Name: "gpu-0", GPUUUID: uuid0, MPSDir: "/mps"},
		{Name: "gpu-1", GPUUUID: uuid1, MPSDir: "/mps"},
	}}
	for _, tc := range []struct {
		name      string
		def       *v1beta1.Quantity
		perDevice map[string]v1beta1.Quantity
		want      string // CUDA_MPS_PINNED_DEVICE_MEM_LIMIT
		wantErr   string
	}{
		{name: "default for all", def: ptr.To[v1beta1.Quantity]("2Gi"), want: "0=2048M,1=2048M"},
		{name: "by index", def: ptr.To[v1beta1.Quantity]("2Gi"), perDevice: map[string]v1beta1.Quantity{"1": "1Gi"}, want: "0=2048M,1=1024M"},
		{name: "by UUID", perDevice: map[string]v1beta1.Quantity{uuid1: "1Gi"}, want: "1=1024M"},
		{name: "index and UUID of different devices", perDevice: map[string]v1beta1.Quantity{"0": "3Gi", uuid1: "1Gi"}, want: "0=3072M,1=1024M"},
		{name: "a sign", def: ptr.To[v1beta1.Quantity]("2Gi"), perDevice: map[string]v1beta1.Quantity{"+0": "1Gi"},
			wantErr: `defaultPerDevicePinnedMemoryLimit[+0]: device key "+0" is neither an index`},
		{name: "a leading zero", perDevice: map[string]v1beta1.Quantity{"00": "1Gi"}, wantErr: "defaultPerDevicePinnedMemoryLimit[00]"},
		{name: "no such index", perDevice: map[string]v1beta1.Quantity{"2": "1Gi"}, wantErr: "defaultPerDevicePinnedMemoryLimit[2]: the claim has no such MPS device (2 devices"},
		{name: "no such UUID", perDevice: map[string]v1beta1.Quantity{"GPU-22222222-2222-4222-8222-222222222222": "1Gi"}, wantErr: "no such MPS device"},
		{name: "one device named twice", perDevice: map[string]v1beta1.Quantity{"1": "1Gi", uuid1: "2Gi"},
			wantErr: "defaultPerDevicePinnedMemoryLimit[" + uuid1 + "]: device 1 is already given a limit by key 1"},
		{name: "a limit beyond int64", perDevice: map[string]v1beta1.Quantity{"0": "1e30"}, wantErr: `"1e30" is over 1Pi`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &v1beta1.MpsConfig{DefaultPinnedDeviceMemoryLimit: tc.def, DefaultPerDevicePinnedMemoryLimit: tc.perDevice}
			env, err := mpsEnv(rec, map[int]*v1beta1.MpsConfig{0: cfg, 1: cfg})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "device gpu-0: ") {
					t.Fatalf("error %v, want one for device gpu-0 naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for i := range 2 {
				if got := env[i]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"]; got != tc.want {
					t.Errorf("device %d: CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=%q, want %q", i, got, tc.want)
				}
			}
		})
	}
}

// TestConfigOfTheOtherKind: a configuration the claim gives for exactly a
// device's request, of the kind that cannot apply to that device, is an
// error naming it; for all requests, for a parent request, or from a
// class, it is meant for other devices and applies to none here.
func TestConfigOfTheOtherKind(t *testing.T) {
	const mpsGPU = `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS"}}`
	const mpsMIG = `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"MigDeviceConfig","sharing":{"strategy":"MPS"}}`
	mig := &checkpoint.Device{Name: "gpu-0-mig-1g10gb-0", Requests: []string{"small/mig"}, MIG: &checkpoint.MIG{}}
	gpu := &checkpoint.Device{Name: "gpu-1", Requests: []string{"whole"}}
	for _, tc := range []struct {
		name     string
		source   resourceapi.AllocationConfigSource
		requests []string
		params   string
		dev      *checkpoint.Device
		wantErr  string
		wantMPS  bool
	}{
		{name: "GpuConfig for a MIG device's request", requests: []string{"small/mig"}, params: mpsGPU, dev: mig,
			wantErr: "configuration 0 (fromclaim): parameters.kind: a GpuConfig does not apply to device gpu-0-mig-1g10gb-0, a MIG device, of request small/mig; use a MigDeviceConfig"},
		{name: "MigDeviceConfig for a whole GPU's request", requests: []string{"whole"}, params: mpsMIG, dev: gpu,
			wantErr: "a MigDeviceConfig does not apply to device gpu-1, a whole GPU, of request whole; use a GpuConfig"},
		{name: "GpuConfig for all requests", params: mpsGPU, dev: mig},
		{name: "GpuConfig for the parent of a subrequest", requests: []string{"small"}, params: mpsGPU, dev: mig},
		{name: "GpuConfig from a class", source: resourceapi.AllocationConfigSourceClass, requests: []string{"small/mig"}, params: mpsGPU, dev: mig},
		{name: "MigDeviceConfig for the MIG device", requests: []string{"small/mig"}, params: mpsMIG, dev: mig, wantMPS: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			source := tc.source
			if source == "" {
				source = resourceapi.AllocationConfigSourceClaim
			}
			claim := &resourceapi.ResourceClaim{Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{
				Devices: resourceapi.DeviceAllocationResult{Config: []resourceapi.DeviceAllocationConfiguration{{
					Source: source, Requests: tc.requests,
					DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
						Driver: "gpu.nvidia.com", Parameters: runtime.RawExtension{Raw: []byte(tc.params)}}},
				}}},
			}}}
			got, err := deviceConfig(claim, tc.dev)
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tc.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case (got.mps != nil) != tc.wantMPS:
				t.Errorf("MPS %v, want %v", got.mps != nil, tc.wantMPS)
			}
		})
	}
}

// TestConfigChoiceAsNVIDIA: which configuration applies to a device is
// what a claim written for NVIDIA's driver expects: the class's come
// first, then the claim's, and of those that apply to the device (naming
// its request, or no request at all) the last one of its kind wins,
// whether it names the request or not. A configuration naming a request
// applies to each of its subrequests (resource.k8s.io's rule, "req" for
// "req/sub"), and one naming a subrequest to that subrequest alone.
func TestConfigChoiceAsNVIDIA(t *testing.T) {
	ts := func(kind, interval string) string {
		return `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"` + kind + `","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"` + interval + `"}}}`
	}
	const mps = `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS"}}`
	const migMPS = `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"MigDeviceConfig","sharing":{"strategy":"MPS"}}`
	type entry struct {
		class    bool
		requests []string
		params   string
	}
	gpu := &checkpoint.Device{Name: "gpu-1", Requests: []string{"gpu"}}
	sub := &checkpoint.Device{Name: "gpu-2", Requests: []string{"any/whole"}}
	mig := &checkpoint.Device{Name: "gpu-0-mig-1g10gb-0", Requests: []string{"any/mig"}, MIG: &checkpoint.MIG{}}
	for _, tc := range []struct {
		name      string
		dev       *checkpoint.Device
		configs   []entry
		wantSlice string
		wantMPS   bool
	}{
		{name: "no configuration", dev: gpu},
		{name: "the claim's after the class's", dev: gpu,
			configs: []entry{{class: true, requests: []string{"gpu"}, params: mps}, {requests: []string{"gpu"}, params: ts("GpuConfig", "Long")}}, wantSlice: "Long"},
		{name: "the later of two naming the request", dev: gpu,
			configs: []entry{{requests: []string{"gpu"}, params: ts("GpuConfig", "Short")}, {requests: []string{"gpu"}, params: mps}}, wantMPS: true},
		{name: "a later one for all requests over one naming the request", dev: gpu,
			configs: []entry{{requests: []string{"gpu"}, params: mps}, {params: ts("GpuConfig", "Medium")}}, wantSlice: "Medium"},
		{name: "a later one naming the request over one for all", dev: gpu,
			configs: []entry{{params: ts("GpuConfig", "Medium")}, {requests: []string{"gpu"}, params: mps}}, wantMPS: true},
		{name: "a later one of the other kind for all requests does not displace it", dev: gpu,
			configs: []entry{{requests: []string{"gpu"}, params: ts("GpuConfig", "Long")}, {params: migMPS}}, wantSlice: "Long"},
		{name: "one naming another request", dev: gpu, configs: []entry{{requests: []string{"other"}, params: mps}}},
		{name: "one naming the parent request of a subrequest", dev: sub,
			configs: []entry{{requests: []string{"any"}, params: ts("GpuConfig", "Long")}}, wantSlice: "Long"},
		{name: "one naming the subrequest", dev: sub,
			configs: []entry{{requests: []string{"any"}, params: ts("GpuConfig", "Long")}, {requests: []string{"any/whole"}, params: mps}}, wantMPS: true},
		{name: "one naming another subrequest", dev: sub, configs: []entry{{requests: []string{"any/mig"}, params: migMPS}}},
		{name: "a MigDeviceConfig naming the parent request of a MIG device", dev: mig,
			configs: []entry{{requests: []string{"any"}, params: migMPS}}, wantMPS: true},
		{name: "a GpuConfig for all requests skips a MIG device", dev: mig, configs: []entry{{params: mps}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			claim := &resourceapi.ResourceClaim{Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{}}}
			for _, e := range tc.configs {
				source := resourceapi.AllocationConfigSourceClaim
				if e.class {
					source = resourceapi.AllocationConfigSourceClass
				}
				claim.Status.Allocation.Devices.Config = append(claim.Status.Allocation.Devices.Config, resourceapi.DeviceAllocationConfiguration{
					Source: source, Requests: e.requests,
					DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
						Driver: "gpu.nvidia.com", Parameters: runtime.RawExtension{Raw: []byte(e.params)}}},
				})
			}
			got, err := deviceConfig(claim, tc.dev)
			if err != nil {
				t.Fatal(err)
			}
			if got.timeSlice != tc.wantSlice || (got.mps != nil) != tc.wantMPS {
				t.Errorf("time slice %q, MPS %v; want %q, %v", got.timeSlice, got.mps != nil, tc.wantSlice, tc.wantMPS)
			}
		})
	}
}
