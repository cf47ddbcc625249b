package driverroot

import (
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestMain(m *testing.M) { os.Exit(RunThenCleanup(m)) }

func TestFindLibrary(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string // relative to the root; a "->" makes a symlink
		want  string   // relative to the root; empty: not found
	}{
		{"multiarch link to the versioned file", []string{"usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15", "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1->libnvidia-ml.so.550.54.15"}, "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"},
		{"RPM layout: lib64 before the 32-bit usr/lib", []string{"usr/lib/libnvidia-ml.so.1", "usr/lib64/libnvidia-ml.so.1"}, "usr/lib64/libnvidia-ml.so.1"},
		{"a dangling link is not the library", []string{"usr/lib64/libnvidia-ml.so.1->gone", "usr/lib/libnvidia-ml.so.1"}, "usr/lib/libnvidia-ml.so.1"},
		{"a directory is not the library", []string{"usr/lib64/libnvidia-ml.so.1/x"}, ""},
		{"none", []string{"usr/lib64/libcuda.so.1"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for _, f := range tc.files {
				name, target, link := strings.Cut(f, "->")
				p := filepath.Join(root, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				var err error
				if link {
					err = os.Symlink(target, p)
				} else {
					err = os.WriteFile(p, nil, 0o644)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			got, err := FindLibrary(root, "libnvidia-ml.so.1")
			switch {
			case tc.want == "" && (err == nil || !strings.Contains(err.Error(), "libnvidia-ml.so.1 not found under the driver root")):
				t.Errorf("found %q (%v), want a not-found error", got, err)
			case tc.want != "" && (err != nil || got != filepath.Join(root, tc.want)):
				t.Errorf("found %q (%v), want %s", got, err, tc.want)
			}
		})
	}
}

// TestToolEnv: a tool's loader is led, ahead of a library path it had, to
// links to the driver's own libraries under the root, the first of each
// name in the search order, and to no other file of their directories
// (a host-installed driver's directory is the host's C library's too).
func TestToolEnv(t *testing.T) {
	root := t.TempDir()
	for _, f := range []string{"usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "usr/lib/x86_64-linux-gnu/libc.so.6",
		"usr/lib64/libnvidia-ml.so.1", "usr/lib64/libcuda.so.1"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env, err := ToolEnv(root, []string{"LD_LIBRARY_PATH=/opt/lib", "A=1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(env) != 2 || env[0] != "A=1" || !strings.HasPrefix(env[1], "LD_LIBRARY_PATH=") || !strings.HasSuffix(env[1], ":/opt/lib") {
		t.Fatalf("environment %q", env)
	}
	dir := strings.TrimSuffix(strings.TrimPrefix(env[1], "LD_LIBRARY_PATH="), ":/opt/lib")
	links := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		links[e.Name()] = target
	}
	want := map[string]string{
		"libnvidia-ml.so.1": filepath.Join(root, "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"),
		"libcuda.so.1":      filepath.Join(root, "usr/lib64/libcuda.so.1"),
	}
	if !maps.Equal(links, want) {
		t.Errorf("links %v, want %v", links, want)
	}
	again, err := ToolEnv(root, nil)
	if err != nil || !slices.Equal(again, []string{"LD_LIBRARY_PATH=" + dir}) {
		t.Errorf("a second call: %q (%v), want the same directory", again, err)
	}
}

// TestCleanup: Cleanup removes every directory of links ToolEnv made, and
// only those (the drivers' libraries stay); a ToolEnv after it makes a
// fresh directory, which is again private to this process.
func TestCleanup(t *testing.T) {
	roots := []string{t.TempDir(), t.TempDir()}
	lib := "usr/lib64/libnvidia-ml.so.1"
	var dirs []string
	for _, root := range roots {
		if err := os.MkdirAll(filepath.Join(root, "usr/lib64"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, lib), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, linkDir(t, root))
	}
	if err := Cleanup(); err != nil {
		t.Fatal(err)
	}
	for i, dir := range dirs {
		if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still there after Cleanup (%v)", dir, err)
		}
		if _, err := os.Stat(filepath.Join(roots[i], lib)); err != nil {
			t.Errorf("the library a link pointed to: %v", err)
		}
	}
	again := linkDir(t, roots[0])
	t.Cleanup(func() { _ = Cleanup() })
	if again == dirs[0] {
		t.Errorf("ToolEnv after Cleanup reused %s", again)
	}
	fi, err := os.Stat(again)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the fresh directory %s: %v, want mode 0700 (%v)", again, fi, err)
	}
	if err := Cleanup(); err != nil {
		t.Errorf("a second Cleanup: %v", err)
	}
}

// linkDir is the directory of links ToolEnv leads a tool of root to.
func linkDir(t *testing.T, root string) string {
	t.Helper()
	env, err := ToolEnv(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(env) != 1 || !strings.HasPrefix(env[0], "LD_LIBRARY_PATH=") {
		t.Fatalf("environment %q", env)
	}
	return strings.TrimPrefix(env[0], "LD_LIBRARY_PATH=")
}
