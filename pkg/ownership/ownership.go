// Package ownership decides which of the plugin processes on a node owns
// the node: its checkpoint, its CDI specs, its MIG devices and its
// ResourceSlices. During a rolling update two plugin pods run on the node
// at once; exactly one of them may touch any of these at a time, and the
// newer one takes over from the older without a moment in which neither
// can serve.
//
// Ownership is an exclusive flock(2) on the owner file in the plugin's data
// directory. The kernel drops a process's locks when it exits, however it
// exits (a SIGKILL and an OOM kill included), so a dead owner never keeps
// the node, and no stale lock needs cleaning up. flock locks belong to the
// open file, not to the process, so two owners in one process exclude
// each other too (the tests rely on it).
//
// Handover: a process that wants the node (Acquire) first holds the
// successor file exclusively, then waits for the owner file. The owner
// watches the successor file with a shared probe, which fails only while a
// successor holds it: then Wanted is closed, the owner finishes what it is
// doing, stops and releases, and the successor takes the owner file and
// lets go of the successor file. The old owner hands over (Handover): it
// holds the standby file shared, then releases the owner file, and waits
// (Standby.Wait), taking the node back only when no successor is waiting,
// so that it never wins the node back from the successor it yielded to; it
// gets it back when that successor dies (a bad new version) and no other
// waits. Its probe of the successor file is shared too, so it never makes
// the owner believe that a successor waits. The new owner sees its
// predecessor go (PredecessorGone) when nobody holds the standby file any
// more: what the predecessor's container took with it can then be redone.
//
// Locks are polled (non-blocking attempts every poll interval), so that
// every wait ends with its context.
package ownership

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Files in the plugin's data directory. Their content is irrelevant; only
// their locks matter.
const (
	// OwnerFile is held exclusively by the owner.
	OwnerFile = "owner.lock"
	// SuccessorFile is held exclusively by a process waiting to own.
	SuccessorFile = "successor.lock"
	// StandbyFile is held shared by every process that handed over and
	// lives on.
	StandbyFile = "standby.lock"
)

// fileMode is the mode of the lock files: only root (the plugin) opens
// them. The data directory already keeps others out.
const fileMode fs.FileMode = 0o600

// DefaultPoll is how often a waiting process retries a lock, and how often
// the owner looks for a successor: it bounds what a handover adds to the
// time a kubelet call waits.
const DefaultPoll = 20 * time.Millisecond

// Lock is the node's ownership lock, in one directory.
type Lock struct {
	dir  string
	poll time.Duration
}

// New returns the lock in dir (which must exist), polled every poll; zero
// is DefaultPoll.
func New(dir string, poll time.Duration) *Lock {
	if poll <= 0 {
		poll = DefaultPoll
	}
	return &Lock{dir: dir, poll: poll}
}

// Term is one process's ownership of the node, from Acquire or Standby
// until Release.
type Term struct {
	lock   *Lock
	owner  *os.File
	wanted chan struct{}
	// gone is closed once a predecessor that stood by at the start of
	// the term is gone; nil if there was none.
	gone chan struct{}
	stop chan struct{}
	done chan struct{}
	once sync.Once
	err  error
}

// Acquire makes this process the node's owner: it announces itself as the
// successor, which asks the current owner to hand over, and waits until
// the owner has released (or there was none). It waits behind another
// successor that announced itself first. It returns when ctx ends, with
// its cause.
func (l *Lock) Acquire(ctx context.Context) (*Term, error) {
	succ, err := l.open(SuccessorFile)
	if err != nil {
		return nil, err
	}
	defer succ.Close()
	if err := l.wait(ctx, "announce this plugin as the successor", func() (bool, error) {
		return tryLock(succ, unix.LOCK_EX)
	}); err != nil {
		return nil, err
	}
	owner, err := l.takeOwner(ctx, func() (bool, error) { return true, nil })
	if err != nil {
		return nil, err
	}
	// Let go of the successor file before watching it, or the new owner
	// would see itself as its own successor.
	if err := succ.Close(); err != nil {
		owner.Close()
		return nil, fmt.Errorf("let go of %s: %w", SuccessorFile, err)
	}
	return l.newTerm(owner)
}

// Standby is a process that handed the node over and lives on.
type Standby struct {
	lock *Lock
	file *os.File
}

// Handover ends the term for a successor: the process stands by (the new
// owner sees it until it exits or owns again), then the node is released.
func (t *Term) Handover() (*Standby, error) {
	f, err := t.lock.open(StandbyFile)
	if err != nil {
		return nil, errors.Join(err, t.Release())
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_SH)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, errors.Join(fmt.Errorf("flock %s: %w", StandbyFile, err), t.Release())
	}
	if err := t.Release(); err != nil {
		f.Close()
		return nil, err
	}
	return &Standby{lock: t.lock, file: f}, nil
}

// Wait waits until the node has no owner and no successor waits, then
// makes this process the owner again: it gets the node back only when
// its successor is gone without a successor of its own. It stops standing
// by either way.
func (s *Standby) Wait(ctx context.Context) (*Term, error) {
	closed := false
	defer func() {
		if !closed {
			s.file.Close()
		}
	}()
	l := s.lock
	succ, err := l.open(SuccessorFile)
	if err != nil {
		return nil, err
	}
	defer succ.Close()
	owner, err := l.takeOwner(ctx, func() (bool, error) {
		// Holding the shared lock while taking the owner file keeps a
		// successor from announcing itself in between; it retries.
		free, err := tryLock(succ, unix.LOCK_SH)
		if err != nil || !free {
			return false, err
		}
		return true, nil
	}, succ)
	if err != nil {
		return nil, err
	}
	// No longer standing by, before the term looks for a standby.
	closed = true
	if err := s.file.Close(); err != nil {
		owner.Close()
		return nil, fmt.Errorf("let go of %s: %w", StandbyFile, err)
	}
	return l.newTerm(owner)
}

// takeOwner waits until ready allows it and the owner file is free, and
// returns the owner file, locked; unlock are files whose locks ready took
// and that are released after each attempt.
func (l *Lock) takeOwner(ctx context.Context, ready func() (bool, error), unlock ...*os.File) (*os.File, error) {
	owner, err := l.open(OwnerFile)
	if err != nil {
		return nil, err
	}
	err = l.wait(ctx, "own the node", func() (bool, error) {
		ok, err := ready()
		if err != nil || !ok {
			return false, err
		}
		defer func() {
			for _, f := range unlock {
				_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
			}
		}()
		return tryLock(owner, unix.LOCK_EX)
	})
	if err != nil {
		owner.Close()
		return nil, err
	}
	return owner, nil
}

// newTerm starts the term of the locked owner file.
func (l *Lock) newTerm(owner *os.File) (*Term, error) {
	t := &Term{lock: l, owner: owner, wanted: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	succ, err := l.open(SuccessorFile)
	if err != nil {
		owner.Close()
		return nil, err
	}
	standby, err := l.open(StandbyFile)
	if err != nil {
		succ.Close()
		owner.Close()
		return nil, err
	}
	free, err := noStandby(standby)
	if err != nil {
		succ.Close()
		standby.Close()
		owner.Close()
		return nil, err
	}
	if !free {
		t.gone = make(chan struct{})
	}
	go l.watch(t, succ, standby)
	return t, nil
}

// noStandby probes the standby file: true when no process stands by. A
// standby taking its lock in the instant of the probe waits that instant.
func noStandby(standby *os.File) (bool, error) {
	free, err := tryLock(standby, unix.LOCK_EX)
	if free {
		_ = unix.Flock(int(standby.Fd()), unix.LOCK_UN)
	}
	return free, err
}

// watch closes t.wanted once a successor waits, and t.gone once the
// predecessor standing by at the start of the term is gone.
func (l *Lock) watch(t *Term, succ, standby *os.File) {
	defer close(t.done)
	defer succ.Close()
	defer standby.Close()
	ticker := time.NewTicker(l.poll)
	defer ticker.Stop()
	wanted, gone := false, t.gone == nil
	for {
		if !wanted {
			free, err := tryLock(succ, unix.LOCK_SH)
			switch {
			case err != nil:
				t.err = err
				return
			case !free:
				close(t.wanted)
				wanted = true
			default:
				_ = unix.Flock(int(succ.Fd()), unix.LOCK_UN)
			}
		}
		if !gone {
			free, err := noStandby(standby)
			if err != nil {
				t.err = err
				return
			}
			if free {
				close(t.gone)
				gone = true
			}
		}
		if wanted && gone {
			return
		}
		select {
		case <-t.stop:
			return
		case <-ticker.C:
		}
	}
}

// PredecessorGone is closed once the process that handed the node over to
// this one has exited (or owns the node again, after this one released
// it). It is nil, never closed, when no process stood by as the term
// began.
func (t *Term) PredecessorGone() <-chan struct{} {
	return t.gone
}

// Wanted is closed when a successor waits for the node: the owner should
// finish what it is doing, stop touching the node, and Handover.
func (t *Term) Wanted() <-chan struct{} {
	return t.wanted
}

// Release ends the term: the node is free for the successor. It returns
// the error that stopped watching for a successor, if one did (then
// Wanted was never closed).
func (t *Term) Release() error {
	var err error
	t.once.Do(func() {
		close(t.stop)
		<-t.done
		if cerr := t.owner.Close(); cerr != nil {
			err = fmt.Errorf("release %s: %w", OwnerFile, cerr)
		}
		err = errors.Join(t.err, err)
	})
	return err
}

// wait calls try every poll interval until it succeeds, fails, or ctx
// ends.
func (l *Lock) wait(ctx context.Context, what string, try func() (bool, error)) error {
	ticker := time.NewTicker(l.poll)
	defer ticker.Stop()
	for {
		ok, err := try()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, context.Cause(ctx))
		case <-ticker.C:
		}
	}
}

// open opens (creating) a lock file in the directory, refusing a symlink.
func (l *Lock) open(name string) (*os.File, error) {
	path := filepath.Join(l.dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, fileMode)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	return f, nil
}

// tryLock takes how (LOCK_EX or LOCK_SH) on f without blocking: false
// when another open file holds a conflicting lock.
func tryLock(f *os.File, how int) (bool, error) {
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, unix.EWOULDBLOCK):
			return false, nil
		case errors.Is(err, unix.EINTR):
			continue
		default:
			return false, fmt.Errorf("flock %s: %w", f.Name(), err)
		}
	}
}
