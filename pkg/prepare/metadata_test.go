package prepare

import (
	"fmt"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// TestDeviceMetadata: a device's metadata is what it is published with,
// plus, for a MIG device made at prepare, its UUID and instances; the
// published map is never changed.
func TestDeviceMetadata(t *testing.T) {
	published := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		names.AttrType:             {StringValue: ptr.To(names.TypeGPU)},
		names.AttrStandardPCIBusID: {StringValue: ptr.To("0000:18:00.0")},
	}
	mig := &checkpoint.MIG{Profile: "1g.10gb", Created: true, UUID: "MIG-1234", GIID: 9, CIID: 0}
	tests := []struct {
		name      string
		published map[resourceapi.QualifiedName]resourceapi.DeviceAttribute
		device    checkpoint.Device
		want      map[string]string // attribute → its value, printed
	}{
		{"whole GPU", published, checkpoint.Device{Name: "gpu-0"},
			map[string]string{"type": "gpu", "resource.kubernetes.io/pciBusID": "0000:18:00.0"}},
		{"MIG device made at prepare", published, checkpoint.Device{Name: "gpu-0-mig-1g10gb-0", MIG: mig},
			map[string]string{"type": "gpu", "resource.kubernetes.io/pciBusID": "0000:18:00.0", "uuid": "MIG-1234", "gpuInstanceID": "9", "computeInstanceID": "0"}},
		{"MIG device not yet made", nil, checkpoint.Device{Name: "gpu-0-mig-1g10gb-0", MIG: &checkpoint.MIG{Profile: "1g.10gb"}}, nil},
		{"no longer published", nil, checkpoint.Device{Name: "gpu-0"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			md := deviceMetadata(tt.published, tt.device)
			if tt.want == nil {
				if md != nil {
					t.Fatalf("metadata %+v, want none", md)
				}
				return
			}
			if md == nil || len(md.Attributes) != len(tt.want) {
				t.Fatalf("metadata %+v, want %v", md, tt.want)
			}
			for k, v := range tt.want {
				a, ok := md.Attributes[k]
				if !ok {
					t.Errorf("no attribute %s", k)
					continue
				}
				var got string
				switch {
				case a.StringValue != nil:
					got = *a.StringValue
				case a.IntValue != nil:
					got = fmt.Sprint(*a.IntValue)
				}
				if got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if len(published) != 2 {
				t.Errorf("the published attributes were changed: %v", published)
			}
		})
	}
}
