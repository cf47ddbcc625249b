//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInvalidConfigRefusedAtApply: the admission webhook refuses a claim,
// a template and a DeviceClass whose gpu.nvidia.com configuration is
// invalid, naming the field, and admits a valid one.
func TestInvalidConfigRefusedAtApply(t *testing.T) {
	const ns = "gpu-webhook"
	t.Cleanup(func() {
		cleanNamespace(t, ns)
		kubectlErr("delete", "deviceclass", "gpu-webhook-bad", "--ignore-not-found")
	})
	applyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: gpu-webhook}\n")
	config := func(params string) string {
		return `config: [{opaque: {driver: gpu.nvidia.com, parameters: ` + params + `}}]`
	}
	for _, tc := range []struct {
		name, yaml, wantErr string
	}{
		{"valid claim", `apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: good, namespace: gpu-webhook}
spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}], ` +
			config(`{apiVersion: resource.nvidia.com/v1beta1, kind: GpuConfig, sharing: {strategy: TimeSlicing, timeSlicingConfig: {interval: Long}}}`) + `}}
`, ""},
		{"claim with a misspelt field", `apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: typo, namespace: gpu-webhook}
spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}], ` +
			config(`{apiVersion: resource.nvidia.com/v1beta1, kind: GpuConfig, sharing: {strategy: TimeSlicing, timeSlicingConfig: {intervall: Long}}}`) + `}}
`, `spec.devices.config[0].opaque.parameters (GpuConfig): unknown field "sharing.timeSlicingConfig.intervall"`},
		{"template with a bad percentage", `apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: bad, namespace: gpu-webhook}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}], ` +
			config(`{apiVersion: resource.nvidia.com/v1beta1, kind: GpuConfig, sharing: {strategy: MPS, mpsConfig: {defaultActiveThreadPercentage: 150}}}`) + `}}}
`, "spec.spec.devices.config[0].opaque.parameters.sharing.mpsConfig.defaultActiveThreadPercentage"},
		{"device class with a bad kind", `apiVersion: resource.k8s.io/v1
kind: DeviceClass
metadata: {name: gpu-webhook-bad}
spec: {` + config(`{apiVersion: resource.nvidia.com/v1beta1, kind: TpuConfig}`) + `}
`, "spec.config[0].opaque.parameters.kind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "obj.yaml")
			if err := os.WriteFile(f, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := kubectlErr("apply", "-f", f)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("kubectl apply: %v, want a refusal naming %q", err, tc.wantErr)
			}
		})
	}
}
