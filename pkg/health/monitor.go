package health

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// Key names a condition; its taint key is names.HealthTaintKey(Key).
type Key string

// The condition keys.
const (
	KeyXID         Key = "xid"
	KeyECC         Key = "ecc"
	KeyGPULost     Key = "gpu-lost"
	KeyThermal     Key = "thermal"
	KeyUnmonitored Key = "unmonitored"
)

// Condition is one cause of ill health of a GPU, or of one MIG device on
// it when MIG is set. There is at most one per (GPU, MIG, Key): the most
// serious cause seen wins.
type Condition struct {
	GPU    string    `json:"gpu"`
	MIG    string    `json:"mig,omitempty"`
	Key    Key       `json:"key"`
	Value  string    `json:"value"`
	Class  Class     `json:"class"`
	Sticky bool      `json:"sticky"`
	Since  time.Time `json:"since"`
	// goneSince is when the cause of a transient condition was first seen
	// gone; zero while it is present.
	goneSince time.Time
}

func (c *Condition) String() string {
	return fmt.Sprintf("%s=%s (%s)", c.Key, c.Value, c.Class)
}

// check tells whether a condition read back from the store is one the
// monitor could have raised: its taint and health follow from its class
// and key, and a condition of no GPU would never be cleared.
func (c *Condition) check() error {
	switch {
	case c.GPU == "":
		return fmt.Errorf("health condition %s names no GPU", c)
	case c.Class.rank() == 0:
		return fmt.Errorf("health condition %s of GPU %s: class %q is not Info, Degraded or Fatal", c, c.GPU, c.Class)
	}
	switch c.Key {
	case KeyXID, KeyECC, KeyGPULost, KeyThermal, KeyUnmonitored:
		return nil
	}
	return fmt.Errorf("health condition %s of GPU %s: unknown key %q", c, c.GPU, c.Key)
}

type condID struct {
	gpu, mig string
	key      Key
}

// Source is what the monitor needs of the GPUs: *nvmlnode.Node.
type Source interface {
	WatchEvents(ctx context.Context, handle func(gpu.Event)) error
	Probe(ctx context.Context) ([]gpu.Reading, error)
}

// Status is a device's health as kubelet shows it in pod status.
type Status string

// The statuses of KEP-4680.
const (
	Healthy   Status = "Healthy"
	Unhealthy Status = "Unhealthy"
	Unknown   Status = "Unknown"
)

// Monitor keeps the health conditions of a node's GPUs. Its methods are
// safe for concurrent use.
type Monitor struct {
	policy Policy
	src    Source
	store  *Store
	now    func() time.Time
	// onChange is called, without the lock, after the taints changed.
	onChange func()

	mu    sync.Mutex
	conds map[condID]*Condition
	// byIndex maps NVML index to UUID, for readings of lost GPUs that
	// carry no UUID.
	byIndex map[int]string
	// migs maps (GPU UUID, GI, CI) to the MIG device that has those IDs
	// now: the last inventory's, updated by the creates and destroys the
	// plugin made since (MIGCreated, MIGDestroyed). NVML hands a freed
	// GI or CI ID to the next instance, so an entry is replaced, never
	// merged: a stale one would blame a destroyed device for the next
	// one's faults. recent holds, by IDs, the last such change, until an
	// inventory read after it makes it redundant; an inventory read
	// before it (a refresh racing a prepare) does not undo it.
	migs   map[migID]string
	recent map[migID]migChange
	// lost are the GPUs the last inventory found fallen off the bus.
	lost map[string]bool
	// wasLost is what the previous probe saw, for reset detection;
	// lastECC too, only to log a volatile ECC counter that went back.
	wasLost map[string]bool
	lastECC map[string]uint64
	// eventsDown is set while NVML events cannot be watched.
	eventsDown bool
	// unsaved is set while the last save of the sticky conditions failed
	// (a full or read-only disk): every probe tries again, since no change
	// may come to save them before the plugin restarts and forgets them.
	unsaved bool
	// closed is set by Close: the store is no longer written.
	closed bool

	// running counts the goroutines of Start.
	running sync.WaitGroup
}

type migID struct {
	gpu    string
	gi, ci int
}

// migChange is a MIG device the plugin created (alive) or destroyed, and
// when the monitor heard of it.
type migChange struct {
	uuid  string
	alive bool
	at    time.Time
}

// applyTo makes migs show the change.
func (c migChange) applyTo(migs map[migID]string, id migID) {
	switch {
	case c.alive:
		migs[id] = c.uuid
	case c.uuid == "" || migs[id] == c.uuid:
		delete(migs, id)
	}
}

// Options configure a Monitor.
type Options struct {
	Policy Policy
	Source Source
	// Store persists sticky conditions; nil keeps them in memory only.
	Store *Store
	// BootID is the node's boot ID: sticky conditions from another boot
	// are dropped, since a reboot resets every GPU.
	BootID string
	// OnChange is called after the taints changed.
	OnChange func()
	// Now defaults to time.Now. The times given to SetInventory must come
	// from the same clock.
	Now func() time.Time
}

// NewMonitor returns a monitor with the persisted sticky conditions of
// this boot.
func NewMonitor(ctx context.Context, opts Options) (*Monitor, error) {
	m := &Monitor{
		policy: opts.Policy, src: opts.Source, store: opts.Store, now: opts.Now, onChange: opts.OnChange,
		conds: map[condID]*Condition{}, byIndex: map[int]string{}, migs: map[migID]string{}, recent: map[migID]migChange{},
		wasLost: map[string]bool{}, lastECC: map[string]uint64{},
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.onChange == nil {
		m.onChange = func() {}
	}
	if err := m.policy.Validate(); err != nil {
		return nil, fmt.Errorf("health policy: %w", err)
	}
	if m.store == nil {
		return m, nil
	}
	logger := klog.FromContext(ctx)
	saved, err := m.store.Load()
	switch {
	case errors.Is(err, ErrCorrupt):
		logger.Error(err, "Health state unreadable; sticky health conditions of before are forgotten")
	case err != nil:
		return nil, err
	}
	if saved.BootID != "" && saved.BootID != opts.BootID {
		logger.Info("Node rebooted: its GPUs were reset, sticky health conditions dropped", "conditions", len(saved.Conditions))
		saved = &Saved{}
	}
	for i := range saved.Conditions {
		c := saved.Conditions[i]
		if err := c.check(); err != nil {
			logger.Error(err, "Dropping a saved health condition that is not valid")
			continue
		}
		m.conds[condID{c.GPU, c.MIG, c.Key}] = &c
	}
	for uuid, n := range saved.VolatileECC {
		m.lastECC[uuid] = n
	}
	m.store.bootID = opts.BootID
	if len(m.conds) > 0 {
		logger.Info("Sticky health conditions restored", "conditions", m.describeLocked())
	}
	return m, nil
}

// SetInventory tells the monitor which GPUs and MIG devices exist, so an
// XID that NVML attributes to a MIG instance taints that instance's
// device, and a lost GPU is known by its UUID. readAt is when the
// inventory started to be read, on the monitor's clock: the plugin's own
// creates and destroys since then are kept over what it lists.
//
// The conditions of MIG devices that no longer exist are dropped: their
// taints would fall on no device, and the map of conditions would grow
// with every instance ever destroyed. A lost GPU's MIG devices are kept.
func (m *Monitor) SetInventory(ctx context.Context, inv *gpu.Inventory, readAt time.Time) {
	m.mu.Lock()
	before := m.fingerprintLocked()
	migs, lost := map[migID]string{}, map[string]bool{}
	// A GPU that could not be read is as unknown as a lost one: its MIG
	// devices are kept too.
	for _, u := range inv.Unreadable {
		if u.UUID != "" {
			lost[u.UUID] = true
			for id, uuid := range m.migs {
				if id.gpu == u.UUID {
					migs[id] = uuid
				}
			}
		}
	}
	for _, g := range inv.GPUs {
		if g.UUID != "" {
			m.byIndex[g.Index] = g.UUID
		}
		if g.Lost {
			// Its MIG devices are unknown, not gone: keep what was
			// known until it is back (a reset, clearing them anyway).
			lost[g.UUID] = true
			for id, uuid := range m.migs {
				if id.gpu == g.UUID {
					migs[id] = uuid
				}
			}
			continue
		}
		for _, inst := range g.MIGInstances {
			migs[migID{g.UUID, inst.GIID, inst.CIID}] = inst.UUID
		}
	}
	for id, c := range m.recent {
		if c.at.Before(readAt) {
			delete(m.recent, id)
			continue
		}
		c.applyTo(migs, id)
	}
	m.migs, m.lost = migs, lost
	m.unlockChanged(ctx, before, m.dropGoneMIGsLocked(ctx))
}

// MIGCreated tells the monitor that the plugin created a MIG device, so
// that an event naming its IDs is blamed on it at once, not on the device
// that had the IDs before.
func (m *Monitor) MIGCreated(inst gpu.MIGInstance) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id := migID{inst.ParentUUID, inst.GIID, inst.CIID}
	c := migChange{uuid: inst.UUID, alive: true, at: m.now()}
	c.applyTo(m.migs, id)
	m.recent[id] = c
}

// MIGDestroyed tells the monitor that the plugin destroyed a MIG device
// (ref.UUID, or whichever had the IDs when it is empty): its IDs name
// nothing until an instance is created with them, and its conditions are
// dropped.
func (m *Monitor) MIGDestroyed(ctx context.Context, ref gpu.MIGRef) {
	m.mu.Lock()
	before := m.fingerprintLocked()
	id := migID{ref.ParentUUID, ref.GIID, ref.CIID}
	if cur, ok := m.migs[id]; ok && ref.UUID != "" && cur != ref.UUID {
		// The device was gone already and another has its IDs: the
		// change to remember is that one's creation.
		m.mu.Unlock()
		return
	}
	c := migChange{uuid: ref.UUID, at: m.now()}
	c.applyTo(m.migs, id)
	m.recent[id] = c
	m.unlockChanged(ctx, before, m.dropGoneMIGsLocked(ctx))
}

// dropGoneMIGsLocked removes the conditions of MIG devices not in migs,
// except on lost GPUs, and reports whether it removed any.
func (m *Monitor) dropGoneMIGsLocked(ctx context.Context) bool {
	live := make(map[string]bool, len(m.migs))
	for _, uuid := range m.migs {
		live[uuid] = true
	}
	dropped := false
	for id, c := range m.conds {
		if id.mig != "" && !live[id.mig] && !m.lost[id.gpu] {
			klog.FromContext(ctx).Info("MIG device gone: its health condition is dropped", "gpu", id.gpu, "mig", id.mig, "condition", c.String())
			delete(m.conds, id)
			dropped = true
		}
	}
	return dropped
}

// unlockChanged saves the conditions if save is set or the taints
// changed, and unlocks m.mu, which the caller holds; if the
// taints differ from before, it then calls onChange.
func (m *Monitor) unlockChanged(ctx context.Context, before string, save bool) {
	changed := m.fingerprintLocked() != before
	if save || changed {
		m.saveLocked(ctx)
	}
	m.mu.Unlock()
	if changed {
		m.onChange()
	}
}

// Start watches events and probes every Policy.ProbeInterval in the
// background until ctx ends; Close waits for that. Call Probe first, so
// that the first slices already carry what is wrong.
func (m *Monitor) Start(ctx context.Context) {
	m.running.Add(2)
	go func() {
		defer m.running.Done()
		m.watchEvents(ctx)
	}()
	go func() {
		defer m.running.Done()
		ticker := time.NewTicker(m.policy.ProbeInterval.Duration)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
				m.Probe(ctx)
			}
		}
	}()
}

// Close waits until the goroutines of Start have returned (the context
// given to Start must have ended), so that what they saw until then is
// saved, and then stops writing the store: conditions raised later, by
// any caller, stay in memory. Call it before another process may take
// over the store, as a successor plugin does at a handover.
func (m *Monitor) Close() {
	m.running.Wait()
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
}

// watchEvents keeps an NVML event watch running, with backoff after
// failures; while it is down every GPU is unmonitored.
func (m *Monitor) watchEvents(ctx context.Context) {
	logger := klog.FromContext(ctx)
	backoff := time.Second
	for ctx.Err() == nil {
		m.setEventsDown(false)
		err := m.src.WatchEvents(ctx, func(e gpu.Event) { m.Observe(ctx, e) })
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = fmt.Errorf("event watch ended")
		}
		logger.Error(err, "Cannot watch NVML events; GPUs are unmonitored until it works", "retryIn", backoff)
		m.setEventsDown(true)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (m *Monitor) setEventsDown(down bool) {
	m.mu.Lock()
	m.eventsDown = down
	m.mu.Unlock()
}

// Observe records an NVML event.
func (m *Monitor) Observe(ctx context.Context, e gpu.Event) {
	logger := klog.FromContext(ctx)
	var c Condition
	switch e.Kind {
	case gpu.EventXID:
		c = Condition{Key: KeyXID, Value: strconv.FormatUint(e.XID, 10), Class: m.policy.ClassifyXID(e.XID), Sticky: true}
	case gpu.EventDoubleBitECC:
		c = Condition{Key: KeyECC, Value: "double-bit", Class: m.policy.DoubleBitECC, Sticky: true}
	case gpu.EventGPULost:
		c = Condition{Key: KeyGPULost, Value: "fell-off-bus", Class: m.policy.GPULost}
	default:
		return
	}
	c.GPU = e.GPUUUID
	if c.Class == ClassIgnore {
		logger.V(2).Info("GPU event ignored by the health policy", "gpu", e.GPUUUID, "event", e.Kind, "xid", e.XID, "gi", e.GIID, "ci", e.CIID)
		return
	}
	m.mu.Lock()
	if e.GIID >= 0 {
		if uuid := m.migOfLocked(e); uuid != "" {
			c.MIG = uuid
		} else {
			logger.Info("GPU event names an unknown MIG instance; the whole GPU is affected", "gpu", e.GPUUUID, "gi", e.GIID, "ci", e.CIID)
		}
	}
	before := m.fingerprintLocked()
	m.raiseLocked(c)
	// A repeat of what is already recorded is not written again: a
	// tenant's work can raise XIDs as fast as NVML reports them.
	if m.fingerprintLocked() != before {
		logger.Info("GPU health event", "gpu", e.GPUUUID, "mig", c.MIG, "condition", c.String())
	} else {
		logger.V(2).Info("GPU health event already recorded", "gpu", e.GPUUUID, "mig", c.MIG, "condition", c.String())
	}
	m.unlockChanged(ctx, before, false)
}

// migOfLocked names the MIG device an event is attributed to: the one
// with its GPU and compute instance IDs, else the only one of its GPU
// instance (NVML attributes some faults to a GPU instance only, with no
// compute instance); "" if none or several.
func (m *Monitor) migOfLocked(e gpu.Event) string {
	if uuid, ok := m.migs[migID{e.GPUUUID, e.GIID, e.CIID}]; ok {
		return uuid
	}
	found := ""
	for id, uuid := range m.migs {
		if id.gpu == e.GPUUUID && id.gi == e.GIID {
			if found != "" {
				return ""
			}
			found = uuid
		}
	}
	return found
}

// raiseLocked records that c's cause is present now.
func (m *Monitor) raiseLocked(c Condition) {
	id := condID{c.GPU, c.MIG, c.Key}
	old, ok := m.conds[id]
	if !ok {
		c.Since = m.now()
		m.conds[id] = &c
		return
	}
	old.goneSince = time.Time{}
	if c.Class.rank() > old.Class.rank() {
		old.Value, old.Class, old.Since = c.Value, c.Class, m.now()
	}
	old.Sticky = old.Sticky || c.Sticky
}

// Probe reads every GPU once and updates the probe-driven conditions.
func (m *Monitor) Probe(ctx context.Context) {
	logger := klog.FromContext(ctx)
	readings, err := m.src.Probe(ctx)
	if err != nil {
		if ctx.Err() == nil {
			logger.Error(err, "Health probe failed; every GPU is unmonitored until it works")
			m.markUnreadable(ctx)
		}
		return
	}
	m.mu.Lock()
	before := m.fingerprintLocked()
	now := m.now()
	for _, r := range readings {
		uuid := r.UUID
		if uuid == "" {
			uuid = m.byIndex[r.Index]
		}
		if uuid == "" {
			continue
		}
		m.byIndex[r.Index] = uuid
		present := m.presentLocked(uuid, r)
		if m.resetLocked(ctx, uuid, r) {
			logger.Info("GPU was reset: its sticky health conditions are cleared", "gpu", uuid)
			m.clearStickyLocked(uuid, now)
		}
		for id, c := range m.conds {
			if id.gpu != uuid || id.mig != "" || c.Sticky {
				continue
			}
			if _, ok := present[id.key]; ok {
				continue
			}
			if c.goneSince.IsZero() {
				c.goneSince = now
			}
			if now.Sub(c.goneSince) >= m.policy.ClearAfter.Duration {
				logger.Info("GPU health condition cleared", "gpu", uuid, "condition", c.String())
				delete(m.conds, id)
			}
		}
		for _, c := range present {
			if _, existed := m.conds[condID{c.GPU, "", c.Key}]; !existed {
				logger.Info("GPU health condition", "gpu", uuid, "condition", c.String())
			}
			m.raiseLocked(c)
		}
	}
	m.unlockChanged(ctx, before, m.unsaved)
}

// markUnreadable raises not-readable on every GPU known, after a probe
// that read none (NVML itself failing, as while the host driver is being
// replaced): the event watch is then most likely down too, and nothing
// would tell that their health is not watched. A later probe that reads
// a GPU clears it after ClearAfter, like any transient condition.
func (m *Monitor) markUnreadable(ctx context.Context) {
	m.mu.Lock()
	before := m.fingerprintLocked()
	if m.policy.Unmonitored != ClassIgnore {
		for _, uuid := range m.byIndex {
			m.raiseLocked(Condition{GPU: uuid, Key: KeyUnmonitored, Value: "not-readable", Class: m.policy.Unmonitored})
		}
	}
	m.unlockChanged(ctx, before, m.unsaved)
}

// presentLocked returns the causes a reading shows, by key.
func (m *Monitor) presentLocked(uuid string, r gpu.Reading) map[Key]Condition {
	p := m.policy
	out := map[Key]Condition{}
	add := func(key Key, value string, class Class, sticky bool) {
		if class == ClassIgnore {
			return
		}
		if old, ok := out[key]; ok && old.Class.rank() >= class.rank() {
			return
		}
		out[key] = Condition{GPU: uuid, Key: key, Value: value, Class: class, Sticky: sticky}
	}
	if m.eventsDown {
		add(KeyUnmonitored, "events-not-watched", p.Unmonitored, false)
	}
	switch {
	case r.Lost:
		add(KeyGPULost, "fell-off-bus", p.GPULost, false)
		return out
	case r.Err != nil:
		add(KeyUnmonitored, "not-readable", p.Unmonitored, false)
		return out
	}
	if r.SlowdownC > 0 {
		raiseAt := r.SlowdownC - p.ThermalMarginC
		holdAt := raiseAt
		if old, ok := m.conds[condID{uuid, "", KeyThermal}]; ok && !old.Sticky {
			holdAt -= p.ThermalHysteresisC
		}
		switch {
		case r.ShutdownC > 0 && r.TemperatureC >= r.ShutdownC:
			add(KeyThermal, "shutdown", p.ThermalShutdown, false)
		case r.TemperatureC >= raiseAt:
			add(KeyThermal, "slowdown", p.ThermalSlowdown, false)
		case r.TemperatureC >= holdAt:
			// Cooling, but not yet by the hysteresis: keep what is there.
			old := m.conds[condID{uuid, "", KeyThermal}]
			add(KeyThermal, old.Value, old.Class, false)
		}
	}
	if r.RemapFailure {
		add(KeyECC, "remap-failure", p.RemapFailure, true)
	}
	if r.RepairPending {
		add(KeyECC, "repair-pending", p.RepairPending, false)
	}
	return out
}

// resetLocked reports whether the GPU was reset since the last reading:
// it came back on the bus after it was lost.
//
// A volatile ECC counter that went back is not taken as a reset. NVML
// zeroes the volatile counters whenever the driver loads, and without
// persistence mode the driver loads whenever a compute app starts on an
// idle GPU (nvml.h, nvmlEccCounterType_t): a tenant's job can make the
// counter fall on a GPU that was never reset, and taking that for a reset
// would clear the fatal taint of memory that is still broken. NVML has no
// reset count to tell the two apart, so the fall is only logged; a reset
// that leaves the GPU on the bus is cleared by a reboot or an admin's
// clearance (docs/health.md, "Recovery").
func (m *Monitor) resetLocked(ctx context.Context, uuid string, r gpu.Reading) bool {
	reset := m.wasLost[uuid] && !r.Lost
	m.wasLost[uuid] = r.Lost
	if r.Lost || r.Err != nil {
		return reset
	}
	if last, ok := m.lastECC[uuid]; ok && r.VolatileUncorrectedECC < last && m.hasStickyLocked(uuid) {
		klog.FromContext(ctx).Info("Volatile uncorrectable-ECC counter went back (driver reloaded or GPU reset); not proof of a reset, so sticky health conditions stay until an admin clears them",
			"gpu", uuid, "was", last, "now", r.VolatileUncorrectedECC)
	}
	m.lastECC[uuid] = r.VolatileUncorrectedECC
	return reset
}

// hasStickyLocked reports whether the GPU or one of its MIG devices has a
// sticky condition.
func (m *Monitor) hasStickyLocked(uuid string) bool {
	for id, c := range m.conds {
		if id.gpu == uuid && c.Sticky {
			return true
		}
	}
	return false
}

// clearStickyLocked removes the sticky conditions of a GPU (every GPU for
// "") and of its MIG devices that were raised at or before t. A condition
// stamped after now was raised before the clock went back (or restored
// from such a time): it is older than anything happening now, so it
// counts as raised before t, lest it outlive every reset and clearance
// until the clock catches up.
func (m *Monitor) clearStickyLocked(gpuUUID string, t time.Time) int {
	n := 0
	now := m.now()
	for id, c := range m.conds {
		if c.Sticky && (gpuUUID == "" || id.gpu == gpuUUID) && (!c.Since.After(t) || c.Since.After(now)) {
			delete(m.conds, id)
			n++
		}
	}
	return n
}

// Clear removes the sticky conditions an admin has cleared: those of the
// GPU (every GPU for "") raised at or before t. It is idempotent, so the
// same clearance can be applied again.
func (m *Monitor) Clear(ctx context.Context, gpuUUID string, t time.Time) {
	m.mu.Lock()
	before := m.fingerprintLocked()
	n := m.clearStickyLocked(gpuUUID, t)
	changed := m.fingerprintLocked() != before
	if n > 0 {
		m.saveLocked(ctx)
	}
	m.mu.Unlock()
	if n > 0 {
		klog.FromContext(ctx).Info("Sticky health conditions cleared by an admin", "gpu", gpuUUID, "clearedAt", t, "conditions", n)
	}
	if changed {
		m.onChange()
	}
}

// Conditions returns a copy of every condition, sorted.
func (m *Monitor) Conditions() []Condition {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sortedLocked()
}

func (m *Monitor) sortedLocked() []Condition {
	out := make([]Condition, 0, len(m.conds))
	for _, c := range m.conds {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(x, y Condition) int {
		return cmp.Or(cmp.Compare(x.GPU, y.GPU), cmp.Compare(x.MIG, y.MIG), cmp.Compare(x.Key, y.Key))
	})
	return out
}

func (m *Monitor) describeLocked() string {
	var parts []string
	for _, c := range m.sortedLocked() {
		parts = append(parts, c.GPU+"/"+c.MIG+" "+c.String())
	}
	return strings.Join(parts, ", ")
}

// fingerprintLocked identifies the state that is published or persisted,
// to tell whether a change needs a republish and a save.
func (m *Monitor) fingerprintLocked() string {
	var b strings.Builder
	for _, c := range m.sortedLocked() {
		fmt.Fprintf(&b, "%s|%s|%s|%s|%s|%d|%t;", c.GPU, c.MIG, c.Key, c.Value, c.Class, c.Since.Unix(), c.Sticky)
	}
	return b.String()
}

func (m *Monitor) saveLocked(ctx context.Context) {
	if m.store == nil {
		return
	}
	if m.closed {
		klog.FromContext(ctx).V(2).Info("Health monitor closed; sticky health conditions not persisted")
		return
	}
	s := &Saved{VolatileECC: map[string]uint64{}}
	for _, c := range m.sortedLocked() {
		if c.Sticky {
			s.Conditions = append(s.Conditions, c)
		}
	}
	for uuid, n := range m.lastECC {
		s.VolatileECC[uuid] = n
	}
	err := m.store.Save(s)
	if err != nil {
		klog.FromContext(ctx).Error(err, "Cannot persist sticky health conditions; a plugin restart would forget them; retrying at every probe")
	} else if m.unsaved {
		klog.FromContext(ctx).Info("Sticky health conditions persisted again")
	}
	m.unsaved = err != nil
}

// Taints returns the device taints of the current conditions: by GPU
// UUID (for the GPU and every MIG device on it) and by MIG device UUID.
// A MIG device has a taint of a key its GPU has too only when its own
// condition is the more serious; the device's taint then replaces the
// GPU's of that key (devicemodel.Input.MIGTaints), so that a Fatal XID of
// the instance is not hidden by a Degraded one of the GPU.
func (m *Monitor) Taints() (gpuTaints, migTaints map[string][]resourceapi.DeviceTaint) {
	m.mu.Lock()
	defer m.mu.Unlock()
	gpuTaints, migTaints = map[string][]resourceapi.DeviceTaint{}, map[string][]resourceapi.DeviceTaint{}
	sorted := m.sortedLocked()
	for _, c := range sorted {
		effect, ok := m.policy.Effect(c.Class)
		if !ok || c.MIG != "" {
			continue
		}
		gpuTaints[c.GPU] = append(gpuTaints[c.GPU], taint(c, effect))
	}
	for _, c := range sorted {
		effect, ok := m.policy.Effect(c.Class)
		if !ok || c.MIG == "" {
			continue
		}
		if g, ok := m.conds[condID{c.GPU, "", c.Key}]; ok && g.Class.rank() >= c.Class.rank() {
			continue
		}
		migTaints[c.MIG] = append(migTaints[c.MIG], taint(c, effect))
	}
	return gpuTaints, migTaints
}

func taint(c Condition, effect resourceapi.DeviceTaintEffect) resourceapi.DeviceTaint {
	// The API server keeps seconds; so does the published copy, so that
	// comparing it with what was published finds no difference.
	added := metav1.NewTime(c.Since.Truncate(time.Second))
	return resourceapi.DeviceTaint{Key: names.HealthTaintKey(string(c.Key)), Value: c.Value, Effect: effect, TimeAdded: &added}
}

// DeviceHealth is the health of a device for pod status: the worst of the
// GPU's conditions and, for a MIG device (migUUID set), its own. Fatal is
// Unhealthy; a device whose health cannot be watched is Unknown; anything
// else is Healthy, with the conditions in the message.
func (m *Monitor) DeviceHealth(gpuUUID, migUUID string) (Status, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	status := Healthy
	var msgs []string
	for _, c := range m.sortedLocked() {
		if c.GPU != gpuUUID || (c.MIG != "" && c.MIG != migUUID) || c.Class == ClassIgnore {
			continue
		}
		msgs = append(msgs, c.String())
		switch {
		case c.Class == ClassFatal:
			status = Unhealthy
		case c.Key == KeyUnmonitored && status == Healthy:
			status = Unknown
		}
	}
	return status, strings.Join(msgs, ", ")
}
