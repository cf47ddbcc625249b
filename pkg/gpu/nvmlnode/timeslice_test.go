package nvmlnode

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

func TestSetTimeSlice(t *testing.T) {
	ctx := context.Background()
	n := openSim(t, "dgxh100", "")
	inv, err := n.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := simhost.Create(t.TempDir(), []int{0, 1}, inv.DriverVersion, simhosttest.Tools(t))
	if err != nil {
		t.Fatal(err)
	}
	uuid := inv.GPUs[1].UUID
	n.SetDriverRoot(roots.DriverRoot)
	for _, tc := range []struct {
		interval, want, wantErr string
	}{
		{interval: "Long", want: "3"},
		{interval: "Short", want: "1"},
		{interval: "Default", want: "0"},
		{interval: "Forever", wantErr: `"Forever" is not one of`},
	} {
		err := n.SetTimeSlice(ctx, uuid, tc.interval)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error %v, want %q", tc.interval, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.interval, err)
		}
		got, err := os.ReadFile(simhost.TimeSlicePath(roots.DriverRoot, uuid))
		if err != nil || strings.TrimSpace(string(got)) != tc.want {
			t.Errorf("%s: recorded %q (%v), want %s", tc.interval, got, err, tc.want)
		}
	}
	n.SetDriverRoot(t.TempDir())
	if err := n.SetTimeSlice(ctx, uuid, "Long"); err == nil || !strings.Contains(err.Error(), "nvidia-smi not found under the driver root") {
		t.Errorf("without nvidia-smi: %v", err)
	}
}
