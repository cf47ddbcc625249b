package webhook

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"
)

func opaque(params string) string {
	return `{"opaque":{"driver":"gpu.nvidia.com","parameters":` + params + `}}`
}

const (
	good = `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Long"}}}`
	bad  = `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultActiveThreadPercentage":150}}}`
)

func TestReview(t *testing.T) {
	for name, tc := range map[string]struct {
		kind, object string
		op           admissionv1.Operation
		wantErr      string // "" means allowed
	}{
		"claim without config":    {kind: "ResourceClaim", object: `{"spec":{"devices":{"requests":[{"name":"gpu","exactly":{"deviceClassName":"gpu.nvidia.com"}}]}}}`},
		"claim with valid config": {kind: "ResourceClaim", object: `{"spec":{"devices":{"config":[` + opaque(good) + `]}}}`},
		"claim with invalid config": {kind: "ResourceClaim", object: `{"spec":{"devices":{"config":[` + opaque(good) + `,` + opaque(bad) + `]}}}`,
			wantErr: "spec.devices.config[1].opaque.parameters.sharing.mpsConfig.defaultActiveThreadPercentage"},
		"claim with unknown field": {kind: "ResourceClaim", object: `{"spec":{"devices":{"config":[` + opaque(`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","intervall":"Long"}}`) + `]}}}`,
			wantErr: `spec.devices.config[0].opaque.parameters (GpuConfig): unknown field "sharing.intervall"`},
		"claim with a limit in bytes, as NVIDIA's driver reads it": {kind: "ResourceClaim", object: `{"spec":{"devices":{"config":[` +
			opaque(`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultPinnedDeviceMemoryLimit":10737418240,"defaultPerDevicePinnedMemoryLimit":{"0":4294967296}}}}`) + `]}}}`},
		"another driver's config is not ours": {kind: "ResourceClaim", object: `{"spec":{"devices":{"config":[{"opaque":{"driver":"example.com","parameters":{"whatever":1}}}]}}}`},
		"template with invalid kind": {kind: "ResourceClaimTemplate", object: `{"spec":{"spec":{"devices":{"config":[` + opaque(`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"TpuConfig"}`) + `]}}}}`,
			wantErr: "spec.spec.devices.config[0].opaque.parameters.kind"},
		"device class with invalid config": {kind: "DeviceClass", object: `{"spec":{"config":[` + opaque(bad) + `]}}`,
			wantErr: "spec.config[0].opaque.parameters.sharing.mpsConfig"},
		"delete is always allowed":  {kind: "ResourceClaim", op: admissionv1.Delete, object: `{"spec":{"devices":{"config":[` + opaque(bad) + `]}}}`},
		"other kinds pass":          {kind: "Pod", object: `{}`},
		"a claim without an object": {kind: "ResourceClaim", object: `null`, wantErr: "decode ResourceClaim: the review has no object"},
	} {
		t.Run(name, func(t *testing.T) {
			op := tc.op
			if op == "" {
				op = admissionv1.Create
			}
			resp := serve(t, NewHandler(1), reviewOf("uid-1", op, tc.kind, tc.object))
			if resp.UID != "uid-1" {
				t.Errorf("response UID %q", resp.UID)
			}
			if tc.wantErr == "" {
				if !resp.Allowed {
					t.Errorf("refused: %s", resp.Result.Message)
				}
				return
			}
			if resp.Allowed || !strings.Contains(resp.Result.Message, tc.wantErr) {
				t.Errorf("allowed=%v message %q, want refusal naming %q", resp.Allowed, resp.Result.Message, tc.wantErr)
			}
		})
	}
}

// reviewOf is an AdmissionReview as the API server sends it.
func reviewOf(uid types.UID, op admissionv1.Operation, kind, object string) []byte {
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: uid, Operation: op, Kind: metav1.GroupVersionKind{Group: "resource.k8s.io", Version: "v1", Kind: kind},
			Object: runtime.RawExtension{Raw: []byte(object)},
		},
	})
	if err != nil {
		panic(err)
	}
	return body
}

// serve posts body to h and returns the response of the AdmissionReview
// it answers.
func serve(t *testing.T, h http.Handler, body []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body)))
	var got admissionv1.AdmissionReview
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || got.Response == nil {
		t.Fatalf("not an AdmissionReview (%v): %s", err, rec.Body)
	}
	if got.APIVersion != "admission.k8s.io/v1" || got.Kind != "AdmissionReview" {
		t.Errorf("response of %s %s", got.APIVersion, got.Kind)
	}
	return got.Response
}

// TestServeTLS runs the handler behind TLS with a self-signed certificate,
// as the API server reaches it: TLS 1.1 is refused, an AdmissionReview
// over TLS 1.2+ is answered.
func TestServeTLS(t *testing.T) {
	dir := t.TempDir()
	if err := WriteSelfSigned(dir, []string{"127.0.0.1", "gpu-dra-webhook.gpu-dra-driver.svc"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(NewHandler(0))
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	caPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := func(maxVersion uint16) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: maxVersion}}}
	}
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "u", Operation: admissionv1.Create, Kind: metav1.GroupVersionKind{Kind: "ResourceClaim"},
			Object: runtime.RawExtension{Raw: []byte(`{"spec":{"devices":{"config":[` + opaque(bad) + `]}}}`)}},
	}
	body, _ := json.Marshal(review)
	if _, err := client(tls.VersionTLS11).Post(srv.URL+Path, "application/json", bytes.NewReader(body)); err == nil {
		t.Error("TLS 1.1 was accepted")
	}
	resp, err := client(0).Post(srv.URL+Path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.Response == nil || got.Response.Allowed || got.Response.UID != "u" || got.Kind != "AdmissionReview" {
		t.Errorf("response %+v", got.Response)
	}
}

// TestCertificateModes: the key is 0600 and the certificates 0644 under
// any umask, also when wider files were there before.
func TestCertificateModes(t *testing.T) {
	hostfstest.Umask(t, 0)
	dir := t.TempDir()
	for _, f := range []string{CAFile, CertFile, KeyFile} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("old"), 0o666); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteSelfSigned(dir, []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	hostfstest.CheckModes(t, map[string]os.FileMode{
		filepath.Join(dir, CAFile): 0o644, filepath.Join(dir, CertFile): 0o644, filepath.Join(dir, KeyFile): 0o600,
	})
}
