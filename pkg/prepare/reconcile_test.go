package prepare

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/cdi"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// TestReconcile covers each disagreement start-up reconciliation repairs.
func TestReconcile(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")

	kept := allocated("gpu-0-mig-1g10gb-6")       // prepared; its spec vanished (tmpfs)
	vanished := allocated("gpu-1-mig-2g20gb-4")   // prepared; its MIG device vanished (reboot)
	unfinished := allocated("gpu-2-mig-3g40gb-0") // crashed after creating, before recording
	for _, c := range []*resourceapi.ResourceClaim{kept, vanished} {
		if _, err := f.p.Prepare(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(f.cdi.SpecPath(string(kept.UID))); err != nil {
		t.Fatal(err)
	}
	cp := f.p.Snapshot()
	// The vanished claim's instance is destroyed behind the plugin's back.
	vd := cp.Claims[string(vanished.UID)].Devices[0]
	if err := f.node.DestroyMIG(ctx, gpu.MIGRef{ParentUUID: vd.GPUUUID, GIID: vd.MIG.GIID, CIID: vd.MIG.CIID}); err != nil {
		t.Fatal(err)
	}
	// The unfinished claim: plan recorded, instance created, never recorded.
	g2 := f.inventory().GPUs[2]
	rec, err := f.p.plan(unfinished)
	if err != nil {
		t.Fatal(err)
	}
	cp.Claims[rec.UID] = rec
	if err := f.node.SetMIGMode(ctx, g2.UUID, true); err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g2.UUID, ProfileID: 2, Placement: gpu.Placement{Start: 0, Size: 4}}); err != nil {
		t.Fatal(err)
	}
	// An admin's instance elsewhere must survive.
	if _, err := f.node.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g2.UUID, ProfileID: 0, Placement: gpu.Placement{Start: 6, Size: 1}}); err != nil {
		t.Fatal(err)
	}
	// An orphan spec of a claim nobody remembers.
	orphan := allocated("gpu-5")
	if _, err := f.cdi.WriteClaimSpec(ctx, string(orphan.UID), []cdi.Device{{Name: "gpu-5", Request: "r", GPUMinor: 5, UUID: f.inventory().GPUs[5].UUID}}); err != nil {
		t.Fatal(err)
	}

	out, rep, err := f.reconcile(ctx, cp, f.inventory(), nil)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, got []string, want ...string) {
		t.Helper()
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	check("rolled back", rep.RolledBack, string(unfinished.UID))
	check("dropped", rep.Dropped, string(vanished.UID))
	check("specs rewritten", rep.SpecsRewritten, string(kept.UID))
	check("orphan specs", rep.OrphanSpecs, string(orphan.UID))
	if len(out.Claims) != 1 || out.Claims[string(kept.UID)] == nil {
		t.Fatalf("claims after reconcile: %v", out.Claims)
	}
	check("spec files", f.specs(), string(kept.UID))
	var live []string
	for _, m := range f.liveMIG() {
		live = append(live, m.Profile+"@"+m.Placement.String())
	}
	check("live MIG devices", live, "1g.10gb@6:1", "1g.10gb@6:1") // kept's on GPU 0, the admin's on GPU 2
}

// TestRebuildFromSpecs: the checkpoint is lost; prepared claims are
// recovered from their CDI specs and can be unprepared, destroying exactly
// their MIG devices.
func TestRebuildFromSpecs(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	whole, mig := allocated("gpu-4"), allocated("gpu-3-mig-1g20gb-2")
	if _, err := f.p.Prepare(ctx, whole); err != nil {
		t.Fatal(err)
	}
	if _, err := f.p.Prepare(ctx, mig); err != nil {
		t.Fatal(err)
	}
	want := f.p.Snapshot()
	out, rep, err := f.reconcile(ctx, checkpoint.New("boot"), f.inventory(), &checkpoint.CorruptError{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rebuilt) != 2 || len(out.Claims) != 2 {
		t.Fatalf("rebuilt %v, claims %v", rep.Rebuilt, out.Claims)
	}
	for uid, w := range want.Claims {
		got := out.Claims[uid]
		if got == nil || got.Name != w.Name || got.Namespace != w.Namespace || len(got.Devices) != len(w.Devices) {
			t.Fatalf("claim %s rebuilt as %+v, want %+v", uid, got, w)
		}
		for i := range w.Devices {
			g, wd := got.Devices[i], w.Devices[i]
			if g.Name != wd.Name || g.GPUUUID != wd.GPUUUID || (wd.MIG != nil && (g.MIG == nil || *g.MIG != *wd.MIG)) || !slices.Equal(g.CDIDeviceIDs, wd.CDIDeviceIDs) {
				t.Errorf("device %+v rebuilt as %+v", wd, g)
			}
		}
	}
	p := New(f.node, f.devices, f.cdi, f.store, out, Options{PoolName: pool, MPS: f.mps, HeldWait: 300 * time.Millisecond})
	if err := p.Unprepare(ctx, ref(mig)); err != nil {
		t.Fatal(err)
	}
	if live := f.liveMIG(); len(live) != 0 {
		t.Fatalf("MIG devices left after unprepare of the rebuilt claim: %+v", live)
	}
}
