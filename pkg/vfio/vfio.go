// Package vfio hands a whole GPU to a virtual machine and back, through
// the host's PCI sysfs: it finds the GPU's IOMMU group and the other
// functions in it, the VFIO driver that suits the GPU (vfio-pci or a
// variant such as nvgrace_gpu_vfio_pci on Grace), and moves functions
// between drivers with driver_override, unbind and drivers_probe
// (Documentation/ABI/testing/sysfs-bus-pci). It never loads a module:
// a driver that is not registered is an error before anything is
// unbound, so a function is never left without a driver by a bind that
// could not succeed.
package vfio

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// DefaultWait is how long a write to sysfs may take to show in the
// function's driver link. The kernel binds and unbinds during the write,
// so on a real host it shows at once; a simulated kernel applies writes
// a little later.
const DefaultWait = 10 * time.Second

// Host is the host's PCI sysfs and VFIO device nodes.
type Host struct {
	// SysRoot is the host root under which /sys is found.
	SysRoot string
	// DevRoot is the host root under which /dev is found.
	DevRoot string
	// ModulesAlias is the kernel's modules.alias file, to choose a VFIO
	// variant driver; empty or missing means vfio-pci.
	ModulesAlias string
	// Wait bounds each bind and unbind (0: DefaultWait).
	Wait time.Duration
}

func (h Host) sys(parts ...string) string {
	return filepath.Join(append([]string{h.SysRoot, "sys"}, parts...)...)
}

func (h Host) device(bdf string, parts ...string) string {
	return h.sys(append([]string{"bus/pci/devices", bdf}, parts...)...)
}

// Driver returns the driver bound to the function, "" for none.
func (h Host) Driver(bdf string) (string, error) {
	if _, err := os.Stat(h.device(bdf)); err != nil {
		return "", fmt.Errorf("PCI function %s: %w", bdf, err)
	}
	target, err := os.Readlink(h.device(bdf, "driver"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("driver of PCI function %s: %w", bdf, err)
	}
	return filepath.Base(target), nil
}

// Group returns the function's IOMMU group.
func (h Host) Group(bdf string) (int, error) {
	target, err := os.Readlink(h.device(bdf, "iommu_group"))
	if err != nil {
		return 0, fmt.Errorf("IOMMU group of PCI function %s (is the IOMMU on, intel_iommu=on or amd_iommu=on?): %w", bdf, err)
	}
	n, err := strconv.Atoi(filepath.Base(target))
	if err != nil {
		return 0, fmt.Errorf("IOMMU group of PCI function %s: %q is no group number", bdf, target)
	}
	return n, nil
}

// GroupFunctions returns the functions of an IOMMU group, sorted.
func (h Host) GroupFunctions(group int) ([]string, error) {
	entries, err := os.ReadDir(h.sys("kernel/iommu_groups", strconv.Itoa(group), "devices"))
	if err != nil {
		return nil, fmt.Errorf("functions of IOMMU group %d: %w", group, err)
	}
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.Name())
	}
	slices.Sort(out)
	return out, nil
}

// NumVFs returns how many SR-IOV virtual functions the function has
// enabled; 0 for a function without SR-IOV.
func (h Host) NumVFs(bdf string) (int, error) {
	data, err := os.ReadFile(h.device(bdf, "sriov_numvfs"))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("SR-IOV virtual functions of PCI function %s: %w", bdf, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("SR-IOV virtual functions of PCI function %s: %w", bdf, err)
	}
	return n, nil
}

// IOMMUFD reports whether the host has the iommufd API device, /dev/iommu.
func (h Host) IOMMUFD() bool {
	_, err := os.Stat(filepath.Join(h.DevRoot, "dev/iommu"))
	return err == nil
}

// CharDevice returns the name ("vfio3") of the function's VFIO character
// device under /dev/vfio/devices, which a kernel with iommufd support
// makes while a VFIO driver drives it; "" if it has none.
func (h Host) CharDevice(bdf string) (string, error) {
	entries, err := os.ReadDir(h.device(bdf, "vfio-dev"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("VFIO character device of PCI function %s: %w", bdf, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "vfio") {
			return e.Name(), nil
		}
	}
	return "", nil
}

// Variant returns the VFIO driver for the function: the variant module
// whose "vfio_pci:" alias in ModulesAlias matches the function's modalias
// most closely (fewest wildcards), as the kernel's own tooling and NVIDIA's
// driver choose it, or vfio-pci. The name is the driver's under
// /sys/bus/pci/drivers, which for vfio_pci is vfio-pci.
func (h Host) Variant(bdf string) (string, error) {
	alias, err := os.ReadFile(h.device(bdf, "modalias"))
	if err != nil {
		return "", fmt.Errorf("modalias of PCI function %s: %w", bdf, err)
	}
	want := "vfio_" + strings.TrimSpace(string(alias)) // vfio_pci:v…
	best, wildcards := "vfio_pci", -1
	if h.ModulesAlias != "" {
		f, err := os.Open(h.ModulesAlias)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return "", fmt.Errorf("choose the VFIO driver of PCI function %s: %w", bdf, err)
		default:
			defer f.Close()
			s := bufio.NewScanner(f)
			for s.Scan() {
				fields := strings.Fields(s.Text())
				if len(fields) != 3 || fields[0] != "alias" || !strings.HasPrefix(fields[1], "vfio_pci:") {
					continue
				}
				if ok, _ := filepath.Match(fields[1], want); !ok {
					continue
				}
				if n := strings.Count(fields[1], "*"); wildcards < 0 || n < wildcards {
					best, wildcards = fields[2], n
				}
			}
			if err := s.Err(); err != nil {
				return "", fmt.Errorf("choose the VFIO driver of PCI function %s: %w", bdf, err)
			}
		}
	}
	// A module's driver is registered under its name, or for vfio_pci
	// under vfio-pci.
	if best == "vfio_pci" {
		return names.KernelDriverVFIOPCI, nil
	}
	return best, nil
}

// Registered reports whether a driver is registered with the PCI bus (its
// module loaded).
func (h Host) Registered(driver string) bool {
	_, err := os.Stat(h.sys("bus/pci/drivers", driver))
	return err == nil
}

// Bind binds the function to driver, or with "" leaves it unbound. Bound
// elsewhere, it is unbound first; a target driver that is not registered
// is an error before that. A VFIO driver stays in driver_override, so
// that nothing (a rescan, another probe) gives the function back to its
// native driver while a VM may use it; any other target clears it.
func (h Host) Bind(ctx context.Context, bdf, driver string) error {
	cur, err := h.Driver(bdf)
	if err != nil {
		return err
	}
	if driver != "" && !h.Registered(driver) {
		return fmt.Errorf("bind PCI function %s to %s: driver %s is not registered (load its module on the node: modprobe %s)",
			bdf, driver, driver, strings.ReplaceAll(driver, "-", "_"))
	}
	override := driver
	if !names.IsVFIODriver(driver) {
		override = "\n" // clears it
	}
	if err := h.write(h.device(bdf, "driver_override"), override); err != nil {
		return err
	}
	if cur == driver {
		return nil
	}
	if cur != "" {
		if err := h.write(h.sys("bus/pci/drivers", cur, "unbind"), bdf); err != nil {
			return err
		}
		if err := h.waitFor(ctx, bdf, ""); err != nil {
			return fmt.Errorf("unbind PCI function %s from %s: %w", bdf, cur, err)
		}
	}
	if driver == "" {
		return nil
	}
	if err := h.write(h.sys("bus/pci/drivers_probe"), bdf); err != nil {
		return err
	}
	if err := h.waitFor(ctx, bdf, driver); err != nil {
		return fmt.Errorf("bind PCI function %s to %s: %w", bdf, driver, err)
	}
	return nil
}

// write writes a sysfs attribute, which exists or is no attribute.
func (h Host) write(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", strings.TrimSpace(value), path, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", strings.TrimSpace(value), path, err)
	}
	return nil
}

// waitFor waits until the function's driver is want.
func (h Host) waitFor(ctx context.Context, bdf, want string) error {
	wait := h.Wait
	if wait <= 0 {
		wait = DefaultWait
	}
	deadline := time.Now().Add(wait)
	for {
		cur, err := h.Driver(bdf)
		if err != nil {
			return err
		}
		if cur == want {
			return nil
		}
		if time.Now().After(deadline) {
			if cur == "" {
				cur = "no driver"
			}
			return fmt.Errorf("still bound to %s after %s", cur, wait)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
