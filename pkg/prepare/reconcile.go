package prepare

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/cdi"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
)

// ReconcileCDI is what start-up reconciliation needs of the CDI specs.
type ReconcileCDI interface {
	CDI
	ClaimUIDs() ([]string, error)
	DeviceAnnotations(claimUID string) (map[string]map[string]string, error)
}

// preparedDevice is the annotation's content.
type preparedDevice struct {
	Namespace string            `json:"namespace"`
	Claim     string            `json:"claim"`
	Device    checkpoint.Device `json:"device"`
}

func deviceAnnotation(rec *checkpoint.Claim, d checkpoint.Device) (map[string]string, error) {
	d.CDIDeviceIDs = nil
	data, err := json.Marshal(preparedDevice{Namespace: rec.Namespace, Claim: rec.Name, Device: d})
	if err != nil {
		return nil, fmt.Errorf("encode device record: %w", err)
	}
	return map[string]string{names.PreparedDeviceAnnotation: string(data)}, nil
}

// ReconcileReport says what start-up reconciliation changed.
type ReconcileReport struct {
	RolledBack     []string // claims whose unfinished preparation was undone
	MPSRestarted   []string // MPS control daemons of prepared claims or shared GPUs started again
	OrphanMPS      []string // MPS control daemons of no claim or share, stopped
	Dropped        []string // prepared claims whose devices vanished (reboot)
	Rebuilt        []string // claims recovered from CDI specs (lost checkpoint)
	SpecsRewritten []string // prepared claims whose CDI spec was missing
	OrphanSpecs    []string // CDI specs of no claim, deleted
	MIGDestroyed   []string // MIG devices destroyed
}

// Reconcile brings the checkpoint, the live MIG devices and the CDI specs
// into agreement before the plugin serves. rebuild says the checkpoint was
// lost: prepared claims are then recovered from the CDI specs' annotations.
// It returns the checkpoint to serve from; the caller saves it.
func Reconcile(ctx context.Context, cp *checkpoint.Checkpoint, inv *gpu.Inventory, gpus GPUs, specs ReconcileCDI, daemons MPS, rebuild bool) (*checkpoint.Checkpoint, ReconcileReport, error) {
	logger := klog.FromContext(ctx)
	var rep ReconcileReport
	cp = cp.Clone()
	specUIDs, err := specs.ClaimUIDs()
	if err != nil {
		return nil, rep, fmt.Errorf("list CDI specs: %w", err)
	}
	live := map[string]gpu.MIGInstance{} // by MIG UUID
	at := map[[3]any]gpu.MIGInstance{}   // by GPU UUID, profile ID, start
	for _, g := range inv.GPUs {
		for _, m := range g.MIGInstances {
			live[m.UUID] = m
			at[[3]any{g.UUID, m.ProfileID, m.Placement.Start}] = m
		}
	}

	if rebuild {
		for _, uid := range specUIDs {
			if _, ok := cp.Claims[uid]; ok {
				continue
			}
			rec, err := rebuildClaim(uid, specs)
			if err != nil {
				logger.Error(err, "Cannot rebuild claim from its CDI spec; the spec is removed", "claimUID", uid)
				continue
			}
			cp.Claims[uid] = rec
			rep.Rebuilt = append(rep.Rebuilt, uid)
		}
	}

	// Instances recorded by any claim are owned and never destroyed as
	// leftovers of another.
	owned := map[string]bool{}
	for _, c := range cp.Claims {
		for _, d := range c.Devices {
			if d.MIG != nil && d.MIG.UUID != "" {
				owned[d.MIG.UUID] = true
			}
		}
	}

	destroy := func(gpuUUID string, m gpu.MIGInstance) error {
		if err := gpus.DestroyMIG(ctx, gpu.MIGRef{ParentUUID: gpuUUID, GIID: m.GIID, CIID: m.CIID, UUID: m.UUID}); err != nil {
			return err
		}
		rep.MIGDestroyed = append(rep.MIGDestroyed, m.UUID)
		delete(live, m.UUID)
		return nil
	}
	undone := map[string]bool{}
	// undo destroys what a claim created and forgets it.
	undo := func(c *checkpoint.Claim) error {
		for _, d := range c.Devices {
			if d.MIG == nil {
				continue
			}
			if d.MIG.Created {
				if m, ok := live[d.MIG.UUID]; ok {
					if err := destroy(d.GPUUUID, m); err != nil {
						return fmt.Errorf("claim %s: destroy MIG device %s: %w", c.UID, d.MIG.UUID, err)
					}
				}
				continue
			}
			if c.State == checkpoint.PrepareStarted && d.MIG.UUID == "" {
				// Created just before a crash, not yet recorded: the live
				// instance at the planned placement that nobody owns.
				if m, ok := at[[3]any{d.GPUUUID, d.MIG.ProfileID, d.MIG.Start}]; ok && !owned[m.UUID] {
					if _, still := live[m.UUID]; still {
						if err := destroy(d.GPUUUID, m); err != nil {
							return fmt.Errorf("claim %s: destroy unrecorded MIG device %s: %w", c.UID, m.UUID, err)
						}
					}
				}
			}
		}
		if err := restoreTimeSlices(ctx, gpus, c); err != nil {
			return fmt.Errorf("claim %s: %w", c.UID, err)
		}
		if err := stopMPS(ctx, daemons, c); err != nil {
			return fmt.Errorf("claim %s: %w", c.UID, err)
		}
		if err := specs.DeleteClaimSpec(c.UID); err != nil {
			return fmt.Errorf("claim %s: delete CDI spec: %w", c.UID, err)
		}
		delete(cp.Claims, c.UID)
		undone[c.UID] = true
		return nil
	}

	for _, uid := range sortedKeys(cp.Claims) {
		c := cp.Claims[uid]
		if c.State != checkpoint.PrepareCompleted {
			if err := undo(c); err != nil {
				return nil, rep, err
			}
			rep.RolledBack = append(rep.RolledBack, uid)
			continue
		}
		if missing := missingMIG(c, live); missing != "" {
			logger.Info("Prepared claim lost a MIG device (node rebooted?); forgetting it so the next prepare starts afresh", "claimUID", uid, "mig", missing)
			if err := undo(c); err != nil {
				return nil, rep, err
			}
			rep.Dropped = append(rep.Dropped, uid)
			continue
		}
		if uuids := mpsUUIDs(c); len(uuids) > 0 && daemons != nil && !daemons.Running(uid) {
			logger.Info("Prepared claim's MPS control daemon is gone (node rebooted?); starting it again", "claimUID", uid)
			if err := daemons.Start(ctx, uid, uuids); err != nil {
				return nil, rep, fmt.Errorf("claim %s: restart MPS control daemon: %w", uid, err)
			}
			rep.MPSRestarted = append(rep.MPSRestarted, uid)
		}
		if !slices.Contains(specUIDs, uid) {
			if err := rewriteSpec(ctx, c, specs); err != nil {
				return nil, rep, fmt.Errorf("claim %s: rewrite CDI spec: %w", uid, err)
			}
			rep.SpecsRewritten = append(rep.SpecsRewritten, uid)
		}
	}
	for _, uid := range specUIDs {
		if _, ok := cp.Claims[uid]; !ok && !undone[uid] {
			if err := specs.DeleteClaimSpec(uid); err != nil {
				return nil, rep, fmt.Errorf("delete orphan CDI spec of %s: %w", uid, err)
			}
			rep.OrphanSpecs = append(rep.OrphanSpecs, uid)
		}
	}
	if daemons != nil {
		// The daemons of shared GPUs: one for every GPU with a share.
		shared := map[string]bool{}
		for _, c := range cp.Claims {
			for _, uuid := range sharedGPUs(c) {
				shared[sharedDaemon(uuid)] = true
			}
		}
		for _, key := range sortedKeys(shared) {
			if daemons.Running(key) {
				continue
			}
			logger.Info("The MPS control daemon of a shared GPU's shares is gone (node rebooted?); starting it again", "daemon", key)
			uuid := strings.TrimPrefix(key, sharedDaemonPrefix)
			if err := daemons.Start(ctx, key, []string{uuid}); err != nil {
				return nil, rep, fmt.Errorf("GPU %s: restart the MPS control daemon of its shares: %w", uuid, err)
			}
			rep.MPSRestarted = append(rep.MPSRestarted, key)
		}
		uids, err := daemons.Claims()
		if err != nil {
			return nil, rep, err
		}
		for _, uid := range uids {
			if _, ok := cp.Claims[uid]; ok || shared[uid] {
				continue
			}
			if err := daemons.Stop(ctx, uid); err != nil {
				return nil, rep, fmt.Errorf("stop orphan MPS control daemon of %s: %w", uid, err)
			}
			rep.OrphanMPS = append(rep.OrphanMPS, uid)
		}
	}
	return cp, rep, nil
}

// mpsUUIDs returns the UUIDs of a claim's MPS devices in the order its
// daemon is given them (by device name), or nil. Prepare and start-up
// reconciliation both start the daemon with it, and mpsEnv numbers the
// devices' memory limits by it.
func mpsUUIDs(c *checkpoint.Claim) []string {
	devs := slices.Clone(c.Devices)
	slices.SortFunc(devs, func(a, b checkpoint.Device) int { return strings.Compare(a.Name, b.Name) })
	var out []string
	for _, d := range devs {
		if claimMPS(d) {
			out = append(out, deviceUUID(d))
		}
	}
	return out
}

func missingMIG(c *checkpoint.Claim, live map[string]gpu.MIGInstance) string {
	for _, d := range c.Devices {
		if d.MIG != nil {
			if _, ok := live[d.MIG.UUID]; !ok {
				return d.MIG.UUID
			}
		}
	}
	return ""
}

// cdiDevices turns a claim record into CDI devices with their annotations.
func cdiDevices(rec *checkpoint.Claim) ([]cdi.Device, error) {
	out := make([]cdi.Device, 0, len(rec.Devices))
	for _, d := range rec.Devices {
		ann, err := deviceAnnotation(rec, d)
		if err != nil {
			return nil, err
		}
		cd := cdi.Device{Name: cdiName(d), Request: d.Requests[0], GPUMinor: d.GPUMinor, UUID: d.GPUUUID, Env: d.Env, Annotations: ann}
		if d.MPSDir != "" {
			cd.Mounts = []cdi.Mount{
				// The CUDA clients connect through pipe/; only the daemon
				// and its servers, host processes, write log/.
				{HostPath: mps.PipeDirIn(d.MPSDir), ContainerPath: mps.ContainerPipeDir},
				{HostPath: mps.LogDirIn(d.MPSDir), ContainerPath: mps.ContainerLogDir, ReadOnly: true},
			}
		}
		if d.MIG != nil {
			cd.UUID = d.MIG.UUID
			cd.MIG = &cdi.MIGDevice{GIID: d.MIG.GIID, CIID: d.MIG.CIID}
		}
		out = append(out, cd)
	}
	return out, nil
}

// cdiName is the device's name in its claim's CDI spec: its name in the
// ResourceSlice, and for a share also its share ID, as one claim may hold
// two shares of the same GPU.
func cdiName(d checkpoint.Device) string {
	if d.ShareID != "" {
		return d.Name + "-" + d.ShareID
	}
	return d.Name
}

func rewriteSpec(ctx context.Context, c *checkpoint.Claim, specs CDI) error {
	devs, err := cdiDevices(c)
	if err != nil {
		return err
	}
	_, err = specs.WriteClaimSpec(ctx, c.UID, devs)
	return err
}

// rebuildClaim recovers a prepared claim from its CDI spec's annotations.
func rebuildClaim(uid string, specs ReconcileCDI) (*checkpoint.Claim, error) {
	anns, err := specs.DeviceAnnotations(uid)
	if err != nil {
		return nil, err
	}
	rec := &checkpoint.Claim{UID: uid, State: checkpoint.PrepareCompleted}
	for _, name := range sortedKeys(anns) {
		raw, ok := anns[name][names.PreparedDeviceAnnotation]
		if !ok {
			return nil, fmt.Errorf("device %s of claim %s has no %s annotation", name, uid, names.PreparedDeviceAnnotation)
		}
		var pd preparedDevice
		if err := json.Unmarshal([]byte(raw), &pd); err != nil {
			return nil, fmt.Errorf("device %s of claim %s: decode annotation: %w", name, uid, err)
		}
		rec.Namespace, rec.Name = pd.Namespace, pd.Claim
		pd.Device.CDIDeviceIDs = []string{cdi.DeviceID(uid, cdiName(pd.Device))}
		rec.Devices = append(rec.Devices, pd.Device)
	}
	return rec, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
