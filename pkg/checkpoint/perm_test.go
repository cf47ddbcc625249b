package checkpoint

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"

	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"
)

// TestStoreModes shows the checkpoint directory and file end up owner-only
// whatever the umask and whatever an older version left behind. The umask
// is process-wide, so this test is not parallel.
func TestStoreModes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		umask    int
		dirMode  fs.FileMode // of a pre-existing directory; 0: none
		fileMode fs.FileMode // of a pre-existing checkpoint file; 0: none
		logged   bool
	}{
		{name: "new directory, umask 0", umask: 0},
		{name: "new directory, umask 022", umask: 0o022},
		{name: "pre-existing 0777 directory is tightened", umask: 0, dirMode: 0o777, logged: true},
		{name: "pre-existing 0755 directory is tightened", umask: 0o022, dirMode: 0o755, logged: true},
		{name: "pre-existing 0666 checkpoint is replaced by a 0600 one", umask: 0, dirMode: 0o700, fileMode: 0o666},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hostfstest.Umask(t, tc.umask)
			dir := filepath.Join(t.TempDir(), "plugins", "gpu.nvidia.com")
			if tc.dirMode != 0 {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(dir, tc.dirMode); err != nil {
					t.Fatal(err)
				}
			}
			if tc.fileMode != 0 {
				if err := os.WriteFile(filepath.Join(dir, FileName), []byte("{}"), tc.fileMode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(filepath.Join(dir, FileName), tc.fileMode); err != nil {
					t.Fatal(err)
				}
			}
			logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
			s, err := NewStore(dir, WithLogger(logger))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Save(sample()); err != nil {
				t.Fatal(err)
			}
			hostfstest.CheckModes(t, map[string]fs.FileMode{dir: DirMode, s.Path(): FileMode})
			logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
			if tightened := strings.Contains(logs, "Tightened"); tightened != tc.logged {
				t.Errorf("tightening logged %v, want %v:\n%s", tightened, tc.logged, logs)
			}
		})
	}
}

func TestWriteFileAtomicIsOwnerOnlyUnderUmask0(t *testing.T) {
	hostfstest.Umask(t, 0)
	path := filepath.Join(t.TempDir(), "health.json")
	if err := hostfs.WriteFileAtomic(path, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	hostfstest.CheckModes(t, map[string]fs.FileMode{path: FileMode})
}
