package prepare

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/api/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Passthrough is what passing a GPU through to a VM needs of the host's
// PCI sysfs (*vfio.Host).
type Passthrough interface {
	Driver(bdf string) (string, error)
	Group(bdf string) (int, error)
	GroupFunctions(group int) ([]string, error)
	NumVFs(bdf string) (int, error)
	Variant(bdf string) (string, error)
	Bind(ctx context.Context, bdf, driver string) error
	IOMMUFD() bool
	CharDevice(bdf string) (string, error)
}

// DefaultHolderWait is how long a VFIO prepare waits for the processes
// that hold its GPU open to close it.
const DefaultHolderWait = 10 * time.Second

// planVFIO inspects a GPU about to be passed through and records in d
// what its IOMMU group holds and where each function goes back to. It
// changes nothing, and refuses a GPU with SR-IOV virtual functions (they
// would lose their physical function) or one that is not the host's.
func (p *Preparer) planVFIO(d *checkpoint.Device, busID string, cfg *v1beta1.VfioDeviceConfig) error {
	pt := p.opts.VFIO
	if pt == nil {
		return errors.New("VFIO passthrough is not enabled on this node (the plugin's --vfio-passthrough)")
	}
	if n, err := pt.NumVFs(busID); err != nil {
		return err
	} else if n > 0 {
		return fmt.Errorf("GPU %s has %d SR-IOV virtual functions enabled; a GPU is passed through whole only without them (set its sriov_numvfs to 0)", busID, n)
	}
	group, err := pt.Group(busID)
	if err != nil {
		return err
	}
	fns, err := pt.GroupFunctions(group)
	if err != nil {
		return err
	}
	variant, err := pt.Variant(busID)
	if err != nil {
		return err
	}
	v := &checkpoint.VFIO{BusID: busID, Group: group, Driver: variant, Functions: []checkpoint.PCIFunction{{BusID: busID, Driver: names.KernelDriverNVIDIA}},
		APIDevice: cfg.APIDevice(), IOMMUFD: cfg.PreferIommuFD() && pt.IOMMUFD()}
	for _, fn := range fns {
		if fn == busID {
			continue
		}
		drv, err := pt.Driver(fn)
		if err != nil {
			return err
		}
		if drv == names.KernelDriverNVIDIA {
			// Another GPU behind the same bridge without ACS: a group
			// goes to a VM whole, and that GPU is the host's.
			return fmt.Errorf("GPU %s shares IOMMU group %d with %s, another GPU the host drives; a group is passed through whole, so neither can be (enable ACS on the PCIe switch, or give VMs GPUs in groups of their own)", busID, group, fn)
		}
		if names.IsVFIODriver(drv) {
			// Left by an administrator or by a pass-through that did
			// not finish: it goes back unbound.
			drv = ""
		}
		v.Functions = append(v.Functions, checkpoint.PCIFunction{BusID: fn, Driver: drv})
	}
	d.VFIO = v
	return nil
}

// bindVFIO passes d's GPU through: once nothing on the host holds it open,
// every function of its group goes to the VFIO driver, the GPU first, so
// that the group is viable (no function of it left to a host driver).
func (p *Preparer) bindVFIO(ctx context.Context, d *checkpoint.Device) error {
	v := d.VFIO
	if err := p.waitUnheld(ctx, d); err != nil {
		return err
	}
	for _, fn := range v.Functions {
		if err := p.opts.VFIO.Bind(ctx, fn.BusID, vfioTarget(v, fn.BusID)); err != nil {
			return err
		}
	}
	if v.IOMMUFD {
		cdev, err := p.opts.VFIO.CharDevice(v.BusID)
		if err != nil {
			return err
		}
		if cdev == "" {
			return fmt.Errorf("GPU %s bound to %s has no VFIO character device, though the host has /dev/iommu", v.BusID, v.Driver)
		}
		v.CharDevice = cdev
	}
	klog.FromContext(ctx).Info("GPU passed through", "gpu", d.GPUUUID, "busID", v.BusID, "driver", v.Driver, "iommuGroup", v.Group)
	p.step(StepVFIOBound)
	return nil
}

// vfioTarget is the VFIO driver of a function of v's group: the GPU's own
// (vfio-pci or its variant), vfio-pci for the others (an audio function),
// which a GPU's variant driver does not drive.
func vfioTarget(v *checkpoint.VFIO, bdf string) string {
	if bdf == v.BusID {
		return v.Driver
	}
	return names.KernelDriverVFIOPCI
}

// waitUnheld waits up to HolderWait until no process on the host holds
// d's GPU open: unbinding the GPU from nvidia under a process would
// take the GPU from it mid-use.
func (p *Preparer) waitUnheld(ctx context.Context, d *checkpoint.Device) error {
	if p.opts.GPUHolders == nil {
		return errors.New("cannot tell which processes hold the GPU open, so it is not passed through")
	}
	deadline := time.Now().Add(p.opts.HolderWait)
	for {
		holders, err := p.opts.GPUHolders(d.GPUMinor)
		if err != nil {
			return fmt.Errorf("find what holds GPU %s open: %w", d.GPUUUID, err)
		}
		if len(holders) == 0 {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("GPU %s is held open by %s (still after %s); it is passed through only when no process on the host uses it",
				d.GPUUUID, strings.Join(holders, ", "), p.opts.HolderWait)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("GPU %s is held open by %s: %w", d.GPUUUID, strings.Join(holders, ", "), context.Cause(ctx))
		case <-time.After(min(200*time.Millisecond, p.opts.HolderWait)):
		}
	}
}

// returnVFIO gives d's group back: the GPU to nvidia, every other
// function to the driver it had ("": unbound from VFIO's). Each
// bind is idempotent, and a function with no driver (the plugin died
// between an unbind and a bind) is bound, so running it again after a
// crash anywhere leaves every function bound.
func returnVFIO(ctx context.Context, pt Passthrough, d *checkpoint.Device) error {
	if pt == nil {
		return errors.New("a GPU is passed through, but VFIO passthrough is not enabled on this node any more (the plugin's --vfio-passthrough): turn it on to give the GPU back")
	}
	for _, fn := range d.VFIO.Functions {
		if err := bindBack(ctx, pt, fn.BusID, fn.Driver); err != nil {
			return fmt.Errorf("give PCI function %s back: %w", fn.BusID, err)
		}
	}
	klog.FromContext(ctx).Info("GPU given back to the host", "gpu", d.GPUUUID, "busID", d.VFIO.BusID)
	return nil
}

// bindBack binds a function to drv, or with "" unbinds it from a VFIO
// driver.
func bindBack(ctx context.Context, pt Passthrough, bdf, drv string) error {
	if drv != "" {
		return pt.Bind(ctx, bdf, drv)
	}
	cur, err := pt.Driver(bdf)
	if err != nil || !names.IsVFIODriver(cur) {
		return err
	}
	return pt.Bind(ctx, bdf, "")
}
