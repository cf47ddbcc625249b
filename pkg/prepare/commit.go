package prepare

import "sync"

// committer writes the checkpoint for many concurrent changes at once (group
// commit): a change waits for the first save that starts after it was made,
// so N claims prepared together cost a few fsyncs, not N.
type committer struct {
	store Store
	// saveMu is held while a save runs.
	saveMu sync.Mutex
	// changed and saved count changes; guarded by the Preparer's mu.
	changed, saved uint64
}

func (c *committer) init(store Store) { c.store = store }

// commit makes every change recorded so far durable. It does not stop for
// a cancelled context: a rollback must reach the disk even when the
// kubelet's call timed out.
func (p *Preparer) commit() error {
	p.mu.Lock()
	p.committer.changed++
	mine := p.committer.changed
	p.mu.Unlock()

	p.committer.saveMu.Lock()
	defer p.committer.saveMu.Unlock()
	p.mu.Lock()
	if p.committer.saved >= mine {
		p.mu.Unlock()
		return nil // a save that started after our change included it
	}
	snapshot := p.durable()
	upTo := p.committer.changed
	p.mu.Unlock()

	if err := p.committer.store.Save(snapshot); err != nil {
		return err
	}
	p.mu.Lock()
	p.committer.saved = upTo
	p.mu.Unlock()
	return nil
}
