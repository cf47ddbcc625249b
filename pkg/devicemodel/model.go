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
//   - with SharedGPUs, every GPU offered whole is also offered as
//     "gpu-<minor>-shared" with type=shared: a device the scheduler may
//     allocate many times (allowMultipleAllocations, KEP-5075), each
//     allocation a share that consumes some of its "memory" and "compute"
//     capacities. It consumes the same counters as the whole GPU, which the
//     allocator charges once for all its shares, so a GPU is used either
//     exclusively (whole or MIG) or shared, never both.
package devicemodel

import (
	"fmt"
	"maps"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// DriverName is the DRA driver name users already write in DeviceClasses.
const DriverName = "gpu.nvidia.com"

// Device types, the value of the "type" attribute.
const (
	TypeGPU    = "gpu"
	TypeMIG    = "mig"
	TypeShared = "shared"
)

// Capacities of a shared GPU that each share consumes.
const (
	// CapacityMemory is GPU memory in bytes; a share's amount becomes its
	// MPS pinned device memory limit.
	CapacityMemory resourceapi.QualifiedName = "memory"
	// CapacityCompute is a percentage of the GPU's multiprocessors; a
	// share's amount, when not zero, becomes its MPS active thread
	// percentage.
	CapacityCompute resourceapi.QualifiedName = "compute"
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
)

// Input is everything the model is built from.
type Input struct {
	Inventory *gpu.Inventory
	// GPUTaints are taints of a GPU, by GPU UUID. They apply to the whole GPU
	// and to every MIG device on it.
	GPUTaints map[string][]resourceapi.DeviceTaint
	// MIGTaints are taints of one live MIG instance, by its UUID. They apply
	// to the device that stands for it.
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
	// PlacementOrder orders each MIG profile's placements; nil is
	// PackingOrder, the driver's policy. Benchmarks set it to compare
	// policies on the scheduler's allocator.
	PlacementOrder PlacementOrder
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
}

// Model is the node's published view.
type Model struct {
	// Slices in allocation-priority order: the allocator is first fit.
	Slices []resourceslice.Slice
	// Devices by name.
	Devices map[string]*Device
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
	var groups [][]resourceapi.Device // devices per GPU, in priority order
	for i := range in.Inventory.GPUs {
		g := &in.Inventory.GPUs[i]
		devs, counters, err := gpuDevices(in, g, m.Devices)
		if err != nil {
			return nil, fmt.Errorf("build devices of GPU %s: %w", g.UUID, err)
		}
		if counters != nil {
			counterSets = append(counterSets, *counters)
		}
		groups = append(groups, devs)
	}
	for start := 0; start < len(counterSets); start += resourceapi.ResourceSliceMaxCounterSets {
		end := min(start+resourceapi.ResourceSliceMaxCounterSets, len(counterSets))
		m.Slices = append(m.Slices, resourceslice.Slice{SharedCounters: counterSets[start:end]})
	}
	// Device slices hold whole GPUs' worth of devices, so that a change on
	// one GPU (a taint, a new static instance) rewrites one slice.
	var cur []resourceapi.Device
	flush := func() {
		if len(cur) > 0 {
			m.Slices = append(m.Slices, resourceslice.Slice{Devices: cur})
			cur = nil
		}
	}
	for _, devs := range groups {
		if len(cur)+len(devs) > MaxDevicesPerSlice {
			flush()
		}
		for len(devs) > MaxDevicesPerSlice {
			m.Slices = append(m.Slices, resourceslice.Slice{Devices: devs[:MaxDevicesPerSlice]})
			devs = devs[MaxDevicesPerSlice:]
		}
		cur = append(cur, devs...)
	}
	flush()
	if len(m.Slices) == 0 {
		// An empty pool says "driver running, no devices", unlike no pool.
		m.Slices = append(m.Slices, resourceslice.Slice{})
	}
	return m, nil
}

// GPUDeviceName is the name of a whole GPU's device.
func GPUDeviceName(g *gpu.GPU) string { return fmt.Sprintf("gpu-%d", g.Minor) }

// MIGDeviceName is the name of a MIG placement's device.
func MIGDeviceName(g *gpu.GPU, profile string, start int) string {
	return fmt.Sprintf("gpu-%d-mig-%s-%d", g.Minor, SanitizeProfile(profile), start)
}

// StaticMIGDeviceName is the name of a pre-created MIG instance's device.
func StaticMIGDeviceName(g *gpu.GPU, inst gpu.MIGInstance) string {
	return MIGDeviceName(g, inst.Profile, inst.Placement.Start) + "-static"
}

// SharedDeviceName is the name of a GPU's shared device.
func SharedDeviceName(g *gpu.GPU) string { return fmt.Sprintf("gpu-%d-shared", g.Minor) }

// CounterSetName is the name of a GPU's counter set.
func CounterSetName(g *gpu.GPU) string { return fmt.Sprintf("gpu-%d", g.Minor) }

// SanitizeProfile turns a MIG profile name into a DNS-label fragment:
// "1g.10gb" -> "1g10gb", "1g.10gb+me" -> "1g10gbme", "1g.10gb-me" ->
// "1g10gbnome", "1g.10gb+me.all" -> "1g10gbmeall".
func SanitizeProfile(profile string) string {
	p := strings.ToLower(profile)
	p = strings.ReplaceAll(p, "-me", "nome")
	var b strings.Builder
	for _, c := range p {
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') {
			b.WriteRune(c)
		}
	}
	return b.String()
}

func memorySliceCounter(i int) string { return fmt.Sprintf("memory-slice-%d", i) }

func instanceLimitCounter(p *gpu.MIGProfile) string {
	return "instances-" + SanitizeProfile(p.Name)
}

// gpuDevices returns one GPU's devices in priority order and its counter set.
func gpuDevices(in Input, g *gpu.GPU, index map[string]*Device) ([]resourceapi.Device, *resourceapi.CounterSet, error) {
	common := commonAttributes(in.Inventory, g)
	gpuTaints := in.GPUTaints[g.UUID]

	var static, managed []gpu.MIGInstance
	for _, inst := range g.MIGInstances {
		if in.Managed != nil && in.Managed(inst) {
			managed = append(managed, inst)
		} else {
			static = append(static, inst)
		}
	}
	var staticMask uint32
	for _, inst := range static {
		staticMask |= inst.Placement.Mask()
	}
	dynamic := g.MIGCapable && len(g.MIGProfiles) > 0 && !in.StaticMIGOnly
	publishWhole := staticMask == 0 && (dynamic || !g.MIGEnabled)

	var devs []resourceapi.Device
	add := func(d resourceapi.Device, info *Device, taints ...[]resourceapi.DeviceTaint) error {
		for _, ts := range taints {
			d.Taints = append(d.Taints, ts...)
		}
		if len(d.Taints) > resourceapi.DeviceTaintsMaxLength {
			return fmt.Errorf("device %s has %d taints, the API allows %d", d.Name, len(d.Taints), resourceapi.DeviceTaintsMaxLength)
		}
		if n := len(d.Attributes) + len(d.Capacity); n > resourceapi.ResourceSliceMaxAttributesAndCapacitiesPerDevice {
			return fmt.Errorf("device %s has %d attributes and capacities, the API allows %d", d.Name, n, resourceapi.ResourceSliceMaxAttributesAndCapacitiesPerDevice)
		}
		info.Name = d.Name
		index[d.Name] = info
		devs = append(devs, d)
		return nil
	}

	shared := publishWhole && in.SharedGPUs
	var counters *resourceapi.CounterSet
	var totals counterTotals
	switch {
	case dynamic:
		totals = computeTotals(g)
		counters = &resourceapi.CounterSet{Name: CounterSetName(g), Counters: totals.counters()}
	case shared:
		// Without MIG only the shared device and the whole GPU exclude each
		// other: one counter, all of the GPU's memory, is enough.
		totals = counterTotals{memoryBytes: int64(g.MemoryBytes), noMIG: true}
		counters = &resourceapi.CounterSet{Name: CounterSetName(g), Counters: totals.counters()}
	}

	if publishWhole {
		d := resourceapi.Device{
			Name:       GPUDeviceName(g),
			Attributes: gpuAttributes(common, g, TypeGPU),
			Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
				"memory": {Value: *resource.NewQuantity(int64(g.MemoryBytes), resource.BinarySI)},
			},
		}
		d.Attributes["migCapable"] = resourceapi.DeviceAttribute{BoolValue: ptr.To(g.MIGCapable)}
		if dynamic {
			d.Capacity["multiprocessors"] = count(totals.multiprocessors)
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
		p := profileByID(g, inst.ProfileID)
		if p == nil {
			return nil, nil, fmt.Errorf("live MIG instance %s has unknown profile %d", inst.UUID, inst.ProfileID)
		}
		d := migDevice(common, g, p, inst.Placement, StaticMIGDeviceName(g, inst))
		d.Attributes["uuid"] = str(inst.UUID)
		if err := add(d, &Device{Kind: KindMIGStatic, GPU: g, Profile: p, Placement: inst.Placement, Instance: &inst}, gpuTaints, in.MIGTaints[inst.UUID]); err != nil {
			return nil, nil, err
		}
	}

	if dynamic {
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
			ordered := order(g, p)
			if !samePlacements(ordered, p.Placements) {
				return nil, nil, fmt.Errorf("placement order of MIG profile %s gives %v, not a permutation of its placements %v", p.Name, ordered, p.Placements)
			}
			for _, pl := range ordered {
				if pl.Mask()&staticMask != 0 {
					continue
				}
				d := migDevice(common, g, p, pl, MIGDeviceName(g, p.Name, pl.Start))
				d.ConsumesCounters = []resourceapi.DeviceCounterConsumption{{
					CounterSet: counters.Name,
					Counters:   totals.migConsumption(p, pl),
				}}
				var instTaints []resourceapi.DeviceTaint
				if inst, ok := managedAt[[2]int{p.ID, pl.Start}]; ok {
					instTaints = in.MIGTaints[inst.UUID]
				}
				if err := add(d, &Device{Kind: KindMIGPlacement, GPU: g, Profile: p, Placement: pl}, gpuTaints, instTaints); err != nil {
					return nil, nil, err
				}
			}
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
		Name:                     SharedDeviceName(g),
		AllowMultipleAllocations: ptr.To(true),
		Attributes:               gpuAttributes(common, g, TypeShared),
		Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
			CapacityMemory: {
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
			CapacityCompute: {
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
	attrs["type"] = str(typ)
	attrs["uuid"] = str(g.UUID)
	attrs["index"] = integer(g.Index)
	attrs["minor"] = integer(g.Minor)
	return attrs
}

func migDevice(common map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, g *gpu.GPU, p *gpu.MIGProfile, pl gpu.Placement, name string) resourceapi.Device {
	d := resourceapi.Device{
		Name:       name,
		Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{},
		Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
			"memory":          {Value: *resource.NewQuantity(int64(p.MemoryBytes), resource.BinarySI)},
			"multiprocessors": count(p.Multiprocessors),
			"copyEngines":     count(p.CopyEngines),
			"decoders":        count(p.Decoders),
			"encoders":        count(p.Encoders),
			"jpegEngines":     count(p.JPEGEngines),
			"ofaEngines":      count(p.OFAEngines),
		},
	}
	for k, v := range common {
		d.Attributes[k] = v
	}
	d.Attributes["type"] = str(TypeMIG)
	d.Attributes["profile"] = str(p.Name)
	d.Attributes["parentUUID"] = str(g.UUID)
	d.Attributes["parentIndex"] = integer(g.Index)
	d.Attributes["parentMinor"] = integer(g.Minor)
	d.Attributes["placementStart"] = integer(pl.Start)
	d.Attributes["placementSize"] = integer(pl.Size)
	return d
}

// commonAttributes are the attributes a GPU shares with its MIG devices.
func commonAttributes(inv *gpu.Inventory, g *gpu.GPU) map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
	attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		"productName":  str(g.Name),
		"brand":        str(g.Brand),
		"architecture": str(g.Architecture),
	}
	if v, ok := semver(g.CUDAComputeCapability); ok {
		attrs["cudaComputeCapability"] = resourceapi.DeviceAttribute{VersionValue: &v}
	}
	if v, ok := semver(inv.DriverVersion); ok {
		attrs["driverVersion"] = resourceapi.DeviceAttribute{VersionValue: &v}
	}
	if v, ok := semver(inv.CUDADriverVersion); ok {
		attrs["cudaDriverVersion"] = resourceapi.DeviceAttribute{VersionValue: &v}
	}
	if g.PCIBusID != "" {
		// The standard attribute, and the name NVIDIA's driver publishes
		// (MIG devices carry their GPU's), which users' CEL already uses.
		attrs["resource.kubernetes.io/pciBusID"] = str(g.PCIBusID)
		attrs["pcieBusID"] = str(g.PCIBusID)
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
