// Package simtools is the simulated NVIDIA driver's tools, nvidia-smi,
// nvidia-cuda-mps-control and IMEX's nvidia-imex and nvidia-imex-ctl
// (package imexsim), as one static multi-call program
// (cmd/gpu-sim-tools). They run where the real tools run: in the plugin's
// container image, which has no shell, and in any container that a CDI
// spec mounts them into, such as busybox test pods.
//
// Install puts copies of the program, named after the tools, in a driver
// root's usr/bin; the program runs the tool its name says. A copy carries
// the simulated driver version at its end (see Install), because in a
// container only the tool itself is mounted, not the driver root around
// it. The driver root is two directories above the running copy, as
// <root>/usr/bin/nvidia-smi.
//
// The tools record what the real ones would change, under
// <root>/var/lib/gpu-sim:
//
//   - timeslice/<uuid>: a GPU's time slice, set by
//     "nvidia-smi compute-policy -i UUID --set-timeslice N";
//   - nvidia-smi.log: every time slice set;
//   - mps.log: every MPS control daemon started and quit, also logged in
//     the daemon's own $CUDA_MPS_LOG_DIRECTORY/control.log.
package simtools

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/imexsim"
)

// The names the program answers to.
const (
	SMI        = "nvidia-smi"
	MPSControl = "nvidia-cuda-mps-control"
	IMEX       = imexsim.IMEX
	IMEXCtl    = imexsim.IMEXCtl
)

// Names are the tools Install installs, all names of one program.
var Names = []string{SMI, MPSControl, IMEX, IMEXCtl}

// timeLayout is that of the tools' log lines: `date -u +%Y-%m-%dT%H:%M:%SZ`.
const timeLayout = "2006-01-02T15:04:05Z"

// Tools runs the tools against one driver root.
type Tools struct {
	// Root is the driver root.
	Root string
	// Executable is the running copy: nvidia-smi reads the driver version
	// from its end, nvidia-cuda-mps-control -d runs it again as the
	// detached daemon.
	Executable string
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
	// Now is the clock of the log lines; nil means time.Now.
	Now func() time.Time
	// DevDir is where nvidia-smi looks for the GPUs' device nodes;
	// empty means /dev.
	DevDir string
	// Stdin, Stdout and Stderr are the tool's standard streams.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Main runs the tool named name (the base name of argv[0]) with args and
// returns its exit status. The driver root is found from the running
// executable, with symlinks resolved. The IMEX tools need no driver root:
// they run from the configuration they are given.
func Main(name string, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if name == IMEX || name == IMEXCtl {
		return imexsim.Main(name, args, stdout, stderr)
	}
	if name != SMI && name != MPSControl {
		return usage(name, stderr)
	}
	exe, err := executable()
	if err != nil {
		fmt.Fprintf(stderr, "%s: find the driver root: %v\n", name, err)
		return 1
	}
	t := &Tools{Root: filepath.Dir(filepath.Dir(filepath.Dir(exe))), Executable: exe, Stdin: stdin, Stdout: stdout, Stderr: stderr}
	return t.Run(name, args)
}

// executable is the running program's path with symlinks resolved, from
// /proc/self/exe or, where there is no /proc (a bare chroot), from argv[0]
// as a shell finds $0.
func executable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		exe, err = exec.LookPath(os.Args[0])
		if err == nil {
			exe, err = filepath.Abs(exe)
		}
	}
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(exe)
}

// Run runs the tool named name with args and returns its exit status: 2
// for a name that is neither tool.
func (t *Tools) Run(name string, args []string) int {
	switch name {
	case SMI:
		return t.smi(args)
	case MPSControl:
		return t.mpsControl(args)
	case IMEX, IMEXCtl:
		return imexsim.Main(name, args, t.Stdout, t.Stderr)
	}
	return usage(name, t.Stderr)
}

func usage(name string, stderr io.Writer) int {
	fmt.Fprintf(stderr, "gpu-sim-tools: run as %s, %s, %s or %s (a copy of this program of that name), not as %q\n", SMI, MPSControl, IMEX, IMEXCtl, name)
	return 2
}

func (t *Tools) getenv(key string) string {
	if t.Getenv == nil {
		return os.Getenv(key)
	}
	return t.Getenv(key)
}

func (t *Tools) now() string {
	now := time.Now
	if t.Now != nil {
		now = t.Now
	}
	return now().UTC().Format(timeLayout)
}

// nvmlNotFound is NVML_ERROR_NOT_FOUND, the kernel's answer for a GPU
// UUID it does not have.
const nvmlNotFound = 6

// appendLine appends line and a newline to the regular file at path,
// creating it; a symlink, a FIFO or a device in its place is refused.
func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o644)
	if err != nil {
		return err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("append to %s: not a regular file", path)
	}
	_, err = io.WriteString(f, line+"\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
