package sim

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/google/uuid"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim/miguuid"
)

// Node is a simulated GPU node. It implements nvml.Interface; its mutable
// state is shared through the state files with every other Node opened on
// the same directory.
type Node struct {
	*server.Server
	model   string
	fabric  bool
	store   *store
	latency atomic.Pointer[Latencies]
	// eventWaits counts the waits on the node's event sets.
	eventWaits atomic.Int64
}

// EventWaits returns how many times an event set of this Node was waited
// on, for tests that check a watcher does not spin.
func (n *Node) EventWaits() int64 { return n.eventWaits.Load() }

var _ nvml.Interface = (*Node)(nil)

// DefaultTemperatureC is a simulated GPU's temperature until a test sets it.
const DefaultTemperatureC = 40

// Simulated temperature thresholds, as an H100 reports them.
const (
	SlowdownTemperatureC = 87
	ShutdownTemperatureC = 92
)

// Open opens the simulated node of the given model (see Models). With an
// empty stateDir the state lives in this process only and GPU UUIDs are
// derived from the model name; otherwise it is read from (or created in)
// stateDir, with GPU UUIDs fixed when it is created. Its latencies are
// those LatencyEnv sets, none by default.
func Open(modelName, stateDir string) (*Node, error) {
	lat, err := latenciesFromEnv()
	if err != nil {
		return nil, err
	}
	m, err := lookupModel(modelName)
	if err != nil {
		return nil, err
	}
	seed := modelName
	if stateDir != "" {
		seed = uuid.NewString()
	}
	initial := &State{Version: StateVersion, Model: modelName, Seed: seed}
	for i := range m.gpus {
		initial.GPUs = append(initial.GPUs, GPUState{UUID: gpuUUID(seed, i), TemperatureC: DefaultTemperatureC})
	}
	st, err := openStore(stateDir, initial)
	if err != nil {
		return nil, err
	}
	cur, err := st.state()
	if err != nil {
		return nil, err
	}
	if len(cur.GPUs) != len(m.gpus) {
		return nil, fmt.Errorf("simulated node state in %s has %d GPUs, model %s has %d", stateDir, len(cur.GPUs), modelName, len(m.gpus))
	}

	n := &Node{model: modelName, fabric: m.fabric, store: st}
	n.SetLatencies(lat)
	devices := make([]nvml.Device, len(m.gpus))
	for i, pm := range m.gpus {
		d := server.NewDeviceFromConfig(pm.config(), i)
		d.UUID = cur.GPUs[i].UUID
		d.PciBusID = busID(i)
		n.extendDevice(d, i)
		n.extendDeviceFabric(d, i)
		devices[i] = d
	}
	n.Server = server.NewServerWithGPUs(m.driverVersion, "12."+m.driverVersion, m.cudaVersion)
	n.Devices = devices
	n.SetMockFuncs()
	n.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return n.newEventSet(), nvml.SUCCESS }
	return n, nil
}

// Model returns the node's model name.
func (n *Node) Model() string { return n.model }

// State returns a copy of the node's current state.
func (n *Node) State() (*State, error) { return n.store.state() }

func gpuUUID(seed string, index int) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s/gpu/%d", seed, index)))
	u, _ := uuid.FromBytes(sum[:16])
	return "GPU-" + u.String()
}

// gpuState reads GPU index's state for an NVML call, which takes the
// liveGI returns the state of GPU instance id on GPU index as it is now,
// or ERROR_NOT_FOUND once it was destroyed.
func (n *Node) liveGI(index, id int) (*GIState, nvml.Return) {
	g, ret := n.gpuState(index)
	if ret != nvml.SUCCESS {
		return nil, ret
	}
	cur, _ := g.gi(id)
	if cur == nil {
		return nil, nvml.ERROR_NOT_FOUND
	}
	return cur, nvml.SUCCESS
}

// NVML call latency.
func (n *Node) gpuState(index int) (*GPUState, nvml.Return) {
	n.readDelay()
	g, err := n.store.gpus[index].read()
	if err != nil {
		return nil, nvml.ERROR_UNKNOWN
	}
	if g.Lost {
		return g, nvml.ERROR_GPU_IS_LOST
	}
	return g, nvml.SUCCESS
}

// mutate applies fn to GPU index's state under the GPU's lock; when fn
// succeeds, the change takes delay, during which the GPU takes no other
// change.
func (n *Node) mutate(index int, delay time.Duration, fn func(g *GPUState) nvml.Return) nvml.Return {
	result := nvml.SUCCESS
	err := n.store.gpus[index].update(delay, func(g *GPUState) error {
		if g.Lost {
			result = nvml.ERROR_GPU_IS_LOST
			return errAbort
		}
		result = fn(g)
		if result != nvml.SUCCESS {
			return errAbort
		}
		return nil
	})
	if err != nil && !errors.Is(err, errAbort) {
		return nvml.ERROR_UNKNOWN
	}
	return result
}

var errAbort = fmt.Errorf("abort")

func (n *Node) extendDevice(d *server.Device, index int) {
	cfg := d.Config
	d.GetUUIDFunc = func() (string, nvml.Return) {
		if ret := n.callError(index, "GetUUID"); ret != nvml.SUCCESS {
			return "", ret
		}
		return d.UUID, nvml.SUCCESS
	}
	d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		if ret := n.callError(index, "GetMemoryInfo"); ret != nvml.SUCCESS {
			return nvml.Memory{}, ret
		}
		return d.MemoryInfo, nvml.SUCCESS
	}
	d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) {
		p := nvml.PciInfo{PciDeviceId: cfg.PciDeviceId, Bus: uint32(dgxBusOrIndex(index))}
		for i, c := range []byte(d.PciBusID) {
			p.BusId[i] = int8(c)
		}
		return p, nvml.SUCCESS
	}
	d.IsMigDeviceHandleFunc = func() (bool, nvml.Return) { return false, nvml.SUCCESS }
	d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) {
		g, ret := n.gpuState(index)
		if ret != nvml.SUCCESS {
			return 0, ret
		}
		return uint32(g.TemperatureC), nvml.SUCCESS
	}
	d.GetTemperatureThresholdFunc = func(t nvml.TemperatureThresholds) (uint32, nvml.Return) {
		switch t {
		case nvml.TEMPERATURE_THRESHOLD_SLOWDOWN:
			return SlowdownTemperatureC, nvml.SUCCESS
		case nvml.TEMPERATURE_THRESHOLD_SHUTDOWN:
			return ShutdownTemperatureC, nvml.SUCCESS
		}
		return 0, nvml.ERROR_NOT_SUPPORTED
	}
	d.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) {
		g, ret := n.gpuState(index)
		if ret != nvml.SUCCESS {
			return 0, ret
		}
		if g.RetiredPagesPending {
			return nvml.FEATURE_ENABLED, nvml.SUCCESS
		}
		return nvml.FEATURE_DISABLED, nvml.SUCCESS
	}
	d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) {
		g, ret := n.gpuState(index)
		if ret != nvml.SUCCESS {
			return 0, 0, false, false, ret
		}
		return 0, 0, g.RetiredPagesPending, g.RowRemapFailure, nvml.SUCCESS
	}
	d.GetTotalEccErrorsFunc = func(errorType nvml.MemoryErrorType, counter nvml.EccCounterType) (uint64, nvml.Return) {
		g, ret := n.gpuState(index)
		if ret != nvml.SUCCESS {
			return 0, ret
		}
		if errorType == nvml.MEMORY_ERROR_TYPE_UNCORRECTED && counter == nvml.VOLATILE_ECC {
			return g.VolatileDBE, nvml.SUCCESS
		}
		return 0, nvml.SUCCESS
	}
	d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
		return nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError | nvml.EventTypeSingleBitEccError, nvml.SUCCESS
	}
	d.RegisterEventsFunc = func(types uint64, set nvml.EventSet) nvml.Return {
		es, ok := set.(*eventSet)
		if !ok {
			return nvml.ERROR_INVALID_ARGUMENT
		}
		// As with NVML, a GPU fallen off the bus takes no registration.
		if _, ret := n.gpuState(index); ret != nvml.SUCCESS {
			return ret
		}
		es.register(index, d, types)
		return nvml.SUCCESS
	}
	if !migCapable(cfg) {
		n.extendDeviceWithoutMIG(d, index)
		return
	}
	d.GetMigModeFunc = func() (int, int, nvml.Return) {
		g, ret := n.gpuState(index)
		if ret != nvml.SUCCESS {
			return 0, 0, ret
		}
		return g.MIGMode, pendingMIGMode(g), nvml.SUCCESS
	}
	// A MIG mode change needs a GPU reset on Ampere: NVML sets the pending
	// mode and reports the activation failed; the current mode changes at
	// the next reset (Node.Reset). Hopper and later change at once. NVML
	// on Ampere tries the reset itself, which fails while any process,
	// the driver's own NVML monitoring included, has the GPU open: a
	// driver never sees it succeed.
	// On Hopper and later a change is activated at once when the GPU is
	// idle; while another process holds it open (GPUState.Clients) NVML
	// leaves the mode pending and returns ERROR_IN_USE as the activation
	// status. Setting the current mode again cancels a pending change.
	resetToActivate := cfg.Architecture == nvml.DEVICE_ARCH_AMPERE
	// SetMigMode returns (activationStatus, ret), in go-nvml's order. When
	// the call fails NVML never writes the activation status, which go-nvml
	// then returns as its zero value, SUCCESS: a caller that read the two
	// in the wrong order would take a failed call for a success.
	d.SetMigModeFunc = func(mode int) (nvml.Return, nvml.Return) {
		if mode != nvml.DEVICE_MIG_ENABLE && mode != nvml.DEVICE_MIG_DISABLE {
			return nvml.SUCCESS, nvml.ERROR_INVALID_ARGUMENT
		}
		if g, ret := n.gpuState(index); ret == nvml.SUCCESS && g.MIGMode == mode && !g.MIGModePending {
			return nvml.SUCCESS, nvml.SUCCESS
		}
		activation := nvml.SUCCESS
		ret := n.mutate(index, n.Latencies().MIGModeChange, func(g *GPUState) nvml.Return {
			if len(g.GPUInstances) > 0 && mode != g.MIGMode {
				return nvml.ERROR_IN_USE
			}
			g.MIGModePending = mode != g.MIGMode
			switch {
			case !g.MIGModePending:
			case resetToActivate:
				activation = nvml.ERROR_RESET_REQUIRED
			case len(g.Clients) > 0:
				activation = nvml.ERROR_IN_USE
			default:
				g.MIGMode, g.MIGModePending = mode, false
			}
			return nvml.SUCCESS
		})
		if ret != nvml.SUCCESS {
			return nvml.SUCCESS, ret
		}
		return activation, nvml.SUCCESS
	}
	d.GetGpuInstancePossiblePlacementsFunc = func(info *nvml.GpuInstanceProfileInfo) ([]nvml.GpuInstancePlacement, nvml.Return) {
		pls, ok := cfg.MIGProfiles.GpuInstancePlacements[int(info.Id)]
		if !ok {
			return nil, nvml.ERROR_NOT_SUPPORTED
		}
		return append([]nvml.GpuInstancePlacement(nil), pls...), nvml.SUCCESS
	}
	d.CreateGpuInstanceWithPlacementFunc = func(info *nvml.GpuInstanceProfileInfo, placement *nvml.GpuInstancePlacement) (nvml.GpuInstance, nvml.Return) {
		return n.createGI(d, index, int(info.Id), placement)
	}
	d.CreateGpuInstanceFunc = func(info *nvml.GpuInstanceProfileInfo) (nvml.GpuInstance, nvml.Return) {
		return n.createGI(d, index, int(info.Id), nil)
	}
	d.GetGpuInstancesFunc = func(info *nvml.GpuInstanceProfileInfo) ([]nvml.GpuInstance, nvml.Return) {
		g, ret := n.gpuState(index)
		if ret != nvml.SUCCESS {
			return nil, ret
		}
		if g.MIGMode != nvml.DEVICE_MIG_ENABLE {
			return nil, nvml.ERROR_NOT_SUPPORTED
		}
		var out []nvml.GpuInstance
		for _, gi := range g.GPUInstances {
			if gi.ProfileID == int(info.Id) {
				out = append(out, n.gpuInstance(d, index, gi))
			}
		}
		return out, nvml.SUCCESS
	}
	d.GetGpuInstanceByIdFunc = func(id int) (nvml.GpuInstance, nvml.Return) {
		g, ret := n.gpuState(index)
		if ret != nvml.SUCCESS {
			return nil, ret
		}
		gi, _ := g.gi(id)
		if gi == nil {
			return nil, nvml.ERROR_NOT_FOUND
		}
		return n.gpuInstance(d, index, *gi), nvml.SUCCESS
	}
	d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) {
		return 7, nvml.SUCCESS
	}
	d.GetMigDeviceHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		g, ret := n.gpuState(index)
		if ret != nvml.SUCCESS {
			return nil, ret
		}
		type mig struct {
			giid, ciid int
			uuid       string
			memMB      uint64
		}
		var migs []mig
		for _, gi := range g.GPUInstances {
			for _, ci := range gi.ComputeInstances {
				migs = append(migs, mig{gi.ID, ci.ID, ci.UUID, cfg.MIGProfiles.GpuInstanceProfiles[gi.ProfileID].MemorySizeMB})
			}
		}
		sort.Slice(migs, func(a, b int) bool {
			if migs[a].giid != migs[b].giid {
				return migs[a].giid < migs[b].giid
			}
			return migs[a].ciid < migs[b].ciid
		})
		if i < 0 || i >= len(migs) {
			return nil, nvml.ERROR_NOT_FOUND
		}
		m := migs[i]
		md := &mock.Device{}
		md.GetUUIDFunc = func() (string, nvml.Return) { return m.uuid, nvml.SUCCESS }
		md.GetGpuInstanceIdFunc = func() (int, nvml.Return) { return m.giid, nvml.SUCCESS }
		md.GetComputeInstanceIdFunc = func() (int, nvml.Return) { return m.ciid, nvml.SUCCESS }
		md.IsMigDeviceHandleFunc = func() (bool, nvml.Return) { return true, nvml.SUCCESS }
		md.GetDeviceHandleFromMigDeviceHandleFunc = func() (nvml.Device, nvml.Return) { return d, nvml.SUCCESS }
		md.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
			return nvml.Memory{Total: m.memMB << 20, Free: m.memMB << 20}, nvml.SUCCESS
		}
		return md, nvml.SUCCESS
	}
}

// pendingMIGMode is the MIG mode GPU g will have after its next reset.
func pendingMIGMode(g *GPUState) int {
	if !g.MIGModePending {
		return g.MIGMode
	}
	if g.MIGMode == nvml.DEVICE_MIG_ENABLE {
		return nvml.DEVICE_MIG_DISABLE
	}
	return nvml.DEVICE_MIG_ENABLE
}

// migCapable reports whether a GPU of cfg supports MIG: it has profiles.
func migCapable(cfg gpus.Config) bool { return len(cfg.MIGProfiles.GpuInstanceProfiles) > 0 }

// extendDeviceWithoutMIG makes a GPU without MIG answer its MIG calls as
// NVML does: ERROR_NOT_SUPPORTED (once it is known not to be lost).
func (n *Node) extendDeviceWithoutMIG(d *server.Device, index int) {
	unsupported := func() nvml.Return {
		if _, ret := n.gpuState(index); ret != nvml.SUCCESS {
			return ret
		}
		return nvml.ERROR_NOT_SUPPORTED
	}
	d.GetMigModeFunc = func() (int, int, nvml.Return) { return 0, 0, unsupported() }
	d.SetMigModeFunc = func(int) (nvml.Return, nvml.Return) { return nvml.SUCCESS, unsupported() }
	d.GetGpuInstanceProfileInfoFunc = func(int) (nvml.GpuInstanceProfileInfo, nvml.Return) {
		return nvml.GpuInstanceProfileInfo{}, unsupported()
	}
	d.GetGpuInstancePossiblePlacementsFunc = func(*nvml.GpuInstanceProfileInfo) ([]nvml.GpuInstancePlacement, nvml.Return) {
		return nil, unsupported()
	}
	d.CreateGpuInstanceWithPlacementFunc = func(*nvml.GpuInstanceProfileInfo, *nvml.GpuInstancePlacement) (nvml.GpuInstance, nvml.Return) {
		return nil, unsupported()
	}
	d.CreateGpuInstanceFunc = func(*nvml.GpuInstanceProfileInfo) (nvml.GpuInstance, nvml.Return) { return nil, unsupported() }
	d.GetGpuInstancesFunc = func(*nvml.GpuInstanceProfileInfo) ([]nvml.GpuInstance, nvml.Return) { return nil, unsupported() }
	d.GetGpuInstanceByIdFunc = func(int) (nvml.GpuInstance, nvml.Return) { return nil, unsupported() }
	d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 0, unsupported() }
	d.GetMigDeviceHandleByIndexFunc = func(int) (nvml.Device, nvml.Return) { return nil, unsupported() }
}

func dgxBusOrIndex(index int) int {
	if index < len(dgxBusIDs) {
		return dgxBusIDs[index]
	}
	return index
}

// createGI creates a GPU instance, refusing what hardware refuses: MIG off,
// an unknown placement, an occupied one, or more instances of the profile
// than the GPU supports.
func (n *Node) createGI(d *server.Device, index, profileID int, placement *nvml.GpuInstancePlacement) (nvml.GpuInstance, nvml.Return) {
	info, ok := d.Config.MIGProfiles.GpuInstanceProfiles[profileID]
	if !ok {
		return nil, nvml.ERROR_NOT_SUPPORTED
	}
	possible := d.Config.MIGProfiles.GpuInstancePlacements[profileID]
	var created GIState
	ret := n.mutate(index, n.Latencies().GPUInstanceCreate, func(g *GPUState) nvml.Return {
		if g.MIGMode != nvml.DEVICE_MIG_ENABLE {
			return nvml.ERROR_NOT_SUPPORTED
		}
		same := 0
		for _, gi := range g.GPUInstances {
			if gi.ProfileID == profileID {
				same++
			}
		}
		if same >= int(info.InstanceCount) {
			return nvml.ERROR_INSUFFICIENT_RESOURCES
		}
		free := func(p nvml.GpuInstancePlacement) bool {
			mask := uint32((1<<p.Size)-1) << p.Start
			for _, gi := range g.GPUInstances {
				if mask&(uint32((1<<gi.Size)-1)<<gi.Start) != 0 {
					return false
				}
			}
			return true
		}
		var chosen *nvml.GpuInstancePlacement
		if placement != nil {
			for i := range possible {
				if possible[i] == *placement {
					chosen = &possible[i]
				}
			}
			if chosen == nil {
				return nvml.ERROR_INVALID_ARGUMENT
			}
			if !free(*chosen) {
				return nvml.ERROR_INSUFFICIENT_RESOURCES
			}
		} else {
			for i := range possible {
				if free(possible[i]) {
					chosen = &possible[i]
					break
				}
			}
			if chosen == nil {
				return nvml.ERROR_INSUFFICIENT_RESOURCES
			}
		}
		id := 1
		for {
			if gi, _ := g.gi(id); gi == nil {
				break
			}
			id++
		}
		created = GIState{ID: id, ProfileID: profileID, Start: int(chosen.Start), Size: int(chosen.Size)}
		g.GPUInstances = append(g.GPUInstances, created)
		return nvml.SUCCESS
	})
	if ret != nvml.SUCCESS {
		return nil, ret
	}
	return n.gpuInstance(d, index, created), nvml.SUCCESS
}

// gpuInstance returns a handle for a GPU instance; its methods read the
// state anew, as NVML handles do.
func (n *Node) gpuInstance(d *server.Device, index int, gis GIState) nvml.GpuInstance {
	profiles := d.Config.MIGProfiles
	giProfile := profiles.GpuInstanceProfiles[gis.ProfileID]
	gi := &mock.GpuInstance{}
	gi.GetInfoFunc = func() (nvml.GpuInstanceInfo, nvml.Return) {
		return nvml.GpuInstanceInfo{
			Device: d, Id: uint32(gis.ID), ProfileId: uint32(gis.ProfileID),
			Placement: nvml.GpuInstancePlacement{Start: uint32(gis.Start), Size: uint32(gis.Size)},
		}, nvml.SUCCESS
	}
	gi.GetComputeInstanceProfileInfoFunc = func(ciProfile, engProfile int) (nvml.ComputeInstanceProfileInfo, nvml.Return) {
		if engProfile != nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED {
			return nvml.ComputeInstanceProfileInfo{}, nvml.ERROR_NOT_SUPPORTED
		}
		info, ok := profiles.ComputeInstanceProfiles[gis.ProfileID][ciProfile]
		if !ok {
			return nvml.ComputeInstanceProfileInfo{}, nvml.ERROR_NOT_SUPPORTED
		}
		return info, nvml.SUCCESS
	}
	gi.GetComputeInstancePossiblePlacementsFunc = func(info *nvml.ComputeInstanceProfileInfo) ([]nvml.ComputeInstancePlacement, nvml.Return) {
		return profiles.ComputeInstancePlacements[gis.ProfileID][int(info.Id)], nvml.SUCCESS
	}
	gi.CreateComputeInstanceFunc = func(info *nvml.ComputeInstanceProfileInfo) (nvml.ComputeInstance, nvml.Return) {
		var created CIState
		ret := n.mutate(index, n.Latencies().ComputeInstanceCreate, func(g *GPUState) nvml.Return {
			cur, _ := g.gi(gis.ID)
			if cur == nil {
				return nvml.ERROR_NOT_FOUND
			}
			used := 0
			for _, ci := range cur.ComputeInstances {
				used += int(profiles.ComputeInstanceProfiles[gis.ProfileID][ci.ProfileID].SliceCount)
			}
			if used+int(info.SliceCount) > int(giProfile.SliceCount) {
				return nvml.ERROR_INSUFFICIENT_RESOURCES
			}
			id := 0
			for taken := true; taken; {
				taken = false
				for _, ci := range cur.ComputeInstances {
					if ci.ID == id {
						taken = true
						id++
						break
					}
				}
			}
			migUUID, err := miguuid.New(miguuid.Where{GPU: index, GIProfile: gis.ProfileID, CIProfile: int(info.Id)})
			if err != nil {
				return nvml.ERROR_UNKNOWN
			}
			created = CIState{ID: id, ProfileID: int(info.Id), UUID: migUUID}
			cur.ComputeInstances = append(cur.ComputeInstances, created)
			return nvml.SUCCESS
		})
		if ret != nvml.SUCCESS {
			return nil, ret
		}
		return n.computeInstance(d, gi, index, gis.ID, created), nvml.SUCCESS
	}
	gi.GetComputeInstancesFunc = func(info *nvml.ComputeInstanceProfileInfo) ([]nvml.ComputeInstance, nvml.Return) {
		cur, ret := n.liveGI(index, gis.ID)
		if ret != nvml.SUCCESS {
			return nil, ret
		}
		var out []nvml.ComputeInstance
		for _, ci := range cur.ComputeInstances {
			if ci.ProfileID == int(info.Id) {
				out = append(out, n.computeInstance(d, gi, index, gis.ID, ci))
			}
		}
		return out, nvml.SUCCESS
	}
	gi.GetComputeInstanceByIdFunc = func(id int) (nvml.ComputeInstance, nvml.Return) {
		cur, ret := n.liveGI(index, gis.ID)
		if ret != nvml.SUCCESS {
			return nil, ret
		}
		for _, ci := range cur.ComputeInstances {
			if ci.ID == id {
				return n.computeInstance(d, gi, index, gis.ID, ci), nvml.SUCCESS
			}
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	gi.DestroyFunc = func() nvml.Return {
		return n.mutate(index, n.Latencies().GPUInstanceDestroy, func(g *GPUState) nvml.Return {
			cur, i := g.gi(gis.ID)
			if cur == nil {
				return nvml.ERROR_NOT_FOUND
			}
			if len(cur.ComputeInstances) > 0 {
				return nvml.ERROR_IN_USE
			}
			g.GPUInstances = append(g.GPUInstances[:i], g.GPUInstances[i+1:]...)
			return nvml.SUCCESS
		})
	}
	return gi
}

func (n *Node) computeInstance(d *server.Device, gi nvml.GpuInstance, index, giid int, cis CIState) nvml.ComputeInstance {
	ci := &mock.ComputeInstance{}
	ci.GetInfoFunc = func() (nvml.ComputeInstanceInfo, nvml.Return) {
		return nvml.ComputeInstanceInfo{Device: d, GpuInstance: gi, Id: uint32(cis.ID), ProfileId: uint32(cis.ProfileID)}, nvml.SUCCESS
	}
	ci.DestroyFunc = func() nvml.Return {
		return n.mutate(index, n.Latencies().ComputeInstanceDestroy, func(g *GPUState) nvml.Return {
			cur, _ := g.gi(giid)
			if cur == nil {
				return nvml.ERROR_NOT_FOUND
			}
			for i, c := range cur.ComputeInstances {
				if c.ID == cis.ID {
					if len(c.Holders) > 0 {
						return nvml.ERROR_IN_USE
					}
					cur.ComputeInstances = append(cur.ComputeInstances[:i], cur.ComputeInstances[i+1:]...)
					return nvml.SUCCESS
				}
			}
			return nvml.ERROR_NOT_FOUND
		})
	}
	return ci
}

// eventSet delivers injected events for the devices registered with it.
type eventSet struct {
	mock.EventSet
	n       *Node
	next    uint64
	devices map[int]registration
}

type registration struct {
	device nvml.Device
	types  uint64
}

func (n *Node) newEventSet() *eventSet {
	es := &eventSet{n: n, devices: map[int]registration{}}
	if st, err := n.store.node.read(); err == nil {
		es.next = st.NextEventSeq
	}
	es.WaitFunc = es.wait
	es.FreeFunc = func() nvml.Return { return nvml.SUCCESS }
	return es
}

func (es *eventSet) register(index int, d nvml.Device, types uint64) {
	r := es.devices[index]
	r.device = d
	r.types |= types
	es.devices[index] = r
}

// eventPollInterval is how often a waiting event set re-reads the state.
const eventPollInterval = 20 * time.Millisecond

func (es *eventSet) wait(timeoutMs uint32) (nvml.EventData, nvml.Return) {
	es.n.eventWaits.Add(1)
	deadline := time.Now().Add(time.Duration(timeoutMs) * time.Millisecond)
	for {
		st, err := es.n.store.node.read()
		if err != nil {
			return nvml.EventData{}, nvml.ERROR_UNKNOWN
		}
		for _, e := range st.Events {
			if e.Seq < es.next {
				continue
			}
			es.next = e.Seq + 1
			r, ok := es.devices[e.GPU]
			if !ok || r.types&e.Type == 0 {
				continue
			}
			return nvml.EventData{
				Device: r.device, EventType: e.Type, EventData: e.Data,
				GpuInstanceId: uint32(e.GIID), ComputeInstanceId: uint32(e.CIID),
			}, nvml.SUCCESS
		}
		if st.NextEventSeq > es.next {
			es.next = st.NextEventSeq
		}
		// As NVML's, a wait on a set with a GPU fallen off the bus
		// returns at once with ERROR_GPU_IS_LOST, every time.
		for i := range es.devices {
			if g, err := es.n.store.gpus[i].read(); err == nil && g.Lost {
				return nvml.EventData{}, nvml.ERROR_GPU_IS_LOST
			}
		}
		if !time.Now().Before(deadline) {
			return nvml.EventData{}, nvml.ERROR_TIMEOUT
		}
		time.Sleep(min(eventPollInterval, time.Until(deadline)))
	}
}
