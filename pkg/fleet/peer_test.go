package fleet

import (
	"context"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// TestCheckAllocationsOnThePeer: the harness checks NVIDIA's pool by its
// own counters: a whole GPU and a MIG device on it, or two MIG devices
// that overlap, are over-commitments; MIG devices side by side are not.
func TestCheckAllocationsOnThePeer(t *testing.T) {
	ctx := context.Background()
	inv, err := SimulatedInventories()(ctx, "dgxh100")
	if err != nil {
		t.Fatal(err)
	}
	p, err := newPool("node-a", inv, devicemodel.OfferAll, true, true)
	if err != nil {
		t.Fatal(err)
	}
	one := func(device string) resourceapi.DeviceRequestAllocationResult {
		return resourceapi.DeviceRequestAllocationResult{Request: "gpu", Driver: names.DriverName, Pool: "node-a", Device: device}
	}
	for _, tc := range []struct {
		name   string
		claims []string
		want   []string // substrings, one per problem
	}{
		{name: "side by side", claims: []string{"gpu-0-mig-1g10gb-19-0", "gpu-0-mig-1g10gb-19-1", "gpu-0-mig-3g40gb-9-4", "gpu-1"}},
		{name: "whole GPU and a MIG device on it", claims: []string{"gpu-0", "gpu-0-mig-1g10gb-19-6"}, want: []string{
			// The whole GPU consumes every counter of its set.
			"counter copy-engines", "counter decoders", "counter jpeg-engines", "counter memory of",
			"counter memory-slice-6 of node-a/gpu-0-counter-set: 2 consumed of 1", "counter multiprocessors",
		}},
		{name: "overlapping placements", claims: []string{"gpu-2-mig-1g20gb-15-2", "gpu-2-mig-1g10gb-me-20-3"}, want: []string{"counter memory-slice-3 of node-a/gpu-2-counter-set"}},
		{name: "our device names are not the peer's", claims: []string{names.MIGDevice(0, "1g.10gb", 6)}, want: []string{"is not published"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var objs []runtime.Object
			for i, d := range tc.claims {
				objs = append(objs, &resourceapi.ResourceClaim{
					ObjectMeta: metav1.ObjectMeta{Name: "claim-" + string(rune('a'+i)), Namespace: Namespace},
					Status:     resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: []resourceapi.DeviceRequestAllocationResult{one(d)}}}},
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

func TestCheckPeer(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		err  string
	}{
		{name: "bursts and churn NVIDIA serves", cfg: Config{Bursts: []Burst{{Workload: "whole"}, {Workload: "mig-1g"}}, Churns: []Churn{{Mix: []WorkloadWeight{{Workload: "mig-3g", Weight: 1}}}}}},
		{name: "a share burst", cfg: Config{Bursts: []Burst{{Workload: "share"}}}, err: "burst share"},
		{name: "shares in a churn", cfg: Config{Churns: []Churn{{Mix: []WorkloadWeight{{Workload: "whole", Weight: 1}, {Workload: "share", Weight: 1}}}}}, err: "no class for share"},
		{name: "node labels", cfg: Config{Labels: map[string]string{names.DeviceKindsLabel: "whole"}}, err: "no node labels"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkPeer(tc.cfg)
			if (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
				t.Errorf("checkPeer: %v, want an error with %q", err, tc.err)
			}
		})
	}
}
