package cdi

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/klog/v2/textlogger"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

// TestSonameLinksMounted: CUDA programs load libcuda.so.1 and
// libnvidia-ml.so.1, links that only the driver root has. The spec mounts
// the library each link names at the link's path, with or without
// nvidia-cdi-hook (the GPU operator's driver root has none), and follows a
// link only to a library file beside it: one a broken or hostile
// installation points out of the driver root, or elsewhere in it, is not
// followed. Every spec is written, so the CDI library validates it, and
// injected as a runtime does.
func TestSonameLinksMounted(t *testing.T) {
	hostfstest.RequireRoot(t, "the simulated /dev needs root")
	const (
		hostRoot = "/run/nvidia/driver" // the GPU operator's, as the host names it
		libDir   = "usr/lib/x86_64-linux-gnu"
		version  = "550.54.15"
	)
	all := map[string]string{ // Create's links
		"libcuda.so.1":                  "libcuda.so." + version,
		"libnvidia-ml.so.1":             "libnvidia-ml.so." + version,
		"libnvidia-ptxjitcompiler.so.1": "libnvidia-ptxjitcompiler.so." + version,
	}
	without := func(name string) map[string]string {
		m := map[string]string{}
		for k, v := range all {
			if k != name {
				m[k] = v
			}
		}
		return m
	}
	for _, tc := range []struct {
		name string
		hook bool
		// plant replaces the link (or, with a "!" prefix, the
		// versioned file) libcuda's with a symlink to target.
		plant       string
		wantLinks   map[string]string // link name -> library file mounted there
		wantRefused bool
	}{
		{name: "no hook", wantLinks: all},
		{name: "hook", hook: true, wantLinks: all},
		{name: "absolute link out of the root", plant: "/etc/shadow", wantLinks: without("libcuda.so.1"), wantRefused: true},
		{name: "absolute link out of the root, hook", hook: true, plant: "/etc/shadow", wantLinks: without("libcuda.so.1"), wantRefused: true},
		{name: "relative link out of the root", plant: "../../../../etc/shadow", wantLinks: without("libcuda.so.1"), wantRefused: true},
		{name: "link to a directory out of the root", plant: "../../../../etc", wantLinks: without("libcuda.so.1"), wantRefused: true},
		{name: "absolute link to the library on the host", plant: hostRoot + "/" + libDir + "/libcuda.so." + version, wantLinks: without("libcuda.so.1"), wantRefused: true},
		{name: "link to another file in the root", plant: "../../bin/nvidia-smi", wantLinks: without("libcuda.so.1"), wantRefused: true},
		{name: "link to another library", plant: "libnvidia-ml.so." + version, wantLinks: without("libcuda.so.1"), wantRefused: true},
		{name: "dangling link", plant: "libcuda.so.999", wantLinks: without("libcuda.so.1"), wantRefused: true},
		{name: "versioned file a link out of the root", plant: "!/etc/shadow", wantLinks: without("libcuda.so.1"), wantRefused: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			roots, err := simhost.Create(filepath.Join(t.TempDir(), "host"), []int{0}, version, simhosttest.Tools(t))
			if err != nil {
				t.Fatal(err)
			}
			if tc.hook {
				if err := os.WriteFile(filepath.Join(roots.DriverRoot, cdiHook), []byte("#!/bin/true\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if tc.plant != "" {
				name, target := "libcuda.so.1", tc.plant
				if t2, ok := strings.CutPrefix(target, "!"); ok {
					name, target = "libcuda.so."+version, t2
				}
				p := filepath.Join(roots.DriverRoot, libDir, name)
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(target, p); err != nil {
					t.Fatal(err)
				}
			}
			var log bytes.Buffer
			w, err := New(Options{CDIRoot: filepath.Join(t.TempDir(), "cdi"), DriverRoot: hostRoot, DriverRootMount: roots.DriverRoot,
				DevRoot: roots.DevRoot, ProcRoot: roots.ProcRoot, Logger: textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(&log)))})
			if err != nil {
				t.Fatal(err)
			}
			ids, err := w.WriteClaimSpec(context.Background(), uid, []Device{{Name: "gpu-0", Request: "a", UUID: "GPU-0"}})
			if err != nil {
				t.Fatal(err)
			}
			spec := inject(t, w, ids["gpu-0"]...)

			mounted := map[string]string{} // container path -> host path
			for _, m := range spec.Mounts {
				mounted[m.Destination] = m.Source
				// Every host path is a file in the driver root, not
				// through a link: what the plugin saw is what the
				// container gets.
				rel, ok := strings.CutPrefix(m.Source, hostRoot+"/")
				if !ok || filepath.Clean(m.Source) != m.Source {
					t.Errorf("mount %s -> %s: host path not in the driver root %s", m.Source, m.Destination, hostRoot)
					continue
				}
				if fi, err := os.Lstat(filepath.Join(roots.DriverRoot, rel)); err != nil || !fi.Mode().IsRegular() {
					t.Errorf("mount %s -> %s: not a regular file in the driver root (%v)", m.Source, m.Destination, err)
				}
				if got := strings.Join(m.Options, ","); got != "ro,nosuid,nodev,bind" {
					t.Errorf("mount %s -> %s: options %s", m.Source, m.Destination, got)
				}
			}
			for link, file := range all {
				got, ok := mounted["/"+libDir+"/"+link]
				want, wantOK := tc.wantLinks[link]
				switch {
				case wantOK && got != hostRoot+"/"+libDir+"/"+want:
					t.Errorf("%s mounted from %q, want %s", link, got, want)
				case !wantOK && ok:
					t.Errorf("%s mounted from %s, want it left out", link, got)
				}
				if wantOK {
					if _, ok := mounted["/"+libDir+"/"+file]; !ok {
						t.Errorf("library %s not mounted at its own path", file)
					}
				}
			}
			n := 0
			if spec.Hooks != nil {
				n = len(spec.Hooks.CreateContainer)
			}
			if tc.hook != (n == 1) {
				t.Errorf("%d createContainer hooks, hook present: %v", n, tc.hook)
			}

			out := log.String()
			var used string // the start-up line saying what is used
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, "Driver files for CDI specs") {
					used = line
				}
			}
			wantHook := `ldcacheHook="none"`
			if tc.hook {
				wantHook = `ldcacheHook="` + hostRoot + "/" + cdiHook + `"`
			}
			for link, file := range tc.wantLinks {
				if !strings.Contains(used, link+" links to "+file) {
					t.Errorf("start-up log lacks the link %s:\n%s", link, out)
				}
			}
			if !strings.Contains(used, wantHook) || strings.Contains(used, "libcuda.so.1 links to ") != (tc.wantLinks["libcuda.so.1"] != "") {
				t.Errorf("start-up log does not say what is used (%s):\n%s", wantHook, out)
			}
			if got := strings.Contains(out, "not followed"); got != tc.wantRefused {
				t.Errorf("refused link logged: %v, want %v:\n%s", got, tc.wantRefused, out)
			}
		})
	}
}

// TestSonameLinkSearchOrder: a link of a later library directory (usr/lib,
// the 32-bit one) is not mounted over the 64-bit one's.
func TestSonameLinkSearchOrder(t *testing.T) {
	root := t.TempDir()
	for _, dir := range []string{"usr/lib64", "usr/lib"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, dir, "libcuda.so.1.2"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("libcuda.so.1.2", filepath.Join(root, dir, "libcuda.so.1")); err != nil {
			t.Fatal(err)
		}
	}
	files, err := discoverDriverFiles(root, "/host")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range files.mounts {
		got = append(got, m.HostPath+" -> "+m.ContainerPath)
	}
	want := []string{"/host/usr/lib64/libcuda.so.1.2 -> /usr/lib64/libcuda.so.1.2", "/host/usr/lib64/libcuda.so.1.2 -> /usr/lib64/libcuda.so.1"}
	if !slices.Equal(got, want) {
		t.Errorf("mounts %v, want %v", got, want)
	}
}

// TestDriverFilesByCapability: containers get the driver's video and
// graphics files as NVIDIA's CDI generator gives them (NVENC and NVDEC
// libraries, the OpenGL, EGL and Vulkan drivers, the loaders'
// configuration files at the paths the loaders read), from what the
// driver root has: a missing one is left out and logged, never fatal, and
// a configuration file is taken from the first directory that has it,
// never through a link.
func TestDriverFilesByCapability(t *testing.T) {
	hostfstest.RequireRoot(t, "the simulated /dev needs root")
	const (
		version  = "550.54.15"
		hostRoot = "/run/nvidia/driver"
		lib      = "/usr/lib/x86_64-linux-gnu/"
	)
	video := []string{
		lib + "libnvcuvid.so." + version, lib + "libnvcuvid.so.1",
		lib + "libnvidia-encode.so." + version, lib + "libnvidia-encode.so.1",
		lib + "libnvidia-opticalflow.so.1", lib + "vdpau/libvdpau_nvidia.so.1",
	}
	graphics := []string{
		lib + "libnvidia-glcore.so." + version, lib + "libnvidia-eglcore.so." + version,
		lib + "libEGL_nvidia.so.0", lib + "libGLX_nvidia.so.0", lib + "libGLESv2_nvidia.so.2",
		"/usr/share/glvnd/egl_vendor.d/10_nvidia.json", "/etc/vulkan/icd.d/nvidia_icd.json",
	}
	compute := []string{lib + "libcuda.so.1", lib + "libnvidia-opencl.so.1", "/etc/OpenCL/vendors/nvidia.icd"}
	remove := func(rels ...string) func(t *testing.T, root string) {
		return func(t *testing.T, root string) {
			for _, rel := range rels {
				if err := os.Remove(filepath.Join(root, rel)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, root string)
		want   []string          // container paths mounted
		absent []string          // container paths not mounted
		from   map[string]string // container path -> host path, for those that move
		logged []string          // in the start-up log's line of what is left out
	}{
		{name: "complete installation", want: slices.Concat(video, graphics, compute)},
		{
			name:   "a headless driver: no graphics libraries nor their configuration",
			change: remove(libPath("libEGL_nvidia.so."+version), libPath("libEGL_nvidia.so.0"), "usr/share/vulkan/icd.d/nvidia_icd.json"),
			want:   slices.Concat(video, compute),
			absent: []string{lib + "libEGL_nvidia.so.0", lib + "libEGL_nvidia.so." + version, "/etc/vulkan/icd.d/nvidia_icd.json"},
			logged: []string{"libEGL_nvidia.so.*", "vulkan/icd.d/nvidia_icd.json"},
		},
		{
			name:   "no video libraries",
			change: remove(libPath("libnvcuvid.so."+version), libPath("libnvidia-encode.so."+version)),
			want:   slices.Concat(graphics, compute),
			absent: []string{lib + "libnvcuvid.so." + version, lib + "libnvcuvid.so.1", lib + "libnvidia-encode.so.1"},
			logged: []string{"libnvcuvid.so.*", "libnvidia-encode.so.*"},
		},
		{
			name: "a Vulkan ICD in /etc is taken before usr/share's",
			change: func(t *testing.T, root string) {
				writeFile(t, filepath.Join(root, "etc/vulkan/icd.d/nvidia_icd.json"), "{}\n")
			},
			want: graphics,
			from: map[string]string{"/etc/vulkan/icd.d/nvidia_icd.json": hostRoot + "/etc/vulkan/icd.d/nvidia_icd.json"},
		},
		{
			name: "a configuration file that is a link is not followed",
			change: func(t *testing.T, root string) {
				p := filepath.Join(root, "usr/share/glvnd/egl_vendor.d/10_nvidia.json")
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink("/etc/shadow", p); err != nil {
					t.Fatal(err)
				}
			},
			absent: []string{"/usr/share/glvnd/egl_vendor.d/10_nvidia.json"},
			logged: []string{"glvnd/egl_vendor.d/10_nvidia.json"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			roots, err := simhost.Create(filepath.Join(t.TempDir(), "host"), []int{0}, version, simhosttest.Tools(t))
			if err != nil {
				t.Fatal(err)
			}
			if tc.change != nil {
				tc.change(t, roots.DriverRoot)
			}
			var log bytes.Buffer
			w, err := New(Options{CDIRoot: filepath.Join(t.TempDir(), "cdi"), DriverRoot: hostRoot, DriverRootMount: roots.DriverRoot,
				DevRoot: roots.DevRoot, ProcRoot: roots.ProcRoot, RequireLibraries: true,
				Logger: textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(&log)))})
			if err != nil {
				t.Fatalf("a driver root without some capability's files: %v", err)
			}
			ids, err := w.WriteClaimSpec(context.Background(), uid, []Device{{Name: "gpu-0", Request: "a", UUID: "GPU-0"}})
			if err != nil {
				t.Fatal(err)
			}
			mounted := map[string]string{} // container path -> host path
			for _, m := range inject(t, w, ids["gpu-0"]...).Mounts {
				mounted[m.Destination] = m.Source
			}
			for _, p := range tc.want {
				if _, ok := mounted[p]; !ok {
					t.Errorf("%s not mounted", p)
				}
			}
			for _, p := range tc.absent {
				if src, ok := mounted[p]; ok {
					t.Errorf("%s mounted from %s, want it left out", p, src)
				}
			}
			for p, want := range tc.from {
				if got := mounted[p]; got != want {
					t.Errorf("%s mounted from %q, want %s", p, got, want)
				}
			}
			var leftOut string
			for _, line := range strings.Split(log.String(), "\n") {
				if strings.Contains(line, "Driver files not found") {
					leftOut = line
				}
			}
			if (leftOut != "") != (len(tc.logged) > 0) {
				t.Errorf("left-out files logged %q, want %v:\n%s", leftOut, tc.logged, log.String())
			}
			for _, want := range tc.logged {
				if !strings.Contains(leftOut, want) {
					t.Errorf("the log of left-out files lacks %s: %s", want, leftOut)
				}
			}
		})
	}
}

// libPath is the path of a library file of the simulated driver root,
// relative to it.
func libPath(name string) string {
	return simhost.LibraryDir + "/" + name
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLibrariesOfTheDriversVersion: a library the table does not list is
// still given to containers when its version is the driver's (that of
// libnvidia-ml.so.<version>), with its SONAME link, and named as such; a
// library of another version, a link, or a name that only looks like a
// library is not; without NVML or CUDA libraries no version is known and
// only the table's libraries are taken.
func TestLibrariesOfTheDriversVersion(t *testing.T) {
	const version = "570.133.20"
	dir := "usr/lib/x86_64-linux-gnu"
	for _, tc := range []struct {
		name     string
		files    []string          // regular files in dir
		links    map[string]string // link -> target, in dir
		want     []string          // file names mounted, as container paths' base names
		unlisted []string
	}{
		{
			name:     "a library the table does not know",
			files:    []string{"libnvidia-ml.so." + version, "libnvidia-api.so." + version, "libnvidia-egl-xcb.so." + version, "libz.so.1.2.13", "libnvidia-api.so." + version + ".bak", "nvidia-smi." + version},
			links:    map[string]string{"libnvidia-api.so.1": "libnvidia-api.so." + version, "libnvidia-ml.so.1": "libnvidia-ml.so." + version, "libz.so.1": "libz.so.1.2.13"},
			want:     []string{"libnvidia-api.so." + version, "libnvidia-api.so.1", "libnvidia-egl-xcb.so." + version, "libnvidia-ml.so." + version, "libnvidia-ml.so.1"},
			unlisted: []string{"libnvidia-api.so", "libnvidia-egl-xcb.so"},
		},
		{
			name:     "the version from CUDA when NVML is not there",
			files:    []string{"libcuda.so." + version, "libnvidia-sandboxutils.so." + version, "libnvidia-old.so.550.54.15"},
			want:     []string{"libcuda.so." + version, "libnvidia-sandboxutils.so." + version},
			unlisted: []string{"libnvidia-sandboxutils.so"},
		},
		{
			name:  "no version known: only the table's",
			files: []string{"libnvidia-api.so." + version, "libnvidia-encode.so." + version},
			want:  []string{"libnvidia-encode.so." + version},
		},
		{
			name:  "a link of the driver's version is not its version",
			files: []string{"libnvidia-ml.so.550.54.15"},
			links: map[string]string{"libnvidia-ml.so." + version: "libnvidia-ml.so.550.54.15", "libnvidia-api.so." + version: "libnvidia-ml.so.550.54.15"},
			want:  []string{"libnvidia-ml.so.550.54.15", "libnvidia-ml.so." + version},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, f := range tc.files {
				if err := os.WriteFile(filepath.Join(root, dir, f), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for link, target := range tc.links {
				if err := os.Symlink(target, filepath.Join(root, dir, link)); err != nil {
					t.Fatal(err)
				}
			}
			files, err := discoverDriverFiles(root, "/host")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range files.mounts {
				if filepath.Dir(m.ContainerPath) == "/"+dir {
					got = append(got, filepath.Base(m.ContainerPath))
				}
			}
			slices.Sort(got)
			slices.Sort(tc.want)
			if !slices.Equal(got, tc.want) {
				t.Errorf("libraries mounted %v, want %v", got, tc.want)
			}
			if !slices.Equal(files.unlisted, tc.unlisted) {
				t.Errorf("unlisted %v, want %v", files.unlisted, tc.unlisted)
			}
		})
	}
}
