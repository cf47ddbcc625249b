// Package nvmlnode is the driver's only door to the hardware: it is the one
// package that imports go-nvml. It turns NVML into the plain values of
// package gpu and offers the few mutations the driver needs: creating and
// destroying a MIG GPU instance together with its compute instance,
// switching MIG mode and setting a GPU's time slice; it also watches and
// probes GPU health.
//
// The same code runs against the real NVML library and against a simulated
// node (package sim) built on go-nvml's own mock servers, so tests and the
// demo exercise the code path that production uses.
package nvmlnode

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// Node is a GPU node reached through NVML. It is safe for concurrent use.
type Node struct {
	lib nvml.Interface
	// closeOnce makes Close idempotent; NVML counts Init/Shutdown pairs.
	closeOnce sync.Once
	tools     toolsState
}

// NewNode initialises NVML through lib and checks that the node has at least
// one GPU. lib is the real library (nvml.New) or a simulated one.
func NewNode(lib nvml.Interface) (*Node, error) {
	if ret := lib.Init(); ret != nvml.SUCCESS {
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND {
			return nil, fmt.Errorf("initialise NVML: libnvidia-ml.so.1 not found: is the NVIDIA driver installed and the driver root mounted? (%w)", nvmlError(ret))
		}
		return nil, fmt.Errorf("initialise NVML: %w", nvmlError(ret))
	}
	count, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		_ = lib.Shutdown() // the reason to give up is the error to report
		return nil, fmt.Errorf("count GPUs: %w", nvmlError(ret))
	}
	if count == 0 {
		_ = lib.Shutdown() // the reason to give up is the error to report
		return nil, errors.New("NVML found no NVIDIA GPU on this node")
	}
	return &Node{lib: lib}, nil
}

// Close releases NVML.
func (n *Node) Close() error {
	var err error
	n.closeOnce.Do(func() {
		if ret := n.lib.Shutdown(); ret != nvml.SUCCESS {
			err = fmt.Errorf("shut down NVML: %w", nvmlError(ret))
		}
	})
	return err
}

// Inventory reads every GPU, its MIG profiles and its live MIG instances.
// Only a failure of NVML itself (driver version, GPU count) is an error: a
// GPU lost after its UUID was read is in the inventory with Lost set, and
// any other GPU that cannot be read is logged and listed in Unreadable,
// so that the node keeps serving the others.
func (n *Node) Inventory(ctx context.Context) (*gpu.Inventory, error) {
	inv := &gpu.Inventory{}
	var ret nvml.Return
	if inv.DriverVersion, ret = n.lib.SystemGetDriverVersion(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("read driver version: %w", nvmlError(ret))
	}
	cuda, ret := n.lib.SystemGetCudaDriverVersion()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("read CUDA driver version: %w", nvmlError(ret))
	}
	inv.CUDADriverVersion = fmt.Sprintf("%d.%d", cuda/1000, (cuda%1000)/10)

	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("count GPUs: %w", nvmlError(ret))
	}
	for i := 0; i < count; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		dev, ret := n.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			err := fmt.Errorf("open GPU %d: %w", i, nvmlError(ret))
			klog.FromContext(ctx).Error(err, "GPU cannot be read; nothing is offered on it", "index", i)
			inv.Unreadable = append(inv.Unreadable, gpu.UnreadableGPU{Index: i, Err: err.Error()})
			continue
		}
		g, err := readGPU(dev, i)
		if isLost(err) && g.UUID != "" {
			klog.FromContext(ctx).Info("GPU is lost", "gpu", g.UUID, "index", i)
			g.Lost = true
			err = nil
		}
		if err != nil {
			err = fmt.Errorf("read GPU %d: %w", i, err)
			klog.FromContext(ctx).Error(err, "GPU cannot be read; nothing is offered on it", "index", i, "gpu", g.UUID)
			inv.Unreadable = append(inv.Unreadable, gpu.UnreadableGPU{Index: i, UUID: g.UUID, Err: err.Error()})
			continue
		}
		inv.GPUs = append(inv.GPUs, g)
	}
	sort.SliceStable(inv.GPUs, func(a, b int) bool { return inv.GPUs[a].PCIBusID < inv.GPUs[b].PCIBusID })
	return inv, nil
}

func readGPU(dev nvml.Device, index int) (gpu.GPU, error) {
	g := gpu.GPU{Index: index}
	var ret nvml.Return
	if g.UUID, ret = dev.GetUUID(); ret != nvml.SUCCESS {
		return g, fmt.Errorf("UUID: %w", nvmlError(ret))
	}
	if g.Minor, ret = dev.GetMinorNumber(); ret != nvml.SUCCESS {
		return g, fmt.Errorf("minor number of %s: %w", g.UUID, nvmlError(ret))
	}
	if g.Name, ret = dev.GetName(); ret != nvml.SUCCESS {
		return g, fmt.Errorf("name of %s: %w", g.UUID, nvmlError(ret))
	}
	brand, ret := dev.GetBrand()
	if ret != nvml.SUCCESS {
		return g, fmt.Errorf("brand of %s: %w", g.UUID, nvmlError(ret))
	}
	g.Brand = nameOf(brandNames, brand, "Unknown")
	arch, ret := dev.GetArchitecture()
	if ret != nvml.SUCCESS {
		return g, fmt.Errorf("architecture of %s: %w", g.UUID, nvmlError(ret))
	}
	g.Architecture = nameOf(architectureNames, arch, "Unknown")
	major, minor, ret := dev.GetCudaComputeCapability()
	if ret != nvml.SUCCESS {
		return g, fmt.Errorf("compute capability of %s: %w", g.UUID, nvmlError(ret))
	}
	g.CUDAComputeCapability = fmt.Sprintf("%d.%d", major, minor)
	mem, ret := dev.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return g, fmt.Errorf("memory of %s: %w", g.UUID, nvmlError(ret))
	}
	g.MemoryBytes = mem.Total
	pci, ret := dev.GetPciInfo()
	if ret != nvml.SUCCESS {
		return g, fmt.Errorf("PCI info of %s: %w", g.UUID, nvmlError(ret))
	}
	g.PCIBusID = normalizeBusID(pci)

	current, _, ret := dev.GetMigMode()
	switch ret {
	case nvml.SUCCESS:
		g.MIGCapable = true
		g.MIGEnabled = current == nvml.DEVICE_MIG_ENABLE
		g.MIGModeNeedsReset = migModeNeedsReset(arch)
	case nvml.ERROR_NOT_SUPPORTED:
		return g, nil
	default:
		return g, fmt.Errorf("MIG mode of %s: %w", g.UUID, nvmlError(ret))
	}
	profiles, slices, err := readProfiles(dev, g.MemoryBytes)
	if err != nil {
		return g, fmt.Errorf("MIG profiles of %s: %w", g.UUID, err)
	}
	g.MIGProfiles = profiles
	g.MemorySlices = slices
	if g.MIGEnabled {
		if g.MIGInstances, g.BareGPUInstances, err = readInstances(dev, g.UUID, profiles); err != nil {
			return g, fmt.Errorf("MIG instances of %s: %w", g.UUID, err)
		}
	}
	return g, nil
}

// readProfiles returns the GPU's GPU-instance profiles and its number of
// memory slices (gpuMemorySlices), which a profile's memory slices and its
// name are counted in.
func readProfiles(dev nvml.Device, totalBytes uint64) ([]gpu.MIGProfile, int, error) {
	var ids []int
	var infos []nvml.GpuInstanceProfileInfo
	var placements [][]gpu.Placement
	for id := 0; id < nvml.GPU_INSTANCE_PROFILE_COUNT; id++ {
		info, ret := dev.GetGpuInstanceProfileInfo(id)
		if ret == nvml.ERROR_NOT_SUPPORTED || ret == nvml.ERROR_INVALID_ARGUMENT {
			continue
		}
		if ret != nvml.SUCCESS {
			return nil, 0, fmt.Errorf("profile %d: %w", id, nvmlError(ret))
		}
		if info.InstanceCount == 0 {
			continue
		}
		pls, ret := dev.GetGpuInstancePossiblePlacements(&info)
		if ret != nvml.SUCCESS {
			return nil, 0, fmt.Errorf("placements of profile %d: %w", id, nvmlError(ret))
		}
		var ps []gpu.Placement
		for _, pl := range pls {
			ps = append(ps, gpu.Placement{Start: int(pl.Start), Size: int(pl.Size)})
		}
		sort.Slice(ps, func(a, b int) bool { return ps[a].Start < ps[b].Start })
		ids = append(ids, id)
		infos = append(infos, info)
		placements = append(placements, ps)
	}
	slices := gpuMemorySlices(placements)
	var out []gpu.MIGProfile
	for i, info := range infos {
		memorySlices := memorySlicesOf(info.MemorySizeMB, totalBytes, slices)
		if len(placements[i]) > 0 {
			memorySlices = placements[i][0].Size
		}
		out = append(out, gpu.MIGProfile{
			ID:              ids[i],
			Name:            profileName(ids[i], int(info.SliceCount), memorySlices, slices, totalBytes),
			ComputeSlices:   int(info.SliceCount),
			MemorySlices:    memorySlices,
			MemoryBytes:     info.MemorySizeMB << 20,
			Multiprocessors: int(info.MultiprocessorCount),
			CopyEngines:     int(info.CopyEngineCount),
			Decoders:        int(info.DecoderCount),
			Encoders:        int(info.EncoderCount),
			JPEGEngines:     int(info.JpegCount),
			OFAEngines:      int(info.OfaCount),
			MaxInstances:    int(info.InstanceCount),
			// Known once a GPU instance exists (readInstances).
			ComputeProfileID: -1,
			Placements:       placements[i],
		})
	}
	return out, slices, nil
}

// migUUIDs maps (GI ID, CI ID) to the MIG device UUID NVML reports.
func migUUIDs(dev nvml.Device) (map[[2]int]string, error) {
	max, ret := dev.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("max MIG device count: %w", nvmlError(ret))
	}
	out := map[[2]int]string{}
	for i := 0; i < max; i++ {
		mig, ret := dev.GetMigDeviceHandleByIndex(i)
		if ret == nvml.ERROR_NOT_FOUND || ret == nvml.ERROR_INVALID_ARGUMENT {
			continue
		}
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("MIG device %d: %w", i, nvmlError(ret))
		}
		gi, ret := mig.GetGpuInstanceId()
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("GPU instance ID of MIG device %d: %w", i, nvmlError(ret))
		}
		ci, ret := mig.GetComputeInstanceId()
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("compute instance ID of MIG device %d: %w", i, nvmlError(ret))
		}
		uuid, ret := mig.GetUUID()
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("UUID of MIG device %d: %w", i, nvmlError(ret))
		}
		out[[2]int{gi, ci}] = uuid
	}
	return out, nil
}

// readInstances returns a MIG instance for every compute instance of every
// GPU instance, and the GPU instances that have no compute instance: their
// placements are occupied although they hold no MIG device.
func readInstances(dev nvml.Device, parent string, profiles []gpu.MIGProfile) ([]gpu.MIGInstance, []gpu.GPUInstance, error) {
	uuids, err := migUUIDs(dev)
	if err != nil {
		return nil, nil, err
	}
	var out []gpu.MIGInstance
	var bare []gpu.GPUInstance
	for pi, p := range profiles {
		info, ret := dev.GetGpuInstanceProfileInfo(p.ID)
		if ret != nvml.SUCCESS {
			return nil, nil, fmt.Errorf("profile %s: %w", p.Name, nvmlError(ret))
		}
		gis, ret := dev.GetGpuInstances(&info)
		if ret != nvml.SUCCESS {
			return nil, nil, fmt.Errorf("GPU instances of profile %s: %w", p.Name, nvmlError(ret))
		}
		for _, gi := range gis {
			giInfo, ret := gi.GetInfo()
			if ret != nvml.SUCCESS {
				return nil, nil, fmt.Errorf("GPU instance of profile %s: %w", p.Name, nvmlError(ret))
			}
			ciProfiles, err := supportedComputeProfiles(gi)
			if err != nil {
				return nil, nil, fmt.Errorf("compute instances of GPU instance %d: %w", giInfo.Id, err)
			}
			if full, err := chooseFullComputeProfile(ciProfiles, int(info.SliceCount), int(info.MultiprocessorCount)); err == nil {
				profiles[pi].ComputeProfileID = int(full.Id)
			}
			cis, err := computeInstances(gi, ciProfiles)
			if err != nil {
				return nil, nil, fmt.Errorf("compute instances of GPU instance %d: %w", giInfo.Id, err)
			}
			placement := gpu.Placement{Start: int(giInfo.Placement.Start), Size: int(giInfo.Placement.Size)}
			if len(cis) == 0 {
				bare = append(bare, gpu.GPUInstance{ParentUUID: parent, ProfileID: p.ID, Profile: p.Name, Placement: placement, GIID: int(giInfo.Id)})
			}
			for _, ci := range cis {
				out = append(out, gpu.MIGInstance{
					UUID:       uuids[[2]int{int(giInfo.Id), int(ci.Id)}],
					ParentUUID: parent,
					ProfileID:  p.ID,
					Profile:    p.Name,
					Placement:  placement,
					GIID:       int(giInfo.Id),
					CIID:       int(ci.Id),

					ComputeProfileID: int(ci.ProfileId),
				})
			}
		}
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].Placement.Start != out[b].Placement.Start {
			return out[a].Placement.Start < out[b].Placement.Start
		}
		return out[a].CIID < out[b].CIID
	})
	sort.Slice(bare, func(a, b int) bool { return bare[a].Placement.Start < bare[b].Placement.Start })
	return out, bare, nil
}

// supportedCIProfile is a compute-instance profile a GPU instance supports (shared
// engines): the ID NVML is asked for it by, and what NVML reports of it.
type supportedCIProfile struct {
	id   int
	info nvml.ComputeInstanceProfileInfo
}

// supportedComputeProfiles reads the compute-instance profiles gi supports,
// in profile-ID order. It is read-only.
func supportedComputeProfiles(gi nvml.GpuInstance) ([]supportedCIProfile, error) {
	var out []supportedCIProfile
	for id := 0; id < nvml.COMPUTE_INSTANCE_PROFILE_COUNT; id++ {
		info, ret := gi.GetComputeInstanceProfileInfo(id, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
		if ret == nvml.ERROR_NOT_SUPPORTED || ret == nvml.ERROR_INVALID_ARGUMENT {
			continue
		}
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("compute profile %d: %w", id, nvmlError(ret))
		}
		out = append(out, supportedCIProfile{id: id, info: info})
	}
	return out, nil
}

// computeInstances reads gi's compute instances of each of its profiles.
func computeInstances(gi nvml.GpuInstance, profiles []supportedCIProfile) ([]nvml.ComputeInstanceInfo, error) {
	var out []nvml.ComputeInstanceInfo
	for _, p := range profiles {
		cis, ret := gi.GetComputeInstances(&p.info)
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("compute instances of profile %d: %w", p.id, nvmlError(ret))
		}
		for _, ci := range cis {
			ciInfo, ret := ci.GetInfo()
			if ret != nvml.SUCCESS {
				return nil, fmt.Errorf("compute instance of profile %d: %w", p.id, nvmlError(ret))
			}
			out = append(out, ciInfo)
		}
	}
	return out, nil
}

func (n *Node) device(uuid string) (nvml.Device, error) {
	dev, ret := n.lib.DeviceGetHandleByUUID(uuid)
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("open GPU %s: %w", uuid, nvmlError(ret))
	}
	return dev, nil
}

// SetMIGMode enables or disables MIG mode on a GPU. It fails if the change
// needs a GPU reset that has not happened (pending mode differs). On a GPU
// that changes mode without a reset (Hopper and later), a change of the
// other way left pending is cancelled, so that no reset flips the mode
// under the claim being prepared. A GPU
// without MIG is always out of MIG mode: disabling it there is a no-op,
// enabling it fails with gpu.ErrMIGNotSupported.
func (n *Node) SetMIGMode(ctx context.Context, uuid string, enabled bool) error {
	dev, err := n.device(uuid)
	if err != nil {
		return err
	}
	mode := nvml.DEVICE_MIG_DISABLE
	if enabled {
		mode = nvml.DEVICE_MIG_ENABLE
	}
	current, pending, ret := dev.GetMigMode()
	if ret == nvml.ERROR_NOT_SUPPORTED {
		if !enabled {
			return nil
		}
		return fmt.Errorf("turn MIG mode on for %s: %w (%w)", uuid, gpu.ErrMIGNotSupported, nvmlError(ret))
	}
	if ret != nvml.SUCCESS {
		return fmt.Errorf("read MIG mode of %s: %w", uuid, nvmlError(ret))
	}
	if current == mode && pending == mode {
		return nil
	}
	arch, ret := dev.GetArchitecture()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("architecture of %s: %w", uuid, nvmlError(ret))
	}
	if current == mode {
		if migModeNeedsReset(arch) {
			// An administrator's switch, due at the GPU's next reset
			// (docs/device-model.md, Ampere): the mode is still this one.
			return nil
		}
		// A change left pending while another process held the GPU (an
		// nvidia-smi, or a cancel of notActivated that failed) would
		// apply at the GPU's next reset under the claim being prepared:
		// setting the current mode again cancels it.
		return cancelPending(ctx, dev, uuid, current)
	}
	if migModeNeedsReset(arch) {
		// NVML would set the pending mode, which the next reset of the
		// GPU would apply whatever it then holds: leave the mode alone.
		want := map[bool]string{false: "disable", true: "enable"}[enabled]
		return fmt.Errorf("GPU %s (%s) is in MIG mode %t: %w, which the driver does not do: an administrator must %s MIG mode (nvidia-smi -i %s -mig %d) and reset the GPU",
			uuid, nameOf(architectureNames, arch, "Unknown"), !enabled, gpu.ErrMIGModeNeedsReset, want, uuid, mode)
	}
	// go-nvml returns the activation status first, then the call's result.
	activation, ret := dev.SetMigMode(mode)
	if ret != nvml.SUCCESS {
		return fmt.Errorf("set MIG mode of %s to %t: %w", uuid, enabled, nvmlError(ret))
	}
	if activation != nvml.SUCCESS {
		return notActivated(ctx, dev, uuid, enabled, current, activation)
	}
	current, pending, ret = dev.GetMigMode()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("read MIG mode of %s: %w", uuid, nvmlError(ret))
	}
	if current != mode {
		return fmt.Errorf("set MIG mode of %s to %t: pending mode %d needs a GPU reset", uuid, enabled, pending)
	}
	klog.FromContext(ctx).Info("Changed MIG mode", "gpu", uuid, "enabled", enabled)
	return nil
}

// CreateMIG creates a GPU instance of the requested profile at exactly the
// requested placement, and one compute instance spanning it. On failure
// abandon destroys, in order, what a CreateMIG that failed half way had
// created, so that no instance is left that nobody records. A destroy that
// fails is part of the error: the instance is then left on the GPU, and the
// caller's rollback or the next start-up reconciliation must find it.
func abandon(err error, destroy ...func() nvml.Return) error {
	for _, d := range destroy {
		if ret := d(); ret != nvml.SUCCESS {
			err = fmt.Errorf("%w (destroying what was created failed too: %w)", err, nvmlError(ret))
		}
	}
	return err
}

// nothing is left behind.
func (n *Node) CreateMIG(ctx context.Context, req gpu.MIGRequest) (gpu.MIGInstance, error) {
	dev, err := n.device(req.ParentUUID)
	if err != nil {
		return gpu.MIGInstance{}, err
	}
	current, _, ret := dev.GetMigMode()
	if ret != nvml.SUCCESS {
		return gpu.MIGInstance{}, fmt.Errorf("read MIG mode of %s: %w", req.ParentUUID, nvmlError(ret))
	}
	if current != nvml.DEVICE_MIG_ENABLE {
		return gpu.MIGInstance{}, fmt.Errorf("create MIG instance on %s: %w", req.ParentUUID, gpu.ErrMIGDisabled)
	}
	info, ret := dev.GetGpuInstanceProfileInfo(req.ProfileID)
	if ret != nvml.SUCCESS {
		return gpu.MIGInstance{}, fmt.Errorf("MIG profile %d of %s: %w", req.ProfileID, req.ParentUUID, nvmlError(ret))
	}
	// The name counts memory in the GPU's memory slices, which only all
	// its profiles' placements say; read before anything is created.
	name, err := profileNameOn(dev, req.ProfileID)
	if err != nil {
		return gpu.MIGInstance{}, fmt.Errorf("MIG profile %d of %s: %w", req.ProfileID, req.ParentUUID, err)
	}
	placement := nvml.GpuInstancePlacement{Start: uint32(req.Placement.Start), Size: uint32(req.Placement.Size)}
	gi, ret := dev.CreateGpuInstanceWithPlacement(&info, &placement)
	if ret == nvml.ERROR_INSUFFICIENT_RESOURCES || ret == nvml.ERROR_IN_USE {
		return gpu.MIGInstance{}, fmt.Errorf("create GPU instance (profile %d, placement %s) on %s: %w: %w", req.ProfileID, req.Placement, req.ParentUUID, gpu.ErrPlacementOccupied, nvmlError(ret))
	}
	if ret != nvml.SUCCESS {
		return gpu.MIGInstance{}, fmt.Errorf("create GPU instance (profile %d, placement %s) on %s: %w", req.ProfileID, req.Placement, req.ParentUUID, nvmlError(ret))
	}
	giInfo, ret := gi.GetInfo()
	if ret != nvml.SUCCESS {
		return gpu.MIGInstance{}, abandon(fmt.Errorf("read created GPU instance on %s: %w", req.ParentUUID, nvmlError(ret)), gi.Destroy)
	}
	supportedCIProfile, err := fullComputeProfile(gi, int(info.SliceCount), int(info.MultiprocessorCount))
	if err != nil {
		return gpu.MIGInstance{}, abandon(fmt.Errorf("compute profile for GPU instance %d on %s: %w", giInfo.Id, req.ParentUUID, err), gi.Destroy)
	}
	ci, ret := gi.CreateComputeInstance(&supportedCIProfile)
	if ret != nvml.SUCCESS {
		return gpu.MIGInstance{}, abandon(fmt.Errorf("create compute instance in GPU instance %d on %s: %w", giInfo.Id, req.ParentUUID, nvmlError(ret)), gi.Destroy)
	}
	ciInfo, ret := ci.GetInfo()
	if ret != nvml.SUCCESS {
		return gpu.MIGInstance{}, abandon(fmt.Errorf("read created compute instance on %s: %w", req.ParentUUID, nvmlError(ret)), ci.Destroy, gi.Destroy)
	}
	uuids, err := migUUIDs(dev)
	if err != nil {
		return gpu.MIGInstance{}, abandon(fmt.Errorf("find UUID of created MIG device on %s: %w", req.ParentUUID, err), ci.Destroy, gi.Destroy)
	}
	inst := gpu.MIGInstance{
		UUID:       uuids[[2]int{int(giInfo.Id), int(ciInfo.Id)}],
		ParentUUID: req.ParentUUID,
		ProfileID:  req.ProfileID,
		Profile:    name,
		Placement:  gpu.Placement{Start: int(giInfo.Placement.Start), Size: int(giInfo.Placement.Size)},
		GIID:       int(giInfo.Id),
		CIID:       int(ciInfo.Id),

		ComputeProfileID: int(ciInfo.ProfileId),
	}
	if inst.UUID == "" {
		return gpu.MIGInstance{}, abandon(fmt.Errorf("created MIG device (GPU instance %d, compute instance %d) on %s has no UUID", giInfo.Id, ciInfo.Id, req.ParentUUID), ci.Destroy, gi.Destroy)
	}
	klog.FromContext(ctx).V(2).Info("Created MIG device", "gpu", req.ParentUUID, "profile", inst.Profile, "placement", inst.Placement.String(), "uuid", inst.UUID, "giid", inst.GIID, "ciid", inst.CIID, "computeProfile", inst.ComputeProfileID)
	return inst, nil
}

// profileNameOn returns the name the inventory gives profile id of dev.
func profileNameOn(dev nvml.Device, id int) (string, error) {
	profiles, _, err := readProfiles(dev, memoryTotal(dev))
	if err != nil {
		return "", err
	}
	for _, p := range profiles {
		if p.ID == id {
			return p.Name, nil
		}
	}
	return "", fmt.Errorf("profile %d: %w", id, nvmlError(nvml.ERROR_NOT_SUPPORTED))
}

func memoryTotal(dev nvml.Device) uint64 {
	mem, ret := dev.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return 0
	}
	return mem.Total
}

// fullComputeProfile returns the compute-instance profile that gives one
// compute instance all of a GPU instance: of the profiles NVML reports on
// gi that span all of its slices, the one with the GPU instance's SM count,
// else the one with the most SMs; of equals, the lowest ID (the standard
// profile before a revision such as COMPUTE_INSTANCE_PROFILE_1_SLICE_REV1,
// which not every GPU offers). Choosing by slice count alone can give a
// double-memory 1g GPU instance (1g.20gb) a compute instance with fewer
// SMs than the GPU instance has.
func fullComputeProfile(gi nvml.GpuInstance, slices, multiprocessors int) (nvml.ComputeInstanceProfileInfo, error) {
	profiles, err := supportedComputeProfiles(gi)
	if err != nil {
		return nvml.ComputeInstanceProfileInfo{}, err
	}
	return chooseFullComputeProfile(profiles, slices, multiprocessors)
}

// chooseFullComputeProfile is ChooseFullComputeProfile of the profiles a
// GPU instance supports.
func chooseFullComputeProfile(profiles []supportedCIProfile, slices, multiprocessors int) (nvml.ComputeInstanceProfileInfo, error) {
	described := make([]ComputeProfileInfo, len(profiles))
	for i, p := range profiles {
		described[i] = ComputeProfileInfo{ID: int(p.info.Id), Slices: int(p.info.SliceCount), Multiprocessors: int(p.info.MultiprocessorCount)}
	}
	i, ok := ChooseFullComputeProfile(described, slices, multiprocessors)
	if !ok {
		return nvml.ComputeInstanceProfileInfo{}, fmt.Errorf("no compute profile spans %d slices", slices)
	}
	return profiles[i].info, nil
}

// ChooseFullComputeProfile picks, of the compute-instance profiles (in
// NVML profile-ID order), the one CreateMIG uses to fill a GPU instance of
// the given compute slices and SMs: of those spanning all its slices, the
// one with exactly its SMs, else the most SMs; of equals, the first. It
// returns the chosen index, false when none spans the slices. It reads
// nothing.
func ChooseFullComputeProfile(profiles []ComputeProfileInfo, slices, multiprocessors int) (int, bool) {
	best := -1
	var bp ComputeProfileInfo
	for i, c := range profiles {
		if c.Slices != slices {
			continue
		}
		if best >= 0 {
			cExact, bestExact := c.Multiprocessors == multiprocessors, bp.Multiprocessors == multiprocessors
			if cExact == bestExact && c.Multiprocessors <= bp.Multiprocessors || !cExact && bestExact {
				continue
			}
		}
		best, bp = i, c
	}
	return best, best >= 0
}

// DestroyMIG destroys a MIG device's compute instance and its GPU instance.
// Destroying what is already gone succeeds, so that rollback and unprepare
// can be retried.
func (n *Node) DestroyMIG(ctx context.Context, ref gpu.MIGRef) error {
	dev, err := n.device(ref.ParentUUID)
	if err != nil {
		return err
	}
	gi, ret := dev.GetGpuInstanceById(ref.GIID)
	if ret == nvml.ERROR_NOT_FOUND || ret == nvml.ERROR_INVALID_ARGUMENT {
		return nil
	}
	if ret != nvml.SUCCESS {
		return fmt.Errorf("find GPU instance %d on %s: %w", ref.GIID, ref.ParentUUID, nvmlError(ret))
	}
	if ref.UUID != "" {
		uuids, err := migUUIDs(dev)
		if err != nil {
			return fmt.Errorf("check MIG device %s on %s: %w", ref.UUID, ref.ParentUUID, err)
		}
		if live, ok := uuids[[2]int{ref.GIID, ref.CIID}]; ok && live != ref.UUID {
			klog.FromContext(ctx).Info("MIG device already gone; its IDs now belong to another", "gpu", ref.ParentUUID, "uuid", ref.UUID, "other", live)
			return nil
		}
	}
	ci, ret := gi.GetComputeInstanceById(ref.CIID)
	switch ret {
	case nvml.SUCCESS:
		if ret := ci.Destroy(); ret != nvml.SUCCESS && ret != nvml.ERROR_NOT_FOUND {
			return fmt.Errorf("destroy compute instance %d of GPU instance %d on %s: %w", ref.CIID, ref.GIID, ref.ParentUUID, nvmlError(ret))
		}
	case nvml.ERROR_NOT_FOUND, nvml.ERROR_INVALID_ARGUMENT:
	default:
		return fmt.Errorf("find compute instance %d of GPU instance %d on %s: %w", ref.CIID, ref.GIID, ref.ParentUUID, nvmlError(ret))
	}
	if ret := gi.Destroy(); ret != nvml.SUCCESS && ret != nvml.ERROR_NOT_FOUND {
		return fmt.Errorf("destroy GPU instance %d on %s: %w", ref.GIID, ref.ParentUUID, nvmlError(ret))
	}
	klog.FromContext(ctx).V(2).Info("Destroyed MIG device", "gpu", ref.ParentUUID, "giid", ref.GIID, "ciid", ref.CIID)
	return nil
}

// cancelPending cancels a MIG mode change pending on the GPU, whose mode
// is current, by setting current again.
func cancelPending(ctx context.Context, dev nvml.Device, uuid string, current int) error {
	now, pending, err := setCurrentMode(dev, current)
	if err != nil {
		return fmt.Errorf("cancel the MIG mode change pending on %s (it applies at the GPU's next reset): %w", uuid, err)
	}
	if now != current || pending != current {
		return fmt.Errorf("cancel the MIG mode change pending on %s (it applies at the GPU's next reset): mode %d, pending %d", uuid, now, pending)
	}
	klog.FromContext(ctx).Info("Cancelled a pending MIG mode change", "gpu", uuid, "mode", current)
	return nil
}

// setCurrentMode sets the GPU's current MIG mode again, which cancels a
// pending change, and reads back the current and pending modes.
func setCurrentMode(dev nvml.Device, current int) (now, pending int, err error) {
	if _, ret := dev.SetMigMode(current); ret != nvml.SUCCESS {
		return 0, 0, nvmlError(ret)
	}
	now, pending, ret := dev.GetMigMode()
	if ret != nvml.SUCCESS {
		return 0, 0, fmt.Errorf("read MIG mode: %w", nvmlError(ret))
	}
	return now, pending, nil
}

// notActivated reports a MIG mode change that NVML accepted but could not
// activate: the GPU was not idle (ERROR_IN_USE) or needs a reset
// (ERROR_RESET_REQUIRED, as in some virtual machines). NVML then leaves the
// new mode pending, and a pending mode applies at the GPU's next reset or
// the node's reboot, whatever the GPU holds by then: it is cancelled by
// setting the current mode again, so a failed prepare leaves nothing
// behind. The error says what holds the GPU and what an operator can do.
func notActivated(ctx context.Context, dev nvml.Device, uuid string, enabled bool, current int, activation nvml.Return) error {
	now, pending, cancelErr := setCurrentMode(dev, current)
	if cancelErr == nil && now != pending {
		cancelErr = fmt.Errorf("MIG mode %d still pending", pending)
	}
	left := "the change was cancelled, nothing is pending"
	if cancelErr != nil {
		klog.FromContext(ctx).Error(cancelErr, "Could not cancel a pending MIG mode change: it applies at the GPU's next reset or the node's reboot", "gpu", uuid, "enabled", enabled)
		left = fmt.Sprintf("cancelling the pending change failed (%v): it applies at the GPU's next reset or the node's reboot", cancelErr)
	}
	if activation == nvml.ERROR_IN_USE {
		return fmt.Errorf("turn MIG mode %s on %s: %w (NVML: %w): MIG mode changes only on an idle GPU, and %s; stop what holds it on this node (monitoring agents such as dcgm-exporter or nvidia-persistenced, an nvidia-smi, CUDA processes outside the driver's claims)",
			onOff(enabled), uuid, gpu.ErrGPUHeldOpen, nvmlError(activation), left)
	}
	return fmt.Errorf("activate MIG mode %s on %s: %w, and %s", onOff(enabled), uuid, nvmlError(activation), left)
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// migModeNeedsReset reports whether a MIG-capable GPU of the architecture
// changes MIG mode only at a GPU reset: Ampere does; Hopper and later
// change it at once when no process uses the GPU.
func migModeNeedsReset(arch nvml.DeviceArchitecture) bool {
	return arch == nvml.DEVICE_ARCH_AMPERE
}

// nvmlError turns an NVML return code into an error that keeps the code.
func nvmlError(ret nvml.Return) error {
	return ReturnError{Code: ret}
}

// ReturnError is an NVML return code as an error.
type ReturnError struct{ Code nvml.Return }

// isLost reports whether err comes from a GPU fallen off the bus
// (ERROR_GPU_IS_LOST).
func isLost(err error) bool {
	var re ReturnError
	return errors.As(err, &re) && re.Code == nvml.ERROR_GPU_IS_LOST
}

func (e ReturnError) Error() string {
	return fmt.Sprintf("NVML: %s (code %d)", nvml.ErrorString(e.Code), int32(e.Code))
}

// normalizeBusID formats NVML's bus ID ("00000000:07:00.0") the way
// Kubernetes' pciBusID attribute expects it ("0000:07:00.0").
func normalizeBusID(pci nvml.PciInfo) string {
	var b strings.Builder
	for _, c := range pci.BusId {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	id := strings.ToLower(b.String())
	if parts := strings.SplitN(id, ":", 2); len(parts) == 2 && len(parts[0]) > 4 {
		id = parts[0][len(parts[0])-4:] + ":" + parts[1]
	}
	return id
}

var brandNames = map[nvml.BrandType]string{
	nvml.BRAND_QUADRO:      "Quadro",
	nvml.BRAND_TESLA:       "Tesla",
	nvml.BRAND_NVS:         "NVS",
	nvml.BRAND_GRID:        "Grid",
	nvml.BRAND_GEFORCE:     "GeForce",
	nvml.BRAND_TITAN:       "Titan",
	nvml.BRAND_QUADRO_RTX:  "QuadroRTX",
	nvml.BRAND_NVIDIA_RTX:  "NvidiaRTX",
	nvml.BRAND_NVIDIA:      "Nvidia",
	nvml.BRAND_GEFORCE_RTX: "GeForceRTX",
	nvml.BRAND_TITAN_RTX:   "TitanRTX",
}

// architectureNames are the values of the architecture attribute: go-nvlib's
// (GetArchitectureAsString), which NVIDIA's DRA driver publishes, so that a
// selector written for it (architecture == "Hopper") selects the same GPUs.
var architectureNames = map[nvml.DeviceArchitecture]string{
	nvml.DEVICE_ARCH_KEPLER:    "Kepler",
	nvml.DEVICE_ARCH_MAXWELL:   "Maxwell",
	nvml.DEVICE_ARCH_PASCAL:    "Pascal",
	nvml.DEVICE_ARCH_VOLTA:     "Volta",
	nvml.DEVICE_ARCH_TURING:    "Turing",
	nvml.DEVICE_ARCH_AMPERE:    "Ampere",
	nvml.DEVICE_ARCH_ADA:       "Ada Lovelace",
	nvml.DEVICE_ARCH_HOPPER:    "Hopper",
	nvml.DEVICE_ARCH_BLACKWELL: "Blackwell",
	nvml.DEVICE_ARCH_RUBIN:     "Rubin",
}

// nameOf is names[k], or unknown for a value this driver has no name for.
func nameOf[K comparable](names map[K]string, k K, unknown string) string {
	if n, ok := names[k]; ok {
		return n
	}
	return unknown
}
