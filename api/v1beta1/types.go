// Package v1beta1 holds the opaque configuration users put in ResourceClaims
// and DeviceClasses (spec.devices.config[].opaque with driver
// gpu.nvidia.com), in the shape NVIDIA's DRA driver documents
// (apiVersion resource.nvidia.com/v1beta1, kinds GpuConfig,
// MigDeviceConfig and VfioDeviceConfig), so existing claims work
// unchanged.
//
// Decoding is strict: an unknown field is an error naming its path. The
// same Decode and Validate serve the plugin (and an admission webhook).
package v1beta1

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpu-dra/gpu-dra-driver/api/internal/opaque"
)

// GroupVersion is the apiVersion of the configuration objects.
const GroupVersion = "resource.nvidia.com/v1beta1"

// Kinds of configuration.
const (
	GpuConfigKind       = "GpuConfig"
	MigDeviceConfigKind = "MigDeviceConfig"
	// VfioDeviceConfigKind configures GPUs passed through to VMs
	// (vfio.gpu.nvidia.com).
	VfioDeviceConfigKind = "VfioDeviceConfig"
)

// IOMMU backend policies of a VfioDeviceConfig, as NVIDIA's driver names
// them.
const (
	// IOMMUBackendLegacyOnly gives the VM the legacy VFIO container and
	// group nodes (/dev/vfio/<group>); the default.
	IOMMUBackendLegacyOnly = "LegacyOnly"
	// IOMMUBackendPreferIommuFD gives the VM the device's iommufd
	// character device (/dev/vfio/devices/vfio<N>) where the host has
	// iommufd (/dev/iommu), and the legacy nodes elsewhere.
	IOMMUBackendPreferIommuFD = "PreferIommuFD"
)

// Sharing strategies.
const (
	TimeSlicingStrategy = "TimeSlicing"
	MpsStrategy         = "MPS"
)

// Time-slice intervals.
const (
	DefaultTimeSlice = "Default"
	ShortTimeSlice   = "Short"
	MediumTimeSlice  = "Medium"
	LongTimeSlice    = "Long"
)

// GpuConfig configures whole GPUs.
type GpuConfig struct {
	metav1.TypeMeta `json:",inline"`
	Sharing         *Sharing `json:"sharing,omitempty"`
}

// MigDeviceConfig configures MIG devices.
type MigDeviceConfig struct {
	metav1.TypeMeta `json:",inline"`
	Sharing         *Sharing `json:"sharing,omitempty"`
}

// Sharing says how the containers of a claim share its devices.
type Sharing struct {
	// Strategy is TimeSlicing (the default) or MPS.
	Strategy          string             `json:"strategy"`
	TimeSlicingConfig *TimeSlicingConfig `json:"timeSlicingConfig,omitempty"`
	MpsConfig         *MpsConfig         `json:"mpsConfig,omitempty"`
}

// TimeSlicingConfig sets the compute time slice.
type TimeSlicingConfig struct {
	// Interval is Default, Short, Medium or Long.
	Interval string `json:"interval,omitempty"`
}

// MpsConfig sets limits of an MPS server.
type MpsConfig struct {
	DefaultActiveThreadPercentage     *int                `json:"defaultActiveThreadPercentage,omitempty"`
	DefaultPinnedDeviceMemoryLimit    *Quantity           `json:"defaultPinnedDeviceMemoryLimit,omitempty"`
	DefaultPerDevicePinnedMemoryLimit map[string]Quantity `json:"defaultPerDevicePinnedMemoryLimit,omitempty"`
	// MultiUser runs the claim's MPS control daemon in multi-user mode
	// (nvidia-cuda-mps-control -M), as NVIDIA's driver does: one MPS
	// server serves the claim's containers whatever user each runs as,
	// where otherwise a second user's clients wait until the first user's
	// server exits. The daemon stays the claim's own. Refused at prepare on
	// a GPU older than Volta (compute capability below 7.0), as NVIDIA's
	// driver refuses it.
	MultiUser *bool `json:"multiUser,omitempty"`
}

// Quantity is the text of a Kubernetes quantity (MemoryLimit parses it).
// NVIDIA's driver decodes these fields as resource.Quantity, which reads a
// JSON string ("10Gi") or a JSON number (10737418240: what YAML makes of
// an unquoted integer) and ignores spaces around it; a Quantity reads
// both the same way, so such a claim means the same here. It encodes as
// a string.
type Quantity string

// UnmarshalJSON implements json.Unmarshaler. A string is unquoted and
// trimmed, and null leaves q as it is (as for a string); any other JSON
// value keeps its text, which a number's parses as a quantity and
// anything else's does not, so Validate refuses it naming the field (an
// error from here could not name it).
func (q *Quantity) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		b = []byte(strings.TrimSpace(s))
	}
	*q = Quantity(b)
	return nil
}

// VfioDeviceConfig configures a GPU passed through to a VM.
type VfioDeviceConfig struct {
	metav1.TypeMeta `json:",inline"`
	Iommu           *IOMMUConfig `json:"iommu,omitempty"`
}

// IOMMUConfig chooses how the VM reaches the GPU's IOMMU.
type IOMMUConfig struct {
	// BackendPolicy is IOMMUBackendLegacyOnly (the default, also when
	// empty) or IOMMUBackendPreferIommuFD.
	BackendPolicy string `json:"backendPolicy"`
	// EnableAPIDevice also gives the container the IOMMU API device of
	// the chosen backend: /dev/vfio/vfio (legacy) or /dev/iommu (iommufd).
	EnableAPIDevice *bool `json:"enableAPIDevice,omitempty"`
}

// PreferIommuFD reports whether the configuration asks for iommufd.
func (c *VfioDeviceConfig) PreferIommuFD() bool {
	return c != nil && c.Iommu != nil && c.Iommu.BackendPolicy == IOMMUBackendPreferIommuFD
}

// APIDevice reports whether the configuration asks for the IOMMU API
// device.
func (c *VfioDeviceConfig) APIDevice() bool {
	return c != nil && c.Iommu != nil && c.Iommu.EnableAPIDevice != nil && *c.Iommu.EnableAPIDevice
}

// Config is a decoded configuration object: *GpuConfig, *MigDeviceConfig
// or *VfioDeviceConfig.
type Config interface{ kind() string }

func (*GpuConfig) kind() string        { return GpuConfigKind }
func (*MigDeviceConfig) kind() string  { return MigDeviceConfigKind }
func (*VfioDeviceConfig) kind() string { return VfioDeviceConfigKind }

// KindOf returns the kind of a configuration.
func KindOf(c Config) string { return c.kind() }

// Decode strictly decodes opaque parameters. Errors name the field.
func Decode(raw []byte) (Config, error) {
	cfg, err := opaque.Decode(raw, GroupVersion,
		opaque.Kind[Config]{Name: GpuConfigKind, New: func() Config { return &GpuConfig{} }},
		opaque.Kind[Config]{Name: MigDeviceConfigKind, New: func() Config { return &MigDeviceConfig{} }},
		opaque.Kind[Config]{Name: VfioDeviceConfigKind, New: func() Config { return &VfioDeviceConfig{} }})
	if err != nil {
		return nil, err
	}
	// An empty map means what an absent one does; one form, so that a
	// configuration decodes to what its own encoding decodes to.
	if s := SharingOf(cfg); s != nil && s.MpsConfig != nil && len(s.MpsConfig.DefaultPerDevicePinnedMemoryLimit) == 0 {
		s.MpsConfig.DefaultPerDevicePinnedMemoryLimit = nil
	}
	if err := Validate(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// SharingOf returns the sharing settings of a configuration.
func SharingOf(c Config) *Sharing {
	switch c := c.(type) {
	case *GpuConfig:
		return c.Sharing
	case *MigDeviceConfig:
		return c.Sharing
	}
	return nil
}

// Validate checks a configuration's values; errors name the field.
func Validate(c Config) error {
	if v, ok := c.(*VfioDeviceConfig); ok && v.Iommu != nil {
		switch v.Iommu.BackendPolicy {
		case "", IOMMUBackendLegacyOnly, IOMMUBackendPreferIommuFD:
		default:
			return fmt.Errorf("parameters.iommu.backendPolicy: %q is not one of %s, %s", v.Iommu.BackendPolicy, IOMMUBackendLegacyOnly, IOMMUBackendPreferIommuFD)
		}
	}
	s := SharingOf(c)
	if s == nil {
		return nil
	}
	switch s.Strategy {
	case TimeSlicingStrategy, "":
		if s.MpsConfig != nil {
			return fmt.Errorf("parameters.sharing.mpsConfig: only allowed with strategy %s", MpsStrategy)
		}
		if s.TimeSlicingConfig != nil {
			switch s.TimeSlicingConfig.Interval {
			case "", DefaultTimeSlice, ShortTimeSlice, MediumTimeSlice, LongTimeSlice:
			default:
				return fmt.Errorf("parameters.sharing.timeSlicingConfig.interval: %q is not one of Default, Short, Medium, Long", s.TimeSlicingConfig.Interval)
			}
			// Only a whole GPU has a time slice to set: on a MIG
			// device the interval could never apply.
			if _, mig := c.(*MigDeviceConfig); mig && s.TimeSlicingConfig.Interval != "" && s.TimeSlicingConfig.Interval != DefaultTimeSlice {
				return fmt.Errorf("parameters.sharing.timeSlicingConfig.interval: %s cannot be set in a %s; only whole GPUs have a configurable time slice", s.TimeSlicingConfig.Interval, MigDeviceConfigKind)
			}
		}
	case MpsStrategy:
		if s.TimeSlicingConfig != nil {
			return fmt.Errorf("parameters.sharing.timeSlicingConfig: only allowed with strategy %s", TimeSlicingStrategy)
		}
		if m := s.MpsConfig; m != nil {
			if m.DefaultActiveThreadPercentage != nil {
				if p := *m.DefaultActiveThreadPercentage; p < 1 || p > 100 {
					return fmt.Errorf("parameters.sharing.mpsConfig.defaultActiveThreadPercentage: %d is not between 1 and 100", p)
				}
			}
			if m.DefaultPinnedDeviceMemoryLimit != nil {
				if _, err := MemoryLimit(string(*m.DefaultPinnedDeviceMemoryLimit)); err != nil {
					return fmt.Errorf("parameters.sharing.mpsConfig.defaultPinnedDeviceMemoryLimit: %w", err)
				}
			}
			for _, dev := range slices.Sorted(maps.Keys(m.DefaultPerDevicePinnedMemoryLimit)) {
				if _, _, err := DeviceKey(dev); err != nil {
					return fmt.Errorf("parameters.sharing.mpsConfig.defaultPerDevicePinnedMemoryLimit[%s]: %w", dev, err)
				}
				if _, err := MemoryLimit(string(m.DefaultPerDevicePinnedMemoryLimit[dev])); err != nil {
					return fmt.Errorf("parameters.sharing.mpsConfig.defaultPerDevicePinnedMemoryLimit[%s]: %w", dev, err)
				}
			}
		}
	default:
		return fmt.Errorf("parameters.sharing.strategy: %q is not one of %s, %s", s.Strategy, TimeSlicingStrategy, MpsStrategy)
	}
	return nil
}

// MaxMemoryLimit is the largest MPS pinned memory limit accepted, far
// above the memory of any GPU: a larger quantity is a mistake (and would
// not fit the int64 of bytes the limit is computed in).
var MaxMemoryLimit = resource.MustParse("1Pi")

// MemoryLimit parses an MPS pinned memory limit, a Kubernetes quantity
// such as "10Gi", into mebibytes (the unit the CUDA runtime is given),
// rounded down. A quantity under 1Mi or over MaxMemoryLimit is refused:
// neither would be the limit that was asked for.
func MemoryLimit(q string) (int64, error) {
	v, err := resource.ParseQuantity(q)
	if err != nil {
		return 0, fmt.Errorf("%q is not a quantity: %w", q, err)
	}
	// Compare before converting: Value() of a quantity beyond int64
	// wraps, and "1e30" would read as a few bytes.
	if v.Cmp(MaxMemoryLimit) > 0 {
		return 0, fmt.Errorf("%q is over %s", q, MaxMemoryLimit.String())
	}
	mib := v.Value() >> 20
	if mib < 1 {
		return 0, fmt.Errorf("%q is under 1Mi", q)
	}
	return mib, nil
}

// MaxDeviceIndex is the largest device index a per-device key can name: a
// claim has at most resource.k8s.io/v1's AllocationResultsMaxSize devices.
const MaxDeviceIndex = resourceapi.AllocationResultsMaxSize - 1

// DeviceKey parses a key of defaultPerDevicePinnedMemoryLimit: the index
// of a device among the claim's MPS devices, written as a plain decimal
// ("0", "12"; not "+0", "00" or " 1", which no device would match), or a
// device UUID ("GPU-…", "MIG-…"). It returns the index, or -1 and the
// UUID.
func DeviceKey(key string) (index int, uuid string, err error) {
	if strings.HasPrefix(key, "GPU-") || strings.HasPrefix(key, "MIG-") {
		if len(key) == len("GPU-") || strings.ContainsFunc(key, unicode.IsSpace) {
			return -1, "", fmt.Errorf("%q is not a device UUID", key)
		}
		return -1, key, nil
	}
	n, err := strconv.Atoi(key)
	if err != nil || n < 0 || strconv.Itoa(n) != key {
		return -1, "", fmt.Errorf("device key %q is neither an index (0, 1, ...) nor a UUID (GPU-..., MIG-...)", key)
	}
	if n > MaxDeviceIndex {
		return -1, "", fmt.Errorf("device index %d is over %d, the most devices a claim has", n, MaxDeviceIndex)
	}
	return n, "", nil
}
