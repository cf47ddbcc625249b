// Package driverroot finds the NVIDIA driver's own tools (nvidia-smi,
// nvidia-cuda-mps-control) under the driver root: "/" on a standard node,
// "/run/nvidia/driver" with the GPU operator, a simulated tree in tests.
package driverroot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// binaryDirs are where a driver installation keeps its tools, in the order
// they are searched.
var binaryDirs = []string{"usr/bin", "bin", "usr/sbin"}

// FindBinary returns the path of the tool name under root ("" means "/").
// The error lists the paths tried.
func FindBinary(root, name string) (string, error) {
	if root == "" {
		root = "/"
	}
	var tried []string
	for _, dir := range binaryDirs {
		p := filepath.Join(root, dir, name)
		_, err := os.Stat(p)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("find %s: %w", name, err)
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("%s not found under the driver root (tried %s)", name, strings.Join(tried, ", "))
}
