package prepare

import (
	"fmt"
	"strings"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/api/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
)

// settings are what a device's configuration asks of prepare.
type settings struct {
	// env is extra container environment.
	env map[string]string
	// timeSlice is a non-default compute time slice for a whole GPU.
	timeSlice string
}

// deviceConfig resolves the opaque configuration that applies to a device.
// Configurations from the DeviceClass come before those of the claim and a
// later one wins; a configuration applies to the requests it names (all if
// none), and only to devices of its kind (GpuConfig to whole GPUs,
// MigDeviceConfig to MIG devices). Errors name the configuration entry and
// the field.
func deviceConfig(claim *resourceapi.ResourceClaim, d *checkpoint.Device) (settings, error) {
	var chosen v1beta1.Config
	var chosenAt string
	for i, c := range claim.Status.Allocation.Devices.Config {
		if c.Opaque == nil || c.Opaque.Driver != devicemodel.DriverName || !appliesTo(c.Requests, d.Requests) {
			continue
		}
		at := fmt.Sprintf("configuration %d (%s)", i, strings.ToLower(string(c.Source)))
		cfg, err := v1beta1.Decode(c.Opaque.Parameters.Raw)
		if err != nil {
			return settings{}, fmt.Errorf("%s: %w", at, err)
		}
		switch cfg.(type) {
		case *v1beta1.GpuConfig:
			if d.MIG == nil {
				chosen, chosenAt = cfg, at
			}
		case *v1beta1.MigDeviceConfig:
			if d.MIG != nil {
				chosen, chosenAt = cfg, at
			}
		}
	}
	if chosen == nil {
		return settings{}, nil
	}
	s := v1beta1.SharingOf(chosen)
	if s == nil {
		return settings{}, nil
	}
	if s.Strategy == v1beta1.MpsStrategy {
		return settings{}, fmt.Errorf("%s: parameters.sharing.strategy: %s is not supported by this driver version", chosenAt, v1beta1.MpsStrategy)
	}
	// Time-slicing is what a GPU does for the containers of one claim;
	// only a non-default interval changes the GPU.
	if s.TimeSlicingConfig == nil || s.TimeSlicingConfig.Interval == "" || s.TimeSlicingConfig.Interval == v1beta1.DefaultTimeSlice {
		return settings{}, nil
	}
	if d.MIG != nil {
		return settings{}, fmt.Errorf("%s: parameters.sharing.timeSlicingConfig.interval: %s cannot be set on a MIG device; only whole GPUs have a configurable time slice", chosenAt, s.TimeSlicingConfig.Interval)
	}
	return settings{timeSlice: s.TimeSlicingConfig.Interval}, nil
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
