// Package devicemodel turns a GPU inventory into the ResourceSlices the
// driver publishes. It is pure: inventory, health taints and options in,
// slices out, in a deterministic order and with no I/O, so that it can be
// tested against the scheduler's own allocator.
//
// The model (DESIGN.md §2):
//   - every GPU is a device "gpu-<minor>" with type=gpu;
//   - on a MIG-capable GPU every (profile, placement) is a device
//     "gpu-<minor>-mig-<profile>-<start>" with type=mig;
//   - each GPU has a counter set "gpu-<minor>" with one counter per memory
//     slice; a MIG device consumes the slices of its placement and the whole
//     GPU consumes all of them, so the scheduler can never allocate two
//     things that overlap on the hardware;
//   - per-profile instance limits that the placements alone do not express
//     (only one "+me" instance per GPU) are counters too;
//   - pre-created MIG instances are fixed devices; placements that overlap
//     them, and the whole GPU, are not published;
//   - a GPU instance that is no single MIG device (someone made it without
//     a compute instance, or with several) is published as no device, but
//     occupies its placement as a pre-created instance does (Withheld);
//   - a GPU whose MIG mode changes only at a GPU reset (Ampere: A100, A30)
//     offers what its current mode allows: MIG placements in MIG mode, the
//     whole GPU (and its shares) out of it; the driver never changes its
//     mode, an administrator does;
//   - with SharedGPUs, every GPU offered whole is also offered as
//     "gpu-<minor>-shared" with type=shared: a device the scheduler may
//     allocate many times (allowMultipleAllocations, KEP-5075), each
//     allocation a share that consumes some of its "memory" and "compute"
//     capacities. It consumes the same counters as the whole GPU, which the
//     allocator charges once for all its shares, so a GPU is used either
//     exclusively (whole or MIG) or shared, never both;
//   - with ConsumableShares (NVIDIA's consumable shares), every GPU offered
//     whole is published as "gpu-<minor>" that allows multiple
//     allocations, each consuming some of its "memory" (and of its
//     "shares"), instead of as an exclusive device (consumable.go).
package devicemodel

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// Request policy of a shared GPU's capacities.
const (
	// ShareMemoryMin is the least memory a share gets.
	ShareMemoryMin = 1 << 30
	// ShareMemoryStep is the granularity of shares' memory: requests are
	// rounded up to whole MiB, the unit of MPS memory limits.
	ShareMemoryStep = 1 << 20
)

// Kind says what a published device stands for.
type Kind int

// Device kinds.
const (
	// KindGPU is a whole GPU.
	KindGPU Kind = iota
	// KindMIGPlacement is a MIG profile at a placement; prepare creates it.
	KindMIGPlacement
	// KindMIGStatic is a MIG instance that existed before; prepare uses it.
	KindMIGStatic
	// KindGPUShare is a GPU offered in shares; prepare makes each share a
	// client of the GPU's MPS control daemon.
	KindGPUShare
	// KindVFIO is a whole GPU for a VM; prepare binds it to a VFIO driver.
	KindVFIO
)

// Input is everything the model is built from.
type Input struct {
	Inventory *gpu.Inventory
	// GPUTaints are taints of a GPU, by GPU UUID. They apply to the whole GPU
	// and to every MIG device on it.
	GPUTaints map[string][]resourceapi.DeviceTaint
	// MIGTaints are taints of one live MIG instance, by its UUID. They apply
	// to the device that stands for it, each in place of its GPU's taint of
	// the same key.
	MIGTaints map[string][]resourceapi.DeviceTaint
	// Managed reports whether a live MIG instance was created by this driver
	// for a claim. Such an instance is the device of its placement; any other
	// live instance is static. Nil means every live instance is static.
	Managed func(gpu.MIGInstance) bool
	// StaticMIGOnly publishes only pre-created MIG instances on GPUs in MIG
	// mode, and only whole GPUs on the others, as drivers without dynamic
	// MIG do. By default every MIG-capable GPU offers every placement.
	StaticMIGOnly bool
	// SharedGPUs also offers every GPU that is offered whole as a shared
	// device (see the package comment).
	SharedGPUs bool
	// VFIO also offers every GPU that can be offered whole as
	// "gpu-<minor>-vfio" with type=vfio, for passthrough to a VM: it
	// consumes all of the GPU's counters, so while a VM has the GPU
	// nothing else on it is allocated, and the other way round.
	VFIO bool
	// ConsumableShares offers every GPU that is offered whole in NVIDIA's
	// consumable shares (the plugin's --consumable-shares); a node's
	// Offer.ConsumableShares replaces it.
	ConsumableShares ConsumableShares
	// PlacementOrder orders each MIG profile's placements; nil is
	// PackingOrder, the driver's policy. Benchmarks set it to compare
	// policies on the scheduler's allocator.
	PlacementOrder PlacementOrder
	// Layout arranges the devices in slices; nil is GPUMajor, the driver's
	// layout. Benchmarks set it to compare node-wide orders.
	Layout Layout
	// Topology is where each GPU sits in the host, by PCI bus ID; a GPU
	// missing here, or a part of its topology that is unknown, is published
	// without the attribute (pcieRoot, numaNode). Its MIG devices and its
	// shared device carry the GPU's.
	Topology map[string]gpu.Topology
	// Offer limits what is published (a node's labels, ParseOffer); nil
	// offers everything.
	Offer *Offer
	// Overhead is published on every device of the kinds it names, as
	// node-allocatable overhead per pod (KEP-5517); nil publishes none.
	Overhead Overhead
}

// Device is what a published device stands for, for prepare.
type Device struct {
	Name string
	Kind Kind
	GPU  *gpu.GPU
	// Profile and Placement are set for MIG devices.
	Profile   *gpu.MIGProfile
	Placement gpu.Placement
	// Instance is the live instance of a static MIG device.
	Instance *gpu.MIGInstance
	// Attributes are the device's published attributes: the same map as
	// the slice's device holds, to be read and never changed.
	Attributes map[resourceapi.QualifiedName]resourceapi.DeviceAttribute
}

// Model is the node's published view.
type Model struct {
	// Slices in allocation-priority order: the allocator is first fit.
	Slices []resourceslice.Slice
	// Devices by name.
	Devices map[string]*Device
	// Withheld are the live GPU instances published as no device, in GPU
	// order, for the caller to log.
	Withheld []Withheld
}

// Withheld is a live GPU instance that the model publishes no device for;
// its placement is occupied all the same: nothing overlapping it, nor the
// whole GPU, is published.
type Withheld struct {
	GPU       string // UUID
	GIID      int
	Profile   string
	Placement gpu.Placement
	// Reason says why it is no device.
	Reason string
}

// MaxDevicesPerSlice is the API's limit for slices whose devices consume
// counters or carry taints.
const MaxDevicesPerSlice = resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures

// Build computes the model. It fails only on input that cannot be
// published (e.g. more taints than the API allows).
func Build(in Input) (*Model, error) {
	if in.Inventory == nil {
		return nil, fmt.Errorf("build device model: no inventory")
	}
	m := &Model{Devices: map[string]*Device{}}
	var counterSets []resourceapi.CounterSet
	var groups []GPUDevices // devices per GPU, in priority order
	for i := range in.Inventory.GPUs {
		g := &in.Inventory.GPUs[i]
		devs, counters, err := gpuDevices(in, g, m.Devices, &m.Withheld)
		if err != nil {
			return nil, fmt.Errorf("build devices of GPU %s: %w", g.UUID, err)
		}
		if counters != nil {
			counterSets = append(counterSets, *counters)
		}
		info := make([]*Device, len(devs))
		for j, d := range devs {
			info[j] = m.Devices[d.Name]
		}
		groups = append(groups, GPUDevices{Devices: devs, Info: info})
	}
	for start := 0; start < len(counterSets); start += resourceapi.ResourceSliceMaxCounterSets {
		end := min(start+resourceapi.ResourceSliceMaxCounterSets, len(counterSets))
		m.Slices = append(m.Slices, resourceslice.Slice{SharedCounters: counterSets[start:end]})
	}
	layout := in.Layout
	if layout == nil {
		layout = GPUMajor
	}
	laid := layout(groups)
	if err := checkLayout(groups, laid); err != nil {
		return nil, fmt.Errorf("lay out devices in slices: %w", err)
	}
	for _, devs := range laid {
		m.Slices = append(m.Slices, resourceslice.Slice{Devices: devs})
	}
	if len(m.Slices) == 0 {
		// An empty pool says "driver running, no devices", unlike no pool.
		m.Slices = append(m.Slices, resourceslice.Slice{})
	}
	return m, nil
}

// gpuDevices returns one GPU's devices in priority order and its counter set.
func gpuDevices(in Input, g *gpu.GPU, index map[string]*Device, withheld *[]Withheld) ([]resourceapi.Device, *resourceapi.CounterSet, error) {
	common := commonAttributes(in.Inventory, in.Topology, g)
	gpuTaints := in.GPUTaints[g.UUID]
	offer := OfferAll
	if in.Offer != nil {
		offer = *in.Offer
	}

	var static, managed []gpu.MIGInstance
	for _, inst := range g.MIGInstances {
		// Without MIG on offer, instances made for claims are fixed, like
		// static ones, so that nothing published overlaps them.
		if in.Managed != nil && in.Managed(inst) && offer.MIG {
			managed = append(managed, inst)
		} else {
			static = append(static, inst)
		}
	}
	var staticMask uint32
	for _, inst := range static {
		staticMask |= inst.Placement.Mask()
	}
	// A GPU instance without a compute instance is no device, and one
	// with several compute instances is no device a claim can use: a
	// claim for a MIG device gets all of a GPU instance, and each compute
	// instance has only part of it (and all would have one name). Both
	// occupy their placements like pre-created instances.
	firstWithheld := len(*withheld)
	for _, bare := range g.BareGPUInstances {
		staticMask |= bare.Placement.Mask()
		*withheld = append(*withheld, Withheld{GPU: g.UUID, GIID: bare.GIID, Profile: bare.Profile, Placement: bare.Placement,
			Reason: "GPU instance has no compute instance"})
	}
	computeInstances := map[int]int{}
	for _, inst := range g.MIGInstances {
		computeInstances[inst.GIID]++
	}
	// A GPU whose MIG mode changes only at a reset (Ampere) keeps the
	// mode it has: in MIG mode it offers MIG devices only, out of it the
	// whole GPU only. The others change mode as claims need.
	fixedMode := g.MIGModeNeedsReset
	dynamic := g.MIGCapable && len(g.MIGProfiles) > 0 && !in.StaticMIGOnly && (g.MIGEnabled || !fixedMode)
	publishWhole := staticMask == 0 && (dynamic && !fixedMode || !g.MIGEnabled)
	// Placements are published only when on offer; without them a whole
	// GPU needs no counters.
	placements := dynamic && offer.MIG

	var devs []resourceapi.Device
	// add adds a device with the taints of its GPU and, for a MIG
	// device, of its instance, which replace the GPU's of their keys.
	add := func(d resourceapi.Device, info *Device, gpuTaints []resourceapi.DeviceTaint, instTaints ...resourceapi.DeviceTaint) error {
		for _, t := range gpuTaints {
			if !slices.ContainsFunc(instTaints, func(i resourceapi.DeviceTaint) bool { return i.Key == t.Key }) {
				d.Taints = append(d.Taints, t)
			}
		}
		d.Taints = append(d.Taints, instTaints...)
		if len(d.Taints) > resourceapi.DeviceTaintsMaxLength {
			return fmt.Errorf("device %s has %d taints, the API allows %d", d.Name, len(d.Taints), resourceapi.DeviceTaintsMaxLength)
		}
		if n := len(d.Attributes) + len(d.Capacity); n > resourceapi.ResourceSliceMaxAttributesAndCapacitiesPerDevice {
			return fmt.Errorf("device %s has %d attributes and capacities, the API allows %d", d.Name, n, resourceapi.ResourceSliceMaxAttributesAndCapacitiesPerDevice)
		}
		overhead, err := in.Overhead.published(info.Kind)
		if err != nil {
			return fmt.Errorf("device %s: %w", d.Name, err)
		}
		d.NodeAllocatableResources = overhead
		info.Name, info.Attributes = d.Name, d.Attributes
		index[d.Name] = info
		devs = append(devs, d)
		return nil
	}

	consumable := in.ConsumableShares
	if offer.ConsumableShares != nil {
		consumable = *offer.ConsumableShares
	}
	shared := publishWhole && in.SharedGPUs && offer.Shared
	// A GPU with pre-created MIG instances is the host's: it is not
	// offered to VMs any more than whole.
	vfio := publishWhole && in.VFIO && offer.VFIO
	var counters *resourceapi.CounterSet
	var totals counterTotals
	switch {
	case placements:
		totals = computeTotals(g)
		counters = &resourceapi.CounterSet{Name: names.CounterSet(g.Minor), Counters: totals.counters()}
	case shared || vfio:
		// Without MIG only the shared device, the VM's and the whole GPU
		// exclude each other: one counter, all of the GPU's memory, is
		// enough.
		totals = counterTotals{memoryBytes: int64(g.MemoryBytes), noMIG: true}
		counters = &resourceapi.CounterSet{Name: names.CounterSet(g.Minor), Counters: totals.counters()}
	}

	if publishWhole && offer.Whole {
		d := resourceapi.Device{
			Name:       names.GPUDevice(g.Minor),
			Attributes: gpuAttributes(common, g, names.TypeGPU),
			Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
				names.CapacityMemory: {Value: *resource.NewQuantity(int64(g.MemoryBytes), resource.BinarySI)},
			},
		}
		d.Attributes[names.AttrMIGCapable] = resourceapi.DeviceAttribute{BoolValue: ptr.To(g.MIGCapable)}
		if placements {
			d.Capacity[names.CapacityMultiprocessors] = count(totals.multiprocessors)
		}
		if consumable.Enabled() {
			makeConsumable(&d, g.MemoryBytes, consumable)
		}
		if counters != nil {
			d.ConsumesCounters = []resourceapi.DeviceCounterConsumption{{
				CounterSet: counters.Name,
				Counters:   totals.wholeGPU(),
			}}
		}
		if err := add(d, &Device{Kind: KindGPU, GPU: g}, gpuTaints); err != nil {
			return nil, nil, err
		}
	}

	// Pre-created instances come first among MIG devices: using what exists
	// is cheaper than creating.
	for i := range static {
		inst := static[i]
		if n := computeInstances[inst.GIID]; n > 1 {
			if !slices.ContainsFunc(static[:i], func(o gpu.MIGInstance) bool { return o.GIID == inst.GIID }) {
				*withheld = append(*withheld, Withheld{GPU: g.UUID, GIID: inst.GIID, Profile: inst.Profile, Placement: inst.Placement,
					Reason: fmt.Sprintf("GPU instance has %d compute instances; a MIG device is a GPU instance with one", n)})
			}
			continue
		}
		p := profileByID(g, inst.ProfileID)
		if p == nil {
			return nil, nil, fmt.Errorf("live MIG instance %s has unknown profile %d", inst.UUID, inst.ProfileID)
		}
		d := migDevice(common, g, p, inst.Placement, names.StaticMIGDevice(g.Minor, inst.Profile, inst.Placement.Start))
		d.Attributes[names.AttrUUID] = str(inst.UUID)
		// It consumes no counters, which say a placement's size, and it is
		// what NVIDIA's driver published as a MIG device with a parentIndex
		// (until v25.3).
		// With its UUID that makes 17 attributes, in the same size of map
		// as 15 (up to 28).
		d.Attributes[names.AttrPlacementSize] = integer(inst.Placement.Size)
		d.Attributes[names.AttrParentIndex] = integer(g.Index)
		if err := add(d, &Device{Kind: KindMIGStatic, GPU: g, Profile: p, Placement: inst.Placement, Instance: &inst}, gpuTaints, in.MIGTaints[inst.UUID]...); err != nil {
			return nil, nil, err
		}
	}
	slices.SortFunc((*withheld)[firstWithheld:], func(a, b Withheld) int { return a.Placement.Start - b.Placement.Start })

	if placements {
		managedAt := map[[2]int]gpu.MIGInstance{}
		for _, inst := range managed {
			managedAt[[2]int{inst.ProfileID, inst.Placement.Start}] = inst
		}
		order := in.PlacementOrder
		if order == nil {
			order = PackingOrder
		}
		for pi := range g.MIGProfiles {
			p := &g.MIGProfiles[pi]
			if !offer.offersProfile(p) {
				continue
			}
			ordered := order(g, p)
			if !samePlacements(ordered, p.Placements) {
				return nil, nil, fmt.Errorf("placement order of MIG profile %s gives %v, not a permutation of its placements %v", p.Name, ordered, p.Placements)
			}
			for _, pl := range ordered {
				if pl.Mask()&staticMask != 0 {
					continue
				}
				d := migDevice(common, g, p, pl, names.MIGDevice(g.Minor, p.Name, pl.Start))
				d.ConsumesCounters = []resourceapi.DeviceCounterConsumption{{
					CounterSet: counters.Name,
					Counters:   totals.migConsumption(p, pl),
				}}
				var instTaints []resourceapi.DeviceTaint
				if inst, ok := managedAt[[2]int{p.ID, pl.Start}]; ok {
					instTaints = in.MIGTaints[inst.UUID]
				}
				if err := add(d, &Device{Kind: KindMIGPlacement, GPU: g, Profile: p, Placement: pl}, gpuTaints, instTaints...); err != nil {
					return nil, nil, err
				}
			}
		}
	}

	// The VM's device: no claim for a container matches type=vfio, so its
	// place among the GPU's devices costs none of them a try.
	if vfio {
		d := resourceapi.Device{
			Name:       names.VFIODevice(g.Minor),
			Attributes: gpuAttributes(common, g, names.TypeVFIO),
			Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
				names.CapacityAddressableMemory: {Value: *resource.NewQuantity(int64(g.MemoryBytes), resource.BinarySI)},
			},
			ConsumesCounters: []resourceapi.DeviceCounterConsumption{{
				CounterSet: counters.Name,
				Counters:   totals.wholeGPU(),
			}},
		}
		if err := add(d, &Device{Kind: KindVFIO, GPU: g}, gpuTaints); err != nil {
			return nil, nil, err
		}
	}

	// The shared device comes last: a claim whose selector matches both
	// exclusive and shared devices gets a whole GPU or MIG device first.
	if shared {
		d := sharedDevice(common, g)
		d.ConsumesCounters = []resourceapi.DeviceCounterConsumption{{
			CounterSet: counters.Name,
			Counters:   totals.wholeGPU(),
		}}
		if err := add(d, &Device{Kind: KindGPUShare, GPU: g}, gpuTaints); err != nil {
			return nil, nil, err
		}
	}
	return devs, counters, nil
}

// sharedDevice is a GPU offered in shares of its memory and compute.
// Every share consumes at least ShareMemoryMin of memory, rounded up to
// ShareMemoryStep, by default all of it: a share that does not say how
// much memory it needs cannot be given a safe limit, so it gets the GPU's.
// Compute is a percentage, by default 0: no thread limit, the share
// competes for the multiprocessors with the others.
func sharedDevice(common map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, g *gpu.GPU) resourceapi.Device {
	memory := int64(g.MemoryBytes) / ShareMemoryStep * ShareMemoryStep
	d := resourceapi.Device{
		Name:                     names.SharedDevice(g.Minor),
		AllowMultipleAllocations: ptr.To(true),
		Attributes:               gpuAttributes(common, g, names.TypeShared),
		Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
			names.CapacityMemory: {
				Value: *resource.NewQuantity(memory, resource.BinarySI),
				RequestPolicy: &resourceapi.CapacityRequestPolicy{
					Default: resource.NewQuantity(memory, resource.BinarySI),
					ValidRange: &resourceapi.CapacityRequestPolicyRange{
						Min:  resource.NewQuantity(min(ShareMemoryMin, memory), resource.BinarySI),
						Max:  resource.NewQuantity(memory, resource.BinarySI),
						Step: resource.NewQuantity(ShareMemoryStep, resource.BinarySI),
					},
				},
			},
			names.CapacityCompute: {
				Value: *resource.NewQuantity(100, resource.DecimalSI),
				RequestPolicy: &resourceapi.CapacityRequestPolicy{
					Default: resource.NewQuantity(0, resource.DecimalSI),
					ValidRange: &resourceapi.CapacityRequestPolicyRange{
						Min:  resource.NewQuantity(0, resource.DecimalSI),
						Max:  resource.NewQuantity(100, resource.DecimalSI),
						Step: resource.NewQuantity(1, resource.DecimalSI),
					},
				},
			},
		},
	}
	return d
}

// gpuAttributes are the attributes of a device that is a whole GPU, used
// whole or shared: the common ones, its type and the GPU's identity.
func gpuAttributes(common map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, g *gpu.GPU, typ string) map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
	attrs := maps.Clone(common)
	attrs[names.AttrType] = str(typ)
	attrs[names.AttrUUID] = str(g.UUID)
	attrs[names.AttrIndex] = integer(g.Index)
	attrs[names.AttrMinor] = integer(g.Minor)
	return attrs
}

func migDevice(common map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, g *gpu.GPU, p *gpu.MIGProfile, pl gpu.Placement, name string) resourceapi.Device {
	d := resourceapi.Device{
		Name:       name,
		Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{},
		Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
			names.CapacityMemory:          {Value: *resource.NewQuantity(int64(p.MemoryBytes), resource.BinarySI)},
			names.CapacityMultiprocessors: count(p.Multiprocessors),
			names.CapacityCopyEngines:     count(p.CopyEngines),
			names.CapacityDecoders:        count(p.Decoders),
			names.CapacityEncoders:        count(p.Encoders),
			names.CapacityJPEGEngines:     count(p.JPEGEngines),
			names.CapacityOFAEngines:      count(p.OFAEngines),
		},
	}
	for k, v := range common {
		d.Attributes[k] = v
	}
	// A MIG device is no PCI function: the standard attribute names one.
	// Its GPU's stays as pcieBusID (NVIDIA's name until v25.8; its MIG
	// devices now carry the standard one instead). A MIG device has 14 attributes
	// and must keep to that: a Go map holds 14 entries in a table half the
	// size of 15's, so a 15th costs every informer (every scheduler's
	// included) 0.4 MiB per node (docs/benchmarks.md). Hence no
	// placementSize (the profile fixes it, and the memory-slice counters
	// the device consumes say it) and no parentIndex (a third name of the
	// parent beside parentUUID, which NVIDIA's driver publishes too, and
	// parentMinor, ours). Pre-created instances, past 15 anyway, keep both.
	delete(d.Attributes, names.AttrStandardPCIBusID)
	d.Attributes[names.AttrType] = str(names.TypeMIG)
	d.Attributes[names.AttrProfile] = str(p.Name)
	d.Attributes[names.AttrParentUUID] = str(g.UUID)
	d.Attributes[names.AttrParentMinor] = integer(g.Minor)
	d.Attributes[names.AttrPlacementStart] = integer(pl.Start)
	return d
}

// commonAttributes are the attributes a GPU shares with its MIG devices.
func commonAttributes(inv *gpu.Inventory, topo map[string]gpu.Topology, g *gpu.GPU) map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
	attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		names.AttrProductName:  str(g.Name),
		names.AttrBrand:        str(g.Brand),
		names.AttrArchitecture: str(g.Architecture),
	}
	if v, ok := semver(g.CUDAComputeCapability); ok {
		attrs[names.AttrCUDAComputeCapability] = resourceapi.DeviceAttribute{VersionValue: &v}
	}
	if v, ok := semver(inv.DriverVersion); ok {
		attrs[names.AttrDriverVersion] = resourceapi.DeviceAttribute{VersionValue: &v}
	}
	if v, ok := semver(inv.CUDADriverVersion); ok {
		attrs[names.AttrCUDADriverVersion] = resourceapi.DeviceAttribute{VersionValue: &v}
	}
	if g.PCIBusID != "" {
		// The standard attribute (NVIDIA's driver publishes it, on MIG
		// devices too, since v25.12), and pcieBusID, its name for it until
		// v25.8, which users' CEL may still use.
		attrs[names.AttrStandardPCIBusID] = str(g.PCIBusID)
		attrs[names.AttrPCIeBusID] = str(g.PCIBusID)
	}
	if t, ok := topo[g.PCIBusID]; ok && g.PCIBusID != "" {
		if t.PCIeRoot != "" {
			attrs[names.AttrPCIeRoot] = str(t.PCIeRoot)
		}
		if t.NUMANode >= 0 {
			attrs[names.AttrNUMANode] = integer(t.NUMANode)
		}
	}
	return attrs
}

// semver turns "9.0", "12.4" or "535.104.05" into a semantic version
// ("9.0.0", "12.4.0", "535.104.5"): missing parts are zero and leading zeros
// are dropped, as semver requires.
func semver(v string) (string, bool) {
	parts := strings.Split(v, ".")
	if len(parts) == 0 || len(parts) > 3 {
		return "", false
	}
	nums := []string{"0", "0", "0"}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return "", false
		}
		nums[i] = strconv.FormatUint(n, 10)
	}
	return strings.Join(nums, "."), true
}

func str(s string) resourceapi.DeviceAttribute { return resourceapi.DeviceAttribute{StringValue: &s} }

func integer(i int) resourceapi.DeviceAttribute {
	v := int64(i)
	return resourceapi.DeviceAttribute{IntValue: &v}
}

func count(n int) resourceapi.DeviceCapacity {
	return resourceapi.DeviceCapacity{Value: *resource.NewQuantity(int64(n), resource.DecimalSI)}
}

func profileByID(g *gpu.GPU, id int) *gpu.MIGProfile {
	for i := range g.MIGProfiles {
		if g.MIGProfiles[i].ID == id {
			return &g.MIGProfiles[i]
		}
	}
	return nil
}
