// Package v1 is the schema of the data the kubelet plugin writes into a
// ResourceClaim's status.devices[].data (KEP-4817) for each device it
// prepared: which GPU, which MIG instance, which share, and the CDI device
// IDs the containers got, so monitoring (dcgm-exporter, Prometheus, cost
// tools) and kubectl-gpu can tell which workload holds which hardware
// without asking the node.
//
// The object is versioned JSON (apiVersion status.gpu.nvidia.com/v1, kind
// DeviceStatus). Within v1 fields are only ever added: Decode ignores
// fields it does not know, so an older reader reads a newer writer's data.
// A change of meaning is a new version, which an older Decode refuses.
package v1

import (
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// GroupVersion is the apiVersion of DeviceStatus.
const GroupVersion = "status.gpu.nvidia.com/v1"

// Kind is the kind of DeviceStatus.
const Kind = "DeviceStatus"

// Condition types of a device's status entry, beside its data.
const (
	// ConditionReady is True while the device is prepared for the claim.
	ConditionReady = "Ready"
	// ConditionHealthy mirrors the health the plugin reports to the
	// kubelet: True, False, or Unknown; its message names the GPU's health
	// conditions.
	ConditionHealthy = "Healthy"
)

// Condition reasons.
const (
	ReasonPrepared  = "Prepared"
	ReasonHealthy   = "Healthy"
	ReasonUnhealthy = "Unhealthy"
	ReasonUnknown   = "HealthUnknown"
)

// DeviceStatus is what the plugin reports of one prepared device.
type DeviceStatus struct {
	metav1.TypeMeta `json:",inline"`
	// Type is the device's type attribute: "gpu", "mig" or "shared".
	Type string `json:"type"`
	// GPU is the physical GPU the device is or is carved from.
	GPU GPU `json:"gpu"`
	// MIG is set for a MIG device.
	MIG *MIG `json:"mig,omitempty"`
	// Share is set for a share of a shared GPU.
	Share *Share `json:"share,omitempty"`
	// MPS is set when the containers reach the device through an MPS
	// control daemon (every share, and GPUs configured with MPS sharing).
	MPS bool `json:"mps,omitempty"`
	// AdminAccess is set for a device allocated with admin access.
	AdminAccess bool `json:"adminAccess,omitempty"`
	// CDIDeviceIDs are the CDI devices the containers were given.
	CDIDeviceIDs []string `json:"cdiDeviceIDs,omitempty"`
}

// GPU identifies a physical GPU.
type GPU struct {
	// UUID is NVML's GPU UUID, "GPU-…", as GPU_DRA_DEVICE_UUIDS names it
	// for a whole GPU.
	UUID string `json:"uuid"`
	// Minor is the minor number of /dev/nvidia<minor>.
	Minor int `json:"minor"`
	// PCIBusID is domain:bus:device.function, e.g. "0000:18:00.0".
	PCIBusID string `json:"pciBusID,omitempty"`
	// ProductName is NVML's product name.
	ProductName string `json:"productName,omitempty"`
}

// MIG identifies a MIG device.
type MIG struct {
	// UUID is the MIG device's UUID, "MIG-…", as GPU_DRA_DEVICE_UUIDS
	// names it; it exists only once the device was prepared.
	UUID string `json:"uuid"`
	// Profile is the GPU-instance profile, e.g. "1g.10gb".
	Profile string `json:"profile"`
	// GPUInstanceID and ComputeInstanceID are NVML's GI and CI IDs.
	GPUInstanceID     int `json:"gpuInstanceID"`
	ComputeInstanceID int `json:"computeInstanceID"`
	// PlacementStart and PlacementSize are the memory slices it occupies.
	PlacementStart int `json:"placementStart"`
	PlacementSize  int `json:"placementSize"`
}

// Share is one share of a shared GPU, or a consumable share of a whole
// GPU, and the limits it runs under.
type Share struct {
	// ID is the allocation's share ID (status.allocation's shareID).
	ID string `json:"id"`
	// MemoryBytes is its MPS pinned device memory limit; 0 means none (a
	// consumable share of no memory, or of all of it).
	MemoryBytes int64 `json:"memoryBytes"`
	// ComputePercent is its MPS active thread percentage; 0 means none.
	ComputePercent int64 `json:"computePercent,omitempty"`
}

// Encode returns the JSON of s with its apiVersion and kind set.
func Encode(s DeviceStatus) ([]byte, error) {
	s.APIVersion, s.Kind = GroupVersion, Kind
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode device status: %w", err)
	}
	return b, nil
}

// Decode reads data written by Encode. It refuses another apiVersion or
// kind, and ignores unknown fields (see the package comment).
func Decode(data []byte) (*DeviceStatus, error) {
	var s DeviceStatus
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("decode device status: %w", err)
	}
	if s.APIVersion != GroupVersion || s.Kind != Kind {
		return nil, fmt.Errorf("decode device status: apiVersion %q, kind %q: want %s, %s", s.APIVersion, s.Kind, GroupVersion, Kind)
	}
	return &s, nil
}
