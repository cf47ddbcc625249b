package prepare

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/vfio"
)

func (f *fixture) gpuHolders(minor int) ([]string, error) {
	f.holdersMu.Lock()
	defer f.holdersMu.Unlock()
	return f.holders[minor], nil
}

func (f *fixture) holdOpen(minor int, holders ...string) {
	f.holdersMu.Lock()
	defer f.holdersMu.Unlock()
	if f.holders == nil {
		f.holders = map[int][]string{}
	}
	f.holders[minor] = holders
}

// gpuOf returns the GPU of a minor.
func (f *fixture) gpuOf(minor int) gpu.GPU {
	f.t.Helper()
	for _, g := range f.inventory().GPUs {
		if g.Minor == minor {
			return g
		}
	}
	f.t.Fatalf("no GPU of minor %d", minor)
	return gpu.GPU{}
}

// drivers returns the drivers of a GPU's function and its audio function.
func (f *fixture) drivers(minor int) [2]string {
	f.t.Helper()
	bdf := f.gpuOf(minor).PCIBusID
	var out [2]string
	for i, fn := range []string{bdf, simhost.AudioFunction(bdf)} {
		d, err := f.vfio.Driver(fn)
		if err != nil {
			f.t.Fatal(err)
		}
		out[i] = d
	}
	return out
}

// checkHostDrivesAll fails unless every GPU and audio function is bound to
// its own driver.
func (f *fixture) checkHostDrivesAll(when string) {
	f.t.Helper()
	for _, g := range f.inventory().GPUs {
		if got := f.drivers(g.Minor); got != [2]string{names.KernelDriverNVIDIA, names.KernelDriverHDAudio} {
			f.t.Errorf("%s: GPU %d's functions are bound to %v, want nvidia and snd_hda_intel", when, g.Minor, got)
		}
	}
}

const vfioIOMMUFD = `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"VfioDeviceConfig","iommu":{"backendPolicy":"PreferIommuFD","enableAPIDevice":true}}`

func TestVFIOPrepareAndUnprepare(t *testing.T) {
	for _, tc := range []struct {
		name      string
		params    string
		wantNodes []string
	}{
		{name: "legacy by default", wantNodes: []string{"/dev/vfio/vfio", "/dev/vfio/4"}},
		{name: "iommufd", params: vfioIOMMUFD, wantNodes: []string{"/dev/vfio/devices/vfio", "/dev/iommu"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, "dgxh100")
			c := allocated(names.VFIODevice(4))
			if tc.params != "" {
				c = withConfig(names.VFIODevice(4), tc.params)
			}
			devs, err := f.p.Prepare(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.drivers(4); got != [2]string{names.KernelDriverVFIOPCI, names.KernelDriverVFIOPCI} {
				t.Errorf("prepared: GPU 4's functions are bound to %v, want vfio-pci", got)
			}
			if got := f.drivers(3); got != [2]string{names.KernelDriverNVIDIA, names.KernelDriverHDAudio} {
				t.Errorf("prepared: GPU 3's functions are bound to %v", got)
			}
			md := devs[0].Metadata.Attributes[names.AttrStandardPCIBusID]
			if md.StringValue == nil || *md.StringValue != f.gpuOf(4).PCIBusID {
				t.Errorf("metadata %s = %v, want %s", names.AttrStandardPCIBusID, md.StringValue, f.gpuOf(4).PCIBusID)
			}
			spec, err := os.ReadFile(f.cdi.SpecPath(string(c.UID)))
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range tc.wantNodes {
				if !strings.Contains(string(spec), `"path":"`+n) && !strings.Contains(string(spec), "path: "+n) {
					t.Errorf("CDI spec lacks %s:\n%s", n, spec)
				}
			}
			if strings.Contains(string(spec), "/dev/nvidia4") {
				t.Errorf("CDI spec of a VM's GPU gives the host driver's node:\n%s", spec)
			}
			if err := f.p.Unprepare(ctx, ref(c)); err != nil {
				t.Fatal(err)
			}
			f.checkHostDrivesAll("unprepared")
			if _, err := os.Stat(filepath.Join(f.vfio.DevRoot, "dev/vfio/4")); err == nil {
				t.Error("/dev/vfio/4 is left after the group went back to the host")
			}
			f.checkNothingLeft(ctx, "unprepared")
		})
	}
}

// TestVFIORefused: a GPU that cannot be passed through is refused with an
// error that says why, and is left to the host with nothing recorded.
func TestVFIORefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setUp   func(f *fixture)
		wantErr string
	}{
		{name: "held open", setUp: func(f *fixture) { f.holdOpen(4, "dcgm-exporter (pid 4242)") },
			wantErr: "held open by dcgm-exporter (pid 4242)"},
		{name: "SR-IOV virtual functions", setUp: func(f *fixture) {
			path := filepath.Join(f.vfio.SysRoot, "sys/bus/pci/devices", f.gpuOf(4).PCIBusID, "sriov_numvfs")
			if err := os.WriteFile(path, []byte("2\n"), 0o644); err != nil {
				f.t.Fatal(err)
			}
		}, wantErr: "has 2 SR-IOV virtual functions"},
		{name: "passthrough off", setUp: func(f *fixture) { f.p.opts.VFIO = nil }, wantErr: "--vfio-passthrough"},
		{name: "a GpuConfig for it", setUp: func(*fixture) {}, wantErr: "a GpuConfig does not apply to device gpu-4-vfio, a GPU for a VM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, "dgxh100")
			tc.setUp(f)
			c := allocated(names.VFIODevice(4))
			if strings.Contains(tc.name, "GpuConfig") {
				c = withConfig(names.VFIODevice(4), longTimeSlice, "req-0")
			}
			_, err := f.p.Prepare(ctx, c)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
			f.checkHostDrivesAll("refused")
			if n := len(f.p.Snapshot().Claims); n != 0 {
				t.Errorf("%d claims recorded after a refusal", n)
			}
		})
	}
}

// TestVFIOHolderLetsGo: a holder that closes the GPU within the wait
// does not fail the prepare.
func TestVFIOHolderLetsGo(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	f.p.opts.HolderWait = 5 * time.Second
	f.holdOpen(4, "nvidia-smi (pid 7)")
	time.AfterFunc(300*time.Millisecond, func() { f.holdOpen(4) })
	c := allocated(names.VFIODevice(4))
	if _, err := f.p.Prepare(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := f.p.Unprepare(ctx, ref(c)); err != nil {
		t.Fatal(err)
	}
	f.checkHostDrivesAll("unprepared")
}

// crashingBinds kills the plugin in the middle of its n-th bind, after
// the function was unbound and before it was bound again: the worst
// place, where the function has no driver.
type crashingBinds struct {
	vfio.Host
	at    int
	binds *int
}

type killedMidBind struct{}

func (c crashingBinds) Bind(ctx context.Context, bdf, driver string) error {
	*c.binds++
	if *c.binds == c.at {
		if err := c.Host.Bind(ctx, bdf, ""); err != nil {
			return err
		}
		panic(killedMidBind{})
	}
	return c.Host.Bind(ctx, bdf, driver)
}

// TestVFIOKilledMidBind kills the plugin in the middle of every bind of a
// VFIO claim's prepare and unprepare, restarts it, and has the kubelet
// retry: after the restart no function is left without a driver, every
// function is the host's or the prepared claim's, and once unprepared the
// host drives everything again.
func TestVFIOKilledMidBind(t *testing.T) {
	// A prepare binds the GPU and its audio function, an unprepare gives
	// both back.
	for at := 1; at <= 4; at++ {
		t.Run("bind "+strconv.Itoa(at), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			f := newFixture(t, "dgxh100")
			c := allocated(names.VFIODevice(4))
			binds := 0
			f.p.opts.VFIO = crashingBinds{Host: f.vfio, at: at, binds: &binds}
			killed := func(fn func()) (k bool) {
				defer func() {
					if r := recover(); r != nil {
						if r != (killedMidBind{}) {
							panic(r)
						}
						k = true
					}
				}()
				fn()
				return false
			}
			prepared := false
			if !killed(func() { _, _ = f.p.Prepare(ctx, c) }) {
				prepared = true
				if !killed(func() { _ = f.p.Unprepare(ctx, ref(c)) }) {
					t.Fatalf("not killed at bind %d", at)
				}
			}
			f.p.opts.VFIO = f.vfio
			f.restart(ctx)
			// Reconciliation rolled an unfinished claim back: the host
			// drives everything. A prepared one (killed in its
			// unprepare) keeps its GPU, bound to VFIO again.
			rec := f.saved().Claims[string(c.UID)]
			switch {
			case rec == nil:
				f.checkHostDrivesAll("after the restart")
			case rec.State == checkpoint.PrepareCompleted && prepared:
				if got := f.drivers(4); got != [2]string{names.KernelDriverVFIOPCI, names.KernelDriverVFIOPCI} {
					t.Errorf("after the restart the prepared claim's GPU functions are bound to %v", got)
				}
			default:
				t.Fatalf("after the restart the claim is %s", rec.State)
			}
			if _, err := f.p.Prepare(ctx, c); err != nil {
				t.Fatalf("the kubelet's retry of the prepare: %v", err)
			}
			if err := f.p.Unprepare(ctx, ref(c)); err != nil {
				t.Fatalf("unprepare: %v", err)
			}
			f.checkHostDrivesAll("at the end")
			f.checkNothingLeft(ctx, "at the end")
		})
	}
}

// TestVFIORestartWithTheGPUUnseen restarts the plugin while a GPU is on
// vfio-pci, which NVML does not see: a prepared claim keeps its GPU,
// bound to VFIO; a claim whose prepare was killed after the bind is
// rolled back, the GPU given back to nvidia.
func TestVFIORestartWithTheGPUUnseen(t *testing.T) {
	for _, prepared := range []bool{true, false} {
		t.Run(map[bool]string{true: "prepared", false: "killed after the bind"}[prepared], func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, "dgxh100")
			c := allocated(names.VFIODevice(4))
			if prepared {
				if _, err := f.p.Prepare(ctx, c); err != nil {
					t.Fatal(err)
				}
			} else {
				f.prepareKilledAfter(StepVFIOBound, c)
			}
			inv := f.inventory()
			inv.GPUs = slices.DeleteFunc(inv.GPUs, func(g gpu.GPU) bool { return g.Minor == 4 })
			cp, rep, err := f.reconcile(ctx, f.saved(), inv, nil)
			if err != nil || len(rep.Failed) > 0 || len(rep.Unreadable) > 0 || len(rep.Dropped) > 0 {
				t.Fatalf("reconcile: %v, report %+v", err, rep)
			}
			rec := cp.Claims[string(c.UID)]
			if prepared {
				if rec == nil || rec.State != checkpoint.PrepareCompleted {
					t.Fatalf("the prepared claim is %+v after the restart", rec)
				}
				if got := f.drivers(4); got != [2]string{names.KernelDriverVFIOPCI, names.KernelDriverVFIOPCI} {
					t.Errorf("the prepared claim's GPU is bound to %v after the restart", got)
				}
				return
			}
			if rec != nil {
				t.Fatalf("the unfinished claim is %s after the restart", rec.State)
			}
			f.checkHostDrivesAll("after the restart")
		})
	}
}

// TestVFIOGroupWithAnotherGPURefused: a GPU whose IOMMU group holds
// another GPU the host drives is not passed through, and neither is
// touched.
func TestVFIOGroupWithAnotherGPURefused(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	// GPU 5's function joins GPU 4's group, as behind a switch without ACS.
	sys := filepath.Join(f.vfio.SysRoot, "sys")
	gpu5 := f.gpuOf(5).PCIBusID
	target, err := os.Readlink(filepath.Join(sys, "bus/pci/devices", gpu5))
	if err != nil {
		t.Fatal(err)
	}
	group, err := f.vfio.Group(f.gpuOf(4).PCIBusID)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join("../../../..", strings.TrimPrefix(target, "../../../")), filepath.Join(sys, "kernel/iommu_groups", strconv.Itoa(group), "devices", gpu5)); err != nil {
		t.Fatal(err)
	}
	_, err = f.p.Prepare(ctx, allocated(names.VFIODevice(4)))
	if err == nil || !strings.Contains(err.Error(), "shares IOMMU group") || !strings.Contains(err.Error(), gpu5) {
		t.Fatalf("error %v, want one naming the other GPU %s", err, gpu5)
	}
	f.checkHostDrivesAll("refused")
}
