package cdi

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

// TestModes shows the CDI root is RootMode and a claim's spec SpecMode,
// writable by the owner only, whatever the umask and whatever an older
// install left behind. The umask is process-wide, so this test is not
// parallel.
func TestModes(t *testing.T) {
	hostfstest.RequireRoot(t, "the simulated /dev needs root")
	roots, err := simhost.Create(filepath.Join(t.TempDir(), "host"), []int{0}, "550.54.15", simhosttest.Tools(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		umask    int
		rootMode fs.FileMode // of a pre-existing CDI root; 0: none
		specMode fs.FileMode // of a pre-existing spec file; 0: none
		wantRoot fs.FileMode
		logged   bool
	}{
		{name: "new root, umask 0", umask: 0, wantRoot: RootMode},
		{name: "new root, umask 077", umask: 0o077, wantRoot: RootMode},
		{name: "pre-existing 0777 root is tightened", umask: 0, rootMode: 0o777, wantRoot: RootMode, logged: true},
		{name: "pre-existing 0775 root is tightened", umask: 0o022, rootMode: 0o775, wantRoot: RootMode, logged: true},
		{name: "pre-existing 0700 root is kept", umask: 0, rootMode: 0o700, wantRoot: 0o700},
		{name: "pre-existing 0666 spec is replaced", umask: 0, rootMode: 0o755, specMode: 0o666, wantRoot: RootMode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hostfstest.Umask(t, tc.umask)
			root := filepath.Join(t.TempDir(), "var", "run", "cdi")
			if tc.rootMode != 0 {
				if err := os.MkdirAll(root, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(root, tc.rootMode); err != nil {
					t.Fatal(err)
				}
			}
			logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
			w, err := New(Options{CDIRoot: root, DriverRoot: roots.DriverRoot, DevRoot: roots.DevRoot, ProcRoot: roots.ProcRoot, Logger: logger})
			if err != nil {
				t.Fatal(err)
			}
			if tc.specMode != 0 {
				if err := os.WriteFile(w.SpecPath(uid), []byte("{}"), tc.specMode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(w.SpecPath(uid), tc.specMode); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := w.WriteClaimSpec(context.Background(), uid, []Device{{Name: "gpu-0", Request: "r", UUID: "GPU-0"}}); err != nil {
				t.Fatal(err)
			}
			hostfstest.CheckModes(t, map[string]fs.FileMode{root: tc.wantRoot, w.SpecPath(uid): SpecMode})
			logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
			if tightened := strings.Contains(logs, "Tightened"); tightened != tc.logged {
				t.Errorf("tightening logged %v, want %v:\n%s", tightened, tc.logged, logs)
			}
		})
	}
}
