package prepare

import (
	"context"
	"fmt"
	"slices"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/checkpoint"
)

// Report says what Recover did.
type Report struct {
	// Adopted are claims rebuilt from their CDI specs (lost checkpoint).
	Adopted []string
	// RolledBack are claims whose preparation never completed.
	RolledBack []string
	// Restored are completed claims whose files were made again.
	Restored int
	// OrphanSpecs and OrphanDirs were removed: no claim of the
	// checkpoint has them.
	OrphanSpecs, OrphanDirs []string
	// Failed are completed claims whose files could not be made again;
	// they stay recorded, and the kubelet's next prepare retries.
	Failed map[string]error
}

// Recover brings the node in line with the checkpoint the Preparer was
// made with, before anything is served: call it once at start. The
// checkpoint is saved after step 2 and whenever step 3 records nodes.
//
//  1. With a lost checkpoint (lost true: it was untrusted and set aside),
//     every CDI spec of the driver names a claim that got at least that far:
//     it is adopted as prepared from the record in its spec.
//  2. Claims whose preparation did not complete are rolled back (CDI spec,
//     and the domain's IMEX directory unless another daemon claim of the
//     domain is recorded) and forgotten: the kubelet prepares them again.
//  3. Completed claims get their files made again where missing (the CDI
//     root and /dev are tmpfs that a reboot empties).
//  4. Host channel nodes the plugin made that no claim holds are removed;
//     CDI specs and IMEX directories that no recorded claim has are
//     removed too, except after a lost checkpoint, where nothing is
//     deleted that might still be in use.
func (p *Preparer) Recover(ctx context.Context, lost bool) (Report, error) {
	logger := klog.FromContext(ctx)
	rep := Report{Failed: map[string]error{}}
	cp := p.Snapshot()
	specs, err := p.deps.CDI.ClaimUIDs()
	if err != nil {
		return rep, err
	}
	// 1.
	if lost {
		for _, uid := range specs {
			if cp.Claims[uid] != nil {
				continue
			}
			var rec checkpoint.Claim
			if err := p.deps.CDI.Record(uid, &rec); err != nil || rec.UID != uid {
				logger.Error(err, "CDI spec of the driver without a usable record; leaving it", "claimUID", uid)
				continue
			}
			rec.State = checkpoint.PrepareCompleted
			cp.Claims[uid] = &rec
			rep.Adopted = append(rep.Adopted, uid)
		}
	}
	// 2.
	for _, c := range cp.Sorted() {
		if c.State == checkpoint.PrepareCompleted {
			continue
		}
		p.setCheckpoint(cp) // undo counts the daemon claims of cp
		if err := p.undo(c); err != nil {
			return rep, fmt.Errorf("roll back unfinished preparation of claim %s/%s: %w", c.Namespace, c.Name, err)
		}
		delete(cp.Claims, c.UID)
		rep.RolledBack = append(rep.RolledBack, c.UID)
	}
	p.setCheckpoint(cp)
	if err := p.deps.Store.Save(cp); err != nil {
		return rep, fmt.Errorf("save recovered checkpoint: %w", err)
	}
	// 3. (sideEffects may record channel nodes it makes.)
	for _, c := range cp.Sorted() {
		if _, err := p.sideEffects(c); err != nil {
			rep.Failed[c.UID] = err
			continue
		}
		rep.Restored++
	}
	cp = p.Snapshot()
	// 4.
	if err := p.freeNodes(); err != nil {
		logger.Error(err, "Removing host IMEX channel nodes no claim holds failed; retrying at the next unprepare")
	}
	if !lost {
		for _, uid := range specs {
			if cp.Claims[uid] == nil {
				if err := p.deps.CDI.Delete(uid); err != nil {
					return rep, err
				}
				rep.OrphanSpecs = append(rep.OrphanSpecs, uid)
			}
		}
		dirs, err := p.deps.Dirs.List()
		if err != nil {
			return rep, err
		}
		for _, uid := range dirs {
			if !slices.ContainsFunc(cp.Sorted(), func(c *checkpoint.Claim) bool {
				return c.Kind == checkpoint.KindDaemon && c.Domain.UID == uid
			}) {
				if err := p.deps.Dirs.Remove(uid); err != nil {
					return rep, err
				}
				rep.OrphanDirs = append(rep.OrphanDirs, uid)
			}
		}
	}
	return rep, nil
}

func (p *Preparer) setCheckpoint(cp *checkpoint.Checkpoint) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cp = cp.Clone()
}
