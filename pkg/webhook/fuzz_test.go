package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	admissionv1 "k8s.io/api/admission/v1"
	resourceapi "k8s.io/api/resource/v1"
	sigsjson "sigs.k8s.io/json"

	"github.com/gpu-dra/gpu-dra-driver/api/v1beta1"
)

// FuzzServeHTTP: no body panics the handler or goes unanswered; an
// answer is an AdmissionReview for the request's UID or an HTTP error;
// and wherever the whole review and object decode into the Kubernetes
// types, the webhook (which decodes only the configuration) decides as
// decoding the whole object would: allowed exactly when every
// gpu.nvidia.com configuration decodes, refused with the same message
// otherwise. The seed corpus is testdata/fuzz/FuzzServeHTTP.
func FuzzServeHTTP(f *testing.F) {
	h := NewHandler(1)
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body)))
		want, decodes := reference(body)
		switch rec.Code {
		case http.StatusOK:
		case http.StatusBadRequest:
			if decodes {
				t.Fatalf("400 (%s) for a review that decodes", rec.Body)
			}
			return
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		var got admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || got.Response == nil {
			t.Fatalf("not an AdmissionReview (%v): %s", err, rec.Body)
		}
		if !decodes {
			return
		}
		if got.Response.UID != want.UID || got.Response.Allowed != want.Allowed {
			t.Fatalf("response %+v, decoding the whole object gives %+v", got.Response, want)
		}
		if !want.Allowed && got.Response.Result.Message != want.Result.Message {
			t.Fatalf("refused with %q, decoding the whole object with %q", got.Response.Result.Message, want.Result.Message)
		}
	})
}

// reference decides a review by decoding all of it into the Kubernetes
// types, as the webhook once did; decodes is false where that fails.
func reference(body []byte) (resp *admissionv1.AdmissionResponse, decodes bool) {
	var review admissionv1.AdmissionReview
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(body, &review); err != nil || review.Request == nil {
		return nil, false
	}
	req := review.Request
	resp = &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Operation == admissionv1.Delete || req.Operation == admissionv1.Connect {
		return resp, true
	}
	var configs []resourceapi.DeviceConfiguration
	var prefix string
	raw := req.Object.Raw
	if raw == nil {
		return nil, false // no object (or null): refused, as malformed, by the webhook
	}
	switch req.Kind.Kind {
	case "ResourceClaim":
		var o resourceapi.ResourceClaim
		if sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &o) != nil {
			return nil, false
		}
		for _, c := range o.Spec.Devices.Config {
			configs = append(configs, c.DeviceConfiguration)
		}
		prefix = "spec.devices.config"
	case "ResourceClaimTemplate":
		var o resourceapi.ResourceClaimTemplate
		if sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &o) != nil {
			return nil, false
		}
		for _, c := range o.Spec.Spec.Devices.Config {
			configs = append(configs, c.DeviceConfiguration)
		}
		prefix = "spec.spec.devices.config"
	case "DeviceClass":
		var o resourceapi.DeviceClass
		if sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &o) != nil {
			return nil, false
		}
		for _, c := range o.Spec.Config {
			configs = append(configs, c.DeviceConfiguration)
		}
		prefix = "spec.config"
	}
	for i, c := range configs {
		if c.Opaque == nil || c.Opaque.Driver != names.DriverName {
			continue
		}
		if _, err := v1beta1.Decode(c.Opaque.Parameters.Raw); err != nil {
			return refusal(req.UID, http.StatusUnprocessableEntity, "", fmt.Sprintf("%s[%d].opaque.%v", prefix, i, err)), true
		}
	}
	return resp, true
}
