package prepare

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
)

// ReconcileCDI is what start-up reconciliation needs of the CDI specs.
type ReconcileCDI interface {
	CDI
	SpecAnnotations
	ClaimUIDs() ([]string, error)
}

// Reconciler brings the checkpoint, the live MIG devices, the MPS daemons
// and the CDI specs into agreement before the plugin serves.
type Reconciler struct {
	GPUs GPUs
	CDI  ReconcileCDI
	// MPS is nil on a node without MPS.
	MPS MPS
	// VFIO is nil on a node without VFIO passthrough.
	VFIO Passthrough
}

// Found is what the plugin found at start-up.
type Found struct {
	// Checkpoint is the checkpoint as loaded (empty when it was lost).
	Checkpoint *checkpoint.Checkpoint
	Inventory  *gpu.Inventory
	// Lost is set when the checkpoint could not be trusted: prepared
	// claims are then rebuilt from the CDI specs' annotations, and every
	// other claim of the generation before the lost one (Lost.Previous) is
	// undone as an unfinished preparation, which finds the MIG devices
	// created for it.
	Lost *checkpoint.CorruptError
}

// ReconcileReport says what start-up reconciliation changed, by claim UID
// (or MPS daemon key).
type ReconcileReport struct {
	RolledBack        []string // claims whose unfinished preparation was undone
	MPSRestarted      []string // MPS control daemons of prepared claims or shared GPUs started again
	OrphanMPS         []string // MPS control daemons of no claim or share, stopped
	Dropped           []string // prepared claims whose devices vanished (reboot)
	Rebuilt           []string // claims recovered from CDI specs (lost checkpoint)
	SpecsRewritten    []string // prepared claims whose CDI spec was missing
	OrphanSpecs       []string // CDI specs of no claim, deleted
	MIGDestroyed      []string // MIG devices destroyed (by UUID)
	TimeSlicesApplied []string // prepared claims whose time slices were set again
	// Unreadable are claims on a GPU that could not be read (fallen off
	// the bus, or listed in the inventory's Unreadable, or missing from an
	// inventory with a GPU whose UUID could not be read): what it holds is
	// unknown, not gone, so they are kept as they are; the kubelet's next
	// call or the next start tries again.
	Unreadable []string
	// Unowned are the live MIG devices (by UUID) that no claim records
	// after a lost checkpoint without a readable previous generation: an
	// administrator's, or created by a prepare interrupted before its
	// first write could be read back. They are left alone and logged.
	Unowned []string
	// Failed are claims and daemons that could not be reconciled, with
	// the cause; claims among them are kept as they are, like Unreadable.
	Failed map[string]error
}

// Reconcile reconciles what was found and returns the checkpoint to serve
// from; the caller saves it. One claim that cannot be reconciled never
// stops the others: it is logged, reported in Failed and kept. The error
// is for what stops reconciliation as a whole (the CDI specs or MPS
// daemons cannot be listed).
func (r Reconciler) Reconcile(ctx context.Context, found Found) (*checkpoint.Checkpoint, ReconcileReport, error) {
	rc := &reconciliation{Reconciler: r, cp: found.Checkpoint.Clone(), logger: klog.FromContext(ctx),
		live: map[string]gpu.MIGInstance{}, at: map[checkpoint.Placement]gpu.MIGInstance{},
		unreadable: map[string]bool{}, undone: map[string]bool{}}
	rc.rep.Failed = map[string]error{}
	var err error
	if rc.specUIDs, err = r.CDI.ClaimUIDs(); err != nil {
		return nil, rc.rep, fmt.Errorf("list CDI specs: %w", err)
	}
	rc.index(found.Inventory)
	if found.Lost != nil {
		rc.rebuild(found.Lost.Previous)
	}
	for _, uid := range sortedKeys(rc.cp.Claims) {
		if err := rc.claim(ctx, rc.cp.Claims[uid]); err != nil {
			rc.fail(uid, err)
		}
	}
	rc.orphanSpecs()
	if found.Lost != nil && found.Lost.Previous == nil {
		rc.unowned()
	}
	if r.MPS != nil {
		if err := rc.daemons(ctx); err != nil {
			return nil, rc.rep, err
		}
	}
	return rc.cp, rc.rep, nil
}

// reconciliation is one run of Reconcile.
type reconciliation struct {
	Reconciler
	cp       *checkpoint.Checkpoint
	logger   klog.Logger
	specUIDs []string
	live     map[string]gpu.MIGInstance               // by MIG UUID
	at       map[checkpoint.Placement]gpu.MIGInstance // by placement
	// unreadable are the GPUs (by UUID) whose MIG devices could not be
	// listed.
	unreadable map[string]bool
	// present are the GPUs (by UUID) the inventory lists; unnamed is set
	// when a GPU could not be read at all, not even its UUID: a GPU of a
	// claim that is not present may be that one.
	present map[string]bool
	unnamed bool
	// owned are the MIG UUIDs some claim records: never destroyed as
	// another's leftover.
	owned  map[string]bool
	undone map[string]bool
	rep    ReconcileReport
}

func (rc *reconciliation) index(inv *gpu.Inventory) {
	rc.present = map[string]bool{}
	for _, u := range inv.Unreadable {
		if u.UUID == "" {
			rc.unnamed = true
			continue
		}
		rc.unreadable[u.UUID] = true
	}
	for _, g := range inv.GPUs {
		rc.present[g.UUID] = true
		if g.Lost {
			rc.unreadable[g.UUID] = true
			continue
		}
		for _, m := range g.MIGInstances {
			rc.live[m.UUID] = m
			rc.at[checkpoint.Placement{GPUUUID: g.UUID, ProfileID: m.ProfileID, Start: m.Placement.Start}] = m
		}
	}
}

// rebuild recovers prepared claims from the CDI specs, and takes the
// other claims of the previous generation as unfinished, to be undone.
func (rc *reconciliation) rebuild(previous *checkpoint.Checkpoint) {
	for _, uid := range rc.specUIDs {
		if _, ok := rc.cp.Claims[uid]; ok {
			continue
		}
		rec, err := rebuildClaim(uid, rc.CDI)
		if err != nil {
			rc.logger.Error(err, "Cannot rebuild claim from its CDI spec; the spec is removed", "claimUID", uid)
			continue
		}
		rc.cp.Claims[uid] = rec
		rc.rep.Rebuilt = append(rc.rep.Rebuilt, uid)
	}
	if previous == nil {
		return
	}
	for _, uid := range sortedKeys(previous.Claims) {
		if _, ok := rc.cp.Claims[uid]; ok {
			continue
		}
		c := previous.Claims[uid].Clone()
		c.State = checkpoint.PrepareStarted
		rc.cp.Claims[uid] = c
	}
}

// claim reconciles one claim.
func (rc *reconciliation) claim(ctx context.Context, c *checkpoint.Claim) error {
	if slices.ContainsFunc(c.Devices, func(d checkpoint.Device) bool {
		return rc.unreadable[d.GPUUUID] || rc.unnamed && !rc.present[d.GPUUUID]
	}) {
		rc.logger.Info("Claim uses a GPU that cannot be read; keeping it as it is", "claimUID", c.UID)
		rc.rep.Unreadable = append(rc.rep.Unreadable, c.UID)
		return nil
	}
	if c.State != checkpoint.PrepareCompleted {
		if err := rc.undo(ctx, c); err != nil {
			return err
		}
		rc.rep.RolledBack = append(rc.rep.RolledBack, c.UID)
		return nil
	}
	if missing := rc.missingMIG(c); missing != "" {
		rc.logger.Info("Prepared claim lost a MIG device (node rebooted?); forgetting it so the next prepare starts afresh", "claimUID", c.UID, "mig", missing)
		if err := rc.undo(ctx, c); err != nil {
			return err
		}
		rc.rep.Dropped = append(rc.rep.Dropped, c.UID)
		return nil
	}
	// Nor does a GPU's binding to VFIO: a prepared claim's GPU is bound
	// again where it is not (bound already, this changes nothing).
	if err := rc.rebind(ctx, c); err != nil {
		return err
	}
	// A time slice does not survive a reboot; setting it again is
	// harmless otherwise.
	applied := false
	for _, d := range c.Devices {
		if d.TimeSlice == "" {
			continue
		}
		if err := rc.GPUs.SetTimeSlice(ctx, d.GPUUUID, d.TimeSlice); err != nil {
			return fmt.Errorf("device %s: set time slice %s again: %w", d.Name, d.TimeSlice, err)
		}
		applied = true
	}
	if applied {
		rc.rep.TimeSlicesApplied = append(rc.rep.TimeSlicesApplied, c.UID)
	}
	if uuids := mpsUUIDs(c); len(uuids) > 0 && rc.MPS != nil && !rc.MPS.Running(c.UID) {
		rc.logger.Info("Prepared claim's MPS control daemon is gone (node rebooted?); starting it again", "claimUID", c.UID)
		if err := startClaimDaemon(ctx, rc.MPS, c); err != nil {
			return fmt.Errorf("restart MPS control daemon: %w", err)
		}
		rc.rep.MPSRestarted = append(rc.rep.MPSRestarted, c.UID)
	}
	if !slices.Contains(rc.specUIDs, c.UID) {
		if err := rewriteSpec(ctx, c, rc.CDI); err != nil {
			return fmt.Errorf("rewrite CDI spec: %w", err)
		}
		rc.rep.SpecsRewritten = append(rc.rep.SpecsRewritten, c.UID)
	}
	return nil
}

// rebind binds the GPUs a prepared claim passed through to VFIO again
// where a reboot gave them back to the host.
func (rc *reconciliation) rebind(ctx context.Context, c *checkpoint.Claim) error {
	for _, d := range c.Devices {
		if d.VFIO == nil {
			continue
		}
		if rc.VFIO == nil {
			return fmt.Errorf("device %s: the GPU is passed through, but VFIO passthrough is not enabled on this node any more (the plugin's --vfio-passthrough)", d.Name)
		}
		for _, fn := range d.VFIO.Functions {
			cur, err := rc.VFIO.Driver(fn.BusID)
			if err != nil {
				return fmt.Errorf("device %s: %w", d.Name, err)
			}
			want := vfioTarget(d.VFIO, fn.BusID)
			if cur == want {
				continue
			}
			rc.logger.Info("Prepared claim's GPU is not bound to VFIO (node rebooted?); binding it again", "claimUID", c.UID, "function", fn.BusID, "driver", cur)
			if err := rc.VFIO.Bind(ctx, fn.BusID, want); err != nil {
				return fmt.Errorf("device %s: bind it to VFIO again: %w", d.Name, err)
			}
		}
	}
	return nil
}

// undo rolls the claim back with the Preparer's rollback and forgets it.
func (rc *reconciliation) undo(ctx context.Context, c *checkpoint.Claim) error {
	if rc.owned == nil {
		rc.owned = map[string]bool{}
		for _, o := range rc.cp.Claims {
			for _, d := range o.Devices {
				if d.MIG != nil && d.MIG.UUID != "" {
					rc.owned[d.MIG.UUID] = true
				}
			}
		}
	}
	u := undoer{gpus: liveGPUs{rc}, cdi: rc.CDI, others: rc.cp, unrecorded: rc.unrecorded, vfio: rc.VFIO}
	if rc.MPS != nil {
		u.mps = sweptDaemons{rc}
	}
	if err := u.undo(ctx, c); err != nil {
		return err
	}
	delete(rc.cp.Claims, c.UID)
	rc.undone[c.UID] = true
	return nil
}

// unrecorded finds the instance a claim still being prepared created at a
// planned placement just before the plugin died: the live one there that
// no claim records.
func (rc *reconciliation) unrecorded(d checkpoint.Device) (gpu.MIGRef, bool) {
	at, _ := d.Placement()
	m, ok := rc.at[at]
	if !ok || rc.owned[m.UUID] {
		return gpu.MIGRef{}, false
	}
	return gpu.MIGRef{ParentUUID: d.GPUUUID, GIID: m.GIID, CIID: m.CIID, UUID: m.UUID}, true
}

// missingMIG returns the UUID of a MIG device of the claim that is gone,
// or "".
func (rc *reconciliation) missingMIG(c *checkpoint.Claim) string {
	for _, d := range c.Devices {
		if d.MIG == nil {
			continue
		}
		if _, ok := rc.live[d.MIG.UUID]; !ok {
			return d.MIG.UUID
		}
	}
	return ""
}

// unowned reports the live MIG devices no claim records.
func (rc *reconciliation) unowned() {
	owned := map[string]bool{}
	for _, c := range rc.cp.Claims {
		for _, d := range c.Devices {
			if d.MIG != nil {
				owned[d.MIG.UUID] = true
			}
		}
	}
	for _, uuid := range sortedKeys(rc.live) {
		if owned[uuid] {
			continue
		}
		m := rc.live[uuid]
		rc.logger.Info("MIG device owned by no claim after the checkpoint and its previous generation were lost; left alone: destroy it if no administrator created it",
			"mig", uuid, "gpu", m.ParentUUID, "profile", m.Profile, "placement", m.Placement.String())
		rc.rep.Unowned = append(rc.rep.Unowned, uuid)
	}
}

// orphanSpecs deletes the specs of claims nobody remembers.
func (rc *reconciliation) orphanSpecs() {
	for _, uid := range rc.specUIDs {
		if _, ok := rc.cp.Claims[uid]; ok || rc.undone[uid] {
			continue
		}
		if err := rc.CDI.DeleteClaimSpec(uid); err != nil {
			rc.fail(uid, fmt.Errorf("delete orphan CDI spec: %w", err))
			continue
		}
		rc.rep.OrphanSpecs = append(rc.rep.OrphanSpecs, uid)
	}
}

// daemons starts again the daemons of shared GPUs that still have legacy
// shares (legacyShare), and stops the daemons of no claim or such share.
func (rc *reconciliation) daemons(ctx context.Context) error {
	shared := map[string]bool{}
	for _, c := range rc.cp.Claims {
		for _, uuid := range legacySharedGPUs(c) {
			shared[sharedDaemon(uuid)] = true
		}
	}
	for _, key := range sortedKeys(shared) {
		uuid := strings.TrimPrefix(key, sharedDaemonPrefix)
		if rc.MPS.Running(key) || rc.unreadable[uuid] {
			continue
		}
		rc.logger.Info("The MPS control daemon of a shared GPU's shares is gone (node rebooted?); starting it again", "daemon", key)
		if err := rc.MPS.Start(ctx, key, []string{uuid}, mps.Limits{}); err != nil {
			rc.fail(key, fmt.Errorf("GPU %s: restart the MPS control daemon of its shares: %w", uuid, err))
			continue
		}
		rc.rep.MPSRestarted = append(rc.rep.MPSRestarted, key)
	}
	keys, err := rc.MPS.Claims(ctx)
	if err != nil {
		return fmt.Errorf("list MPS control daemons: %w", err)
	}
	for _, key := range keys {
		if _, ok := rc.cp.Claims[key]; ok || shared[key] {
			continue
		}
		if err := rc.MPS.Stop(ctx, key); err != nil {
			rc.fail(key, fmt.Errorf("stop orphan MPS control daemon: %w", err))
			continue
		}
		rc.rep.OrphanMPS = append(rc.rep.OrphanMPS, key)
	}
	return nil
}

// fail logs and reports what could not be reconciled; a claim stays
// recorded as it is.
func (rc *reconciliation) fail(key string, err error) {
	rc.logger.Error(err, "Cannot reconcile; keeping it as it is, to be retried by the kubelet's next call or the next start", "claimUID", key)
	rc.rep.Failed[key] = err
}

// liveGPUs destroys only MIG devices that are live, and keeps the
// reconciliation's view and report up to date.
type liveGPUs struct{ rc *reconciliation }

func (l liveGPUs) DestroyMIG(ctx context.Context, ref gpu.MIGRef) error {
	m, ok := l.rc.live[ref.UUID]
	if !ok {
		return nil // gone already (reboot) or never created
	}
	if err := l.rc.GPUs.DestroyMIG(ctx, ref); err != nil {
		return err
	}
	delete(l.rc.live, m.UUID)
	delete(l.rc.at, checkpoint.Placement{GPUUUID: m.ParentUUID, ProfileID: m.ProfileID, Start: m.Placement.Start})
	l.rc.rep.MIGDestroyed = append(l.rc.rep.MIGDestroyed, m.UUID)
	return nil
}

func (l liveGPUs) SetTimeSlice(ctx context.Context, gpuUUID, interval string) error {
	return l.rc.GPUs.SetTimeSlice(ctx, gpuUUID, interval)
}

// sweptDaemons stops MPS daemons for a rollback and reports the daemon of
// a shared GPU whose last share it undid as an orphan: a daemon of no
// share.
type sweptDaemons struct{ rc *reconciliation }

func (s sweptDaemons) Dir(key string) string { return s.rc.MPS.Dir(key) }

func (s sweptDaemons) Stop(ctx context.Context, key string) error {
	if err := s.rc.MPS.Stop(ctx, key); err != nil {
		return err
	}
	if strings.HasPrefix(key, sharedDaemonPrefix) {
		s.rc.rep.OrphanMPS = append(s.rc.rep.OrphanMPS, key)
	}
	return nil
}
