// Package prepare turns an allocated ResourceClaim into devices a container
// can use, and back. The whole flow of a claim is in this file, top to
// bottom (DESIGN.md §3):
//
//  1. A claim already prepared returns its recorded result (idempotent).
//  2. The claim is recorded as PrepareStarted with every device and every
//     MIG placement about to be created, before any side effect.
//  3. Per device, holding that GPU's lock: a whole GPU needs nothing but MIG
//     mode off; a MIG placement gets its GPU and compute instance created at
//     exactly the allocated placement; a pre-created MIG instance is used as
//     it is; a share of a shared GPU needs MIG mode off and the GPU's MPS
//     control daemon, which all its shares use, running. What was created is
//     recorded once the locks are released.
//  4. The claim's CDI spec is written and the claim recorded as
//     PrepareCompleted; the CDI device IDs go back to the kubelet.
//  5. On any failure what this attempt created is destroyed, the spec
//     removed, the claim forgotten, and the error names claim, device and
//     cause. If the rollback itself fails the claim stays recorded as
//     PrepareStarted so that the next attempt, or the next start, finishes it.
//
// Unprepare destroys what the claim created, stops the MPS daemon of a GPU
// whose last share it held, removes its spec and forgets it; every step is
// idempotent so a crash anywhere is repaired by a retry.
package prepare

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/api/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/cdi"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// GPUs is what prepare needs of the hardware.
type GPUs interface {
	CreateMIG(ctx context.Context, req gpu.MIGRequest) (gpu.MIGInstance, error)
	DestroyMIG(ctx context.Context, ref gpu.MIGRef) error
	SetMIGMode(ctx context.Context, uuid string, enabled bool) error
	// SetTimeSlice sets a whole GPU's compute time slice (gpu.DefaultTimeSlice
	// restores the default).
	SetTimeSlice(ctx context.Context, gpuUUID, interval string) error
}

// MPS runs MPS control daemons (*mps.Manager), each known by a key: a
// claim's UID for a claim's own daemon, sharedDaemon(GPU UUID) for the
// daemon that the shares of a shared GPU use.
type MPS interface {
	Dir(key string) string
	Start(ctx context.Context, key string, gpuUUIDs []string) error
	Stop(ctx context.Context, key string) error
	Running(key string) bool
	Claims() ([]string, error)
}

// sharedDaemonPrefix starts the keys of shared GPUs' daemons; claim UIDs
// never do.
const sharedDaemonPrefix = "shared-"

// sharedDaemon is the key of the MPS daemon of a shared GPU's shares.
func sharedDaemon(gpuUUID string) string { return sharedDaemonPrefix + gpuUUID }

// Devices resolves a published device name to what it stands for.
type Devices interface {
	Lookup(name string) (*devicemodel.Device, bool)
}

// CDI writes and removes claims' CDI specs.
type CDI interface {
	WriteClaimSpec(ctx context.Context, claimUID string, devices []cdi.Device) (map[string][]string, error)
	DeleteClaimSpec(claimUID string) error
}

// Store persists the checkpoint.
type Store interface {
	Save(cp *checkpoint.Checkpoint) error
}

// Step names a point in prepare or unprepare, for fault-injection tests.
type Step string

// Steps, in the order they happen.
const (
	StepStartedRecorded   Step = "prepare-started-recorded"
	StepMIGCreated        Step = "prepare-mig-created"
	StepMIGRecorded       Step = "prepare-mig-recorded"
	StepMPSStarted        Step = "prepare-mps-started"
	StepCDIWritten        Step = "prepare-cdi-written"
	StepCompletedRecorded Step = "prepare-completed-recorded"
	StepMIGDestroyed      Step = "unprepare-mig-destroyed"
	StepMPSStopped        Step = "unprepare-mps-stopped"
	StepCDIDeleted        Step = "unprepare-cdi-deleted"
	StepForgotten         Step = "unprepare-forgotten"
)

// AllSteps lists every Step in order.
var AllSteps = []Step{StepStartedRecorded, StepMIGCreated, StepMIGRecorded, StepMPSStarted, StepCDIWritten, StepCompletedRecorded, StepMIGDestroyed, StepMPSStopped, StepCDIDeleted, StepForgotten}

// Options configure a Preparer.
type Options struct {
	// PoolName is this node's pool; results of other pools are not ours.
	PoolName string
	// AfterStep, if set, is called after each step (tests crash the process
	// there).
	AfterStep func(Step)
	// MPS runs MPS control daemons; nil refuses claims that ask for MPS.
	MPS MPS
	// HeldWait is how long Prepare waits for a device that is still
	// prepared for another claim: zero means DefaultHeldWait, a negative
	// value not at all.
	HeldWait time.Duration
}

// DefaultHeldWait is how long a prepare waits for a device to be
// unprepared for the claim that held it. When a pod is deleted without a
// grace period, its claim is gone from the API server and the device is
// allocated again before the kubelet has unprepared it; waiting here for
// that unprepare hands the device over at once, where failing would cost
// the new pod the kubelet's retry backoff.
const DefaultHeldWait = 20 * time.Second

// heldError is a device still prepared for another claim.
type heldError struct{ device, owner string }

func (e *heldError) Error() string {
	return fmt.Sprintf("device %s: already prepared for claim %s", e.device, e.owner)
}

// Preparer prepares and unprepares claims. It is safe for concurrent use:
// claims on different GPUs proceed in parallel; claims on the same GPU take
// turns; checkpoint writes of concurrent claims are committed together.
type Preparer struct {
	gpus    GPUs
	devices Devices
	cdi     CDI
	store   Store
	opts    Options

	// mu guards cp, gpuLocks and claimLocks.
	mu         sync.Mutex
	cp         *checkpoint.Checkpoint
	gpuLocks   map[string]*sync.Mutex
	claimLocks map[string]*sync.Mutex
	committer  committer
	// released is closed (and replaced) whenever a claim is forgotten,
	// waking prepares that wait for a held device; guarded by mu.
	released chan struct{}
}

// New returns a Preparer that starts from cp (as reconciled at start-up).
func New(gpus GPUs, devices Devices, cdiWriter CDI, store Store, cp *checkpoint.Checkpoint, opts Options) *Preparer {
	p := &Preparer{
		gpus: gpus, devices: devices, cdi: cdiWriter, store: store, opts: opts,
		cp: cp, gpuLocks: map[string]*sync.Mutex{}, claimLocks: map[string]*sync.Mutex{},
		released: make(chan struct{}),
	}
	if p.opts.HeldWait == 0 {
		p.opts.HeldWait = DefaultHeldWait
	}
	p.opts.HeldWait = max(p.opts.HeldWait, 0)
	p.committer.init(store)
	return p
}

// Snapshot returns a copy of the current checkpoint.
func (p *Preparer) Snapshot() *checkpoint.Checkpoint {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cp.Clone()
}

func (p *Preparer) step(s Step) {
	if p.opts.AfterStep != nil {
		p.opts.AfterStep(s)
	}
}

// Prepare prepares one claim and returns the devices for the kubelet.
func (p *Preparer) Prepare(ctx context.Context, claim *resourceapi.ResourceClaim) ([]kubeletplugin.Device, error) {
	uid := string(claim.UID)
	logger := klog.FromContext(ctx).WithValues("claim", klog.KObj(claim), "claimUID", uid)
	ctx = klog.NewContext(ctx, logger)
	unlock := p.lockClaim(uid)
	defer unlock()

	// 1. Idempotent: a prepared claim returns what it returned before.
	if prev := p.claim(uid); prev != nil {
		if prev.State == checkpoint.PrepareCompleted {
			logger.V(2).Info("Claim already prepared")
			return kubeletDevices(prev), nil
		}
		logger.Info("Claim has an unfinished preparation; rolling it back first")
		if err := p.rollback(ctx, prev); err != nil {
			return nil, fmt.Errorf("prepare claim %s: finish earlier attempt: %w", claimName(claim), err)
		}
	}

	// 2. Plan, resolve each device's configuration, and record the plan
	// before touching the hardware. A claim that changes nothing there
	// (whole GPUs with default settings, pre-created MIG devices) is
	// recorded once, when complete: its only side effect before then, the
	// CDI spec, is an orphan that start-up reconciliation deletes if the
	// plugin dies first, and the kubelet's retry writes it again. That
	// saves a durable write on the most common claim.
	rec, err := p.planWhenFree(ctx, claim)
	if err != nil {
		return nil, fmt.Errorf("prepare claim %s: %w", claimName(claim), err)
	}
	mpsConfigs := map[int]*v1beta1.MpsConfig{}
	for i := range rec.Devices {
		d := &rec.Devices[i]
		settings, err := deviceConfig(claim, d)
		if err != nil {
			return nil, fmt.Errorf("prepare claim %s: device %s: %w", claimName(claim), d.Name, err)
		}
		d.Env, d.TimeSlice = settings.env, settings.timeSlice
		if d.AdminAccess && (settings.mps != nil || settings.timeSlice != "") {
			return nil, fmt.Errorf("prepare claim %s: device %s: parameters.sharing: a device allocated with admin access is given as it is, for monitoring; its sharing is its other claims' to set, so remove the sharing configuration for this request", claimName(claim), d.Name)
		}
		if d.Share != nil {
			if settings.mps != nil || settings.timeSlice != "" {
				return nil, fmt.Errorf("prepare claim %s: device %s: parameters.sharing: a share of a shared GPU is always shared through MPS with the memory and compute it was allocated; remove the sharing configuration for this request", claimName(claim), d.Name)
			}
			d.Env = mergeEnv(d.Env, shareEnv(*d.Share))
			continue
		}
		if settings.mps != nil {
			if p.opts.MPS == nil {
				return nil, fmt.Errorf("prepare claim %s: device %s: MPS sharing is not available on this node", claimName(claim), d.Name)
			}
			mpsConfigs[i] = settings.mps
			d.MPSDir = p.opts.MPS.Dir(uid)
		}
	}
	if slices.ContainsFunc(rec.Devices, touchesHardware) {
		if err := p.record(ctx, rec); err != nil {
			return nil, fmt.Errorf("prepare claim %s: record start: %w", claimName(claim), err)
		}
		p.step(StepStartedRecorded)
	}

	// fail rolls back and returns cause, named after the claim and the
	// device ("" when cause names it already).
	fail := func(device string, cause error) ([]kubeletplugin.Device, error) {
		err := fmt.Errorf("prepare claim %s: device %s: %w", claimName(claim), device, cause)
		if device == "" {
			err = fmt.Errorf("prepare claim %s: %w", claimName(claim), cause)
		}
		// The rollback must finish even if the kubelet gave up on the call.
		if rbErr := p.rollback(context.WithoutCancel(ctx), rec); rbErr != nil {
			logger.Error(rbErr, "Rollback failed; the claim stays recorded and is rolled back on the next attempt")
			return nil, fmt.Errorf("%w (rollback failed: %v)", err, rbErr)
		}
		return nil, err
	}

	// 3. Make each device real, holding the locks of its GPUs. What was
	// created is recorded after the locks are released, so other claims on
	// these GPUs do not wait for our fsync; a crash in between is repaired
	// by start-up reconciliation, which finds the instance at the planned
	// placement.
	unlockGPUs := p.lockGPUs(rec)
	created := false
	for i := range rec.Devices {
		d := &rec.Devices[i]
		made, err := p.prepareDevice(ctx, d)
		created = created || made
		if err != nil {
			unlockGPUs()
			if created {
				// Record what exists so the rollback destroys it.
				_ = p.record(ctx, rec)
			}
			return fail(d.Name, err)
		}
	}
	unlockGPUs()
	if created {
		if err := p.record(ctx, rec); err != nil {
			return fail("(all)", fmt.Errorf("record MIG devices: %w", err))
		}
		p.step(StepMIGRecorded)
	}

	// 4. The claim's MPS control daemon, now that every device has its
	// UUID.
	if len(mpsConfigs) > 0 {
		envs, err := mpsEnv(rec, mpsConfigs)
		if err != nil {
			return fail("", err)
		}
		for i, env := range envs {
			rec.Devices[i].Env = mergeEnv(rec.Devices[i].Env, env)
		}
		if err := p.opts.MPS.Start(ctx, uid, mpsUUIDs(rec)); err != nil {
			return fail("(all)", fmt.Errorf("start MPS control daemon: %w", err))
		}
		p.step(StepMPSStarted)
	}

	// 5. CDI spec, then done.
	specDevices, err := cdiDevices(rec)
	if err != nil {
		return fail("(all)", err)
	}
	ids, err := p.cdi.WriteClaimSpec(ctx, uid, specDevices)
	if err != nil {
		return fail("(all)", fmt.Errorf("write CDI spec: %w", err))
	}
	p.step(StepCDIWritten)
	for i := range rec.Devices {
		rec.Devices[i].CDIDeviceIDs = ids[cdiName(rec.Devices[i])]
	}
	rec.State = checkpoint.PrepareCompleted
	if err := p.record(ctx, rec); err != nil {
		return fail("(all)", fmt.Errorf("record completion: %w", err))
	}
	p.step(StepCompletedRecorded)
	logger.Info("Prepared claim", "devices", len(rec.Devices))
	return kubeletDevices(rec), nil
}

// planWhenFree plans the claim, waiting up to HeldWait while one of its
// devices is still prepared for another claim.
func (p *Preparer) planWhenFree(ctx context.Context, claim *resourceapi.ResourceClaim) (*checkpoint.Claim, error) {
	deadline := time.NewTimer(p.opts.HeldWait)
	defer deadline.Stop()
	logged := false
	for {
		p.mu.Lock()
		released := p.released
		p.mu.Unlock()
		rec, err := p.plan(claim)
		var held *heldError
		if !errors.As(err, &held) {
			return rec, err
		}
		if !logged {
			klog.FromContext(ctx).Info("Device still prepared for another claim; waiting for its unprepare", "device", held.device, "holder", held.owner, "wait", p.opts.HeldWait)
			logged = true
		}
		select {
		case <-released:
		case <-deadline.C:
			return nil, fmt.Errorf("%w (still after %s)", err, p.opts.HeldWait)
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
	}
}

// plan resolves the claim's allocation into checkpoint devices.
func (p *Preparer) plan(claim *resourceapi.ResourceClaim) (*checkpoint.Claim, error) {
	if claim.Status.Allocation == nil {
		return nil, errors.New("claim is not allocated")
	}
	rec := &checkpoint.Claim{UID: string(claim.UID), Namespace: claim.Namespace, Name: claim.Name, State: checkpoint.PrepareStarted}
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != names.DriverName || r.Pool != p.opts.PoolName {
			continue
		}
		dev, ok := p.devices.Lookup(r.Device)
		if !ok {
			return nil, fmt.Errorf("device %s: not published by this node (pool %s)", r.Device, p.opts.PoolName)
		}
		d := checkpoint.Device{Requests: []string{r.Request}, Pool: r.Pool, Name: r.Device, GPUUUID: dev.GPU.UUID, GPUMinor: dev.GPU.Minor,
			AdminAccess: r.AdminAccess != nil && *r.AdminAccess}
		switch dev.Kind {
		case devicemodel.KindMIGPlacement:
			d.MIG = &checkpoint.MIG{ProfileID: dev.Profile.ID, Profile: dev.Profile.Name, Start: dev.Placement.Start, Size: dev.Placement.Size}
			if d.AdminAccess {
				if err := p.existingMIG(&d); err != nil {
					return nil, fmt.Errorf("device %s: %w", r.Device, err)
				}
			}
		case devicemodel.KindMIGStatic:
			d.MIG = &checkpoint.MIG{ProfileID: dev.Profile.ID, Profile: dev.Profile.Name, Start: dev.Placement.Start, Size: dev.Placement.Size,
				UUID: dev.Instance.UUID, GIID: dev.Instance.GIID, CIID: dev.Instance.CIID}
		case devicemodel.KindGPUShare:
			if d.AdminAccess {
				break // the GPU as it is, without a share of its own
			}
			if err := p.planShare(&d, &r); err != nil {
				return nil, fmt.Errorf("device %s: %w", r.Device, err)
			}
		}
		if owner := p.owner(d); owner != "" {
			return nil, &heldError{device: r.Device, owner: owner}
		}
		rec.Devices = append(rec.Devices, d)
	}
	return rec, nil
}

// planShare records what a share of a shared GPU was allocated: its share
// ID and the memory and compute it consumes, which become its MPS limits.
func (p *Preparer) planShare(d *checkpoint.Device, r *resourceapi.DeviceRequestAllocationResult) error {
	if r.ShareID == nil {
		return errors.New("a shared GPU allocated without a share ID (is the DRAConsumableCapacity feature off in the scheduler?)")
	}
	if p.opts.MPS == nil {
		return errors.New("shares of a GPU are enforced through MPS, which is not available on this node")
	}
	memory, ok := r.ConsumedCapacity[names.CapacityMemory]
	if !ok || memory.Value() <= 0 {
		return fmt.Errorf("the allocation records no consumed %s", names.CapacityMemory)
	}
	compute := r.ConsumedCapacity[names.CapacityCompute]
	if c := compute.Value(); c < 0 || c > 100 {
		return fmt.Errorf("consumed %s %s is not a percentage", names.CapacityCompute, compute.String())
	}
	d.ShareID = string(*r.ShareID)
	d.Share = &checkpoint.Share{MemoryBytes: memory.Value(), ComputePercent: compute.Value()}
	d.MPSDir = p.opts.MPS.Dir(sharedDaemon(d.GPUUUID))
	return nil
}

// existingMIG resolves admin access to a MIG placement: the device exists
// only while the claim that created it holds it, and admin access gives
// that instance without creating or destroying anything.
func (p *Preparer) existingMIG(d *checkpoint.Device) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.cp.Claims {
		for _, o := range c.Devices {
			// The claim that created the instance, not another admin's
			// record of it, which outlives it.
			if o.AdminAccess || o.MIG == nil || !o.MIG.Created || o.MIG.UUID == "" {
				continue
			}
			if o.GPUUUID == d.GPUUUID && o.MIG.ProfileID == d.MIG.ProfileID && o.MIG.Start == d.MIG.Start {
				d.MIG.UUID, d.MIG.GIID, d.MIG.CIID = o.MIG.UUID, o.MIG.GIID, o.MIG.CIID
				return nil
			}
		}
	}
	return errors.New("admin access gives a MIG device that exists, and this one exists only while a claim holds it; none does now")
}

// touchesHardware reports whether preparing d changes the node: creates a
// MIG device, sets a time slice, or starts an MPS daemon.
func touchesHardware(d checkpoint.Device) bool {
	return !d.AdminAccess && ((d.MIG != nil && d.MIG.UUID == "") || d.TimeSlice != "" || d.MPSDir != "")
}

// mergeEnv returns a copy of a with b's variables added.
func mergeEnv(a, b map[string]string) map[string]string {
	out := maps.Clone(a)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, b)
	return out
}

// owner returns the UID of another prepared claim that holds the device.
func (p *Preparer) owner(d checkpoint.Device) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for uid, c := range p.cp.Claims {
		for _, o := range c.Devices {
			if conflicts(d, o) {
				return uid
			}
		}
	}
	return ""
}

// conflicts reports whether two prepared devices cannot coexist: the same
// exclusive device, or a share of a GPU and exclusive use of that GPU.
// Shares of one GPU coexist, and admin access coexists with anything.
func conflicts(a, b checkpoint.Device) bool {
	if a.Pool != b.Pool || a.AdminAccess || b.AdminAccess {
		return false
	}
	if a.Share != nil || b.Share != nil {
		return a.GPUUUID == b.GPUUUID && (a.Share == nil) != (b.Share == nil)
	}
	return a.Name == b.Name
}

// prepareDevice makes one device real and reports whether it created a MIG
// device. The caller holds the GPU's lock.
func (p *Preparer) prepareDevice(ctx context.Context, d *checkpoint.Device) (bool, error) {
	switch {
	case d.AdminAccess:
		return false, nil // as it is: no MIG mode, instance or daemon changed
	case d.Share != nil:
		if err := p.gpus.SetMIGMode(ctx, d.GPUUUID, false); err != nil {
			return false, fmt.Errorf("turn MIG mode off: %w", err)
		}
		// Idempotent: the GPU's other shares may have started it.
		if err := p.opts.MPS.Start(ctx, sharedDaemon(d.GPUUUID), []string{d.GPUUUID}); err != nil {
			return false, fmt.Errorf("start the shared GPU's MPS control daemon: %w", err)
		}
		p.step(StepMPSStarted)
		return false, nil
	case d.MIG == nil:
		// A whole GPU is a plain CUDA device only with MIG mode off. This
		// fails, as it should, if MIG devices still exist on it.
		if err := p.gpus.SetMIGMode(ctx, d.GPUUUID, false); err != nil {
			return false, fmt.Errorf("turn MIG mode off: %w", err)
		}
		if d.TimeSlice != "" {
			if err := p.gpus.SetTimeSlice(ctx, d.GPUUUID, d.TimeSlice); err != nil {
				return false, err
			}
		}
		return false, nil
	case d.MIG.UUID != "" && !d.MIG.Created:
		return false, nil // a pre-created instance: nothing to do
	}
	if err := p.gpus.SetMIGMode(ctx, d.GPUUUID, true); err != nil {
		return false, fmt.Errorf("turn MIG mode on: %w", err)
	}
	inst, err := p.gpus.CreateMIG(ctx, gpu.MIGRequest{
		ParentUUID: d.GPUUUID, ProfileID: d.MIG.ProfileID,
		Placement: gpu.Placement{Start: d.MIG.Start, Size: d.MIG.Size},
	})
	if err != nil {
		return false, fmt.Errorf("create MIG device %s at %d:%d: %w", d.MIG.Profile, d.MIG.Start, d.MIG.Size, err)
	}
	d.MIG.Created, d.MIG.UUID, d.MIG.GIID, d.MIG.CIID = true, inst.UUID, inst.GIID, inst.CIID
	p.step(StepMIGCreated)
	return true, nil
}

// Unprepare undoes Prepare for a claim. Unknown claims succeed.
func (p *Preparer) Unprepare(ctx context.Context, ref kubeletplugin.NamespacedObject) error {
	uid := string(ref.UID)
	logger := klog.FromContext(ctx).WithValues("claim", ref.NamespacedName, "claimUID", uid)
	ctx = klog.NewContext(ctx, logger)
	unlock := p.lockClaim(uid)
	defer unlock()
	rec := p.claim(uid)
	if rec == nil {
		// Nothing recorded; a spec file may still exist if the plugin
		// crashed before recording. Removing it is harmless.
		if err := p.cdi.DeleteClaimSpec(uid); err != nil {
			return fmt.Errorf("unprepare claim %s: delete CDI spec: %w", ref.NamespacedName, err)
		}
		logger.V(2).Info("Claim not prepared; nothing to do")
		return nil
	}
	if err := p.rollback(ctx, rec); err != nil {
		return fmt.Errorf("unprepare claim %s: %w", ref.NamespacedName, err)
	}
	logger.Info("Unprepared claim")
	return nil
}

// rollback destroys what rec created, removes its spec and forgets it.
// Each step is idempotent; on failure rec stays recorded, truthfully.
func (p *Preparer) rollback(ctx context.Context, rec *checkpoint.Claim) error {
	unlockGPUs := p.lockGPUs(rec)
	defer unlockGPUs()
	for i := range rec.Devices {
		d := &rec.Devices[i]
		if d.MIG == nil || !d.MIG.Created {
			continue
		}
		if err := p.gpus.DestroyMIG(ctx, gpu.MIGRef{ParentUUID: d.GPUUUID, GIID: d.MIG.GIID, CIID: d.MIG.CIID, UUID: d.MIG.UUID}); err != nil {
			return fmt.Errorf("device %s: destroy MIG device %s: %w", d.Name, d.MIG.UUID, err)
		}
		p.step(StepMIGDestroyed)
	}
	if err := restoreTimeSlices(ctx, p.gpus, rec); err != nil {
		return err
	}
	if err := stopMPS(ctx, p.opts.MPS, rec); err != nil {
		return err
	}
	if err := p.releaseShares(ctx, rec); err != nil {
		return err
	}
	p.step(StepMPSStopped)
	if err := p.cdi.DeleteClaimSpec(rec.UID); err != nil {
		return fmt.Errorf("delete CDI spec: %w", err)
	}
	p.step(StepCDIDeleted)
	if err := p.forget(ctx, rec.UID); err != nil {
		return fmt.Errorf("forget claim: %w", err)
	}
	p.step(StepForgotten)
	return nil
}

// restoreTimeSlices gives the GPUs whose time slice the claim set their
// default back. It is idempotent.
func restoreTimeSlices(ctx context.Context, gpus GPUs, rec *checkpoint.Claim) error {
	for _, d := range rec.Devices {
		if d.TimeSlice == "" {
			continue
		}
		if err := gpus.SetTimeSlice(ctx, d.GPUUUID, gpu.DefaultTimeSlice); err != nil {
			return fmt.Errorf("device %s: restore the default time slice: %w", d.Name, err)
		}
	}
	return nil
}

// releaseShares stops the MPS daemon of every GPU on which rec holds the
// last share. The caller holds the GPUs' locks, so no share of them is
// being prepared; a claim that records a share but has not started its
// prepare yet counts as holding it, and will start the daemon again if
// it was stopped before it was recorded. It is idempotent.
func (p *Preparer) releaseShares(ctx context.Context, rec *checkpoint.Claim) error {
	for _, uuid := range sharedGPUs(rec) {
		if p.sharedByAnother(rec.UID, uuid) {
			continue
		}
		if p.opts.MPS == nil {
			return errors.New("the claim holds a share of a GPU, but MPS is not available on this node")
		}
		if err := p.opts.MPS.Stop(ctx, sharedDaemon(uuid)); err != nil {
			return fmt.Errorf("GPU %s: stop the MPS control daemon of its shares: %w", uuid, err)
		}
		klog.FromContext(ctx).Info("Last share of a GPU released; its MPS control daemon stopped", "gpu", uuid)
	}
	return nil
}

// sharedByAnother reports whether a recorded claim other than uid holds a
// share of the GPU.
func (p *Preparer) sharedByAnother(uid, gpuUUID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.cp.Claims {
		if c.UID != uid && slices.Contains(sharedGPUs(c), gpuUUID) {
			return true
		}
	}
	return false
}

// sharedGPUs returns the UUIDs of the GPUs the claim holds shares of.
func sharedGPUs(c *checkpoint.Claim) []string {
	var out []string
	for _, d := range c.Devices {
		if d.Share != nil && !slices.Contains(out, d.GPUUUID) {
			out = append(out, d.GPUUUID)
		}
	}
	return out
}

// claimMPS reports whether the device uses the claim's own MPS daemon (not
// a shared GPU's).
func claimMPS(d checkpoint.Device) bool { return d.MPSDir != "" && d.Share == nil }

// stopMPS stops the claim's MPS control daemon, if it has one. It is
// idempotent.
func stopMPS(ctx context.Context, m MPS, rec *checkpoint.Claim) error {
	if !slices.ContainsFunc(rec.Devices, claimMPS) {
		return nil
	}
	if m == nil {
		return errors.New("the claim has an MPS control daemon, but MPS is not available on this node")
	}
	if err := m.Stop(ctx, rec.UID); err != nil {
		return fmt.Errorf("stop MPS control daemon: %w", err)
	}
	return nil
}

// record stores rec (a private copy) in the checkpoint and commits it.
func (p *Preparer) record(ctx context.Context, rec *checkpoint.Claim) error {
	c := rec.Clone()
	p.mu.Lock()
	p.cp.Claims[c.UID] = c
	p.mu.Unlock()
	return p.commit()
}

func (p *Preparer) forget(ctx context.Context, uid string) error {
	p.mu.Lock()
	delete(p.cp.Claims, uid)
	close(p.released)
	p.released = make(chan struct{})
	p.mu.Unlock()
	return p.commit()
}

// claim returns a copy of the recorded claim, or nil.
func (p *Preparer) claim(uid string) *checkpoint.Claim {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.cp.Claims[uid]
	if !ok {
		return nil
	}
	return p.cp.Clone().Claims[c.UID]
}

// lockClaim serialises work on one claim (the kubelet may retry while a
// call is still running).
func (p *Preparer) lockClaim(uid string) func() {
	p.mu.Lock()
	l, ok := p.claimLocks[uid]
	if !ok {
		l = &sync.Mutex{}
		p.claimLocks[uid] = l
	}
	p.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// lockGPUs takes the locks of every GPU the claim uses, in a fixed order so
// that two claims can never wait for each other.
func (p *Preparer) lockGPUs(rec *checkpoint.Claim) func() {
	var uuids []string
	for _, d := range rec.Devices {
		uuids = append(uuids, d.GPUUUID)
	}
	sort.Strings(uuids)
	uuids = slices.Compact(uuids)
	p.mu.Lock()
	locks := make([]*sync.Mutex, len(uuids))
	for i, u := range uuids {
		l, ok := p.gpuLocks[u]
		if !ok {
			l = &sync.Mutex{}
			p.gpuLocks[u] = l
		}
		locks[i] = l
	}
	p.mu.Unlock()
	for _, l := range locks {
		l.Lock()
	}
	return func() {
		for i := len(locks) - 1; i >= 0; i-- {
			locks[i].Unlock()
		}
	}
}

func kubeletDevices(rec *checkpoint.Claim) []kubeletplugin.Device {
	out := make([]kubeletplugin.Device, 0, len(rec.Devices))
	for _, d := range rec.Devices {
		kd := kubeletplugin.Device{
			Requests: slices.Clone(d.Requests), PoolName: d.Pool, DeviceName: d.Name, CDIDeviceIDs: slices.Clone(d.CDIDeviceIDs),
		}
		if d.ShareID != "" {
			kd.ShareID = ptr.To(types.UID(d.ShareID))
		}
		out = append(out, kd)
	}
	return out
}

func claimName(c *resourceapi.ResourceClaim) string {
	return fmt.Sprintf("%s/%s (%s)", c.Namespace, c.Name, types.UID(c.UID))
}
