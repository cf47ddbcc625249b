package health

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// errUnfit is wrapped by readFile's error for a file that is there but is
// no regular file of at most maxFileSize bytes (or, with noFollow, is a
// symlink): what it holds is not what the plugin wrote or an admin gave.
var errUnfit = errors.New("not a regular file of at most 1 MiB")

// maxFileSize bounds the policy file and the health state: both are
// small (a policy is a few hundred bytes; the state holds a few
// conditions per GPU), and a read must not grow without bound.
const maxFileSize = 1 << 20

// readFile reads a regular file of at most maxFileSize bytes. It opens
// with O_NONBLOCK, so that a FIFO put in the file's place cannot block the
// plugin's start-up, and refuses what is not a regular file (a FIFO, a
// device such as /dev/zero) before reading. With noFollow a symlink is
// refused too; a ConfigMap's files are symlinks, the plugin's own are not.
// The error wraps os.ErrNotExist for a missing file and errUnfit for one
// refused.
func readFile(path string, noFollow bool) ([]byte, error) {
	flags := os.O_RDONLY | syscall.O_NONBLOCK | syscall.O_CLOEXEC
	if noFollow {
		flags |= syscall.O_NOFOLLOW
	}
	f, err := os.OpenFile(path, flags, 0)
	if noFollow && errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%w: %s is a symlink", errUnfit, path)
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
		return nil, fmt.Errorf("%w: %s has mode %s", errUnfit, path, fi.Mode())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%w: %s is larger", errUnfit, path)
	}
	return data, nil
}
