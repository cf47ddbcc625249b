package prepare

import (
	"context"
	"errors"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
)

// TestEnsureDaemonsStartsTheGoneOnes: the daemons of a prepared MPS claim
// and of a share, both gone (their pods evicted), are started again; a claim unprepared meanwhile is not given its daemon
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
	for _, key := range []string{string(own.UID), string(share.UID)} {
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
	for _, key := range []string{string(own.UID), string(share.UID)} {
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

// TestEnsureDaemonsSkipsAHalfUnpreparedClaim: an unprepare that stopped
// the daemons but could not delete the CDI spec fails, and the kubelet
// retries it; meanwhile the claim is not served as prepared, so its own
// daemon and its share's are not started again for containers
// that are gone.
func TestEnsureDaemonsSkipsAHalfUnpreparedClaim(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	specs := &flakyCDI{Writer: f.cdi}
	f.p = New(f.node, f.devices, specs, f.store, checkpoint.New("boot"), f.p.opts)
	own := withConfig("gpu-1", mpsConfig)
	share := sharesAllocated(shareOf{"gpu-2-shared", "s1", "20Gi", "25"})
	for _, c := range []*resourceapi.ResourceClaim{own, share} {
		if _, err := f.p.Prepare(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	specs.deleteErr = errors.New("read-only file system")
	for _, c := range []*resourceapi.ResourceClaim{own, share} {
		if err := f.p.Unprepare(ctx, ref(c)); !errors.Is(err, specs.deleteErr) {
			t.Fatalf("unprepare of %s: %v, want the spec deletion's error", c.Name, err)
		}
	}
	if err := f.p.EnsureDaemons(ctx); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{string(own.UID), string(share.UID)} {
		if f.mps.Running(key) {
			t.Errorf("daemon %s started again for a claim being unprepared", key)
		}
	}
	specs.deleteErr = nil
	for _, c := range []*resourceapi.ResourceClaim{own, share} {
		if err := f.p.Unprepare(ctx, ref(c)); err != nil {
			t.Fatal(err)
		}
	}
	f.checkNothingLeft(ctx, "after the retried unprepare")
}
