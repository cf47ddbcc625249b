package mps

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// TestDirModes starts the simulated daemon and shows its directories are
// DirMode, never writable by group or others, under umask 0 and when an
// older plugin left a 0777 directory. The umask is process-wide, so this
// test is not parallel.
func TestDirModes(t *testing.T) {
	roots, err := simhost.Create(t.TempDir(), []int{0}, "580.00")
	if err != nil {
		t.Fatal(err)
	}
	const uid = "2f0e0a4c-0000-4000-8000-000000000002"
	for _, tc := range []struct {
		name     string
		umask    int
		existing bool // a 0777 pipe directory left behind
	}{
		{name: "umask 0", umask: 0},
		{name: "umask 077", umask: 0o077},
		{name: "pre-existing 0777 pipe directory is tightened", umask: 0, existing: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := syscall.Umask(tc.umask)
			t.Cleanup(func() { syscall.Umask(old) })
			m := NewManager(filepath.Join(t.TempDir(), "mps"), roots.DriverRoot)
			if tc.existing {
				if err := os.MkdirAll(m.PipeDir(uid), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(m.PipeDir(uid), 0o777); err != nil {
					t.Fatal(err)
				}
			}
			logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
			if err := m.Start(klog.NewContext(context.Background(), logger), uid, []string{"GPU-a"}); err != nil {
				t.Fatal(err)
			}
			pid := m.pid(uid)
			t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
			for _, dir := range []string{m.root, m.Dir(uid), m.PipeDir(uid), m.LogDir(uid)} {
				fi, err := os.Stat(dir)
				if err != nil {
					t.Fatal(err)
				}
				if got := fi.Mode().Perm(); got != DirMode || got&0o022 != 0 {
					t.Errorf("%s: mode %s, want %s", dir, got, DirMode)
				}
			}
			logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
			if tightened := strings.Contains(logs, "Tightened"); tightened != tc.existing {
				t.Errorf("tightening logged %v, want %v:\n%s", tightened, tc.existing, logs)
			}
			if err := m.Stop(context.Background(), uid); err != nil {
				t.Fatal(err)
			}
		})
	}
}
