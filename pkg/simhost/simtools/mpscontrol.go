package simtools

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// daemonArg makes nvidia-cuda-mps-control the daemon itself, watching the
// pipe directory that follows. The real tool has no such argument.
const daemonArg = "--simulated-daemon"

// Files in the pipe directory: the daemon lives while controlFile exists
// (the real daemon's control pipe); pidFile holds its PID.
const (
	controlFile = "control"
	pidFile     = "nvidia-cuda-mps-control.pid"
)

// pollInterval is how often the daemon looks for its control file.
const pollInterval = 100 * time.Millisecond

// mpsControl is the simulated nvidia-cuda-mps-control. "-f" runs the
// daemon in the foreground: it lives while its control file exists, with
// its PID in the pipe directory, and makes the control file once it is
// ready. "-d" starts the same daemon detached (a copy of this program) and
// returns, as a previous release of the plugin ran it; either may be
// followed by "-M" (multi-user mode, logged as " multi_user=1"). Without either it
// reads a command on stdin: "quit" makes the daemon exit. Every start and
// quit is logged in the daemon's control.log and in mps.log under the
// driver root.
func (t *Tools) mpsControl(args []string) int {
	if len(args) == 2 && args[0] == daemonArg {
		return daemon(args[1])
	}
	pipe := t.getenv("CUDA_MPS_PIPE_DIRECTORY")
	if pipe == "" {
		pipe = "/tmp/nvidia-mps"
	}
	logDir := t.getenv("CUDA_MPS_LOG_DIRECTORY")
	if logDir == "" {
		logDir = "/var/log/nvidia-mps"
	}
	if len(args) > 0 && (args[0] == "-d" || args[0] == "-f") {
		multiUser := false
		for _, a := range args[1:] {
			if a != "-M" {
				fmt.Fprintf(t.Stderr, "%s: unknown argument %s\n", MPSControl, a)
				return 2
			}
			multiUser = true
		}
		mode := ""
		if multiUser {
			mode = " multi_user=1"
		}
		if args[0] == "-d" {
			return t.startDaemon(pipe, logDir, mode)
		}
		return t.foreground(pipe, logDir, mode)
	}
	switch command := readLine(t.Stdin); command {
	case "quit":
		return t.quit(pipe, logDir)
	default:
		fmt.Fprintf(t.Stderr, "%s: unsupported command '%s'\n", MPSControl, command)
		return 1
	}
}

// startDaemon starts the daemon and returns at once, as the real "-d" does.
func (t *Tools) startDaemon(pipe, logDir, mode string) int {
	for _, dir := range []string{pipe, logDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return t.fail(err)
		}
	}
	control := filepath.Join(pipe, controlFile)
	if err := makeControl(control); err != nil {
		return t.fail(err)
	}
	cmd := exec.Command(t.Executable, daemonArg, pipe)
	cmd.Args[0] = MPSControl
	// Its own session, so that it outlives its starter's process group;
	// nil standard streams are /dev/null, so that it holds none of its
	// starter's (a caller reading our output to its end would wait for the
	// daemon too). It is not waited for: once we exit, init reaps it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	inheritNothing()
	if err := cmd.Start(); err != nil {
		_ = os.Remove(control)
		return t.fail(err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	if err := writeAtomic(filepath.Join(pipe, pidFile), []byte(fmt.Sprintf("%d\n", pid)), 0o644, false); err != nil {
		_ = os.Remove(control) // the daemon exits
		return t.fail(err)
	}
	// The daemon runs: a log that cannot be written is reported, not fatal.
	_ = t.logMPS(logDir, fmt.Sprintf("%s start pid=%d devices=%s pipe=%s%s%s", t.now(), pid, t.getenv("CUDA_VISIBLE_DEVICES"), pipe, t.limits(), mode))
	return 0
}

// limits are the defaults the daemon gives its servers, and so every
// client, from its environment, as the real daemon takes them, for the
// log: " active_thread_percentage=N" and " pinned_device_mem_limit=L"
// where set.
func (t *Tools) limits() string {
	var out string
	if v := t.getenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"); v != "" {
		out += " active_thread_percentage=" + v
	}
	if v := t.getenv("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"); v != "" {
		out += " pinned_device_mem_limit=" + v
	}
	return out
}

// foreground is the daemon of "-f": it announces itself (PID file, log),
// makes its control file last, as the sign that it is ready, and runs
// until the control file is gone. A PID file that cannot be written (a
// client's container may have put a directory in its place) is reported,
// not fatal: its starter knows the daemon's PID without it.
func (t *Tools) foreground(pipe, logDir, mode string) int {
	for _, dir := range []string{pipe, logDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return t.fail(err)
		}
	}
	pid := os.Getpid()
	if err := writeAtomic(filepath.Join(pipe, pidFile), []byte(fmt.Sprintf("%d\n", pid)), 0o644, false); err != nil {
		fmt.Fprintf(t.Stderr, "%s: %v\n", MPSControl, err)
	}
	_ = t.logMPS(logDir, fmt.Sprintf("%s start pid=%d devices=%s pipe=%s%s%s", t.now(), pid, t.getenv("CUDA_VISIBLE_DEVICES"), pipe, t.limits(), mode))
	if err := makeControl(filepath.Join(pipe, controlFile)); err != nil {
		return t.fail(err)
	}
	return daemon(pipe)
}

// makeControl makes a new, empty control file at path. Whatever is there
// is removed first, not written through: a client's container may have put
// a symlink to a host file there, which a plain create would truncate.
func makeControl(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// quit writes the command into the daemon's control file, as the real
// client writes it into the control pipe, through whatever is at its path
// (without waiting for a reader), and removes the file, which makes the
// daemon exit.
func (t *Tools) quit(pipe, logDir string) int {
	control := filepath.Join(pipe, controlFile)
	f, err := os.OpenFile(control, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		fmt.Fprintf(t.Stderr, "no MPS control daemon at %s\n", pipe)
		return 1
	}
	_, err = io.WriteString(f, "quit\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return t.fail(err)
	}
	if err := os.Remove(control); err != nil && !errors.Is(err, os.ErrNotExist) {
		return t.fail(err)
	}
	// The daemon is told to quit: a log that cannot be written does not
	// make that a failure, as with a start.
	_ = t.logMPS(logDir, fmt.Sprintf("%s quit pipe=%s", t.now(), pipe))
	return 0
}

// daemon waits until the control file in pipe is gone, then removes its
// PID file.
func daemon(pipe string) int {
	for {
		if _, err := os.Stat(filepath.Join(pipe, controlFile)); err != nil {
			break
		}
		time.Sleep(pollInterval)
	}
	_ = os.Remove(filepath.Join(pipe, pidFile))
	return 0
}

// logMPS appends line to logDir/control.log and to mps.log under the
// driver root, reporting failures; it returns mps.log's. control.log is
// appended to as the real daemon does, but neither through a symlink nor
// to anything but a regular file, and without waiting on a FIFO: log/ may
// have been written by a container (it is mounted read-only into
// containers now, but a claim prepared by an older release has it
// read-write).
func (t *Tools) logMPS(logDir, line string) error {
	if err := appendLine(filepath.Join(logDir, "control.log"), line); err != nil {
		fmt.Fprintf(t.Stderr, "%s: %v\n", MPSControl, err)
	}
	code, err := t.askKernel("record-mps", EncodeToken(line))
	switch {
	case errors.Is(err, errNoKernel):
		err = RecordMPS(t.Root, line)
	case err == nil && code != 0:
		err = fmt.Errorf("log in the simulated kernel: NVML error %d", code)
	}
	if err != nil {
		fmt.Fprintf(t.Stderr, "%s: %v\n", MPSControl, err)
	}
	return err
}

// inheritNothing marks every descriptor above stderr close-on-exec, so
// that the daemon holds none that this process inherited, such as a pipe
// whose reader waits for it to close. Those of the Go runtime already are.
func inheritNothing() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}

func (t *Tools) fail(err error) int {
	fmt.Fprintf(t.Stderr, "%s: %v\n", MPSControl, err)
	return 1
}

// readLine reads one line from r, byte by byte so that nothing after it is
// consumed, without the newline and the blanks around it, as the shell's
// "read -r" does. At the end of the input it returns what it has.
func readLine(r io.Reader) string {
	if r == nil {
		return ""
	}
	var line []byte
	b := make([]byte, 1)
	for {
		n, err := r.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
		}
		if err != nil {
			break
		}
	}
	return strings.Trim(string(line), " \t")
}
