package cdi

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/klog/v2"
	specs "tags.cncf.io/container-device-interface/specs-go"
)

// Environment the specs set.
//
// NVIDIA_VISIBLE_DEVICES is "void" in every spec: the variable is the
// request of the NVIDIA container runtime in its legacy mode (the default
// runtime of many GPU nodes), whose hook would otherwise inject the
// devices it names a second time, or every GPU of the node for "all",
// which CUDA images set. "void" makes that hook leave the container alone
// (nvidia-container-toolkit's image.CUDA.devicesFromEnvvars; its CDI
// generator, nvcdi, and NVIDIA's DRA driver set the same). A spec's
// environment replaces the image's and the pod's value of a variable.
//
// EnvDeviceUUIDs names the devices of a device's request by UUID, for
// programs and people that want to know which devices they were given.
// Which devices a container may use is set by the device nodes it gets,
// not by variables, and the runtime keeps the last value of a variable: a
// container of several requests or claims sees the last one's devices
// named. CUDA_VISIBLE_DEVICES is left alone, as its value would hide the
// container's other devices from CUDA.
const (
	envNVIDIAVisible = "NVIDIA_VISIBLE_DEVICES"
	// nvidiaVisibleVoid is envNVIDIAVisible's value in every spec.
	nvidiaVisibleVoid = "void"
	// EnvDeviceUUIDs is the variable that names, comma-separated, the
	// UUIDs ("GPU-…" or "MIG-…") of the devices of the container's
	// request.
	EnvDeviceUUIDs = "GPU_DRA_DEVICE_UUIDS"
	// envCUDAVisible is reserved: a device's Env may not set it either.
	envCUDAVisible = "CUDA_VISIBLE_DEVICES"
)

// buildSpec returns the spec of a claim. Devices are sorted by name so the
// file does not depend on the caller's order. The version is the lowest the
// CDI library accepts for the features used. DRM nodes that cannot be
// given are left out and logged.
func (w *Writer) buildSpec(logger klog.Logger, claimUID string, devices []Device) (*specs.Spec, error) {
	if err := validateClaimUID(claimUID); err != nil {
		return nil, err
	}
	if len(devices) == 0 {
		return nil, errors.New("no devices")
	}
	sorted := slices.Clone(devices)
	slices.SortFunc(sorted, func(a, b Device) int { return strings.Compare(a.Name, b.Name) })
	visible := map[string][]string{} // UUIDs by request, in device name order
	for i, d := range sorted {
		if err := validateDevice(d); err != nil {
			return nil, err
		}
		if i > 0 && sorted[i-1].Name == d.Name {
			return nil, fmt.Errorf("device %s listed twice", d.Name)
		}
		visible[d.Request] = append(visible[d.Request], d.UUID)
	}

	// The kernel's majors, read once per spec: nvidia-uvm may be loaded
	// after start.
	majors := w.readMajors()
	control, err := w.controlNodes(majors)
	if err != nil {
		return nil, err
	}
	var migMinors map[string]int // read when the first MIG device needs it
	spec := &specs.Spec{Kind: Kind, ContainerEdits: w.shared}
	for _, d := range sorted {
		if d.VFIO != nil {
			nodes, err := w.vfioNodes(*d.VFIO)
			if err != nil {
				return nil, fmt.Errorf("device %s: %w", d.Name, err)
			}
			spec.Devices = append(spec.Devices, specs.Device{
				Name:           cdiName(claimUID, d.Name),
				Annotations:    d.Annotations,
				ContainerEdits: specs.ContainerEdits{Env: []string{EnvDeviceUUIDs + "=" + strings.Join(visible[d.Request], ",")}, DeviceNodes: nodes},
			})
			continue
		}
		gpu, err := w.deviceNode(fmt.Sprintf("/dev/nvidia%d", d.GPUMinor))
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", d.Name, err)
		}
		nodes := append([]*specs.DeviceNode{gpu}, control...)
		if d.MIG == nil || d.MIG.Graphics {
			drm, problems := w.drmNodes(d.GPUMinor)
			if len(problems) > 0 {
				logger.Info("Warning: DRM nodes left out of the device", "device", d.Name, "problems", problems)
			}
			nodes = append(nodes, drm...)
		}
		if d.MIG != nil {
			if migMinors == nil {
				if migMinors, err = ParseMIGMinors(w.migMinorsPath()); err != nil {
					return nil, fmt.Errorf("device %s: %w", d.Name, err)
				}
			}
			caps, err := w.migCapNodes(majors, migMinors, d.GPUMinor, *d.MIG)
			if err != nil {
				return nil, fmt.Errorf("device %s: %w", d.Name, err)
			}
			nodes = append(nodes, caps...)
		}
		env := []string{EnvDeviceUUIDs + "=" + strings.Join(visible[d.Request], ",")}
		for _, k := range slices.Sorted(maps.Keys(d.Env)) {
			env = append(env, k+"="+d.Env[k])
		}
		var mounts []*specs.Mount
		for _, m := range d.Mounts {
			mounts = append(mounts, &specs.Mount{HostPath: m.HostPath, ContainerPath: m.ContainerPath, Options: m.options()})
		}
		spec.Devices = append(spec.Devices, specs.Device{
			Name:           cdiName(claimUID, d.Name),
			Annotations:    d.Annotations,
			ContainerEdits: specs.ContainerEdits{Env: env, DeviceNodes: nodes, Mounts: mounts},
		})
	}
	if spec.Version, err = specs.MinimumRequiredVersion(spec); err != nil {
		return nil, fmt.Errorf("determine CDI version: %w", err)
	}
	return spec, nil
}

// validateDevice checks what the CDI library cannot know about a device.
func validateDevice(d Device) error {
	if errs := validation.IsDNS1123Label(d.Name); len(errs) > 0 {
		return fmt.Errorf("device name %q: %s", d.Name, strings.Join(errs, "; "))
	}
	prefix := "GPU-"
	if d.MIG != nil {
		prefix = "MIG-"
	}
	if !strings.HasPrefix(d.UUID, prefix) || strings.Contains(d.UUID, ",") {
		return fmt.Errorf("device %s: UUID %q does not start with %s", d.Name, d.UUID, prefix)
	}
	for _, m := range d.Mounts {
		if !filepath.IsAbs(m.HostPath) || !filepath.IsAbs(m.ContainerPath) {
			return fmt.Errorf("device %s: mount %s -> %s: paths must be absolute", d.Name, m.HostPath, m.ContainerPath)
		}
	}
	if d.GPUMinor < 0 {
		return fmt.Errorf("device %s: negative GPU minor %d", d.Name, d.GPUMinor)
	}
	for k := range d.Env {
		if k == "" || strings.Contains(k, "=") {
			return fmt.Errorf("device %s: invalid environment variable name %q", d.Name, k)
		}
		if k == envNVIDIAVisible || k == EnvDeviceUUIDs || k == envCUDAVisible {
			return fmt.Errorf("device %s: environment variable %s is reserved to the driver", d.Name, k)
		}
	}
	return nil
}
