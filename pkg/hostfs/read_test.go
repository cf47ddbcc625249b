package hostfs

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestReadBounded: only a regular file within the limit is read; a symlink
// (unless followed), a FIFO (which would block a plain open), a directory,
// a device and an oversized file are refused at once, as unfit. procfs
// files, of size 0, read whole.
func TestReadBounded(t *testing.T) {
	const limit = 4 << 10
	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }
	if err := os.WriteFile(path("pid"), []byte("123\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path("big"), make([]byte, limit+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(path("pid"), path("link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", path("zero")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path("fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, want, err string
		follow                bool
	}{
		{name: "regular file", path: path("pid"), want: "123\n"},
		{name: "symlink to a regular file", path: path("link"), err: "symbolic link"},
		{name: "symlink to /dev/zero", path: path("zero"), err: "symbolic link"},
		{name: "symlink followed", path: path("link"), follow: true, want: "123\n"},
		{name: "symlink to /dev/zero followed", path: path("zero"), follow: true, err: "not a regular file"},
		{name: "FIFO without a writer", path: path("fifo"), err: "not a regular file"},
		{name: "directory", path: dir, err: "not a regular file"},
		{name: "device", path: "/dev/zero", err: "not a regular file"},
		{name: "over the limit", path: path("big"), err: "larger than"},
		{name: "missing", path: path("none"), err: "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadBounded(tc.path, limit, !tc.follow)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("read %q, error %v; want an error with %q", got, err, tc.err)
				}
				if unfit := tc.name != "missing"; unfit != errors.Is(err, ErrUnfit) {
					t.Errorf("error %v: unfit %v, want %v", err, !unfit, unfit)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Errorf("read %q (%v), want %q", got, err, tc.want)
			}
		})
	}
	if data, err := ReadBounded("/proc/self/stat", limit, true); err != nil || !strings.HasPrefix(string(data), strconv.Itoa(os.Getpid())+" (") {
		t.Errorf("/proc/self/stat: %q (%v)", data, err)
	}
}
