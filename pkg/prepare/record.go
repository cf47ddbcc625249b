package prepare

import (
	"slices"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
)

// The Preparer's memory never says more than the checkpoint on disk may:
//
//   - record puts a claim in memory, then commits it; if the commit fails,
//     a claim recorded as complete is held in memory as PrepareStarted, so
//     the kubelet's retry rolls it back rather than returning a result the
//     disk may not hold.
//   - drop takes a claim out of memory without a write, for a first record
//     that failed: nothing was done for the claim yet.
//   - forget commits a checkpoint without the claim while memory still
//     holds it (and its devices), and takes it out of memory only once
//     that is durable; if the commit fails the claim stays, and the
//     kubelet's retry of the unprepare tries again. A claim whose
//     rollback finished but could not be forgotten is Undone: it holds no
//     device, and the next rollback or start forgets it. A prepared claim
//     whose rollback failed midway is held as PrepareStarted
//     (markUnfinished): it still holds its devices, but is not served.

// record stores a private copy of rec and commits it.
func (p *Preparer) record(rec *checkpoint.Claim) error {
	c := rec.Clone()
	p.mu.Lock()
	p.cp.Claims[c.UID] = c
	p.mu.Unlock()
	err := p.commit()
	if err != nil && c.State == checkpoint.PrepareCompleted {
		started := c.Clone()
		started.State = checkpoint.PrepareStarted
		p.mu.Lock()
		p.cp.Claims[c.UID] = started
		p.mu.Unlock()
	}
	return err
}

// recordStart records a claim before its prepare touches the hardware.
// A claim about to create a MIG device is committed twice, so that both
// the checkpoint and its previous generation name it, with the placement
// it is about to create, before the device exists: a checkpoint found
// corrupt at the next start still leaves a generation that says whose the
// device is, and the rebuild rolls it back. Saved once, a corrupt first
// write would leave a device that no generation names, which cannot be
// told from an administrator's. (Group commit keeps this sound: the
// second commit waits for a save that starts after the first completed,
// and each save keeps the file it replaces.)
func (p *Preparer) recordStart(rec *checkpoint.Claim) error {
	if err := p.record(rec); err != nil {
		return err
	}
	if !slices.ContainsFunc(rec.Devices, createsMIG) {
		return nil
	}
	return p.commit()
}

// createsMIG reports whether preparing d creates a MIG device.
func createsMIG(d checkpoint.Device) bool { return !d.AdminAccess && d.MIG != nil && d.MIG.UUID == "" }

// drop takes the claim out of memory without writing.
func (p *Preparer) drop(uid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.cp.Claims, uid)
	p.wakeWaiters()
}

// forget removes the claim from the checkpoint on disk, then from memory.
func (p *Preparer) forget(uid string) error {
	p.mu.Lock()
	p.leaving[uid] = true
	p.mu.Unlock()
	err := p.commit()
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.leaving, uid)
	if err != nil {
		return err
	}
	delete(p.cp.Claims, uid)
	p.wakeWaiters()
	return nil
}

// markUnfinished holds a prepared claim whose rollback failed midway as
// PrepareStarted in memory (less than the disk says, as memory may): what
// is left of it is rolled back by the next attempt, never served.
func (p *Preparer) markUnfinished(uid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.cp.Claims[uid]
	if !ok || c.State != checkpoint.PrepareCompleted {
		return
	}
	unfinished := c.Clone()
	unfinished.State = checkpoint.PrepareStarted
	p.cp.Claims[uid] = unfinished
}

// markUndone records in memory that the claim holds nothing any more; the
// next checkpoint written says so too.
func (p *Preparer) markUndone(uid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.cp.Claims[uid]
	if !ok {
		return
	}
	undone := c.Clone()
	undone.State = checkpoint.Undone
	p.cp.Claims[uid] = undone
	p.wakeWaiters()
}

// wakeWaiters wakes the prepares waiting for a held device. The caller
// holds mu.
func (p *Preparer) wakeWaiters() {
	close(p.released)
	p.released = make(chan struct{})
}

// Claim returns a copy of the recorded claim, or nil, without copying the
// rest of the checkpoint.
func (p *Preparer) Claim(uid string) *checkpoint.Claim {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.cp.Claims[uid]
	if !ok {
		return nil
	}
	return c.Clone()
}

// durable returns the checkpoint to write: memory without the claims being
// forgotten. The caller holds mu.
func (p *Preparer) durable() *checkpoint.Checkpoint {
	out := p.cp.Clone()
	for uid := range p.leaving {
		delete(out.Claims, uid)
	}
	return out
}
