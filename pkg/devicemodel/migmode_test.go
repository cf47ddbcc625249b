package devicemodel

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// kindsOf lists, for each GPU by index, the kinds of device published for
// it: "gpu", "mig" (placements), "static", "shared", each once.
func kindsOf(m *Model) map[int]string {
	byGPU := map[int][]string{}
	for _, d := range m.Devices {
		k := map[Kind]string{KindGPU: "gpu", KindMIGPlacement: "mig", KindMIGStatic: "static", KindGPUShare: "shared"}[d.Kind]
		if !slices.Contains(byGPU[d.GPU.Index], k) {
			byGPU[d.GPU.Index] = append(byGPU[d.GPU.Index], k)
		}
	}
	out := map[int]string{}
	for i, ks := range byGPU {
		slices.Sort(ks)
		out[i] = strings.Join(ks, ",")
	}
	return out
}

// TestPublishedKindsByMIGMode: what each GPU offers depends on whether it
// has MIG and on whether the driver can change its MIG mode.
func TestPublishedKindsByMIGMode(t *testing.T) {
	cases := []struct {
		name  string
		model string
		edit  func(inv *gpu.Inventory)
		// want is the kinds of every GPU of the node, as kindsOf lists
		// them.
		want string
	}{
		{name: "L40S: whole and shared only", model: "l40s", want: "gpu,shared"},
		{name: "L4: whole and shared only", model: "l4", want: "gpu,shared"},
		{name: "H100, MIG off: everything", model: "dgxh100", want: "gpu,mig,shared"},
		{name: "H100, MIG on: everything", model: "dgxh100", edit: migOn, want: "gpu,mig,shared"},
		{name: "A100, MIG off: no placements, which need a reset", model: "dgxa100", want: "gpu,shared"},
		{name: "A100, MIG on: no whole GPU, which needs a reset", model: "dgxa100", edit: migOn, want: "mig"},
		{name: "A30, MIG off: no placements, which need a reset", model: "a30", want: "gpu,shared"},
		{name: "A30, MIG on: no whole GPU, which needs a reset", model: "a30", edit: migOn, want: "mig"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inv := inventory(t, tc.model)
			if tc.edit != nil {
				tc.edit(inv)
			}
			m := build(t, Input{Inventory: inv, SharedGPUs: true})
			got := kindsOf(m)
			for _, g := range inv.GPUs {
				if got[g.Index] != tc.want {
					t.Errorf("GPU %d publishes %q, want %q", g.Index, got[g.Index], tc.want)
				}
			}
			if len(got) != len(inv.GPUs) {
				t.Errorf("devices of %d GPUs published, want %d: %s", len(got), len(inv.GPUs), fmt.Sprint(got))
			}
		})
	}
}

// migOn puts every GPU of inv in MIG mode, as an administrator's change
// and a reset would.
func migOn(inv *gpu.Inventory) {
	for i := range inv.GPUs {
		inv.GPUs[i].MIGEnabled = true
	}
}
