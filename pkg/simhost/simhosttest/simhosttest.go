// Package simhosttest helps the tests of the simulated host: it builds the
// gpu-sim-tools program that simhost.Create installs, finds free ports for
// its daemons and waits for them.
package simhosttest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

var (
	once     sync.Once
	built    string
	buildErr error
)

// Tools returns the path of a gpu-sim-tools program built from this
// module's cmd/gpu-sim-tools, without cgo. It is built once per test
// process (the go build cache makes later processes fast) into a directory
// of this module checkout and user under os.TempDir(), replaced there by a
// rename so that concurrent test processes do not see half a program. A
// failed build fails the test with go build's output.
func Tools(t testing.TB) string {
	t.Helper()
	once.Do(func() { built, buildErr = build() })
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

func build() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", fmt.Errorf("build gpu-sim-tools: %w", err)
	}
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("gpu-dra-simhosttest-%d", os.Getuid()), hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("build gpu-sim-tools: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", fmt.Errorf("build gpu-sim-tools: %w", err)
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("go", "build", "-o", filepath.Join(tmp, "gpu-sim-tools"), "./cmd/gpu-sim-tools")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("CGO_ENABLED=0 go build ./cmd/gpu-sim-tools in %s: %w\n%s", root, err, out)
	}
	path := filepath.Join(dir, "gpu-sim-tools")
	if err := os.Rename(filepath.Join(tmp, "gpu-sim-tools"), path); err != nil {
		return "", fmt.Errorf("build gpu-sim-tools: %w", err)
	}
	return path, nil
}

// moduleRoot is the directory of go.mod: three above this file, or, where
// the source path is not at hand (-trimpath), what go env GOMOD says.
func moduleRoot() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok {
		root := filepath.Join(filepath.Dir(file), "../../..")
		if _, err := os.Stat(filepath.Join(root, "cmd/gpu-sim-tools")); err == nil {
			return root, nil
		}
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not in a module: cannot find cmd/gpu-sim-tools")
	}
	return filepath.Dir(gomod), nil
}

var (
	linkedOnce     sync.Once
	linkedBuilt    string
	linkedBuildErr error
)

// LinkedTools returns the path of a gpu-sim-tools program built with cgo
// and -tags simnvmllink, once per test process: dynamically linked against
// libnvidia-ml.so.1 (NVML's build, linked under that name), as NVIDIA's
// nvidia-smi and nvidia-cuda-mps-control are, so that it starts only where
// the loader finds the driver's library. A failed build fails the test.
func LinkedTools(t testing.TB) string {
	t.Helper()
	lib := NVML(t)
	linkedOnce.Do(func() { linkedBuilt, linkedBuildErr = buildLinked(lib) })
	if linkedBuildErr != nil {
		t.Fatal(linkedBuildErr)
	}
	return linkedBuilt
}

func buildLinked(lib string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", fmt.Errorf("build gpu-sim-tools linked against NVML: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(lib), "build-")
	if err != nil {
		return "", fmt.Errorf("build gpu-sim-tools linked against NVML: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Symlink(lib, filepath.Join(tmp, "libnvidia-ml.so.1")); err != nil {
		return "", fmt.Errorf("build gpu-sim-tools linked against NVML: %w", err)
	}
	cmd := exec.Command("go", "build", "-tags", "simnvmllink", "-o", filepath.Join(tmp, "gpu-sim-tools"), "./cmd/gpu-sim-tools")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "CGO_LDFLAGS=-L"+tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -tags simnvmllink ./cmd/gpu-sim-tools in %s: %w\n%s", root, err, out)
	}
	path := filepath.Join(filepath.Dir(lib), "gpu-sim-tools-linked")
	if err := os.Rename(filepath.Join(tmp, "gpu-sim-tools"), path); err != nil {
		return "", fmt.Errorf("build gpu-sim-tools linked against NVML: %w", err)
	}
	return path, nil
}

var (
	nvmlOnce     sync.Once
	nvmlBuilt    string
	nvmlBuildErr error
)

// NVML returns the path of the simulated libnvidia-ml.so.1 built from this
// module's pkg/simhost/libnvml with its build.sh (a C compiler is needed),
// once per test process, into the same directory as Tools. A failed build
// fails the test with the script's output.
func NVML(t testing.TB) string {
	t.Helper()
	nvmlOnce.Do(func() { nvmlBuilt, nvmlBuildErr = buildNVML() })
	if nvmlBuildErr != nil {
		t.Fatal(nvmlBuildErr)
	}
	return nvmlBuilt
}

func buildNVML() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", fmt.Errorf("build the simulated NVML library: %w", err)
	}
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("gpu-dra-simhosttest-%d", os.Getuid()), hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("build the simulated NVML library: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", fmt.Errorf("build the simulated NVML library: %w", err)
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "libnvidia-ml.so.1")
	cmd := exec.Command(filepath.Join(root, "pkg/simhost/libnvml/build.sh"), out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("pkg/simhost/libnvml/build.sh: %w\n%s", err, b)
	}
	// Named by its content: a library another test process mapped is never
	// rewritten under it.
	data, err := os.ReadFile(out)
	if err != nil {
		return "", fmt.Errorf("build the simulated NVML library: %w", err)
	}
	libSum := sha256.Sum256(data)
	path := filepath.Join(dir, "libnvidia-ml-"+hex.EncodeToString(libSum[:8])+".so.1")
	if err := os.Rename(out, path); err != nil {
		return "", fmt.Errorf("build the simulated NVML library: %w", err)
	}
	return path, nil
}
