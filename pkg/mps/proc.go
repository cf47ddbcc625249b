package mps

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// Limits on what is read from procfs. A process's environment is the
// largest: the kernel bounds a new program's arguments and environment
// together by a quarter of its stack limit, typically 2 MiB.
const (
	maxStatSize    = 4 << 10
	maxEnvironSize = 4 << 20
	maxSmallSize   = 4 << 10
)

// clockTicks is USER_HZ, the unit of a process's start time in
// /proc/<pid>/stat: 100 on every architecture Linux runs GPUs on,
// whatever the kernel's own tick rate.
const clockTicks = 100

// identity is what tells one process from any other that has had or will
// have its PID: its start time since boot in a given boot, and the file
// it executes.
type identity struct {
	PID int `json:"pid"`
	// StartTime is field 22 of /proc/<pid>/stat: clock ticks after boot.
	StartTime uint64 `json:"startTime"`
	// BootID is the boot the PID and start time belong to.
	BootID string `json:"bootID"`
	// Exe is /proc/<pid>/exe as it read at start, for people; ExeDevice
	// and ExeInode identify the file, which a path does not (across mount
	// namespaces, or once the file is replaced).
	Exe       string `json:"exe"`
	ExeDevice uint64 `json:"exeDevice"`
	ExeInode  uint64 `json:"exeInode"`
}

// procs reads the process table under a root: "/" for the plugin's own
// (the host's, as the plugin runs with hostPID), a fake tree in tests.
type procs struct{ root string }

func (p procs) path(pid int, name string) string {
	return filepath.Join(p.root, "proc", strconv.Itoa(pid), name)
}

// stat returns a process's state letter and its start time.
func (p procs) stat(pid int) (state byte, start uint64, err error) {
	data, err := hostfs.ReadBounded(p.path(pid, "stat"), maxStatSize, true)
	if err != nil {
		return 0, 0, err
	}
	// "pid (comm) state ppid ...": comm may hold blanks and parentheses,
	// so the fields start after the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("%s: no command name", p.path(pid, "stat"))
	}
	fields := strings.Fields(string(data[i+1:]))
	// fields[0] is field 3 (state), so field 22 is fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return 0, 0, fmt.Errorf("%s: %d fields after the command name, want at least 20", p.path(pid, "stat"), len(fields))
	}
	start, err = strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: start time: %w", p.path(pid, "stat"), err)
	}
	return fields[0][0], start, nil
}

// exe identifies the file a process executes. A zombie has none.
func (p procs) exe(pid int) (path string, dev, ino uint64, err error) {
	link := p.path(pid, "exe")
	fi, err := os.Stat(link)
	if err != nil {
		return "", 0, 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", 0, 0, fmt.Errorf("%s: no device and inode", link)
	}
	path, _ = os.Readlink(link) // only for people
	return path, st.Dev, st.Ino, nil
}

// bootID is the node's current boot.
func (p procs) bootID() (string, error) {
	data, err := hostfs.ReadBounded(filepath.Join(p.root, "proc/sys/kernel/random/boot_id"), maxSmallSize, true)
	if err != nil {
		return "", fmt.Errorf("read boot ID: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

// bootTime is when the node booted, to the second (btime in /proc/stat).
func (p procs) bootTime() (time.Time, error) {
	path := filepath.Join(p.root, "proc/stat")
	data, err := hostfs.ReadBounded(path, 1<<20, true)
	if err != nil {
		return time.Time{}, err
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, fmt.Errorf("%s: btime: %w", path, err)
			}
			return time.Unix(s, 0), nil
		}
	}
	return time.Time{}, fmt.Errorf("%s: no btime", path)
}

// environ is a process's environment as it started.
func (p procs) environ(pid int) ([]string, error) {
	data, err := hostfs.ReadBounded(p.path(pid, "environ"), maxEnvironSize, true)
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00"), nil
}

// identify reads the identity of the live process pid.
func (p procs) identify(pid int) (identity, error) {
	boot, err := p.bootID()
	if err != nil {
		return identity{}, err
	}
	state, start, err := p.stat(pid)
	if err != nil {
		return identity{}, fmt.Errorf("process %d: %w", pid, err)
	}
	if state == 'Z' || state == 'X' {
		return identity{}, fmt.Errorf("process %d has exited", pid)
	}
	exe, dev, ino, err := p.exe(pid)
	if err != nil {
		return identity{}, fmt.Errorf("process %d: executable: %w", pid, err)
	}
	return identity{PID: pid, StartTime: start, BootID: boot, Exe: exe, ExeDevice: dev, ExeInode: ino}, nil
}

// is reports whether the process id names still runs: a process of the
// same boot with that PID, start time and executable, not exited. Any
// doubt (procfs unreadable, a reused PID, a zombie) means no, so that a
// stranger is never taken for it.
func (p procs) is(id identity) bool {
	if id.PID <= 0 {
		return false
	}
	now, err := p.identify(id.PID)
	return err == nil && now.BootID == id.BootID && now.StartTime == id.StartTime &&
		now.ExeDevice == id.ExeDevice && now.ExeInode == id.ExeInode
}

// startedAt is when a process of this boot with start time ticks started,
// to about a second.
func (p procs) startedAt(ticks uint64) (time.Time, error) {
	boot, err := p.bootTime()
	if err != nil {
		return time.Time{}, err
	}
	return boot.Add(time.Duration(ticks) * (time.Second / clockTicks)), nil
}

// kill sends SIGKILL to the process id names, only if it is that process. A
// pidfd taken before the check pins the process: should it exit and its
// PID be reused between the check and the signal, the signal goes
// nowhere. Kernels before 5.3 lack pidfds: there the check and kill(2)
// are as close as they can be.
func (p procs) kill(id identity) error {
	fd, err := unix.PidfdOpen(id.PID, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil // gone already
	}
	pinned := err == nil
	if pinned {
		defer unix.Close(fd)
	} else if !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("pidfd_open %d: %w", id.PID, err)
	}
	if !p.is(id) {
		return nil // gone, or a stranger: never signalled
	}
	if pinned {
		err = unix.PidfdSendSignal(fd, syscall.SIGKILL, nil, 0)
	} else {
		err = syscall.Kill(id.PID, syscall.SIGKILL)
	}
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal process %d: %w", id.PID, err)
	}
	return nil
}
