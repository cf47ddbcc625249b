package main

import (
	"fmt"
	"io/fs"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// Modes of the plugin's directories on the host besides the CDI root
// (cdi.RootMode) and the MPS directories (mps.DirMode). docs/security.md
// lists them all. A missing directory is created with exactly its mode; an
// existing one loses any permission beyond it, with a log line, and is
// never widened (hostfs.EnsureDir).
const (
	// pluginDirMode is the mode of --plugin-dir, which holds the DRA
	// socket, when it is not also --plugin-data-dir (it is by default;
	// then the stricter checkpoint.DirMode applies).
	pluginDirMode fs.FileMode = 0o750
	// registrarDirMode is the most --registrar-dir may allow. The
	// directory is the kubelet's (which makes it 0750) and other plugins
	// register there too, so it is only stripped of write permission for
	// group and others, never changed further.
	registrarDirMode fs.FileMode = 0o755
)

// prepareDirs creates or tightens the plugin's directories and returns
// the checkpoint store in --plugin-data-dir.
func prepareDirs(logger klog.Logger, ro *runOptions) (*checkpoint.Store, error) {
	// The data directory first, so that when it is the plugin directory
	// it is created 0700 rather than created 0750 and then tightened.
	store, err := checkpoint.NewStore(ro.pluginDataDir, checkpoint.WithLogger(logger))
	if err != nil {
		return nil, fmt.Errorf("--plugin-data-dir: %w", err)
	}
	for _, d := range []struct {
		flag, path string
		mode       fs.FileMode
	}{
		{"--plugin-dir", ro.pluginDir, pluginDirMode},
		{"--registrar-dir", ro.registrarDir, registrarDirMode},
	} {
		if err := hostfs.EnsureDir(logger, d.path, d.mode); err != nil {
			return nil, fmt.Errorf("%s: %w", d.flag, err)
		}
	}
	return store, nil
}
