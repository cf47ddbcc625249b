package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/draplugin"
	"github.com/gpu-dra/gpu-dra-driver/pkg/ownership"
)

// The handover tests run two plugin processes (runners) in one test, on
// one ownership directory, each with a fake Driver that records on a fake
// node which process touches it. The node fails the test if two touch it
// at once.

// fakeNode stands for the node's checkpoint and hardware.
type fakeNode struct {
	t      *testing.T
	mu     sync.Mutex
	owner  string
	terms  map[string]int
	served map[types.UID]string
}

func newFakeNode(t *testing.T) *fakeNode {
	return &fakeNode{t: t, terms: map[string]int{}, served: map[types.UID]string{}}
}

func (n *fakeNode) begin(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.owner != "" {
		n.t.Errorf("%s owns the node while %s still does", name, n.owner)
	}
	n.owner = name
	n.terms[name]++
}

func (n *fakeNode) end(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.owner != name {
		n.t.Errorf("%s stops owning the node, but %q owns it", name, n.owner)
	}
	n.owner = ""
}

// touch is a call that touches the node on behalf of name.
func (n *fakeNode) touch(name string, uid types.UID) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.owner != name {
		return fmt.Errorf("%s touched the node owned by %q", name, n.owner)
	}
	n.served[uid] = name
	return nil
}

func (n *fakeNode) termsOf(name string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.terms[name]
}

// fakeOwned is a started fake Driver.
type fakeOwned struct {
	name string
	node *fakeNode
	// hold, when set, holds every prepare until it is closed; entered
	// tells that one is held.
	hold, entered chan struct{}
	done          chan struct{}
	ctx           context.Context
}

func (o *fakeOwned) PrepareResourceClaims(_ context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	if o.hold != nil {
		o.entered <- struct{}{}
		<-o.hold
	}
	out := map[types.UID]kubeletplugin.PrepareResult{}
	for _, c := range claims {
		out[c.UID] = kubeletplugin.PrepareResult{Err: o.node.touch(o.name, c.UID)}
	}
	return out, nil
}

func (o *fakeOwned) UnprepareResourceClaims(_ context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	out := map[types.UID]error{}
	for _, c := range claims {
		out[c.UID] = o.node.touch(o.name, c.UID)
	}
	return out, nil
}

func (o *fakeOwned) HandleError(context.Context, error, string) {}

func (o *fakeOwned) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	select {
	case reports <- kubeletplugin.DeviceHealthReport{Devices: []kubeletplugin.DeviceHealth{{PoolName: o.name}}}:
	case <-ctx.Done():
		return nil
	}
	<-ctx.Done()
	return nil
}

func (o *fakeOwned) Done() <-chan struct{} { return o.done }

// Wait returns what a Driver's Wait returns: the cause that stopped it,
// nil for a plain cancellation.
func (o *fakeOwned) Wait() error {
	<-o.done
	if cause := context.Cause(o.ctx); !errors.Is(cause, context.Canceled) {
		return cause
	}
	return nil
}

// proc is one plugin process of a test.
type proc struct {
	name   string
	runner *runner
	cancel context.CancelFunc
	// done is closed when run has returned err.
	done chan struct{}
	err  error

	mu    sync.Mutex
	ready bool
	// readyChanged is closed and replaced at each change of ready.
	readyChanged chan struct{}
	// startErr fails the next start; hold holds the prepares of the
	// next term.
	startErr      error
	hold, entered chan struct{}
	// startHangs makes every start hang until the test ends.
	startHangs bool
}

func startProc(t *testing.T, dir, name string, node *fakeNode, setup func(*proc)) *proc {
	t.Helper()
	p := &proc{name: name, done: make(chan struct{}), readyChanged: make(chan struct{})}
	if setup != nil {
		setup(p)
	}
	var startTimeout time.Duration // no bound but for a hanging start
	if p.startHangs {
		startTimeout = 100 * time.Millisecond
	}
	p.runner = &runner{
		startTimeout: startTimeout,
		lock:         ownership.New(dir, time.Millisecond),
		rolling:      true,
		ready: func(r bool) {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.ready = r
			close(p.readyChanged)
			p.readyChanged = make(chan struct{})
		},
		startHelper: func(context.Context, kubeletplugin.DRAPlugin) (draplugin.Helper, error) { return nopHelper{}, nil },
		start: func(ctx context.Context) (owned, error) {
			p.mu.Lock()
			err, hold, entered, hangs := p.startErr, p.hold, p.entered, p.startHangs
			p.mu.Unlock()
			if err != nil {
				return nil, err
			}
			if hangs {
				<-t.Context().Done() // as a call into a hung GPU, deaf to ctx
				return nil, errors.New("the test ended")
			}
			node.begin(name)
			o := &fakeOwned{name: name, node: node, hold: hold, entered: entered, done: make(chan struct{}), ctx: ctx}
			go func() {
				<-ctx.Done()
				node.end(name)
				close(o.done)
			}()
			return o, nil
		},
	}
	_, tctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(klog.NewContext(t.Context(), klog.FromContext(tctx).WithName(name)))
	p.cancel = cancel
	go func() {
		p.err = p.runner.run(ctx)
		close(p.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.done
	})
	return p
}

// wait waits until run has returned, and returns its error.
func (p *proc) wait() error {
	<-p.done
	return p.err
}

// waitReady waits until the process's readiness is want.
func (p *proc) waitReady(t *testing.T, want bool) {
	t.Helper()
	for {
		p.mu.Lock()
		ready, changed := p.ready, p.readyChanged
		p.mu.Unlock()
		if ready == want {
			return
		}
		select {
		case <-changed:
		case <-p.done:
			t.Fatalf("%s stopped before it was ready=%v: %v", p.name, want, p.err)
		case <-t.Context().Done():
			t.Fatalf("%s never ready=%v", p.name, want)
		}
	}
}

func (p *proc) isReady() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ready
}

// prepare sends one claim to the process, as the kubelet would, and
// returns who served it.
func (p *proc) prepare(ctx context.Context, node *fakeNode, uid types.UID) (string, error) {
	claim := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{UID: uid, Name: string(uid), Namespace: "ns"}}
	res, err := p.runner.gate.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{claim})
	if err != nil {
		return "", err
	}
	if res[uid].Err != nil {
		return "", res[uid].Err
	}
	node.mu.Lock()
	defer node.mu.Unlock()
	return node.served[uid], nil
}

func mustServe(t *testing.T, p *proc, node *fakeNode, uid types.UID, want string) {
	t.Helper()
	got, err := p.prepare(t.Context(), node, uid)
	if err != nil {
		t.Fatalf("prepare %s through %s: %v", uid, p.name, err)
	}
	if got != want {
		t.Fatalf("prepare %s through %s was served by %s, want %s", uid, p.name, got, want)
	}
}

// TestRollHandsTheNodeOver: the new process registers while the old one
// serves; a call sent to it meanwhile waits and is served once it owns
// the node; the old one is then not Ready and stands by.
func TestRollHandsTheNodeOver(t *testing.T) {
	dir, node := t.TempDir(), newFakeNode(t)
	old := startProc(t, dir, "old", node, nil)
	old.waitReady(t, true)
	mustServe(t, old, node, "c1", "old")

	newP := startProc(t, dir, "new", node, nil)
	mustServe(t, newP, node, "c2", "new")
	newP.waitReady(t, true)
	old.waitReady(t, false)
	mustServe(t, newP, node, "c3", "new")
	if n := node.termsOf("old"); n != 1 {
		t.Errorf("old owned the node %d times, want 1 (the standby must not take it back)", n)
	}
	// The old one goes (the DaemonSet deletes it) without touching the node.
	old.cancel()
	if err := old.wait(); err != nil {
		t.Errorf("the old process: %v", err)
	}
	mustServe(t, newP, node, "c4", "new")
}

// TestHandoverWaitsForCallsInFlight: the successor owns the node only
// after the call the old process is serving has finished.
func TestHandoverWaitsForCallsInFlight(t *testing.T) {
	dir, node := t.TempDir(), newFakeNode(t)
	hold, entered := make(chan struct{}), make(chan struct{}, 1)
	old := startProc(t, dir, "old", node, func(p *proc) { p.hold, p.entered = hold, entered })
	old.waitReady(t, true)
	served := make(chan error, 1)
	go func() {
		who, err := old.prepare(t.Context(), node, "slow")
		if err == nil && who != "old" {
			err = fmt.Errorf("served by %s", who)
		}
		served <- err
	}()
	<-entered

	newP := startProc(t, dir, "new", node, nil)
	old.waitReady(t, false) // it saw the successor and stopped taking calls
	select {
	case <-newP.readyChanged:
		t.Fatal("the successor became Ready while a call was in flight in the old process")
	case <-time.After(100 * time.Millisecond):
	}
	close(hold)
	if err := <-served; err != nil {
		t.Fatalf("the call in flight: %v", err)
	}
	newP.waitReady(t, true)
	mustServe(t, newP, node, "after", "new")
}

// TestBadSuccessorLeavesTheOldOneServing: a new version that fails to
// start, or dies once it owns the node, gives the node back; the old
// process takes it back, is Ready again and serves.
func TestBadSuccessorLeavesTheOldOneServing(t *testing.T) {
	for _, tc := range []struct {
		name string
		bad  func(t *testing.T, dir string, node *fakeNode) *proc
	}{
		{"fails to start", func(t *testing.T, dir string, node *fakeNode) *proc {
			return startProc(t, dir, "new", node, func(p *proc) { p.startErr = errors.New("load checkpoint: unreadable") })
		}},
		{"hangs once it owns", func(t *testing.T, dir string, node *fakeNode) *proc {
			return startProc(t, dir, "new", node, func(p *proc) { p.startHangs = true })
		}},
		{"dies once it owns", func(t *testing.T, dir string, node *fakeNode) *proc {
			p := startProc(t, dir, "new", node, nil)
			p.waitReady(t, true)
			p.cancel() // as the kernel releases a killed process's locks
			return p
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, node := t.TempDir(), newFakeNode(t)
			old := startProc(t, dir, "old", node, nil)
			old.waitReady(t, true)
			bad := tc.bad(t, dir, node)
			_ = bad.wait()
			old.waitReady(t, true)
			mustServe(t, old, node, "after", "old")
		})
	}
}

// TestCallWaitsForOwnershipUntilItsContextEnds: a process that does not
// own the node holds a call, and fails it only when its context ends; the
// owner is not disturbed.
func TestCallWaitsForOwnershipUntilItsContextEnds(t *testing.T) {
	dir, node := t.TempDir(), newFakeNode(t)
	owner := startProc(t, dir, "owner", node, nil)
	owner.waitReady(t, true)
	// A process that has not announced itself yet: its gate has no owner.
	var g gate
	g.init(func(err error) { t.Errorf("fatal: %v", err) })
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := g.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{{ObjectMeta: metav1.ObjectMeta{UID: "x"}}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a call without an owner: %v, want the context's deadline", err)
	}
	if !owner.isReady() {
		t.Error("the owner is no longer Ready")
	}
	mustServe(t, owner, node, "c", "owner")
}

// TestHealthStreamFollowsTheOwner: the kubelet's health stream, opened on
// the process before it owns the node, reports from its Driver once it
// does.
func TestHealthStreamFollowsTheOwner(t *testing.T) {
	dir, node := t.TempDir(), newFakeNode(t)
	old := startProc(t, dir, "old", node, nil)
	old.waitReady(t, true)
	newP := startProc(t, dir, "new", node, nil)
	reports := make(chan kubeletplugin.DeviceHealthReport)
	go func() { _ = newP.runner.gate.WatchHealthStatus(t.Context(), reports) }()
	select {
	case r := <-reports:
		if r.Devices[0].PoolName != "new" {
			t.Fatalf("health report from %s, want new", r.Devices[0].PoolName)
		}
	case <-t.Context().Done():
		t.Fatal("no health report")
	}
}

// TestSuccessorReconcilesAgainOnceThePredecessorExits: when the old pod
// is gone (its container took its MPS daemons along), the new owner
// starts its Driver once more, keeping the node, and calls sent meanwhile
// wait for it rather than fail.
func TestSuccessorReconcilesAgainOnceThePredecessorExits(t *testing.T) {
	dir, node := t.TempDir(), newFakeNode(t)
	old := startProc(t, dir, "old", node, nil)
	old.waitReady(t, true)
	newP := startProc(t, dir, "new", node, nil)
	newP.waitReady(t, true)
	if n := node.termsOf("new"); n != 1 {
		t.Fatalf("the new process started its Driver %d times while the old one stood by, want 1", n)
	}
	old.cancel()
	if err := old.wait(); err != nil {
		t.Fatalf("the old process: %v", err)
	}
	for node.termsOf("new") < 2 {
		mustServe(t, newP, node, types.UID(fmt.Sprint("c", node.termsOf("new"))), "new")
		select {
		case <-t.Context().Done():
			t.Fatal("the new process never started its Driver again")
		case <-time.After(10 * time.Millisecond):
		}
	}
	mustServe(t, newP, node, "after", "new")
	if !newP.isReady() {
		t.Error("the new process is not Ready after starting its Driver again")
	}
}
