package hwcheck

import (
	"bytes"
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/installationtest"
)

// The check on a simulated driver installation, as an operator runs it on
// a GPU node: NVML loaded from the driver root's libnvidia-ml.so.1, not
// the in-process simulator. Nothing fails, every GPU is read, and the node
// is not changed.
func TestRunOnTheSimulatedInstallation(t *testing.T) {
	inst := installationtest.Start(t, "dgxh100")
	before, err := inst.Sim.State()
	if err != nil {
		t.Fatal(err)
	}
	report, err := Run(context.Background(), Config{
		DriverRoot: inst.DriverRoot, DevRoot: inst.DevRoot, ProcRoot: inst.ProcRoot, SharedGPUs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	if err := report.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if report.Failed() {
		t.Fatalf("the check failed on a healthy installation:\n%s", text.String())
	}
	for _, want := range []string{inst.Library, "GPU 7", "NVIDIA H100 80GB HBM3", "MIG profile 1g.10gb"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, text.String())
		}
	}
	after, err := inst.Sim.State()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Errorf("the check changed the node:\nbefore %+v\nafter  %+v", before, after)
	}
}
