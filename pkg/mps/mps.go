// Package mps runs one CUDA MPS control daemon per claim that asks for MPS
// sharing, with the driver's own nvidia-cuda-mps-control from the driver
// root.
//
// Each daemon has a directory <root>/<claimUID> with pipe/ (the daemon's
// control pipe and PID file; mounted into the claim's containers, whose
// CUDA runtime connects through it) and log/. The daemon is found by its
// PID file: a plugin restarted as a process finds it still running, and one
// whose container stopped with it starts it again (docs/helm.md); it is
// neither leaked nor started twice.
package mps

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/driverroot"
	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// ControlBinary is the MPS control program.
const ControlBinary = "nvidia-cuda-mps-control"

// pidFile is the control daemon's PID file in its pipe directory.
const pidFile = "nvidia-cuda-mps-control.pid"

// Container paths of the daemon's directories.
const (
	ContainerPipeDir = "/tmp/nvidia-mps"
	ContainerLogDir  = "/var/log/nvidia-mps"
)

// DirMode is the mode of the daemons' directories, owned by root (the
// plugin, whose child the daemon is). pipe/ and log/ are bind-mounted into
// the claim's containers, whose processes may run as any user: they must
// search pipe/ to reach the daemon's pipes and sockets (which the daemon
// creates with modes of its own) and may read log/. They must not create
// or remove entries there: in a 0777 pipe directory one container could
// replace the control pipe that the claim's other containers connect to.
// So 0755, never 0777. The directories above them need nothing more, as
// the container runtime (root) resolves a bind mount's source.
//
// The MPS server that the daemon starts for a client runs as the client's
// user. Should it need to create files in pipe/ or log/ for a non-root
// client, the fix is to give these directories to that user (chown), not
// to open them to everyone.
const DirMode fs.FileMode = 0o755

// Manager starts and stops claims' daemons.
type Manager struct {
	root       string
	driverRoot string
	// Timeout bounds waiting for a daemon to become ready or to stop.
	Timeout time.Duration
}

// NewManager keeps daemon directories under root and runs the control
// program found under driverRoot.
func NewManager(root, driverRoot string) *Manager {
	return &Manager{root: root, driverRoot: driverRoot, Timeout: 10 * time.Second}
}

// Dir is the host directory of a claim's daemon.
func (m *Manager) Dir(claimUID string) string { return filepath.Join(m.root, claimUID) }

// PipeDir is the daemon's pipe directory on the host, mounted into the
// claim's containers at ContainerPipeDir.
func (m *Manager) PipeDir(claimUID string) string { return PipeDirIn(m.Dir(claimUID)) }

// LogDir is the daemon's log directory on the host, mounted at
// ContainerLogDir.
func (m *Manager) LogDir(claimUID string) string { return LogDirIn(m.Dir(claimUID)) }

// PipeDirIn and LogDirIn locate the directories in a daemon directory.
func PipeDirIn(dir string) string { return filepath.Join(dir, "pipe") }

// LogDirIn is the log directory in a daemon directory.
func LogDirIn(dir string) string { return filepath.Join(dir, "log") }

func (m *Manager) control() (string, error) {
	return driverroot.FindBinary(m.driverRoot, ControlBinary)
}

func (m *Manager) env(claimUID string) []string {
	return append(os.Environ(),
		"CUDA_MPS_PIPE_DIRECTORY="+m.PipeDir(claimUID),
		"CUDA_MPS_LOG_DIRECTORY="+m.LogDir(claimUID))
}

// Start starts the claim's daemon for the GPUs (UUIDs, MIG or whole) and
// waits until it is ready. A daemon that already runs is kept: Start is
// idempotent.
func (m *Manager) Start(ctx context.Context, claimUID string, gpuUUIDs []string) error {
	if m.Running(claimUID) {
		klog.FromContext(ctx).V(2).Info("MPS control daemon already running", "claimUID", claimUID)
		return nil
	}
	bin, err := m.control()
	if err != nil {
		return err
	}
	for _, dir := range []string{m.root, m.Dir(claimUID), m.PipeDir(claimUID), m.LogDir(claimUID)} {
		if err := hostfs.EnsureDir(klog.FromContext(ctx), dir, DirMode); err != nil {
			return fmt.Errorf("MPS directory: %w", err)
		}
	}
	cmd := exec.CommandContext(ctx, bin, "-d")
	cmd.Env = append(m.env(claimUID), "CUDA_VISIBLE_DEVICES="+strings.Join(gpuUUIDs, ","))
	// The daemon must not die with the plugin's process group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("start MPS control daemon: %w: %s", err, strings.TrimSpace(string(out)))
	}
	deadline := time.Now().Add(m.Timeout)
	for !m.Running(claimUID) {
		if time.Now().After(deadline) {
			return fmt.Errorf("MPS control daemon not ready after %s (log: %s)", m.Timeout, m.LogDir(claimUID))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	klog.FromContext(ctx).Info("MPS control daemon started", "claimUID", claimUID, "gpus", gpuUUIDs, "pid", m.pid(claimUID))
	return nil
}

// pid returns the daemon's PID from its PID file, 0 if none.
func (m *Manager) pid(claimUID string) int {
	data, err := os.ReadFile(filepath.Join(m.PipeDir(claimUID), pidFile))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// Running reports whether the claim's daemon runs.
func (m *Manager) Running(claimUID string) bool {
	pid := m.pid(claimUID)
	return pid > 0 && alive(pid)
}

// alive reports whether a process exists and has not exited: a daemon
// is nobody's child once its starter exits, so after it exits it may stay
// a zombie until init reaps it.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // no procfs: trust kill
	}
	// The state follows the command name, which is in parentheses.
	if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

// Stop asks the claim's daemon to quit, waits for it, and removes its
// directories. Stopping a claim without a daemon is not an error.
func (m *Manager) Stop(ctx context.Context, claimUID string) error {
	logger := klog.FromContext(ctx)
	if pid := m.pid(claimUID); pid > 0 && m.Running(claimUID) {
		bin, err := m.control()
		if err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, bin)
		cmd.Env = m.env(claimUID)
		cmd.Stdin = strings.NewReader("quit\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("stop MPS control daemon: %w: %s", err, strings.TrimSpace(string(out)))
		}
		deadline := time.Now().Add(m.Timeout)
		for alive(pid) {
			if time.Now().After(deadline) {
				logger.Info("MPS control daemon did not quit; killing it", "claimUID", claimUID, "pid", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		logger.Info("MPS control daemon stopped", "claimUID", claimUID, "pid", pid)
	}
	if err := os.RemoveAll(m.Dir(claimUID)); err != nil {
		return fmt.Errorf("remove MPS directory: %w", err)
	}
	return nil
}

// Claims lists the claim UIDs that have a daemon directory.
func (m *Manager) Claims() ([]string, error) {
	entries, err := os.ReadDir(m.root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list MPS daemons: %w", err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
