package prepare

import (
	"context"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
)

// TestEnsureDaemonsStartsTheGoneOnes: the daemons of a prepared MPS claim
// and of a shared GPU with a share, both gone (their pods evicted), are
// started again; a claim unprepared meanwhile is not given its daemon
// back, and running daemons are left alone.
func TestEnsureDaemonsStartsTheGoneOnes(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	own := withConfig("gpu-1", mpsConfig)
	share := sharesAllocated(shareOf{"gpu-2-shared", "s1", "20Gi", "25"})
	gone := withConfig("gpu-3", mpsConfig)
	for _, c := range []*resourceapi.ResourceClaim{own, share, gone} {
		if _, err := f.p.Prepare(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	uuid := f.inventory().GPUs[2].UUID
	for _, key := range []string{string(own.UID), sharedDaemon(uuid)} {
		if err := f.mps.Stop(ctx, key); err != nil { // as if its pod were evicted
			t.Fatal(err)
		}
	}
	if err := f.p.Unprepare(ctx, ref(gone)); err != nil {
		t.Fatal(err)
	}
	if err := f.p.EnsureDaemons(ctx); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{string(own.UID), sharedDaemon(uuid)} {
		if !f.mps.Running(key) {
			t.Errorf("daemon %s not started again", key)
		}
	}
	if f.mps.Running(string(gone.UID)) {
		t.Error("the unprepared claim got its daemon back")
	}
	keys, err := f.mps.Claims(ctx)
	if err != nil || len(keys) != 2 {
		t.Errorf("daemons %v (%v), want 2", keys, err)
	}
	// Nothing gone: nothing started.
	if err := f.p.EnsureDaemons(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*resourceapi.ResourceClaim{own, share} {
		if err := f.p.Unprepare(ctx, ref(c)); err != nil {
			t.Fatal(err)
		}
	}
	f.checkNothingLeft(ctx, "after unprepare")
}
