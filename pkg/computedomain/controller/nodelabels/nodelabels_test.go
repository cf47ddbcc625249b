package nodelabels

import (
	"reflect"
	"testing"

	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

const (
	uid1 = "11111111-1111-1111-1111-111111111111"
	uid2 = "22222222-2222-2222-2222-222222222222"
)

func channelConfig(uid string, requests ...string) resourcev1.DeviceAllocationConfiguration {
	return resourcev1.DeviceAllocationConfiguration{
		Source:   resourcev1.AllocationConfigSourceClaim,
		Requests: requests,
		DeviceConfiguration: resourcev1.DeviceConfiguration{Opaque: &resourcev1.OpaqueDeviceConfiguration{
			Driver:     names.ComputeDomainDriverName,
			Parameters: runtime.RawExtension{Raw: []byte(`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"ComputeDomainChannelConfig","domainID":"` + uid + `"}`)},
		}},
	}
}

func claim(results []resourcev1.DeviceRequestAllocationResult, configs ...resourcev1.DeviceAllocationConfiguration) *resourcev1.ResourceClaim {
	c := &resourcev1.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c"}}
	if results != nil {
		c.Status.Allocation = &resourcev1.AllocationResult{Devices: resourcev1.DeviceAllocationResult{Results: results, Config: configs}}
	}
	return c
}

func result(request, driver, pool string) resourcev1.DeviceRequestAllocationResult {
	return resourcev1.DeviceRequestAllocationResult{Request: request, Driver: driver, Pool: pool, Device: names.ChannelDevice}
}

func TestPlacements(t *testing.T) {
	tests := []struct {
		name  string
		claim *resourcev1.ResourceClaim
		want  []Placement
	}{
		{name: "unallocated", claim: claim(nil)},
		{
			name:  "allocated channel",
			claim: claim([]resourcev1.DeviceRequestAllocationResult{result("channel", names.ComputeDomainDriverName, "node-a")}, channelConfig(uid1, "channel")),
			want:  []Placement{{DomainUID: uid1, Node: "node-a"}},
		},
		{
			name:  "config for all requests; subrequest",
			claim: claim([]resourcev1.DeviceRequestAllocationResult{result("channel/x", names.ComputeDomainDriverName, "node-a")}, channelConfig(uid1)),
			want:  []Placement{{DomainUID: uid1, Node: "node-a"}},
		},
		{
			name:  "another driver's device",
			claim: claim([]resourcev1.DeviceRequestAllocationResult{result("channel", "gpu.nvidia.com", "node-a")}, channelConfig(uid1, "channel")),
		},
		{
			name:  "config of another request",
			claim: claim([]resourcev1.DeviceRequestAllocationResult{result("channel", names.ComputeDomainDriverName, "node-a")}, channelConfig(uid1, "other")),
		},
		{
			name:  "domainID that is no UID",
			claim: claim([]resourcev1.DeviceRequestAllocationResult{result("channel", names.ComputeDomainDriverName, "node-a")}, channelConfig("x/../y", "channel")),
		},
		{
			name:  "bad pool name",
			claim: claim([]resourcev1.DeviceRequestAllocationResult{result("channel", names.ComputeDomainDriverName, "Node A")}, channelConfig(uid1, "channel")),
		},
		{
			name: "two nodes, duplicates once",
			claim: claim([]resourcev1.DeviceRequestAllocationResult{
				result("channel", names.ComputeDomainDriverName, "node-a"),
				result("channel", names.ComputeDomainDriverName, "node-a"),
				result("channel", names.ComputeDomainDriverName, "node-b"),
			}, channelConfig(uid1, "channel")),
			want: []Placement{{DomainUID: uid1, Node: "node-a"}, {DomainUID: uid1, Node: "node-b"}},
		},
		{
			name: "later config wins",
			claim: claim([]resourcev1.DeviceRequestAllocationResult{result("channel", names.ComputeDomainDriverName, "node-a")},
				channelConfig(uid1, "channel"), channelConfig(uid2, "channel")),
			want: []Placement{{DomainUID: uid2, Node: "node-a"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Placements(tt.claim); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func slice(driver, node string, cliques ...string) *resourcev1.ResourceSlice {
	s := &resourcev1.ResourceSlice{Spec: resourcev1.ResourceSliceSpec{Driver: driver, NodeName: ptr.To(node), Pool: resourcev1.ResourcePool{Name: node}}}
	for _, c := range cliques {
		s.Spec.Devices = append(s.Spec.Devices, resourcev1.Device{Name: "d", Attributes: map[resourcev1.QualifiedName]resourcev1.DeviceAttribute{
			names.AttrCliqueID: {StringValue: ptr.To(c)},
		}})
	}
	return s
}

func TestSliceClique(t *testing.T) {
	const clique = "0f3b1c2d-1111-2222-3333-444455556666.7"
	tests := []struct {
		name       string
		slice      *resourcev1.ResourceSlice
		wantNode   string
		wantClique string
		wantOK     bool
	}{
		{name: "ours", slice: slice(names.ComputeDomainDriverName, "n1", clique, clique), wantNode: "n1", wantClique: clique, wantOK: true},
		{name: "empty pool", slice: slice(names.ComputeDomainDriverName, "n1"), wantNode: "n1", wantOK: true},
		{name: "devices disagree", slice: slice(names.ComputeDomainDriverName, "n1", clique, "other.1"), wantNode: "n1", wantOK: true},
		{name: "not a label value", slice: slice(names.ComputeDomainDriverName, "n1", "bad value!"), wantNode: "n1", wantOK: true},
		{name: "another driver", slice: slice("gpu.nvidia.com", "n1", clique)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node, c, ok := SliceClique(tt.slice)
			if node != tt.wantNode || c != tt.wantClique || ok != tt.wantOK {
				t.Errorf("got (%q, %q, %v), want (%q, %q, %v)", node, c, ok, tt.wantNode, tt.wantClique, tt.wantOK)
			}
		})
	}
}

func TestDesired(t *testing.T) {
	l1, l2 := names.DomainNodeLabel(uid1), names.DomainNodeLabel(uid2)
	tests := []struct {
		name      string
		labels    map[string]string
		domains   []string
		haveSlice bool
		clique    string
		want      Patch
	}{
		{name: "add", domains: []string{uid1}, want: Patch{Set: map[string]string{l1: ""}}},
		{name: "two domains, two keys", labels: map[string]string{l1: ""}, domains: []string{uid1, uid2}, want: Patch{Set: map[string]string{l2: ""}}},
		{name: "remove", labels: map[string]string{l1: "", l2: "", "other": "x", names.DomainCliqueLabel: "y"}, domains: []string{uid2}, want: Patch{Set: map[string]string{}, Remove: []string{l1}}},
		{name: "clique set", haveSlice: true, clique: "c.1", want: Patch{Set: map[string]string{names.GPUCliqueLabel: "c.1"}}},
		{name: "clique kept", labels: map[string]string{names.GPUCliqueLabel: "c.1"}, haveSlice: true, clique: "c.1", want: Patch{Set: map[string]string{}}},
		{name: "clique gone", labels: map[string]string{names.GPUCliqueLabel: "c.1"}, haveSlice: true, want: Patch{Set: map[string]string{}, Remove: []string{names.GPUCliqueLabel}}},
		{name: "no slice: clique left alone", labels: map[string]string{names.GPUCliqueLabel: "c.1"}, want: Patch{Set: map[string]string{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Desired(tt.labels, sets.New(tt.domains...), tt.haveSlice, tt.clique)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
