package v1

import (
	"reflect"
	"strings"
	"testing"
)

func TestEncodeDecodesBack(t *testing.T) {
	tests := []struct {
		name string
		in   DeviceStatus
	}{
		{"whole GPU", DeviceStatus{Type: "gpu", GPU: GPU{UUID: "GPU-1", Minor: 3, PCIBusID: "0000:18:00.0", ProductName: "NVIDIA H100 80GB HBM3"},
			CDIDeviceIDs: []string{"k8s.gpu.nvidia.com/claim=uid-gpu-3"}}},
		{"MIG device", DeviceStatus{Type: "mig", GPU: GPU{UUID: "GPU-1", Minor: 0},
			MIG: &MIG{UUID: "MIG-2", Profile: "3g.40gb", GPUInstanceID: 2, ComputeInstanceID: 0, PlacementStart: 4, PlacementSize: 4}}},
		{"share", DeviceStatus{Type: "shared", GPU: GPU{UUID: "GPU-1"}, MPS: true,
			Share: &Share{ID: "abc", MemoryBytes: 1 << 30, ComputePercent: 25}}},
		{"admin access", DeviceStatus{Type: "gpu", GPU: GPU{UUID: "GPU-1"}, AdminAccess: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Encode(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode(%s): %v", b, err)
			}
			want := tt.in
			want.APIVersion, want.Kind = GroupVersion, Kind
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("decoded %+v, want %+v", *got, want)
			}
		})
	}
}

// TestWireFormat pins the JSON names consumers read: renaming one breaks
// dashboards and scripts outside this repository.
func TestWireFormat(t *testing.T) {
	b, err := Encode(DeviceStatus{Type: "mig", GPU: GPU{UUID: "GPU-1", Minor: 2, PCIBusID: "0000:18:00.0"},
		MIG:   &MIG{UUID: "MIG-2", Profile: "1g.10gb", GPUInstanceID: 9, ComputeInstanceID: 0, PlacementStart: 6, PlacementSize: 1},
		Share: &Share{ID: "s", MemoryBytes: 5}, MPS: true, CDIDeviceIDs: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"kind":"DeviceStatus","apiVersion":"status.gpu.nvidia.com/v1","type":"mig",` +
		`"gpu":{"uuid":"GPU-1","minor":2,"pciBusID":"0000:18:00.0"},` +
		`"mig":{"uuid":"MIG-2","profile":"1g.10gb","gpuInstanceID":9,"computeInstanceID":0,"placementStart":6,"placementSize":1},` +
		`"share":{"id":"s","memoryBytes":5},"mps":true,"cdiDeviceIDs":["a"]}`
	if string(b) != want {
		t.Errorf("encoded\n%s\nwant\n%s", b, want)
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		wantErr string
	}{
		{"a newer writer's extra field is ignored", `{"apiVersion":"status.gpu.nvidia.com/v1","kind":"DeviceStatus","type":"gpu","gpu":{"uuid":"GPU-1"},"future":1}`, ""},
		{"another version", `{"apiVersion":"status.gpu.nvidia.com/v2","kind":"DeviceStatus"}`, "want status.gpu.nvidia.com/v1"},
		{"another kind", `{"apiVersion":"status.gpu.nvidia.com/v1","kind":"GpuConfig"}`, "want status.gpu.nvidia.com/v1, DeviceStatus"},
		{"no version", `{"type":"gpu"}`, "apiVersion"},
		{"not JSON", `gpu`, "decode device status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.data))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Decode: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Decode: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}
