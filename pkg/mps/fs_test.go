package mps

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2/ktesting"
)

// newBoundedManager is a test Manager whose daemons get a tmpfs each, of
// 1 MiB and 64 inodes. It skips the test where this process may not mount.
func newBoundedManager(t *testing.T) *Manager {
	t.Helper()
	m := newTestManager(t)
	m.FS = Filesystem{Root: filepath.Join(filepath.Dir(m.root), "mps-fs"), SizeBytes: 1 << 20, Inodes: 64}
	probe := t.TempDir()
	if err := unix.Mount("probe", probe, "tmpfs", 0, "size=4k"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	_ = unix.Unmount(probe, unix.MNT_DETACH)
	t.Cleanup(func() {
		entries, _ := os.ReadDir(m.FS.Root)
		for _, e := range entries {
			_ = unix.Unmount(filepath.Join(m.FS.Root, e.Name()), unix.MNT_DETACH)
		}
	})
	return m
}

func isTmpfs(t *testing.T, path string) bool {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Type == unix.TMPFS_MAGIC
}

// TestDaemonFilesystemIsBounded: a daemon's pipe/ and shm/ are a tmpfs of
// its own, so a client that writes there fills that (ENOSPC, or out of
// inodes), not the host's disk; Stop unmounts it whatever is in it, and a
// tmpfs whose daemon directory a previous release removed is swept.
func TestDaemonFilesystemIsBounded(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := newBoundedManager(t)
	const key = "2f0e0a4c-0000-4000-8000-000000000036"
	if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{}); err != nil {
		t.Fatal(err)
	}
	if !Bounded(m.Dir(key)) || !isTmpfs(t, m.PipeDir(key)) || !isTmpfs(t, ShmDirIn(m.Dir(key))) {
		t.Fatalf("pipe/ and shm/ are not on the daemon's tmpfs (bounded %v)", Bounded(m.Dir(key)))
	}
	if !m.ready(key) {
		t.Fatal("the daemon made no control pipe in its bounded pipe/")
	}
	var st unix.Stat_t
	if err := unix.Stat(m.PipeDir(key), &st); err != nil {
		t.Fatal(err)
	}
	dev := st.Dev

	// A tenant writes 4 MiB: it gets 1.
	err := os.WriteFile(filepath.Join(m.PipeDir(key), "big"), bytes.Repeat([]byte("x"), 4<<20), 0o644)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("writing 4 MiB to a 1 MiB pipe/: %v, want ENOSPC", err)
	}
	var inodesErr error
	for i := range 100 {
		if inodesErr = os.Mkdir(filepath.Join(ShmDirIn(m.Dir(key)), "d"+strconv.Itoa(i)), 0o755); inodesErr != nil {
			break
		}
	}
	if !errors.Is(inodesErr, syscall.ENOSPC) {
		t.Errorf("100 directories in a 64-inode shm/: %v, want ENOSPC", inodesErr)
	}

	// The daemon dies and its supervisor starts another: same tmpfs, which
	// the claim's containers hold.
	first := recorded(t, m, key)
	if err := m.procs().kill(first); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restarted", func() bool { d := m.recorded(key); return d != nil && *d != first && m.ready(key) })
	if err := unix.Stat(m.PipeDir(key), &st); err != nil || st.Dev != dev {
		t.Errorf("after the daemon's restart pipe/ is on device %d (%v), want the same tmpfs %d", st.Dev, err, dev)
	}

	if err := m.Stop(ctx, key); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{m.Dir(key), m.fsDir(key)} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after stop: %v", p, err)
		}
	}

	// A previous release removed the daemon's directory, which left the
	// tmpfs: the next listing removes it.
	if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.launcher().Remove(ctx, key); err != nil { // the daemon stopped ...
		t.Fatal(err)
	}
	waitFor(t, "stopped", func() bool { return !m.Running(key) })
	if err := os.RemoveAll(m.Dir(key)); err != nil { // ... and its directory removed, symlinks and all
		t.Fatalf("a previous release's removal of the directory: %v", err)
	}
	if mounted, err := isMountPoint(m.fsDir(key)); err != nil || !mounted {
		t.Fatalf("setup: the tmpfs is not left mounted (%v, %v)", mounted, err)
	}
	if _, err := m.Claims(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(m.fsDir(key)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the tmpfs of a daemon whose directory is gone was not swept: %v", err)
	}
}

// TestPreviousReleasesPipeIsLeftAPlainDirectory: a daemon directory with
// a plain pipe/ (a previous release's, whose containers bind it) keeps it
// when its daemon is started again.
func TestPreviousReleasesPipeIsLeftAPlainDirectory(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := newBoundedManager(t)
	const key = "2f0e0a4c-0000-4000-8000-000000000037"
	if err := os.MkdirAll(m.PipeDir(key), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{}); err != nil {
		t.Fatal(err)
	}
	if Bounded(m.Dir(key)) || isTmpfs(t, m.PipeDir(key)) {
		t.Error("a previous release's pipe/ was replaced by a tmpfs")
	}
	if err := m.Stop(context.Background(), key); err != nil {
		t.Fatal(err)
	}
}

// TestSupervisorChecksItSeesTheFilesystem: a supervisor whose spec names a
// tmpfs it does not see (the plugin mounted it in its own mount namespace
// only) starts no daemon and says why.
func TestSupervisorChecksItSeesTheFilesystem(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := newTestManager(t)
	dir := filepath.Join(t.TempDir(), "2f0e0a4c-0000-4000-8000-000000000038")
	for _, d := range []string{dir, PipeDirIn(dir), LogDirIn(dir)} {
		if err := os.Mkdir(d, DirMode); err != nil {
			t.Fatal(err)
		}
	}
	if err := saveSpecIn(dir, []string{"GPU-a"}, Limits{}, filepath.Join(t.TempDir(), "not-mounted"), m.writeFile); err != nil {
		t.Fatal(err)
	}
	s := &Supervisor{Dir: dir, DriverRoot: m.driverRoot, ProcRoot: "/"}
	if err := s.Run(ctx); err == nil || !strings.Contains(err.Error(), "mountPropagation Bidirectional") {
		t.Errorf("run: %v, want the tmpfs named missing", err)
	}
	if log := mpsLog(t, m); log != "" {
		t.Errorf("a daemon was started:\n%s", log)
	}
}
