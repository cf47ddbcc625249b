// Package gpu is the driver's vocabulary of hardware: plain Go values for a
// node's GPUs (an Inventory of GPUs, their MIG profiles, placements and live
// MIG instances), MIG requests and references, health events and readings,
// and the errors the hardware layer reports. It has no cgo and imports no
// NVML, so the device model, the webhook and kubectl-gpu can use it.
//
// The hardware itself is reached through package nvmlnode (NVML, real or
// simulated by package sim); its consumers declare the few methods they need
// as interfaces of their own.
package gpu

import (
	"errors"
	"fmt"
)

// Inventory is a snapshot of the node's GPUs as NVML reports them.
type Inventory struct {
	// DriverVersion is the kernel driver's version, e.g. "550.54.15".
	DriverVersion string
	// CUDADriverVersion is the highest CUDA version the driver supports,
	// formatted "major.minor", e.g. "12.4".
	CUDADriverVersion string
	// GPUs are sorted by PCI bus ID, which is the order NVML indexes them in.
	GPUs []GPU
	// Unreadable are the GPUs NVML counts but that could not be read (a
	// GPU lost before its UUID was read, an unexpected NVML error); they
	// are not in GPUs, so nothing is offered on them. What they hold is
	// unknown, not gone.
	Unreadable []UnreadableGPU
}

// UnreadableGPU is a GPU of the node that could not be read.
type UnreadableGPU struct {
	Index int
	// UUID is empty when it could not be read either.
	UUID string
	// Err says what failed.
	Err string
}

// GPU is one physical GPU.
type GPU struct {
	UUID  string // "GPU-…"
	Index int    // NVML index
	Minor int    // minor number of /dev/nvidia<minor>; stable while the driver is loaded
	// Name is NVML's product name, e.g. "NVIDIA H100 80GB HBM3".
	Name  string
	Brand string // e.g. "Nvidia", "Tesla"
	// Architecture is the family name as NVIDIA's tools write it, e.g.
	// "Hopper", "Ada Lovelace" (go-nvlib's GetArchitectureAsString).
	Architecture string
	// CUDAComputeCapability is "major.minor", e.g. "9.0".
	CUDAComputeCapability string
	MemoryBytes           uint64
	PCIBusID              string // domain:bus:device.function, lowercase, e.g. "0000:07:00.0"

	// Lost is set when NVML reports the GPU fallen off the bus; only the
	// fields read before that are filled in.
	Lost bool

	MIGCapable bool
	// MemorySlices is how many memory slices the GPU's memory is cut into
	// for MIG, as NVML's placements count them: 8 on A100, H100, H200 and
	// B200, 4 on A30 and RTX PRO 6000 Blackwell. Placements and memory
	// slice counters are numbered 0 to MemorySlices-1. Zero without MIG.
	MemorySlices int
	// MIGEnabled is the current MIG mode.
	MIGEnabled bool
	// MIGModeNeedsReset is set on GPUs whose MIG mode changes only at a
	// GPU reset (Ampere: A100, A30). The driver never changes their mode;
	// an administrator does, and resets the GPU. Hopper and later change
	// it at once.
	MIGModeNeedsReset bool
	// MIGProfiles lists every GPU-instance profile the GPU supports, with all
	// possible placements, in NVML profile-ID order. Empty unless MIGCapable.
	MIGProfiles []MIGProfile
	// MIGInstances are the MIG devices that exist now (GPU instance plus
	// compute instance), whoever created them: one per compute instance,
	// so a GPU instance with several compute instances is here several
	// times, with the same GIID and placement.
	MIGInstances []MIGInstance
	// BareGPUInstances are the GPU instances without any compute instance
	// (someone else created them, or a creation stopped half way). They
	// are no MIG device, but their placements are occupied all the same.
	BareGPUInstances []GPUInstance
}

// GPUInstance is a live GPU instance, named by its profile and placement.
type GPUInstance struct {
	ParentUUID string
	ProfileID  int
	Profile    string
	Placement  Placement
	GIID       int
}

// MIGProfile is a GPU-instance profile, e.g. "1g.10gb", with the compute
// instance profile that fills it completely.
type MIGProfile struct {
	// ID is NVML's GPU-instance profile ID (GPU_INSTANCE_PROFILE_*).
	ID int
	// ComputeProfileID is the compute-instance profile used to create the
	// single compute instance that spans the GPU instance. NVML reports
	// compute-instance profiles of a GPU instance only, so it is known
	// once a GPU instance of the profile exists; -1 until then.
	ComputeProfileID int
	// Name is the canonical name, e.g. "1g.10gb", "1g.10gb+me", "7g.80gb".
	Name string
	// ComputeSlices is the number of compute slices ("1g" = 1).
	ComputeSlices int
	// MemorySlices is the number of memory slices one instance occupies; it
	// equals the size of each of its placements.
	MemorySlices    int
	MemoryBytes     uint64
	Multiprocessors int
	CopyEngines     int
	Decoders        int
	Encoders        int
	JPEGEngines     int
	OFAEngines      int
	// MaxInstances is how many instances of this profile fit on an empty GPU.
	MaxInstances int
	// Placements are all possible placements, in memory slices.
	Placements []Placement
}

// Placement is where a GPU instance lives, in memory slices.
type Placement struct {
	Start int
	Size  int
}

// Mask returns the memory slices the placement occupies as a bit mask.
func (p Placement) Mask() uint32 {
	return ((uint32(1) << p.Size) - 1) << p.Start
}

// Overlaps reports whether two placements share a memory slice.
func (p Placement) Overlaps(o Placement) bool {
	return p.Mask()&o.Mask() != 0
}

func (p Placement) String() string {
	return fmt.Sprintf("%d:%d", p.Start, p.Size)
}

// MIGInstance is a live MIG device: a GPU instance and its compute instance.
type MIGInstance struct {
	// UUID is the MIG device's UUID, "MIG-…".
	UUID       string
	ParentUUID string
	// ProfileID and Profile identify the GPU-instance profile.
	ProfileID int
	Profile   string
	Placement Placement
	// GIID and CIID are the GPU- and compute-instance IDs, used to find the
	// instance again and for the /dev/nvidia-caps capability files.
	GIID int
	CIID int
	// ComputeProfileID is the compute-instance profile
	// (COMPUTE_INSTANCE_PROFILE_*) of the instance's compute instance, as
	// NVML reports it.
	ComputeProfileID int
}

// MIGRequest asks for a GPU instance of a profile at an exact placement on a
// GPU, with one compute instance spanning it.
type MIGRequest struct {
	ParentUUID string
	ProfileID  int
	Placement  Placement
}

// MIGRef identifies a live MIG instance for destruction.
type MIGRef struct {
	ParentUUID string
	GIID       int
	CIID       int
	// UUID, when set, must be the instance's MIG UUID: an instance that now
	// has other IDs' UUID was created by someone else after ours was
	// destroyed, and is left alone.
	UUID string
}

// EventKind classifies a health event NVML delivered.
type EventKind string

// Health event kinds.
const (
	EventXID          EventKind = "xid"
	EventDoubleBitECC EventKind = "ecc"
	EventGPULost      EventKind = "gpu-lost"
)

// Event is a health event for a GPU, or for one MIG instance on it when
// GIID/CIID are set (>= 0).
type Event struct {
	Kind    EventKind
	GPUUUID string
	// XID is the XID number for EventXID.
	XID  uint64
	GIID int
	CIID int
}

// ErrMIGDisabled is returned by CreateMIG when the GPU is not in MIG mode.
var ErrMIGDisabled = errors.New("MIG mode is disabled")

// ErrMIGNotSupported is returned by SetMIGMode when MIG mode is to be
// turned on on a GPU without MIG (L4, L40S, T4, …).
var ErrMIGNotSupported = errors.New("GPU does not support MIG")

// ErrMIGModeNeedsReset is returned by SetMIGMode for a GPU whose MIG mode
// changes only at a GPU reset (GPU.MIGModeNeedsReset).
var ErrMIGModeNeedsReset = errors.New("changing MIG mode needs a GPU reset")

// ErrGPUHeldOpen is returned by SetMIGMode when NVML could not activate a
// change of MIG mode because another process holds the GPU open (NVML's
// ERROR_IN_USE as the activation status: a monitoring agent such as
// dcgm-exporter or nvidia-persistenced, a CUDA process, an nvidia-smi).
var ErrGPUHeldOpen = errors.New("the GPU is held open by another process")

// ErrPlacementOccupied is returned by CreateMIG when the requested placement
// overlaps a GPU instance that already exists.
var ErrPlacementOccupied = errors.New("placement is occupied")

// Reading is one periodic health reading of a GPU. A value NVML does not
// support on this GPU reads as zero (or false) and is not an error.
type Reading struct {
	// Index is the NVML index; UUID may be empty when the GPU is lost
	// before its UUID could be read.
	Index int
	UUID  string
	// Lost is set when NVML reports the GPU fallen off the bus.
	Lost bool
	// Err is why the GPU could not be read otherwise: its health is not
	// known.
	Err error
	// TemperatureC is the core temperature; SlowdownC and ShutdownC are
	// the GPU's own thresholds (0 when not reported).
	TemperatureC, SlowdownC, ShutdownC int
	// RepairPending is set when retired pages (before Ampere) or remapped
	// rows (Ampere and later) wait for a GPU reset.
	RepairPending bool
	// RemapFailure is set when a row remapping failed: memory that
	// cannot be repaired.
	RemapFailure bool
	// VolatileUncorrectedECC counts uncorrectable ECC errors since the
	// last GPU reset or driver load; a reset sets it back to zero.
	VolatileUncorrectedECC uint64
}

// DefaultTimeSlice is the interval a GPU has when nobody changed it.
const DefaultTimeSlice = "Default"
