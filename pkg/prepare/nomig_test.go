package prepare

import (
	"context"
	"errors"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

// TestPrepareOnGPUsWithoutMIG: on GPUs without MIG (L4, L40S), where NVML
// answers ERROR_NOT_SUPPORTED to every MIG call, a whole GPU and a share
// prepare and unprepare: there is no MIG mode to turn off.
func TestPrepareOnGPUsWithoutMIG(t *testing.T) {
	cases := []struct {
		model, what string
		claim       *resourceapi.ResourceClaim
	}{
		{"l40s", "whole GPU", allocated("gpu-0")},
		{"l4", "whole GPU", allocated("gpu-1")},
		{"l40s", "share", sharesAllocated(shareOf{"gpu-2-shared", "aaaaaaaa-0000-4000-8000-000000000001", "8Gi", "50"})},
	}
	for _, tc := range cases {
		t.Run(tc.model+" "+tc.what, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, tc.model)
			if _, err := f.p.Prepare(ctx, tc.claim); err != nil {
				t.Fatalf("prepare %s: %v", tc.what, err)
			}
			if err := f.p.Unprepare(ctx, ref(tc.claim)); err != nil {
				t.Fatalf("unprepare %s: %v", tc.what, err)
			}
		})
	}
}

// adminMIGMode sets the MIG mode of the fixture's GPU index as an
// administrator does: nvidia-smi, then a reset of the GPU, which Ampere
// needs for the change to take effect.
func (f *fixture) adminMIGMode(model string, index int, enabled bool) {
	f.t.Helper()
	admin, err := sim.Open(model, f.simDir)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := admin.SetMIGMode(index, enabled); err != nil {
		f.t.Fatal(err)
	}
	if err := admin.Reset(index); err != nil {
		f.t.Fatal(err)
	}
}

// TestAmpereMIGModeIsNeverToggled: an A100's MIG mode changes only at a
// GPU reset, so prepare never changes it. A whole GPU allocated from a
// model built before the administrator turned MIG on fails naming the GPU
// and what to do, and leaves no pending change behind; a MIG device on an
// A100 in MIG mode is created as on Hopper.
func TestAmpereMIGModeIsNeverToggled(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "mixed")
	a100 := f.inventory().GPUs[1]
	f.adminMIGMode("mixed", a100.Index, true)

	whole := allocated("gpu-1")
	_, err := f.p.Prepare(ctx, whole)
	if !errors.Is(err, gpu.ErrMIGModeNeedsReset) || !strings.Contains(err.Error(), a100.UUID) || !strings.Contains(err.Error(), "reset") {
		t.Fatalf("whole A100 in MIG mode: want ErrMIGModeNeedsReset naming the GPU, got %v", err)
	}
	admin, err := sim.Open("mixed", f.simDir)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := admin.State(); st.GPUs[a100.Index].MIGModePending {
		t.Fatal("prepare left a pending MIG mode change on the A100")
	}

	f.rebuildModel(f.saved())
	if _, ok := f.devices.Lookup("gpu-1"); ok {
		t.Error("an A100 in MIG mode is published whole")
	}
	mig := allocated("gpu-1-mig-1g5gb-0")
	if _, err := f.p.Prepare(ctx, mig); err != nil {
		t.Fatalf("MIG device on an A100 in MIG mode: %v", err)
	}
	if err := f.p.Unprepare(ctx, ref(mig)); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.devices.Lookup("gpu-2-mig-1g5gb-0"); ok {
		t.Error("an A100 out of MIG mode is published with MIG placements")
	}
}

// TestMIGModeChangeOnAGPUHeldOpen: a MIG device on a Hopper GPU that a
// monitoring agent holds open cannot turn MIG mode on. The prepare fails
// naming the GPU, the processes that hold it and the per-node offer that
// needs no mode change, leaves no pending mode and no MIG device, and the kubelet's retry
// succeeds once the agent is gone.
func TestMIGModeChangeOnAGPUHeldOpen(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	g := f.inventory().GPUs[0]
	admin, err := sim.Open("dgxh100", f.simDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.SetClient(g.Index, "dcgm-exporter", true); err != nil {
		t.Fatal(err)
	}
	// What the host's /proc would say (pkg/gpuholders reads it).
	f.p.opts.GPUHolders = func(minor int) ([]string, error) {
		if minor != g.Minor {
			return nil, nil
		}
		return []string{"dcgm-exporter (pid 4242)"}, nil
	}
	mig := allocated("gpu-0-mig-1g10gb-0")
	_, err = f.p.Prepare(ctx, mig)
	if !errors.Is(err, gpu.ErrGPUHeldOpen) || !strings.Contains(err.Error(), g.UUID) ||
		!strings.Contains(err.Error(), "held open by dcgm-exporter (pid 4242)") || !strings.Contains(err.Error(), "gpu.nvidia.com/device-kinds") {
		t.Fatalf("MIG device on a GPU held open: want ErrGPUHeldOpen naming the GPU, what holds it and the device-kinds label, got %v", err)
	}
	st, err := admin.State()
	if err != nil {
		t.Fatal(err)
	}
	if gs := st.GPUs[g.Index]; gs.MIGModePending || len(gs.GPUInstances) != 0 {
		t.Fatalf("after the failed prepare: MIG mode pending %t, %d GPU instances: want neither", gs.MIGModePending, len(gs.GPUInstances))
	}
	if err := admin.SetClient(g.Index, "dcgm-exporter", false); err != nil {
		t.Fatal(err)
	}
	if _, err := f.p.Prepare(ctx, mig); err != nil {
		t.Fatalf("retry once the GPU is idle: %v", err)
	}
	if err := f.p.Unprepare(ctx, ref(mig)); err != nil {
		t.Fatal(err)
	}
}
