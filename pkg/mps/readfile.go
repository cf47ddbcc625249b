package mps

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// readSmall reads the regular file at path, refusing what a hostile writer
// could put in its place to hang or exhaust the reader: the final
// component is not followed if it is a symlink (O_NOFOLLOW: a link to
// /dev/zero or to a host file), opening does not wait (O_NONBLOCK: a FIFO
// without a writer), anything but a regular file is refused after opening
// (fstat: a FIFO, a socket, a device node), and more than limit bytes is
// an error rather than a bigger buffer. Files of procfs, which are regular
// and report size 0, read as usual.
func readSmall(path string, limit int64) ([]byte, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("read %s: a symbolic link, not followed", path)
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read %s: not a regular file (%s)", path, fi.Mode().Type())
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, limit)
	}
	return data, nil
}
