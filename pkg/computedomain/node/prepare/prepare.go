// Package prepare prepares and unprepares the ComputeDomain driver's
// claims on a node, as the kubelet asks:
//
//   - a channel claim (a workload's) gets its domain's IMEX channel on the
//     node: the domain must exist in the claim's namespace, and its daemon
//     pod on this node must be Ready (waited for, bounded; the kubelet
//     retries); the channel's device node is made if missing and a CDI spec
//     gives it to the containers with the domain's environment;
//   - a daemon claim (a domain daemon's, only in the driver's namespace)
//     gets the domain's IMEX directory (imexd.cfg, nodes.cfg kept by
//     package nodescfg) and the driver's nvidia-imex tools mounted.
//
// Crash safety. Every claim is recorded in the checkpoint, durably, before
// any side effect (PrepareStarted, with its channel), and marked
// PrepareCompleted only after them; each side effect is idempotent. So a
// crash between any two steps leaves a record the kubelet's retry
// finishes, an unprepare undoes, or the next start rolls back (Recover).
// Unprepare removes the side effects first and the record last; a claim
// without record was never prepared, or is already undone.
//
// Host channel nodes the plugin makes are recorded before they are made,
// and removed once no recorded claim holds their channel; nodes it found
// (the driver's channel0) are left alone. Containers get their nodes from
// the CDI spec's numbers, not from the host's.
package prepare

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/cdispec"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/channels"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/devnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// DefaultReadinessWait bounds the wait for a domain's daemon.
const DefaultReadinessWait = 30 * time.Second

// IMEX tools mounted into a daemon's container, relative to the driver
// root, and where the container gets them.
var imexTools = []string{"usr/bin/nvidia-imex", "usr/bin/nvidia-imex-ctl"}

// Domains finds ComputeDomains by UID (nil, nil: none).
type Domains interface {
	Get(uid string) (*v1beta1.ComputeDomain, error)
}

// Readiness waits, at most timeout, for a domain's daemon pod on the node
// to be Ready.
type Readiness interface {
	Wait(ctx context.Context, domainUID string, timeout time.Duration) error
}

// DevNodes finds, makes and removes the channels' host device nodes.
type DevNodes interface {
	Missing(channels []int) ([]int, error)
	Ensure(channels []int) ([]devnode.Node, error)
	Remove(channel int) error
}

// CDI writes and removes claims' CDI specs.
type CDI interface {
	Write(claimUID string, devices []cdispec.Device) (map[string][]string, error)
	Delete(claimUID string) error
	ClaimUIDs() ([]string, error)
	Record(claimUID string, v any) error
}

// DaemonDirs keeps the domains' IMEX directories.
type DaemonDirs interface {
	Ensure(domainUID string) (string, error)
	Remove(domainUID string) error
	List() ([]string, error)
}

// Store saves the checkpoint durably.
type Store interface {
	Save(cp *checkpoint.Checkpoint) error
}

// Step names a point of a preparation, for fault-injection tests.
type Step string

// Steps after which Options.AfterStep is called.
const (
	StepRecorded  Step = "recorded"  // PrepareStarted saved
	StepDevNodes  Step = "devnodes"  // channel nodes made
	StepDaemonDir Step = "daemondir" // IMEX directory made
	StepCDI       Step = "cdi"       // CDI spec written
	StepCompleted Step = "completed" // PrepareCompleted saved
	StepUndone    Step = "undone"    // unprepare's side effects removed
)

// Options configure a Preparer.
type Options struct {
	// NodeName is the node, the name of the driver's pool.
	NodeName string
	// DriverNamespace is the only namespace whose claims may be daemon
	// claims.
	DriverNamespace string
	// DriverRoot is the host path of the NVIDIA driver (CDI mounts name
	// host paths); DriverRootMount where this process sees it ("" means
	// DriverRoot).
	DriverRoot, DriverRootMount string
	// ReadinessWait bounds the wait for a domain's daemon
	// (DefaultReadinessWait when zero).
	ReadinessWait time.Duration
	// CliqueID returns the node's clique ID as published; "" means the
	// node has no NVLink fabric.
	CliqueID func() string
	// OnDaemonPrepared is called with the domain UID after a daemon
	// claim was prepared (nodes.cfg is due).
	OnDaemonPrepared func(domainUID string)
	// AfterStep, when set, is called after each step.
	AfterStep func(Step)
}

// Deps are the Preparer's collaborators.
type Deps struct {
	Domains   Domains
	Readiness Readiness
	DevNodes  DevNodes
	CDI       CDI
	Dirs      DaemonDirs
	Store     Store
}

// Preparer prepares and unprepares claims. Safe for concurrent use;
// calls for one claim UID are serialised.
type Preparer struct {
	opts Options
	deps Deps

	// mu guards cp, which is what was last saved.
	mu sync.Mutex
	cp *checkpoint.Checkpoint

	claimLocks keyedMutex
	// nodesMu orders the making and removing of host channel nodes.
	nodesMu sync.Mutex
}

// New returns a Preparer that starts from cp (see Recover).
func New(opts Options, deps Deps, cp *checkpoint.Checkpoint) *Preparer {
	if opts.ReadinessWait <= 0 {
		opts.ReadinessWait = DefaultReadinessWait
	}
	if opts.DriverRootMount == "" {
		opts.DriverRootMount = opts.DriverRoot
	}
	if opts.CliqueID == nil {
		opts.CliqueID = func() string { return "" }
	}
	if cp == nil {
		cp = checkpoint.New()
	}
	return &Preparer{opts: opts, deps: deps, cp: cp}
}

func (p *Preparer) step(s Step) {
	if p.opts.AfterStep != nil {
		p.opts.AfterStep(s)
	}
}

// Snapshot returns a copy of the checkpoint as last saved.
func (p *Preparer) Snapshot() *checkpoint.Checkpoint {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cp.Clone()
}

// update applies change to a copy of the checkpoint and saves it; only
// a saved checkpoint becomes the Preparer's.
func (p *Preparer) update(change func(cp *checkpoint.Checkpoint) error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	next := p.cp.Clone()
	if err := change(next); err != nil {
		return err
	}
	if err := p.deps.Store.Save(next); err != nil {
		return err
	}
	p.cp = next
	return nil
}

// Prepare prepares a claim and returns its devices for the kubelet.
func (p *Preparer) Prepare(ctx context.Context, claim *resourceapi.ResourceClaim) ([]kubeletplugin.Device, error) {
	unlock := p.claimLocks.lock(string(claim.UID))
	defer unlock()
	logger := klog.FromContext(ctx).WithValues("claim", klog.KObj(claim), "claimUID", claim.UID)
	req, err := parseClaim(claim, p.opts.NodeName)
	if err != nil {
		return nil, err
	}
	what := "claim " + claim.Namespace + "/" + claim.Name
	prev := p.Snapshot().Claims[string(claim.UID)]
	if prev != nil {
		if prev.Kind != req.kind || prev.Domain.UID != req.domainUID() {
			return nil, fmt.Errorf("%s: already prepared as a %s claim of ComputeDomain %s; unprepare it first", what, prev.Kind, prev.Domain.UID)
		}
		if prev.State == checkpoint.PrepareCompleted {
			// A repeated call (the kubelet restarted): make sure what
			// the claim needs is still there, without checking or
			// waiting again: the domain may be going away meanwhile.
			logger.V(2).Info("Claim already prepared; checking its files")
			return p.finish(ctx, prev)
		}
	}
	clique := p.opts.CliqueID()
	if clique == "" {
		return nil, fmt.Errorf("%s: node %s has no NVLink fabric clique (it publishes no ComputeDomain devices)", what, p.opts.NodeName)
	}
	if req.kind == checkpoint.KindDaemon && claim.Namespace != p.opts.DriverNamespace {
		return nil, fmt.Errorf("%s: ComputeDomain daemon claims are served only in the driver's namespace %s, not in %s", what, p.opts.DriverNamespace, claim.Namespace)
	}
	domain, err := p.deps.Domains.Get(req.domainUID())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if domain == nil {
		return nil, fmt.Errorf("%s: ComputeDomain with UID %s not found (not created yet, or deleted)", what, req.domainUID())
	}
	if req.kind == checkpoint.KindChannel && domain.Namespace != claim.Namespace {
		return nil, fmt.Errorf("%s: ComputeDomain %s/%s (UID %s) is in namespace %s, not in the claim's namespace %s",
			what, domain.Namespace, domain.Name, domain.UID, domain.Namespace, claim.Namespace)
	}
	// The mode is the domain's, not the claim's: a claim written by hand
	// must not take every channel of a node for a Single domain.
	if req.kind == checkpoint.KindChannel && req.channel.AllocationMode != domain.AllocationMode() {
		return nil, fmt.Errorf("%s: parameters.allocationMode %s differs from ComputeDomain %s/%s's spec.channel.allocationMode %s",
			what, req.channel.AllocationMode, domain.Namespace, domain.Name, domain.AllocationMode())
	}
	rec := &checkpoint.Claim{
		UID: string(claim.UID), Namespace: claim.Namespace, Name: claim.Name, State: checkpoint.PrepareStarted,
		Kind: req.kind, Devices: req.devices, CliqueID: clique,
		Domain: checkpoint.Domain{UID: string(domain.UID), Namespace: domain.Namespace, Name: domain.Name},
	}
	if prev != nil {
		// Recorded, unfinished: the same channel, which no other domain
		// could take since it was recorded.
		rec.Channel, rec.CliqueID = prev.Channel, prev.CliqueID
	}
	if req.kind == checkpoint.KindChannel {
		rec.All = req.channel.AllocationMode == v1beta1.AllocationModeAll
		// Refuse at once what the channel rules refuse, before waiting.
		if _, err := p.assign(rec); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		if err := p.deps.Readiness.Wait(ctx, rec.Domain.UID, p.opts.ReadinessWait); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	err = p.update(func(cp *checkpoint.Checkpoint) error {
		if rec.Kind == checkpoint.KindChannel && prev == nil {
			ch, err := channels.Assign(others(cp, rec.UID), channels.Request{DomainUID: rec.Domain.UID, All: rec.All})
			if err != nil {
				return err
			}
			rec.Channel = ch
		}
		cp.Claims[rec.UID] = rec.Clone()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: record preparation: %w", what, err)
	}
	p.step(StepRecorded)
	logger.V(2).Info("Preparing", "kind", rec.Kind, "domain", rec.Domain.UID, "channel", rec.Channel, "all", rec.All)
	return p.finish(ctx, rec)
}

// assign checks the channel rules for rec against the saved claims.
func (p *Preparer) assign(rec *checkpoint.Claim) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return channels.Assign(others(p.cp, rec.UID), channels.Request{DomainUID: rec.Domain.UID, All: rec.All})
}

// others are the claims of cp but uid.
func others(cp *checkpoint.Checkpoint, uid string) []*checkpoint.Claim {
	out := make([]*checkpoint.Claim, 0, len(cp.Claims))
	for _, c := range cp.Sorted() {
		if c.UID != uid {
			out = append(out, c)
		}
	}
	return out
}

// finish makes a recorded claim's side effects (idempotently) and marks
// it completed.
func (p *Preparer) finish(ctx context.Context, rec *checkpoint.Claim) ([]kubeletplugin.Device, error) {
	what := "claim " + rec.Namespace + "/" + rec.Name
	rec = rec.Clone()
	ids, err := p.sideEffects(rec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	for i := range rec.Devices {
		rec.Devices[i].CDIDeviceIDs = ids[rec.Devices[i].Name]
	}
	if rec.State != checkpoint.PrepareCompleted {
		rec.State = checkpoint.PrepareCompleted
		if err := p.update(func(cp *checkpoint.Checkpoint) error {
			cp.Claims[rec.UID] = rec.Clone()
			return nil
		}); err != nil {
			return nil, fmt.Errorf("%s: record completed preparation: %w", what, err)
		}
		p.step(StepCompleted)
		klog.FromContext(ctx).Info("Prepared claim", "claim", klog.KRef(rec.Namespace, rec.Name), "kind", rec.Kind,
			"domain", klog.KRef(rec.Domain.Namespace, rec.Domain.Name), "channel", rec.Channel, "all", rec.All)
	}
	if rec.Kind == checkpoint.KindDaemon && p.opts.OnDaemonPrepared != nil {
		p.opts.OnDaemonPrepared(rec.Domain.UID)
	}
	return kubeletDevices(rec), nil
}

// sideEffects makes what a recorded claim needs on the node and writes its
// CDI spec; it returns the CDI device IDs by device name.
func (p *Preparer) sideEffects(rec *checkpoint.Claim) (map[string][]string, error) {
	env := map[string]string{
		names.EnvComputeDomainUUID:      rec.Domain.UID,
		names.EnvComputeDomainName:      rec.Domain.Name,
		names.EnvComputeDomainNamespace: rec.Domain.Namespace,
		names.EnvCliqueID:               rec.CliqueID,
	}
	var nodes []devnode.Node
	var mounts []cdispec.Mount
	switch rec.Kind {
	case checkpoint.KindChannel:
		var err error
		if nodes, err = p.ensureNodes(channels.Of(rec)); err != nil {
			return nil, err
		}
		p.step(StepDevNodes)
	case checkpoint.KindDaemon:
		dir, err := p.deps.Dirs.Ensure(rec.Domain.UID)
		if err != nil {
			return nil, err
		}
		p.step(StepDaemonDir)
		mounts = append(mounts, cdispec.Mount{HostPath: dir, ContainerPath: names.IMEXDaemonDir})
		for _, tool := range imexTools {
			if _, err := os.Stat(filepath.Join(p.opts.DriverRootMount, tool)); err != nil {
				return nil, fmt.Errorf("IMEX tool of the driver (--driver-root): %w", err)
			}
			mounts = append(mounts, cdispec.Mount{HostPath: filepath.Join(p.opts.DriverRoot, tool), ContainerPath: "/" + tool, ReadOnly: true})
		}
	default:
		return nil, fmt.Errorf("unknown claim kind %q in the checkpoint", rec.Kind)
	}
	record := rec.Clone()
	record.State = checkpoint.PrepareCompleted
	var devices []cdispec.Device
	for _, name := range deviceNames(rec) {
		devices = append(devices, cdispec.Device{Name: name, Nodes: nodes, Env: env, Mounts: mounts, Record: record})
		record = nil // once per spec
	}
	ids, err := p.deps.CDI.Write(rec.UID, devices)
	if err != nil {
		return nil, err
	}
	p.step(StepCDI)
	return ids, nil
}

// deviceNames are the distinct device names of a claim, sorted.
func deviceNames(rec *checkpoint.Claim) []string {
	var out []string
	for _, d := range rec.Devices {
		if !slices.Contains(out, d.Name) {
			out = append(out, d.Name)
		}
	}
	slices.Sort(out)
	return out
}

func kubeletDevices(rec *checkpoint.Claim) []kubeletplugin.Device {
	out := make([]kubeletplugin.Device, 0, len(rec.Devices))
	for _, d := range rec.Devices {
		kd := kubeletplugin.Device{Requests: slices.Clone(d.Requests), PoolName: d.Pool, DeviceName: d.Name, CDIDeviceIDs: slices.Clone(d.CDIDeviceIDs)}
		if d.ShareID != "" {
			id := types.UID(d.ShareID)
			kd.ShareID = &id
		}
		out = append(out, kd)
	}
	return out
}

// Unprepare undoes a claim's preparation. A claim the plugin does not know
// was never prepared here, or is undone already: that is success.
func (p *Preparer) Unprepare(ctx context.Context, ref kubeletplugin.NamespacedObject) error {
	uid := string(ref.UID)
	unlock := p.claimLocks.lock(uid)
	defer unlock()
	rec := p.Snapshot().Claims[uid]
	if rec == nil {
		klog.FromContext(ctx).V(2).Info("Unprepare of an unknown claim: nothing to do", "claim", ref.NamespacedName, "claimUID", uid)
		return nil
	}
	what := "claim " + rec.Namespace + "/" + rec.Name
	if err := p.undo(rec); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	p.step(StepUndone)
	if err := p.update(func(cp *checkpoint.Checkpoint) error {
		delete(cp.Claims, uid)
		return nil
	}); err != nil {
		return fmt.Errorf("%s: forget unprepared claim: %w", what, err)
	}
	if err := p.freeNodes(); err != nil {
		// The claim is undone; the nodes go with the next unprepare or start.
		klog.FromContext(ctx).Error(err, "Removing host IMEX channel nodes no claim holds failed; retrying later", "claim", klog.KRef(rec.Namespace, rec.Name))
	}
	klog.FromContext(ctx).Info("Unprepared claim", "claim", klog.KRef(rec.Namespace, rec.Name), "kind", rec.Kind, "domain", rec.Domain.UID)
	return nil
}

// undo removes a claim's side effects: its CDI spec and, for the last
// daemon claim of its domain on the node, the domain's IMEX directory.
func (p *Preparer) undo(rec *checkpoint.Claim) error {
	if err := p.deps.CDI.Delete(rec.UID); err != nil {
		return err
	}
	if rec.Kind != checkpoint.KindDaemon || p.daemonClaims(rec.Domain.UID, rec.UID) > 0 {
		return nil
	}
	return p.deps.Dirs.Remove(rec.Domain.UID)
}

// daemonClaims counts the recorded daemon claims of a domain but one.
func (p *Preparer) daemonClaims(domainUID, except string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.cp.Claims {
		if c.Kind == checkpoint.KindDaemon && c.Domain.UID == domainUID && c.UID != except {
			n++
		}
	}
	return n
}

// PreparedDaemons returns the domains with a completed daemon claim, with
// the clique each was prepared in.
func (p *Preparer) PreparedDaemons() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]string{}
	for _, c := range p.cp.Claims {
		if c.Kind == checkpoint.KindDaemon && c.State == checkpoint.PrepareCompleted {
			out[c.Domain.UID] = c.CliqueID
		}
	}
	return out
}

// ensureNodes makes the host nodes of chs, recording those it is about to
// make first.
func (p *Preparer) ensureNodes(chs []int) ([]devnode.Node, error) {
	p.nodesMu.Lock()
	defer p.nodesMu.Unlock()
	missing, err := p.deps.DevNodes.Missing(chs)
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		err := p.update(func(cp *checkpoint.Checkpoint) error {
			for _, ch := range missing {
				if !slices.Contains(cp.Nodes, ch) {
					cp.Nodes = append(cp.Nodes, ch)
				}
			}
			slices.Sort(cp.Nodes)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("record IMEX channel nodes to make: %w", err)
		}
	}
	return p.deps.DevNodes.Ensure(chs)
}

// freeNodes removes the host nodes the plugin made whose channel no
// recorded claim holds.
func (p *Preparer) freeNodes() error {
	p.nodesMu.Lock()
	defer p.nodesMu.Unlock()
	cp := p.Snapshot()
	held := map[int]bool{}
	for _, c := range cp.Claims {
		if c.Kind == checkpoint.KindChannel {
			for _, ch := range channels.Of(c) {
				held[ch] = true
			}
		}
	}
	var removed []int
	var errs []error
	for _, ch := range cp.Nodes {
		if held[ch] {
			continue
		}
		if err := p.deps.DevNodes.Remove(ch); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, ch)
	}
	if len(removed) > 0 {
		if err := p.update(func(cp *checkpoint.Checkpoint) error {
			cp.Nodes = slices.DeleteFunc(cp.Nodes, func(ch int) bool { return slices.Contains(removed, ch) })
			return nil
		}); err != nil {
			errs = append(errs, fmt.Errorf("record removed IMEX channel nodes: %w", err))
		}
	}
	return errors.Join(errs...)
}
