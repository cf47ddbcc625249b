// Package names is the one home of the names the driver shares with users,
// admins' tools and its own components: the DRA driver name, the names of
// devices, counter sets and counters (built and parsed), attribute and
// capacity keys, and the keys of taints, labels and annotations.
//
// Everything here is part of the driver's public surface: users write these
// names in DeviceClasses, CEL selectors and tolerations, and tools such as
// kubectl-gpu find devices by them. Changing one breaks users; add, do not
// rename. The package is pure (no I/O, no dependencies), so every other
// package, including the webhook and kubectl-gpu, can import it.
package names

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// DriverName is the DRA driver name users already write in DeviceClasses
// and ResourceClaims (NVIDIA's driver uses the same one). The driver's pool
// on a node is named after the node.
const DriverName = "gpu.nvidia.com"

// keyPrefix qualifies the driver's own taint, label and annotation keys.
const keyPrefix = DriverName + "/"

// Device types, the values of the AttrType attribute.
const (
	TypeGPU    = "gpu"
	TypeMIG    = "mig"
	TypeShared = "shared"
	// TypeVFIO is a whole GPU for a virtual machine (NVIDIA-compatible).
	TypeVFIO = "vfio"
)

// Attribute keys of published devices. Those marked "NVIDIA-compatible" are
// spelled as NVIDIA's driver spells them, since users' CEL selects on them.
const (
	// AttrType is TypeGPU, TypeMIG, TypeShared or TypeVFIO.
	AttrType = "type"
	// AttrUUID is the GPU's UUID on a whole or shared GPU, the MIG device's
	// UUID on a pre-created MIG instance (NVIDIA-compatible).
	AttrUUID = "uuid"
	// AttrIndex is the GPU's NVML index (NVIDIA's until its v25.3 releases).
	AttrIndex = "index"
	// AttrMinor is the minor number of /dev/nvidia<minor> (NVIDIA's until
	// its v25.3 releases).
	AttrMinor = "minor"
	// AttrProductName is NVML's product name (NVIDIA-compatible).
	AttrProductName = "productName"
	// AttrBrand is NVML's brand, e.g. "Nvidia".
	AttrBrand = "brand"
	// AttrArchitecture is a lowercase family name (NVIDIA-compatible).
	AttrArchitecture = "architecture"
	// AttrCUDAComputeCapability is a version (NVIDIA-compatible).
	AttrCUDAComputeCapability = "cudaComputeCapability"
	// AttrDriverVersion is the kernel driver's version (NVIDIA-compatible).
	AttrDriverVersion = "driverVersion"
	// AttrCUDADriverVersion is the highest CUDA version the driver supports.
	AttrCUDADriverVersion = "cudaDriverVersion"
	// AttrMIGCapable says whether a whole GPU can be partitioned.
	AttrMIGCapable = "migCapable"
	// AttrProfile is a MIG device's profile, e.g. "1g.10gb" (NVIDIA-compatible).
	AttrProfile = "profile"
	// AttrParentUUID is a MIG device's GPU's UUID (NVIDIA-compatible).
	AttrParentUUID = "parentUUID"
	// AttrParentIndex is a pre-created MIG instance's GPU's NVML index
	// (NVIDIA's static MIG devices had it until its v25.3 releases).
	AttrParentIndex = "parentIndex"
	// AttrParentMinor is a MIG device's GPU's minor number (ours: NVIDIA's
	// driver never released it as an attribute).
	AttrParentMinor = "parentMinor"
	// AttrPlacementStart is the first memory slice of a MIG device.
	AttrPlacementStart = "placementStart"
	// AttrPlacementSize is the number of memory slices of a pre-created
	// MIG instance, which consumes no counters that would say it.
	AttrPlacementSize = "placementSize"
	// AttrPCIeBusID is the GPU's PCI bus ID under the name NVIDIA's driver
	// used until v25.8 (since v25.12 it publishes AttrStandardPCIBusID, on
	// MIG devices too).
	AttrPCIeBusID = "pcieBusID"
	// AttrStandardPCIBusID is Kubernetes' standard PCI bus ID attribute.
	AttrStandardPCIBusID = "resource.kubernetes.io/pciBusID"
	// AttrPCIeRoot is Kubernetes' standard PCIe root complex attribute,
	// "pci<domain>:<bus>": devices that share it share a root complex, so
	// a claim can align a GPU with a NIC by matchAttribute on it.
	AttrPCIeRoot = "resource.kubernetes.io/pcieRoot"
	// AttrNUMANode is Kubernetes' standard NUMA node attribute (KEP-6072),
	// an int: the NUMA node of the GPU's PCI device. A GPU without NUMA
	// affinity does not have it.
	AttrNUMANode = "resource.kubernetes.io/numaNode"
	// AttrGPUInstanceID and AttrComputeInstanceID identify a MIG device's
	// GPU and compute instance on its GPU. Not published: a MIG device
	// made at prepare has them only then, so only its device metadata
	// (KEP-5304) carries them, with its AttrUUID.
	AttrGPUInstanceID     = "gpuInstanceID"
	AttrComputeInstanceID = "computeInstanceID"
)

// Capacity keys of published devices.
const (
	// CapacityMemory is GPU memory in bytes; on a shared GPU a share's
	// amount becomes its MPS pinned device memory limit.
	CapacityMemory = "memory"
	// CapacityAddressableMemory is a VFIO device's GPU memory in bytes
	// (NVIDIA-compatible).
	CapacityAddressableMemory = "addressableMemory"
	// CapacityShares counts a whole GPU's consumable shares (NVIDIA's
	// "shares", published with ConsumableSharesLabel or the plugin's
	// --consumable-shares set to a number): how many claims may hold the
	// GPU at once. It limits the count only; no hardware limit follows.
	CapacityShares = "shares"
	// CapacityCompute is a percentage of a shared GPU's multiprocessors; a
	// share's amount, when not zero, becomes its MPS active thread
	// percentage.
	CapacityCompute = "compute"
	// CapacityMultiprocessors counts streaming multiprocessors.
	CapacityMultiprocessors = "multiprocessors"
	// Engine counts of a MIG device.
	CapacityCopyEngines = "copyEngines"
	CapacityDecoders    = "decoders"
	CapacityEncoders    = "encoders"
	CapacityJPEGEngines = "jpegEngines"
	CapacityOFAEngines  = "ofaEngines"
)

// Counter names of a GPU's counter set (besides CapacityMemory and
// CapacityMultiprocessors, which are counters too).
const (
	memorySliceCounterPrefix   = "memory-slice-"
	instanceLimitCounterPrefix = "instances-"
)

// MemorySliceCounter is the counter of a GPU's i-th memory slice.
func MemorySliceCounter(i int) string { return memorySliceCounterPrefix + strconv.Itoa(i) }

// IsMemorySliceCounter says whether a counter is one of a GPU's memory
// slices: a MIG device consumes one per memory slice it spans.
func IsMemorySliceCounter(name string) bool {
	return strings.HasPrefix(name, memorySliceCounterPrefix)
}

// InstanceLimitCounter is the counter that limits how many instances of a
// MIG profile a GPU can hold at once (e.g. one "+me").
func InstanceLimitCounter(profile string) string {
	return instanceLimitCounterPrefix + SanitizeProfile(profile)
}

// Device name parts: "gpu-<minor>", "gpu-<minor>-mig-<profile>-<start>",
// that with "-static" for a pre-created instance, "gpu-<minor>-shared".
const (
	gpuPrefix    = "gpu-"
	migInfix     = "-mig-"
	staticSuffix = "-static"
	sharedSuffix = "-shared"
	vfioSuffix   = "-vfio"
)

// GPUDevice is the name of a whole GPU's device; it is also the name of the
// GPU's counter set.
func GPUDevice(minor int) string { return gpuPrefix + strconv.Itoa(minor) }

// CounterSet is the name of a GPU's counter set.
func CounterSet(minor int) string { return GPUDevice(minor) }

// MIGDevice is the name of a MIG profile's device at a placement.
func MIGDevice(minor int, profile string, start int) string {
	return fmt.Sprintf("%s%s%s-%d", GPUDevice(minor), migInfix, SanitizeProfile(profile), start)
}

// StaticMIGDevice is the name of a pre-created MIG instance's device.
func StaticMIGDevice(minor int, profile string, start int) string {
	return MIGDevice(minor, profile, start) + staticSuffix
}

// SharedDevice is the name of a GPU's shared device.
func SharedDevice(minor int) string { return GPUDevice(minor) + sharedSuffix }

// HasGraphics reports whether a MIG profile name ("1g.24gb+gfx") has the
// graphics attribute, which NVIDIA's profiles of RTX PRO Blackwell GPUs
// carry: such a device's containers get its GPU's DRM nodes.
func HasGraphics(profile string) bool {
	_, attrs, _ := strings.Cut(profile, "+")
	return slices.Contains(strings.Split(attrs, "+"), "gfx")
}

// VFIODevice is the name of a GPU's device for passthrough to a VM.
func VFIODevice(minor int) string { return GPUDevice(minor) + vfioSuffix }

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

// ParsedDevice is what a device name says about a device.
type ParsedDevice struct {
	// Minor is the minor number of the GPU the device is or is carved from.
	Minor int
	// Type is TypeGPU, TypeMIG, TypeShared or TypeVFIO.
	Type string
}

// ParseDevice reads a device name built by this package. It accepts only
// canonical minors (no sign, no leading zeros), so every GPU has exactly one
// spelling and "gpu-30-mig-…" or "gpu-3x" never belong to GPU 3.
func ParseDevice(name string) (ParsedDevice, bool) {
	rest, ok := strings.CutPrefix(name, gpuPrefix)
	if !ok {
		return ParsedDevice{}, false
	}
	num, tail, hasTail := strings.Cut(rest, "-")
	minor, ok := ParseMinor(num)
	if !ok {
		return ParsedDevice{}, false
	}
	switch {
	case !hasTail:
		return ParsedDevice{Minor: minor, Type: TypeGPU}, true
	case "-"+tail == sharedSuffix:
		return ParsedDevice{Minor: minor, Type: TypeShared}, true
	case "-"+tail == vfioSuffix:
		return ParsedDevice{Minor: minor, Type: TypeVFIO}, true
	case strings.HasPrefix("-"+tail, migInfix) && len("-"+tail) > len(migInfix):
		return ParsedDevice{Minor: minor, Type: TypeMIG}, true
	}
	return ParsedDevice{}, false
}

// ParseGPUDevice reads "gpu-<minor>" or a bare "<minor>", the ways admins
// name one GPU.
func ParseGPUDevice(s string) (int, bool) {
	return ParseMinor(strings.TrimPrefix(s, gpuPrefix))
}

// ParseMinor reads a canonical non-negative decimal number: no sign, no
// leading zeros.
func ParseMinor(s string) (int, bool) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || strconv.Itoa(n) != s {
		return 0, false
	}
	return n, true
}

// Taint keys. A health condition's taint key is HealthTaintKey(condition).
const (
	// MaintenanceTaintKey is the key of an admin's maintenance taint
	// (kubectl gpu taint); its value is the reason.
	MaintenanceTaintKey = keyPrefix + "maintenance"
)

// HealthTaintKeyPrefix prefixes the taint key of every health condition.
const HealthTaintKeyPrefix = keyPrefix

// MayTolerateDriverTaintsLabel, set to "true" on a namespace by an admin,
// lets the ResourceClaims and ResourceClaimTemplates there tolerate the
// driver's taints: keys with HealthTaintKeyPrefix (MaintenanceTaintKey
// too), or every key. The chart's admission policy
// (toleration-policy.yaml) refuses such tolerations elsewhere.
const MayTolerateDriverTaintsLabel = keyPrefix + "may-tolerate-driver-taints"

// HealthTaintKey is the taint key of a health condition, e.g.
// "gpu.nvidia.com/xid".
func HealthTaintKey(condition string) string { return HealthTaintKeyPrefix + condition }

// Node annotations by which an admin, after checking a GPU, clears its
// sticky health taints (fatal XIDs, ECC errors): `kubectl gpu clear` writes
// them, the node's plugin reads them. The value is an RFC 3339 time;
// conditions raised at or before it are cleared.
const (
	// HealthClearedAnnotation clears every GPU of the node.
	HealthClearedAnnotation = keyPrefix + "health-cleared"
	// HealthClearedGPUAnnotationPrefix followed by a GPU's minor clears that
	// GPU, e.g. "gpu.nvidia.com/health-cleared-gpu-3".
	HealthClearedGPUAnnotationPrefix = HealthClearedAnnotation + "-" + gpuPrefix
)

// HealthClearedGPUAnnotation is the annotation that clears one GPU.
func HealthClearedGPUAnnotation(minor int) string {
	return HealthClearedGPUAnnotationPrefix + strconv.Itoa(minor)
}

// PreparedDeviceAnnotation is the CDI spec annotation under which the
// plugin records a prepared device, so that a lost checkpoint can be
// rebuilt from the specs.
const PreparedDeviceAnnotation = keyPrefix + "prepared-device"

// Labels and annotation of the DeviceTaintRules kubectl-gpu creates, by
// which untaint and drain find them again.
const (
	// TaintRuleNodeLabel holds the node name, or a hash-shortened form of it
	// if it is longer than a label value may be.
	TaintRuleNodeLabel = keyPrefix + "taint-node"
	// TaintRuleGPULabel holds the whole-GPU device name ("gpu-3") on the
	// rules of one GPU; rules for a whole node do not have it.
	TaintRuleGPULabel = keyPrefix + "taint-gpu"
	// TaintRuleNodeAnnotation holds the full node name, for humans.
	TaintRuleNodeAnnotation = keyPrefix + "taint-node"
)

// StatusFieldManager is the server-side apply field manager under which
// every node's plugin writes its entries of ResourceClaims' status.devices.
// A claim's devices are on one node, so one name for all nodes is enough.
const StatusFieldManager = "gpu-kubelet-plugin"

// PluginEventSource is the source component (Event.Source.Component) of
// the Events the node plugin records on its Node, in the default
// namespace, with its node as Source.Host; kubectl gpu describe takes only
// those as a GPU's health history.
const PluginEventSource = "gpu-kubelet-plugin"

// Reasons of the node Events the plugin records when a health taint of one
// of its GPUs appears or goes; kubectl gpu describe shows them per GPU.
const (
	EventHealthTaintAdded   = "GPUHealthTaintAdded"
	EventHealthTaintRemoved = "GPUHealthTaintRemoved"
)

// GPUEventMessage is the message of a node Event about one GPU: the GPU's
// device name, a colon, and what happened, e.g. "gpu-3: …".
func GPUEventMessage(minor int, what string) string { return GPUDevice(minor) + ": " + what }

// ParseGPUEventMessage reads a message built by GPUEventMessage.
func ParseGPUEventMessage(msg string) (minor int, what string, ok bool) {
	dev, what, found := strings.Cut(msg, ": ")
	if !found {
		return 0, "", false
	}
	p, ok := ParseDevice(dev)
	if !ok || p.Type != TypeGPU {
		return 0, "", false
	}
	return p.Minor, what, true
}

// Node labels by which an operator chooses what a node advertises (see
// devicemodel.ParseOffer); the values are lists joined by "_", since label
// values may not hold commas.
const (
	// DeviceKindsLabel lists the kinds of device a node offers, of
	// KindWhole, KindMIG, KindShared and KindVFIO, e.g. "whole_mig". Absent offers
	// every kind the plugin's options allow.
	DeviceKindsLabel = keyPrefix + "device-kinds"
	// MIGProfilesLabel lists the MIG profiles a node offers, each as its
	// size ("1g") or its SanitizeProfile name ("1g10gb", "1g10gbme"), e.g.
	// "1g_7g". Absent offers every profile.
	MIGProfilesLabel = keyPrefix + "mig-profiles"
	// ConsumableSharesLabel sets, for its node, the plugin's
	// --consumable-shares: one of the ConsumableShares values or a
	// positive number of shares. Absent keeps the flag's.
	ConsumableSharesLabel = keyPrefix + "consumable-shares"
)

// The values of --consumable-shares and ConsumableSharesLabel besides a
// number, as NVIDIA's driver spells them.
const (
	ConsumableSharesDisabled  = "disabled"
	ConsumableSharesMemory    = "memory"
	ConsumableSharesUnlimited = "unlimited"
)

// The kinds of device a DeviceKindsLabel lists.
const (
	KindWhole  = "whole"
	KindMIG    = "mig"
	KindShared = "shared"
	// KindVFIO is whole GPUs for VMs (vfio.gpu.nvidia.com); it is offered
	// only where the plugin's --vfio-passthrough is on.
	KindVFIO = "vfio"
)

// The DeviceClasses the chart installs, one per device type.
const (
	GPUDeviceClass    = DriverName
	MIGDeviceClass    = "mig.nvidia.com"
	SharedDeviceClass = "shared." + DriverName
	// VFIODeviceClass selects whole GPUs for VMs, as NVIDIA's does.
	VFIODeviceClass = "vfio." + DriverName
)

// Labels of the pods that run MPS control daemons (package daemonpod),
// by which the plugin finds them on its node.
const (
	// MPSDaemonLabel holds the daemon's key: the UID of the claim whose
	// daemon it is, or the key of a shared GPU's daemon.
	MPSDaemonLabel = keyPrefix + "mps-daemon"
	// MPSDaemonComponent is the app.kubernetes.io/component label's
	// value on every such pod.
	MPSDaemonComponent = "mps-control-daemon"
)
