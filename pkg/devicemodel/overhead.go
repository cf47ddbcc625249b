package devicemodel

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// OverheadKind names the devices a node-allocatable overhead applies to
// (Overhead): the driver's own groups of Kind, as the chart names them.
type OverheadKind string

// Overhead kinds.
const (
	// OverheadGPU is every whole GPU, exclusive or in NVIDIA's consumable
	// shares (KindGPU).
	OverheadGPU OverheadKind = "gpu"
	// OverheadMIG is every MIG device, made at prepare or pre-created
	// (KindMIGPlacement, KindMIGStatic).
	OverheadMIG OverheadKind = "mig"
	// OverheadShare is every shared GPU (KindGPUShare), each of whose
	// claims runs an MPS control daemon of its own.
	OverheadShare OverheadKind = "share"
)

// overheadKinds are the kinds Overhead accepts, in the order it prints them.
var overheadKinds = []OverheadKind{OverheadGPU, OverheadMIG, OverheadShare}

// overheadResources are the node resources an overhead may name: the ones
// a GPU's users cost the node outside their containers' own requests.
var overheadResources = []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory}

// Overhead is what each pod that uses a device of a kind costs its node
// in CPU and memory beyond its containers' own requests (KEP-5517,
// node-allocatable resources, feature gate DRANodeAllocatableResources):
// published as the device's nodeAllocatableResources overhead per pod, it
// makes the scheduler, and the kubelet at admission, count it against the
// node's allocatable CPU and memory as part of the pod. For a share it is
// the claim's MPS control daemon, which runs in a pod of its own whose
// requests are lowered by as much (daemonpod), so that the node counts
// the daemon once. A nil or empty Overhead publishes none.
type Overhead map[OverheadKind]corev1.ResourceList

// ParseOverhead reads the plugin's --node-allocatable-overhead value:
// comma-separated KIND:RESOURCE=QUANTITY, e.g.
// "share:cpu=250m,share:memory=512Mi,mig:memory=256Mi". KIND is gpu, mig
// or share, RESOURCE cpu or memory; each pair at most once, each quantity
// positive. An empty value is no overhead.
func ParseOverhead(s string) (Overhead, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	o := Overhead{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		kindRes, value, ok := strings.Cut(item, "=")
		kind, res, ok2 := strings.Cut(kindRes, ":")
		if !ok || !ok2 {
			return nil, fmt.Errorf("%q: want KIND:RESOURCE=QUANTITY, e.g. share:memory=512Mi", item)
		}
		k, r := OverheadKind(strings.TrimSpace(kind)), corev1.ResourceName(strings.TrimSpace(res))
		if !slices.Contains(overheadKinds, k) {
			return nil, fmt.Errorf("%q: kind %q is none of %s", item, k, joinKinds())
		}
		if !slices.Contains(overheadResources, r) {
			return nil, fmt.Errorf("%q: resource %q is neither cpu nor memory", item, r)
		}
		q, err := resource.ParseQuantity(strings.TrimSpace(value))
		if err != nil {
			return nil, fmt.Errorf("%q: quantity: %w", item, err)
		}
		if q.Sign() <= 0 {
			return nil, fmt.Errorf("%q: the quantity must be positive", item)
		}
		if _, dup := o[k][r]; dup {
			return nil, fmt.Errorf("%q: %s:%s is given twice", item, k, r)
		}
		if o[k] == nil {
			o[k] = corev1.ResourceList{}
		}
		o[k][r] = q
	}
	return o, nil
}

func joinKinds() string {
	s := make([]string, len(overheadKinds))
	for i, k := range overheadKinds {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

// String prints o as ParseOverhead reads it, in a fixed order.
func (o Overhead) String() string {
	var items []string
	for _, k := range overheadKinds {
		names := slices.Collect(maps.Keys(o[k]))
		sort.Slice(names, func(i, j int) bool { return names[i] < names[j] })
		for _, r := range names {
			q := o[k][r]
			items = append(items, fmt.Sprintf("%s:%s=%s", k, r, q.String()))
		}
	}
	return strings.Join(items, ",")
}

// Empty reports whether o publishes nothing.
func (o Overhead) Empty() bool {
	for _, l := range o {
		if len(l) > 0 {
			return false
		}
	}
	return true
}

// Of returns the overhead of kind k: a list to read, never change.
func (o Overhead) Of(k OverheadKind) corev1.ResourceList { return o[k] }

// kindOf is the overhead kind of a device kind; a GPU for a VM (KindVFIO)
// has none: nothing of the driver runs for it on the node.
func kindOf(k Kind) (OverheadKind, bool) {
	switch k {
	case KindGPU:
		return OverheadGPU, true
	case KindMIGPlacement, KindMIGStatic:
		return OverheadMIG, true
	case KindGPUShare:
		return OverheadShare, true
	}
	return "", false
}

// published is the device's nodeAllocatableResources for a device of kind
// k, a map of its own, or nil when o gives the kind none.
func (o Overhead) published(k Kind) (map[corev1.ResourceName]resourceapi.NodeAllocatableResource, error) {
	ok, known := kindOf(k)
	if !known {
		return nil, nil
	}
	list := o[ok]
	if len(list) == 0 {
		return nil, nil
	}
	out := make(map[corev1.ResourceName]resourceapi.NodeAllocatableResource, len(list))
	for r, q := range list {
		if q.Sign() <= 0 {
			return nil, errors.New("a node-allocatable overhead that is not positive")
		}
		perPod := q.DeepCopy()
		out[r] = resourceapi.NodeAllocatableResource{Overhead: &resourceapi.NodeAllocatableOverhead{PerPod: &perPod}}
	}
	return out, nil
}
