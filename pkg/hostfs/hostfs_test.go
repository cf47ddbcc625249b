package hostfs

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"
)

func modeOf(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

func TestEnsureDir(t *testing.T) {
	for _, tc := range []struct {
		name     string
		umask    int
		existing fs.FileMode // 0: missing
		perm     fs.FileMode
		want     fs.FileMode
		logged   string
	}{
		{name: "created 0700 under umask 0", umask: 0, perm: 0o700, want: 0o700},
		{name: "created 0750 under umask 0", umask: 0, perm: 0o750, want: 0o750},
		{name: "created 0755 under umask 0", umask: 0, perm: 0o755, want: 0o755},
		{name: "created 0755 under umask 077 is still 0755", umask: 0o077, perm: 0o755, want: 0o755},
		{name: "pre-existing 0777 is tightened", umask: 0, existing: 0o777, perm: 0o750, want: 0o750, logged: "Tightened"},
		{name: "pre-existing 0777 is tightened to 0700", umask: 0, existing: 0o777, perm: 0o700, want: 0o700, logged: "Tightened"},
		{name: "pre-existing 0775 loses group write", umask: 0o022, existing: 0o775, perm: 0o755, want: 0o755, logged: "Tightened"},
		{name: "pre-existing 0755 (a kubelet hostPath) becomes 0700", umask: 0o022, existing: 0o755, perm: 0o700, want: 0o700, logged: "Tightened"},
		{name: "pre-existing 0700 is not widened", umask: 0, existing: 0o700, perm: 0o755, want: 0o700},
		{name: "pre-existing 0750 is kept", umask: 0, existing: 0o750, perm: 0o750, want: 0o750},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hostfstest.Umask(t, tc.umask)
			dir := filepath.Join(t.TempDir(), "a", "b")
			if tc.existing != 0 {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(dir, tc.existing); err != nil {
					t.Fatal(err)
				}
			}
			logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
			if err := EnsureDir(logger, dir, tc.perm); err != nil {
				t.Fatal(err)
			}
			got := modeOf(t, dir)
			if !got.IsDir() || got.Perm() != tc.want {
				t.Errorf("mode %s, want %s", got, tc.want)
			}
			if got.Perm()&0o022 != 0 {
				t.Errorf("mode %s is writable by group or others", got)
			}
			if tc.existing == 0 {
				// Parents created on the way are no wider than perm.
				if parent := modeOf(t, filepath.Dir(dir)); parent.Perm()&^tc.perm != 0 {
					t.Errorf("parent mode %s, wider than %s", parent, tc.perm)
				}
			}
			logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
			if tc.logged == "" && logs != "" {
				t.Errorf("unexpected log:\n%s", logs)
			}
			if tc.logged != "" && !strings.Contains(logs, tc.logged) {
				t.Errorf("log %q, want a line with %q", logs, tc.logged)
			}
		})
	}
}

func TestEnsureDirRefuses(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := EnsureDir(klog.Logger{}, file, 0o700); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("a file: %v", err)
	}
	// A /tmp-like directory is not the plugin's to chmod.
	shared := filepath.Join(base, "tmp")
	if err := os.Mkdir(shared, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o777|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if err := EnsureDir(klog.Logger{}, shared, 0o700); err == nil || !strings.Contains(err.Error(), "shared world-writable") {
		t.Errorf("a sticky world-writable directory: %v", err)
	}
	if got := modeOf(t, shared); got.Perm() != 0o777 || got&fs.ModeSticky == 0 {
		t.Errorf("the shared directory was changed to %s", got)
	}
}

func TestEnsureDirWarnsOfAnotherOwner(t *testing.T) {
	hostfstest.RequireRoot(t, "chown needs root")
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	if err := EnsureDir(logger, dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String(); !strings.Contains(logs, "owned by another user") {
		t.Errorf("no warning in %q", logs)
	}
}
