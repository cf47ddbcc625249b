package hostfs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// deepChain makes a chain of depth directories under dir, each made
// relative to the one above, as a tenant's shell can (no path of it fits
// in PATH_MAX), with a file at the bottom.
func deepChain(t *testing.T, dir string, depth int) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range depth {
		if err := unix.Mkdirat(fd, "d", 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	f, err := unix.Openat(fd, "bottom", unix.O_CREAT|unix.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(f)
	unix.Close(fd)
}

// withOpenFileLimit lowers the process's open-file limit for the test, as
// the plugin's may be.
func withOpenFileLimit(t *testing.T, n uint64) {
	t.Helper()
	var was syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &was); err != nil {
		t.Fatal(err)
	}
	lower := was
	lower.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lower); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &was); err != nil {
			t.Error(err)
		}
	})
}

// TestRemoveTreeOfADeepChain: a chain of directories deeper than the
// open-file limit, which os.RemoveAll cannot remove, is removed.
func TestRemoveTreeOfADeepChain(t *testing.T) {
	for _, tc := range []struct {
		name   string
		remove func(string) error
		fails  bool
	}{
		{"os.RemoveAll, as before", os.RemoveAll, true},
		{"RemoveTree", RemoveTree, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pipe")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			deepChain(t, dir, 600)
			func() {
				withOpenFileLimit(t, 128)
				err := tc.remove(dir)
				if tc.fails != (err != nil) {
					t.Errorf("remove: %v, want failure %v", err, tc.fails)
				}
			}()
			_, err := os.Lstat(dir)
			if gone := errors.Is(err, fs.ErrNotExist); gone == tc.fails {
				t.Errorf("directory gone %v after remove (%v)", gone, err)
			}
			if tc.fails {
				if err := RemoveTree(dir); err != nil {
					t.Fatalf("clean up: %v", err)
				}
			}
		})
	}
}

// TestRemoveTreeFollowsNoSymlink: what a tenant links to is left alone,
// wide directories and special files go, and a missing path or a path that
// is a symlink itself are handled.
func TestRemoveTreeFollowsNoSymlink(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "host")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "file"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "pipe")
	if err := os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 600 {
		if err := os.WriteFile(filepath.Join(dir, "a", "f"+strconv.Itoa(i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, link := range []string{filepath.Join(dir, "link"), filepath.Join(dir, "a", "b", "link")} {
		if err := os.Symlink(outside, link); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mkfifo(filepath.Join(dir, "a", "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := EmptyTree(dir); err != nil {
		t.Fatal(err)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Errorf("left in the emptied directory: %v (%v)", entries, err)
	}
	if data, err := os.ReadFile(filepath.Join(outside, "file")); err != nil || string(data) != "keep" {
		t.Errorf("a linked file was touched: %q (%v)", data, err)
	}
	if err := RemoveTree(dir); err != nil {
		t.Fatal(err)
	}
	if err := RemoveTree(dir); err != nil {
		t.Errorf("remove a missing path: %v", err)
	}
	link := filepath.Join(base, "to-host")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	if err := RemoveTree(link); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(link); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the symlink is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "file")); err != nil {
		t.Errorf("the symlink's target was removed: %v", err)
	}
}
