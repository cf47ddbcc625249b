// Package v1beta1 is the ComputeDomain API in the shape NVIDIA's DRA driver
// documents (apiVersion resource.nvidia.com/v1beta1): the ComputeDomain
// custom resource users create, and the opaque configurations
// (ComputeDomainChannelConfig, ComputeDomainDaemonConfig) that the
// controller writes into the claim templates it generates for the driver
// compute-domain.nvidia.com. JSON names match NVIDIA's, so manifests and
// tools written for NVIDIA's driver read and write the same objects.
//
// There is no generated client: components read ComputeDomains through the
// dynamic client and convert with FromUnstructured, which keeps this
// package free of code generation.
package v1beta1

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/gpu-dra/gpu-dra-driver/api/internal/opaque"
)

// Group and version of the API, shared with NVIDIA's driver.
const (
	GroupName    = "resource.nvidia.com"
	Version      = "v1beta1"
	GroupVersion = GroupName + "/" + Version
)

// Kinds of the API.
const (
	ComputeDomainKind              = "ComputeDomain"
	ComputeDomainChannelConfigKind = "ComputeDomainChannelConfig"
	ComputeDomainDaemonConfigKind  = "ComputeDomainDaemonConfig"
)

// Resource is the ComputeDomain resource, for the dynamic client.
var Resource = schema.GroupVersionResource{Group: GroupName, Version: Version, Resource: "computedomains"}

// Values of ComputeDomainStatus.Status and ComputeDomainNode.Status.
const (
	StatusReady    = "Ready"
	StatusNotReady = "NotReady"
)

// Channel allocation modes.
const (
	// AllocationModeSingle gives each workload pod its domain's one channel.
	AllocationModeSingle = "Single"
	// AllocationModeAll gives each workload pod every channel of the node.
	AllocationModeAll = "All"
)

// ComputeDomain is a set of nodes whose GPUs share memory over multi-node
// NVLink while a workload runs: the controller starts an IMEX daemon on
// every node a workload pod of the domain lands on, and each pod's channel
// claim gets the domain's IMEX channel.
type ComputeDomain struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ComputeDomainSpec   `json:"spec,omitempty"`
	Status ComputeDomainStatus `json:"status,omitempty"`
}

// ComputeDomainList is a list of ComputeDomains.
type ComputeDomainList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`

	Items []ComputeDomain `json:"items"`
}

// ComputeDomainSpec is what the user asks for.
type ComputeDomainSpec struct {
	// NumNodes is deprecated (as in NVIDIA's API). When above zero, the
	// domain is Ready only once that many nodes' daemons are ready; it
	// never holds pods back.
	NumNodes int `json:"numNodes,omitempty"`
	// Channel names the claim template the controller creates in the
	// domain's namespace; workload pods reference it.
	Channel *ComputeDomainChannelSpec `json:"channel"`
}

// ComputeDomainChannelSpec describes the workload's claim template.
type ComputeDomainChannelSpec struct {
	// ResourceClaimTemplate is the name of the template to create.
	ResourceClaimTemplate ComputeDomainResourceClaimTemplate `json:"resourceClaimTemplate"`
	// AllocationMode is Single (the default) or All.
	AllocationMode string `json:"allocationMode,omitempty"`
}

// ComputeDomainResourceClaimTemplate names a ResourceClaimTemplate.
type ComputeDomainResourceClaimTemplate struct {
	Name string `json:"name"`
}

// ComputeDomainStatus is written by the controller only.
type ComputeDomainStatus struct {
	// Status is Ready when every node of the domain has a ready daemon
	// (and at least NumNodes do), NotReady otherwise.
	Status string `json:"status"`
	// Nodes are the domain's nodes, sorted by name.
	Nodes []*ComputeDomainNode `json:"nodes,omitempty"`
}

// ComputeDomainNode is one node of a domain.
type ComputeDomainNode struct {
	Name      string `json:"name"`
	IPAddress string `json:"ipAddress"`
	CliqueID  string `json:"cliqueID"`
	// Index is the node's stable number within its clique: (CliqueID,
	// Index) is unique in the domain and does not change while the node
	// stays in it.
	Index int `json:"index"`
	// Status is Ready or NotReady: whether the node's daemon is ready.
	Status string `json:"status,omitempty"`
}

// ComputeDomainChannelConfig is the opaque configuration of a workload's
// channel request, written by the controller into the domain's claim
// template.
type ComputeDomainChannelConfig struct {
	metav1.TypeMeta `json:",inline"`
	// DomainID is the ComputeDomain's UID.
	DomainID string `json:"domainID"`
	// AllocationMode is Single or All; empty means Single.
	AllocationMode string `json:"allocationMode,omitempty"`
}

// ComputeDomainDaemonConfig is the opaque configuration of a domain
// daemon's request, written by the controller into the daemons' claim
// template.
type ComputeDomainDaemonConfig struct {
	metav1.TypeMeta `json:",inline"`
	// DomainID is the ComputeDomain's UID.
	DomainID string `json:"domainID"`
}

// Config is a decoded opaque configuration: *ComputeDomainChannelConfig or
// *ComputeDomainDaemonConfig.
type Config interface{ domainID() string }

func (c *ComputeDomainChannelConfig) domainID() string { return c.DomainID }
func (c *ComputeDomainDaemonConfig) domainID() string  { return c.DomainID }

// Decode strictly decodes the opaque parameters of a compute-domain.nvidia.com
// request. An unknown field, a wrong kind or a missing domainID is an error
// naming the field.
func Decode(raw []byte) (Config, error) {
	cfg, err := opaque.Decode(raw, GroupVersion,
		opaque.Kind[Config]{Name: ComputeDomainChannelConfigKind, New: func() Config { return &ComputeDomainChannelConfig{} }},
		opaque.Kind[Config]{Name: ComputeDomainDaemonConfigKind, New: func() Config { return &ComputeDomainDaemonConfig{} }})
	if err != nil {
		return nil, err
	}
	if cfg.domainID() == "" {
		return nil, fmt.Errorf("parameters.domainID: must not be empty")
	}
	if c, ok := cfg.(*ComputeDomainChannelConfig); ok {
		switch c.AllocationMode {
		case "":
			c.AllocationMode = AllocationModeSingle
		case AllocationModeSingle, AllocationModeAll:
		default:
			return nil, fmt.Errorf("parameters.allocationMode: %q is not supported, want %s or %s", c.AllocationMode, AllocationModeSingle, AllocationModeAll)
		}
	}
	return cfg, nil
}

// Validate checks a ComputeDomain's spec as the CRD's schema does, so that
// the controller reports a domain it cannot serve instead of failing on it.
// Errors name the field.
func (cd *ComputeDomain) Validate() error {
	if cd.Spec.NumNodes < 0 {
		return fmt.Errorf("spec.numNodes: %d must not be negative", cd.Spec.NumNodes)
	}
	if cd.Spec.Channel == nil {
		return fmt.Errorf("spec.channel: required")
	}
	name := cd.Spec.Channel.ResourceClaimTemplate.Name
	if name == "" {
		return fmt.Errorf("spec.channel.resourceClaimTemplate.name: required")
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return fmt.Errorf("spec.channel.resourceClaimTemplate.name: %q: %s", name, errs[0])
	}
	switch cd.Spec.Channel.AllocationMode {
	case "", AllocationModeSingle, AllocationModeAll:
	default:
		return fmt.Errorf("spec.channel.allocationMode: %q is not supported, want %s or %s", cd.Spec.Channel.AllocationMode, AllocationModeSingle, AllocationModeAll)
	}
	return nil
}

// AllocationMode is the domain's channel allocation mode, Single if unset.
func (cd *ComputeDomain) AllocationMode() string {
	if cd.Spec.Channel == nil || cd.Spec.Channel.AllocationMode == "" {
		return AllocationModeSingle
	}
	return cd.Spec.Channel.AllocationMode
}

// FromUnstructured converts an object read with the dynamic client.
func FromUnstructured(u *unstructured.Unstructured) (*ComputeDomain, error) {
	var cd ComputeDomain
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.UnstructuredContent(), &cd); err != nil {
		return nil, fmt.Errorf("convert ComputeDomain %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	return &cd, nil
}

// ToUnstructured converts a ComputeDomain for the dynamic client.
func ToUnstructured(cd *ComputeDomain) (*unstructured.Unstructured, error) {
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(cd)
	if err != nil {
		return nil, fmt.Errorf("convert ComputeDomain %s/%s: %w", cd.Namespace, cd.Name, err)
	}
	u := &unstructured.Unstructured{Object: obj}
	u.SetAPIVersion(GroupVersion)
	u.SetKind(ComputeDomainKind)
	return u, nil
}

// DeepCopy returns a deep copy of the domain.
func (cd *ComputeDomain) DeepCopy() *ComputeDomain {
	if cd == nil {
		return nil
	}
	out := &ComputeDomain{TypeMeta: cd.TypeMeta, Spec: cd.Spec, Status: cd.Status}
	cd.DeepCopyInto(&out.ObjectMeta)
	if cd.Spec.Channel != nil {
		ch := *cd.Spec.Channel
		out.Spec.Channel = &ch
	}
	if cd.Status.Nodes != nil {
		out.Status.Nodes = make([]*ComputeDomainNode, len(cd.Status.Nodes))
		for i, n := range cd.Status.Nodes {
			if n != nil {
				c := *n
				out.Status.Nodes[i] = &c
			}
		}
	}
	return out
}
