package simhost

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Device majors of the simulated kernel, in its proc/devices: the GPU
// driver's fixed major, and the dynamic ones Linux gives nvidia-uvm,
// nvidia-caps and nvidia-caps-imex-channels (IMEX channels, driver 550
// and later), from the top of its range down as on a node whose low
// dynamic majors are taken.
const (
	FrontendMajor     = 195
	UVMMajor          = 510
	CapsMajor         = 511
	IMEXChannelsMajor = 509
)

// procDevices is the simulated kernel's proc/devices: a few of a Linux
// host's own, then the NVIDIA driver's.
func procDevices() string {
	return fmt.Sprintf(`Character devices:
  1 mem
  4 /dev/vc/0
  4 tty
  5 /dev/tty
  5 /dev/console
  5 /dev/ptmx
 10 misc
136 pts
%3d nvidia-frontend
%3d nvidia-uvm
%3d nvidia-caps
%3d %s

Block devices:
  7 loop
  8 sd
259 blkext
`, FrontendMajor, UVMMajor, CapsMajor, IMEXChannelsMajor, names.IMEXChannelMajorName)
}

// procParams is the simulated kernel module's proc/driver/nvidia/params,
// "Name: value" per line as the driver prints its module parameters; a
// few of a 570 driver's, with the defaults of the IMEX ones: 2048
// channels, and no channel 0 device node made at load
// (NVreg_CreateImexChannel0=0), so no /dev/nvidia-caps-imex-channels node
// exists until someone makes one.
func procParams() string {
	return fmt.Sprintf(`ResmanDebugLevel: 4294967295
RmLogonRC: 1
ModifyDeviceFiles: 1
DeviceFileUID: 0
DeviceFileGID: 0
DeviceFileMode: 438
NvLinkDisable: 0
ImexChannelCount: %d
CreateImexChannel0: 0
`, names.IMEXChannelCount)
}

// Modes the driver gives capability nodes ("DeviceFileMode"): access to
// an instance is readable by all, config and monitor by root only.
const (
	accessCapMode = 0o444
	configCapMode = 0o400
)

// capabilitiesDir is the driver's capability tree under the proc root.
const capabilitiesDir = "proc/driver/nvidia/capabilities"

// accessFile is the content of a capability's access file, as the driver
// writes it.
func accessFile(minor int, mode os.FileMode) string {
	return fmt.Sprintf("DeviceFileMinor: %d\nDeviceFileMode: %d\nDeviceFileModify: 1\n", minor, mode)
}

// GPUInstanceCaps is a GPU instance of a GPU, with its compute instances'
// IDs, whose capabilities the kernel shows.
type GPUInstanceCaps struct {
	ID               int
	ComputeInstances []int
}

// Capabilities writes the simulated kernel's capability files of MIG
// instances under a proc root, as the NVIDIA driver shows them in
// /proc/driver/nvidia/capabilities: gpu<minor>/mig/gi<GI>/access while
// the GPU instance exists, gpu<minor>/mig/gi<GI>/ci<CI>/access while the
// compute instance does, each naming its node's minor from the mig-minors
// table. It makes no device node: NVML makes none when it creates an
// instance. Safe for concurrent use.
type Capabilities struct {
	procRoot string
	minors   map[string]int
	mu       sync.Mutex
}

// OpenCapabilities reads the mig-minors table under procRoot (made by
// Create).
func OpenCapabilities(procRoot string) (*Capabilities, error) {
	path := filepath.Join(procRoot, "proc/driver/nvidia-caps/mig-minors")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("simulated MIG capabilities: %w", err)
	}
	minors := map[string]int{}
	for _, line := range strings.Split(string(data), "\n") {
		key, value, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(value)
		if err != nil {
			return nil, fmt.Errorf("simulated MIG capabilities: %s: line %q", path, line)
		}
		minors[key] = n
	}
	return &Capabilities{procRoot: procRoot, minors: minors}, nil
}

// Sync makes the capability files of the GPU with minor gpuMinor be those
// of gis: files of instances that are gone are removed, those of new ones
// written (each atomically, so a reader never sees half of one).
func (c *Capabilities) Sync(gpuMinor int, gis []GPUInstanceCaps) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	dir := filepath.Join(c.procRoot, capabilitiesDir, fmt.Sprintf("gpu%d", gpuMinor), "mig")
	want := map[string]int{} // access files relative to dir, by minor
	for _, gi := range gis {
		key := fmt.Sprintf("gpu%d/gi%d/access", gpuMinor, gi.ID)
		minor, ok := c.minors[key]
		if !ok {
			return fmt.Errorf("simulated MIG capabilities: mig-minors has no %s", key)
		}
		want[fmt.Sprintf("gi%d/access", gi.ID)] = minor
		for _, ci := range gi.ComputeInstances {
			key := fmt.Sprintf("gpu%d/gi%d/ci%d/access", gpuMinor, gi.ID, ci)
			minor, ok := c.minors[key]
			if !ok {
				return fmt.Errorf("simulated MIG capabilities: mig-minors has no %s", key)
			}
			want[fmt.Sprintf("gi%d/ci%d/access", gi.ID, ci)] = minor
		}
	}
	// Remove what is gone: an instance's directory, with its compute
	// instances', goes with it.
	giDirs, err := filepath.Glob(filepath.Join(dir, "gi*"))
	if err != nil {
		return fmt.Errorf("simulated MIG capabilities: %w", err)
	}
	for _, giDir := range giDirs {
		gi := filepath.Base(giDir)
		if _, ok := want[gi+"/access"]; !ok {
			if err := os.RemoveAll(giDir); err != nil {
				return fmt.Errorf("simulated MIG capabilities: %w", err)
			}
			continue
		}
		ciDirs, err := filepath.Glob(filepath.Join(giDir, "ci*"))
		if err != nil {
			return fmt.Errorf("simulated MIG capabilities: %w", err)
		}
		for _, ciDir := range ciDirs {
			if _, ok := want[gi+"/"+filepath.Base(ciDir)+"/access"]; !ok {
				if err := os.RemoveAll(ciDir); err != nil {
					return fmt.Errorf("simulated MIG capabilities: %w", err)
				}
			}
		}
	}
	for rel, minor := range want {
		if err := writeFile(filepath.Join(dir, rel), accessFile(minor, accessCapMode), 0o444); err != nil {
			return fmt.Errorf("simulated MIG capabilities: %w", err)
		}
	}
	return nil
}

// removeCapNodes removes the /dev/nvidia-caps/nvidia-cap<N> nodes of
// instances that an older Create made for every minor of the table.
func removeCapNodes(dev string, table []MIGMinor) error {
	for _, e := range table {
		if e.Key == "config" || e.Key == "monitor" {
			continue
		}
		err := os.Remove(filepath.Join(dev, "nvidia-caps", fmt.Sprintf("nvidia-cap%d", e.Minor)))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("create simulated /dev: %w", err)
		}
	}
	return nil
}
