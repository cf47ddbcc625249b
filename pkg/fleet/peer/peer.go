// Package peer builds, for a simulated node, the pool that NVIDIA's DRA
// driver for GPUs (kubernetes-sigs/dra-driver-nvidia-gpu) publishes for the
// same hardware, so that the fleet harness can measure both shapes side by
// side. It models release v0.4.1 (commit 764900e7833798a1528bd52a2af3e1b2d5f7a616)
// with its DynamicMIG feature gate on, against Kubernetes 1.35 or later;
// docs/benchmarks.md cites the files each rule comes from. Nothing here is
// NVIDIA's code: it is a reading of what that code publishes.
//
// The shape, per GPU with MIG profiles:
//   - one whole-GPU device "gpu-<minor>" with the attributes type=gpu, uuid,
//     productName, brand, architecture, cudaComputeCapability,
//     driverVersion, cudaDriverVersion (versions), the standard
//     resource.kubernetes.io/pciBusID and pcieRoot; as capacity, the
//     largest of each MIG capacity over all profiles (multiprocessors,
//     copyEngines, decoders, encoders, jpegEngines, ofaEngines, memory); it
//     consumes every counter of its GPU's counter set;
//   - one device per MIG profile (a GPU-instance profile with one compute
//     instance spanning it) and placement, "gpu-<minor>-mig-<profile>-<profile
//     ID>-<start>", with type=mig, parentUUID, profile, the parent's product
//     and version attributes, its pciBusID and pcieRoot (no uuid, no minor, no
//     placement attribute); capacity the profile's seven; it consumes the
//     profile's seven counters plus memory-slice-<i> for each memory slice of
//     its placement;
//   - one counter set "gpu-<minor>-counter-set" of 7 + memory-slices counters.
//
// The slices: the first holds every GPU's counter set and no device, then
// one slice per GPU (in PCI bus ID order) holds its devices, sorted by name.
package peer

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/dynamic-resource-allocation/resourceslice"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Release is the release of NVIDIA's driver whose pool this package builds.
const Release = "v0.4.1"

// Commit is Release's commit in kubernetes-sigs/dra-driver-nvidia-gpu.
const Commit = "764900e7833798a1528bd52a2af3e1b2d5f7a616"

// DriverName is the DRA driver name NVIDIA's driver publishes under: the
// same as ours.
const DriverName = names.DriverName

// Device classes of NVIDIA's chart (templates/deviceclass-gpu.yaml and
// deviceclass-mig.yaml), which users' claims name: the same names as ours.
const (
	GPUDeviceClass = names.GPUDeviceClass
	MIGDeviceClass = names.MIGDeviceClass
)

// Attribute keys NVIDIA's driver publishes.
const (
	attrType                  = "type"
	attrUUID                  = "uuid"
	attrParentUUID            = "parentUUID"
	attrProfile               = "profile"
	attrProductName           = "productName"
	attrBrand                 = "brand"
	attrArchitecture          = "architecture"
	attrCUDAComputeCapability = "cudaComputeCapability"
	attrDriverVersion         = "driverVersion"
	attrCUDADriverVersion     = "cudaDriverVersion"
	attrPCIBusID              = "resource.kubernetes.io/pciBusID"
	attrPCIeRoot              = "resource.kubernetes.io/pcieRoot"
)

// DeviceClasses are NVIDIA's chart's two GPU DeviceClasses, with its
// selectors as written there. (Its gpu.nvidia.com class also names the
// extended resource nvidia.com/gpu; the harness's pods never request it,
// and our side's classes in the harness leave it out as well.)
func DeviceClasses() []*resourceapi.DeviceClass {
	class := func(name, typ string) *resourceapi.DeviceClass {
		expr := fmt.Sprintf("device.driver == '%s' && device.attributes['%s'].type == '%s'", DriverName, DriverName, typ)
		return &resourceapi.DeviceClass{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       resourceapi.DeviceClassSpec{Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: expr}}}},
		}
	}
	return []*resourceapi.DeviceClass{class(GPUDeviceClass, "gpu"), class(MIGDeviceClass, "mig")}
}

// Slices returns the node's pool as NVIDIA's driver publishes it, in
// publishing order. topo gives each GPU's PCIe root by PCI bus ID.
func Slices(inv *gpu.Inventory, topo map[string]gpu.Topology) ([]resourceslice.Slice, error) {
	gpus := slices.Clone(inv.GPUs)
	slices.SortFunc(gpus, func(a, b gpu.GPU) int { return strings.Compare(a.PCIBusID, b.PCIBusID) })
	counters := resourceslice.Slice{}
	out := []resourceslice.Slice{{}}
	for i := range gpus {
		g := &gpus[i]
		devs, set, err := gpuDevices(inv, topo, g)
		if err != nil {
			return nil, err
		}
		if set != nil {
			counters.SharedCounters = append(counters.SharedCounters, *set)
		}
		out = append(out, resourceslice.Slice{Devices: devs})
	}
	out[0] = counters
	return out, nil
}

// gpuDevices are one GPU's devices, sorted by name, and its counter set
// (nil without MIG profiles).
func gpuDevices(inv *gpu.Inventory, topo map[string]gpu.Topology, g *gpu.GPU) ([]resourceapi.Device, *resourceapi.CounterSet, error) {
	common, err := commonAttributes(inv, topo, g)
	if err != nil {
		return nil, nil, err
	}
	whole := resourceapi.Device{Name: fmt.Sprintf("gpu-%d", g.Minor), Attributes: clone(common)}
	whole.Attributes[attrType] = str("gpu")
	whole.Attributes[attrUUID] = str(g.UUID)
	devs := []resourceapi.Device{}
	maxCaps := map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{}
	slicesSeen := 0
	setName := toRFC1123(fmt.Sprintf("gpu-%d-counter-set", g.Minor))
	for _, p := range g.MIGProfiles {
		caps := profileCapacities(&p)
		for name, c := range caps {
			if cur, ok := maxCaps[name]; !ok || c.Value.Cmp(cur.Value) > 0 {
				maxCaps[name] = c
			}
		}
		for _, pl := range p.Placements {
			slicesSeen = max(slicesSeen, pl.Size)
			d := resourceapi.Device{
				Name:       fmt.Sprintf("gpu-%d-mig-%s-%d-%d", g.Minor, toRFC1123(strings.ReplaceAll(p.Name, ".", "")), nvmlProfileID(p.ID), pl.Start),
				Attributes: clone(common),
				Capacity:   caps,
				ConsumesCounters: []resourceapi.DeviceCounterConsumption{{
					CounterSet: setName,
					Counters:   memSlices(counters(caps), pl.Start, pl.Size),
				}},
			}
			d.Attributes[attrType] = str("mig")
			d.Attributes[attrParentUUID] = str(g.UUID)
			d.Attributes[attrProfile] = str(p.Name)
			devs = append(devs, d)
		}
	}
	var set *resourceapi.CounterSet
	if len(maxCaps) == 0 {
		// Without MIG profiles: the memory capacity alone and no counters.
		whole.Capacity = map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{"memory": quantity(int64(g.MemoryBytes))}
	} else {
		whole.Capacity = maxCaps
		whole.ConsumesCounters = []resourceapi.DeviceCounterConsumption{{CounterSet: setName, Counters: memSlices(counters(maxCaps), 0, slicesSeen)}}
		set = &resourceapi.CounterSet{Name: setName, Counters: memSlices(counters(maxCaps), 0, slicesSeen)}
	}
	devs = append(devs, whole)
	slices.SortFunc(devs, func(a, b resourceapi.Device) int { return strings.Compare(a.Name, b.Name) })
	return devs, set, nil
}

// commonAttributes are the attributes a GPU shares with its MIG devices.
func commonAttributes(inv *gpu.Inventory, topo map[string]gpu.Topology, g *gpu.GPU) (map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, error) {
	attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		attrProductName:  str(g.Name),
		attrBrand:        str(g.Brand),
		attrArchitecture: str(g.Architecture),
		attrPCIBusID:     str(g.PCIBusID),
	}
	for key, v := range map[resourceapi.QualifiedName]string{
		attrCUDAComputeCapability: g.CUDAComputeCapability,
		attrDriverVersion:         inv.DriverVersion,
		attrCUDADriverVersion:     inv.CUDADriverVersion,
	} {
		sv, err := semver(v)
		if err != nil {
			return nil, fmt.Errorf("attribute %s of GPU %s: %w", key, g.UUID, err)
		}
		attrs[key] = resourceapi.DeviceAttribute{VersionValue: &sv}
	}
	if t, ok := topo[g.PCIBusID]; ok && t.PCIeRoot != "" {
		attrs[attrPCIeRoot] = str(t.PCIeRoot)
	}
	return attrs, nil
}

// profileCapacities are a MIG profile's seven capacities, memory in bytes
// (NVML's MiB times 2^20).
func profileCapacities(p *gpu.MIGProfile) map[resourceapi.QualifiedName]resourceapi.DeviceCapacity {
	return map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
		"multiprocessors": quantity(int64(p.Multiprocessors)),
		"copyEngines":     quantity(int64(p.CopyEngines)),
		"decoders":        quantity(int64(p.Decoders)),
		"encoders":        quantity(int64(p.Encoders)),
		"jpegEngines":     quantity(int64(p.JPEGEngines)),
		"ofaEngines":      quantity(int64(p.OFAEngines)),
		"memory":          quantity(int64(p.MemoryBytes)),
	}
}

// profileIDs are the IDs NVML's GpuInstanceProfileInfo reports (the ones
// nvidia-smi mig -lgip lists), by GPU_INSTANCE_PROFILE_* constant, which is
// what gpu.MIGProfile.ID holds; NVIDIA's driver names a MIG device after
// the former.
var profileIDs = map[int]int{
	0: 19, // 1_SLICE: 1g.10gb on H100
	1: 14, // 2_SLICE: 2g.20gb
	2: 9,  // 3_SLICE: 3g.40gb
	3: 5,  // 4_SLICE: 4g.40gb
	4: 0,  // 7_SLICE: 7g.80gb
	7: 20, // 1_SLICE_REV1: 1g.10gb+me
	9: 15, // 1_SLICE_REV2: 1g.20gb
}

// nvmlProfileID is the NVML profile ID of a GPU_INSTANCE_PROFILE_* constant,
// the constant itself where it is not in profileIDs.
func nvmlProfileID(constant int) int {
	if id, ok := profileIDs[constant]; ok {
		return id
	}
	return constant
}

var (
	lowerUpper = regexp.MustCompile("([a-z0-9])([A-Z])")
	upperRun   = regexp.MustCompile("([A-Z]+)([A-Z][a-z])")
	notDNS     = regexp.MustCompile(`[^a-z0-9-.]`)
)

// counters turns capacities into counters, each named as a DNS label
// ("copyEngines" becomes "copy-engines").
func counters(caps map[resourceapi.QualifiedName]resourceapi.DeviceCapacity) map[string]resourceapi.Counter {
	out := make(map[string]resourceapi.Counter, len(caps))
	for name, c := range caps {
		n := upperRun.ReplaceAllString(lowerUpper.ReplaceAllString(string(name), "$1-$2"), "$1-$2")
		out[toRFC1123(n)] = resourceapi.Counter{Value: c.Value}
	}
	return out
}

// memSlices adds a counter of 1 for each memory slice from start on.
func memSlices(c map[string]resourceapi.Counter, start, size int) map[string]resourceapi.Counter {
	for i := start; i < start+size; i++ {
		c[fmt.Sprintf("memory-slice-%d", i)] = resourceapi.Counter{Value: *resource.NewQuantity(1, resource.BinarySI)}
	}
	return c
}

// toRFC1123 lowercases a name and turns what a DNS name may not hold into
// dashes ("1g10gb+me" becomes "1g10gb-me").
func toRFC1123(name string) string {
	name = notDNS.ReplaceAllString(strings.ToLower(name), "-")
	return strings.TrimSuffix(strings.Trim(name, "-"), ".")
}

// semver writes "9.0" or "550.54.15" as a semantic version, as the
// Masterminds parser NVIDIA's driver uses does ("9.0.0", "550.54.15").
func semver(v string) (string, error) {
	parts := strings.Split(v, ".")
	if v == "" || len(parts) > 3 {
		return "", fmt.Errorf("version %q: want one to three numbers", v)
	}
	for len(parts) < 3 {
		parts = append(parts, "0")
	}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return "", fmt.Errorf("version %q: %w", v, err)
		}
		parts[i] = strconv.FormatUint(n, 10)
	}
	return strings.Join(parts, "."), nil
}

func clone(m map[resourceapi.QualifiedName]resourceapi.DeviceAttribute) map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
	out := make(map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, len(m)+3)
	for k, v := range m {
		out[k] = v
	}
	return out
}

func str(s string) resourceapi.DeviceAttribute { return resourceapi.DeviceAttribute{StringValue: &s} }

func quantity(n int64) resourceapi.DeviceCapacity {
	return resourceapi.DeviceCapacity{Value: *resource.NewQuantity(n, resource.BinarySI)}
}
