// Package webhook is the validating admission webhook for the opaque
// configuration of gpu.nvidia.com in ResourceClaims, ResourceClaimTemplates
// and DeviceClasses. It decodes every such configuration with the same
// api/v1beta1.Decode the kubelet plugin uses, so what is admitted is what
// prepares, and a mistake is refused at `kubectl apply` with the path of
// the offending field instead of surfacing later as a pod stuck in
// ContainerCreating.
package webhook

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	admissionv1 "k8s.io/api/admission/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/api/v1beta1"
)

// Path is where the webhook serves admission reviews.
const Path = "/validate-resource-config"

// maxBody bounds an admission review; the API server's objects are far
// smaller.
const maxBody = 4 << 20

// Handler serves AdmissionReview requests (admission.k8s.io/v1).
type Handler struct{}

// ServeHTTP implements http.Handler.
func (Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	logger := klog.FromContext(r.Context())
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		http.Error(w, "read request: "+err.Error(), http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, fmt.Sprintf("not an AdmissionReview: %v", err), http.StatusBadRequest)
		return
	}
	resp := Review(review.Request)
	if !resp.Allowed {
		logger.Info("Refused", "kind", review.Request.Kind.Kind, "object", klog.KRef(review.Request.Namespace, review.Request.Name), "reason", resp.Result.Message)
	}
	review.Response = resp
	review.Request = nil
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(&review); err != nil {
		logger.Error(err, "Cannot write the admission response")
	}
}

// Review decides one admission request.
func Review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Operation == admissionv1.Delete || req.Operation == admissionv1.Connect {
		return resp
	}
	err := validate(req.Kind.Kind, req.Object.Raw)
	if err != nil {
		resp.Allowed = false
		resp.Result = &metav1.Status{
			Status: metav1.StatusFailure, Code: http.StatusUnprocessableEntity,
			Reason: metav1.StatusReasonInvalid, Message: err.Error(),
		}
	}
	return resp
}

// validate decodes the object and every opaque configuration of our
// driver in it; the error names the field path.
func validate(kind string, raw []byte) error {
	var configs []resourceapi.DeviceClaimConfiguration
	var prefix string
	switch kind {
	case "ResourceClaim":
		var o resourceapi.ResourceClaim
		if err := json.Unmarshal(raw, &o); err != nil {
			return fmt.Errorf("decode ResourceClaim: %w", err)
		}
		configs, prefix = o.Spec.Devices.Config, "spec.devices.config"
	case "ResourceClaimTemplate":
		var o resourceapi.ResourceClaimTemplate
		if err := json.Unmarshal(raw, &o); err != nil {
			return fmt.Errorf("decode ResourceClaimTemplate: %w", err)
		}
		configs, prefix = o.Spec.Spec.Devices.Config, "spec.spec.devices.config"
	case "DeviceClass":
		var o resourceapi.DeviceClass
		if err := json.Unmarshal(raw, &o); err != nil {
			return fmt.Errorf("decode DeviceClass: %w", err)
		}
		for i, c := range o.Spec.Config {
			if err := validateOpaque(c.Opaque); err != nil {
				return fmt.Errorf("spec.config[%d].opaque.%w", i, err)
			}
		}
		return nil
	default:
		return nil // not ours to judge
	}
	for i, c := range configs {
		if err := validateOpaque(c.Opaque); err != nil {
			return fmt.Errorf("%s[%d].opaque.%w", prefix, i, err)
		}
	}
	return nil
}

// validateOpaque decodes a configuration of our driver; errors start with
// "parameters".
func validateOpaque(o *resourceapi.OpaqueDeviceConfiguration) error {
	if o == nil || o.Driver != names.DriverName {
		return nil
	}
	_, err := v1beta1.Decode(o.Parameters.Raw)
	return err
}
