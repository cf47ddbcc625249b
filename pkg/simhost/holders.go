package simhost

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Simulated holder processes are numbered from holderPIDBase, above any
// PID a test machine hands out, holderPIDsPerGPU per GPU minor.
const (
	holderPIDBase    = 4000000
	holderPIDsPerGPU = 100
)

// SyncHolders shows, under the simulated /proc root procRoot, a process for
// every client that holds a GPU open (sim's GPUState.Clients, by GPU
// minor): proc/<pid>/comm with its name and proc/<pid>/fd/3 linking to
// /dev/nvidia<minor>, as the kernel shows a process with the GPU's node
// open, which is how the plugin finds what holds a GPU (package
// gpuholders). Processes of clients gone are removed.
func SyncHolders(procRoot string, holders map[int][]string) error {
	dir := filepath.Join(procRoot, "proc")
	want := map[string]string{} // pid → "name minor"
	for minor, clients := range holders {
		for k, name := range clients {
			if k >= holderPIDsPerGPU {
				break
			}
			want[strconv.Itoa(holderPIDBase+minor*holderPIDsPerGPU+k)] = name + " " + strconv.Itoa(minor)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("simulated holders: %w", err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid < holderPIDBase {
			continue
		}
		if _, ok := want[e.Name()]; !ok {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("simulated holders: %w", err)
			}
		}
	}
	for pid, what := range want {
		name, minor, _ := strings.Cut(what, " ")
		if err := writeFile(filepath.Join(dir, pid, "comm"), name+"\n", 0o444); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(dir, pid, "fd"), 0o755); err != nil {
			return fmt.Errorf("simulated holders: %w", err)
		}
		if err := symlink("/dev/nvidia"+minor, filepath.Join(dir, pid, "fd", "3")); err != nil {
			return err
		}
	}
	return nil
}
