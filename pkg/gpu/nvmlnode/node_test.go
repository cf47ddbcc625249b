package nvmlnode

import (
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"

	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

func openSim(t *testing.T, model, dir string) *Node {
	t.Helper()
	n, err := Open(Options{Simulate: model, SimStateDir: dir})
	if err != nil {
		t.Fatalf("open %s: %v", model, err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func profileByName(t *testing.T, g gpu.GPU, name string) gpu.MIGProfile {
	t.Helper()
	for _, p := range g.MIGProfiles {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("GPU %s has no profile %q", g.UUID, name)
	return gpu.MIGProfile{}
}

// TestInventoryMatchesHardware checks the simulated nodes report what the
// hardware reports: names, versions and MIG placements in memory slices.
func TestInventoryMatchesHardware(t *testing.T) {
	cases := []struct {
		model      string
		product    string
		arch       string
		cc         string
		gpus       int
		slices     int               // the GPU's memory slices
		placements map[string]string // profile -> "start:size ..."
	}{
		// A30 has four memory slices: a 1g.6gb is one of them, not two
		// eighths.
		{"a30", "NVIDIA A30", "Ampere", "8.0", 4, 4, map[string]string{
			"1g.6gb": "0:1 1:1 2:1 3:1", "1g.6gb+me": "0:1 1:1 2:1 3:1",
			"2g.12gb": "0:2 2:2", "2g.12gb+me": "0:2 2:2", "4g.24gb": "0:4",
		}},
		{"dgxh100", "NVIDIA H100 80GB HBM3", "Hopper", "9.0", 8, 8, map[string]string{
			"1g.10gb": "0:1 1:1 2:1 3:1 4:1 5:1 6:1", "1g.10gb+me": "0:1 1:1 2:1 3:1 4:1 5:1 6:1",
			"1g.20gb": "0:2 2:2 4:2 6:2", "2g.20gb": "0:2 2:2 4:2", "3g.40gb": "0:4 4:4",
			"4g.40gb": "0:4", "7g.80gb": "0:8",
		}},
		{"dgxa100", "NVIDIA A100-SXM4-40GB", "Ampere", "8.0", 8, 8, map[string]string{
			"1g.5gb": "0:1 1:1 2:1 3:1 4:1 5:1 6:1", "1g.5gb+me": "0:1 1:1 2:1 3:1 4:1 5:1 6:1",
			"1g.10gb": "0:2 2:2 4:2 6:2", "2g.10gb": "0:2 2:2 4:2", "3g.20gb": "0:4 4:4",
			"4g.20gb": "0:4", "7g.40gb": "0:8",
		}},
		{"dgxh200", "NVIDIA H200", "Hopper", "9.0", 8, 8, map[string]string{
			"1g.18gb": "0:1 1:1 2:1 3:1 4:1 5:1 6:1", "3g.71gb": "0:4 4:4", "7g.141gb": "0:8",
		}},
		{"dgxb200", "NVIDIA B200", "Blackwell", "10.0", 8, 8, map[string]string{
			"1g.23gb": "0:1 1:1 2:1 3:1 4:1 5:1 6:1", "7g.180gb": "0:8",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.model, func(t *testing.T) {
			inv, err := openSim(t, tc.model, "").Inventory(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(inv.GPUs) != tc.gpus {
				t.Fatalf("got %d GPUs, want %d", len(inv.GPUs), tc.gpus)
			}
			if inv.DriverVersion == "" || !strings.Contains(inv.CUDADriverVersion, ".") {
				t.Errorf("versions: driver %q CUDA %q", inv.DriverVersion, inv.CUDADriverVersion)
			}
			seen := map[string]bool{}
			for i, g := range inv.GPUs {
				if g.Name != tc.product || g.Architecture != tc.arch || g.CUDAComputeCapability != tc.cc {
					t.Errorf("GPU %d: %q %q %q", i, g.Name, g.Architecture, g.CUDAComputeCapability)
				}
				if !strings.HasPrefix(g.UUID, "GPU-") || seen[g.UUID] {
					t.Errorf("GPU %d: bad or duplicate UUID %q", i, g.UUID)
				}
				seen[g.UUID] = true
				if len(g.PCIBusID) != len("0000:18:00.0") {
					t.Errorf("GPU %d: PCI bus ID %q", i, g.PCIBusID)
				}
				if !g.MIGCapable || g.MIGEnabled {
					t.Errorf("GPU %d: MIG capable %t enabled %t, want capable and disabled", i, g.MIGCapable, g.MIGEnabled)
				}
				if g.MemorySlices != tc.slices {
					t.Errorf("GPU %d: %d memory slices, want %d", i, g.MemorySlices, tc.slices)
				}
			}
			for name, want := range tc.placements {
				p := profileByName(t, inv.GPUs[0], name)
				var got []string
				for _, pl := range p.Placements {
					got = append(got, pl.String())
					if pl.Size != p.MemorySlices {
						t.Errorf("%s: placement %s size differs from memory slices %d", name, pl, p.MemorySlices)
					}
				}
				if strings.Join(got, " ") != want {
					t.Errorf("%s placements = %q, want %q", name, strings.Join(got, " "), want)
				}
			}
		})
	}
}

func TestMixedNode(t *testing.T) {
	inv, err := openSim(t, "mixed", "").Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, g := range inv.GPUs {
		names = append(names, g.Architecture)
	}
	if got := strings.Join(names, ","); got != "Ampere,Ampere,Ampere,Ampere,Hopper,Hopper,Hopper,Hopper" {
		t.Errorf("architectures = %s", got)
	}
}

func TestUnknownModel(t *testing.T) {
	_, err := Open(Options{Simulate: "dgx-nope"})
	if err == nil || !strings.Contains(err.Error(), "dgxh100") {
		t.Fatalf("want an error listing the known models, got %v", err)
	}
}

// TestMIGLifecycle creates and destroys MIG devices and checks that later
// queries see exactly what hardware would.
func TestMIGLifecycle(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	n := openSim(t, "dgxh100", dir)
	inv, err := n.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g := inv.GPUs[0]
	p3g := profileByName(t, g, "3g.40gb")
	p1g := profileByName(t, g, "1g.10gb")
	pme := profileByName(t, g, "1g.10gb+me")

	if _, err := n.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: p3g.ID, Placement: gpu.Placement{Start: 0, Size: 4}}); !errors.Is(err, gpu.ErrMIGDisabled) {
		t.Fatalf("create with MIG disabled: want ErrMIGDisabled, got %v", err)
	}
	if err := n.SetMIGMode(ctx, g.UUID, true); err != nil {
		t.Fatal(err)
	}
	a, err := n.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: p3g.ID, Placement: gpu.Placement{Start: 4, Size: 4}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(a.UUID, "MIG-") || a.Profile != "3g.40gb" || a.Placement != (gpu.Placement{Start: 4, Size: 4}) {
		t.Fatalf("created %+v", a)
	}

	steps := []struct {
		name    string
		profile gpu.MIGProfile
		at      gpu.Placement
		wantErr error
	}{
		{"1g inside the 3g is refused", p1g, gpu.Placement{Start: 5, Size: 1}, gpu.ErrPlacementOccupied},
		{"1g beside it fits", p1g, gpu.Placement{Start: 3, Size: 1}, nil},
		{"the same slot twice is refused", p1g, gpu.Placement{Start: 3, Size: 1}, gpu.ErrPlacementOccupied},
		{"one +me fits", pme, gpu.Placement{Start: 0, Size: 1}, nil},
		{"a second +me is refused", pme, gpu.Placement{Start: 1, Size: 1}, gpu.ErrPlacementOccupied},
		{"an unknown placement is refused", p3g, gpu.Placement{Start: 2, Size: 4}, ReturnError{}},
	}
	for _, s := range steps {
		_, err := n.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: s.profile.ID, Placement: s.at})
		switch {
		case s.wantErr == nil && err != nil:
			t.Errorf("%s: %v", s.name, err)
		case s.wantErr != nil && err == nil:
			t.Errorf("%s: succeeded", s.name)
		case errors.Is(s.wantErr, gpu.ErrPlacementOccupied) && !errors.Is(err, gpu.ErrPlacementOccupied):
			t.Errorf("%s: want ErrPlacementOccupied, got %v", s.name, err)
		}
	}

	// The state outlives the process: a second node on the same directory
	// sees the instances, and can destroy one.
	again := openSim(t, "dgxh100", dir)
	inv2, err := again.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if inv2.GPUs[0].UUID != g.UUID {
		t.Fatalf("GPU UUID changed across opens: %s -> %s", g.UUID, inv2.GPUs[0].UUID)
	}
	live := inv2.GPUs[0].MIGInstances
	if got := describe(live); got != "1g.10gb+me@0:1 1g.10gb@3:1 3g.40gb@4:4" {
		t.Fatalf("live instances = %s", got)
	}
	for _, other := range inv2.GPUs[1:] {
		if len(other.MIGInstances) != 0 {
			t.Fatalf("GPU %s has instances it should not: %s", other.UUID, describe(other.MIGInstances))
		}
	}
	if err := again.DestroyMIG(ctx, gpu.MIGRef{ParentUUID: a.ParentUUID, GIID: a.GIID, CIID: a.CIID}); err != nil {
		t.Fatal(err)
	}
	if err := again.DestroyMIG(ctx, gpu.MIGRef{ParentUUID: a.ParentUUID, GIID: a.GIID, CIID: a.CIID}); err != nil {
		t.Fatalf("destroying twice must succeed: %v", err)
	}
	// The freed slots take a new instance, with a new UUID.
	b, err := n.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: p1g.ID, Placement: gpu.Placement{Start: 5, Size: 1}})
	if err != nil {
		t.Fatalf("create in freed slot: %v", err)
	}
	if b.UUID == a.UUID {
		t.Fatal("new instance reused a UUID")
	}
	if err := n.SetMIGMode(ctx, g.UUID, false); err == nil {
		t.Fatal("disabling MIG with live instances must fail")
	}
}

func describe(insts []gpu.MIGInstance) string {
	var parts []string
	for _, i := range insts {
		parts = append(parts, fmt.Sprintf("%s@%s", i.Profile, i.Placement))
	}
	return strings.Join(parts, " ")
}

func TestWatchEventsDeliversInjectedFaults(t *testing.T) {
	dir := t.TempDir()
	n := openSim(t, "dgxa100", dir)
	inv, err := n.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	events := make(chan gpu.Event, 4)
	done := make(chan error, 1)
	go func() { done <- n.WatchEvents(ctx, func(e gpu.Event) { events <- e }) }()

	injector, err := sim.Open("dgxa100", dir)
	if err != nil {
		t.Fatal(err)
	}
	// Events injected before the watcher registers are not delivered, as
	// with NVML: inject the XID until one is, then the ECC error once.
	xid := gpu.Event{Kind: gpu.EventXID, GPUUUID: inv.GPUs[2].UUID, XID: 79, GIID: -1, CIID: -1}
	ecc := gpu.Event{Kind: gpu.EventDoubleBitECC, GPUUUID: inv.GPUs[5].UUID, GIID: -1, CIID: -1}
	for registered := false; !registered; {
		if err := injector.InjectXID(2, 79, -1, -1); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-events:
			if got != xid {
				t.Fatalf("event = %+v, want %+v", got, xid)
			}
			registered = true
		case <-ctx.Done():
			t.Fatalf("no event %+v", xid)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := injector.InjectDoubleBitECC(5); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case got := <-events:
			if got == xid { // a repeat of an XID injected before
				continue
			}
			if got != ecc {
				t.Errorf("event = %+v, want %+v", got, ecc)
			}
		case <-ctx.Done():
			t.Fatalf("no event %+v", ecc)
		}
		break
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestWatchEventsWithALostGPU: a GPU fallen off the bus when the watch
// starts takes no registration; the other GPUs' events are still
// delivered, and the lost GPU's once it is back.
func TestWatchEventsWithALostGPU(t *testing.T) {
	old := lostRegisterInterval
	lostRegisterInterval = 0
	t.Cleanup(func() { lostRegisterInterval = old })
	for _, tc := range []struct {
		name       string
		lost, xids []int // lost at the start; where XIDs are injected
	}{
		{name: "another GPU's events", lost: []int{3}, xids: []int{2}},
		{name: "several GPUs lost", lost: []int{0, 3, 7}, xids: []int{5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			n := openSim(t, "dgxa100", dir)
			inv, err := n.Inventory(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			injector, err := sim.Open("dgxa100", dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range tc.lost {
				if err := injector.SetLost(i, true); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			events := make(chan gpu.Event, 16)
			done := make(chan error, 1)
			go func() { done <- n.WatchEvents(ctx, func(e gpu.Event) { events <- e }) }()
			// Events injected before the registration are not delivered,
			// as with NVML: inject until one is.
			await := func(index int) {
				t.Helper()
				want := gpu.Event{Kind: gpu.EventXID, GPUUUID: inv.GPUs[index].UUID, XID: 79, GIID: -1, CIID: -1}
				for {
					if err := injector.InjectXID(index, 79, -1, -1); err != nil {
						t.Fatal(err)
					}
					select {
					case got := <-events:
						// A repeat of an XID injected before is no news.
						if got == want {
							return
						}
					case err := <-done:
						t.Fatalf("the watch ended: %v", err)
					case <-ctx.Done():
						t.Fatalf("no event of GPU %d", index)
					case <-time.After(100 * time.Millisecond):
					}
				}
			}
			for _, i := range tc.xids {
				await(i)
			}
			for _, i := range tc.lost {
				if err := injector.SetLost(i, false); err != nil {
					t.Fatal(err)
				}
				await(i)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSetMIGModeReadsResultsInGoNVMLOrder: go-nvml's SetMigMode returns
// (activationStatus, ret). A call that fails leaves the activation status
// SUCCESS; the failure is in ret and must be what SetMIGMode reports.
func TestSetMIGModeReadsResultsInGoNVMLOrder(t *testing.T) {
	ctx := context.Background()
	n := openSim(t, "dgxh100", t.TempDir())
	inv, err := n.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g := inv.GPUs[0]
	if err := n.SetMIGMode(ctx, g.UUID, true); err != nil {
		t.Fatal(err)
	}
	p := profileByName(t, g, "1g.10gb")
	if _, err := n.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: p.ID, Placement: gpu.Placement{Start: 0, Size: 1}}); err != nil {
		t.Fatal(err)
	}
	err = n.SetMIGMode(ctx, g.UUID, false)
	var re ReturnError
	if !errors.As(err, &re) || re.Code != nvml.ERROR_IN_USE {
		t.Fatalf("disabling MIG with a live instance: want NVML's ERROR_IN_USE, got %v", err)
	}
}

// simWithAdmin opens a simulated DGX H100 through NVML and, on the same
// state, the simulator's own handle (an administrator's or another
// process's view), and returns its second GPU.
func simWithAdmin(t *testing.T) (*Node, *sim.Node, gpu.GPU) {
	t.Helper()
	dir := t.TempDir()
	n := openSim(t, "dgxh100", dir)
	admin, err := sim.Open("dgxh100", dir)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := n.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n, admin, inv.GPUs[1]
}

// TestSetMIGModeOnAGPUHeldOpen: while another process holds a Hopper GPU
// open (a monitoring agent), NVML accepts a MIG mode change but does not
// activate it and leaves it pending, to apply at the next reset or
// reboot. SetMIGMode reports ErrGPUHeldOpen naming the GPU and cancels the
// pending change; once the GPU is idle the same call succeeds.
func TestSetMIGModeOnAGPUHeldOpen(t *testing.T) {
	for _, enable := range []bool{true, false} {
		t.Run(fmt.Sprintf("enable=%t", enable), func(t *testing.T) {
			ctx := context.Background()
			n, admin, g := simWithAdmin(t)
			if err := n.SetMIGMode(ctx, g.UUID, !enable); err != nil {
				t.Fatal(err)
			}
			if err := admin.SetClient(g.Index, "dcgm-exporter", true); err != nil {
				t.Fatal(err)
			}
			err := n.SetMIGMode(ctx, g.UUID, enable)
			if !errors.Is(err, gpu.ErrGPUHeldOpen) || !strings.Contains(err.Error(), g.UUID) || !strings.Contains(err.Error(), "nothing is pending") {
				t.Fatalf("MIG mode change on a held GPU: want ErrGPUHeldOpen naming %s and nothing pending, got %v", g.UUID, err)
			}
			st, err := admin.State()
			if err != nil {
				t.Fatal(err)
			}
			wantMode := map[bool]int{true: nvml.DEVICE_MIG_ENABLE, false: nvml.DEVICE_MIG_DISABLE}[!enable]
			if gs := st.GPUs[g.Index]; gs.MIGMode != wantMode || gs.MIGModePending {
				t.Fatalf("after the refused change: MIG mode %d pending %t, want %d and nothing pending", gs.MIGMode, gs.MIGModePending, wantMode)
			}
			if err := admin.SetClient(g.Index, "dcgm-exporter", false); err != nil {
				t.Fatal(err)
			}
			if err := n.SetMIGMode(ctx, g.UUID, enable); err != nil {
				t.Fatalf("once the GPU is idle: %v", err)
			}
		})
	}
}

// TestSetMIGModeCancelsAStalePendingChange: a Hopper GPU out of MIG mode
// with "on" pending (an nvidia-smi -mig 1 while an agent held it, or a
// cancel of ours that failed) is asked for MIG mode off. The mode is
// already off, but the pending change would apply at the GPU's next reset
// under the whole-GPU claim being prepared: SetMIGMode cancels it.
func TestSetMIGModeCancelsAStalePendingChange(t *testing.T) {
	ctx := context.Background()
	n, admin, g := simWithAdmin(t)
	if err := n.SetMIGMode(ctx, g.UUID, false); err != nil {
		t.Fatal(err)
	}
	if err := admin.SetClient(g.Index, "dcgm-exporter", true); err != nil {
		t.Fatal(err)
	}
	_ = admin.SetMIGMode(g.Index, true) // left pending: the GPU is held open
	st, err := admin.State()
	if err != nil {
		t.Fatal(err)
	}
	if !st.GPUs[g.Index].MIGModePending {
		t.Fatalf("setup: want MIG mode on pending")
	}
	if err := n.SetMIGMode(ctx, g.UUID, false); err != nil {
		t.Fatalf("MIG mode off on a GPU out of MIG mode: %v", err)
	}
	st, err = admin.State()
	if err != nil {
		t.Fatal(err)
	}
	if gs := st.GPUs[g.Index]; gs.MIGModePending {
		t.Fatalf("after SetMIGMode(off): MIG mode %d with a change still pending, to apply at the next reset", gs.MIGMode)
	}
}

// TestGPUsWithoutMIG: on a GPU without MIG NVML answers its MIG calls
// ERROR_NOT_SUPPORTED. The inventory reads it as not MIG-capable, turning
// MIG mode off there is a no-op and turning it on a clear error.
func TestGPUsWithoutMIG(t *testing.T) {
	cases := []struct {
		model, product string
		memoryMiB      uint64
	}{
		{"l40s", "NVIDIA L40S", 46068},
		{"l4", "NVIDIA L4", 23034},
	}
	for _, tc := range cases {
		t.Run(tc.model, func(t *testing.T) {
			ctx := context.Background()
			n := openSim(t, tc.model, "")
			inv, err := n.Inventory(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(inv.GPUs) == 0 {
				t.Fatal("no GPUs")
			}
			for _, g := range inv.GPUs {
				if g.Name != tc.product || g.Architecture != "Ada Lovelace" || g.CUDAComputeCapability != "8.9" || g.MemoryBytes != tc.memoryMiB<<20 {
					t.Errorf("GPU %d: %q %q %q %d bytes", g.Index, g.Name, g.Architecture, g.CUDAComputeCapability, g.MemoryBytes)
				}
				if g.MIGCapable || g.MIGEnabled || len(g.MIGProfiles) != 0 || len(g.MIGInstances) != 0 {
					t.Errorf("GPU %d: MIG capable %t enabled %t, %d profiles: want none", g.Index, g.MIGCapable, g.MIGEnabled, len(g.MIGProfiles))
				}
			}
			g := inv.GPUs[0]
			if err := n.SetMIGMode(ctx, g.UUID, false); err != nil {
				t.Errorf("turning MIG off on a GPU without MIG must be a no-op: %v", err)
			}
			err = n.SetMIGMode(ctx, g.UUID, true)
			if !errors.Is(err, gpu.ErrMIGNotSupported) || !strings.Contains(err.Error(), g.UUID) {
				t.Errorf("turning MIG on on a GPU without MIG: want ErrMIGNotSupported naming the GPU, got %v", err)
			}
			if _, err := n.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: 0, Placement: gpu.Placement{Start: 0, Size: 1}}); err == nil {
				t.Error("created a MIG device on a GPU without MIG")
			}
		})
	}
}

// TestAmpereMIGModeIsLeftToTheAdministrator: an A100's MIG mode changes
// only at a GPU reset. The driver never asks for a change there (NVML
// would leave it pending, for the next reset to apply whatever the GPU
// then holds): SetMIGMode fails naming the GPU and what the administrator
// must do, and the inventory says so. A change the administrator made and
// a reset applied is what the inventory then reads.
func TestAmpereMIGModeIsLeftToTheAdministrator(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	n := openSim(t, "mixed", dir)
	inv, err := n.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a100, h100 := inv.GPUs[0], inv.GPUs[4]
	if !a100.MIGModeNeedsReset || h100.MIGModeNeedsReset {
		t.Fatalf("MIGModeNeedsReset: A100 %t, H100 %t; want true, false", a100.MIGModeNeedsReset, h100.MIGModeNeedsReset)
	}
	if err := n.SetMIGMode(ctx, a100.UUID, false); err != nil {
		t.Errorf("A100 already out of MIG mode: %v", err)
	}
	err = n.SetMIGMode(ctx, a100.UUID, true)
	if !errors.Is(err, gpu.ErrMIGModeNeedsReset) || !strings.Contains(err.Error(), a100.UUID) || !strings.Contains(err.Error(), "administrator") {
		t.Fatalf("enabling MIG on an A100: want ErrMIGModeNeedsReset naming the GPU and the administrator, got %v", err)
	}
	admin, err := sim.Open("mixed", dir)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := admin.State(); st.GPUs[a100.Index].MIGModePending {
		t.Fatal("the driver left a pending MIG mode change on the A100")
	}
	if err := n.SetMIGMode(ctx, h100.UUID, true); err != nil {
		t.Fatalf("Hopper changes MIG mode at once: %v", err)
	}

	// The administrator's change waits for a reset.
	if err := admin.SetMIGMode(a100.Index, true); err != nil {
		t.Fatal(err)
	}
	if inv, _ = n.Inventory(ctx); inv.GPUs[0].MIGEnabled {
		t.Fatal("A100 in MIG mode before its reset")
	}
	if err := admin.Reset(a100.Index); err != nil {
		t.Fatal(err)
	}
	if inv, _ = n.Inventory(ctx); !inv.GPUs[0].MIGEnabled {
		t.Fatal("A100 not in MIG mode after its reset")
	}
	err = n.SetMIGMode(ctx, a100.UUID, false)
	if !errors.Is(err, gpu.ErrMIGModeNeedsReset) || !strings.Contains(err.Error(), "-mig 0") {
		t.Fatalf("disabling MIG on an A100: want ErrMIGModeNeedsReset telling to disable it, got %v", err)
	}
	p := profileByName(t, inv.GPUs[0], "1g.5gb")
	if _, err := n.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: a100.UUID, ProfileID: p.ID, Placement: gpu.Placement{Start: 0, Size: 1}}); err != nil {
		t.Fatalf("A100 in MIG mode takes MIG devices: %v", err)
	}
}
