package mps

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

// The tests here are a tenant's container at work: it has the daemon's
// pipe/ mounted read-write and, as root, writes there what it likes. The
// plugin must neither signal a process that is not its daemon nor block
// or exhaust itself on what it finds.

// newTestManager is a Manager over the simulated driver with a short
// Timeout (the wait before a daemon that will not quit is killed).
func newTestManager(t *testing.T) *Manager {
	t.Helper()
	roots, err := simhost.Create(t.TempDir(), []int{0}, "580.00", simhosttest.Tools(t))
	if err != nil {
		t.Fatal(err)
	}
	m := NewManager(filepath.Join(t.TempDir(), "mps"), roots.DriverRoot)
	m.Timeout = time.Second
	return m
}

// stranger starts a host process that is not a daemon: the victim.
func stranger(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	return cmd
}

// alive reports whether the test's own child cmd still runs (it is not
// reaped until the test ends, so its PID is not reused meanwhile).
func alive(t *testing.T, cmd *exec.Cmd) bool {
	t.Helper()
	state, _, err := procs{root: "/"}.stat(cmd.Process.Pid)
	return err == nil && state != 'Z'
}

// plant is what a container writes in place of the daemon's PID file.
type plant struct {
	name  string
	write func(t *testing.T, path string, victim int)
}

var plants = []plant{
	{"host PID of another process", func(t *testing.T, path string, victim int) {
		writeFile(t, path, strconv.Itoa(victim)+"\n")
	}},
	{"FIFO", func(t *testing.T, path string, _ int) {
		if err := syscall.Mkfifo(path, 0o644); err != nil {
			t.Fatal(err)
		}
	}},
	{"symlink to /dev/zero", func(t *testing.T, path string, _ int) {
		if err := os.Symlink("/dev/zero", path); err != nil {
			t.Fatal(err)
		}
	}},
	{"symlink to a file with a host PID", func(t *testing.T, path string, victim int) {
		target := filepath.Join(t.TempDir(), "pid")
		writeFile(t, target, strconv.Itoa(victim)+"\n")
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
	}},
	{"a host PID padded to megabytes", func(t *testing.T, path string, victim int) {
		writeFile(t, path, strconv.Itoa(victim)+strings.Repeat(" ", 8<<20))
	}},
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replacePIDFile swaps the daemon's PID file for what p writes.
func replacePIDFile(t *testing.T, m *Manager, key string, p plant, victim int) {
	t.Helper()
	path := filepath.Join(m.PipeDir(key), legacyPIDFile)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	p.write(t, path, victim)
}

// TestStopWithAHostilePIDFile: whatever a container put in place of the
// PID file, unprepare stops the real daemon, returns, and leaves the host
// process named in the file alive. The code before the plugin kept its
// own record SIGKILLed the named process, blocked forever on the FIFO
// (while holding the GPU's lock) and grew its read of /dev/zero until the
// plugin was OOM-killed.
func TestStopWithAHostilePIDFile(t *testing.T) {
	for _, p := range plants {
		t.Run(p.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			m := newTestManager(t)
			const key = "2f0e0a4c-0000-4000-8000-000000000010"
			if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{}); err != nil {
				t.Fatal(err)
			}
			d := recorded(t, m, key)
			victim := stranger(t)
			replacePIDFile(t, m, key, p, victim.Process.Pid)
			// A restarted plugin (reconcile) finds the daemon by its record.
			restarted := NewManager(m.root, m.driverRoot)
			restarted.Timeout = m.Timeout
			if !restarted.Running(key) {
				t.Error("a restarted plugin does not find the running daemon")
			}
			if err := restarted.Stop(ctx, key); err != nil {
				t.Fatalf("stop: %v", err)
			}
			if !alive(t, victim) {
				t.Error("the process named in the PID file was killed")
			}
			if m.procs().is(d) {
				t.Error("the daemon still runs")
			}
			if _, err := os.Lstat(m.Dir(key)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("directory left: %v", err)
			}
		})
	}
}

// TestGoneDaemonWithAHostilePIDFile: the daemon is gone (the plugin's
// container stopped, or the node rebooted and PIDs are handed out again)
// and pipe/ holds what a container wrote. The daemon reads as gone, a new
// one is started, and neither that nor stopping it touches the process
// named in the file. Before, a live PID in the file read as a running
// daemon, so none was started, and stopping it killed that process.
func TestGoneDaemonWithAHostilePIDFile(t *testing.T) {
	for _, p := range plants {
		t.Run(p.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			m := newTestManager(t)
			const key = "2f0e0a4c-0000-4000-8000-000000000011"
			if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{}); err != nil {
				t.Fatal(err)
			}
			old := recorded(t, m, key)
			if err := m.procs().kill(old); err != nil {
				t.Fatal(err)
			}
			if !m.waitGone(ctx, old) {
				t.Fatal("daemon survived SIGKILL")
			}
			victim := stranger(t)
			replacePIDFile(t, m, key, p, victim.Process.Pid)
			restarted := NewManager(m.root, m.driverRoot)
			restarted.Timeout = m.Timeout
			if restarted.Running(key) {
				t.Fatal("a dead daemon reads as running")
			}
			if err := restarted.Start(ctx, key, []string{"GPU-a"}, Limits{}); err != nil {
				t.Fatalf("start again: %v", err)
			}
			if now := recorded(t, restarted, key); now == old || !restarted.Running(key) {
				t.Fatalf("no new daemon: %+v after %+v", now, old)
			}
			if err := restarted.Stop(ctx, key); err != nil {
				t.Fatalf("stop: %v", err)
			}
			if !alive(t, victim) {
				t.Error("the process named in the PID file was killed")
			}
		})
	}
}

// TestStopKillsADaemonThatWillNotQuit: a container replaced the control
// pipe, so the quit command fails; the plugin kills its (verified) daemon
// instead of failing the unprepare forever and leaking the daemon, as it
// did before.
func TestStopKillsADaemonThatWillNotQuit(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := newTestManager(t)
	const key = "2f0e0a4c-0000-4000-8000-000000000012"
	if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{}); err != nil {
		t.Fatal(err)
	}
	d := recorded(t, m, key)
	control := filepath.Join(m.PipeDir(key), controlPipe)
	if err := os.Remove(control); err != nil {
		t.Fatal(err)
	}
	// The simulated daemon lives while its control entry exists; a
	// non-empty directory there is one its quit command cannot remove.
	if err := os.MkdirAll(filepath.Join(control, "stuck"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx, key); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if m.procs().is(d) {
		t.Error("the daemon still runs")
	}
}

// TestStartFailsWhenTheRecordCannotBeWritten: a daemon the plugin could
// not record would be unknown to it after a restart, so Start stops it
// again and returns the write's error.
func TestStartFailsWhenTheRecordCannotBeWritten(t *testing.T) {
	m := newTestManager(t)
	var attempted []record
	m.writeFile = func(path string, data []byte) error {
		if filepath.Base(path) != recordFile {
			return hostfs.WriteFileAtomic(path, data)
		}
		var rec record
		if err := json.Unmarshal(data, &rec); err != nil {
			t.Error(err)
		}
		attempted = append(attempted, rec)
		return syscall.ENOSPC
	}
	const key = "2f0e0a4c-0000-4000-8000-000000000013"
	_, ctx := ktesting.NewTestContext(t)
	err := m.Start(ctx, key, []string{"GPU-a"}, Limits{})
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("start: %v, want ENOSPC", err)
	}
	if len(attempted) != 1 || attempted[0].PID <= 0 {
		t.Fatalf("records attempted: %+v", attempted)
	}
	if m.Running(key) {
		t.Error("running without a record")
	}
	if m.procs().is(attempted[0].identity) {
		t.Errorf("the unrecorded daemon %d still runs", attempted[0].PID)
	}
}

// TestStopWritesNothingThroughAPlantedControlPipe: a root container
// replaced its daemon's control pipe with a symlink to a file of the
// host. The quit command is written into the control pipe by the driver's
// client, as root, so it is not sent through a symlink: the file is left
// as it was and the verified daemon is killed instead.
func TestStopWritesNothingThroughAPlantedControlPipe(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := newTestManager(t)
	const key = "2f0e0a4c-0000-4000-8000-000000000013"
	if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{}); err != nil {
		t.Fatal(err)
	}
	d := recorded(t, m, key)
	victim := filepath.Join(t.TempDir(), "checkpoint.json")
	writeFile(t, victim, "precious")
	control := filepath.Join(m.PipeDir(key), controlPipe)
	if err := os.Remove(control); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, control); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx, key); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if got, err := os.ReadFile(victim); err != nil || string(got) != "precious" {
		t.Errorf("the file the planted control pipe named now holds %q (%v)", got, err)
	}
	if m.procs().is(d) {
		t.Error("the daemon still runs")
	}
}

// TestStopRemovesADeepTreeInPipe: a container made a chain of directories
// in pipe/ deeper than the plugin's open-file limit; the claim's
// unprepare still removes the daemon's directory (os.RemoveAll failed on
// it at every retry, so the GPU stayed held).
func TestStopRemovesADeepTreeInPipe(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := newTestManager(t)
	const key = "2f0e0a4c-0000-4000-8000-000000000034"
	if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{}); err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Open(m.PipeDir(key), syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 600 {
		if err := syscall.Mkdirat(fd, "d", 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := syscall.Openat(fd, "d", syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
		syscall.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	syscall.Close(fd)
	var was syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &was); err != nil {
		t.Fatal(err)
	}
	lower := was
	lower.Cur = 256
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lower); err != nil {
		t.Fatal(err)
	}
	err = m.Stop(ctx, key)
	if rerr := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &was); rerr != nil {
		t.Fatal(rerr)
	}
	if err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := os.Lstat(m.Dir(key)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the daemon's directory is still there: %v", err)
	}
}
