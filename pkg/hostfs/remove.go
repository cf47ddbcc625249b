package hostfs

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// dirBatch is how many entries of a directory are read at a time: a
// tenant may have made very many.
const dirBatch = 256

// RemoveTree removes path and everything under it. It follows no symlink
// and never has more than two directories open, however deep the tree:
// os.RemoveAll holds a descriptor for each level it descends, so a chain
// of directories deeper than the open-file limit, which a tenant can make
// in a directory it writes, makes it fail every time. A path that does
// not exist is not an error.
func RemoveTree(path string) error {
	err := EmptyTree(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.ELOOP):
		// Not a directory, or a symlink: the entry itself goes.
	case err != nil:
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// EmptyTree removes everything in the directory dir, leaving dir, as
// RemoveTree does: a directory that is not empty has its entries moved up
// into dir (a rename, with the directory and dir open) and is removed on
// the next pass, until nothing is left.
func EmptyTree(dir string) error {
	for {
		done, err := emptyPass(dir)
		if err != nil || done {
			return err
		}
	}
}

// emptyPass removes a batch of dir's entries, moving up the entries of
// those that are directories with entries, and reports whether dir was
// empty.
func emptyPass(dir string) (bool, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	names, err := f.Readdirnames(dirBatch)
	if len(names) == 0 {
		if err == nil || errors.Is(err, io.EOF) {
			return true, nil
		}
		return false, fmt.Errorf("read %s: %w", dir, err)
	}
	fd := int(f.Fd())
	for _, name := range names {
		if err := removeEntry(fd, dir, name); err != nil {
			return false, err
		}
	}
	return false, nil
}

// removeEntry removes the entry name of the directory open as dirFd: a
// file, symlink or empty directory at once; a directory with entries has
// them moved into dirFd, to be removed by the next pass.
func removeEntry(dirFd int, dir, name string) error {
	err := unix.Unlinkat(dirFd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return &fs.PathError{Op: "unlink", Path: dir + "/" + name, Err: err}
	}
	err = unix.Unlinkat(dirFd, name, unix.AT_REMOVEDIR)
	switch {
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST):
		return hoist(dirFd, dir, name)
	}
	return &fs.PathError{Op: "rmdir", Path: dir + "/" + name, Err: err}
}

// hoist moves the entries of the directory name of dirFd into dirFd under
// fresh names.
func hoist(dirFd int, dir, name string) error {
	subFd, err := unix.Openat(dirFd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: dir + "/" + name, Err: err}
	}
	sub := os.NewFile(uintptr(subFd), dir+"/"+name)
	defer sub.Close()
	for {
		names, err := sub.Readdirnames(dirBatch)
		for _, n := range names {
			if err := renameUp(subFd, n, dirFd); err != nil {
				return &fs.PathError{Op: "rename", Path: dir + "/" + name + "/" + n, Err: err}
			}
		}
		if len(names) == 0 || err != nil {
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read %s/%s: %w", dir, name, err)
			}
			return nil
		}
	}
}

// renameUp moves entry n of fromFd into toFd under a name that is not
// taken.
func renameUp(fromFd int, n string, toFd int) error {
	for {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		err := unix.Renameat2(fromFd, n, toFd, ".removing-"+hex.EncodeToString(b), unix.RENAME_NOREPLACE)
		if !errors.Is(err, unix.EEXIST) {
			return err
		}
	}
}
