package devicemodel

import (
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

func TestParseOffer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		labels  map[string]string
		want    Offer
		wantErr string
	}{
		{name: "no labels offer everything", want: OfferAll},
		{name: "whole only", labels: map[string]string{names.DeviceKindsLabel: "whole"}, want: Offer{Whole: true}},
		{name: "MIG and shared", labels: map[string]string{names.DeviceKindsLabel: "mig_shared"}, want: Offer{MIG: true, Shared: true}},
		{
			name:   "profiles by size and name",
			labels: map[string]string{names.MIGProfilesLabel: "1g_7g80gb"},
			want:   Offer{Whole: true, MIG: true, Shared: true, VFIO: true, MIGProfiles: []string{"1g", "7g80gb"}},
		},
		{
			name:   "consumable shares",
			labels: map[string]string{names.ConsumableSharesLabel: "4"},
			want:   Offer{Whole: true, MIG: true, Shared: true, VFIO: true, ConsumableShares: &ConsumableShares{Mode: SharesCount, Shares: 4}},
		},
		{
			name:   "consumable shares disabled on the node",
			labels: map[string]string{names.ConsumableSharesLabel: "disabled"},
			want:   Offer{Whole: true, MIG: true, Shared: true, VFIO: true, ConsumableShares: &ConsumableShares{}},
		},
		{name: "bad consumable shares", labels: map[string]string{names.ConsumableSharesLabel: "half"}, wantErr: `label gpu.nvidia.com/consumable-shares="half": "half" is not`},
		{name: "zero consumable shares", labels: map[string]string{names.ConsumableSharesLabel: "0"}, wantErr: `label gpu.nvidia.com/consumable-shares="0"`},
		{name: "unknown kind", labels: map[string]string{names.DeviceKindsLabel: "whole_gpu"}, wantErr: `unknown device kind "gpu"`},
		{name: "empty kind", labels: map[string]string{names.DeviceKindsLabel: ""}, wantErr: `unknown device kind ""`},
		{name: "profile not sanitized", labels: map[string]string{names.MIGProfilesLabel: "1g.10gb"}, wantErr: "not a profile size"},
		{name: "empty profile", labels: map[string]string{names.MIGProfilesLabel: "1g__7g"}, wantErr: "not a profile size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseOffer(tc.labels)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("offer %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestOffer builds a DGX H100 with each offer and checks what is published.
func TestOffer(t *testing.T) {
	inv := inventory(t, "dgxh100")
	for _, tc := range []struct {
		name  string
		offer Offer
		// want counts devices per kind; profiles are the MIG profiles published.
		want        Stats
		profiles    string
		counterSets int
	}{
		{name: "everything", offer: OfferAll, want: Stats{GPUs: 8, MIGDevices: 200, SharedGPUs: 8}, profiles: "1g.10gb,1g.10gb+me,1g.20gb,2g.20gb,3g.40gb,4g.40gb,7g.80gb", counterSets: 8},
		{name: "whole only: no counters", offer: Offer{Whole: true}, want: Stats{GPUs: 8}, counterSets: 0},
		{name: "shared only", offer: Offer{Shared: true}, want: Stats{SharedGPUs: 8}, counterSets: 8},
		{name: "MIG 1g and 7g only", offer: Offer{MIG: true, MIGProfiles: []string{"1g", "7g"}}, want: Stats{MIGDevices: 8 * (7 + 7 + 4 + 1)}, profiles: "1g.10gb,1g.10gb+me,1g.20gb,7g.80gb", counterSets: 8},
		{name: "one profile by name", offer: Offer{Whole: true, MIG: true, MIGProfiles: []string{"3g40gb"}}, want: Stats{GPUs: 8, MIGDevices: 16}, profiles: "3g.40gb", counterSets: 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := build(t, Input{Inventory: inv, SharedGPUs: true, Offer: &tc.offer})
			validateSlices(t, m.ResourceSlices("node"))
			st := m.Stats()
			got := Stats{GPUs: st.GPUs, MIGDevices: st.MIGDevices, SharedGPUs: st.SharedGPUs}
			if got != tc.want {
				t.Errorf("devices %+v, want %+v", got, tc.want)
			}
			if st.CounterSets != tc.counterSets {
				t.Errorf("%d counter sets, want %d", st.CounterSets, tc.counterSets)
			}
			seen := map[string]bool{}
			for _, d := range m.Devices {
				if d.Profile != nil {
					seen[d.Profile.Name] = true
				}
			}
			profiles := slices.Sorted(maps.Keys(seen))
			if got := strings.Join(profiles, ","); got != tc.profiles {
				t.Errorf("profiles %s, want %s", got, tc.profiles)
			}
		})
	}
}

// TestOfferWithoutMIGKeepsInstances: a node relabelled to offer no MIG
// while an instance made for a claim lives publishes that instance as a
// fixed device, so nothing published overlaps it.
func TestOfferWithoutMIGKeepsInstances(t *testing.T) {
	in, inv := busyInventory(t, "dgxh100")
	in.Offer = &Offer{Whole: true}
	m := build(t, in)
	g := inv.GPUs[0]
	var managed string
	for _, inst := range g.MIGInstances {
		if in.Managed(inst) {
			managed = names.StaticMIGDevice(g.Minor, inst.Profile, inst.Placement.Start)
		}
	}
	if managed == "" {
		t.Fatal("the busy node has no managed instance")
	}
	if d, ok := m.Devices[managed]; !ok || d.Kind != KindMIGStatic {
		t.Errorf("managed instance %s not published as a fixed device (got %+v)", managed, d)
	}
	if _, ok := m.Devices[names.GPUDevice(g.Minor)]; ok {
		t.Errorf("GPU %d published whole over its MIG instances", g.Minor)
	}
	for name, d := range m.Devices {
		if d.Kind == KindMIGPlacement {
			t.Errorf("placement %s published without MIG on offer", name)
		}
	}
}
