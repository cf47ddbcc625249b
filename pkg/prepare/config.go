package prepare

import (
	"fmt"
	"strings"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/api/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
)

// deviceConfig resolves the opaque configuration that applies to a device
// and returns the container environment it asks for. Configurations from
// the DeviceClass come before those of the claim and a later one wins; a
// configuration applies to the requests it names (all if none), and only
// to devices of its kind (GpuConfig to whole GPUs, MigDeviceConfig to MIG
// devices). Errors name the configuration entry and the field.
func deviceConfig(claim *resourceapi.ResourceClaim, d *checkpoint.Device) (map[string]string, error) {
	var chosen v1beta1.Config
	for i, c := range claim.Status.Allocation.Devices.Config {
		if c.Opaque == nil || c.Opaque.Driver != devicemodel.DriverName || !appliesTo(c.Requests, d.Requests) {
			continue
		}
		cfg, err := v1beta1.Decode(c.Opaque.Parameters.Raw)
		if err != nil {
			return nil, fmt.Errorf("configuration %d (%s): %w", i, strings.ToLower(string(c.Source)), err)
		}
		switch cfg.(type) {
		case *v1beta1.GpuConfig:
			if d.MIG == nil {
				chosen = cfg
			}
		case *v1beta1.MigDeviceConfig:
			if d.MIG != nil {
				chosen = cfg
			}
		}
	}
	if chosen == nil {
		return nil, nil
	}
	s := v1beta1.SharingOf(chosen)
	if s == nil {
		return nil, nil
	}
	switch {
	case s.Strategy == v1beta1.MpsStrategy:
		return nil, fmt.Errorf("sharing.strategy %s is not supported by this driver version", v1beta1.MpsStrategy)
	case s.TimeSlicingConfig != nil && s.TimeSlicingConfig.Interval != "" && s.TimeSlicingConfig.Interval != v1beta1.DefaultTimeSlice:
		return nil, fmt.Errorf("sharing.timeSlicingConfig.interval %s is not supported by this driver version (only %s)", s.TimeSlicingConfig.Interval, v1beta1.DefaultTimeSlice)
	}
	// Time-slicing with the default interval is what a GPU does for the
	// containers of one claim: nothing to change.
	return nil, nil
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
