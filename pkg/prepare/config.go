package prepare

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/api/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
)

// settings are what a device's configuration asks of prepare.
type settings struct {
	// timeSlice is a non-default compute time slice for a whole GPU.
	timeSlice string
	// mps is set (possibly empty) when the device is shared through MPS.
	mps *v1beta1.MpsConfig
	// vfio is the configuration of a GPU for a VM (nil: the defaults).
	vfio *v1beta1.VfioDeviceConfig
}

// kindFor is the kind of configuration that applies to a device, and
// what the device is, for errors.
func kindFor(d *checkpoint.Device) (kind, what string) {
	switch {
	case d.VFIO != nil:
		return v1beta1.VfioDeviceConfigKind, "a GPU for a VM"
	case d.MIG != nil:
		return v1beta1.MigDeviceConfigKind, "a MIG device"
	}
	return v1beta1.GpuConfigKind, "a whole GPU"
}

// deviceConfig resolves the opaque configuration that applies to a device.
// Configurations from the DeviceClass come before those of the claim and a
// later one wins; a configuration applies to the requests it names (all if
// none), and only to devices of its kind (GpuConfig to whole GPUs,
// MigDeviceConfig to MIG devices); one of the other kind that the claim
// gives for exactly the device's request is an error, not ignored. Errors
// name the configuration entry and the field.
func deviceConfig(claim *resourceapi.ResourceClaim, d *checkpoint.Device) (settings, error) {
	var chosen v1beta1.Config
	for i, c := range claim.Status.Allocation.Devices.Config {
		if c.Opaque == nil || c.Opaque.Driver != names.DriverName || !appliesTo(c.Requests, d.Requests) {
			continue
		}
		at := fmt.Sprintf("configuration %d (%s)", i, strings.ToLower(string(c.Source)))
		cfg, err := v1beta1.Decode(c.Opaque.Parameters.Raw)
		if err != nil {
			return settings{}, fmt.Errorf("%s: %w", at, err)
		}
		want, what := kindFor(d)
		if v1beta1.KindOf(cfg) == want {
			chosen = cfg
			continue
		}
		// Of the other kind: a configuration for all requests, or from a
		// class, is meant for the devices of its kind among others; one
		// the claim gives for exactly this device's request was meant for
		// this device, and would silently not apply.
		if c.Source == resourceapi.AllocationConfigSourceClaim && namesExactly(c.Requests, d.Requests) {
			return settings{}, fmt.Errorf("%s: parameters.kind: a %s does not apply to device %s, %s, of request %s; use a %s",
				at, v1beta1.KindOf(cfg), d.Name, what, strings.Join(d.Requests, ", "), want)
		}
	}
	if chosen == nil {
		return settings{}, nil
	}
	if v, ok := chosen.(*v1beta1.VfioDeviceConfig); ok {
		return settings{vfio: v}, nil
	}
	s := v1beta1.SharingOf(chosen)
	if s == nil {
		return settings{}, nil
	}
	if s.Strategy == v1beta1.MpsStrategy {
		if s.MpsConfig == nil {
			return settings{mps: &v1beta1.MpsConfig{}}, nil
		}
		return settings{mps: s.MpsConfig}, nil
	}
	// Time-slicing is what a GPU does for the containers of one claim;
	// only a non-default interval changes the GPU. A MigDeviceConfig,
	// the only kind chosen for a MIG device, cannot set one (Validate).
	if s.TimeSlicingConfig == nil || s.TimeSlicingConfig.Interval == "" || s.TimeSlicingConfig.Interval == v1beta1.DefaultTimeSlice {
		return settings{}, nil
	}
	return settings{timeSlice: s.TimeSlicingConfig.Interval}, nil
}

// namesExactly reports whether configRequests names one of deviceRequests
// itself (not only a request whose subrequest the device is for).
func namesExactly(configRequests, deviceRequests []string) bool {
	for _, want := range configRequests {
		if slices.Contains(deviceRequests, want) {
			return true
		}
	}
	return false
}

// appliesTo reports whether a configuration for the named requests covers a
// device allocated for requests ("req" or "req/subrequest").
func appliesTo(configRequests, deviceRequests []string) bool {
	if len(configRequests) == 0 {
		return true
	}
	for _, want := range configRequests {
		for _, got := range deviceRequests {
			if got == want || strings.HasPrefix(got, want+"/") {
				return true
			}
		}
	}
	return false
}

// mpsEnv is the container environment of the claim's MPS devices, by
// device index: the daemon's directories as the containers see them, and
// the limits the CUDA runtime enforces. Pinned memory limits name devices
// by their ordinal among the claim's MPS devices (the order mpsUUIDs gives
// the daemon) or by UUID.
func mpsEnv(rec *checkpoint.Claim, configs map[int]*v1beta1.MpsConfig) (map[int]map[string]string, error) {
	uuids := mpsUUIDs(rec)
	out := map[int]map[string]string{}
	for _, i := range slices.Sorted(maps.Keys(configs)) {
		cfg := configs[i]
		env := map[string]string{
			"CUDA_MPS_PIPE_DIRECTORY": mps.ContainerPipeDir,
			"CUDA_MPS_LOG_DIRECTORY":  mps.ContainerLogDir,
		}
		if cfg.DefaultActiveThreadPercentage != nil {
			env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = strconv.Itoa(*cfg.DefaultActiveThreadPercentage)
		}
		perDevice, err := perDeviceLimits(cfg.DefaultPerDevicePinnedMemoryLimit, uuids)
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", rec.Devices[i].Name, err)
		}
		var limits []string
		for ord := range uuids {
			limit := cfg.DefaultPinnedDeviceMemoryLimit
			if l, ok := perDevice[ord]; ok {
				limit = &l
			}
			if limit == nil {
				continue
			}
			mib, err := v1beta1.MemoryLimit(string(*limit))
			if err != nil {
				return nil, fmt.Errorf("device %s: parameters.sharing.mpsConfig: %w", rec.Devices[i].Name, err)
			}
			limits = append(limits, fmt.Sprintf("%d=%dM", ord, mib))
		}
		if len(limits) > 0 {
			env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = strings.Join(limits, ",")
		}
		out[i] = env
	}
	return out, nil
}

// perDeviceLimits resolves the keys of defaultPerDevicePinnedMemoryLimit
// (v1beta1.DeviceKey: an ordinal or a UUID) to ordinals among uuids, the
// claim's MPS devices. A key that names no device, or a device another key
// names too, is an error naming the key: every limit given applies, or
// the claim does not prepare.
func perDeviceLimits(byKey map[string]v1beta1.Quantity, uuids []string) (map[int]v1beta1.Quantity, error) {
	out := make(map[int]v1beta1.Quantity, len(byKey))
	keyOf := make(map[int]string, len(byKey))
	for _, key := range slices.Sorted(maps.Keys(byKey)) {
		at := fmt.Sprintf("parameters.sharing.mpsConfig.defaultPerDevicePinnedMemoryLimit[%s]", key)
		ord, uuid, err := v1beta1.DeviceKey(key)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", at, err)
		}
		if uuid != "" {
			ord = slices.Index(uuids, uuid)
		}
		if ord < 0 || ord >= len(uuids) {
			return nil, fmt.Errorf("%s: the claim has no such MPS device (%d devices; use an index or a UUID)", at, len(uuids))
		}
		if other, dup := keyOf[ord]; dup {
			return nil, fmt.Errorf("%s: device %d is already given a limit by key %s", at, ord, other)
		}
		out[ord], keyOf[ord] = byKey[key], key
	}
	return out, nil
}

// shareEnv is the container environment of a claim's shares: its daemon's
// directories as the containers see them and the limits the daemon
// imposes (memory in MiB by the GPU's ordinal among the daemon's GPUs,
// compute when set), which a client may lower but not raise.
func shareEnv(l mps.Limits, uuids []string) map[string]string {
	env := map[string]string{
		"CUDA_MPS_PIPE_DIRECTORY": mps.ContainerPipeDir,
		"CUDA_MPS_LOG_DIRECTORY":  mps.ContainerLogDir,
	}
	for _, kv := range l.Env(uuids) {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	return env
}

// deviceUUID is the UUID CUDA knows a prepared device by.
func deviceUUID(d checkpoint.Device) string {
	if d.MIG != nil {
		return d.MIG.UUID
	}
	return d.GPUUUID
}
