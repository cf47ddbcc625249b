package cdi

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// A whole GPU's DRM nodes (/dev/dri/card<N>, /dev/dri/renderD<N>), which
// nvidia-drm makes for the GPU's PCI device: Vulkan and EGL on the DRM
// platform open them. NVIDIA's CDI generator gives them with the GPU
// (nvidia-container-toolkit internal/platform-support/dgpu), and so does
// this driver; a MIG device gets its GPU's only where its profile has
// graphics ("+gfx", MIGDevice.Graphics). Their numbers follow the order in which the kernel's DRM drivers
// bound their devices, not the GPU's minor (card0 is often the board's
// display controller), so they are found from the GPU's PCI device:
//
//  1. the driver's information file of each GPU under the proc root
//     (GPUsDir/<bus ID>/information) names its "Device Minor" and "Bus
//     Location";
//  2. that PCI device's drm directory under the sys root
//     (sys/bus/pci/devices/<bus ID>/drm) names its nodes;
//  3. each node is looked up under the dev root with stat.
//
// None of it is required: a node without nvidia-drm loaded has no drm
// directory and its GPUs no DRM nodes.

// GPUsDir holds the driver's directory of each GPU, named by PCI bus ID,
// relative to the proc root.
const GPUsDir = "proc/driver/nvidia/gpus"

// pciDevicesDir is the kernel's directory of PCI devices, relative to the
// sys root.
const pciDevicesDir = "sys/bus/pci/devices"

// maxInformationSize bounds a GPU's information file (some 400 bytes).
const maxInformationSize = 16 << 10

// drmNodeName matches the names of the DRM nodes a container gets.
var drmNodeName = regexp.MustCompile(`^(card|renderD)[0-9]+$`)

// pciBusIDPattern matches a PCI bus ID as the driver writes it, lowercased.
var pciBusIDPattern = regexp.MustCompile(`^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)

// GPUInformation is what the driver's information file of a GPU says of
// it.
type GPUInformation struct {
	// Minor is the minor of /dev/nvidia<minor> ("Device Minor").
	Minor int
	// BusID is the PCI bus ID, "0000:18:00.0" ("Bus Location").
	BusID string
}

// ParseGPUInformation reads a GPU's information file, such as
// proc/driver/nvidia/gpus/0000:18:00.0/information, whose lines are
// "<key>: <value>" ("Device Minor: 0", "Bus Location: 0000:18:00.0").
func ParseGPUInformation(path string) (GPUInformation, error) {
	data, err := hostfs.ReadBounded(path, maxInformationSize, true)
	if err != nil {
		return GPUInformation{}, fmt.Errorf("read GPU information: %w", err)
	}
	out := GPUInformation{Minor: -1}
	for _, line := range strings.Split(string(data), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch strings.TrimSpace(key) {
		case "Device Minor":
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 {
				return GPUInformation{}, fmt.Errorf("%s: invalid Device Minor %q", path, value)
			}
			out.Minor = n
		case "Bus Location":
			out.BusID = strings.ToLower(value)
		}
	}
	if out.Minor < 0 || !pciBusIDPattern.MatchString(out.BusID) {
		return GPUInformation{}, fmt.Errorf("%s: no Device Minor, or no PCI bus ID in Bus Location", path)
	}
	return out, nil
}

// drmNodes returns the DRM nodes of the GPU with minor gpuMinor, and why
// any it found could not be given (a name in sysfs without its node, an
// information file it could not read). It never fails: a GPU without DRM
// nodes gets none.
func (w *Writer) drmNodes(gpuMinor int) ([]*specs.DeviceNode, []string) {
	busID, problems := w.gpuBusID(gpuMinor)
	if busID == "" {
		return nil, problems
	}
	dir := filepath.Join(w.opts.SysRoot, pciDevicesDir, busID, "drm")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, problems // nvidia-drm not loaded
	}
	if err != nil {
		return nil, append(problems, fmt.Sprintf("DRM nodes of GPU minor %d: %v", gpuMinor, err))
	}
	var nodes []*specs.DeviceNode
	for _, e := range entries { // in name order: card before renderD
		if !drmNodeName.MatchString(e.Name()) {
			continue
		}
		n, err := w.deviceNode("/dev/dri/" + e.Name())
		if err != nil {
			problems = append(problems, fmt.Sprintf("DRM node of GPU minor %d (%s): %v", gpuMinor, filepath.Join(dir, e.Name()), err))
			continue
		}
		nodes = append(nodes, n)
	}
	return nodes, problems
}

// gpuBusID returns the PCI bus ID of the GPU with minor gpuMinor from the
// driver's information files under the proc root; "" when none names it.
func (w *Writer) gpuBusID(gpuMinor int) (string, []string) {
	paths, err := filepath.Glob(filepath.Join(w.opts.ProcRoot, GPUsDir, "*", "information"))
	if err != nil {
		return "", []string{fmt.Sprintf("DRM nodes of GPU minor %d: %v", gpuMinor, err)}
	}
	var problems []string
	for _, p := range paths {
		info, err := ParseGPUInformation(p)
		if err != nil {
			problems = append(problems, fmt.Sprintf("DRM nodes of GPU minor %d: %v", gpuMinor, err))
			continue
		}
		if info.Minor == gpuMinor {
			return info.BusID, problems
		}
	}
	return "", problems
}
