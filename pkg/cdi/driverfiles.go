package cdi

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpu-dra/gpu-dra-driver/pkg/driverroot"
)

// driverRootWhat names the driver root where this process reads it, in
// errors.
const driverRootWhat = "driver root (--driver-root-mount, else --driver-root)"

// Capabilities name groups of the driver's user-space files as
// NVIDIA_DRIVER_CAPABILITIES names them. Containers get every group,
// whatever that variable says: NVIDIA's CDI generator
// (nvidia-container-toolkit pkg/nvcdi) puts every library of the driver's
// version, the graphics configuration files and the display nodes in its
// specs, and images written for it (video transcoding with NVENC and
// NVDEC, EGL or Vulkan rendering, OpenCL) expect them.
const (
	capUtility  = "utility"
	capCompute  = "compute"
	capVideo    = "video"
	capGraphics = "graphics"
	capNGX      = "ngx"
)

// libraryGroups are the stems of the driver libraries containers get, by
// capability: libnvidia-container's lists (src/nvc_info.c), with the
// libraries later drivers added that NVIDIA's CDI generator mounts. A file
// is taken when its name is a stem, a dot and a version
// ("libcuda.so.550.54.15"). Besides these, every library file whose
// version is the driver's own ("libnvidia-api.so.570.133.20", the version
// of libnvidia-ml.so.<version> beside it) is taken, as NVIDIA's generator
// takes them (pkg/nvcdi getVersionLibs): a driver that ships a library
// this table does not know yet still gives it to containers, and the
// plugin names such libraries when it starts. The table stays for the
// libraries versioned apart from the driver (libnvidia-egl-wayland.so.1.1.13)
// and for the report of what a driver root lacks.
var libraryGroups = []struct {
	capability string
	stems      []string
}{
	{capUtility, []string{"libnvidia-ml.so", "libnvidia-cfg.so"}},
	{capCompute, []string{
		"libcuda.so", "libcudadebugger.so", "libnvidia-ptxjitcompiler.so", "libnvidia-nvvm.so",
		"libnvidia-gpucomp.so", "libnvidia-allocator.so", "libnvidia-opencl.so",
		"libnvidia-pkcs11.so", "libnvidia-pkcs11-openssl3.so",
	}},
	// NVDEC (libnvcuvid), NVENC (libnvidia-encode), the optical flow
	// accelerator, and VDPAU, whose driver is in the vdpau directory.
	{capVideo, []string{"libnvcuvid.so", "libnvidia-encode.so", "libnvidia-opticalflow.so", "libvdpau_nvidia.so"}},
	// The OpenGL, EGL and Vulkan drivers (GLVND vendor libraries, whose
	// loaders are the image's) and their cores, frame buffer capture,
	// ray tracing (OptiX).
	{capGraphics, []string{
		"libnvidia-glcore.so", "libnvidia-eglcore.so", "libnvidia-glsi.so", "libnvidia-tls.so",
		"libGLX_nvidia.so", "libEGL_nvidia.so", "libGLESv2_nvidia.so", "libGLESv1_CM_nvidia.so",
		"libnvidia-glvkspirv.so", "libnvidia-vulkan-producer.so", "libnvidia-egl-gbm.so",
		"libnvidia-egl-wayland.so", "libnvidia-fbc.so", "libnvidia-rtcore.so", "libnvoptix.so",
	}},
	{capNGX, []string{"libnvidia-ngx.so"}},
}

// requiredLibraries are the stems without which no CUDA or NVML program runs.
var requiredLibraries = []string{"libcuda.so", "libnvidia-ml.so"}

// libraryDirs are the directories searched for libraries, relative to the
// driver root: each of driverroot.LibraryDirs, then its vdpau directory,
// where VDPAU loads its drivers from.
func libraryDirs() []string {
	var out []string
	for _, d := range driverroot.LibraryDirs {
		out = append(out, d, path.Join(d, "vdpau"))
	}
	return out
}

// configFiles are the driver's configuration files that loaders look for
// at fixed paths (the OpenCL ICD loader, GLVND's EGL, Vulkan's): found
// under the driver root at rel in the first of configDirs that has it,
// mounted at containerDir/rel, as NVIDIA's CDI generator does.
var configFiles = []struct {
	capability, rel, containerDir string
}{
	{capCompute, "OpenCL/vendors/nvidia.icd", "/etc"},
	{capGraphics, "glvnd/egl_vendor.d/10_nvidia.json", "/usr/share"},
	{capGraphics, "egl/egl_external_platform.d/15_nvidia_gbm.json", "/usr/share"},
	{capGraphics, "egl/egl_external_platform.d/10_nvidia_wayland.json", "/usr/share"},
	{capGraphics, "vulkan/icd.d/nvidia_icd.json", "/etc"},
	{capGraphics, "vulkan/implicit_layer.d/nvidia_layers.json", "/etc"},
	{capGraphics, "nvidia/nvoptix.bin", "/usr/share"},
}

// configDirs are where a driver installation keeps configuration files,
// relative to its root, in the order they are searched: /etc, then the
// XDG data directories' defaults.
var configDirs = []string{"etc", "usr/local/share", "usr/share"}

// binDirs and binaries are the driver's tools containers get.
var (
	binDirs  = []string{"usr/bin", "bin"}
	binaries = []string{
		"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced",
		"nvidia-cuda-mps-control", "nvidia-cuda-mps-server",
	}
)

// cdiHook is the NVIDIA Container Toolkit's hook, relative to the driver
// root. When present it refreshes the container's linker cache so that the
// mounted libraries are found in directories the image's ldconfig does not
// search. The SONAME links (libcuda.so.1) never depend on it: they are
// mounted (see sonameLinks), as the hook is often absent (the GPU
// operator's driver root has none: the toolkit's is elsewhere). The
// hook's ldconfig leaves them alone, as they are no symlinks and are the
// same file as the library.
const cdiHook = "usr/bin/nvidia-cdi-hook"

// mountOptions are those of every driver file mount.
var mountOptions = []string{"ro", "nosuid", "nodev", "bind"}

var versionPattern = regexp.MustCompile(`^[0-9]+(\.[0-9]+)*$`)

// driverFiles are the driver's user-space files found under the driver root.
type driverFiles struct {
	mounts  []*specs.Mount // read-only bind mounts: libraries, tools, configuration files
	hook    *specs.Hook    // the ldcache hook, nil without nvidia-cdi-hook or libraries
	missing []string       // required libraries not found, as "libcuda.so.*"
	// absent are, by capability, the libraries ("libnvcuvid.so.*") and
	// configuration files not found: containers do without them.
	absent map[string][]string
	// links are the SONAME links mounted, as "dir/libcuda.so.1 links to
	// libcuda.so.550.54.15"; refused those not followed (see sonameLinks).
	links, refused []string
	// unlisted are the stems of the libraries of the driver's version that
	// libraryGroups does not list ("libnvidia-api.so"), mounted too.
	unlisted []string
}

// discoverDriverFiles finds the driver's libraries, tools and
// configuration files under root, where this process reads the driver
// root, and gives them the host paths under hostRoot. What is not found is
// left out (files.absent), never an error. Only regular files are taken:
// the version-numbered libraries, never the symlinks beside them. Directories are resolved as
// the host resolves the mounts' host paths; one reached twice (lib ->
// usr/lib) is searched once. The libraries' SONAME links are mounted too,
// as the files they name (see sonameLinks).
func discoverDriverFiles(root, hostRoot string) (driverFiles, error) {
	var files driverFiles
	taken := map[string]bool{} // file names mounted
	var ldDirs []string        // container paths of directories with mounted libraries

	dirs, err := distinctDirs(root, libraryDirs())
	if err != nil {
		return files, err
	}
	listed := make([][]fs.DirEntry, len(dirs))
	for i, dir := range dirs {
		if listed[i], err = os.ReadDir(filepath.Join(root, dir)); err != nil {
			return files, fmt.Errorf("%s: %w", driverRootWhat, err)
		}
	}
	libs := libraryNames{version: driverVersion(listed), versioned: map[string]bool{}}
	for i, dir := range dirs {
		entries := listed[i]
		n := len(files.mounts)
		here := map[string]bool{} // libraries mounted from dir
		for _, e := range entries {
			if e.Type().IsRegular() && !taken[e.Name()] && libs.isDriverLibrary(e.Name()) {
				taken[e.Name()] = true
				here[e.Name()] = true
				files.mounts = append(files.mounts, driverMount(hostRoot, path.Join(dir, e.Name())))
			}
		}
		if err := files.sonameLinks(root, hostRoot, dir, entries, here, taken, libs); err != nil {
			return files, err
		}
		if len(files.mounts) > n {
			ldDirs = append(ldDirs, "/"+dir)
		}
	}
	for _, stem := range requiredLibraries {
		if !hasStem(taken, stem) {
			files.missing = append(files.missing, stem+".*")
		}
	}
	for _, g := range libraryGroups {
		for _, stem := range g.stems {
			if !hasStem(taken, stem) {
				files.addAbsent(g.capability, stem+".*")
			}
		}
	}
	files.unlisted = slices.Sorted(maps.Keys(libs.versioned))

	dirs, err = distinctDirs(root, binDirs)
	if err != nil {
		return files, err
	}
	for _, dir := range dirs {
		for _, name := range binaries {
			if taken[name] {
				continue
			}
			rel := path.Join(dir, name)
			ok, err := isRegular(filepath.Join(root, rel))
			if err != nil {
				return files, err
			}
			if ok {
				taken[name] = true
				files.mounts = append(files.mounts, driverMount(hostRoot, rel))
			}
		}
	}

	if err := files.configFiles(root, hostRoot); err != nil {
		return files, err
	}

	hook, err := isRegular(filepath.Join(root, cdiHook))
	if err != nil {
		return files, err
	}
	if hook && len(ldDirs) > 0 {
		args := []string{"nvidia-cdi-hook", "update-ldcache"}
		for _, d := range ldDirs {
			args = append(args, "--folder", d)
		}
		files.hook = &specs.Hook{HookName: cdiapi.CreateContainerHook, Path: filepath.Join(hostRoot, cdiHook), Args: args}
	}
	return files, nil
}

// configFiles mounts each of configFiles found as a regular file (not
// through a link) in a configuration directory of the driver root.
func (f *driverFiles) configFiles(root, hostRoot string) error {
	for _, c := range configFiles {
		found := false
		for _, dir := range configDirs {
			rel := path.Join(dir, c.rel)
			ok, err := isRegular(filepath.Join(root, rel))
			if err != nil {
				return err
			}
			if ok {
				m := driverMount(hostRoot, rel)
				m.ContainerPath = path.Join(c.containerDir, c.rel)
				f.mounts = append(f.mounts, m)
				found = true
				break
			}
		}
		if !found {
			f.addAbsent(c.capability, c.rel)
		}
	}
	return nil
}

func (f *driverFiles) addAbsent(capability, what string) {
	if f.absent == nil {
		f.absent = map[string][]string{}
	}
	f.absent[capability] = append(f.absent[capability], what)
}

// sonameLinks mounts, for each symlink of dir named as a driver library
// (libcuda.so.1, libnvidia-nvvm.so.4), the library file it names at the
// link's path, so that programs that load a library by its SONAME find it
// whatever the container's ldconfig does. A link is followed only to a
// library of its own stem mounted from dir (here): a plain name, neither
// absolute nor with a "/", so that nothing outside the driver root, nor
// any other file in it, is mounted by a link a broken or hostile
// installation made. Others are listed in refused. Names mounted are
// added to taken.
func (f *driverFiles) sonameLinks(root, hostRoot, dir string, entries []fs.DirEntry, here, taken map[string]bool, libs libraryNames) error {
	for _, e := range entries {
		name := e.Name()
		if e.Type()&fs.ModeSymlink == 0 || taken[name] || !libs.isDriverLibrary(name) {
			continue
		}
		target, err := os.Readlink(filepath.Join(root, dir, name))
		if err != nil {
			return fmt.Errorf("%s: %w", driverRootWhat, err)
		}
		link := path.Join(dir, name) + " links to " + target
		if strings.Contains(target, "/") || !here[target] || libs.stem(target) != libs.stem(name) {
			f.refused = append(f.refused, link)
			continue
		}
		taken[name] = true
		f.links = append(f.links, link)
		m := driverMount(hostRoot, path.Join(dir, target))
		m.ContainerPath = "/" + path.Join(dir, name)
		f.mounts = append(f.mounts, m)
	}
	return nil
}

// distinctDirs returns those of dirs (relative to root) that exist, leaving
// out any that is the same directory as an earlier one.
func distinctDirs(root string, dirs []string) ([]string, error) {
	var out []string
	var seen []fs.FileInfo
	for _, dir := range dirs {
		fi, err := os.Stat(filepath.Join(root, dir))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrInvalid) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", driverRootWhat, err)
		}
		if !fi.IsDir() || containsSameFile(seen, fi) {
			continue
		}
		seen = append(seen, fi)
		out = append(out, dir)
	}
	return out, nil
}

func containsSameFile(seen []fs.FileInfo, fi fs.FileInfo) bool {
	for _, s := range seen {
		if os.SameFile(s, fi) {
			return true
		}
	}
	return false
}

// isRegular says whether path is a regular file (not following a final
// symlink). A missing file is not an error.
func isRegular(path string) (bool, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: %w", driverRootWhat, err)
	}
	return fi.Mode().IsRegular(), nil
}

// libraryNames tells the driver's libraries by name: those of
// libraryGroups, and those of the driver's own version.
type libraryNames struct {
	// version is the driver's version ("550.54.15"), from its NVML or
	// CUDA library file; "" if neither is there.
	version string
	// versioned are the stems found with the driver's version that
	// libraryGroups does not list; filled as names are asked.
	versioned map[string]bool
}

// driverNamedByVersion matches a library file named with a version:
// "lib<name>.so.<version>".
var driverNamedByVersion = regexp.MustCompile(`^(lib[A-Za-z0-9_+-]+(\.[A-Za-z0-9_+-]+)*\.so)\.([0-9]+(\.[0-9]+)*)$`)

// driverVersion is the version of the first regular libnvidia-ml.so.<v>,
// else libcuda.so.<v>, of the listed library directories.
func driverVersion(listed [][]fs.DirEntry) string {
	for _, stem := range []string{"libnvidia-ml.so", "libcuda.so"} {
		for _, entries := range listed {
			for _, e := range entries {
				if v, ok := strings.CutPrefix(e.Name(), stem+"."); ok && e.Type().IsRegular() && strings.Count(v, ".") >= 1 && versionPattern.MatchString(v) {
					return v
				}
			}
		}
	}
	return ""
}

// isDriverLibrary says whether name is one of the libraries, with a version.
func (l libraryNames) isDriverLibrary(name string) bool {
	return l.stem(name) != ""
}

// stem returns the stem of the library name, with a version; "" for any
// other name. A name of the driver's version whose stem libraryGroups does
// not list is recorded in versioned, and from then on its stem's other
// names (its SONAME link) are the driver's too.
func (l libraryNames) stem(name string) string {
	if s := libraryStem(name); s != "" {
		return s
	}
	m := driverNamedByVersion.FindStringSubmatch(name)
	if m == nil {
		return ""
	}
	if l.version != "" && m[3] == l.version {
		l.versioned[m[1]] = true
	}
	if l.versioned[m[1]] {
		return m[1]
	}
	return ""
}

// libraryStem returns the stem of the library name, with a version; ""
// for any other name.
func libraryStem(name string) string {
	for _, g := range libraryGroups {
		for _, stem := range g.stems {
			if v, ok := strings.CutPrefix(name, stem+"."); ok && versionPattern.MatchString(v) {
				return stem
			}
		}
	}
	return ""
}

func hasStem(taken map[string]bool, stem string) bool {
	for name := range taken {
		if strings.HasPrefix(name, stem+".") {
			return true
		}
	}
	return false
}

// driverMount bind-mounts hostRoot/rel read-only at /rel in the container.
func driverMount(hostRoot, rel string) *specs.Mount {
	return &specs.Mount{
		HostPath:      filepath.Join(hostRoot, rel),
		ContainerPath: "/" + rel,
		Options:       mountOptions,
	}
}
