package mps

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

// TestDirModes starts the simulated daemon and shows its directories are
// DirMode, never writable by group or others, under umask 0 and when an
// older plugin left a 0777 directory. The umask is process-wide, so this
// test is not parallel.
func TestDirModes(t *testing.T) {
	roots, err := simhost.Create(t.TempDir(), []int{0}, "580.00", simhosttest.Tools(t))
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
			hostfstest.Umask(t, tc.umask)
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
			if err := m.Start(klog.NewContext(context.Background(), logger), uid, []string{"GPU-a"}, Limits{}); err != nil {
				t.Fatal(err)
			}
			recorded(t, m, uid)
			hostfstest.CheckModes(t, map[string]os.FileMode{m.root: DirMode, m.Dir(uid): DirMode, m.PipeDir(uid): DirMode, m.LogDir(uid): DirMode})
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
