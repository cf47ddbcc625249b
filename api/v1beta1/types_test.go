package v1beta1

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestDecode(t *testing.T) {
	cases := []struct {
		name, raw, wantErr string
	}{
		{"gpu config", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig"}`, ""},
		{"time slicing", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Long"}}}`, ""},
		{"mig mps", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"MigDeviceConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultActiveThreadPercentage":50}}}`, ""},
		{"mps multi-user, as NVIDIA's", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"multiUser":true}}}`, ""},
		{"mps multi-user not a boolean", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"multiUser":"yes"}}}`, "multiUser"},
		{"unknown field", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","bogus":1}}`, `sharing.bogus`},
		{"bad strategy", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"Bogus"}}`, "parameters.sharing.strategy"},
		{"bad interval", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Forever"}}}`, "interval"},
		{"bad percentage", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultActiveThreadPercentage":150}}}`, "defaultActiveThreadPercentage"},
		{"mps config with time slicing", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","mpsConfig":{}}}`, "mpsConfig"},
		{"mps limits", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultPinnedDeviceMemoryLimit":"10Gi","defaultPerDevicePinnedMemoryLimit":{"0":"5Gi"}}}}`, ""},
		{"bad mps limit", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultPinnedDeviceMemoryLimit":"lots"}}}`, "mpsConfig.defaultPinnedDeviceMemoryLimit"},
		{"tiny per-device limit", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultPerDevicePinnedMemoryLimit":{"0":"1Ki"}}}}`, "defaultPerDevicePinnedMemoryLimit[0]"},
		{"mig time slice", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"MigDeviceConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Long"}}}`, "parameters.sharing.timeSlicingConfig.interval: Long cannot be set in a MigDeviceConfig"},
		{"mig default time slice", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"MigDeviceConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Default"}}}`, ""},
		{"per-device limit by UUID", mpsPerDevice(`"GPU-6f1b5a4e-3c1d-4b8e-9a55-0c6b2e1f7d10":"1Gi","MIG-0e9d1c2b-aaaa-4bbb-8ccc-123456789abc":"2Gi","31":"1Gi"`), ""},
		{"per-device key with a sign", mpsPerDevice(`"+0":"1Gi"`), "defaultPerDevicePinnedMemoryLimit[+0]: device key \"+0\" is neither an index"},
		{"per-device key with a leading zero", mpsPerDevice(`"00":"1Gi"`), "defaultPerDevicePinnedMemoryLimit[00]"},
		{"per-device key with a space", mpsPerDevice(`" 1":"1Gi"`), "defaultPerDevicePinnedMemoryLimit[ 1]"},
		{"negative per-device key", mpsPerDevice(`"-1":"1Gi"`), "defaultPerDevicePinnedMemoryLimit[-1]"},
		{"per-device index beyond any claim", mpsPerDevice(`"32":"1Gi"`), "defaultPerDevicePinnedMemoryLimit[32]: device index 32 is over 31"},
		{"per-device key in lower case", mpsPerDevice(`"gpu-6f1b5a4e":"1Gi"`), "defaultPerDevicePinnedMemoryLimit[gpu-6f1b5a4e]"},
		{"per-device key, a bare prefix", mpsPerDevice(`"MIG-":"1Gi"`), "defaultPerDevicePinnedMemoryLimit[MIG-]"},
		{"empty per-device key", mpsPerDevice(`"":"1Gi"`), "defaultPerDevicePinnedMemoryLimit[]"},
		{"limit beyond int64", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultPinnedDeviceMemoryLimit":"1e30"}}}`, `defaultPinnedDeviceMemoryLimit: "1e30" is over 1Pi`},
		{"per-device limit beyond int64", mpsPerDevice(`"0":"9Ei"`), `defaultPerDevicePinnedMemoryLimit[0]: "9Ei" is over 1Pi`},
		{"negative limit", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultPinnedDeviceMemoryLimit":"-10Gi"}}}`, `"-10Gi" is under 1Mi`},
		{"vfio default", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"VfioDeviceConfig"}`, ""},
		{"vfio iommufd with API device", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"VfioDeviceConfig","iommu":{"backendPolicy":"PreferIommuFD","enableAPIDevice":true}}`, ""},
		{"vfio legacy", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"VfioDeviceConfig","iommu":{"backendPolicy":"LegacyOnly"}}`, ""},
		{"vfio bad policy", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"VfioDeviceConfig","iommu":{"backendPolicy":"IommuFDOnly"}}`, `parameters.iommu.backendPolicy: "IommuFDOnly" is not one of LegacyOnly, PreferIommuFD`},
		{"vfio unknown field", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"VfioDeviceConfig","sharing":{}}`, `unknown field "sharing"`},
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

func mpsPerDevice(limits string) string {
	return `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultPerDevicePinnedMemoryLimit":{` + limits + `}}}}`
}

// TestMemoryLimit: a limit is the quantity in whole mebibytes, or refused;
// never a wrapped or truncated number.
func TestMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		q       string
		want    int64
		wantErr string
	}{
		{q: "10Gi", want: 10240},
		{q: "1Mi", want: 1},
		{q: "1.5Mi", want: 1},
		{q: "1G", want: 953},
		{q: "1Pi", want: 1 << 30},
		{q: "1e30", wantErr: "over 1Pi"},
		{q: "8Ei", wantErr: "over 1Pi"},
		{q: "9223372036854775808", wantErr: "over 1Pi"},
		{q: "1025Ti", wantErr: "over 1Pi"},
		{q: "1Ki", wantErr: "under 1Mi"},
		{q: "0", wantErr: "under 1Mi"},
		{q: "-1Gi", wantErr: "under 1Mi"},
		{q: "-1e30", wantErr: "under 1Mi"},
		{q: "lots", wantErr: "not a quantity"},
	} {
		got, err := MemoryLimit(tc.q)
		switch {
		case tc.wantErr == "" && (err != nil || got != tc.want):
			t.Errorf("MemoryLimit(%q) = %d, %v; want %d", tc.q, got, err, tc.want)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("MemoryLimit(%q) = %d, %v; want an error with %q", tc.q, got, err, tc.wantErr)
		}
	}
}

// FuzzDecode: no input panics the decoder; every error names where in
// the parameters it is; and what decodes validates, applies as written (a
// per-device key names a device index or UUID, a limit parses) and
// decodes again the same once encoded. The seed corpus is
// testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
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
		if s := SharingOf(cfg); s != nil && s.MpsConfig != nil {
			for key, limit := range s.MpsConfig.DefaultPerDevicePinnedMemoryLimit {
				if _, _, err := DeviceKey(key); err != nil {
					t.Fatalf("admitted key %q: %v", key, err)
				}
				if mib, err := MemoryLimit(string(limit)); err != nil || mib < 1 {
					t.Fatalf("admitted limit %q: %d MiB, %v", limit, mib, err)
				}
			}
		}
		encoded, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Decode(encoded)
		if err != nil || !reflect.DeepEqual(again, cfg) {
			t.Fatalf("%s decodes to %+v, encoded %s to %+v (%v)", raw, cfg, encoded, again, err)
		}
	})
}

// TestDecodeNVIDIAQuantities: the pinned memory limits of a claim written
// for NVIDIA's driver, which reads them as resource.Quantity, mean the
// same here. In YAML an unquoted integer ("defaultPinnedDeviceMemoryLimit:
// 10737418240", or a per-device "0: 4294967296") reaches the driver as a
// JSON number, and spaces around a quoted quantity are ignored; anything
// else that is no quantity is refused, naming the field.
func TestDecodeNVIDIAQuantities(t *testing.T) {
	for _, tc := range []struct {
		name, mpsConfig string
		wantDefault     Quantity
		wantPerDevice   map[string]Quantity
		wantErr         string
	}{
		{name: "quoted", mpsConfig: `{"defaultPinnedDeviceMemoryLimit":"10Gi"}`, wantDefault: "10Gi"},
		{name: "a JSON number of bytes", mpsConfig: `{"defaultPinnedDeviceMemoryLimit":10737418240}`, wantDefault: "10737418240"},
		{name: "a JSON number with an exponent", mpsConfig: `{"defaultPinnedDeviceMemoryLimit":1e10}`, wantDefault: "1e10"},
		{name: "per-device JSON numbers", mpsConfig: `{"defaultPinnedDeviceMemoryLimit":"10Gi","defaultPerDevicePinnedMemoryLimit":{"0":4294967296,"1":"2Gi"}}`,
			wantDefault: "10Gi", wantPerDevice: map[string]Quantity{"0": "4294967296", "1": "2Gi"}},
		{name: "spaces around a quoted quantity", mpsConfig: `{"defaultPinnedDeviceMemoryLimit":" 10Gi "}`, wantDefault: "10Gi"},
		{name: "a number too small", mpsConfig: `{"defaultPinnedDeviceMemoryLimit":1024}`,
			wantErr: `parameters.sharing.mpsConfig.defaultPinnedDeviceMemoryLimit: "1024" is under 1Mi`},
		{name: "a bool", mpsConfig: `{"defaultPinnedDeviceMemoryLimit":true}`,
			wantErr: `parameters.sharing.mpsConfig.defaultPinnedDeviceMemoryLimit: "true" is not a quantity`},
		{name: "an object", mpsConfig: `{"defaultPerDevicePinnedMemoryLimit":{"0":{"value":"1Gi"}}}`,
			wantErr: `parameters.sharing.mpsConfig.defaultPerDevicePinnedMemoryLimit[0]: "{\"value\":\"1Gi\"}" is not a quantity`},
		{name: "a null per-device limit", mpsConfig: `{"defaultPerDevicePinnedMemoryLimit":{"0":null}}`,
			wantErr: `parameters.sharing.mpsConfig.defaultPerDevicePinnedMemoryLimit[0]: "" is not a quantity`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":` + tc.mpsConfig + `}}`
			cfg, err := Decode([]byte(raw))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m := SharingOf(cfg).MpsConfig
			if m.DefaultPinnedDeviceMemoryLimit == nil || *m.DefaultPinnedDeviceMemoryLimit != tc.wantDefault {
				t.Errorf("defaultPinnedDeviceMemoryLimit = %v, want %q", m.DefaultPinnedDeviceMemoryLimit, tc.wantDefault)
			}
			if !reflect.DeepEqual(m.DefaultPerDevicePinnedMemoryLimit, tc.wantPerDevice) {
				t.Errorf("defaultPerDevicePinnedMemoryLimit = %v, want %v", m.DefaultPerDevicePinnedMemoryLimit, tc.wantPerDevice)
			}
		})
	}
}

// TestDecodeNVIDIAStyleYAML: the parameters of claims written as NVIDIA's
// driver documents them, in YAML, converted to JSON as kubectl does
// (sigs.k8s.io/yaml: an unquoted integer becomes a JSON number, an
// integer map key a string), are admitted.
func TestDecodeNVIDIAStyleYAML(t *testing.T) {
	for _, tc := range []struct{ name, params string }{
		{"time slicing, long", `
apiVersion: resource.nvidia.com/v1beta1
kind: GpuConfig
sharing:
  strategy: TimeSlicing
  timeSlicingConfig:
    interval: Long`},
		{"time slicing, no interval", `
apiVersion: resource.nvidia.com/v1beta1
kind: GpuConfig
sharing:
  strategy: TimeSlicing`},
		{"MIG time slicing", `
apiVersion: resource.nvidia.com/v1beta1
kind: MigDeviceConfig
sharing:
  strategy: TimeSlicing`},
		{"MPS with quoted limits", `
apiVersion: resource.nvidia.com/v1beta1
kind: GpuConfig
sharing:
  strategy: MPS
  mpsConfig:
    defaultActiveThreadPercentage: 50
    defaultPinnedDeviceMemoryLimit: 10Gi`},
		{"MPS with limits in bytes, per device by index and UUID", `
apiVersion: resource.nvidia.com/v1beta1
kind: MigDeviceConfig
sharing:
  strategy: MPS
  mpsConfig:
    defaultPinnedDeviceMemoryLimit: 10737418240
    defaultPerDevicePinnedMemoryLimit:
      0: 4294967296
      MIG-0e9d1c2b-aaaa-4bbb-8ccc-123456789abc: 2Gi`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := yaml.YAMLToJSON([]byte(tc.params))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Decode(raw); err != nil {
				t.Errorf("%s: %v", raw, err)
			}
		})
	}
}
