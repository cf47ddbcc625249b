// Package nodelabels decides the labels the ComputeDomain controller keeps
// on nodes: compute-domain.nvidia.com/<domain UID>="" where a channel of
// the domain is allocated, and nvidia.com/gpu.clique=<clique ID> from the
// node's compute-domain.nvidia.com ResourceSlice. It reads claims and
// slices written by others (claims by tenants), so it checks everything
// and bounds what it reads.
package nodelabels

import (
	"sort"
	"strings"

	resourcev1 "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation"

	cdv1 "github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// MaxResults bounds the allocation results of one claim that are read; the
// API server allows 32 per claim.
const MaxResults = 64

// Placement is one domain channel allocated on one node.
type Placement struct {
	// DomainUID is the domainID of the channel's configuration.
	DomainUID string
	// Node is the pool of the allocated device, named after its node.
	Node string
}

// Placements lists the (domain, node) pairs of the claim's allocated
// compute-domain.nvidia.com channel devices: every allocation result of the
// driver whose request is configured with a ComputeDomainChannelConfig.
// An unallocated claim has none. Configurations that do not decode are
// skipped: the node plugin refuses such claims.
func Placements(claim *resourcev1.ResourceClaim) []Placement {
	alloc := claim.Status.Allocation
	if alloc == nil {
		return nil
	}
	var out []Placement
	seen := sets.New[Placement]()
	for i, r := range alloc.Devices.Results {
		if i >= MaxResults {
			break
		}
		if r.Driver != names.ComputeDomainDriverName || !validNodeName(r.Pool) {
			continue
		}
		uid := channelDomain(alloc.Devices.Config, r.Request)
		if uid == "" {
			continue
		}
		p := Placement{DomainUID: uid, Node: r.Pool}
		if !seen.Has(p) {
			seen.Insert(p)
			out = append(out, p)
		}
	}
	return out
}

// channelDomain is the domainID of the last channel configuration of the
// driver that applies to request (later configurations take precedence,
// as in the node plugin), or "".
func channelDomain(configs []resourcev1.DeviceAllocationConfiguration, request string) string {
	parent, _, _ := strings.Cut(request, "/")
	uid := ""
	for _, c := range configs {
		if c.Opaque == nil || c.Opaque.Driver != names.ComputeDomainDriverName {
			continue
		}
		if len(c.Requests) > 0 && !contains(c.Requests, request) && !contains(c.Requests, parent) {
			continue
		}
		cfg, err := cdv1.Decode(c.Opaque.Parameters.Raw)
		if err != nil {
			continue
		}
		if ch, ok := cfg.(*cdv1.ComputeDomainChannelConfig); ok && ValidDomainUID(ch.DomainID) {
			uid = ch.DomainID
		}
	}
	return uid
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func validNodeName(s string) bool {
	return s != "" && len(validation.IsDNS1123Subdomain(s)) == 0
}

// ValidDomainUID reports whether s can be a domain's UID in a label key:
// Kubernetes UIDs are RFC 4122 strings of 36 characters.
func ValidDomainUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		default:
			return false
		}
	}
	return true
}

// DomainOfLabel returns the domain UID of a node label key
// compute-domain.nvidia.com/<UID>, and false for any other key.
func DomainOfLabel(key string) (string, bool) {
	uid, ok := strings.CutPrefix(key, names.ComputeDomainDriverName+"/")
	if !ok || !ValidDomainUID(uid) {
		return "", false
	}
	return uid, true
}

// SliceClique returns the cliqueID attribute that a compute-domain.nvidia.com
// slice's devices publish, and whether the slice is one of the driver's.
// Devices that disagree, or a value that cannot be a label value, give "".
func SliceClique(slice *resourcev1.ResourceSlice) (node, clique string, ok bool) {
	if slice.Spec.Driver != names.ComputeDomainDriverName {
		return "", "", false
	}
	node = slice.Spec.Pool.Name
	if slice.Spec.NodeName != nil && *slice.Spec.NodeName != "" {
		node = *slice.Spec.NodeName
	}
	if !validNodeName(node) {
		return "", "", false
	}
	for _, d := range slice.Spec.Devices {
		a, found := d.Attributes[names.AttrCliqueID]
		if !found || a.StringValue == nil {
			continue
		}
		v := *a.StringValue
		if clique != "" && clique != v {
			return node, "", true
		}
		clique = v
	}
	if len(validation.IsValidLabelValue(clique)) > 0 {
		clique = ""
	}
	return node, clique, true
}

// Patch is the label change of one node: keys to set (with values) and
// keys to remove.
type Patch struct {
	Set    map[string]string
	Remove []string
}

// Empty reports whether the patch changes nothing.
func (p Patch) Empty() bool { return len(p.Set) == 0 && len(p.Remove) == 0 }

// Desired compares a node's labels with what it should have: one domain
// label per UID in domains, and the clique label when haveSlice (clique ""
// removes it; without a slice of the driver the label is left alone, as
// the node is not the driver's). Domain labels of other UIDs are removed.
func Desired(labels map[string]string, domains sets.Set[string], haveSlice bool, clique string) Patch {
	p := Patch{Set: map[string]string{}}
	for key := range labels {
		if uid, ok := DomainOfLabel(key); ok && !domains.Has(uid) {
			p.Remove = append(p.Remove, key)
		}
	}
	for uid := range domains {
		key := names.DomainNodeLabel(uid)
		if v, ok := labels[key]; !ok || v != "" {
			p.Set[key] = ""
		}
	}
	if haveSlice {
		v, ok := labels[names.GPUCliqueLabel]
		switch {
		case clique == "" && ok:
			p.Remove = append(p.Remove, names.GPUCliqueLabel)
		case clique != "" && v != clique:
			p.Set[names.GPUCliqueLabel] = clique
		}
	}
	sort.Strings(p.Remove)
	return p
}
