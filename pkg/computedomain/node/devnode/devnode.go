// Package devnode makes the kernel's IMEX channel device nodes,
// /dev/nvidia-caps-imex-channels/channel<N>, under the dev root. The real
// driver makes none by default (only channel0 with NVreg_CreateImexChannel0),
// so the node plugin makes those of the channels it hands out. The major is
// the driver's line "nvidia-caps-imex-channels" of /proc/devices under the
// proc root; the minor is the channel number.
//
// The host nodes are root's only (NodeMode); containers get their own node
// from the CDI spec's numbers, whose mode is ContainerMode.
package devnode

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/gpu-dra/gpu-dra-driver/pkg/cdi"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Modes of the host's channel directory and nodes, and of the nodes made
// in containers (any user of the container may open its channel, as with
// the driver's own channel0).
const (
	DirMode       fs.FileMode = 0o755
	NodeMode      fs.FileMode = 0o600
	ContainerMode fs.FileMode = 0o666
)

// Node is one channel's device node.
type Node struct {
	// Path is the node's path in a container, e.g.
	// "/dev/nvidia-caps-imex-channels/channel3".
	Path string
	// HostPath is Path under the dev root.
	HostPath     string
	Major, Minor int64
}

// Path returns the container path of a channel's node.
func Path(channel int) string {
	return "/dev/" + names.IMEXChannelDir + "/channel" + strconv.Itoa(channel)
}

// MknodFunc makes a character device node; unix.Mknod by default. Tests
// without CAP_MKNOD replace it.
type MknodFunc func(path string, mode uint32, dev int) error

// Maker finds and makes channel nodes.
type Maker struct {
	DevRoot, ProcRoot string
	// Mknod nil is unix.Mknod.
	Mknod MknodFunc
	// Stat nil is unix.Stat, Unlink nil unix.Unlink; tests pair them
	// with Mknod.
	Stat   func(path string, st *unix.Stat_t) error
	Unlink func(path string) error
}

// Major reads the channels' major from /proc/devices under the proc root.
func (m *Maker) Major() (int64, error) {
	path := filepath.Join(m.ProcRoot, cdi.ProcDevicesFile)
	majors, err := cdi.ParseProcDevices(path)
	if err != nil {
		return 0, fmt.Errorf("IMEX channel major: %w", err)
	}
	major, ok := majors[names.IMEXChannelMajorName]
	if !ok {
		return 0, fmt.Errorf("IMEX channel major: %s has no character device %q (is the NVIDIA driver loaded, with IMEX support?)", path, names.IMEXChannelMajorName)
	}
	return major, nil
}

// Missing returns the channels of channels whose host node is absent. An
// existing node with other numbers, or something else at a node's path,
// is an error.
func (m *Maker) Missing(channels []int) ([]int, error) {
	major, err := m.Major()
	if err != nil {
		return nil, err
	}
	var out []int
	for _, ch := range channels {
		ok, err := m.check(major, ch)
		if err != nil {
			return nil, err
		}
		if !ok {
			out = append(out, ch)
		}
	}
	return out, nil
}

// check reports whether channel's host node exists, and fails when
// something else is at its path.
func (m *Maker) check(major int64, ch int) (bool, error) {
	stat := m.Stat
	if stat == nil {
		stat = unix.Stat
	}
	path := filepath.Join(m.DevRoot, Path(ch))
	var st unix.Stat_t
	err := stat(path, &st)
	switch {
	case errors.Is(err, unix.ENOENT):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("IMEX channel node %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || uint64(st.Rdev) != unix.Mkdev(uint32(major), uint32(ch)) { //nolint:unconvert // Rdev's type varies by platform.
		return false, fmt.Errorf("IMEX channel node %s exists but is not character device %d:%d; remove it", path, major, ch)
	}
	return true, nil
}

// Remove removes channel's host node after checking that it is the
// channel's character device; a missing node is no error, anything else
// at its path is left and reported.
func (m *Maker) Remove(channel int) error {
	major, err := m.Major()
	if err != nil {
		return err
	}
	ok, err := m.check(major, channel)
	if err != nil || !ok {
		return err
	}
	remove := m.Unlink
	if remove == nil {
		remove = unix.Unlink
	}
	path := filepath.Join(m.DevRoot, Path(channel))
	if err := remove(path); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove IMEX channel node %s: %w", path, err)
	}
	return nil
}

// Ensure makes the nodes of channels that are missing under the dev root
// and returns all of them. An existing node with other numbers, or
// something else at a node's path, is an error: it is never replaced.
func (m *Maker) Ensure(channels []int) ([]Node, error) {
	major, err := m.Major()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(m.DevRoot, "dev", names.IMEXChannelDir)
	if err := os.MkdirAll(dir, DirMode); err != nil {
		return nil, fmt.Errorf("create IMEX channel directory: %w", err)
	}
	mknod, stat := m.Mknod, m.Stat
	if mknod == nil {
		mknod = unix.Mknod
	}
	if stat == nil {
		stat = unix.Stat
	}
	out := make([]Node, 0, len(channels))
	for _, ch := range channels {
		n := Node{Path: Path(ch), Major: major, Minor: int64(ch)}
		n.HostPath = filepath.Join(m.DevRoot, n.Path)
		dev := int(unix.Mkdev(uint32(major), uint32(ch)))
		var st unix.Stat_t
		err := stat(n.HostPath, &st)
		if errors.Is(err, unix.ENOENT) {
			err = mknod(n.HostPath, unix.S_IFCHR|uint32(NodeMode), dev)
			if errors.Is(err, unix.EEXIST) { // made meanwhile: check it below
				err = stat(n.HostPath, &st)
			} else if err == nil {
				out = append(out, n)
				continue
			}
		}
		if err != nil {
			return nil, fmt.Errorf("IMEX channel node %s: %w", n.HostPath, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFCHR || uint64(st.Rdev) != uint64(dev) { //nolint:unconvert // Rdev's type varies by platform.
			return nil, fmt.Errorf("IMEX channel node %s exists but is not character device %d:%d; remove it", n.HostPath, major, ch)
		}
		out = append(out, n)
	}
	return out, nil
}
