package hostfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// ErrUnfit is wrapped by ReadBounded's error for a file that is there but
// is not what the plugin or an administrator put there: not a regular
// file, larger than the limit, or a symlink where none is followed.
var ErrUnfit = errors.New("unfit file")

// ReadBounded reads the regular file at path, at most limit bytes,
// refusing what a hostile writer could put in its place to hang or exhaust
// the reader: opening does not wait (O_NONBLOCK: a FIFO without a writer),
// anything but a regular file is refused after opening (fstat: a FIFO, a
// socket, a device node such as /dev/zero), more than limit bytes is an
// error rather than a bigger buffer, and with noFollow a symlink as the
// last component is refused (O_NOFOLLOW: a link to /dev/zero or to a host
// file). A ConfigMap's files are symlinks, so their reader follows them;
// the plugin's own files are read with noFollow. Files of procfs, regular
// with size 0, read whole. A missing file's error wraps fs.ErrNotExist.
func ReadBounded(path string, limit int64, noFollow bool) ([]byte, error) {
	flags := os.O_RDONLY | syscall.O_NONBLOCK | syscall.O_CLOEXEC
	if noFollow {
		flags |= syscall.O_NOFOLLOW
	}
	f, err := os.OpenFile(path, flags, 0)
	if noFollow && errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("read %s: %w: a symbolic link, not followed", path, ErrUnfit)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read %s: %w: not a regular file (%s)", path, ErrUnfit, fi.Mode().Type())
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("read %s: %w: larger than %d bytes", path, ErrUnfit, limit)
	}
	return data, nil
}
