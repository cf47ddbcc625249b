package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/draplugin"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/ownership"
)

// This file runs the plugin as one of two processes on a node during a
// rolling update (docs/helm.md, "How a roll works"). The process serves
// the kubelet for as long as it lives, through a gate; the Driver, which
// owns the checkpoint, the CDI specs, the MIG devices and the slices, runs
// only while the process owns the node (pkg/ownership). The order, in a
// new pod whose predecessor still serves:
//
//  1. wait while a plugin of a release without handover serves the node
//     (its registration socket answers): it knows no lock;
//  2. register with the kubelet under the pod's own socket names, and wait
//     until the kubelet has accepted the registration. From then on the
//     kubelet sends new calls here (it prefers the plugin registered
//     last), where they wait at the gate;
//  3. announce itself as the successor; the predecessor lets the calls it
//     is serving finish, stops its Driver (publishing stops, the slices
//     stay) and releases the node;
//  4. own the node: New and Start the Driver (checkpoint loaded,
//     reconciled, slices published: unchanged slices are not written),
//     open the gate, and only then report Ready.
//
// The predecessor, not Ready after it released, waits in standby with its
// registration kept: if the successor dies (a bad version), the kubelet
// falls back to it and it takes the node back. The DaemonSet deletes it
// once the successor is Ready; the successor then runs its start-up
// reconcile once more, for what the predecessor's container took along.

// errHandedOver is the cause that stops a Driver whose node a successor
// took over; errRestarting, one started again at once (serveTerm).
var (
	errHandedOver = errors.New("handed the node over to a successor")
	errRestarting = errors.New("starting again now that the predecessor has exited")
)

// HandoverConfig is how the process runs next to its predecessor and
// successor.
type HandoverConfig struct {
	// Lock is the node's ownership lock, in the plugin's data directory.
	Lock *ownership.Lock
	// PodUID, when set, enables the helper's rolling updates: the sockets
	// are named after the pod, and the gRPC servers start before the
	// process owns the node. Empty: the process registers once it owns.
	PodUID types.UID
	// Ready is told whether the process owns the node and serves: true
	// once its Driver has started (published), false when it stops.
	Ready func(bool)
	// LegacyPoll is how often step 1 looks again; zero is a second.
	LegacyPoll time.Duration
	// StartTimeout bounds the Driver's start once the process owns the
	// node (zero: DefaultStartTimeout). A start that takes longer (NVML
	// or a disk that hangs) ends the process with an error, which gives
	// the node back to a predecessor standing by; the kubelet restarts
	// the container.
	StartTimeout time.Duration
}

// DefaultStartTimeout is the HandoverConfig.StartTimeout when unset: far
// beyond any healthy start (one second or two on an 8-GPU node).
const DefaultStartTimeout = 3 * time.Minute

// owned is what runs while the process owns the node: a started Driver.
type owned interface {
	kubeletplugin.DRAPlugin
	// Done is closed when it has stopped; Wait then returns why.
	Done() <-chan struct{}
	Wait() error
}

// Done is closed when the Driver started by Start has shut down.
func (d *Driver) Done() <-chan struct{} {
	return d.done
}

// RunHandingOver runs the plugin until ctx ends or a fatal error happens,
// handing the node over to a successor that asks for it, and taking it
// back if that successor dies (see the order above).
func RunHandingOver(ctx context.Context, cfg Config, hc HandoverConfig) error {
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	startHelper := cfg.StartHelper
	if startHelper == nil {
		startHelper = draplugin.StartKubeletHelper
	}
	opts := helperOptions(cfg)
	if hc.PodUID != "" {
		opts = append(opts, kubeletplugin.RollingUpdate(hc.PodUID))
		sweepStaleSockets(ctx, cfg, hc.PodUID)
	}
	// The gate serves the kubelet; the Driver must not start a helper.
	cfg.StartHelper = func(context.Context, kubeletplugin.DRAPlugin, ...kubeletplugin.Option) (draplugin.Helper, error) {
		return nopHelper{}, nil
	}
	r := &runner{
		lock: hc.Lock, ready: hc.Ready, rolling: hc.PodUID != "",
		start: func(ctx context.Context) (owned, error) {
			d, err := New(ctx, cfg)
			if err != nil {
				return nil, err
			}
			if err := d.Start(ctx); err != nil {
				return nil, err
			}
			return d, nil
		},
		startHelper: func(ctx context.Context, plugin kubeletplugin.DRAPlugin) (draplugin.Helper, error) {
			return startHelper(ctx, plugin, opts...)
		},
		legacySocket: filepath.Join(cfg.RegistrarDir, names.DriverName+"-reg.sock"),
		legacyPoll:   hc.LegacyPoll,
		startTimeout: hc.StartTimeout,
	}
	if r.startTimeout <= 0 {
		r.startTimeout = DefaultStartTimeout
	}
	return r.run(ctx)
}

// nopHelper is the Driver's helper under RunHandingOver: the gate serves.
type nopHelper struct{}

// Stop implements draplugin.Helper.
func (nopHelper) Stop() {}

// runner is one plugin process of RunHandingOver.
type runner struct {
	lock  *ownership.Lock
	ready func(bool)
	// rolling: the helper starts before the node is owned (step 2).
	rolling bool
	// start starts the Driver once the node is owned; it returns once the
	// Driver serves, and stops it when ctx ends.
	start       func(ctx context.Context) (owned, error)
	startHelper func(ctx context.Context, plugin kubeletplugin.DRAPlugin) (draplugin.Helper, error)
	// legacySocket is the registration socket of a plugin without
	// handover (step 1); "" skips the step.
	legacySocket string
	legacyPoll   time.Duration
	// startTimeout bounds each start of the Driver; zero: no bound.
	startTimeout time.Duration
	gate         gate
}

func (r *runner) setReady(ready bool) {
	if r.ready != nil {
		r.ready(ready)
	}
}

func (r *runner) run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	r.gate.init(func(err error) { cancel(err) })
	var helper draplugin.Helper
	startHelper := func() error {
		h, err := r.startHelper(ctx, &r.gate)
		if err != nil {
			return fmt.Errorf("start kubelet plugin: %w", err)
		}
		helper = h
		return nil
	}
	defer func() {
		if helper != nil {
			helper.Stop()
		}
	}()
	if r.rolling {
		if err := r.waitLegacyGone(ctx); err != nil {
			return nil // ctx ended
		}
		if err := startHelper(); err != nil {
			return err
		}
		if err := waitRegistered(ctx, helper); err != nil {
			return nil
		}
	}
	logger.Info("Waiting to own the node (a predecessor hands over when it sees this plugin waiting)")
	term, err := r.lock.Acquire(ctx)
	if err != nil {
		return ownErr(ctx, err)
	}
	for {
		logger.Info("Owning the node")
		if !r.rolling && helper == nil {
			if err := startHelper(); err != nil {
				return errors.Join(err, term.Release())
			}
		}
		handedOver, err := r.serveTerm(ctx, term)
		if !handedOver {
			return errors.Join(err, term.Release())
		}
		sb, err := term.Handover()
		if err != nil {
			return err
		}
		logger.Info("Handed the node over to a successor; standing by in case it fails")
		if term, err = sb.Wait(ctx); err != nil {
			return ownErr(ctx, err)
		}
		logger.Info("The successor is gone; taking the node back")
	}
}

// ownErr is what run returns when waiting for the node failed: nothing
// when ctx ended.
func ownErr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil {
		if errors.Is(cause, context.Canceled) {
			return nil
		}
		return cause
	}
	return err
}

// serveTerm runs the Driver while the process owns the node, until a
// successor asks for the node (handedOver), ctx ends, or the Driver
// fails; the Driver is stopped then, and the caller releases the node or
// hands it over. Once the predecessor the node was taken over from has
// exited, the Driver is started once more, keeping the node: its start-up
// reconcile brings back what the predecessor's container took along (the
// MPS control daemons it started); calls wait at the gate meanwhile.
func (r *runner) serveTerm(ctx context.Context, term *ownership.Term) (handedOver bool, err error) {
	logger := klog.FromContext(ctx)
	predecessorGone := term.PredecessorGone()
	for {
		tctx, stop := context.WithCancelCause(ctx)
		o, err := r.startWithin(tctx)
		if err != nil {
			stop(nil)
			return false, err
		}
		r.gate.attach(o)
		r.setReady(true)
		again := false
		select {
		case <-ctx.Done():
		case <-term.Wanted():
			handedOver = true
		case <-o.Done():
		case <-predecessorGone:
			again, predecessorGone = true, nil
		}
		if !again {
			r.setReady(false)
		}
		// Calls being served finish; new ones wait for the next Driver.
		r.gate.detach()
		cause := context.Canceled
		switch {
		case handedOver:
			cause = errHandedOver
		case again:
			cause = errRestarting
		}
		stop(cause)
		<-o.Done()
		if err = o.Wait(); errors.Is(err, errHandedOver) || errors.Is(err, errRestarting) {
			err = nil
		}
		if again && err == nil && ctx.Err() == nil {
			logger.Info("The predecessor has exited; reconciling the node again for what its container took along")
			continue
		}
		if err == nil {
			err = ownErrOr(ctx, nil)
		}
		return handedOver && err == nil, err
	}
}

// startWithin starts the Driver, giving up after startTimeout. A start
// given up on is left to end with its context (the caller cancels it);
// one stuck in a system call is ended by the process's exit, which
// follows: the node then goes back to a predecessor that stands by,
// instead of staying with a process that never serves.
func (r *runner) startWithin(ctx context.Context) (owned, error) {
	if r.startTimeout <= 0 {
		return r.start(ctx)
	}
	type started struct {
		o   owned
		err error
	}
	done := make(chan started, 1)
	go func() {
		o, err := r.start(ctx)
		done <- started{o, err}
	}()
	timer := time.NewTimer(r.startTimeout)
	defer timer.Stop()
	select {
	case s := <-done:
		return s.o, s.err
	case <-timer.C:
		return nil, fmt.Errorf("the plugin did not start within %s of owning the node (NVML or the disk hung?): giving the node up", r.startTimeout)
	}
}

// ownErrOr is err, or the cause that ended ctx when it is not a plain
// cancellation.
func ownErrOr(ctx context.Context, err error) error {
	if err != nil {
		return err
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return nil
}

// waitLegacyGone waits while a plugin that knows no ownership lock (a
// release before handover) answers on the fixed registration socket. The
// pod stays not Ready meanwhile; docs/helm.md says how to upgrade from
// such a release.
func (r *runner) waitLegacyGone(ctx context.Context) error {
	if r.legacySocket == "" {
		return nil
	}
	poll := r.legacyPoll
	if poll <= 0 {
		poll = time.Second
	}
	logged := false
	for {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, poll)
		conn, err := d.DialContext(dctx, "unix", r.legacySocket)
		cancel()
		if err != nil {
			return ctx.Err()
		}
		conn.Close()
		if !logged {
			klog.FromContext(ctx).Info("A plugin without handover serves the node; waiting until it is gone", "socket", r.legacySocket)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
}

// registrationStatus is what the real helper tells of the kubelet's answer
// to its registration.
type registrationStatus interface {
	RegistrationStatus() *registerapi.RegistrationStatus
}

// waitRegistered waits until the kubelet has accepted the helper's
// registration, so that a predecessor hands over only once the kubelet
// sends new calls here. A helper that cannot tell (a test's) counts as
// registered.
func waitRegistered(ctx context.Context, h draplugin.Helper) error {
	rs, ok := h.(registrationStatus)
	if !ok {
		return nil
	}
	logger := klog.FromContext(ctx)
	ticker := time.NewTicker(20 * time.Millisecond)
	defer ticker.Stop()
	var last string
	for {
		st := rs.RegistrationStatus()
		if st != nil && st.PluginRegistered {
			logger.Info("Registered with the kubelet")
			return nil
		}
		if st != nil && st.Error != last {
			last = st.Error
			logger.Info("The kubelet refused the registration; waiting for it to retry", "error", st.Error)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}

// gate is the plugin the helper serves: it passes each call to the Driver
// of the current term, and holds calls while the process does not own the
// node, until it does or the call's context ends. detach waits for the
// calls being served, so that a successor never owns the node while this
// process still touches it.
type gate struct {
	fatal func(error)

	mu sync.Mutex
	// cur is the current term's Driver; nil while the node is not owned.
	cur owned
	// curCtx ends when cur is detached (health streams follow it).
	curCtx    context.Context
	curCancel context.CancelFunc
	// changed is closed and replaced whenever cur changes.
	changed chan struct{}
	// inFlight counts calls passed to cur; idle is closed when it drops
	// to zero while detach waits.
	inFlight int
	idle     chan struct{}
}

var _ kubeletplugin.DRAPlugin = (*gate)(nil)

func (g *gate) init(fatal func(error)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fatal = fatal
}

// notifyLocked wakes the calls waiting for cur to change.
func (g *gate) notifyLocked() {
	if g.changed != nil {
		close(g.changed)
	}
	g.changed = make(chan struct{})
}

func (g *gate) attach(o owned) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cur = o
	g.curCtx, g.curCancel = context.WithCancel(context.Background())
	g.notifyLocked()
}

// detach stops passing calls on and waits for those passed on to finish.
func (g *gate) detach() {
	g.mu.Lock()
	if g.cur != nil {
		g.cur = nil
		g.curCancel()
		g.notifyLocked()
	}
	var idle chan struct{}
	if g.inFlight > 0 {
		if g.idle == nil {
			g.idle = make(chan struct{})
		}
		idle = g.idle
	}
	g.mu.Unlock()
	if idle != nil {
		<-idle
	}
}

// enter waits for a current Driver and counts a call to it; leave ends it.
func (g *gate) enter(ctx context.Context) (owned, context.Context, error) {
	for {
		g.mu.Lock()
		if g.cur != nil {
			g.inFlight++
			o, octx := g.cur, g.curCtx
			g.mu.Unlock()
			return o, octx, nil
		}
		if g.changed == nil {
			g.changed = make(chan struct{})
		}
		changed := g.changed
		g.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("wait for this plugin to own the node: %w", context.Cause(ctx))
		case <-changed:
		}
	}
}

func (g *gate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inFlight--
	if g.inFlight == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// PrepareResourceClaims implements kubeletplugin.DRAPlugin.
func (g *gate) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	o, _, err := g.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer g.leave()
	return o.PrepareResourceClaims(ctx, claims)
}

// UnprepareResourceClaims implements kubeletplugin.DRAPlugin.
func (g *gate) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	o, _, err := g.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer g.leave()
	return o.UnprepareResourceClaims(ctx, claims)
}

// HandleError implements kubeletplugin.DRAPlugin: the current Driver
// handles it; without one, a fatal error stops the process.
func (g *gate) HandleError(ctx context.Context, err error, msg string) {
	g.mu.Lock()
	o, fatal := g.cur, g.fatal
	g.mu.Unlock()
	if o != nil {
		o.HandleError(ctx, err, msg)
		return
	}
	runtime.HandleErrorWithContext(ctx, err, msg)
	if !errors.Is(err, kubeletplugin.ErrRecoverable) {
		fatal(fmt.Errorf("fatal error: %s: %w", msg, err))
	}
}

// WatchHealthStatus implements kubeletplugin.DRAPlugin: the stream follows
// the owner, from one term to the next.
func (g *gate) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	for {
		o, octx, err := g.enter(ctx)
		if err != nil {
			return nil // the kubelet's stream ended
		}
		// A stream is not a call that detach waits for: it ends with
		// the term.
		g.leave()
		sctx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(octx, cancel)
		err = o.WatchHealthStatus(sctx, reports)
		stop()
		cancel()
		if ctx.Err() != nil || octx.Err() == nil {
			return err
		}
	}
}
