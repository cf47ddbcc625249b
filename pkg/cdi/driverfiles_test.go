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
