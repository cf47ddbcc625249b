package simtools

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim/miguuid"
)

// deviceUUIDsEnv is cdi.EnvDeviceUUIDs, spelt here so that the static
// tools do not link the CDI library (simtools_test checks they agree).
const deviceUUIDsEnv = "GPU_DRA_DEVICE_UUIDS"

// smi is the simulated nvidia-smi. "compute-policy -i UUID --set-timeslice
// N" records the GPU's time slice where tests read it and logs the call, as
// the real tool changes the GPU's scheduler. Anything else prints what a
// container sees, where the real tool lists the GPUs it can open: the
// driver version and the container's devices as the driver's CDI specs
// name them (GPU_DRA_DEVICE_UUIDS, cdi.EnvDeviceUUIDs). "-L" (or
// "--list-gpus") lists those devices in NVIDIA's format (see listGPUs).
func (t *Tools) smi(args []string) int {
	if len(args) > 0 && args[0] == "compute-policy" {
		return t.computePolicy(args[1:])
	}
	if len(args) == 1 && (args[0] == "-L" || args[0] == "--list-gpus") {
		return t.listGPUs()
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

// unknownGPU is the product name of a GPU the copy's table does not have.
const unknownGPU = "NVIDIA GPU"

// listGPUs prints the container's devices as NVIDIA's "nvidia-smi -L"
// does: one line per GPU, numbered from 0 in the node's order, and under
// it, indented, one line per MIG device of it that the container has,
// numbered from 0:
//
//	GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)
//	  MIG 1g.10gb     Device  0: (UUID: MIG-...)
//
// The devices are those of GPU_DRA_DEVICE_UUIDS, which names one
// request's devices only, and the GPUs of the table whose /dev/nvidia<minor>
// the container has, as the real tool finds every GPU the container can
// open (the parent of a MIG device too: NVIDIA's lists it above its MIG
// devices). Product and profile names come
// from the GPU table this copy was installed with, and a MIG device's
// parent and profile from its simulated UUID (package miguuid). A
// container with no device prints "No devices were found" and exits 6,
// as NVIDIA's does.
func (t *Tools) listGPUs() int {
	table, err := readGPUs(t.Executable)
	if err != nil {
		fmt.Fprintf(t.Stderr, "%s: %v\n", SMI, err)
		return 1
	}
	type listed struct {
		gpu  GPU
		migs []string
	}
	byIndex := map[int]*listed{}
	order := func(g GPU) *listed {
		if l, ok := byIndex[g.Index]; ok {
			return l
		}
		l := &listed{gpu: g}
		byIndex[g.Index] = l
		return l
	}
	devDir := t.DevDir
	if devDir == "" {
		devDir = "/dev"
	}
	for _, g := range table {
		if _, err := os.Stat(filepath.Join(devDir, "nvidia"+strconv.Itoa(g.Minor))); err == nil {
			order(g)
		}
	}
	unknown := len(table)
	for _, uuid := range strings.Split(t.getenv(deviceUUIDsEnv), ",") {
		switch {
		case strings.HasPrefix(uuid, "GPU-"):
			g, ok := gpuByUUID(table, uuid)
			if !ok {
				g = GPU{Index: unknown, UUID: uuid, Name: unknownGPU}
				unknown++
			}
			order(g)
		case strings.HasPrefix(uuid, "MIG-"):
			w, ok := miguuid.Parse(uuid)
			g, found := gpuByIndex(table, w.GPU)
			if !ok || !found {
				fmt.Fprintf(t.Stderr, "%s: MIG device %s is not one of the simulated node's\n", SMI, uuid)
				return 1
			}
			l := order(g)
			l.migs = append(l.migs, uuid+" "+migProfileName(g.MIGProfiles[strconv.Itoa(w.GIProfile)], w.CIProfile))
		}
	}
	if len(byIndex) == 0 {
		fmt.Fprintln(t.Stdout, "No devices were found")
		return 6
	}
	indexes := make([]int, 0, len(byIndex))
	for i := range byIndex {
		indexes = append(indexes, i)
	}
	sort.Ints(indexes)
	for n, i := range indexes {
		l := byIndex[i]
		fmt.Fprintf(t.Stdout, "GPU %d: %s (UUID: %s)\n", n, l.gpu.Name, l.gpu.UUID)
		for m, mig := range l.migs {
			uuid, profile, _ := strings.Cut(mig, " ")
			fmt.Fprintf(t.Stdout, "  MIG %-11s Device %2d: (UUID: %s)\n", profile, m, uuid)
		}
	}
	return 0
}

// ciSlices are the compute slices of NVML's compute instance profiles,
// by ID (nvmlComputeInstanceProfile: 1, 2, 3, 4, 7, 8 and 6 slices, then
// the 1- and 2-slice revisions).
var ciSlices = []int{1, 2, 3, 4, 7, 8, 6, 1, 2, 1}

// migProfileName is NVIDIA's name of a MIG device of GPU instance profile
// gi (e.g. "3g.40gb") and compute instance profile ci: the GPU instance's
// name where the compute instance has all its slices, otherwise with the
// compute instance's slices before it ("1c.3g.40gb").
func migProfileName(gi string, ci int) string {
	g, _, ok := strings.Cut(gi, "g.")
	giSlices, err := strconv.Atoi(g)
	if !ok || err != nil || ci < 0 || ci >= len(ciSlices) || ciSlices[ci] >= giSlices {
		return gi
	}
	return strconv.Itoa(ciSlices[ci]) + "c." + gi
}

func gpuByUUID(table []GPU, uuid string) (GPU, bool) {
	for _, g := range table {
		if g.UUID == uuid {
			return g, true
		}
	}
	return GPU{}, false
}

func gpuByIndex(table []GPU, index int) (GPU, bool) {
	for _, g := range table {
		if g.Index == index {
			return g, true
		}
	}
	return GPU{}, false
}
