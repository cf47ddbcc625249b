package mps

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// mpsLog is what the simulated daemons logged under the manager's driver
// root: their starts, with the limits in their environment.
func mpsLog(t *testing.T, m *Manager) string {
	t.Helper()
	data, err := os.ReadFile(simhost.MPSLogPath(m.driverRoot))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return string(data)
}

// TestDaemonGetsItsLimitsFromTheSpec: the limits given to Start reach the
// control daemon's own environment, numbered by its GPUs' order, so that
// they are every client's defaults.
func TestDaemonGetsItsLimitsFromTheSpec(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := newTestManager(t)
	const key = "2f0e0a4c-0000-4000-8000-000000000031"
	limits := Limits{ActiveThreadPercentage: 25, PinnedMemoryMiB: map[string]int64{"GPU-b": 1024, "GPU-a": 2048}}
	if err := m.Start(ctx, key, []string{"GPU-a", "GPU-b"}, limits); err != nil {
		t.Fatal(err)
	}
	want := "devices=GPU-a,GPU-b pipe=" + m.PipeDir(key) + " active_thread_percentage=25 pinned_device_mem_limit=0=2048M,1=1024M\n"
	if log := mpsLog(t, m); !strings.Contains(log, want) {
		t.Errorf("no daemon started with %q:\n%s", want, log)
	}
	if err := m.Stop(ctx, key); err != nil {
		t.Fatal(err)
	}
}

// TestSupervisorTakesItsGPUsFromTheSpec: a supervisor told other GPUs than
// the plugin's spec gives its daemon (a daemon pod made with other
// arguments) starts nothing; one told none, or the same, runs the spec's.
// In a directory without a spec (a previous release made it) the GPUs it
// is told are run, without limits.
func TestSupervisorTakesItsGPUsFromTheSpec(t *testing.T) {
	m := newTestManager(t)
	for _, tc := range []struct {
		name    string
		spec    *spec
		told    []string
		wantErr string
		wantLog string
	}{
		{name: "other GPUs than the spec's", spec: &spec{GPUs: []string{"GPU-a"}, Limits: Limits{ActiveThreadPercentage: 10}}, told: []string{"GPU-b"},
			wantErr: "refusing GPUs [GPU-b]: the plugin gave this daemon [GPU-a]"},
		{name: "a GPU more than the spec's", spec: &spec{GPUs: []string{"GPU-a"}}, told: []string{"GPU-a", "GPU-b"}, wantErr: "refusing GPUs"},
		{name: "the spec's GPUs", spec: &spec{GPUs: []string{"GPU-a"}, Limits: Limits{ActiveThreadPercentage: 10}}, told: []string{"GPU-a"},
			wantLog: "devices=GPU-a pipe=%s active_thread_percentage=10\n"},
		{name: "none told", spec: &spec{GPUs: []string{"GPU-c"}, Limits: Limits{PinnedMemoryMiB: map[string]int64{"GPU-c": 5}}},
			wantLog: "devices=GPU-c pipe=%s pinned_device_mem_limit=0=5M\n"},
		{name: "no spec: a previous release's directory", told: []string{"GPU-d"}, wantLog: "devices=GPU-d pipe=%s\n"},
		{name: "no spec and no GPUs", wantErr: "no GPUs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			dir := filepath.Join(t.TempDir(), "2f0e0a4c-0000-4000-8000-000000000032")
			for _, d := range []string{dir, PipeDirIn(dir), LogDirIn(dir)} {
				if err := os.Mkdir(d, DirMode); err != nil {
					t.Fatal(err)
				}
			}
			if tc.spec != nil {
				if err := saveSpecIn(dir, tc.spec.GPUs, tc.spec.Limits, "", hostfs.WriteFileAtomic); err != nil {
					t.Fatal(err)
				}
			}
			before := mpsLog(t, m)
			s := &Supervisor{Dir: dir, DriverRoot: m.driverRoot, GPUs: tc.told, ProcRoot: "/", Timeout: time.Second}
			runCtx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- s.Run(runCtx) }()
			if tc.wantErr != "" {
				if err := <-done; err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("run: %v, want an error with %q", err, tc.wantErr)
				}
				cancel()
				if log := mpsLog(t, m); log != before {
					t.Errorf("a daemon was started:\n%s", strings.TrimPrefix(log, before))
				}
				return
			}
			want := strings.Replace(tc.wantLog, "%s", PipeDirIn(dir), 1)
			waitFor(t, "started", func() bool { return strings.Contains(mpsLog(t, m), want) })
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		})
	}
}

// TestSpecIsValidated: a spec the plugin would not write is refused when
// read, naming what is wrong, and one that cannot be written fails Start
// before anything is launched.
func TestSpecIsValidated(t *testing.T) {
	for _, tc := range []struct {
		name, content, want string
	}{
		{"percentage over 100", `{"version":1,"gpus":["GPU-a"],"limits":{"activeThreadPercentage":101}}`, "activeThreadPercentage 101"},
		{"negative percentage", `{"version":1,"gpus":["GPU-a"],"limits":{"activeThreadPercentage":-1}}`, "activeThreadPercentage -1"},
		{"memory of another GPU", `{"version":1,"gpus":["GPU-a"],"limits":{"pinnedMemoryMiB":{"GPU-b":10}}}`, "GPU-b is not one of the daemon's GPUs"},
		{"no memory", `{"version":1,"gpus":["GPU-a"],"limits":{"pinnedMemoryMiB":{"GPU-a":0}}}`, "pinnedMemoryMiB[GPU-a]"},
		{"no GPU", `{"version":1,"gpus":[],"limits":{}}`, "no GPU"},
		{"a newer version", `{"version":2,"gpus":["GPU-a"]}`, "version 2"},
		{"not JSON", `gpus: [GPU-a]`, "decode spec.json"},
		{"too large", `{"version":1,"gpus":["` + strings.Repeat("G", maxSpecSize) + `"]}`, "spec.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, specFile), []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := resolveSpec(dir, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
		})
	}

	t.Run("cannot be written", func(t *testing.T) {
		_, ctx := ktesting.NewTestContext(t)
		m := newTestManager(t)
		m.writeFile = func(string, []byte) error { return syscall.EROFS }
		const key = "2f0e0a4c-0000-4000-8000-000000000033"
		if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{}); !errors.Is(err, syscall.EROFS) {
			t.Fatalf("start: %v, want EROFS", err)
		}
		if log := mpsLog(t, m); log != "" || m.Running(key) {
			t.Errorf("launched although its spec was not written: running %v\n%s", m.Running(key), log)
		}
		if keys, err := m.launcher().Keys(ctx); err != nil || len(keys) != 0 {
			t.Errorf("supervisors launched: %v (%v)", keys, err)
		}
	})
}
