package simtools

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// An installed copy of the program ends with versionMarker, the simulated
// driver version and a newline. The kernel loads an ELF executable by its
// program headers and ignores bytes after them, so the copy still runs;
// nvidia-smi reads its own end. A file beside the tools would not do: a
// container gets only the tool mounted.
const versionMarker = "\x00gpu-sim-tools driver-version="

// gpusMarker, in a copy installed with the node's GPUs, is followed by
// them in JSON and then by the version's marker: "nvidia-smi -L" in a
// container, which cannot ask the simulated kernel, lists them from there.
const gpusMarker = "\x00gpu-sim-tools gpus="

// Bounds of the version and the GPU table: tailSize, the end of a copy
// searched for them, must hold both markers, the longest table, the
// longest version and the newline.
const (
	maxVersionLen = 128
	maxTableLen   = 32 << 10
	tailSize      = maxTableLen + 1024
)

// GPU is what the simulated nvidia-smi knows of one of the node's GPUs.
type GPU struct {
	// Index is the GPU's NVML index on the node.
	Index int `json:"index"`
	// Minor is the minor of its /dev/nvidia<minor>.
	Minor int `json:"minor"`
	// UUID is "GPU-...".
	UUID string `json:"uuid"`
	// Name is the product name, e.g. "NVIDIA H100 80GB HBM3".
	Name string `json:"name"`
	// MIGProfiles names the GPU's MIG profiles by GPU instance profile
	// ID, e.g. "0" is "1g.10gb" on an H100.
	MIGProfiles map[string]string `json:"migProfiles,omitempty"`
}

// Install copies the gpu-sim-tools program at tools into binDir under
// every name of Names, mode 0755, each ending with gpus, the node's GPUs
// (none for a driver root without them), and driverVersion (any table and
// version a copy of tools already carries are replaced).
// A copy is replaced by a rename, never rewritten in place, as an MPS
// daemon may be running the old one; a copy already equal is kept.
func Install(tools, binDir, driverVersion string, gpus ...GPU) error {
	if tools == "" {
		return errors.New("simulated driver tools: no gpu-sim-tools program given (build it with: CGO_ENABLED=0 go build ./cmd/gpu-sim-tools)")
	}
	if err := checkVersion(driverVersion); err != nil {
		return err
	}
	program, err := os.ReadFile(tools)
	if err != nil {
		return fmt.Errorf("simulated driver tools: %w (build it with: CGO_ENABLED=0 go build ./cmd/gpu-sim-tools)", err)
	}
	// The marker is in the program's own constants.
	if !bytes.Contains(program, []byte(versionMarker)) {
		return fmt.Errorf("simulated driver tools: %s is not a gpu-sim-tools program", tools)
	}
	if _, start, ok := parseTag(tail(program)); ok {
		if i, ok := tableAt(tail(program)[:start]); ok {
			start = i
		}
		program = program[:len(program)-len(tail(program))+start]
	}
	var table []byte
	if len(gpus) > 0 {
		j, err := json.Marshal(gpus)
		if err != nil {
			return fmt.Errorf("simulated driver tools: %w", err)
		}
		if len(j) > maxTableLen {
			return fmt.Errorf("simulated driver tools: the GPU table is %d bytes, more than %d", len(j), maxTableLen)
		}
		table = append([]byte(gpusMarker), j...)
	}
	copyOf := make([]byte, 0, len(program)+len(table)+len(versionMarker)+len(driverVersion)+1)
	copyOf = append(append(append(append(copyOf, program...), table...), versionMarker+driverVersion...), '\n')
	for _, name := range Names {
		path := filepath.Join(binDir, name)
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, copyOf) {
			if err := os.Chmod(path, 0o755); err != nil {
				return fmt.Errorf("simulated driver tools: %w", err)
			}
			continue
		}
		if err := writeAtomic(path, copyOf, 0o755, true); err != nil {
			return fmt.Errorf("simulated driver tools: %w", err)
		}
	}
	return nil
}

func checkVersion(v string) error {
	if v == "" || len(v) > maxVersionLen {
		return fmt.Errorf("simulated driver tools: driver version %q: want 1 to %d characters", v, maxVersionLen)
	}
	for _, c := range []byte(v) {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("simulated driver tools: driver version %q has a control character", v)
		}
	}
	return nil
}

// tail is the end of a program where its version is.
func tail(program []byte) []byte { return program[max(0, len(program)-tailSize):] }

// parseTag finds the version that end, the last bytes of a copy, carries,
// and where its marker starts in end.
func parseTag(end []byte) (version string, start int, ok bool) {
	if len(end) == 0 || end[len(end)-1] != '\n' {
		return "", 0, false
	}
	start = bytes.LastIndex(end, []byte(versionMarker))
	if start < 0 {
		return "", 0, false
	}
	v := end[start+len(versionMarker) : len(end)-1]
	if len(v) == 0 || bytes.ContainsAny(v, "\n\x00") {
		return "", 0, false
	}
	return string(v), start, true
}

// tableAt returns where the GPU table starts in before, the bytes before
// the version's marker, if they end with one: its marker and valid JSON
// up to their end (the program's own copy of the marker is followed by
// its other constants).
func tableAt(before []byte) (int, bool) {
	i := bytes.LastIndex(before, []byte(gpusMarker))
	if i < 0 || !json.Valid(before[i+len(gpusMarker):]) {
		return 0, false
	}
	return i, true
}

// readVersion returns the driver version at the end of the copy at exe.
func readVersion(exe string) (string, error) {
	v, _, err := readTags(exe)
	return v, err
}

// readGPUs returns the GPU table at the end of the copy at exe: none for
// a copy installed without one.
func readGPUs(exe string) ([]GPU, error) {
	_, gpus, err := readTags(exe)
	return gpus, err
}

// readTags returns the driver version and the GPU table at the end of the
// copy at exe.
func readTags(exe string) (string, []GPU, error) {
	f, err := os.Open(exe)
	if err != nil {
		return "", nil, fmt.Errorf("read the driver version: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", nil, fmt.Errorf("read the driver version: %w", err)
	}
	end := make([]byte, min(fi.Size(), tailSize))
	if _, err := f.ReadAt(end, fi.Size()-int64(len(end))); err != nil && !errors.Is(err, io.EOF) {
		return "", nil, fmt.Errorf("read the driver version: %w", err)
	}
	v, start, ok := parseTag(end)
	if !ok {
		return "", nil, fmt.Errorf("%s carries no simulated driver version: install it with simhost.Create (gpu-sim host)", exe)
	}
	i, ok := tableAt(end[:start])
	if !ok {
		return v, nil, nil
	}
	var gpus []GPU
	if err := json.Unmarshal(end[i+len(gpusMarker):start], &gpus); err != nil {
		return "", nil, fmt.Errorf("read the GPU table of %s: %w", exe, err)
	}
	return v, gpus, nil
}

// writeAtomic writes data to path through a temporary file in the same
// directory, renamed over path, so that readers see the old or the new
// content, never part of it; durable syncs it first.
func writeAtomic(path string, data []byte, mode os.FileMode, durable bool) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
