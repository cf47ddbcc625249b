package prepare

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// claimIndex is what a rollback must know of the other recorded claims
// (*checkpoint.Checkpoint; lockedIndex for the Preparer's).
type claimIndex interface {
	// Owner returns a claim other than uid that holds d, or "".
	Owner(uid string, d checkpoint.Device) string
	// SharesThrough returns the claims that hold a share served by the
	// MPS daemon of directory mpsDir.
	SharesThrough(mpsDir string) []string
}

// undoGPUs is what a rollback needs of the hardware.
type undoGPUs interface {
	DestroyMIG(ctx context.Context, ref gpu.MIGRef) error
	SetTimeSlice(ctx context.Context, gpuUUID, interval string) error
}

// daemonStopper stops MPS control daemons (MPS).
type daemonStopper interface {
	Dir(key string) string
	Stop(ctx context.Context, key string) error
}

// undoer undoes what preparing a claim did. A failed prepare, Unprepare
// and start-up reconciliation all use it, so a claim is undone the same
// way wherever it stopped. Every step is idempotent: a rollback
// interrupted anywhere is finished by running it again.
type undoer struct {
	gpus   undoGPUs
	mps    daemonStopper // nil on a node without MPS
	vfio   Passthrough   // nil on a node without VFIO passthrough
	cdi    CDI
	others claimIndex
	// unrecorded, when set, finds the live MIG device that a claim still
	// being prepared created at a planned placement but did not record
	// (start-up reconciliation sets it: it has the inventory). The
	// Preparer records what it created in memory before anything can
	// fail, so it needs none.
	unrecorded func(d checkpoint.Device) (gpu.MIGRef, bool)
	step       func(Step)
}

// undo stops rec's MPS control daemon and the legacy shared GPUs' daemons
// of which it held the last share, destroys the MIG devices rec created,
// gives back the GPUs it passed through to VMs, restores the time slices
// it set, and removes its CDI spec. Forgetting
// rec is the caller's. The daemons go first: an MPS server on a MIG
// device keeps its compute instance in use, and NVML refuses to destroy it
// (ERROR_IN_USE) for as long as the server runs.
func (u undoer) undo(ctx context.Context, rec *checkpoint.Claim) error {
	if err := stopMPS(ctx, u.mps, rec); err != nil {
		return err
	}
	if err := u.releaseShares(ctx, rec); err != nil {
		return err
	}
	u.emit(StepMPSStopped)
	for _, d := range rec.Devices {
		ref, ok := u.createdBy(rec, d)
		if !ok {
			continue
		}
		if err := u.gpus.DestroyMIG(ctx, ref); err != nil {
			return fmt.Errorf("device %s: destroy MIG device %s: %w", d.Name, ref.UUID, err)
		}
		u.emit(StepMIGDestroyed)
	}
	for _, d := range rec.Devices {
		// A GPU is given back only by the claim that has it: another
		// holder means rec's record is stale (see below), and the GPU is
		// that claim's now.
		if d.VFIO == nil || d.VFIO.Driver == "" || u.others.Owner(rec.UID, d) != "" {
			continue
		}
		if err := returnVFIO(ctx, u.vfio, &d); err != nil {
			return fmt.Errorf("device %s: %w", d.Name, err)
		}
		u.emit(StepVFIOReturned)
	}
	for _, d := range rec.Devices {
		// Another claim holds the GPU only when rec's record is stale (a
		// checkpoint one write behind, at start-up): the time slice is
		// that claim's now.
		if d.TimeSlice == "" || u.others.Owner(rec.UID, d) != "" {
			continue
		}
		if err := u.gpus.SetTimeSlice(ctx, d.GPUUUID, gpu.DefaultTimeSlice); err != nil {
			return fmt.Errorf("device %s: restore the default time slice: %w", d.Name, err)
		}
	}
	if err := u.cdi.DeleteClaimSpec(rec.UID); err != nil {
		return fmt.Errorf("delete CDI spec: %w", err)
	}
	u.emit(StepCDIDeleted)
	return nil
}

// createdBy returns the MIG device of d that rec created: the one it
// recorded, or the unrecorded one at its planned placement.
func (u undoer) createdBy(rec *checkpoint.Claim, d checkpoint.Device) (gpu.MIGRef, bool) {
	switch {
	case d.MIG == nil || d.AdminAccess:
		return gpu.MIGRef{}, false
	case d.MIG.Created:
		return gpu.MIGRef{ParentUUID: d.GPUUUID, GIID: d.MIG.GIID, CIID: d.MIG.CIID, UUID: d.MIG.UUID}, true
	case rec.State == checkpoint.PrepareStarted && d.MIG.UUID == "" && u.unrecorded != nil:
		return u.unrecorded(d)
	}
	return gpu.MIGRef{}, false
}

// releaseShares stops a previous release's MPS daemon of every GPU on
// which rec holds the last legacy share (legacyShare). The caller holds the GPUs' locks, so no share of them is
// being prepared; a claim that records a share but has not started its
// prepare yet counts as holding it, and will start the daemon again if
// it was stopped before it was recorded.
func (u undoer) releaseShares(ctx context.Context, rec *checkpoint.Claim) error {
	for _, uuid := range legacySharedGPUs(rec) {
		if u.mps == nil {
			return errors.New("the claim holds a share of a GPU, but MPS is not available on this node")
		}
		if slices.ContainsFunc(u.others.SharesThrough(u.mps.Dir(sharedDaemon(uuid))), func(uid string) bool { return uid != rec.UID }) {
			continue
		}
		if err := u.mps.Stop(ctx, sharedDaemon(uuid)); err != nil {
			return fmt.Errorf("GPU %s: stop the MPS control daemon of its shares: %w", uuid, err)
		}
		klog.FromContext(ctx).Info("Last share of a GPU released; its MPS control daemon stopped", "gpu", uuid)
	}
	return nil
}

func (u undoer) emit(s Step) {
	if u.step != nil {
		u.step(s)
	}
}

// rollback undoes rec and forgets it, holding its GPUs' locks. On failure
// rec stays recorded (Undone if only forgetting it failed), and the next
// attempt runs it again.
func (p *Preparer) rollback(ctx context.Context, rec *checkpoint.Claim) error {
	unlockGPUs := p.lockGPUs(rec)
	defer unlockGPUs()
	u := undoer{gpus: p.gpus, cdi: p.cdi, others: lockedIndex{p}, step: p.step, vfio: p.opts.VFIO}
	if p.opts.MPS != nil {
		u.mps = p.opts.MPS
	}
	if err := u.undo(ctx, rec); err != nil {
		// Part of the claim may be undone already: it must not be
		// served as prepared (its daemons started again, its result
		// returned) while the next attempt finishes the rollback.
		p.markUnfinished(rec.UID)
		return err
	}
	if err := p.forget(rec.UID); err != nil {
		// Nothing of the claim is left on the node: it must not hold its
		// devices while its removal waits for the disk.
		p.markUndone(rec.UID)
		return fmt.Errorf("forget claim: %w", err)
	}
	p.step(StepForgotten)
	return nil
}

// lockedIndex asks the Preparer's checkpoint, under its lock.
type lockedIndex struct{ p *Preparer }

func (l lockedIndex) Owner(uid string, d checkpoint.Device) string {
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	return l.p.cp.Owner(uid, d)
}

func (l lockedIndex) SharesThrough(mpsDir string) []string {
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	return l.p.cp.SharesThrough(mpsDir)
}
