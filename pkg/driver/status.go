package driver

import (
	"context"
	"fmt"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	statusv1 "github.com/gpu-dra/gpu-dra-driver/api/status/v1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/claimstatus"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// identity is what the plugin tells the cluster about the devices it
// prepared: the claims' status.devices entries (pkg/claimstatus) and the
// per-device info metric. Both are refreshed after every prepare and
// unprepare and after every health change; neither can fail a prepare.
type identity struct {
	// infoMu orders the info metric's updates: each one sets it from a
	// snapshot taken under it, so an older snapshot never wins.
	infoMu sync.Mutex

	mu sync.Mutex
	// status is nil without a Kubernetes client (unit tests), and before
	// the driver starts it.
	status *claimstatus.Writer
	// taints are the health taints at the last refreshHealth; nil before
	// the first.
	taints map[healthTaint]bool
	// pods are the names of the pods each claim is reserved for, by claim
	// UID, as the kubelet's prepare call or the last status write saw them.
	pods map[string][]string
}

// startIdentity starts the status writer and queues every claim prepared
// before the plugin started, so their status is current after a restart.
func (d *Driver) startIdentity(ctx context.Context, cp *checkpoint.Checkpoint) {
	if d.cfg.KubeClient != nil {
		w := claimstatus.New(claimstatus.Options{
			Client: d.cfg.KubeClient.ResourceV1(), DriverName: names.DriverName, FieldManager: names.StatusFieldManager,
			Source: d, Applied: d.claimApplied,
		})
		w.Start(ctx)
		d.identity.mu.Lock()
		d.identity.status = w
		d.identity.mu.Unlock()
	}
	d.claimsChangedIn(cp, refsOf(cp))
}

// claimsPrepared records the pods of the claims prepared successfully and
// updates their status and the metrics.
func (d *Driver) claimsPrepared(claims []*resourceapi.ResourceClaim, results map[types.UID]kubeletplugin.PrepareResult) {
	var refs []claimstatus.Ref
	d.identity.mu.Lock()
	for _, c := range claims {
		if results[c.UID].Err != nil {
			continue
		}
		if d.identity.pods == nil {
			d.identity.pods = map[string][]string{}
		}
		d.identity.pods[string(c.UID)] = reservedPods(c)
		refs = append(refs, claimstatus.Ref{Namespace: c.Namespace, Name: c.Name, UID: string(c.UID)})
	}
	d.identity.mu.Unlock()
	d.claimsChanged(refs)
}

// claimsUnprepared clears the status of unprepared claims.
func (d *Driver) claimsUnprepared(claims []kubeletplugin.NamespacedObject) {
	refs := make([]claimstatus.Ref, 0, len(claims))
	for _, c := range claims {
		refs = append(refs, claimstatus.Ref{Namespace: c.Namespace, Name: c.Name, UID: string(c.UID)})
	}
	d.claimsChanged(refs)
}

// healthChangedIdentity rewrites every prepared claim's status: its
// Healthy conditions may have changed.
func (d *Driver) healthChangedIdentity() {
	cp := d.preparer.Snapshot()
	d.claimsChangedIn(cp, refsOf(cp))
}

// claimsChanged queues the status writes of refs and refreshes what is
// derived from the prepared claims: the pods known of them, the metrics.
func (d *Driver) claimsChanged(refs []claimstatus.Ref) {
	d.claimsChangedIn(d.preparer.Snapshot(), refs)
}

// claimsChangedIn is claimsChanged with cp, a snapshot of the prepared
// claims taken after the change.
func (d *Driver) claimsChangedIn(cp *checkpoint.Checkpoint, refs []claimstatus.Ref) {
	d.identity.mu.Lock()
	for uid := range d.identity.pods {
		if cp.Claims[uid] == nil {
			delete(d.identity.pods, uid)
		}
	}
	w := d.identity.status
	d.identity.mu.Unlock()
	d.refreshDeviceInfo(cp)
	if w != nil {
		w.Update(refs...)
	}
}

// claimApplied learns a claim's pods from what the API server returned
// after a status write: after a restart, the kubelet's prepare call that
// named them is gone.
func (d *Driver) claimApplied(c *resourceapi.ResourceClaim) {
	if d.preparer.Claim(string(c.UID)) == nil {
		return
	}
	pods := reservedPods(c)
	d.identity.mu.Lock()
	prev := d.identity.pods[string(c.UID)]
	if d.identity.pods == nil {
		d.identity.pods = map[string][]string{}
	}
	d.identity.pods[string(c.UID)] = pods
	d.identity.mu.Unlock()
	if !slices.Equal(prev, pods) {
		d.refreshDeviceInfo(d.preparer.Snapshot())
	}
}

// refreshDeviceInfo sets the prepared-claims metrics from cp, a snapshot
// of the prepared claims now.
func (d *Driver) refreshDeviceInfo(cp *checkpoint.Checkpoint) {
	d.identity.infoMu.Lock()
	defer d.identity.infoMu.Unlock()
	d.cfg.Metrics.setPrepared(cp)
	d.cfg.Metrics.setDeviceInfo(d.cfg.NodeName, cp, d.podsOf)
}

func (d *Driver) podsOf(uid string) []string {
	d.identity.mu.Lock()
	defer d.identity.mu.Unlock()
	return d.identity.pods[uid]
}

// reservedPods are the names of the pods a claim is reserved for.
func reservedPods(c *resourceapi.ResourceClaim) []string {
	var out []string
	for _, r := range c.Status.ReservedFor {
		if r.APIGroup == "" && r.Resource == "pods" {
			out = append(out, r.Name)
		}
	}
	slices.Sort(out)
	return out
}

func refsOf(cp *checkpoint.Checkpoint) []claimstatus.Ref {
	refs := make([]claimstatus.Ref, 0, len(cp.Claims))
	for _, c := range cp.Claims {
		refs = append(refs, claimstatus.Ref{Namespace: c.Namespace, Name: c.Name, UID: c.UID})
	}
	return refs
}

// PreparedDevices implements claimstatus.Source: the devices of a claim
// whose preparation completed, with their identity and health now.
func (d *Driver) PreparedDevices(uid string) ([]claimstatus.Device, bool) {
	c := d.preparer.Claim(uid)
	if c == nil || c.State != checkpoint.PrepareCompleted {
		return nil, false
	}
	inv, _ := d.state.current()
	out := make([]claimstatus.Device, 0, len(c.Devices))
	for _, dev := range c.Devices {
		if dev.Pool != d.cfg.NodeName {
			continue
		}
		status, msg := d.deviceHealth(inv, dev)
		out = append(out, claimstatus.Device{
			Pool: dev.Pool, Name: dev.Name, ShareID: dev.ShareID,
			Data: deviceStatus(inv, dev), Health: conditionStatus(status), HealthMessage: msg,
		})
	}
	return out, true
}

// deviceStatus is the status data of a prepared device.
func deviceStatus(inv *gpu.Inventory, dev checkpoint.Device) statusv1.DeviceStatus {
	s := statusv1.DeviceStatus{
		GPU:          statusv1.GPU{UUID: dev.GPUUUID, Minor: dev.GPUMinor},
		MPS:          dev.MPSDir != "",
		AdminAccess:  dev.AdminAccess,
		CDIDeviceIDs: dev.CDIDeviceIDs,
	}
	if p, ok := names.ParseDevice(dev.Name); ok {
		s.Type = p.Type
	}
	if inv != nil {
		if i := slices.IndexFunc(inv.GPUs, func(g gpu.GPU) bool { return g.UUID == dev.GPUUUID }); i >= 0 {
			s.GPU.PCIBusID, s.GPU.ProductName = inv.GPUs[i].PCIBusID, inv.GPUs[i].Name
		}
	}
	if m := dev.MIG; m != nil {
		s.MIG = &statusv1.MIG{UUID: m.UUID, Profile: m.Profile, GPUInstanceID: m.GIID, ComputeInstanceID: m.CIID,
			PlacementStart: m.Start, PlacementSize: m.Size}
	}
	if dev.Share != nil {
		s.Share = &statusv1.Share{ID: dev.ShareID, MemoryBytes: dev.Share.MemoryBytes, ComputePercent: dev.Share.ComputePercent}
	}
	return s
}

func conditionStatus(h kubeletplugin.HealthStatus) metav1.ConditionStatus {
	switch h {
	case kubeletplugin.HealthStatusHealthy:
		return metav1.ConditionTrue
	case kubeletplugin.HealthStatusUnhealthy:
		return metav1.ConditionFalse
	}
	return metav1.ConditionUnknown
}

// healthTaint is one health taint of a GPU (mig empty) or MIG device.
type healthTaint struct {
	gpu, mig, key, value, effect string
}

// refreshHealth sets the health taint metric from the taints now, and
// records a node Event for every taint that appeared or went since the
// last call (none on the first: after a restart, the taints found are not
// news).
func (d *Driver) refreshHealth(ctx context.Context) {
	if d.state.taints == nil {
		return
	}
	gpuTaints, migTaints := d.state.taints()
	inv, _ := d.state.current()
	parentOf := func(migUUID string) string {
		if inv != nil {
			for _, g := range inv.GPUs {
				for _, m := range g.MIGInstances {
					if m.UUID == migUUID {
						return g.UUID
					}
				}
			}
		}
		for _, c := range d.preparer.Snapshot().Claims {
			for _, dev := range c.Devices {
				if dev.MIG != nil && dev.MIG.UUID == migUUID {
					return dev.GPUUUID
				}
			}
		}
		return ""
	}
	d.cfg.Metrics.setHealthTaints(d.cfg.NodeName, gpuTaints, migTaints, parentOf)

	now := map[healthTaint]bool{}
	for uuid, ts := range gpuTaints {
		for _, t := range ts {
			now[healthTaint{uuid, "", t.Key, t.Value, string(t.Effect)}] = true
		}
	}
	for uuid, ts := range migTaints {
		for _, t := range ts {
			now[healthTaint{parentOf(uuid), uuid, t.Key, t.Value, string(t.Effect)}] = true
		}
	}
	d.identity.mu.Lock()
	prev, first := d.identity.taints, d.identity.taints == nil
	d.identity.taints = now
	d.identity.mu.Unlock()
	if first {
		return
	}
	for t := range now {
		if !prev[t] {
			d.healthEvent(ctx, inv, t, corev1.EventTypeWarning, names.EventHealthTaintAdded, "added")
		}
	}
	for t := range prev {
		if !now[t] {
			d.healthEvent(ctx, inv, t, corev1.EventTypeNormal, names.EventHealthTaintRemoved, "removed")
		}
	}
}

// healthEvent records a node Event about one GPU's health taint.
func (d *Driver) healthEvent(ctx context.Context, inv *gpu.Inventory, t healthTaint, eventType, reason, what string) {
	minor := -1
	if inv != nil {
		if i := slices.IndexFunc(inv.GPUs, func(g gpu.GPU) bool { return g.UUID == t.gpu }); i >= 0 {
			minor = inv.GPUs[i].Minor
		}
	}
	if minor < 0 {
		return
	}
	taint := t.key
	if t.value != "" {
		taint += "=" + t.value
	}
	taint += ":" + t.effect
	on := "GPU " + t.gpu
	if t.mig != "" {
		on = "MIG device " + t.mig
	}
	d.nodeEvent(ctx, eventType, reason, names.GPUEventMessage(minor, fmt.Sprintf("health taint %s %s on %s", taint, what, on)))
}
