package mps

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// What a daemon's clients write to: its pipe directory (the control pipe,
// the servers' sockets) and its shared memory, which the MPS server and its
// clients must see as one /dev/shm. Both are read-write in the claim's
// containers, so whatever a tenant writes there is bounded by a tmpfs of
// the daemon's own, Filesystem, mounted at <FSRoot>/<key>: with pipe/ and
// shm/ in it, and <dir>/pipe and <dir>/shm symlinks to them. A tenant that
// fills it fills its own daemon's, and the removal of a tmpfs never
// depends on what is in it.
//
// The tmpfs is not in the daemon's directory: a previous release removes
// that directory with os.RemoveAll, which fails on a mount point inside it.
// It removes the symlinks and leaves the tmpfs, which Claims sweeps away.
const (
	fsPipe = "pipe"
	fsShm  = "shm"
	// fsMarker is a file in every daemon's tmpfs, by which its mount is
	// found in the host's mount namespace.
	fsMarker = ".gpu-dra-mps"
)

// ContainerShmDir is where the claim's containers (and the daemon, in its
// pod) see the daemon's shared memory.
const ContainerShmDir = "/dev/shm"

// ShmDirIn is the shared memory directory of a daemon directory: a
// symlink into its Filesystem, or absent where the daemon has none.
func ShmDirIn(dir string) string { return filepath.Join(dir, fsShm) }

// Filesystem is the size of each daemon's tmpfs.
type Filesystem struct {
	// Root is where the daemons' tmpfs are mounted, one directory per
	// key. Empty leaves pipe/ a plain directory of the daemon's, and the
	// daemon without a shared memory directory of its own.
	Root string
	// SizeBytes and Inodes bound each tmpfs (size= and nr_inodes=).
	SizeBytes int64
	Inodes    int64
}

// Bounded reports whether the daemon of directory dir has a Filesystem:
// its pipe/ is a symlink into it.
func Bounded(dir string) bool {
	fi, err := os.Lstat(PipeDirIn(dir))
	return err == nil && fi.Mode()&fs.ModeSymlink != 0
}

// fsDir is the key's tmpfs mount point.
func (m *Manager) fsDir(key string) string { return filepath.Join(m.FS.Root, key) }

// ensureFS gives the key's daemon its bounded pipe/ and shm/: a tmpfs at
// fsDir, mounted unless it already is (the containers of a running claim
// hold it: it must not be replaced), and the symlinks to it. A daemon
// directory whose pipe/ is a plain directory (made by a previous release,
// whose containers bind it) is left as it is.
func (m *Manager) ensureFS(logger klog.Logger, key string) error {
	dir := m.Dir(key)
	if fi, err := os.Lstat(PipeDirIn(dir)); (err == nil && fi.IsDir()) || m.FS.Root == "" {
		return hostfs.EnsureDir(logger, PipeDirIn(dir), DirMode)
	}
	mnt := m.fsDir(key)
	for _, d := range []string{m.FS.Root, mnt} {
		if err := hostfs.EnsureDir(logger, d, DirMode); err != nil {
			return fmt.Errorf("MPS filesystem: %w", err)
		}
	}
	mounted, err := isMountPoint(mnt)
	if err != nil {
		return err
	}
	if !mounted {
		opts := "size=" + strconv.FormatInt(m.FS.SizeBytes, 10) + ",nr_inodes=" + strconv.FormatInt(m.FS.Inodes, 10) + ",mode=0755"
		if err := unix.Mount("gpu-dra-mps", mnt, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts); err != nil {
			return fmt.Errorf("mount the MPS daemon's tmpfs at %s: %w", mnt, err)
		}
		logger.V(2).Info("Mounted the MPS daemon's tmpfs", "key", key, "at", mnt, "options", opts)
	}
	if err := m.fillFS(mnt); err != nil {
		return err
	}
	for name, target := range map[string]string{fsPipe: filepath.Join(mnt, fsPipe), fsShm: filepath.Join(mnt, fsShm)} {
		if err := symlink(target, filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("MPS filesystem: %w", err)
		}
	}
	return nil
}

// fillFS makes pipe/ (0755: see DirMode) and shm/ (1777, as /dev/shm: the
// daemon's clients, of any user, are one claim's) and the marker.
func (m *Manager) fillFS(mnt string) error {
	for name, mode := range map[string]fs.FileMode{fsPipe: DirMode, fsShm: 0o777 | fs.ModeSticky} {
		p := filepath.Join(mnt, name)
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("MPS filesystem: %w", err)
		}
		if err := os.Chmod(p, mode); err != nil {
			return fmt.Errorf("MPS filesystem: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(mnt, fsMarker), []byte(mnt+"\n"), 0o600); err != nil {
		return fmt.Errorf("MPS filesystem: %w", err)
	}
	return nil
}

// checkFS is the supervisor's check that the daemon's tmpfs, which the
// spec names, is what it sees: a plugin container whose data directory is
// mounted without Bidirectional propagation mounts it in its own mount
// namespace only, and the daemon and the claim's containers would get the
// empty directory under it.
func checkFS(mnt string) error {
	if _, err := os.Lstat(filepath.Join(mnt, fsMarker)); err != nil {
		return fmt.Errorf("the MPS daemon's tmpfs at %s is not here (%w): the plugin's data directory must be mounted with mountPropagation Bidirectional, and the daemon's pod must see %s", mnt, err, filepath.Dir(mnt))
	}
	return nil
}

// removeFS unmounts the key's tmpfs, whatever is in it, and removes its
// mount point and the symlinks to it. It is idempotent.
func (m *Manager) removeFS(key string) error {
	if m.FS.Root == "" {
		return nil
	}
	return removeFSAt(m.fsDir(key))
}

// removeFSAt unmounts the tmpfs at mnt, if one is mounted there, and
// removes mnt.
func removeFSAt(mnt string) error {
	for {
		mounted, err := isMountPoint(mnt)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !mounted {
			break
		}
		// Detached: a client's container that still holds it keeps it
		// until it ends; nothing here waits for that.
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount the MPS daemon's tmpfs at %s: %w", mnt, err)
		}
	}
	if err := hostfs.RemoveTree(mnt); err != nil {
		return fmt.Errorf("remove the MPS daemon's tmpfs mount point: %w", err)
	}
	return nil
}

// sweepFS removes the tmpfs of keys without a daemon directory: a previous
// release removed the directory and left its tmpfs.
func (m *Manager) sweepFS(logger klog.Logger) error {
	if m.FS.Root == "" {
		return nil
	}
	entries, err := os.ReadDir(m.FS.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list MPS filesystems: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if _, err := os.Lstat(m.Dir(e.Name())); !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		logger.Info("Removing the tmpfs of an MPS daemon whose directory is gone", "key", e.Name())
		errs = append(errs, removeFSAt(filepath.Join(m.FS.Root, e.Name())))
	}
	return errors.Join(errs...)
}

// isMountPoint reports whether path is the root of a mount: on another
// device than its parent, or the same directory as its parent.
func isMountPoint(path string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	if err := unix.Lstat(filepath.Dir(path), &parent); err != nil {
		return false, &fs.PathError{Op: "lstat", Path: filepath.Dir(path), Err: err}
	}
	return st.Dev != parent.Dev || st.Ino == parent.Ino, nil
}

// symlink makes link point to target, replacing a symlink to elsewhere.
func symlink(target, link string) error {
	if got, err := os.Readlink(link); err == nil && got == target {
		return nil
	}
	if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return os.Symlink(target, link)
}

// resolvedPipe is the directory that the daemon's pipe/ is: the target of
// the symlink into its Filesystem, or pipe/ itself.
func resolvedPipe(dir string) string {
	p := PipeDirIn(dir)
	if target, err := os.Readlink(p); err == nil && filepath.IsAbs(target) {
		return target
	}
	return p
}
