package simhost

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// SysLayout is the topology the simulated sysfs gives GPUs, in index
// order, as on a DGX: the first half of the GPUs on NUMA node 0, the rest
// on node 1, and every two neighbours behind one PCIe root complex (one
// PCIe switch, shared with their NICs on the real machine), whose bus is
// three below the first GPU's.
func SysLayout(busIDs []string) ([]gpu.Topology, error) {
	out := make([]gpu.Topology, len(busIDs))
	half := (len(busIDs) + 1) / 2
	for i, id := range busIDs {
		domain, bus, err := splitBusID(busIDs[i&^1])
		if err != nil {
			return nil, err
		}
		if _, _, err := splitBusID(id); err != nil {
			return nil, err
		}
		root := max(bus-3, 0)
		out[i] = gpu.Topology{PCIeRoot: fmt.Sprintf("pci%s:%02x", domain, root), NUMANode: i / half}
	}
	return out, nil
}

// Topology is SysLayout for an inventory's GPUs, by PCI bus ID: what the
// plugin reads from the simulated sysfs for them, as devicemodel.Input
// takes it.
func Topology(inv *gpu.Inventory) (map[string]gpu.Topology, error) {
	busIDs := make([]string, len(inv.GPUs))
	for i := range inv.GPUs {
		busIDs[i] = inv.GPUs[i].PCIBusID
	}
	layout, err := SysLayout(busIDs)
	if err != nil {
		return nil, err
	}
	out := make(map[string]gpu.Topology, len(layout))
	for i, t := range layout {
		out[busIDs[i]] = t
	}
	return out, nil
}

// splitBusID reads "dddd:bb:dd.f" (lowercase, as gpu.GPU.PCIBusID).
func splitBusID(id string) (domain string, bus int, err error) {
	parts := strings.Split(id, ":")
	if len(parts) != 3 || len(parts[0]) != 4 || len(parts[1]) != 2 || id != strings.ToLower(id) {
		return "", 0, fmt.Errorf("simulated sysfs: PCI bus ID %q is not dddd:bb:dd.f", id)
	}
	b, err := strconv.ParseUint(parts[1], 16, 8)
	if err != nil {
		return "", 0, fmt.Errorf("simulated sysfs: PCI bus ID %q: %w", id, err)
	}
	return parts[0], int(b), nil
}

// CreateSysRoot makes (idempotently) dir/sys, a host root for the plugin's
// --sys-root whose sys/ holds what the kernel shows of the GPUs' PCI
// devices, laid out as SysLayout says: for every bus ID,
// sys/devices/pci<domain>:<root>/<domain>:<root>:01.0/<busID>/numa_node,
// linked from sys/bus/pci/devices/<busID>, and a NUMA node directory
// sys/devices/system/node/node<N> for each node used. It returns dir/sys.
func CreateSysRoot(dir string, busIDs []string) (string, error) {
	layout, err := SysLayout(busIDs)
	if err != nil {
		return "", err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("simulated host directory: %w", err)
	}
	root := filepath.Join(abs, "sys")
	sys := filepath.Join(root, "sys")
	links := filepath.Join(sys, "bus/pci/devices")
	if err := os.MkdirAll(links, 0o755); err != nil {
		return "", fmt.Errorf("create simulated sysfs: %w", err)
	}
	for i, id := range busIDs {
		t := layout[i]
		port := strings.TrimPrefix(t.PCIeRoot, "pci") + ":01.0"
		rel := filepath.Join("devices", t.PCIeRoot, port, id)
		if err := writeFile(filepath.Join(sys, rel, "numa_node"), strconv.Itoa(t.NUMANode)+"\n", 0o444); err != nil {
			return "", err
		}
		node := filepath.Join(sys, "devices/system/node", "node"+strconv.Itoa(t.NUMANode))
		if err := os.MkdirAll(node, 0o755); err != nil {
			return "", fmt.Errorf("create simulated sysfs: %w", err)
		}
		if err := symlink(filepath.Join("../../..", rel), filepath.Join(links, id)); err != nil {
			return "", err
		}
	}
	return root, nil
}

// symlink makes link point to target, replacing what is there.
func symlink(target, link string) error {
	if old, err := os.Readlink(link); err == nil && old == target {
		return nil
	}
	if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("create simulated sysfs: %w", err)
	}
	if err := os.Symlink(target, link); err != nil {
		return fmt.Errorf("create simulated sysfs: %w", err)
	}
	return nil
}

// GPUAddress is a GPU's minor and PCI bus ID.
type GPUAddress struct {
	Minor int
	BusID string // as gpu.GPU.PCIBusID
}

// CreateDRM lays out in dir (as Create and CreateSysRoot made it) what
// the kernel shows of the GPUs' DRM nodes where nvidia-drm is loaded: the
// driver's information file of each GPU,
// proc/proc/driver/nvidia/gpus/<busID>/information ("Device Minor", "Bus
// Location"); the PCI device's drm/card<N> and drm/renderD<128+i>
// directories under sys/sys/bus/pci/devices/<busID>; and the nodes
// dev/dev/dri/card<N> and renderD<128+i> (1:3, as Create's). card0 is the
// board's display controller, as on a DGX, so a GPU's card number is not
// its minor: the i-th GPU's is card<i+1>.
func CreateDRM(dir string, gpus []GPUAddress) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("simulated host directory: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(abs, "dev/dev/dri"), 0o755); err != nil {
		return fmt.Errorf("create simulated /dev/dri: %w", err)
	}
	for i, g := range gpus {
		if _, _, err := splitBusID(g.BusID); err != nil {
			return err
		}
		info := fmt.Sprintf("Model: \t\t simulated\nBus Type: \t PCIe\nBus Location: \t %s\nDevice Minor: \t %d\nGPU Excluded:\t No\n", g.BusID, g.Minor)
		if err := writeFile(filepath.Join(abs, "proc/proc/driver/nvidia/gpus", g.BusID, "information"), info, 0o444); err != nil {
			return err
		}
		device, err := filepath.EvalSymlinks(filepath.Join(abs, "sys/sys/bus/pci/devices", g.BusID))
		if err != nil {
			return fmt.Errorf("simulated DRM nodes: the PCI device of GPU %s (make the sys root first): %w", g.BusID, err)
		}
		for _, name := range []string{fmt.Sprintf("card%d", i+1), fmt.Sprintf("renderD%d", 128+i)} {
			if err := os.MkdirAll(filepath.Join(device, "drm", name), 0o755); err != nil {
				return fmt.Errorf("create simulated sysfs: %w", err)
			}
			if err := mknodNull(filepath.Join(abs, "dev/dev/dri", name)); err != nil {
				return err
			}
		}
	}
	return nil
}
