// Package checkpoint persists what the plugin prepared, so that prepare and
// unprepare are idempotent and survive a crash or a restart of the plugin.
//
// The file is written atomically (temporary file, fsync, rename, fsync of
// the directory). It is an envelope {version, checksum, data} whose checksum
// covers the data bytes exactly as stored, never re-marshalled, so an
// upgrade that adds fields does not break it. Unknown fields are ignored.
// A file that cannot be trusted (unreadable, truncated, bad checksum, a
// future major version) is set aside beside the original and the plugin
// starts from an empty checkpoint and rebuilds from live state: the CDI
// specs' device records (record.go, versioned and checksummed the same
// way) and the previous generation, which every save keeps, for what
// unfinished preparations created (store.go). The files: checkpoint.go
// the types, query.go the questions asked of them (who holds a device, a
// MIG placement, a GPU's shares), store.go the file, record.go the
// device records.
package checkpoint

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Version is the schema version this code writes. A file of a higher
// version is not read: its meaning may have changed.
const Version = 1

// FileName is the checkpoint's name in its directory.
const FileName = "checkpoint.json"

// State is how far a claim's preparation got.
type State string

// Claim states. A claim is recorded as PrepareStarted, with what is about to
// be created, before any side effect, so a crash at any later point leaves
// enough to roll back.
//
// Undone is a claim whose rollback (of a failed prepare, or an unprepare)
// finished on the node, but whose removal from the checkpoint could not be
// written: it holds no device any more, and what remains is to forget it.
// Every state but PrepareCompleted is rolled back at the next start.
const (
	PrepareStarted   State = "PrepareStarted"
	PrepareCompleted State = "PrepareCompleted"
	Undone           State = "Undone"
)

// Checkpoint is everything the plugin must remember across restarts.
type Checkpoint struct {
	// BootID is the node's boot ID when the checkpoint was written. After a
	// reboot MIG instances and the CDI directory (tmpfs) are gone.
	BootID string `json:"bootID,omitempty"`
	// Claims by claim UID.
	Claims map[string]*Claim `json:"claims"`
}

// Claim is one prepared (or being prepared) ResourceClaim. Unprepare gets
// only the UID, namespace and name: everything else it needs is here.
type Claim struct {
	UID       string   `json:"uid"`
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	State     State    `json:"state"`
	Devices   []Device `json:"devices"`
}

// Device is one allocated device of the claim and what preparing it did.
type Device struct {
	// Requests are the claim's request (or request/subrequest) names the
	// device was allocated for.
	Requests []string `json:"requests"`
	Pool     string   `json:"pool"`
	// Name is the device's name in the ResourceSlice.
	Name     string `json:"name"`
	GPUUUID  string `json:"gpuUUID"`
	GPUMinor int    `json:"gpuMinor"`
	// MIG is set for MIG devices.
	MIG *MIG `json:"mig,omitempty"`
	// Env is the extra container environment from the claim's
	// configuration, kept so the CDI spec can be rewritten.
	Env map[string]string `json:"env,omitempty"`
	// CDIDeviceIDs are returned to the kubelet.
	CDIDeviceIDs []string `json:"cdiDeviceIDs,omitempty"`
	// TimeSlice is the compute time slice (Short, Medium, Long) the claim
	// set on its whole GPU; the default is restored when it goes. Empty
	// when it did not change it.
	TimeSlice string `json:"timeSlice,omitempty"`
	// MPSDir is the host directory of the claim's MPS control daemon when
	// the device is shared through MPS; its pipe/ and log/ are mounted
	// into the containers. The same for every MPS device of the claim; for
	// a share, the directory of its GPU's daemon, which all shares of the
	// GPU use.
	MPSDir string `json:"mpsDir,omitempty"`
	// MPSMultiUser says that the claim's configuration asked for its MPS
	// daemon in multi-user mode (mpsConfig.multiUser).
	MPSMultiUser bool `json:"mpsMultiUser,omitempty"`
	// ShareID and Share are set for a share of a shared GPU, and for a
	// consumable share of a whole GPU (NVIDIA's consumable shares).
	ShareID string `json:"shareID,omitempty"`
	Share   *Share `json:"share,omitempty"`
	// AdminAccess is set for a device allocated with admin access (for
	// monitoring): it is given as it is, changing nothing, and neither
	// waits for nor holds off the device's other claims.
	AdminAccess bool `json:"adminAccess,omitempty"`
	// VFIO is set for a GPU passed through to a VM.
	VFIO *VFIO `json:"vfio,omitempty"`
}

// VFIO records a GPU passed through to a VM: what its IOMMU group holds
// and where each function goes back to, recorded before the first of
// them is unbound, so that a rollback from anywhere gives each back.
type VFIO struct {
	// BusID is the GPU's PCI bus ID.
	BusID string `json:"busID"`
	// Group is the GPU's IOMMU group.
	Group int `json:"group"`
	// Driver is the VFIO driver the GPU is bound to (vfio-pci or a
	// variant); the group's other functions are bound to vfio-pci.
	Driver string `json:"driver"`
	// Functions are the group's functions, the GPU first, each with the
	// driver it is given back to ("" for none).
	Functions []PCIFunction `json:"functions"`
	// IOMMUFD is set when the VM gets the GPU through iommufd, its
	// character device CharDevice ("vfio3" of /dev/vfio/devices), rather
	// than through its group's node.
	IOMMUFD    bool   `json:"iommufd,omitempty"`
	CharDevice string `json:"charDevice,omitempty"`
	// APIDevice is set when the claim's configuration asked for the IOMMU
	// API device (/dev/iommu with iommufd).
	APIDevice bool `json:"apiDevice,omitempty"`
}

// PCIFunction is a PCI function and the driver it is given back to.
type PCIFunction struct {
	BusID  string `json:"busID"`
	Driver string `json:"driver"`
}

// Share is what one share of a shared GPU consumes, as allocated.
type Share struct {
	// MemoryBytes is the share's MPS pinned device memory limit; 0 (a
	// consumable share of no memory or of all of it) sets none.
	MemoryBytes int64 `json:"memoryBytes"`
	// ComputePercent is its MPS active thread percentage; 0 sets none.
	ComputePercent int64 `json:"computePercent,omitempty"`
}

// MIG records a MIG device: where it is, and once it exists, which instance.
type MIG struct {
	ProfileID int    `json:"profileID"`
	Profile   string `json:"profile"`
	Start     int    `json:"start"`
	Size      int    `json:"size"`
	// Created is true when this claim created the instance and must destroy
	// it; false for a pre-created (static) instance, or before creation.
	Created bool   `json:"created"`
	UUID    string `json:"uuid,omitempty"`
	GIID    int    `json:"giid"`
	CIID    int    `json:"ciid"`
}

// New returns an empty checkpoint.
func New(bootID string) *Checkpoint {
	return &Checkpoint{BootID: bootID, Claims: map[string]*Claim{}}
}

// Clone returns a deep copy. It is on the path of every checkpoint write,
// so it copies field by field rather than through JSON.
func (c *Checkpoint) Clone() *Checkpoint {
	out := &Checkpoint{BootID: c.BootID, Claims: make(map[string]*Claim, len(c.Claims))}
	for uid, claim := range c.Claims {
		out.Claims[uid] = claim.Clone()
	}
	return out
}

// Clone returns a deep copy of the claim.
func (c *Claim) Clone() *Claim {
	out := *c
	out.Devices = make([]Device, len(c.Devices))
	for i, d := range c.Devices {
		d.Requests = slices.Clone(d.Requests)
		d.CDIDeviceIDs = slices.Clone(d.CDIDeviceIDs)
		d.Env = maps.Clone(d.Env)
		if d.MIG != nil {
			m := *d.MIG
			d.MIG = &m
		}
		if d.Share != nil {
			s := *d.Share
			d.Share = &s
		}
		if d.VFIO != nil {
			v := *d.VFIO
			v.Functions = slices.Clone(v.Functions)
			d.VFIO = &v
		}
		out.Devices[i] = d
	}
	return &out
}

// ReadBootID returns the node's boot ID from procRoot/proc/sys/kernel/random/boot_id.
func ReadBootID(procRoot string) (string, error) {
	data, err := os.ReadFile(filepath.Join(procRoot, "proc/sys/kernel/random/boot_id"))
	if err != nil {
		return "", fmt.Errorf("read boot ID: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}
