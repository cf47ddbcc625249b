// Package driverroot finds the NVIDIA driver's own tools (nvidia-smi,
// nvidia-cuda-mps-control) and libraries under the driver root: "/" on a
// standard node, "/run/nvidia/driver" with the GPU operator, a simulated
// tree in tests. In the plugin's container the root is read where the host's
// is mounted (--driver-root-mount).
package driverroot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// LibraryDirs are the directories of a driver installation's libraries,
// relative to its root, in the order they are searched. The 64-bit
// directories come before usr/lib, which holds the 32-bit libraries on RPM
// based distributions; both multiarch triplets are listed, as a node has
// one.
var LibraryDirs = []string{
	"usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "usr/lib64",
	"lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu", "lib64", "usr/lib",
}

// FindLibrary returns the path of the library file name (such as
// "libnvidia-ml.so.1", usually a link to the versioned file) under root in
// the first of LibraryDirs that has it. The error lists the paths tried.
func FindLibrary(root, name string) (string, error) {
	return find(root, LibraryDirs, name)
}

// binaryDirs are where a driver installation keeps its tools, in the order
// they are searched.
var binaryDirs = []string{"usr/bin", "bin", "usr/sbin"}

// FindBinary returns the path of the tool name under root ("" means "/").
// The error lists the paths tried.
func FindBinary(root, name string) (string, error) {
	return find(root, binaryDirs, name)
}

// find returns root/dir/name for the first of dirs where it is a regular
// file, links followed.
func find(root string, dirs []string, name string) (string, error) {
	if root == "" {
		root = "/"
	}
	var tried []string
	for _, dir := range dirs {
		p := filepath.Join(root, dir, name)
		fi, err := os.Stat(p)
		if err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("find %s: %w", name, err)
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("%s not found under the driver root (tried %s)", name, strings.Join(tried, ", "))
}

// driverLibraryPatterns are the driver's own libraries, which its tools
// load: nvidia-smi libnvidia-ml.so.1, the MPS server libcuda.so.1 and what
// that loads in turn.
var driverLibraryPatterns = []string{"libnvidia-*.so*", "libcuda.so*", "libcudadebugger.so*", "libnvcuvid.so*"}

// ToolEnv is the environment in which a tool of the driver under root runs
// from where the plugin is: env with LD_LIBRARY_PATH leading, ahead of any
// it had, to a directory of this process's own (made once per root) of
// links to the driver's libraries under root and nothing else. NVIDIA's
// tools are dynamically linked against the driver's libraries, which the
// plugin's image does not have and its loader does not look for under the
// driver root: without this they do not start. The driver's library
// directory itself is not put on the path: on a host-installed driver it
// is the host's /usr/lib/<triplet>, whose C library, loaded by the image's
// loader, would not match it.
func ToolEnv(root string, env []string) ([]string, error) {
	dir, err := linkedLibraries(root)
	if err != nil {
		return nil, err
	}
	const key = "LD_LIBRARY_PATH="
	out := make([]string, 0, len(env)+1)
	value := dir
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, key); ok {
			if v != "" {
				value += ":" + v
			}
			continue
		}
		out = append(out, e)
	}
	return append(out, key+value), nil
}

var (
	linkedMu  sync.Mutex
	linkedDir = map[string]string{} // by root
)

// linkedLibraries returns the directory of links to the driver's libraries
// under root, made the first time: a fresh directory (os.MkdirTemp: no
// one else's to plant links in), each library linked from the first of
// LibraryDirs that has it. Cleanup removes it.
func linkedLibraries(root string) (string, error) {
	if root == "" {
		root = "/"
	}
	linkedMu.Lock()
	defer linkedMu.Unlock()
	if dir, ok := linkedDir[root]; ok {
		return dir, nil
	}
	dir, err := os.MkdirTemp("", linkDirPattern)
	if err != nil {
		return "", fmt.Errorf("the driver's libraries for its tools: %w", err)
	}
	if err := linkLibraries(root, dir); err != nil {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("the driver's libraries for its tools: %w", err)
	}
	linkedDir[root] = dir
	return dir, nil
}

// linkDirPattern names the directories of links (os.MkdirTemp's pattern).
const linkDirPattern = "gpu-dra-driver-libs-"

// linkLibraries links into dir each of the driver's libraries under root,
// from the first of LibraryDirs that has it.
func linkLibraries(root, dir string) error {
	seen := map[string]bool{}
	for _, d := range LibraryDirs {
		for _, pattern := range driverLibraryPatterns {
			matches, _ := filepath.Glob(filepath.Join(root, d, pattern))
			for _, m := range matches {
				name := filepath.Base(m)
				if seen[name] {
					continue
				}
				seen[name] = true
				if err := os.Symlink(m, filepath.Join(dir, name)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// Cleanup removes the directories of links ToolEnv made in this process
// and forgets them: a later ToolEnv makes a fresh one. A command calls it
// on its way out, once no tool it started with ToolEnv's environment runs
// (a tool's loader reads the links when the tool starts, and an MPS
// control daemon's when it starts a server); tests call it from TestMain,
// so that they leave nothing in the temporary directory. The error names
// each directory not removed.
func Cleanup() error {
	linkedMu.Lock()
	defer linkedMu.Unlock()
	var errs []error
	for root, dir := range linkedDir {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove the links to the driver's libraries under %s: %w", root, err))
			continue
		}
		delete(linkedDir, root)
	}
	return errors.Join(errs...)
}

// RunThenCleanup runs the tests of m (a *testing.M), then Cleanup, and
// returns the exit code: the TestMain of a package whose tests run the
// driver's tools is os.Exit(driverroot.RunThenCleanup(m)). The tests run
// with TMPDIR set to a fresh directory, removed afterwards, so that the
// link directories of processes the tests start and kill (MPS daemons),
// which never reach their own Cleanup, go too. A Cleanup that fails fails
// the tests.
func RunThenCleanup(m interface{ Run() int }) int {
	tmp, err := os.MkdirTemp("", "gdt")
	if err != nil {
		fmt.Fprintln(os.Stderr, "a temporary directory for the tests:", err)
		return 1
	}
	old, had := os.LookupEnv("TMPDIR")
	os.Setenv("TMPDIR", tmp)
	code := m.Run()
	if err := Cleanup(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	if had {
		os.Setenv("TMPDIR", old)
	} else {
		os.Unsetenv("TMPDIR")
	}
	if err := os.RemoveAll(tmp); err != nil {
		fmt.Fprintln(os.Stderr, "remove the tests' temporary directory:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}
