// Package webhook is the validating admission webhook for the opaque
// configuration of gpu.nvidia.com in ResourceClaims, ResourceClaimTemplates
// and DeviceClasses. It decodes every such configuration with the same
// api/v1beta1.Decode the kubelet plugin uses, so what is admitted is what
// prepares, and a mistake is refused at `kubectl apply` with the path of
// the offending field instead of surfacing later as a pod stuck in
// ContainerCreating.
//
// The webhook is called with failurePolicy Fail, so its availability is
// that of every claim with our configuration: each request is bounded in
// size (MaxRequestBytes), in memory (only the configuration is decoded)
// and in number (NewHandler's maxInFlight), and NewServer bounds time.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	admissionv1 "k8s.io/api/admission/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	sigsjson "sigs.k8s.io/json"

	"github.com/gpu-dra/gpu-dra-driver/api/v1beta1"
)

// Path is where the webhook serves admission reviews.
const Path = "/validate-resource-config"

// MaxRequestBytes bounds an AdmissionReview. What our configuration can
// take is bounded by the API server's validation: at most 32 entries of
// 10 KiB of opaque parameters (resource.k8s.io/v1's DeviceConfigMaxSize
// and OpaqueParametersMaxLength), 320 KiB, in a claim, template or class.
// 1 MiB holds that with room for the rest of the object (requests and
// their selectors, metadata), and for a DeviceClass update, which carries
// the old object too, two classes of half a megabyte. The API server
// accepts bodies of 3 MiB; a review over this limit is refused, naming
// the limit, rather than decoded.
const MaxRequestBytes = 1 << 20

// DefaultMaxInFlight is how many reviews a replica reads and decides at a
// time: a review takes well under a millisecond of CPU, and the memory of
// those in flight stays under DefaultMaxInFlight x (MaxRequestBytes +
// the decoded configuration), a few MiB.
const DefaultMaxInFlight = 8

// maxQueueWait bounds how long a review waits for a free slot: past the
// API server's timeout for the webhook (5 s) nobody reads the answer.
const maxQueueWait = 10 * time.Second

// Handler serves AdmissionReview requests (admission.k8s.io/v1). Reviews
// beyond its bound on those in flight wait for a slot, unread, until the
// caller gives up, and are then answered 503. Make one with NewHandler:
// the zero Handler has no slot and answers every review 503.
type Handler struct {
	slots chan struct{}
}

// NewHandler returns a handler that reads and decides at most maxInFlight
// reviews at a time (DefaultMaxInFlight if not positive).
func NewHandler(maxInFlight int) *Handler {
	if maxInFlight <= 0 {
		maxInFlight = DefaultMaxInFlight
	}
	return &Handler{slots: make(chan struct{}, maxInFlight)}
}

// review is the part of an AdmissionReview the webhook reads. The old
// object of an update, the user and the options are skipped, never copied.
type review struct {
	metav1.TypeMeta `json:",inline"`
	Request         *struct {
		UID       types.UID               `json:"uid"`
		Kind      metav1.GroupVersionKind `json:"kind"`
		Operation admissionv1.Operation   `json:"operation"`
		Object    rawObject               `json:"object"`
	} `json:"request"`
}

// rawObject is the JSON of the reviewed object, decoded once its kind is
// known. It is a slice of the request body, not a copy: the handler keeps
// the body until it has answered and nothing writes to it.
type rawObject []byte

// UnmarshalJSON implements json.Unmarshaler. A null leaves the object as
// it was, as runtime.RawExtension (what the API server and every client
// decode "object" into) does: a review that repeats "object", ending in
// null, is judged on the object those would see, not admitted unjudged
// or refused where they would find one.
func (o *rawObject) UnmarshalJSON(b []byte) error {
	if string(b) != "null" {
		*o = b
	}
	return nil
}

// config is one entry of a configuration list, without the requests it
// names (irrelevant to validity).
type config struct {
	Opaque *resourceapi.OpaqueDeviceConfiguration `json:"opaque"`
}

// The device configuration of each kind the webhook judges, and nothing
// else of the object: its selectors and metadata are skipped.
type (
	claimConfig struct {
		Spec struct {
			Devices struct {
				Config []config `json:"config"`
			} `json:"devices"`
		} `json:"spec"`
	}
	templateConfig struct {
		Spec struct {
			Spec struct {
				Devices struct {
					Config []config `json:"config"`
				} `json:"devices"`
			} `json:"spec"`
		} `json:"spec"`
	}
	classConfig struct {
		Spec struct {
			Config []config `json:"config"`
		} `json:"spec"`
	}
)

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	logger := klog.FromContext(r.Context())
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	wait, cancel := context.WithTimeout(r.Context(), maxQueueWait)
	defer cancel()
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	case <-wait.Done():
		logger.Info("Admission review not read: too many in flight", "inFlight", cap(h.slots))
		http.Error(w, fmt.Sprintf("%d admission reviews in flight; try again", cap(h.slots)), http.StatusServiceUnavailable)
		return
	}
	body, err := readBody(w, r)
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		refuseTooLarge(logger, w, body)
		return
	}
	if err != nil {
		http.Error(w, "read request: "+err.Error(), http.StatusBadRequest)
		return
	}
	var in review
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(body, &in); err != nil || in.Request == nil {
		http.Error(w, fmt.Sprintf("not an AdmissionReview: %v", err), http.StatusBadRequest)
		return
	}
	req := in.Request
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Operation != admissionv1.Delete && req.Operation != admissionv1.Connect {
		if err := validate(req.Kind.Kind, req.Object); err != nil {
			resp = refusal(req.UID, http.StatusUnprocessableEntity, metav1.StatusReasonInvalid, err.Error())
			logger.Info("Refused", "kind", req.Kind.Kind, "uid", req.UID, "reason", err.Error())
		}
	}
	respond(logger, w, in.TypeMeta, resp)
}

// uidPrefix is how much of a review announced as too large is read to
// find its UID.
const uidPrefix = 4 << 10

// readBody reads the request's body, at most MaxRequestBytes of it: in
// one allocation of the announced length when there is one, so a review
// costs its size and not the doublings of a growing buffer. A longer body
// is an *http.MaxBytesError, returned with the part read (only its first
// uidPrefix bytes when the length was announced).
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, MaxRequestBytes)
	switch n := r.ContentLength; {
	case n > MaxRequestBytes:
		buf := make([]byte, uidPrefix)
		read, _ := io.ReadFull(body, buf)
		return buf[:read], &http.MaxBytesError{Limit: MaxRequestBytes}
	case n >= 0:
		buf := make([]byte, n)
		if _, err := io.ReadFull(body, buf); err != nil {
			return nil, err
		}
		return buf, nil
	}
	// Unannounced (the API server always announces it): one buffer of
	// the limit, the most a review may take.
	buf := make([]byte, MaxRequestBytes+1)
	n, err := io.ReadFull(body, buf)
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = nil
	}
	return buf[:n], err
}

// refuseTooLarge answers a review over MaxRequestBytes: a refusal the API
// server shows to whoever applied the object, when the UID can be read
// from the part read, else HTTP 413.
func refuseTooLarge(logger klog.Logger, w http.ResponseWriter, prefix []byte) {
	msg := fmt.Sprintf("the admission review is over the %d bytes the gpu.nvidia.com webhook reads: make the object smaller", MaxRequestBytes)
	uid, typeMeta := reviewUID(prefix)
	logger.Info("Refused: admission review too large", "uid", uid, "limit", MaxRequestBytes)
	if uid == "" {
		http.Error(w, msg, http.StatusRequestEntityTooLarge)
		return
	}
	respond(logger, w, typeMeta,
		refusal(uid, http.StatusRequestEntityTooLarge, metav1.StatusReasonRequestEntityTooLarge, msg))
}

// reviewUID finds request.uid (and the review's apiVersion and kind) in
// the beginning of an AdmissionReview, token by token, without decoding
// the rest; the API server writes the UID first. Empty if not found.
func reviewUID(prefix []byte) (types.UID, metav1.TypeMeta) {
	dec := json.NewDecoder(bytes.NewReader(prefix))
	var tm metav1.TypeMeta
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return "", tm
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return "", tm
		}
		switch key {
		case "apiVersion", "kind":
			v, err := dec.Token()
			s, ok := v.(string)
			if err != nil || !ok {
				return "", tm
			}
			if key == "kind" {
				tm.Kind = s
			} else {
				tm.APIVersion = s
			}
		case "request":
			if t, err := dec.Token(); err != nil || t != json.Delim('{') {
				return "", tm
			}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return "", tm
				}
				v, err := dec.Token()
				if err != nil {
					return "", tm
				}
				if s, ok := v.(string); ok && k == "uid" {
					return types.UID(s), tm
				}
				if _, ok := v.(json.Delim); ok {
					// The API server writes the UID before any
					// object or list; the search ends at one.
					return "", tm
				}
			}
			return "", tm
		default:
			return "", tm
		}
	}
	return "", tm
}

// refusal is a response that refuses the request with code and message.
func refusal(uid types.UID, code int32, reason metav1.StatusReason, msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{UID: uid, Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Code: code, Reason: reason, Message: msg,
	}}
}

// respond writes an AdmissionReview with resp, of the request's
// apiVersion and kind.
func respond(logger klog.Logger, w http.ResponseWriter, tm metav1.TypeMeta, resp *admissionv1.AdmissionResponse) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(&admissionv1.AdmissionReview{TypeMeta: tm, Response: resp}); err != nil {
		logger.Error(err, "Cannot write the admission response")
	}
}

// validate decodes the device configuration of an object of kind and
// every opaque configuration of our driver in it; the error names the
// field path. Other kinds are not ours to judge.
func validate(kind string, raw []byte) error {
	var configs []config
	var prefix string
	var err error
	switch kind {
	case "ResourceClaim":
		var o claimConfig
		err = sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &o)
		configs, prefix = o.Spec.Devices.Config, "spec.devices.config"
	case "ResourceClaimTemplate":
		var o templateConfig
		err = sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &o)
		configs, prefix = o.Spec.Spec.Devices.Config, "spec.spec.devices.config"
	case "DeviceClass":
		var o classConfig
		err = sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &o)
		configs, prefix = o.Spec.Config, "spec.config"
	default:
		return nil
	}
	if len(raw) == 0 {
		// Never from the API server, which sends what it creates or
		// updates: not an object to admit unseen.
		err = errors.New("the review has no object")
	}
	if err != nil {
		return fmt.Errorf("decode %s: %w", kind, err)
	}
	for i, c := range configs {
		if c.Opaque == nil || c.Opaque.Driver != names.DriverName {
			continue
		}
		if _, err := v1beta1.Decode(c.Opaque.Parameters.Raw); err != nil {
			// Decode's errors start with "parameters".
			return fmt.Errorf("%s[%d].opaque.%w", prefix, i, err)
		}
	}
	return nil
}
