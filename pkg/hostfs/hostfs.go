// Package hostfs creates the plugin's directories on the host with modes
// that neither the process umask nor an earlier install can widen.
//
// A directory that is missing is created with exactly the mode asked for. A
// directory that exists (left by an older version of the plugin, or created
// by the kubelet for a hostPath volume, 0755 or worse) is not trusted as it
// is: it loses every permission bit beyond the mode asked for, and the
// change is logged. It is never widened, so an administrator who made a
// directory stricter keeps it so.
package hostfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"k8s.io/klog/v2"
)

// EnsureDir makes dir a directory whose permissions are at most perm:
// created (with any missing parents, which get at most perm too) and
// chmod'ed to exactly perm when missing, tightened to the bits of perm it
// already has when it exists.
//
// A world-writable directory with the sticky bit (such as /tmp) is refused
// rather than tightened: it is shared by design and is not the plugin's to
// change. An existing directory owned by neither root nor the plugin's own
// user is logged as a warning: whoever owns it can change its mode back.
// logger may be the zero Logger, which discards.
func EnsureDir(logger klog.Logger, dir string, perm fs.FileMode) error {
	perm = perm.Perm()
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, perm); err != nil {
			return err
		}
		// MkdirAll applies the umask; Chmod does not.
		if err := os.Chmod(dir, perm); err != nil {
			return fmt.Errorf("set the mode of %s: %w", dir, err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", dir)
	}
	mode := fi.Mode()
	if mode&fs.ModeSticky != 0 && mode.Perm()&0o002 != 0 {
		return fmt.Errorf("%s is a shared world-writable directory (mode %s): give the plugin a directory of its own", dir, mode)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		logger.Info("Warning: directory is owned by another user, who can change its mode back",
			"path", dir, "uid", st.Uid)
	}
	if extra := mode.Perm() &^ perm; extra != 0 {
		tightened := mode.Perm() & perm
		if err := os.Chmod(dir, tightened); err != nil {
			return fmt.Errorf("tighten the mode of %s from %s to %s: %w", dir, mode.Perm(), tightened, err)
		}
		logger.Info("Tightened the permissions of a pre-existing directory",
			"path", dir, "from", fmt.Sprintf("%#o", mode.Perm()), "to", fmt.Sprintf("%#o", tightened))
	}
	return nil
}
