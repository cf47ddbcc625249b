// Package gpuholders finds the processes on the host that hold a GPU's
// device node open, so that an error which NVML can only call "in use by
// another client" can name them (dcgm-exporter, nvidia-persistenced, an
// nvidia-smi). It reads /proc under a host root, which shows every
// process only in the host's PID namespace (the plugin's pod has
// hostPID). Every read is bounded: process names are the tenant's to
// choose, and a host may run many processes with many files.
package gpuholders

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// Limits of one search.
const (
	// MaxHolders is the most holders reported.
	MaxHolders = 8
	// MaxFDsPerProcess is the most open files looked at per process.
	MaxFDsPerProcess = 4096
	// maxComm is the most bytes of a process name read (the kernel keeps
	// 15).
	maxComm = 64
)

// Process is a process that holds the device open.
type Process struct {
	PID int
	// Name is its command name (/proc/<pid>/comm), printable characters
	// only.
	Name string
}

func (p Process) String() string { return fmt.Sprintf("%s (pid %d)", p.Name, p.PID) }

// Finder searches a host's processes.
type Finder struct {
	// ProcRoot and DevRoot are the host roots under which /proc and
	// /dev are found ("/" on a node).
	ProcRoot, DevRoot string
	// Self is a PID to leave out (the caller's own, which NVML's handles
	// keep the device open in and which does not keep its own calls from
	// changing the GPU); 0 leaves none out.
	Self int
}

// HoldersOf returns up to MaxHolders processes, by PID, that hold
// /dev/nvidia<minor> open. A process's open file counts when it links to
// the node under DevRoot or, as a container's process sees it in its own
// mount namespace, to /dev/nvidia<minor>. Processes that exit or cannot be
// read during the search are skipped.
func (f Finder) HoldersOf(minor int) ([]Process, error) {
	node := "nvidia" + strconv.Itoa(minor)
	targets := []string{filepath.Join("/dev", node), filepath.Join(f.DevRoot, "dev", node)}
	proc := filepath.Join(f.ProcRoot, "proc")
	entries, err := os.ReadDir(proc)
	if err != nil {
		return nil, fmt.Errorf("list processes under %s: %w", proc, err)
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 && pid != f.Self {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	var out []Process
	for _, pid := range pids {
		dir := filepath.Join(proc, strconv.Itoa(pid))
		if !holds(filepath.Join(dir, "fd"), targets) {
			continue
		}
		out = append(out, Process{PID: pid, Name: comm(filepath.Join(dir, "comm"))})
		if len(out) == MaxHolders {
			break
		}
	}
	return out, nil
}

// holds reports whether one of the first MaxFDsPerProcess files in fdDir
// links to one of targets.
func holds(fdDir string, targets []string) bool {
	d, err := os.Open(fdDir)
	if err != nil {
		return false // gone, or not ours to read
	}
	defer d.Close()
	names, err := d.Readdirnames(MaxFDsPerProcess)
	if err != nil && !errors.Is(err, io.EOF) {
		return false
	}
	for _, n := range names {
		if link, err := os.Readlink(filepath.Join(fdDir, n)); err == nil && slices.Contains(targets, link) {
			return true
		}
	}
	return false
}

// comm is a process's name, at most maxComm bytes, printable runes only;
// "?" if it cannot be read.
func comm(path string) string {
	fh, err := os.Open(path)
	if err != nil {
		return "?"
	}
	defer fh.Close()
	buf := make([]byte, maxComm)
	n, _ := io.ReadFull(fh, buf)
	name := strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) && r != unicode.ReplacementChar {
			return r
		}
		return -1
	}, strings.TrimSpace(string(buf[:n])))
	if name == "" {
		return "?"
	}
	return name
}
