//go:build e2e

package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
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

const (
	webhookNS         = "gpu-dra-driver"
	webhookDeployment = "gpu-dra-driver-webhook"
	webhookPods       = "app.kubernetes.io/instance=gpu-dra-driver,app.kubernetes.io/component=webhook"
)

// claimWith is a ResourceClaim of one request with the given opaque
// configuration entries (none if empty).
func claimWith(ns, name string, configs ...resourceapi.DeviceClaimConfiguration) *resourceapi.ResourceClaim {
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
			Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: "gpu.nvidia.com"}}},
			Config:   configs,
		}},
	}
}

func opaqueConfig(driver, params string) resourceapi.DeviceClaimConfiguration {
	return resourceapi.DeviceClaimConfiguration{DeviceConfiguration: resourceapi.DeviceConfiguration{
		Opaque: &resourceapi.OpaqueDeviceConfiguration{Driver: driver, Parameters: runtime.RawExtension{Raw: []byte(params)}},
	}}
}

const validGpuConfig = `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Long"}}}`

// TestWebhookJudgesOnlyOurConfig: with every webhook replica gone, claims,
// templates and classes without gpu.nvidia.com configuration (another
// driver's included) are still admitted, and only ours wait for the
// webhook (failurePolicy Fail). The replicas are restored after.
func TestWebhookJudgesOnlyOurConfig(t *testing.T) {
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	scale := func(n int32) {
		t.Helper()
		s, err := client.AppsV1().Deployments(webhookNS).GetScale(ctx(), webhookDeployment, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Spec.Replicas = n
		if _, err := client.AppsV1().Deployments(webhookNS).UpdateScale(ctx(), webhookDeployment, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	original, err := client.AppsV1().Deployments(webhookNS).Get(ctx(), webhookDeployment, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		scale(*original.Spec.Replicas)
		kubectl(t, "rollout", "status", "-n", webhookNS, "deployment/"+webhookDeployment, "--timeout=120s")
		eventually(t, 60*time.Second, "the webhook answering again", func() (bool, error) {
			_, err := client.ResourceV1().ResourceClaims("default").Create(ctx(), claimWith("default", "probe", opaqueConfig("gpu.nvidia.com", validGpuConfig)), dryRun)
			return err == nil, err
		})
	})
	scale(0)
	eventually(t, 60*time.Second, "no webhook replica left", func() (bool, error) {
		pods, err := client.CoreV1().Pods(webhookNS).List(ctx(), metav1.ListOptions{LabelSelector: webhookPods})
		return err == nil && len(pods.Items) == 0, errors.Join(err, fmt.Errorf("%d pods", len(pods.Items)))
	})
	eventually(t, 30*time.Second, "our configuration refused for want of the webhook", func() (bool, error) {
		_, err := client.ResourceV1().ResourceClaims("default").Create(ctx(), claimWith("default", "ours", opaqueConfig("gpu.nvidia.com", validGpuConfig)), dryRun)
		return err != nil && strings.Contains(err.Error(), `failed calling webhook "config.gpu.nvidia.com"`), err
	})
	for name, create := range map[string]func() error{
		"a claim without configuration": func() error {
			_, err := client.ResourceV1().ResourceClaims("default").Create(ctx(), claimWith("default", "plain"), dryRun)
			return err
		},
		"a claim with another driver's configuration": func() error {
			_, err := client.ResourceV1().ResourceClaims("default").Create(ctx(), claimWith("default", "other", opaqueConfig("example.com", `{"anything":1}`)), dryRun)
			return err
		},
		"a template with another driver's configuration": func() error {
			_, err := client.ResourceV1().ResourceClaimTemplates("default").Create(ctx(), &resourceapi.ResourceClaimTemplate{
				ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "default"},
				Spec:       resourceapi.ResourceClaimTemplateSpec{Spec: claimWith("", "", opaqueConfig("example.com", `{"anything":1}`)).Spec},
			}, dryRun)
			return err
		},
		"a class of another driver": func() error {
			_, err := client.ResourceV1().DeviceClasses().Create(ctx(), &resourceapi.DeviceClass{
				ObjectMeta: metav1.ObjectMeta{Name: "other.example.com"},
				Spec: resourceapi.DeviceClassSpec{
					Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: `device.driver == "example.com"`}}},
					Config: []resourceapi.DeviceClassConfiguration{{DeviceConfiguration: resourceapi.DeviceConfiguration{
						Opaque: &resourceapi.OpaqueDeviceConfiguration{Driver: "example.com", Parameters: runtime.RawExtension{Raw: []byte(`{}`)}}}}},
				},
			}, dryRun)
			return err
		},
	} {
		if err := create(); err != nil {
			t.Errorf("%s refused while the webhook is down: %v", name, err)
		}
	}
}

// TestWebhookSurvivesOversizedAndConcurrentRequests: a claim whose review
// is over the webhook's limit is refused through the API server naming
// the limit; the replicas, sent oversized and concurrent reviews
// directly (as anything in the cluster network can), neither restart nor
// stop answering, and still judge through the API server afterwards.
func TestWebhookSurvivesOversizedAndConcurrentRequests(t *testing.T) {
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	// About 1.3 MB of CEL selectors: within the API server's limits, over
	// the webhook's 1 MiB.
	big := claimWith("default", "big", opaqueConfig("gpu.nvidia.com", validGpuConfig))
	long := `device.driver == "` + strings.Repeat("x", 10000) + `"`
	big.Spec.Devices.Requests = nil
	for r := range 4 {
		req := resourceapi.DeviceRequest{Name: fmt.Sprintf("gpu-%d", r), Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: "gpu.nvidia.com"}}
		for range 32 {
			req.Exactly.Selectors = append(req.Exactly.Selectors, resourceapi.DeviceSelector{CEL: &resourceapi.CELDeviceSelector{Expression: long}})
		}
		big.Spec.Devices.Requests = append(big.Spec.Devices.Requests, req)
	}
	if _, err := client.ResourceV1().ResourceClaims("default").Create(ctx(), big, dryRun); err == nil ||
		!strings.Contains(err.Error(), "the admission review is over the 1048576 bytes the gpu.nvidia.com webhook reads") {
		t.Errorf("a claim with a review over 1 MiB: %v, want the webhook's refusal naming the limit", err)
	}

	pods, err := client.CoreV1().Pods(webhookNS).List(ctx(), metav1.ListOptions{LabelSelector: webhookPods})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("webhook pods: %v, %d", err, len(pods.Items))
	}
	restarts := map[string]int32{}
	for _, p := range pods.Items {
		for _, c := range p.Status.ContainerStatuses {
			restarts[p.Name] += c.RestartCount
		}
	}
	review := func(uid string, filler int) []byte {
		object := `{"metadata":{"name":"c","namespace":"default","annotations":{"a":"` + strings.Repeat("x", filler) + `"}},` +
			`"spec":{"devices":{"config":[{"opaque":{"driver":"gpu.nvidia.com","parameters":` + validGpuConfig + `}}]}}}`
		return []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"` + uid +
			`","kind":{"group":"resource.k8s.io","version":"v1","kind":"ResourceClaim"},"operation":"CREATE","object":` + object + `}}`)
	}
	huge, fits := review("huge", 4<<20), review("fits", 1000<<10)
	httpc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the test checks availability, not identity
		MaxConnsPerHost: 0,
	}}
	var wg sync.WaitGroup
	var answered, refusedHuge, allowedFits atomic.Int32
	for _, p := range pods.Items {
		url := "https://" + net.JoinHostPort(p.Status.PodIP, "8443") + "/validate-resource-config"
		for i := range 48 {
			body := huge
			if i%2 == 1 {
				body = fits
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := httpc.Post(url, "application/json", bytes.NewReader(body))
				if err != nil {
					return
				}
				defer resp.Body.Close()
				var got admissionv1.AdmissionReview
				if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&got) != nil || got.Response == nil {
					return
				}
				answered.Add(1)
				switch {
				case got.Response.UID == "huge" && !got.Response.Allowed:
					refusedHuge.Add(1)
				case got.Response.UID == "fits" && got.Response.Allowed:
					allowedFits.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	t.Logf("MEASURE webhook direct reviews: %d of %d answered (%d of 4 MiB refused, %d of 1000 KiB allowed)",
		answered.Load(), 48*len(pods.Items), refusedHuge.Load(), allowedFits.Load())
	// Every review that fits is answered; an oversized one may also meet
	// a connection closed before its body was all sent.
	if refusedHuge.Load() == 0 || int(allowedFits.Load()) != 24*len(pods.Items) {
		t.Errorf("the replicas answered %d reviews: %d oversized refused, %d of %d that fit allowed",
			answered.Load(), refusedHuge.Load(), allowedFits.Load(), 24*len(pods.Items))
	}
	// And each replica still answers.
	for _, p := range pods.Items {
		url := "https://" + net.JoinHostPort(p.Status.PodIP, "8443") + "/validate-resource-config"
		resp, err := httpc.Post(url, "application/json", bytes.NewReader(review("probe", 0)))
		if err != nil {
			t.Errorf("webhook pod %s after the flood: %v", p.Name, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("webhook pod %s after the flood: status %d", p.Name, resp.StatusCode)
		}
	}

	after, err := client.CoreV1().Pods(webhookNS).List(ctx(), metav1.ListOptions{LabelSelector: webhookPods})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range after.Items {
		var n int32
		var last string
		for _, c := range p.Status.ContainerStatuses {
			n += c.RestartCount
			if term := c.LastTerminationState.Terminated; term != nil {
				last = term.Reason
			}
		}
		if before, ok := restarts[p.Name]; !ok || before != n {
			t.Errorf("webhook pod %s: %d restarts, %d before (there before: %v; last termination %q)", p.Name, n, before, ok, last)
		}
	}
	if _, err := client.ResourceV1().ResourceClaims("default").Create(ctx(), claimWith("default", "after", opaqueConfig("gpu.nvidia.com", validGpuConfig)), dryRun); err != nil {
		t.Errorf("a valid claim after the flood: %v", err)
	}
	bad := `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultPerDevicePinnedMemoryLimit":{"+0":"1Gi"}}}}`
	if _, err := client.ResourceV1().ResourceClaims("default").Create(ctx(), claimWith("default", "after-bad", opaqueConfig("gpu.nvidia.com", bad)), dryRun); err == nil ||
		!strings.Contains(err.Error(), "defaultPerDevicePinnedMemoryLimit[+0]") {
		t.Errorf("a claim with a per-device key no device matches, after the flood: %v", err)
	}
}
