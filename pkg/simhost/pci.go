package simhost

import (
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

// Simulated PCI functions. Each GPU (class 3D controller) has an audio
// function (class audio device) at function 1 of its slot, as the HDMI/DP
// audio of a workstation GPU; the two share an IOMMU group, numbered by
// the GPU's position, so passing the GPU through means passing its group.
// Their native drivers are names.KernelDriverNVIDIA and
// names.KernelDriverHDAudio.
const (
	classGPU   = "0x030200"
	classAudio = "0x040300"
	vendorID   = "0x10de"
	gpuDevice  = "0x2330" // H100 SXM5 80GB
	audioDev   = "0x22a3"
)

// PCIOptions shape the simulated PCI sysfs.
type PCIOptions struct {
	// IOMMUFD makes /dev/iommu, and gives every function bound to a VFIO
	// driver its vfio-dev/vfio<N> directory and /dev/vfio/devices/vfio<N>
	// character device, as a kernel with CONFIG_VFIO_DEVICE_CDEV does.
	IOMMUFD bool
	// Drivers are the PCI drivers registered (modules loaded) besides
	// nvidia, vfio-pci and snd_hda_intel, e.g. "nvgrace_gpu_vfio_pci".
	Drivers []string
}

// AudioFunction is the bus ID of the audio function beside a GPU's.
func AudioFunction(gpuBusID string) string {
	return strings.TrimSuffix(gpuBusID, filepath.Ext(gpuBusID)) + ".1"
}

// CreatePCI adds to the sys root that CreateSysRoot made under dir what the
// kernel shows of the GPUs as PCI functions, and the VFIO side of dir/dev:
//
//   - per GPU, its function's class, vendor, device, modalias,
//     driver_override ("(null)" when unset), sriov_numvfs and
//     sriov_totalvfs, and an audio function beside it;
//   - both in IOMMU group <i> (the GPU's position): the functions'
//     iommu_group links and sys/kernel/iommu_groups/<i>/devices;
//   - the drivers nvidia (the GPUs), snd_hda_intel (the audio functions),
//     vfio-pci and opts.Drivers under sys/bus/pci/drivers, each with its
//     bind and unbind files and a link to each function it drives, each
//     function's driver link to its driver, and sys/bus/pci/drivers_probe;
//   - dev/dev/vfio/vfio (and dev/dev/iommu with opts.IOMMUFD).
//
// Writes to those files take effect when a PCIKernel applies them, as the
// kernel applies them when they are written. It keeps the bindings a
// PCIKernel made, so that it can be run again on a host in use.
func CreatePCI(dir string, busIDs []string, opts PCIOptions) error {
	layout, err := SysLayout(busIDs)
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("simulated host directory: %w", err)
	}
	k := NewPCIKernel(filepath.Join(abs, "sys"), filepath.Join(abs, "dev"))
	if err := os.MkdirAll(filepath.Join(k.sys, "bus/pci/devices"), 0o755); err != nil {
		return fmt.Errorf("create simulated sysfs: %w", err)
	}
	drivers := append([]string{names.KernelDriverNVIDIA, names.KernelDriverVFIOPCI, names.KernelDriverHDAudio}, opts.Drivers...)
	for _, d := range drivers {
		for _, f := range []string{"bind", "unbind"} {
			if err := ensureEmpty(filepath.Join(k.sys, "bus/pci/drivers", d, f)); err != nil {
				return err
			}
		}
	}
	if err := ensureEmpty(filepath.Join(k.sys, "bus/pci/drivers_probe")); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(k.dev, "vfio"), 0o755); err != nil {
		return fmt.Errorf("create simulated /dev/vfio: %w", err)
	}
	if err := mknodNull(filepath.Join(k.dev, "vfio/vfio")); err != nil {
		return err
	}
	if opts.IOMMUFD {
		if err := mknodNull(filepath.Join(k.dev, "iommu")); err != nil {
			return err
		}
	}
	for i, id := range busIDs {
		t := layout[i]
		port := strings.TrimPrefix(t.PCIeRoot, "pci") + ":01.0"
		for _, fn := range []struct{ bdf, class, device, driver string }{
			{id, classGPU, gpuDevice, names.KernelDriverNVIDIA},
			{AudioFunction(id), classAudio, audioDev, names.KernelDriverHDAudio},
		} {
			rel := filepath.Join("devices", t.PCIeRoot, port, fn.bdf)
			dev := filepath.Join(k.sys, rel)
			files := map[string]string{
				"class": fn.class, "vendor": vendorID, "device": fn.device,
				"modalias":  modalias(fn.device, fn.class),
				"numa_node": strconv.Itoa(t.NUMANode),
				// The simulation's own, no file of a real kernel: whether
				// the kernel gives the function a VFIO character device.
				"iommu_fd": strconv.FormatBool(opts.IOMMUFD),
			}
			if fn.class == classGPU {
				files["sriov_numvfs"], files["sriov_totalvfs"] = "0", "32"
			}
			for name, content := range files {
				if _, err := os.Stat(filepath.Join(dev, name)); err == nil && name == "sriov_numvfs" {
					continue // kept: a test or an administrator set it
				}
				if err := writeFile(filepath.Join(dev, name), content+"\n", 0o644); err != nil {
					return err
				}
			}
			if _, err := os.Stat(filepath.Join(dev, "driver_override")); errors.Is(err, fs.ErrNotExist) {
				if err := writeFile(filepath.Join(dev, "driver_override"), "(null)\n", 0o644); err != nil {
					return err
				}
			}
			if err := symlink(filepath.Join("../../..", rel), filepath.Join(k.sys, "bus/pci/devices", fn.bdf)); err != nil {
				return err
			}
			group := filepath.Join(k.sys, "kernel/iommu_groups", strconv.Itoa(i))
			if err := os.MkdirAll(filepath.Join(group, "devices"), 0o755); err != nil {
				return fmt.Errorf("create simulated sysfs: %w", err)
			}
			if err := symlink(filepath.Join("../../../..", rel), filepath.Join(group, "devices", fn.bdf)); err != nil {
				return err
			}
			if err := symlink(filepath.Join("../../../../kernel/iommu_groups", strconv.Itoa(i)), filepath.Join(dev, "iommu_group")); err != nil {
				return err
			}
			if _, err := os.Lstat(filepath.Join(dev, "driver")); errors.Is(err, fs.ErrNotExist) {
				if err := k.bind(fn.bdf, fn.driver); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// modalias is a function's "pci:v…d…sv…sd…bc…sc…i…" alias, which module
// aliases match.
func modalias(device, class string) string {
	dev := strings.ToUpper(strings.TrimPrefix(device, "0x"))
	c := strings.ToUpper(strings.TrimPrefix(class, "0x"))
	return fmt.Sprintf("pci:v000010DEd0000%ssv000010DEsd000016C1bc%ssc%si%s", dev, c[0:2], c[2:4], c[4:6])
}

func ensureEmpty(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return writeFile(path, "", 0o200)
}

// PCIKernel plays the kernel's PCI core and VFIO for a simulated sysfs:
// it applies what was written to its driver_override, unbind, bind and
// drivers_probe files as the kernel does at the write (Apply), and makes
// and removes the VFIO device nodes that binding a VFIO driver brings.
//
// Its semantics are the kernel's (Documentation/ABI/testing/sysfs-bus-pci):
//   - driver_override holds a driver name; "\n" (or nothing) clears it,
//     and it reads "(null)" when clear. It matters only when the
//     function is next probed;
//   - drivers/<d>/unbind takes a bus ID bound to d and unbinds it;
//   - drivers/<d>/bind takes a bus ID with no driver and binds it to d,
//     unless its driver_override names another driver;
//   - drivers_probe takes a bus ID with no driver and binds it to the
//     driver its driver_override names, or else to its native driver (the
//     one whose ID table matches: nvidia for a GPU, snd_hda_intel for its
//     audio function); a driver that is not registered binds nothing;
//   - a function bound to a VFIO driver (vfio-pci, or a variant "*vfio_pci")
//     makes /dev/vfio/<group>, kept while any function of the group is, and
//     with IOMMUFD its own /dev/vfio/devices/vfio<N>.
//
// A write that the kernel would refuse with an error is dropped.
type PCIKernel struct {
	sys, dev string
}

// NewPCIKernel returns the kernel of the sys root sysRoot (as CreateSysRoot
// returns it) and the /dev root devRoot.
func NewPCIKernel(sysRoot, devRoot string) *PCIKernel {
	return &PCIKernel{sys: filepath.Join(sysRoot, "sys"), dev: filepath.Join(devRoot, "dev")}
}

// Serve applies writes every interval until ctx ends.
func (k *PCIKernel) Serve(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := k.Apply(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Apply applies every pending write: overrides, then unbinds, binds and
// probes.
func (k *PCIKernel) Apply() error {
	devs, err := os.ReadDir(filepath.Join(k.sys, "bus/pci/devices"))
	if err != nil {
		return fmt.Errorf("simulated PCI: %w", err)
	}
	for _, d := range devs {
		path := filepath.Join(k.sys, "bus/pci/devices", d.Name(), "driver_override")
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("simulated PCI: %w", err)
		}
		// A writer truncates before it writes: only a whole "\n" clears.
		if string(data) == "\n" {
			if err := os.WriteFile(path, []byte("(null)\n"), 0o644); err != nil {
				return fmt.Errorf("simulated PCI: %w", err)
			}
		}
	}
	drivers, err := os.ReadDir(filepath.Join(k.sys, "bus/pci/drivers"))
	if err != nil {
		return fmt.Errorf("simulated PCI: %w", err)
	}
	for _, op := range []string{"unbind", "bind"} {
		for _, drv := range drivers {
			bdf, err := take(filepath.Join(k.sys, "bus/pci/drivers", drv.Name(), op))
			if err != nil || bdf == "" {
				if err != nil {
					return err
				}
				continue
			}
			cur := k.driver(bdf)
			switch {
			case op == "unbind" && cur == drv.Name():
				err = k.unbind(bdf)
			case op == "bind" && cur == "" && (k.override(bdf) == "" || k.override(bdf) == drv.Name()):
				err = k.bind(bdf, drv.Name())
			}
			if err != nil {
				return err
			}
		}
	}
	bdf, err := take(filepath.Join(k.sys, "bus/pci/drivers_probe"))
	if err != nil || bdf == "" {
		return err
	}
	if k.driver(bdf) != "" || !k.exists(bdf) {
		return nil
	}
	target := k.override(bdf)
	if target == "" {
		target = k.native(bdf)
	}
	if _, err := os.Stat(filepath.Join(k.sys, "bus/pci/drivers", target)); err != nil {
		return nil // no such driver registered: the function stays unbound
	}
	return k.bind(bdf, target)
}

// take reads a write-only attribute's pending write and clears it.
func take(path string) (string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("simulated PCI: %w", err)
	}
	if len(data) == 0 {
		return "", nil
	}
	if err := os.Truncate(path, 0); err != nil {
		return "", fmt.Errorf("simulated PCI: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

func (k *PCIKernel) device(bdf string) string { return filepath.Join(k.sys, "bus/pci/devices", bdf) }

func (k *PCIKernel) exists(bdf string) bool {
	_, err := os.Stat(k.device(bdf))
	return err == nil
}

func (k *PCIKernel) driver(bdf string) string {
	target, err := os.Readlink(filepath.Join(k.device(bdf), "driver"))
	if err != nil {
		return ""
	}
	return filepath.Base(target)
}

func (k *PCIKernel) override(bdf string) string {
	data, err := os.ReadFile(filepath.Join(k.device(bdf), "driver_override"))
	if err != nil {
		return ""
	}
	v := strings.TrimSpace(string(data))
	if v == "(null)" {
		return ""
	}
	return v
}

func (k *PCIKernel) native(bdf string) string {
	data, _ := os.ReadFile(filepath.Join(k.device(bdf), "class"))
	if strings.TrimSpace(string(data)) == classAudio {
		return names.KernelDriverHDAudio
	}
	return names.KernelDriverNVIDIA
}

// group is the function's IOMMU group.
func (k *PCIKernel) group(bdf string) string {
	target, err := os.Readlink(filepath.Join(k.device(bdf), "iommu_group"))
	if err != nil {
		return ""
	}
	return filepath.Base(target)
}

func (k *PCIKernel) bind(bdf, drv string) error {
	real, err := filepath.EvalSymlinks(k.device(bdf))
	if err != nil {
		return fmt.Errorf("simulated PCI: %w", err)
	}
	// What the driver makes of the function comes first and its driver
	// link last: the kernel's bind returns to the writer complete, and
	// readers take the link for the end of it.
	if names.IsVFIODriver(drv) {
		if err := mknodNull(filepath.Join(k.dev, "vfio", k.group(bdf))); err != nil {
			return err
		}
		if fd, _ := os.ReadFile(filepath.Join(real, "iommu_fd")); strings.TrimSpace(string(fd)) == "true" {
			n := k.cdevNumber(bdf)
			if err := os.MkdirAll(filepath.Join(k.dev, "vfio/devices"), 0o755); err != nil {
				return fmt.Errorf("simulated PCI: %w", err)
			}
			if err := mknodNull(filepath.Join(k.dev, "vfio/devices", "vfio"+n)); err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Join(real, "vfio-dev", "vfio"+n), 0o755); err != nil {
				return fmt.Errorf("simulated PCI: %w", err)
			}
		}
	}
	back, err := filepath.Rel(filepath.Join(k.sys, "bus/pci/drivers", drv), real)
	if err != nil {
		return fmt.Errorf("simulated PCI: %w", err)
	}
	if err := symlink(back, filepath.Join(k.sys, "bus/pci/drivers", drv, bdf)); err != nil {
		return err
	}
	relDrv, err := filepath.Rel(real, filepath.Join(k.sys, "bus/pci/drivers", drv))
	if err != nil {
		return fmt.Errorf("simulated PCI: %w", err)
	}
	return symlink(relDrv, filepath.Join(real, "driver"))
}

// cdevNumber numbers a function's VFIO character device by its position
// among the functions.
func (k *PCIKernel) cdevNumber(bdf string) string {
	devs, _ := os.ReadDir(filepath.Join(k.sys, "bus/pci/devices"))
	for i, d := range devs {
		if d.Name() == bdf {
			return strconv.Itoa(i)
		}
	}
	return "0"
}

func (k *PCIKernel) unbind(bdf string) error {
	drv := k.driver(bdf)
	real, err := filepath.EvalSymlinks(k.device(bdf))
	if err != nil {
		return fmt.Errorf("simulated PCI: %w", err)
	}
	// The driver link goes last, as bind makes it last.
	if names.IsVFIODriver(drv) {
		if err := os.RemoveAll(filepath.Join(real, "vfio-dev")); err != nil {
			return fmt.Errorf("simulated PCI: %w", err)
		}
		if err := os.Remove(filepath.Join(k.dev, "vfio/devices", "vfio"+k.cdevNumber(bdf))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("simulated PCI: %w", err)
		}
		// The group's node stays while another function of it is VFIO's.
		group := k.group(bdf)
		members, _ := os.ReadDir(filepath.Join(k.sys, "kernel/iommu_groups", group, "devices"))
		if !slices.ContainsFunc(members, func(m os.DirEntry) bool { return m.Name() != bdf && names.IsVFIODriver(k.driver(m.Name())) }) {
			if err := os.Remove(filepath.Join(k.dev, "vfio", group)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("simulated PCI: %w", err)
			}
		}
	}
	for _, p := range []string{filepath.Join(k.sys, "bus/pci/drivers", drv, bdf), filepath.Join(real, "driver")} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("simulated PCI: %w", err)
		}
	}
	return nil
}

// Driver returns the driver a function is bound to, "" for none: what
// the simulated NVML asks to know whether the host drives a GPU.
func (k *PCIKernel) Driver(bdf string) string { return k.driver(bdf) }
