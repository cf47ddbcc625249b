package simtools

import (
	"errors"
	"fmt"
	"strings"
)

// deviceUUIDsEnv is cdi.EnvDeviceUUIDs, spelt here so that the static
// tools do not link the CDI library (simtools_test checks they agree).
const deviceUUIDsEnv = "GPU_DRA_DEVICE_UUIDS"

// smi is the simulated nvidia-smi. "compute-policy -i UUID --set-timeslice
// N" records the GPU's time slice where tests read it and logs the call, as
// the real tool changes the GPU's scheduler. Anything else prints what a
// container sees, where the real tool lists the GPUs it can open: the
// driver version and the container's devices as the driver's CDI specs
// name them (GPU_DRA_DEVICE_UUIDS, cdi.EnvDeviceUUIDs).
func (t *Tools) smi(args []string) int {
	if len(args) > 0 && args[0] == "compute-policy" {
		return t.computePolicy(args[1:])
	}
	version, err := readVersion(t.Executable)
	if err != nil {
		fmt.Fprintf(t.Stderr, "%s: %v\n", SMI, err)
		return 1
	}
	fmt.Fprintf(t.Stdout, "nvidia-smi (simulated NVIDIA driver %s)\n", version)
	fmt.Fprintf(t.Stdout, "%s=%s\n", deviceUUIDsEnv, t.getenv(deviceUUIDsEnv))
	return 0
}

// computePolicy sets a GPU's time slice. The last of repeated arguments
// wins; an argument error exits 2.
func (t *Tools) computePolicy(args []string) int {
	const prefix = "nvidia-smi compute-policy: "
	var uuid, slice string
	for len(args) > 0 {
		switch arg := args[0]; {
		case arg == "-i" || arg == "--set-timeslice":
			if len(args) < 2 {
				fmt.Fprintf(t.Stderr, "%s%s needs a value\n", prefix, arg)
				return 2
			}
			if arg == "-i" {
				uuid = args[1]
			} else {
				slice = args[1]
			}
			args = args[2:]
		case strings.HasPrefix(arg, "--set-timeslice="):
			slice = strings.TrimPrefix(arg, "--set-timeslice=")
			args = args[1:]
		default:
			fmt.Fprintf(t.Stderr, "%sunknown argument %s\n", prefix, arg)
			return 2
		}
	}
	switch slice {
	case "0", "1", "2", "3":
	default:
		fmt.Fprintf(t.Stderr, "%sbad time slice '%s'\n", prefix, slice)
		return 2
	}
	if uuid == "" {
		fmt.Fprintf(t.Stderr, "%s-i is required\n", prefix)
		return 2
	}
	// The UUID names a file: one with a slash would be written elsewhere.
	if strings.ContainsAny(uuid, "/\x00") || uuid == "." || uuid == ".." {
		fmt.Fprintf(t.Stderr, "%sbad GPU UUID '%s'\n", prefix, uuid)
		return 2
	}
	code, err := t.askKernel("record-timeslice", EncodeToken(uuid), slice)
	switch {
	case errors.Is(err, errNoKernel):
		err = RecordTimeSlice(t.Root, uuid, slice, t.now())
	case err == nil && code == nvmlNotFound:
		fmt.Fprintf(t.Stderr, "No GPU with UUID %s was found.\n", uuid)
		return 6
	case err == nil && code != 0:
		err = fmt.Errorf("the simulated kernel answered NVML error %d", code)
	}
	if err != nil {
		fmt.Fprintf(t.Stderr, "%s: %v\n", SMI, err)
		return 1
	}
	fmt.Fprintf(t.Stdout, "Set time slice of GPU %s to %s\n", uuid, slice)
	return 0
}
