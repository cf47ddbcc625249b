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
// lets go of the successor file. The old owner then waits in Standby,
// which takes the node back only when no successor is waiting, so that it
// never wins the node back from the successor it yielded to; it gets it
// back when that successor dies (a bad new version) and no other waits.
// Standby's probe of the successor file is shared too, so it never makes
// the owner believe that a successor waits.
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
	owner  *os.File
	wanted chan struct{}
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
	err    error
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
	return l.newTerm(owner), nil
}

// Standby waits until the node has no owner and no successor waits, then
// makes this process the owner. A process that handed over waits here: it
// gets the node back only when its successor is gone without a successor
// of its own.
func (l *Lock) Standby(ctx context.Context) (*Term, error) {
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
	return l.newTerm(owner), nil
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
func (l *Lock) newTerm(owner *os.File) *Term {
	t := &Term{owner: owner, wanted: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go l.watch(t)
	return t
}

// watch closes t.wanted once a successor waits.
func (l *Lock) watch(t *Term) {
	defer close(t.done)
	succ, err := l.open(SuccessorFile)
	if err != nil {
		t.err = err
		return
	}
	defer succ.Close()
	ticker := time.NewTicker(l.poll)
	defer ticker.Stop()
	for {
		free, err := tryLock(succ, unix.LOCK_SH)
		switch {
		case err != nil:
			t.err = err
			return
		case !free:
			close(t.wanted)
			return
		}
		_ = unix.Flock(int(succ.Fd()), unix.LOCK_UN)
		select {
		case <-t.stop:
			return
		case <-ticker.C:
		}
	}
}

// Wanted is closed when a successor waits for the node: the owner should
// finish what it is doing, stop touching the node, and Release.
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
