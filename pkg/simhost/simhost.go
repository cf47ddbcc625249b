// Package simhost makes the host trees a simulated GPU node needs to run
// under a real container runtime: a driver root with (fake) driver
// libraries and nvidia-smi, a /dev root with the GPU device nodes, and a
// /proc root with the kernel's MIG capability table. The plugin is pointed
// at them with --driver-root, --dev-root and --proc-root.
package simhost

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Roots are the three trees.
type Roots struct{ DriverRoot, DevRoot, ProcRoot string }

// MIG capability table geometry, as the kernel driver lays it out: per GPU,
// 15 GPU instances, each with 8 compute instances.
const (
	giPerGPU = 15
	ciPerGI  = 8
)

// Create makes (idempotently) dir/driver, dir/dev and dir/proc for GPUs
// with the given minors and driver version. Device nodes are character
// devices with the numbers of /dev/null (1:3), so a runtime can create them
// in a container and a process can open them; creating them needs root.
func Create(dir string, gpuMinors []int, driverVersion string) (Roots, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Roots{}, fmt.Errorf("simulated host directory: %w", err)
	}
	r := Roots{DriverRoot: filepath.Join(abs, "driver"), DevRoot: filepath.Join(abs, "dev"), ProcRoot: filepath.Join(abs, "proc")}
	if err := makeDriverRoot(r.DriverRoot, driverVersion); err != nil {
		return Roots{}, err
	}
	table := MIGMinors(gpuMinors)
	if err := makeDevRoot(r.DevRoot, gpuMinors, table); err != nil {
		return Roots{}, err
	}
	if err := makeProcRoot(r.ProcRoot, driverVersion, table); err != nil {
		return Roots{}, err
	}
	return r, nil
}

// MIGMinor is one line of the kernel's mig-minors table.
type MIGMinor struct {
	Key   string // "gpu0/gi1/access" or "gpu0/gi1/ci0/access"
	Minor int
}

// MIGMinors returns the capability table for the GPUs: "config" 1,
// "monitor" 2, then every GI and CI access file of every GPU in order.
func MIGMinors(gpuMinors []int) []MIGMinor {
	out := []MIGMinor{{"config", 1}, {"monitor", 2}}
	n := 3
	for _, g := range gpuMinors {
		for gi := 0; gi < giPerGPU; gi++ {
			out = append(out, MIGMinor{fmt.Sprintf("gpu%d/gi%d/access", g, gi), n})
			n++
			for ci := 0; ci < ciPerGI; ci++ {
				out = append(out, MIGMinor{fmt.Sprintf("gpu%d/gi%d/ci%d/access", g, gi, ci), n})
				n++
			}
		}
	}
	return out
}

func makeDriverRoot(root, version string) error {
	lib := filepath.Join(root, "usr/lib/x86_64-linux-gnu")
	bin := filepath.Join(root, "usr/bin")
	for _, d := range []string{lib, bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create simulated driver root: %w", err)
		}
	}
	for _, name := range []string{"libcuda.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so"} {
		file := name + "." + version
		content := fmt.Sprintf("simulated %s of NVIDIA driver %s: not a real library\n", name, version)
		if err := writeFile(filepath.Join(lib, file), content, 0o644); err != nil {
			return err
		}
		link := filepath.Join(lib, name+".1")
		if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("create simulated driver root: %w", err)
		}
		if err := os.Symlink(file, link); err != nil {
			return fmt.Errorf("create simulated driver root: %w", err)
		}
	}
	if err := writeFile(filepath.Join(bin, "nvidia-cuda-mps-control"), simulatedMPSControl, 0o755); err != nil {
		return err
	}
	return writeFile(filepath.Join(bin, "nvidia-smi"), fmt.Sprintf(simulatedSMI, version), 0o755)
}

// simulatedSMI is the simulated nvidia-smi. Without arguments it prints
// what a container sees. "compute-policy -i UUID --set-timeslice N" records
// the GPU's time slice where tests read it (TimeSlicePath) and logs the
// call, as the real tool changes the GPU's scheduler.
const simulatedSMI = `#!/bin/sh
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ "$1" = compute-policy ]; then
	shift
	uuid= slice=
	while [ $# -gt 0 ]; do
		case $1 in
		-i) uuid=$2; shift 2 ;;
		--set-timeslice) slice=$2; shift 2 ;;
		--set-timeslice=*) slice=${1#*=}; shift ;;
		*) echo "nvidia-smi compute-policy: unknown argument $1" >&2; exit 2 ;;
		esac
	done
	case $slice in 0|1|2|3) ;; *) echo "nvidia-smi compute-policy: bad time slice '$slice'" >&2; exit 2 ;; esac
	[ -n "$uuid" ] || { echo "nvidia-smi compute-policy: -i is required" >&2; exit 2; }
	mkdir -p "$root/var/lib/gpu-sim/timeslice" || exit 1
	echo "$slice" > "$root/var/lib/gpu-sim/timeslice/$uuid" || exit 1
	echo "$(date -u +%%Y-%%m-%%dT%%H:%%M:%%SZ) compute-policy -i $uuid --set-timeslice $slice" >> "$root/var/lib/gpu-sim/nvidia-smi.log"
	echo "Set time slice of GPU $uuid to $slice"
	exit 0
fi
echo "nvidia-smi (simulated NVIDIA driver %s)"
echo "NVIDIA_VISIBLE_DEVICES=${NVIDIA_VISIBLE_DEVICES:-}"
`

// simulatedMPSControl is the simulated nvidia-cuda-mps-control. "-d"
// starts a daemon (a detached shell loop) that lives while its control
// pipe exists, with its PID in the pipe directory; on stdin, "quit" makes
// it exit. Every start and quit is logged in MPSLogPath with the
// environment the daemon was given.
const simulatedMPSControl = `#!/bin/sh
root=$(cd "$(dirname "$0")/../.." && pwd)
pipe=${CUDA_MPS_PIPE_DIRECTORY:-/tmp/nvidia-mps}
log=${CUDA_MPS_LOG_DIRECTORY:-/var/log/nvidia-mps}
mkdir -p "$root/var/lib/gpu-sim"
if [ "$1" = -d ]; then
	mkdir -p "$pipe" "$log" || exit 1
	: > "$pipe/control"
	setsid sh -c 'while [ -e "$1/control" ]; do sleep 0.1; done; rm -f "$1/nvidia-cuda-mps-control.pid"' mps-control-daemon "$pipe" </dev/null >/dev/null 2>&1 &
	echo $! > "$pipe/nvidia-cuda-mps-control.pid"
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) start pid=$! devices=${CUDA_VISIBLE_DEVICES:-} pipe=$pipe" | tee -a "$log/control.log" >> "$root/var/lib/gpu-sim/mps.log"
	exit 0
fi
read -r command
case $command in
quit)
	[ -e "$pipe/control" ] || { echo "no MPS control daemon at $pipe" >&2; exit 1; }
	rm -f "$pipe/control"
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) quit pipe=$pipe" | tee -a "$log/control.log" >> "$root/var/lib/gpu-sim/mps.log"
	;;
*) echo "nvidia-cuda-mps-control: unsupported command '$command'" >&2; exit 1 ;;
esac
`

// MPSLogPath is where the simulated MPS control program logs every daemon
// start and quit under the driver root.
func MPSLogPath(driverRoot string) string {
	return filepath.Join(driverRoot, "var/lib/gpu-sim/mps.log")
}

// TimeSlicePath is where the simulated nvidia-smi records a GPU's time
// slice (0 default .. 3 long) under the driver root.
func TimeSlicePath(driverRoot, gpuUUID string) string {
	return filepath.Join(driverRoot, "var/lib/gpu-sim/timeslice", gpuUUID)
}

func makeDevRoot(root string, gpuMinors []int, table []MIGMinor) error {
	dev := filepath.Join(root, "dev")
	if err := os.MkdirAll(filepath.Join(dev, "nvidia-caps"), 0o755); err != nil {
		return fmt.Errorf("create simulated /dev: %w", err)
	}
	nodes := []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"}
	for _, m := range gpuMinors {
		nodes = append(nodes, fmt.Sprintf("nvidia%d", m))
	}
	for _, e := range table {
		nodes = append(nodes, fmt.Sprintf("nvidia-caps/nvidia-cap%d", e.Minor))
	}
	for _, n := range nodes {
		if err := mknodNull(filepath.Join(dev, n)); err != nil {
			return err
		}
	}
	return nil
}

// mknodNull makes a character device 1:3 at path unless one is there.
func mknodNull(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFCHR && unix.Major(uint64(st.Rdev)) == 1 && unix.Minor(uint64(st.Rdev)) == 3 {
			return nil
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("replace %s: %w", path, err)
		}
	}
	if err := unix.Mknod(path, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("create device node %s: %w (the simulated /dev needs root or CAP_MKNOD)", path, err)
		}
		return fmt.Errorf("create device node %s: %w", path, err)
	}
	// mknod applies the umask; the nodes must be usable by anyone, as
	// /dev/null is.
	if err := os.Chmod(path, 0o666); err != nil {
		return fmt.Errorf("create device node %s: %w", path, err)
	}
	return nil
}

func makeProcRoot(root, version string, table []MIGMinor) error {
	var b strings.Builder
	for _, e := range table {
		fmt.Fprintf(&b, "%s %d\n", e.Key, e.Minor)
	}
	if err := writeFile(filepath.Join(root, "proc/driver/nvidia-caps/mig-minors"), b.String(), 0o444); err != nil {
		return err
	}
	return writeFile(filepath.Join(root, "proc/driver/nvidia/version"),
		fmt.Sprintf("NVRM version: NVIDIA UNIX x86_64 Kernel Module  %s  (simulated)\n", version), 0o444)
}

func writeFile(path, content string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if old, err := os.ReadFile(path); err == nil && string(old) == content {
		return os.Chmod(path, mode)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
