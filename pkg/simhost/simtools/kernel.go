package simtools

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// KernelSocketInRoot is where a simulated driver root has the socket of
// its kernel side (gpu-sim serve; nvmlserver.SocketInRoot names the same
// path).
const KernelSocketInRoot = "run/gpu-sim/nvml.sock"

// kernelTimeout bounds one exchange with the kernel side.
const kernelTimeout = 10 * time.Second

// errNoKernel is returned by askKernel when the driver root has no kernel
// socket: the tools then record in the driver root themselves (a driver
// root that tests made without a server).
var errNoKernel = errors.New("no simulated kernel")

// askKernel sends one request to the simulated kernel of the tools' driver
// root and returns its NVML return code. The tools change the simulated
// GPUs through it, as the real ones change them through the kernel driver:
// in the plugin's container and the MPS daemons' pods the driver root is
// mounted read-only.
func (t *Tools) askKernel(fields ...string) (int, error) {
	path := filepath.Join(t.Root, KernelSocketInRoot)
	if fi, err := os.Stat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		return 0, errNoKernel
	}
	c, err := net.DialTimeout("unix", path, kernelTimeout)
	if err != nil {
		return 0, fmt.Errorf("reach the simulated kernel at %s: %w", path, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(kernelTimeout))
	if _, err := fmt.Fprintf(c, "%s\n", strings.Join(fields, " ")); err != nil {
		return 0, fmt.Errorf("ask the simulated kernel: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("ask the simulated kernel: %w", err)
	}
	code, err := strconv.Atoi(strings.Fields(line + " x")[0])
	if err != nil {
		return 0, fmt.Errorf("ask the simulated kernel: answer %q", line)
	}
	return code, nil
}

// EncodeToken percent-encodes s so that it is one token of a kernel
// request; DecodeToken reverses it.
func EncodeToken(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c > '~' || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// DecodeToken decodes a token of EncodeToken.
func DecodeToken(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("token %q: truncated escape", s)
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("token %q: %w", s, err)
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

// RecordTimeSlice records a GPU's time slice (0..3) under driverRoot and
// logs the call in nvidia-smi.log, as the simulated nvidia-smi's effect
// (see TimeSlicePath in package simhost). now is the log line's time.
func RecordTimeSlice(driverRoot, uuid, slice, now string) error {
	switch slice {
	case "0", "1", "2", "3":
	default:
		return fmt.Errorf("bad time slice %q", slice)
	}
	// The UUID names a file: one with a slash would be written elsewhere.
	if uuid == "" || strings.ContainsAny(uuid, "/\x00") || uuid == "." || uuid == ".." {
		return fmt.Errorf("bad GPU UUID %q", uuid)
	}
	dir := filepath.Join(driverRoot, "var/lib/gpu-sim/timeslice")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(dir, uuid), []byte(slice+"\n"), 0o644, false); err != nil {
		return err
	}
	// As the effect is done, a log that cannot be written is not an error.
	_ = appendLine(filepath.Join(driverRoot, "var/lib/gpu-sim/nvidia-smi.log"), fmt.Sprintf("%s compute-policy -i %s --set-timeslice %s", now, uuid, slice))
	return nil
}

// RecordMPS appends one line to the MPS control's log under driverRoot
// (see MPSLogPath in package simhost).
func RecordMPS(driverRoot, line string) error {
	if strings.ContainsAny(line, "\n\x00") {
		return fmt.Errorf("MPS log line %q has a newline or NUL", line)
	}
	dir := filepath.Join(driverRoot, "var/lib/gpu-sim")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return appendLine(filepath.Join(dir, "mps.log"), line)
}
