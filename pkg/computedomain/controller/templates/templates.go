// Package templates builds the objects the ComputeDomain controller makes
// for a domain: the workload's ResourceClaimTemplate in the domain's
// namespace, and the daemons' ResourceClaimTemplate and DaemonSet in the
// driver's namespace. Builders are pure: the same domain and options give
// the same objects, so the controller can compare and recreate them.
package templates

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	cdv1 "github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Names of requests, claims and containers in the generated objects.
const (
	// ChannelRequest is the workload template's one request.
	ChannelRequest = "channel"
	// DaemonRequest is the daemons' template's one request, and the
	// daemon pod's claim name.
	DaemonRequest = "daemon"
	// DaemonContainer is the daemon pod's one container.
	DaemonContainer = "compute-domain-daemon"
	// DaemonBinary is the daemon's command in the image.
	DaemonBinary = "compute-domain-daemon"
)

// Probe settings of the daemon container: the startup probe checks every
// second and never gives up in practice (an IMEX domain waits for its
// peers); readiness keeps following quorum afterwards. There is no
// liveness probe: a daemon without quorum is not broken, and restarting it
// would only delay the quorum.
const (
	StartupPeriodSeconds      = 1
	StartupFailureThreshold   = 86400
	ReadinessPeriodSeconds    = 2
	ProbeTimeoutSeconds       = 10
	ReadinessFailureThreshold = 1
)

// DaemonOptions are the controller's settings for every domain's daemons.
type DaemonOptions struct {
	// Namespace is the driver's namespace.
	Namespace string
	// Image is the daemon container's image.
	Image string
	// PullPolicy is the image's pull policy; empty leaves the default.
	PullPolicy corev1.PullPolicy
	// PriorityClassName is the daemon pods' priority class; may be empty.
	PriorityClassName string
}

// Labels returns the label set of everything made for the domain.
func Labels(domainUID string) map[string]string {
	return map[string]string{names.ComputeDomainLabel: domainUID}
}

// WorkloadTemplate is the claim template workload pods of cd reference: one
// request "channel" of the default channel class, configured with
// ComputeDomainChannelConfig{domainID, allocationMode}. It is owned by the
// domain (same namespace), so the garbage collector removes it with the
// domain if the controller does not.
func WorkloadTemplate(cd *cdv1.ComputeDomain) (*resourcev1.ResourceClaimTemplate, error) {
	if cd.Spec.Channel == nil {
		return nil, fmt.Errorf("spec.channel: required")
	}
	params, err := json.Marshal(cdv1.ComputeDomainChannelConfig{
		TypeMeta:       metav1.TypeMeta{APIVersion: cdv1.GroupVersion, Kind: cdv1.ComputeDomainChannelConfigKind},
		DomainID:       string(cd.UID),
		AllocationMode: cd.AllocationMode(),
	})
	if err != nil {
		return nil, fmt.Errorf("encode channel config: %w", err)
	}
	return &resourcev1.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: cd.Namespace,
			Name:      cd.Spec.Channel.ResourceClaimTemplate.Name,
			Labels:    Labels(string(cd.UID)),
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion:         cdv1.GroupVersion,
				Kind:               cdv1.ComputeDomainKind,
				Name:               cd.Name,
				UID:                cd.UID,
				Controller:         ptr.To(true),
				BlockOwnerDeletion: ptr.To(true),
			}},
		},
		Spec: claimTemplateSpec(ChannelRequest, names.ChannelDeviceClass, params),
	}, nil
}

// DaemonTemplate is the claim template of cd's daemon pods, in the driver's
// namespace: one request "daemon" of the daemon class, configured with
// ComputeDomainDaemonConfig{domainID}.
func DaemonTemplate(cd *cdv1.ComputeDomain, namespace string) (*resourcev1.ResourceClaimTemplate, error) {
	params, err := json.Marshal(cdv1.ComputeDomainDaemonConfig{
		TypeMeta: metav1.TypeMeta{APIVersion: cdv1.GroupVersion, Kind: cdv1.ComputeDomainDaemonConfigKind},
		DomainID: string(cd.UID),
	})
	if err != nil {
		return nil, fmt.Errorf("encode daemon config: %w", err)
	}
	return &resourcev1.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace,
			Name:      names.DomainDaemonTemplateName(string(cd.UID)),
			Labels:    Labels(string(cd.UID)),
		},
		Spec: claimTemplateSpec(DaemonRequest, names.DomainDaemonDeviceClass, params),
	}, nil
}

func claimTemplateSpec(request, class string, params []byte) resourcev1.ResourceClaimTemplateSpec {
	return resourcev1.ResourceClaimTemplateSpec{
		Spec: resourcev1.ResourceClaimSpec{
			Devices: resourcev1.DeviceClaim{
				Requests: []resourcev1.DeviceRequest{{
					Name:    request,
					Exactly: &resourcev1.ExactDeviceRequest{DeviceClassName: class},
				}},
				Config: []resourcev1.DeviceClaimConfiguration{{
					Requests: []string{request},
					DeviceConfiguration: resourcev1.DeviceConfiguration{
						Opaque: &resourcev1.OpaqueDeviceConfiguration{
							Driver:     names.ComputeDomainDriverName,
							Parameters: runtime.RawExtension{Raw: params},
						},
					},
				}},
			},
		},
	}
}

// LostNodeTolerationSeconds is how long a daemon stays bound to a node that
// is unreachable or not ready before it is evicted.
const LostNodeTolerationSeconds int64 = 60

// DaemonSet runs cd's IMEX daemon on every node labelled for the domain
// (names.DomainNodeLabel). The pod has no Kubernetes credentials and runs
// in the pod network; its one claim is the domain's daemon claim.
func DaemonSet(cd *cdv1.ComputeDomain, opts DaemonOptions) *appsv1.DaemonSet {
	uid := string(cd.UID)
	check := &corev1.ExecAction{Command: []string{DaemonBinary, "check"}}
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: opts.Namespace,
			Name:      names.DomainDaemonSetName(uid),
			Labels:    Labels(uid),
		},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: Labels(uid)},
			// A new image or setting reaches new daemons only: restarting a
			// running domain's daemons would break its quorum under the
			// workload (an upgrade of the driver must not).
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: Labels(uid)},
				Spec: corev1.PodSpec{
					AutomountServiceAccountToken: ptr.To(false),
					HostNetwork:                  false,
					PriorityClassName:            opts.PriorityClassName,
					NodeSelector:                 map[string]string{names.DomainNodeLabel(uid): ""},
					// Wherever a workload pod of the domain lands, but not
					// forever on a node that is gone: a daemon evicted from
					// an unreachable node leaves the domain's status, so
					// its peers regain quorum without it.
					Tolerations: []corev1.Toleration{
						{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
						{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectPreferNoSchedule},
						{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To(LostNodeTolerationSeconds)},
						{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To(LostNodeTolerationSeconds)},
					},
					ResourceClaims: []corev1.PodResourceClaim{{
						Name:                      DaemonRequest,
						ResourceClaimTemplateName: ptr.To(names.DomainDaemonTemplateName(uid)),
					}},
					Containers: []corev1.Container{{
						Name:            DaemonContainer,
						Image:           opts.Image,
						ImagePullPolicy: opts.PullPolicy,
						Command:         []string{DaemonBinary, "run"},
						Env: []corev1.EnvVar{
							{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
							{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
						},
						Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: DaemonRequest}}},
						StartupProbe: &corev1.Probe{
							ProbeHandler:     corev1.ProbeHandler{Exec: check},
							PeriodSeconds:    StartupPeriodSeconds,
							TimeoutSeconds:   ProbeTimeoutSeconds,
							FailureThreshold: StartupFailureThreshold,
							SuccessThreshold: 1,
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:     corev1.ProbeHandler{Exec: check},
							PeriodSeconds:    ReadinessPeriodSeconds,
							TimeoutSeconds:   ProbeTimeoutSeconds,
							FailureThreshold: ReadinessFailureThreshold,
							SuccessThreshold: 1,
						},
					}},
				},
			},
		},
	}
}

// NetworkPolicy admits to the domain's daemon pods only what IMEX needs:
// the peer port (names.IMEXServerPort), from the domain's own daemon pods.
// Everything else to them is refused where the cluster enforces
// NetworkPolicies: tenants' pods and other domains' daemons (whose reused
// pod addresses the real nvidia-imex cannot tell apart) never reach a
// daemon. The command port is queried inside the pod (loopback), which a
// NetworkPolicy does not filter. Owned by the domain's DaemonSet, so it
// goes with it.
func NetworkPolicy(ds *appsv1.DaemonSet) *networkingv1.NetworkPolicy {
	uid := ds.Labels[names.ComputeDomainLabel]
	tcp := corev1.ProtocolTCP
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ds.Namespace,
			Name:      ds.Name,
			Labels:    Labels(uid),
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "DaemonSet", Name: ds.Name, UID: ds.UID,
			}},
		},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: Labels(uid)},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: Labels(uid)}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: ptr.To(intstr.FromInt32(names.IMEXServerPort))}},
			}},
		},
	}
}

// Owned reports whether obj's labels say it was made for the domain uid.
func Owned(labels map[string]string, domainUID string) bool {
	v, ok := labels[names.ComputeDomainLabel]
	return ok && v == domainUID
}

// SpecHashAnnotation holds, on a domain's DaemonSet, the hash of the spec
// the controller built, so that a changed image or option rolls the
// daemons while a spec the API server defaulted does not.
const SpecHashAnnotation = names.ComputeDomainDriverName + "/spec-hash"

// WithSpecHash sets ds's SpecHashAnnotation to the hash of its spec, and
// returns the hash.
func WithSpecHash(ds *appsv1.DaemonSet) (string, error) {
	b, err := json.Marshal(ds.Spec)
	if err != nil {
		return "", fmt.Errorf("encode daemon set spec: %w", err)
	}
	h := fmt.Sprintf("%x", sha256.Sum256(b))[:16]
	if ds.Annotations == nil {
		ds.Annotations = map[string]string{}
	}
	ds.Annotations[SpecHashAnnotation] = h
	return h, nil
}
