package v1beta1

import (
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	cases := []struct {
		name, raw, wantErr string
	}{
		{"gpu config", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig"}`, ""},
		{"time slicing", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Long"}}}`, ""},
		{"mig mps", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"MigDeviceConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultActiveThreadPercentage":50}}}`, ""},
		{"unknown field", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","bogus":1}}`, `sharing.bogus`},
		{"bad strategy", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"Bogus"}}`, "parameters.sharing.strategy"},
		{"bad interval", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Forever"}}}`, "interval"},
		{"bad percentage", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultActiveThreadPercentage":150}}}`, "defaultActiveThreadPercentage"},
		{"mps config with time slicing", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","mpsConfig":{}}}`, "mpsConfig"},
		{"mps limits", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultPinnedDeviceMemoryLimit":"10Gi","defaultPerDevicePinnedMemoryLimit":{"0":"5Gi"}}}}`, ""},
		{"bad mps limit", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultPinnedDeviceMemoryLimit":"lots"}}}`, "mpsConfig.defaultPinnedDeviceMemoryLimit"},
		{"tiny per-device limit", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultPerDevicePinnedMemoryLimit":{"0":"1Ki"}}}}`, "defaultPerDevicePinnedMemoryLimit[0]"},
		{"wrong version", `{"apiVersion":"v1","kind":"GpuConfig"}`, "parameters.apiVersion"},
		{"wrong kind", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"TpuConfig"}`, "parameters.kind"},
		{"not JSON", `{`, "parameters"},
		{"wrong case", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","Sharing":{}}`, "Sharing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.raw))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
			}
		})
	}
}

// FuzzDecode: no input panics the decoder, and every error names where in
// the parameters it is.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Long"}}}`,
		`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"MigDeviceConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultActiveThreadPercentage":50,"defaultPinnedDeviceMemoryLimit":"10Gi","defaultPerDevicePinnedMemoryLimit":{"0":"1Gi"}}}}`,
		`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"Bogus"}}`,
		`{"apiVersion":"v1"}`, `{`, `null`, `[]`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		cfg, err := Decode(raw)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "parameters") {
				t.Fatalf("error does not name a field: %v", err)
			}
			return
		}
		if cfg == nil {
			t.Fatal("no error and no configuration")
		}
		if err := Validate(cfg); err != nil {
			t.Fatalf("decoded configuration fails validation: %v", err)
		}
	})
}
