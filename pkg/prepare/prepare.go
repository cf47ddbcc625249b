// Package prepare turns an allocated ResourceClaim into devices a container
// can use, and back (DESIGN.md §3). Prepare, in prepare.go, goes:
//
//  1. A claim already prepared returns its recorded result (idempotent).
//  2. The claim is planned (each device, each MIG placement about to be
//     created, each configuration resolved) and recorded as PrepareStarted
//     before any side effect.
//  3. Per device, holding that GPU's lock: a whole GPU needs nothing but MIG
//     mode off (and its time slice, if configured); a MIG placement gets its
//     GPU and compute instance created at exactly the allocated placement;
//     a pre-created MIG instance is used as it is; a share of a shared GPU,
//     or a consumable share of a whole GPU with a memory limit, needs MIG
//     mode off and the claim's own MPS control daemon with the share's
//     limits; a consumable share without one needs MIG mode off only; a
//     GPU for a VM, once nothing on the host holds it open, has its IOMMU
//     group bound to VFIO (vfio.go). What was created is recorded once the locks are
//     released; then the claim's own MPS control daemon, if it asked for
//     one, is started.
//  4. The claim's CDI spec is written and the claim recorded as
//     PrepareCompleted; the CDI device IDs go back to the kubelet.
//  5. On any failure what this attempt created is undone (rollback.go),
//     the spec removed, the claim forgotten, and the error names claim,
//     device and cause. If the rollback itself fails the claim stays
//     recorded as PrepareStarted so that the next attempt, or the next
//     start, finishes it.
//
// Unprepare (unprepare.go) undoes a claim with the same rollback. Every
// checkpoint write is durable before the kubelet hears of success, and a
// failed write is an error to the kubelet: memory never says more than the
// disk (record.go). Start-up reconciliation (reconcile.go) brings the
// checkpoint, the live MIG devices and the CDI specs (spec.go) into
// agreement with the same rollback.
package prepare

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/api/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/cdi"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
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
// claim's UID for a claim's own daemon, which its MPS devices and shares
// use; sharedDaemon(GPU UUID) for a previous release's daemon of a shared
// GPU's shares.
type MPS interface {
	Dir(key string) string
	Start(ctx context.Context, key string, gpuUUIDs []string, limits mps.Limits) error
	Stop(ctx context.Context, key string) error
	Running(key string) bool
	Claims(ctx context.Context) ([]string, error)
}

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
	// GPUHolders, if set, names the host's processes that hold the GPU of
	// that minor open (e.g. "dcgm-exporter (pid 4242)"), for the error of
	// a MIG mode change they keep from being activated.
	GPUHolders func(minor int) ([]string, error)
	// VFIO passes GPUs through to VMs; nil refuses VFIO devices.
	VFIO Passthrough
	// HolderWait is how long a VFIO prepare waits for the processes that
	// hold its GPU open (GPUHolders) to close it: zero means
	// DefaultHolderWait.
	HolderWait time.Duration
}

// DefaultHeldWait is how long a prepare waits for a device to be
// unprepared for the claim that held it. When a pod is deleted without a
// grace period, its claim is gone from the API server and the device is
// allocated again before the kubelet has unprepared it; waiting here for
// that unprepare hands the device over at once, where failing would cost
// the new pod the kubelet's retry backoff.
const DefaultHeldWait = 20 * time.Second

// Preparer prepares and unprepares claims. It is safe for concurrent use:
// claims on different GPUs proceed in parallel; claims on the same GPU take
// turns; checkpoint writes of concurrent claims are committed together.
type Preparer struct {
	gpus    GPUs
	devices Devices
	cdi     CDI
	opts    Options

	// mu guards cp, leaving, released and the lock maps.
	mu sync.Mutex
	// cp is what the plugin holds. A claim in leaving is being forgotten:
	// it still holds its devices here, but the checkpoint written leaves
	// it out (record.go).
	cp      *checkpoint.Checkpoint
	leaving map[string]bool
	locks   locks
	// released is closed (and replaced) whenever a claim is forgotten,
	// waking prepares that wait for a held device.
	released  chan struct{}
	committer committer
}

// New returns a Preparer that starts from cp (as reconciled at start-up).
func New(gpus GPUs, devices Devices, cdiWriter CDI, store Store, cp *checkpoint.Checkpoint, opts Options) *Preparer {
	p := &Preparer{
		gpus: gpus, devices: devices, cdi: cdiWriter, opts: opts,
		cp: cp, leaving: map[string]bool{}, released: make(chan struct{}),
	}
	p.locks.init()
	if p.opts.HeldWait == 0 {
		p.opts.HeldWait = DefaultHeldWait
	}
	p.opts.HeldWait = max(p.opts.HeldWait, 0)
	if p.opts.HolderWait <= 0 {
		p.opts.HolderWait = DefaultHolderWait
	}
	p.committer.init(store)
	return p
}

// Snapshot returns a copy of the current checkpoint.
func (p *Preparer) Snapshot() *checkpoint.Checkpoint {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cp.Clone()
}

// ManagesMIG reports whether the live MIG device is the plugin's (see
// checkpoint.Checkpoint.Manages), without copying the checkpoint.
func (p *Preparer) ManagesMIG(m gpu.MIGInstance) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cp.Manages(m.UUID, checkpoint.Placement{GPUUUID: m.ParentUUID, ProfileID: m.ProfileID, Start: m.Placement.Start})
}

// MIGUUID returns the UUID of the MIG device a prepared claim created on
// the GPU with these GPU and compute instance IDs, or "": one created
// since the last inventory is already there.
func (p *Preparer) MIGUUID(gpuUUID string, giid, ciid int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cp.MIGUUID(gpuUUID, giid, ciid)
}

// Prepare prepares one claim and returns the devices for the kubelet.
func (p *Preparer) Prepare(ctx context.Context, claim *resourceapi.ResourceClaim) ([]kubeletplugin.Device, error) {
	uid := string(claim.UID)
	logger := klog.FromContext(ctx).WithValues("claim", klog.KObj(claim), "claimUID", uid)
	ctx = klog.NewContext(ctx, logger)
	unlock := p.lockClaim(uid)
	defer unlock()
	name := claimName(claim)

	// 1. Idempotent: a prepared claim returns what it returned before.
	if prev := p.Claim(uid); prev != nil {
		if prev.State == checkpoint.PrepareCompleted {
			logger.V(2).Info("Claim already prepared")
			return p.kubeletDevices(prev), nil
		}
		logger.Info("Claim has an unfinished preparation; rolling it back first")
		if err := p.rollback(ctx, prev); err != nil {
			return nil, fmt.Errorf("prepare claim %s: finish earlier attempt: %w", name, err)
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
		return nil, fmt.Errorf("prepare claim %s: %w", name, err)
	}
	mpsConfigs, err := p.configure(claim, rec)
	if err != nil {
		return nil, fmt.Errorf("prepare claim %s: %w", name, err)
	}
	if slices.ContainsFunc(rec.Devices, touchesHardware) {
		if err := p.recordStart(rec); err != nil {
			// Nothing was done yet: the claim must not hold its devices.
			p.drop(uid)
			return nil, fmt.Errorf("prepare claim %s: record start: %w", name, err)
		}
		p.step(StepStartedRecorded)
	}

	// 5. From here on a failure rolls back what this attempt did and
	// returns the cause, named after the claim.
	fail := func(cause error) ([]kubeletplugin.Device, error) {
		err := fmt.Errorf("prepare claim %s: %w", name, cause)
		// The rollback must finish even if the kubelet gave up on the call.
		if rbErr := p.rollback(context.WithoutCancel(ctx), rec); rbErr != nil {
			logger.Error(rbErr, "Rollback failed; the claim stays recorded and is rolled back on the next attempt")
			return nil, fmt.Errorf("%w (rollback failed: %w)", err, rbErr)
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
				// Record what exists so that a failed rollback leaves it
				// recorded; the rollback below destroys it either way.
				_ = p.record(rec)
			}
			return fail(fmt.Errorf("device %s: %w", d.Name, err))
		}
	}
	unlockGPUs()
	if created {
		if err := p.record(rec); err != nil {
			return fail(fmt.Errorf("record MIG devices: %w", err))
		}
		p.step(StepMIGRecorded)
	}
	if slices.ContainsFunc(rec.Devices, claimDaemon) {
		if err := p.startClaimMPS(ctx, rec, mpsConfigs); err != nil {
			return fail(err)
		}
		p.step(StepMPSStarted)
	}

	// 4. CDI spec, then done.
	specDevices, err := cdiDevices(rec)
	if err != nil {
		return fail(err)
	}
	ids, err := p.cdi.WriteClaimSpec(ctx, uid, specDevices)
	if err != nil {
		return fail(fmt.Errorf("write CDI spec: %w", err))
	}
	p.step(StepCDIWritten)
	for i := range rec.Devices {
		rec.Devices[i].CDIDeviceIDs = ids[cdiName(rec.Devices[i])]
	}
	rec.State = checkpoint.PrepareCompleted
	if err := p.record(rec); err != nil {
		return fail(fmt.Errorf("record completion: %w", err))
	}
	p.step(StepCompletedRecorded)
	logger.Info("Prepared claim", "devices", len(rec.Devices))
	return p.kubeletDevices(rec), nil
}

// configure resolves each device's configuration into rec and returns the
// MPS configurations of the devices that use the claim's own daemon, by
// device index.
func (p *Preparer) configure(claim *resourceapi.ResourceClaim, rec *checkpoint.Claim) (map[int]*v1beta1.MpsConfig, error) {
	mpsConfigs := map[int]*v1beta1.MpsConfig{}
	for i := range rec.Devices {
		d := &rec.Devices[i]
		settings, err := deviceConfig(claim, d)
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", d.Name, err)
		}
		if d.VFIO != nil {
			if err := p.planVFIO(d, d.VFIO.BusID, settings.vfio); err != nil {
				return nil, fmt.Errorf("device %s: %w", d.Name, err)
			}
			continue
		}
		// The environment is built from here on: a share's, then the MPS limits.
		d.Env, d.TimeSlice = nil, settings.timeSlice
		if d.AdminAccess && (settings.mps != nil || settings.timeSlice != "") {
			return nil, fmt.Errorf("device %s: parameters.sharing: a device allocated with admin access is given as it is, for monitoring; its sharing is its other claims' to set, so remove the sharing configuration for this request", d.Name)
		}
		if d.Share != nil {
			if settings.mps != nil || settings.timeSlice != "" {
				return nil, fmt.Errorf("device %s: parameters.sharing: a share of a GPU (shared.gpu.nvidia.com, or gpu.nvidia.com with consumable shares) runs with the limits it was allocated, through MPS where it has any, and the GPU is its other shares' too; remove the sharing configuration for this request", d.Name)
			}
			continue
		}
		if settings.mps != nil {
			if p.opts.MPS == nil {
				return nil, fmt.Errorf("device %s: MPS sharing is not available on this node", d.Name)
			}
			mpsConfigs[i] = settings.mps
			d.MPSDir = p.opts.MPS.Dir(rec.UID)
			d.MPSMultiUser = settings.mps.MultiUser != nil && *settings.mps.MultiUser
			if d.MPSMultiUser {
				if err := p.multiUserCapable(d); err != nil {
					return nil, fmt.Errorf("device %s: parameters.sharing.mpsConfig.multiUser: %w", d.Name, err)
				}
			}
		}
	}
	limits, err := daemonLimits(rec)
	if err != nil {
		return nil, err
	}
	// A share's containers are told their limits, which the daemon
	// imposes whatever they do with them. A consumable share without a
	// limit has no daemon to be told of.
	for i := range rec.Devices {
		if d := &rec.Devices[i]; d.Share != nil && d.MPSDir != "" {
			d.Env = mergeEnv(d.Env, shareEnv(limits, mpsUUIDs(rec)))
		}
	}
	return mpsConfigs, nil
}

// voltaComputeCapability is the first compute capability (major) whose
// MPS server runs in multi-user mode: NVIDIA's MPS documentation has
// clients of several users only from Volta on, and NVIDIA's driver refuses
// multiUser below it.
const voltaComputeCapability = 7

// multiUserCapable refuses MPS in multi-user mode on a GPU older than
// Volta. A GPU whose compute capability is unknown (NVML did not say) is
// let through: the daemon then reports what it cannot do.
func (p *Preparer) multiUserCapable(d *checkpoint.Device) error {
	dev, ok := p.devices.Lookup(d.Name)
	if !ok || dev.GPU == nil {
		return nil
	}
	cc := dev.GPU.CUDAComputeCapability
	major, _, _ := strings.Cut(cc, ".")
	if n, err := strconv.Atoi(major); err == nil && n < voltaComputeCapability {
		return fmt.Errorf("MPS in multi-user mode needs a Volta or newer GPU (compute capability %d.0 or more); GPU %s (%s) has %s: leave multiUser unset", voltaComputeCapability, dev.GPU.UUID, dev.GPU.Name, cc)
	}
	return nil
}

// startClaimMPS starts the claim's own MPS control daemon, now that every
// device has its UUID, and adds the limits of the devices its
// configuration shares to their environment.
func (p *Preparer) startClaimMPS(ctx context.Context, rec *checkpoint.Claim, configs map[int]*v1beta1.MpsConfig) error {
	envs, err := mpsEnv(rec, configs)
	if err != nil {
		return err
	}
	for i, env := range envs {
		rec.Devices[i].Env = mergeEnv(rec.Devices[i].Env, env)
	}
	return startClaimDaemon(ctx, p.opts.MPS, rec)
}

// startClaimDaemon starts the claim's own daemon (or finds it running)
// with its GPUs and its shares' limits, as prepare, start-up
// reconciliation and EnsureDaemons do.
func startClaimDaemon(ctx context.Context, m MPS, rec *checkpoint.Claim) error {
	limits, err := daemonLimits(rec)
	if err != nil {
		return err
	}
	if err := m.Start(ctx, rec.UID, mpsUUIDs(rec), limits); err != nil {
		return fmt.Errorf("start MPS control daemon: %w", err)
	}
	return nil
}

// heldError is a device still prepared for another claim.
type heldError struct{ device, owner string }

func (e *heldError) Error() string {
	return fmt.Sprintf("device %s: already prepared for claim %s", e.device, e.owner)
}

func claimName(c *resourceapi.ResourceClaim) string {
	return fmt.Sprintf("%s/%s (%s)", c.Namespace, c.Name, types.UID(c.UID))
}
