package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"
)

// TestPrepareDirs runs under umask 0 (process-wide: not parallel) and
// checks the mode of each directory of the plugin, new or left behind.
func TestPrepareDirs(t *testing.T) {
	for _, tc := range []struct {
		name         string
		separateData bool        // --plugin-data-dir other than --plugin-dir
		existing     fs.FileMode // mode of every directory before; 0: none
		wantPlugin   fs.FileMode
		wantData     fs.FileMode
		wantReg      fs.FileMode
		logged       int // "Tightened" lines
	}{
		{name: "new, data in the plugin directory", wantPlugin: 0o700, wantData: 0o700, wantReg: 0o755},
		{name: "new, separate data directory", separateData: true, wantPlugin: 0o750, wantData: 0o700, wantReg: 0o755},
		{name: "pre-existing 0777 are tightened", existing: 0o777, wantPlugin: 0o700, wantData: 0o700, wantReg: 0o755, logged: 2},
		{name: "pre-existing 0777 separate are tightened", separateData: true, existing: 0o777, wantPlugin: 0o750, wantData: 0o700, wantReg: 0o755, logged: 3},
		{name: "the kubelet's 0750 registration directory is kept", existing: 0o750, wantPlugin: 0o700, wantData: 0o700, wantReg: 0o750, logged: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hostfstest.Umask(t, 0)
			base := t.TempDir()
			ro := &runOptions{
				pluginDir:    filepath.Join(base, "plugins", "gpu.nvidia.com"),
				registrarDir: filepath.Join(base, "plugins_registry"),
			}
			ro.pluginDataDir = ro.pluginDir
			if tc.separateData {
				ro.pluginDataDir = filepath.Join(base, "data", "gpu.nvidia.com")
			}
			if tc.existing != 0 {
				for _, d := range []string{ro.pluginDir, ro.pluginDataDir, ro.registrarDir} {
					if err := os.MkdirAll(d, 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.Chmod(d, tc.existing); err != nil {
						t.Fatal(err)
					}
				}
			}
			logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
			store, err := prepareDirs(logger, ro)
			if err != nil {
				t.Fatal(err)
			}
			if err := store.Save(checkpoint.New("boot")); err != nil {
				t.Fatal(err)
			}
			hostfstest.CheckModes(t, map[string]fs.FileMode{
				ro.pluginDir: tc.wantPlugin, ro.pluginDataDir: tc.wantData, ro.registrarDir: tc.wantReg,
				store.Path(): checkpoint.FileMode,
			})
			logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
			if got := strings.Count(logs, "Tightened"); got != tc.logged {
				t.Errorf("%d tightenings logged, want %d:\n%s", got, tc.logged, logs)
			}
		})
	}
}
