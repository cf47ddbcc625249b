// Package simhost makes the host trees a simulated GPU node needs to run
// under a real container runtime: a driver root with (fake) driver
// libraries and tools, a /dev root with the GPU device nodes, and a /proc
// root with the kernel's device majors (proc/devices) and MIG capability
// table, whose instances' capability files the simulated kernel side
// writes (Capabilities). The plugin is pointed at them with --driver-root,
// --dev-root and --proc-root.
//
// The driver root's tools, usr/bin/nvidia-smi,
// usr/bin/nvidia-cuda-mps-control and IMEX's usr/bin/nvidia-imex and
// usr/bin/nvidia-imex-ctl, are copies of the static gpu-sim-tools program
// (package simtools), not shell scripts: they run in the plugin's
// image, which has no shell, and in the containers CDI mounts them into.
// What they record is read back with TimeSlicePath and MPSLogPath.
package simhost

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simtools"
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
// with the given minors and driver version. tools is the gpu-sim-tools
// program (cmd/gpu-sim-tools, built with CGO_ENABLED=0), copied into the
// driver root as its nvidia-smi and nvidia-cuda-mps-control (see
// simtools.Install). Device nodes are character devices with the numbers
// of /dev/null (1:3), so a runtime can create them in a container and a
// process can open them; creating them needs root.
func Create(dir string, gpuMinors []int, driverVersion, tools string) (Roots, error) {
	if tools == "" {
		return Roots{}, errors.New("simulated driver root: no gpu-sim-tools program given (build it with: CGO_ENABLED=0 go build ./cmd/gpu-sim-tools)")
	}
	if _, err := os.Stat(tools); err != nil {
		return Roots{}, fmt.Errorf("simulated driver root: gpu-sim-tools program: %w (build it with: CGO_ENABLED=0 go build ./cmd/gpu-sim-tools)", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Roots{}, fmt.Errorf("simulated host directory: %w", err)
	}
	r := Roots{DriverRoot: filepath.Join(abs, "driver"), DevRoot: filepath.Join(abs, "dev"), ProcRoot: filepath.Join(abs, "proc")}
	if err := makeDriverRoot(r.DriverRoot, driverVersion, tools); err != nil {
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

// driverLibraries are the libraries the simulated driver root holds, laid
// out as NVIDIA's installer lays them out on Debian-like hosts: the file
// <stem>.<version> in the library directory (VDPAU's in its vdpau
// directory), and, where the library has a SONAME, a link of that name to
// it. The EGL platform libraries carry their own versions, not the
// driver's (version). Placeholders: only libnvidia-ml is a library
// (InstallNVML). They are the compute, utility, video, graphics and NGX
// libraries of NVIDIA's data center driver 550, which a container of a
// real node gets, so that the production path mounts them as it would.
var driverLibraries = []struct{ dir, stem, soname, version string }{
	{"", "libcuda.so", "libcuda.so.1", ""},
	{"", "libcudadebugger.so", "libcudadebugger.so.1", ""},
	{"", "libnvidia-pkcs11.so", "", ""},
	{"", "libnvidia-pkcs11-openssl3.so", "", ""},
	{"", "libnvidia-ml.so", "libnvidia-ml.so.1", ""},
	{"", "libnvidia-ptxjitcompiler.so", "libnvidia-ptxjitcompiler.so.1", ""},
	{"", "libnvidia-nvvm.so", "libnvidia-nvvm.so.4", ""},
	{"", "libnvidia-opencl.so", "libnvidia-opencl.so.1", ""},
	{"", "libnvidia-cfg.so", "libnvidia-cfg.so.1", ""},
	{"", "libnvidia-gpucomp.so", "", ""},
	{"", "libnvidia-allocator.so", "libnvidia-allocator.so.1", ""},
	{"", "libnvcuvid.so", "libnvcuvid.so.1", ""},
	{"", "libnvidia-encode.so", "libnvidia-encode.so.1", ""},
	{"", "libnvidia-opticalflow.so", "libnvidia-opticalflow.so.1", ""},
	{"vdpau", "libvdpau_nvidia.so", "libvdpau_nvidia.so.1", ""},
	{"", "libnvidia-glcore.so", "", ""},
	{"", "libnvidia-eglcore.so", "", ""},
	{"", "libnvidia-glsi.so", "", ""},
	{"", "libnvidia-tls.so", "", ""},
	{"", "libEGL_nvidia.so", "libEGL_nvidia.so.0", ""},
	{"", "libGLX_nvidia.so", "libGLX_nvidia.so.0", ""},
	{"", "libGLESv2_nvidia.so", "libGLESv2_nvidia.so.2", ""},
	{"", "libGLESv1_CM_nvidia.so", "libGLESv1_CM_nvidia.so.1", ""},
	{"", "libnvidia-glvkspirv.so", "", ""},
	{"", "libnvidia-vulkan-producer.so", "", ""},
	{"", "libnvidia-egl-gbm.so", "libnvidia-egl-gbm.so.1", "1.1.1"},
	{"", "libnvidia-egl-wayland.so", "libnvidia-egl-wayland.so.1", "1.1.13"},
	{"", "libnvidia-fbc.so", "libnvidia-fbc.so.1", ""},
	{"", "libnvidia-rtcore.so", "", ""},
	{"", "libnvoptix.so", "libnvoptix.so.1", ""},
	{"", "libnvidia-ngx.so", "libnvidia-ngx.so.1", ""},
}

// driverConfigFiles are the configuration files of the simulated driver
// root, relative to it, with their contents: where NVIDIA's packages put
// the OpenCL ICD, the EGL vendor file and the Vulkan ICD.
var driverConfigFiles = []struct{ rel, content string }{
	{"etc/OpenCL/vendors/nvidia.icd", "libnvidia-opencl.so.1\n"},
	{"usr/share/glvnd/egl_vendor.d/10_nvidia.json", `{"file_format_version": "1.0.0", "ICD": {"library_path": "libEGL_nvidia.so.0"}}` + "\n"},
	{"usr/share/vulkan/icd.d/nvidia_icd.json", `{"file_format_version": "1.0.0", "ICD": {"library_path": "libGLX_nvidia.so.0", "api_version": "1.3.277"}}` + "\n"},
	{"usr/share/vulkan/implicit_layer.d/nvidia_layers.json", `{"file_format_version": "1.0.0", "layer": {"name": "VK_LAYER_NV_optimus", "library_path": "libGLX_nvidia.so.0"}}` + "\n"},
	{"usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json", `{"file_format_version": "1.0.0", "ICD": {"library_path": "libnvidia-egl-gbm.so.1"}}` + "\n"},
	{"usr/share/egl/egl_external_platform.d/10_nvidia_wayland.json", `{"file_format_version": "1.0.0", "ICD": {"library_path": "libnvidia-egl-wayland.so.1"}}` + "\n"},
	{"usr/share/nvidia/nvoptix.bin", "simulated OptiX data: not NVIDIA's\n"},
}

// LibraryDir is the simulated driver root's library directory, relative
// to it.
const LibraryDir = "usr/lib/x86_64-linux-gnu"

func makeDriverRoot(root, version, tools string) error {
	lib := filepath.Join(root, LibraryDir)
	bin := filepath.Join(root, "usr/bin")
	for _, d := range []string{lib, filepath.Join(lib, "vdpau"), bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create simulated driver root: %w", err)
		}
	}
	for _, l := range driverLibraries {
		dir := filepath.Join(lib, l.dir)
		v := version
		if l.version != "" {
			v = l.version
		}
		content := fmt.Sprintf("simulated %s of NVIDIA driver %s: not a real library\n", l.stem, version)
		if err := writeFile(filepath.Join(dir, l.stem+"."+v), content, 0o644); err != nil {
			return err
		}
		if l.soname == "" {
			continue
		}
		if err := symlinkTo(l.stem+"."+v, filepath.Join(dir, l.soname)); err != nil {
			return fmt.Errorf("create simulated driver root: %w", err)
		}
	}
	for _, c := range driverConfigFiles {
		if err := writeFile(filepath.Join(root, c.rel), c.content, 0o644); err != nil {
			return err
		}
	}
	return simtools.Install(tools, bin, version)
}

// symlinkTo makes link point to target, replacing what is there.
func symlinkTo(target, link string) error {
	if old, err := os.Readlink(link); err == nil && old == target {
		return nil
	}
	if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.Symlink(target, link)
}

// NVMLSoname is the name NVIDIA's NVML library is loaded by.
const NVMLSoname = "libnvidia-ml.so.1"

// InstallNVML installs the simulated NVML library at lib (built by
// pkg/simhost/libnvml/build.sh) in driverRoot as NVIDIA's installer does:
// usr/lib/x86_64-linux-gnu/libnvidia-ml.so.<version> and the link
// libnvidia-ml.so.1 to it. It replaces Create's placeholder, so that the
// driver root is one the plugin's production path loads NVML from; the
// library answers through the socket of a gpu-sim serve process
// (nvmlserver.SocketPath).
func InstallNVML(driverRoot, lib, driverVersion string) error {
	data, err := os.ReadFile(lib)
	if err != nil {
		return fmt.Errorf("simulated NVML library: %w (build it with: pkg/simhost/libnvml/build.sh bin/%s)", err, NVMLSoname)
	}
	dir := filepath.Join(driverRoot, LibraryDir)
	file := "libnvidia-ml.so." + driverVersion
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("install simulated NVML library: %w", err)
	}
	if old, err := os.ReadFile(filepath.Join(dir, file)); err != nil || string(old) != string(data) {
		// A new file renamed over the old one: a process that mapped the
		// old library keeps it.
		tmp := filepath.Join(dir, "."+file+".tmp")
		if err := os.WriteFile(tmp, data, 0o755); err != nil {
			return fmt.Errorf("install simulated NVML library: %w", err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, file)); err != nil {
			return fmt.Errorf("install simulated NVML library: %w", err)
		}
	}
	link := filepath.Join(dir, NVMLSoname)
	if target, err := os.Readlink(link); err == nil && target == file {
		return nil
	}
	if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("install simulated NVML library: %w", err)
	}
	if err := os.Symlink(file, link); err != nil {
		return fmt.Errorf("install simulated NVML library: %w", err)
	}
	return nil
}

// MPSLogPath is where the simulated MPS control program logs every daemon
// start and quit under the driver root, one line each:
// "<UTC time> start pid=<pid> devices=<CUDA_VISIBLE_DEVICES> pipe=<dir>"
// and "<UTC time> quit pipe=<dir>".
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
	nodes := []string{"nvidiactl", "nvidia-modeset", "nvidia-uvm", "nvidia-uvm-tools"}
	for _, m := range gpuMinors {
		nodes = append(nodes, fmt.Sprintf("nvidia%d", m))
	}
	// The config and monitor capabilities' nodes: nvidia-smi made them on
	// the host when MIG was set up. No instance's capability node: NVML
	// makes none when it creates an instance, and this simulated host
	// tests that the plugin needs none (see docs/simulated-driver.md).
	for _, e := range table[:2] {
		nodes = append(nodes, fmt.Sprintf("nvidia-caps/nvidia-cap%d", e.Minor))
	}
	for _, n := range nodes {
		if err := mknodNull(filepath.Join(dev, n)); err != nil {
			return err
		}
	}
	return removeCapNodes(dev, table)
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
	if err := writeFile(filepath.Join(root, "proc/devices"), procDevices(), 0o444); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(root, "proc/driver/nvidia/params"), procParams(), 0o444); err != nil {
		return err
	}
	for _, e := range table[:2] { // config, monitor
		if err := writeFile(filepath.Join(root, capabilitiesDir, "mig", e.Key), accessFile(e.Minor, configCapMode), 0o444); err != nil {
			return err
		}
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
