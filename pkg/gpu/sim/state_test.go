package sim

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// TestOpenMigratesVersion1StateDir opens a directory that a simulator of
// StateVersion 1 left (one state.json for the node) and finds the same
// node: UUIDs, MIG mode, instances, faults and events; the legacy file is
// gone and a second open reads the migrated state.
func TestOpenMigratesVersion1StateDir(t *testing.T) {
	dir := t.TempDir()
	legacy := &State{
		Version: 1, Model: "dgxh100", Seed: "seed-1",
		Events:       []EventState{{Seq: 4, GPU: 3, Type: nvml.EventTypeXidCriticalError, Data: 79, GIID: -1, CIID: -1}},
		NextEventSeq: 5,
	}
	for i := 0; i < 8; i++ {
		legacy.GPUs = append(legacy.GPUs, GPUState{UUID: gpuUUID("seed-1", i), TemperatureC: 40 + i})
	}
	legacy.GPUs[2].MIGMode = nvml.DEVICE_MIG_ENABLE
	legacy.GPUs[2].GPUInstances = []GIState{{ID: 1, ProfileID: nvml.GPU_INSTANCE_PROFILE_1_SLICE, Start: 6, Size: 1,
		ComputeInstances: []CIState{{ID: 0, ProfileID: nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE, UUID: "MIG-0a"}}}}
	legacy.GPUs[5].Lost = true
	data, err := json.Marshal(legacy)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, legacyFile), data, 0o644); err != nil {
		t.Fatal(err)
	}

	want := *legacy
	want.Version = StateVersion
	for i := 0; i < 2; i++ {
		n, err := Open("dgxh100", dir)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		got, err := n.State()
		if err != nil {
			t.Fatal(err)
		}
		// Compare as JSON: nil and empty slices are the same state.
		if g, w := mustJSON(t, got), mustJSON(t, &want); g != w {
			t.Fatalf("open %d: state\n%s\nwant\n%s", i, g, w)
		}
		if _, err := os.Stat(filepath.Join(dir, legacyFile)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("open %d: %s is still there (%v)", i, legacyFile, err)
		}
	}
	n, err := Open("dgxh100", dir)
	if err != nil {
		t.Fatal(err)
	}
	uuid, ret := n.Devices[2].GetUUID()
	if ret != nvml.SUCCESS || uuid != legacy.GPUs[2].UUID {
		t.Errorf("GPU 2's UUID is %q (%s), want the legacy one %q", uuid, nvml.ErrorString(ret), legacy.GPUs[2].UUID)
	}
	if _, ret := n.Devices[5].GetTemperature(nvml.TEMPERATURE_GPU); ret != nvml.ERROR_GPU_IS_LOST {
		t.Errorf("GPU 5 was lost before the migration, now answers %s", nvml.ErrorString(ret))
	}
}

// TestOpenRefusesOtherModel keeps a state directory from being reused by a
// node of another model, before and after migration.
func TestOpenRefusesOtherModel(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		dir := t.TempDir()
		if legacy {
			data, _ := json.Marshal(&State{Version: 1, Model: "dgxa100", Seed: "s", GPUs: make([]GPUState, 8)})
			if err := os.WriteFile(filepath.Join(dir, legacyFile), data, 0o644); err != nil {
				t.Fatal(err)
			}
		} else if _, err := Open("dgxa100", dir); err != nil {
			t.Fatal(err)
		}
		if _, err := Open("dgxh100", dir); err == nil {
			t.Errorf("legacy=%t: a dgxh100 opened a dgxa100's state", legacy)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	var generic any
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &generic); err != nil {
		t.Fatal(err)
	}
	out, err := json.MarshalIndent(generic, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestChangesOfOneGPUDoNotWaitForAnother holds GPU 0 in a slow MIG mode
// change in one process's node and changes GPU 1 from another node on the
// same directory, as the plugin and gpu-sim do: the second change, and a
// read of GPU 0, complete while the first is still in progress.
func TestChangesOfOneGPUDoNotWaitForAnother(t *testing.T) {
	dir := t.TempDir()
	slow, err := Open("dgxh100", dir)
	if err != nil {
		t.Fatal(err)
	}
	slow.SetLatencies(Latencies{MIGModeChange: 2 * time.Second})
	fast, err := Open("dgxh100", dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := fast.SetMIGMode(1, true); err != nil {
		t.Fatal(err)
	}

	var finished atomic.Bool
	done := make(chan nvml.Return, 1)
	go func() {
		_, ret := slow.Devices[0].SetMigMode(nvml.DEVICE_MIG_ENABLE)
		finished.Store(true)
		done <- ret
	}()
	// Wait until the slow change holds GPU 0: its lock file is locked.
	waitLocked(t, filepath.Join(dir, gpuLock(0)), &finished)

	info, ret := fast.Devices[1].GetGpuInstanceProfileInfo(nvml.GPU_INSTANCE_PROFILE_1_SLICE)
	if ret != nvml.SUCCESS {
		t.Fatal(nvml.ErrorString(ret))
	}
	if _, ret := fast.Devices[1].CreateGpuInstance(&info); ret != nvml.SUCCESS {
		t.Fatalf("create a GPU instance on GPU 1: %s", nvml.ErrorString(ret))
	}
	mode, _, ret := fast.Devices[0].GetMigMode()
	if ret != nvml.SUCCESS || mode != nvml.DEVICE_MIG_DISABLE {
		t.Fatalf("GPU 0's MIG mode during the change: %d (%s), want the old one", mode, nvml.ErrorString(ret))
	}
	select {
	case <-done:
		t.Fatal("GPU 1's change waited for GPU 0's")
	default:
	}
	if ret := <-done; ret != nvml.SUCCESS {
		t.Fatalf("GPU 0's MIG mode change: %s", nvml.ErrorString(ret))
	}
	if mode, _, _ := fast.Devices[0].GetMigMode(); mode != nvml.DEVICE_MIG_ENABLE {
		t.Fatalf("GPU 0's MIG mode after the change: %d", mode)
	}
}

// TestChangesOfOneGPUQueue: a change of a GPU that another change holds
// waits for it and then sees its result, as on hardware. A GPU instance
// created while MIG mode is being turned on is created once it is on.
func TestChangesOfOneGPUQueue(t *testing.T) {
	dir := t.TempDir()
	slow, err := Open("dgxh100", dir)
	if err != nil {
		t.Fatal(err)
	}
	slow.SetLatencies(Latencies{MIGModeChange: time.Second})
	other, err := Open("dgxh100", dir)
	if err != nil {
		t.Fatal(err)
	}
	var finished atomic.Bool
	done := make(chan nvml.Return, 1)
	go func() {
		_, ret := slow.Devices[0].SetMigMode(nvml.DEVICE_MIG_ENABLE)
		finished.Store(true)
		done <- ret
	}()
	waitLocked(t, filepath.Join(dir, gpuLock(0)), &finished)
	info, ret := other.Devices[0].GetGpuInstanceProfileInfo(nvml.GPU_INSTANCE_PROFILE_1_SLICE)
	if ret != nvml.SUCCESS {
		t.Fatal(nvml.ErrorString(ret))
	}
	if _, ret := other.Devices[0].CreateGpuInstance(&info); ret != nvml.SUCCESS {
		t.Fatalf("create a GPU instance while MIG mode is being turned on: %s, want it created after", nvml.ErrorString(ret))
	}
	if ret := <-done; ret != nvml.SUCCESS {
		t.Fatalf("MIG mode change: %s", nvml.ErrorString(ret))
	}
}

// waitLocked returns once another holder has the flock on path, and fails
// the test if the change that should take it has finished first.
func waitLocked(t *testing.T, path string, finished *atomic.Bool) {
	t.Helper()
	for {
		locked, err := isLocked(path)
		if err != nil {
			t.Fatal(err)
		}
		if locked {
			return
		}
		if finished.Load() {
			t.Fatalf("the change finished without holding %s", path)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestParseLatencies(t *testing.T) {
	cases := []struct {
		in      string
		want    Latencies
		wantErr bool
	}{
		{"", Latencies{}, false},
		{"off", Latencies{}, false},
		{"hardware", HardwareLatencies, false},
		{"gi-create=5ms,nvml-call=1us", Latencies{GPUInstanceCreate: 5 * time.Millisecond, NVMLCall: time.Microsecond}, false},
		{"hardware,ci-create=0s", func() Latencies { l := HardwareLatencies; l.ComputeInstanceCreate = 0; return l }(), false},
		{"ci-create=5ms,hardware", Latencies{}, true},
		{"gi-create=-1s", Latencies{}, true},
		{"gi-create", Latencies{}, true},
		{"warp=1s", Latencies{}, true},
	}
	for _, tc := range cases {
		got, err := ParseLatencies(tc.in)
		if (err != nil) != tc.wantErr || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseLatencies(%q) = %+v, %v; want %+v, error %t", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

// isLocked reports whether someone holds the flock on path.
func isLocked(path string) (bool, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return false, err
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return false, syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}
