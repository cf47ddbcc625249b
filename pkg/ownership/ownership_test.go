package ownership

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The two plugin processes of a roll are two Locks on one directory: flock
// locks belong to the open file, so they exclude each other in one process
// as they would in two.

// testPoll makes the watcher and the waiters race as much as they can.
const testPoll = time.Millisecond

// blocked is how long a wait that must not succeed is given; a wait that
// wrongly succeeds does so at its first attempt.
const blocked = 100 * time.Millisecond

func acquire(t *testing.T, l *Lock) *Term {
	t.Helper()
	term, err := l.Acquire(t.Context())
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	return term
}

func release(t *testing.T, term *Term) {
	t.Helper()
	if err := term.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// notWanted fails if the term's Wanted is closed within blocked.
func notWanted(t *testing.T, term *Term, why string) {
	t.Helper()
	select {
	case <-term.Wanted():
		t.Fatalf("Wanted closed: %s", why)
	case <-time.After(blocked):
	}
}

// fails runs get with a context that ends after blocked and wants it to
// fail with that end: it could not own the node.
func fails(t *testing.T, what string, get func(context.Context) (*Term, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), blocked)
	defer cancel()
	term, err := get(ctx)
	if err == nil {
		term.Release()
		t.Fatalf("%s owned the node", what)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s: %v, want the context's deadline", what, err)
	}
}

func TestAloneOwnsAndIsNotAskedToHandOver(t *testing.T) {
	l := New(t.TempDir(), testPoll)
	term := acquire(t, l)
	notWanted(t, term, "the owner took itself for a successor")
	if term.PredecessorGone() != nil {
		t.Error("a predecessor seen where none stood by")
	}
	release(t, term)
	// Released, it can be taken again, by Acquire or from standby.
	term = acquire(t, l)
	sb, err := term.Handover()
	if err != nil {
		t.Fatalf("Handover: %v", err)
	}
	term, err = sb.Wait(t.Context())
	if err != nil {
		t.Fatalf("standby on a free node: %v", err)
	}
	if term.PredecessorGone() != nil {
		t.Error("the standby that owns again counts as its own predecessor")
	}
	release(t, term)
}

func handover(t *testing.T, term *Term) *Standby {
	t.Helper()
	sb, err := term.Handover()
	if err != nil {
		t.Fatalf("Handover: %v", err)
	}
	return sb
}

func TestHandoverToSuccessor(t *testing.T) {
	dir := t.TempDir()
	oldLock, newLock := New(dir, testPoll), New(dir, testPoll)
	old := acquire(t, oldLock)

	type result struct {
		term *Term
		err  error
	}
	got := make(chan result, 1)
	go func() {
		term, err := newLock.Acquire(t.Context())
		got <- result{term, err}
	}()
	select {
	case <-old.Wanted():
	case r := <-got:
		t.Fatalf("the successor owned the node while the old owner held it: %v", r.err)
	}
	select {
	case r := <-got:
		t.Fatalf("the successor owned the node before the old owner released: %v", r.err)
	case <-time.After(blocked):
	}
	sb := handover(t, old)
	r := <-got
	if r.err != nil {
		t.Fatalf("the successor's Acquire: %v", r.err)
	}
	successor := r.term
	notWanted(t, successor, "the new owner is asked to hand over with no successor")
	if successor.PredecessorGone() == nil {
		t.Fatal("the new owner does not see its predecessor standing by")
	}

	// The old one, in standby, neither takes the node back nor makes the
	// new owner believe that a successor waits.
	standbyDone := make(chan result, 1)
	go func() {
		term, err := sb.Wait(t.Context())
		standbyDone <- result{term, err}
	}()
	notWanted(t, successor, "the standby probe looked like a successor")
	select {
	case <-successor.PredecessorGone():
		t.Fatal("the predecessor counted as gone while it stands by")
	case <-time.After(blocked):
	}
	select {
	case r := <-standbyDone:
		t.Fatalf("the standby took the node from its owner: %v", r.err)
	default:
	}

	// The new version dies: the old one takes the node back.
	release(t, successor)
	r = <-standbyDone
	if r.err != nil {
		t.Fatalf("Standby after the successor died: %v", r.err)
	}
	notWanted(t, r.term, "the node taken back, nobody waits")
	release(t, r.term)
}

// TestStandbyYieldsToWaitingSuccessor: once an owner has released for a
// waiting successor, its standby never wins the node before it; repeated,
// because it is a race on every poll.
func TestStandbyYieldsToWaitingSuccessor(t *testing.T) {
	dir := t.TempDir()
	for i := range 20 {
		a, b := New(dir, testPoll), New(dir, testPoll)
		old := acquire(t, a)
		got := make(chan *Term, 1)
		errs := make(chan error, 1)
		go func() {
			term, err := b.Acquire(t.Context())
			if err != nil {
				errs <- err
				return
			}
			got <- term
		}()
		<-old.Wanted()
		sb := handover(t, old)
		// The standby races the successor for the released node and must
		// lose.
		fails(t, "the standby", sb.Wait)
		select {
		case err := <-errs:
			t.Fatalf("round %d: the successor: %v", i, err)
		case term := <-got:
			release(t, term)
		}
	}
}

func TestSuccessorThatGivesUpLeavesTheNodeToStandby(t *testing.T) {
	dir := t.TempDir()
	a, b := New(dir, testPoll), New(dir, testPoll)
	old := acquire(t, a)
	// A successor announces itself, but gives up (it failed, or was
	// deleted) before the owner released.
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-old.Wanted()
		cancel()
	}()
	if _, err := b.Acquire(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("the successor's Acquire: %v, want it canceled", err)
	}
	term, err := handover(t, old).Wait(t.Context())
	if err != nil {
		t.Fatalf("standby with no successor left: %v", err)
	}
	release(t, term)
}

// TestPredecessorGoneWhenItExits: the new owner learns when the process
// it took over from exits (its container took along what it ran).
func TestPredecessorGoneWhenItExits(t *testing.T) {
	dir := t.TempDir()
	a, b := New(dir, testPoll), New(dir, testPoll)
	old := acquire(t, a)
	got := make(chan *Term, 1)
	go func() {
		term, err := b.Acquire(t.Context())
		if err == nil {
			got <- term
		}
	}()
	<-old.Wanted()
	sb := handover(t, old)
	successor := <-got
	ctx, exit := context.WithCancel(t.Context())
	waited := make(chan error, 1)
	go func() {
		_, err := sb.Wait(ctx)
		waited <- err
	}()
	select {
	case <-successor.PredecessorGone():
		t.Fatal("the predecessor counted as gone while it stands by")
	case <-time.After(blocked):
	}
	exit() // the old pod is deleted
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("the standby: %v", err)
	}
	<-successor.PredecessorGone()
	notWanted(t, successor, "the predecessor's exit looked like a successor")
	release(t, successor)
}

func TestSecondSuccessorWaitsItsTurn(t *testing.T) {
	dir := t.TempDir()
	a, b, c := New(dir, testPoll), New(dir, testPoll), New(dir, testPoll)
	first := acquire(t, a)
	got := make(chan *Term, 1)
	go func() {
		term, err := b.Acquire(t.Context())
		if err == nil {
			got <- term
		}
	}()
	<-first.Wanted()
	// While b waits, c cannot even announce itself, let alone own.
	fails(t, "a second successor", c.Acquire)
	release(t, first)
	second := <-got
	notWanted(t, second, "the successor that gave up still counted")
	release(t, second)
}

func TestLockFileIsNotFollowed(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, OwnerFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := New(dir, testPoll).Acquire(t.Context()); err == nil {
		t.Fatal("Acquire locked through a symlink")
	}
}
