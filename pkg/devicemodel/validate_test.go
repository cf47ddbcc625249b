package devicemodel

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	resourceinternal "k8s.io/kubernetes/pkg/apis/resource"
	_ "k8s.io/kubernetes/pkg/apis/resource/install"
	"k8s.io/kubernetes/pkg/apis/resource/validation"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// validateSlices runs the API server's own ResourceSlice validation.
func validateSlices(t *testing.T, slices []resourceapi.ResourceSlice) {
	t.Helper()
	for i := range slices {
		s := slices[i].DeepCopy()
		s.Name = s.GenerateName + "x"
		var internal resourceinternal.ResourceSlice
		if err := legacyscheme.Scheme.Convert(s, &internal, nil); err != nil {
			t.Fatalf("convert slice %d: %v", i, err)
		}
		if errs := validation.ValidateResourceSlice(&internal); len(errs) > 0 {
			t.Errorf("slice %d (%s) is invalid: %v", i, s.Name, errs.ToAggregate())
		}
	}
}

// busyInventory is a node in an interesting state: MIG enabled on GPU 0
// with a pre-created 3g (2g on an A30) and a driver-created 1g (on a node whose GPUs
// have MIG), and GPU 1 faulty.
func busyInventory(t *testing.T, model string) (Input, *gpu.Inventory) {
	t.Helper()
	dir := t.TempDir()
	n, err := nvmlnode.Open(nvmlnode.Options{Simulate: model, SimStateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ctx := context.Background()
	inv, err := n.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.NewTime(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	faulty := map[string][]resourceapi.DeviceTaint{
		inv.GPUs[1].UUID: {{Key: "gpu.nvidia.com/xid", Value: "79", Effect: resourceapi.DeviceTaintEffectNoExecute, TimeAdded: &now}},
	}
	g := inv.GPUs[0]
	if !g.MIGCapable {
		return Input{Inventory: inv, GPUTaints: faulty}, inv
	}
	// An administrator's change, applied by a reset where it needs one.
	admin, err := sim.Open(model, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.SetMIGMode(g.Index, true); err != nil {
		t.Fatal(err)
	}
	if err := admin.Reset(g.Index); err != nil {
		t.Fatal(err)
	}
	// The pre-created instance is the first profile of half the GPU's
	// memory slices (a 3g on eight slices, a 2g on an A30's four) at 0,
	// the driver's a 1g at its last placement (6 of eight, 3 of four).
	var half, p1g *gpu.MIGProfile
	for i := range g.MIGProfiles {
		p := &g.MIGProfiles[i]
		if half == nil && p.MemorySlices == g.MemorySlices/2 {
			half = p
		}
		if p.ID == 0 {
			p1g = p
		}
	}
	static, err := n.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: half.ID, Placement: half.Placements[0]})
	if err != nil {
		t.Fatal(err)
	}
	managed, err := n.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: p1g.ID, Placement: p1g.Placements[len(p1g.Placements)-1]})
	if err != nil {
		t.Fatal(err)
	}
	if inv, err = n.Inventory(ctx); err != nil {
		t.Fatal(err)
	}
	in := Input{
		Inventory: inv,
		GPUTaints: faulty,
		MIGTaints: map[string][]resourceapi.DeviceTaint{
			managed.UUID: {{Key: "gpu.nvidia.com/xid", Value: "94", Effect: resourceapi.DeviceTaintEffectNoSchedule, TimeAdded: &now}},
			static.UUID:  {{Key: "gpu.nvidia.com/ecc", Effect: resourceapi.DeviceTaintEffectNone, TimeAdded: &now}},
		},
		Managed: func(i gpu.MIGInstance) bool { return i.UUID == managed.UUID },
	}
	return in, inv
}

// TestSlicesPassAPIValidation checks every simulated node's slices, fresh
// and busy, with the validation code the API server runs.
func TestSlicesPassAPIValidation(t *testing.T) {
	for _, model := range nvmlnode.SimulatedModels() {
		t.Run(model, func(t *testing.T) {
			for _, shared := range []bool{false, true} {
				m := build(t, Input{Inventory: inventory(t, model), SharedGPUs: shared})
				validateSlices(t, m.ResourceSlices("node-a.example.com"))
				st := m.Stats()
				t.Logf("%s (shared GPUs %v): %d slices, %d counter sets, %d devices (%d GPUs, %d MIG, %d shared)", model, shared, st.Slices, st.CounterSets, st.Devices, st.GPUs, st.MIGDevices, st.SharedGPUs)

				in, _ := busyInventory(t, model)
				in.SharedGPUs = shared
				busy := build(t, in)
				validateSlices(t, busy.ResourceSlices("node-a"))
				static := build(t, Input{Inventory: inventory(t, model), SharedGPUs: shared, StaticMIGOnly: true})
				validateSlices(t, static.ResourceSlices("node-a"))
			}
		})
	}
}

func TestModelIsDeterministic(t *testing.T) {
	a := build(t, Input{Inventory: inventory(t, "dgxh100")})
	b := build(t, Input{Inventory: inventory(t, "dgxh100")})
	if !reflect.DeepEqual(a.ResourceSlices("n"), b.ResourceSlices("n")) {
		t.Fatal("two builds of the same inventory differ")
	}
}

// TestBusyNode checks static instances, managed instances and taints.
func TestBusyNode(t *testing.T) {
	in, inv := busyInventory(t, "dgxh100")
	m := build(t, in)
	g0, g1 := &inv.GPUs[0], &inv.GPUs[1]

	if _, ok := m.Devices[names.GPUDevice(g0.Minor)]; ok {
		t.Error("GPU 0 has a pre-created instance: its whole-GPU device must not be published")
	}
	static := m.Devices[names.MIGDevice(g0.Minor, "3g.40gb", 0)+"-static"]
	if static == nil || static.Kind != KindMIGStatic || static.Instance == nil {
		t.Fatalf("static 3g device missing: %+v", static)
	}
	for name, d := range m.Devices {
		if d.GPU == g0 && d.Kind == KindMIGPlacement && d.Placement.Start < 4 {
			t.Errorf("%s overlaps the pre-created 3g at 0:4 and must not be published", name)
		}
	}
	managed := m.Devices[names.MIGDevice(g0.Minor, "1g.10gb", 6)]
	if managed == nil || managed.Kind != KindMIGPlacement {
		t.Fatalf("the driver-created 1g at 6 must stay its placement's device: %+v", managed)
	}

	published := map[string]resourceapi.Device{}
	for _, s := range m.Slices {
		for _, d := range s.Devices {
			published[d.Name] = d
		}
	}
	taintKeys := func(name string) string {
		var keys []string
		for _, t := range published[name].Taints {
			keys = append(keys, fmt.Sprintf("%s=%s:%s", t.Key, t.Value, t.Effect))
		}
		return fmt.Sprint(keys)
	}
	cases := []struct{ device, want string }{
		{names.GPUDevice(g1.Minor), "[gpu.nvidia.com/xid=79:NoExecute]"},
		{names.MIGDevice(g1.Minor, "1g.10gb", 3), "[gpu.nvidia.com/xid=79:NoExecute]"},
		{names.MIGDevice(g1.Minor, "7g.80gb", 0), "[gpu.nvidia.com/xid=79:NoExecute]"},
		{names.MIGDevice(g0.Minor, "1g.10gb", 6), "[gpu.nvidia.com/xid=94:NoSchedule]"},
		{names.MIGDevice(g0.Minor, "1g.10gb", 5), "[]"},
		{names.MIGDevice(g0.Minor, "3g.40gb", 0) + "-static", "[gpu.nvidia.com/ecc=:None]"},
		{names.GPUDevice(inv.GPUs[2].Minor), "[]"},
	}
	for _, c := range cases {
		if got := taintKeys(c.device); got != c.want {
			t.Errorf("taints of %s = %s, want %s", c.device, got, c.want)
		}
	}
}

func TestStaticMIGOnly(t *testing.T) {
	in, inv := busyInventory(t, "dgxa100")
	in.StaticMIGOnly = true
	in.Managed = nil // without dynamic MIG the driver creates nothing
	m := build(t, in)
	for name, d := range m.Devices {
		switch {
		case d.Kind == KindMIGPlacement:
			t.Errorf("%s: no placement devices without dynamic MIG", name)
		case d.GPU == &inv.GPUs[0] && d.Kind == KindGPU:
			t.Errorf("%s: a GPU in MIG mode is not a whole GPU", name)
		}
	}
	if st := m.Stats(); st.GPUs != 7 || st.MIGDevices != 2 || st.CounterSets != 0 {
		t.Errorf("stats %+v, want 7 GPUs, 2 static MIG devices, no counters", st)
	}
	validateSlices(t, m.ResourceSlices("n"))
}

func TestSanitizeProfile(t *testing.T) {
	for in, want := range map[string]string{
		"1g.10gb": "1g10gb", "1g.10gb+me": "1g10gbme", "1g.10gb-me": "1g10gbnome",
		"1g.23gb+me.all": "1g23gbmeall", "4g.40gb+gfx": "4g40gbgfx", "7g.141gb": "7g141gb",
	} {
		if got := names.SanitizeProfile(in); got != want {
			t.Errorf("names.SanitizeProfile(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSemver(t *testing.T) {
	for in, want := range map[string]string{"9.0": "9.0.0", "12.4": "12.4.0", "535.104.05": "535.104.5", "550.54.15": "550.54.15", "10": "10.0.0", "x.1": "", "1.2.3.4": ""} {
		got, ok := semver(in)
		if got != want || ok != (want != "") {
			t.Errorf("semver(%q) = %q, %t; want %q", in, got, ok, want)
		}
	}
}

// TestValidationCatchesBadSlices proves the validator above is not a no-op:
// slices that break the API's limits are refused.
func TestValidationCatchesBadSlices(t *testing.T) {
	m := build(t, Input{Inventory: inventory(t, "dgxh100")})
	good := m.ResourceSlices("n")
	cases := map[string]func(s []resourceapi.ResourceSlice){
		"dotted device name": func(s []resourceapi.ResourceSlice) { s[1].Spec.Devices[0].Name = "gpu.0" },
		"too many devices": func(s []resourceapi.ResourceSlice) {
			s[1].Spec.Devices = append(s[1].Spec.Devices, s[2].Spec.Devices...)
		},
		"counters beside devices": func(s []resourceapi.ResourceSlice) {
			s[1].Spec.SharedCounters = s[0].Spec.SharedCounters
		},
	}
	for name, breakIt := range cases {
		t.Run(name, func(t *testing.T) {
			s := make([]resourceapi.ResourceSlice, len(good))
			for i := range good {
				s[i] = *good[i].DeepCopy()
			}
			breakIt(s)
			failed := false
			for i := range s {
				c := s[i].DeepCopy()
				c.Name = c.GenerateName + "x"
				var internal resourceinternal.ResourceSlice
				if err := legacyscheme.Scheme.Convert(c, &internal, nil); err != nil {
					t.Fatal(err)
				}
				failed = failed || len(validation.ValidateResourceSlice(&internal)) > 0
			}
			if !failed {
				t.Fatal("validation accepted a broken slice")
			}
		})
	}
}
