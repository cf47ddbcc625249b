package fleet

import (
	"context"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// TestCheckAllocations: the harness's over-commit check finds a device
// allocated twice, a whole GPU and a MIG device on it together, and shares
// beyond a GPU's memory, and finds nothing in a valid set.
func TestCheckAllocations(t *testing.T) {
	ctx := context.Background()
	inv, err := SimulatedInventories()(ctx, "dgxh100")
	if err != nil {
		t.Fatal(err)
	}
	p, err := newPool("node-a", inv, devicemodel.OfferAll, true, false)
	if err != nil {
		t.Fatal(err)
	}
	mig := names.MIGDevice(0, "1g.10gb", 6)
	other := names.MIGDevice(1, "1g.10gb", 6)
	share := func(gi string) resourceapi.DeviceRequestAllocationResult {
		return resourceapi.DeviceRequestAllocationResult{
			Request: "gpu", Driver: names.DriverName, Pool: "node-a", Device: names.SharedDevice(2),
			ConsumedCapacity: map[resourceapi.QualifiedName]resource.Quantity{names.CapacityMemory: resource.MustParse(gi)},
		}
	}
	one := func(device string) resourceapi.DeviceRequestAllocationResult {
		return resourceapi.DeviceRequestAllocationResult{Request: "gpu", Driver: names.DriverName, Pool: "node-a", Device: device}
	}
	for _, tc := range []struct {
		name   string
		claims [][]resourceapi.DeviceRequestAllocationResult
		want   []string // substrings, one per problem
	}{
		{name: "valid", claims: [][]resourceapi.DeviceRequestAllocationResult{{one(names.GPUDevice(3))}, {one(mig)}, {one(other)}, {share("40Gi")}, {share("30Gi")}}},
		{name: "one device twice", claims: [][]resourceapi.DeviceRequestAllocationResult{{one(mig)}, {one(mig)}}, want: []string{"counter " + names.MemorySliceCounter(6), "allocated to claims"}},
		{
			name:   "whole GPU and a MIG device on it",
			claims: [][]resourceapi.DeviceRequestAllocationResult{{one(names.GPUDevice(0))}, {one(mig)}},
			want:   []string{"counter " + names.MemorySliceCounter(6) + " of node-a/" + names.CounterSet(0) + ": 2 consumed of 1"},
		},
		{name: "shares beyond the memory", claims: [][]resourceapi.DeviceRequestAllocationResult{{share("60Gi")}, {share("30Gi")}}, want: []string{"shares use"}},
		{name: "a device nobody published", claims: [][]resourceapi.DeviceRequestAllocationResult{{one("gpu-9")}}, want: []string{"is not published"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var objs []runtime.Object
			for i, results := range tc.claims {
				objs = append(objs, &resourceapi.ResourceClaim{
					ObjectMeta: metav1.ObjectMeta{Name: "claim-" + string(rune('a'+i)), Namespace: Namespace},
					Status:     resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: results}}},
				})
			}
			h := &harness{client: fake.NewClientset(objs...), pools: map[string]*pool{p.node: p}}
			got, err := h.checkAllocations(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("problems %q, want %d", got, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %q, want one with %q", got[i], w)
				}
			}
		})
	}
}

// TestCheckAllocationsOnAnA30: the harness checks an A30 in its four
// memory slices: a 2g.12gb at 2 and a 1g.6gb at 3 overlap on slice 3,
// there is no 1g.6gb at 4, and 1g at 3 and 2 with a 2g at 0 fill it.
func TestCheckAllocationsOnAnA30(t *testing.T) {
	ctx := context.Background()
	cached, err := SimulatedInventories()(ctx, "a30")
	if err != nil {
		t.Fatal(err)
	}
	// Ampere offers MIG devices in MIG mode only, which an administrator
	// sets (and a reset applies).
	inv := *cached
	inv.GPUs = append([]gpu.GPU(nil), cached.GPUs...)
	for i := range inv.GPUs {
		inv.GPUs[i].MIGEnabled = true
	}
	p, err := newPool("node-a", &inv, devicemodel.OfferAll, true, false)
	if err != nil {
		t.Fatal(err)
	}
	one := func(device string) resourceapi.DeviceRequestAllocationResult {
		return resourceapi.DeviceRequestAllocationResult{Request: "gpu", Driver: names.DriverName, Pool: "node-a", Device: device}
	}
	oneG := func(start int) resourceapi.DeviceRequestAllocationResult {
		return one(names.MIGDevice(0, "1g.6gb", start))
	}
	twoG := func(start int) resourceapi.DeviceRequestAllocationResult {
		return one(names.MIGDevice(0, "2g.12gb", start))
	}
	for _, tc := range []struct {
		name   string
		claims [][]resourceapi.DeviceRequestAllocationResult
		want   []string
	}{
		{name: "a full GPU", claims: [][]resourceapi.DeviceRequestAllocationResult{{oneG(3)}, {oneG(2)}, {twoG(0)}}},
		{name: "overlap on the last slice", claims: [][]resourceapi.DeviceRequestAllocationResult{{twoG(2)}, {oneG(3)}},
			want: []string{"counter " + names.MemorySliceCounter(3) + " of node-a/" + names.CounterSet(0) + ": 2 consumed of 1"}},
		{name: "no fifth slice", claims: [][]resourceapi.DeviceRequestAllocationResult{{oneG(4)}}, want: []string{"is not published"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var objs []runtime.Object
			for i, results := range tc.claims {
				objs = append(objs, &resourceapi.ResourceClaim{
					ObjectMeta: metav1.ObjectMeta{Name: "claim-" + string(rune('a'+i)), Namespace: Namespace},
					Status:     resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: results}}},
				})
			}
			h := &harness{client: fake.NewClientset(objs...), pools: map[string]*pool{p.node: p}}
			got, err := h.checkAllocations(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("problems %q, want %d", got, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %q, want one with %q", got[i], w)
				}
			}
		})
	}
}
