package simtools

import (
	"bytes"
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

// Bounds of the version: tailSize, the end of a copy searched for it, must
// hold the marker, the longest version and the newline.
const (
	maxVersionLen = 128
	tailSize      = 512
)

// Install copies the gpu-sim-tools program at tools into binDir under
// every name of Names, mode 0755, each ending with
// driverVersion (any version a copy of tools already carries is replaced).
// A copy is replaced by a rename, never rewritten in place, as an MPS
// daemon may be running the old one; a copy already equal is kept.
func Install(tools, binDir, driverVersion string) error {
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
		program = program[:len(program)-len(tail(program))+start]
	}
	copyOf := make([]byte, 0, len(program)+len(versionMarker)+len(driverVersion)+1)
	copyOf = append(append(append(copyOf, program...), versionMarker+driverVersion...), '\n')
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

// readVersion returns the driver version at the end of the copy at exe.
func readVersion(exe string) (string, error) {
	f, err := os.Open(exe)
	if err != nil {
		return "", fmt.Errorf("read the driver version: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("read the driver version: %w", err)
	}
	end := make([]byte, min(fi.Size(), tailSize))
	if _, err := f.ReadAt(end, fi.Size()-int64(len(end))); err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read the driver version: %w", err)
	}
	v, _, ok := parseTag(end)
	if !ok {
		return "", fmt.Errorf("%s carries no simulated driver version: install it with simhost.Create (gpu-sim host)", exe)
	}
	return v, nil
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
