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
