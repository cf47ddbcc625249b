package templates

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	cdv1 "github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

const uid = "11111111-1111-1111-1111-111111111111"

func domain(mode string) *cdv1.ComputeDomain {
	return &cdv1.ComputeDomain{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "job", UID: uid},
		Spec: cdv1.ComputeDomainSpec{Channel: &cdv1.ComputeDomainChannelSpec{
			ResourceClaimTemplate: cdv1.ComputeDomainResourceClaimTemplate{Name: "job-channel"},
			AllocationMode:        mode,
		}},
	}
}

// TestWorkloadTemplate: the template has NVIDIA's shape, is owned by the
// domain and labelled with its UID.
func TestWorkloadTemplate(t *testing.T) {
	for _, tt := range []struct{ mode, want string }{{"", "Single"}, {"All", "All"}} {
		rct, err := WorkloadTemplate(domain(tt.mode))
		if err != nil {
			t.Fatal(err)
		}
		got, err := yaml.Marshal(rct.Spec)
		if err != nil {
			t.Fatal(err)
		}
		want := `metadata: {}
spec:
  devices:
    config:
    - opaque:
        driver: compute-domain.nvidia.com
        parameters:
          allocationMode: ` + tt.want + `
          apiVersion: resource.nvidia.com/v1beta1
          domainID: ` + uid + `
          kind: ComputeDomainChannelConfig
      requests:
      - channel
    requests:
    - exactly:
        deviceClassName: compute-domain-default-channel.nvidia.com
      name: channel
`
		if string(got) != want {
			t.Errorf("spec:\n%s\nwant:\n%s", got, want)
		}
		if rct.Namespace != "team" || rct.Name != "job-channel" || rct.Labels[names.ComputeDomainLabel] != uid {
			t.Errorf("metadata %+v", rct.ObjectMeta)
		}
		if len(rct.OwnerReferences) != 1 || rct.OwnerReferences[0].UID != uid || rct.OwnerReferences[0].Kind != "ComputeDomain" {
			t.Errorf("owner references %+v", rct.OwnerReferences)
		}
		cfg, err := cdv1.Decode(rct.Spec.Spec.Devices.Config[0].Opaque.Parameters.Raw)
		if err != nil {
			t.Fatalf("the node plugin cannot decode the config: %v", err)
		}
		if c, ok := cfg.(*cdv1.ComputeDomainChannelConfig); !ok || c.DomainID != uid {
			t.Errorf("config %+v", cfg)
		}
	}
}

func TestDaemonTemplate(t *testing.T) {
	rct, err := DaemonTemplate(domain(""), "driver")
	if err != nil {
		t.Fatal(err)
	}
	if rct.Namespace != "driver" || rct.Name != "cd-"+uid+"-daemon" || rct.Labels[names.ComputeDomainLabel] != uid {
		t.Errorf("metadata %+v", rct.ObjectMeta)
	}
	req := rct.Spec.Spec.Devices.Requests[0]
	if req.Name != "daemon" || req.Exactly.DeviceClassName != names.DomainDaemonDeviceClass {
		t.Errorf("request %+v", req)
	}
	cfg, err := cdv1.Decode(rct.Spec.Spec.Devices.Config[0].Opaque.Parameters.Raw)
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := cfg.(*cdv1.ComputeDomainDaemonConfig); !ok || c.DomainID != uid {
		t.Errorf("config %+v", cfg)
	}
}

func TestDaemonSet(t *testing.T) {
	ds := DaemonSet(domain(""), DaemonOptions{Namespace: "driver", Image: "img:1", PullPolicy: corev1.PullIfNotPresent, PriorityClassName: "high"})
	pod := ds.Spec.Template.Spec
	c := pod.Containers[0]
	checks := []struct {
		what string
		ok   bool
	}{
		{"name", ds.Name == "cd-"+uid && ds.Namespace == "driver"},
		{"selector matches pod labels", ds.Spec.Selector.MatchLabels[names.ComputeDomainLabel] == uid && ds.Spec.Template.Labels[names.ComputeDomainLabel] == uid},
		{"node selector", len(pod.NodeSelector) == 1 && pod.NodeSelector[names.DomainNodeLabel(uid)] == ""},
		{"no token", pod.AutomountServiceAccountToken != nil && !*pod.AutomountServiceAccountToken},
		{"pod network", !pod.HostNetwork},
		{"tolerations", len(pod.Tolerations) == 4 && pod.Tolerations[0].Operator == corev1.TolerationOpExists},
		{"evicted from a lost node", slices.ContainsFunc(pod.Tolerations, func(t corev1.Toleration) bool {
			return t.Key == corev1.TaintNodeUnreachable && t.Effect == corev1.TaintEffectNoExecute && t.TolerationSeconds != nil && *t.TolerationSeconds == LostNodeTolerationSeconds
		}) && !slices.ContainsFunc(pod.Tolerations, func(t corev1.Toleration) bool { return t.Key == "" && t.Effect == corev1.TaintEffectNoExecute })},
		{"no roll of running daemons", ds.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType},
		{"priority", pod.PriorityClassName == "high"},
		{"claim", len(pod.ResourceClaims) == 1 && *pod.ResourceClaims[0].ResourceClaimTemplateName == "cd-"+uid+"-daemon" && c.Resources.Claims[0].Name == pod.ResourceClaims[0].Name},
		{"image", c.Image == "img:1" && c.ImagePullPolicy == corev1.PullIfNotPresent},
		{"command", strings.Join(c.Command, " ") == "compute-domain-daemon run"},
		{"env", len(c.Env) == 2 && c.Env[0].Name == "NODE_NAME" && c.Env[1].ValueFrom.FieldRef.FieldPath == "status.podIP"},
		{"startup probe", strings.Join(c.StartupProbe.Exec.Command, " ") == "compute-domain-daemon check" && c.StartupProbe.PeriodSeconds == 1 && c.StartupProbe.FailureThreshold > 1000},
		{"readiness probe", strings.Join(c.ReadinessProbe.Exec.Command, " ") == "compute-domain-daemon check" && c.ReadinessProbe.PeriodSeconds == 2},
		{"no liveness probe", c.LivenessProbe == nil},
	}
	for _, ch := range checks {
		if !ch.ok {
			t.Errorf("%s: wrong in %+v", ch.what, ds)
		}
	}
	h1, _ := WithSpecHash(ds)
	other := DaemonSet(domain(""), DaemonOptions{Namespace: "driver", Image: "img:2"})
	h2, _ := WithSpecHash(other)
	if h1 == h2 || ds.Annotations[SpecHashAnnotation] != h1 {
		t.Errorf("spec hashes %q %q", h1, h2)
	}
}

// TestNetworkPolicy: a domain's daemons admit only the IMEX peer port,
// only from the same domain's daemons, and the policy goes with the
// DaemonSet.
func TestNetworkPolicy(t *testing.T) {
	cd := domain("")
	ds := DaemonSet(cd, DaemonOptions{Namespace: "gpu-dra", Image: "cd:1"})
	ds.UID = "ds-uid"
	np := NetworkPolicy(ds)
	uid := string(cd.UID)
	if np.Namespace != "gpu-dra" || np.Name != ds.Name || np.Labels[names.ComputeDomainLabel] != uid {
		t.Errorf("metadata %+v", np.ObjectMeta)
	}
	if len(np.OwnerReferences) != 1 || np.OwnerReferences[0].UID != "ds-uid" || np.OwnerReferences[0].Kind != "DaemonSet" {
		t.Errorf("owner %+v, want the DaemonSet", np.OwnerReferences)
	}
	if !reflect.DeepEqual(np.Spec.PodSelector.MatchLabels, ds.Spec.Template.Labels) {
		t.Errorf("selects %v, want the daemon pods' labels %v", np.Spec.PodSelector.MatchLabels, ds.Spec.Template.Labels)
	}
	if len(np.Spec.PolicyTypes) != 1 || np.Spec.PolicyTypes[0] != networkingv1.PolicyTypeIngress {
		t.Errorf("policy types %v, want Ingress only", np.Spec.PolicyTypes)
	}
	if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].From) != 1 || len(np.Spec.Ingress[0].Ports) != 1 {
		t.Fatalf("ingress %+v, want one rule with one peer and one port", np.Spec.Ingress)
	}
	rule := np.Spec.Ingress[0]
	if rule.From[0].PodSelector == nil || !reflect.DeepEqual(rule.From[0].PodSelector.MatchLabels, ds.Spec.Template.Labels) || rule.From[0].NamespaceSelector != nil {
		t.Errorf("from %+v, want the domain's daemon pods of this namespace", rule.From[0])
	}
	if p := rule.Ports[0]; p.Port == nil || p.Port.IntValue() != names.IMEXServerPort || p.Protocol == nil || *p.Protocol != corev1.ProtocolTCP {
		t.Errorf("port %+v, want TCP %d", p, names.IMEXServerPort)
	}
}
