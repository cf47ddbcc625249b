package mps

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// forgeRecord writes key's record naming the live process pid with its
// true identity (PID, start time, boot, executable), in the daemon's
// directory, as whoever can write that directory could.
func forgeRecord(t *testing.T, m *Manager, key string, pid int) identity {
	t.Helper()
	for _, dir := range []string{m.root, m.Dir(key), m.PipeDir(key), m.LogDir(key)} {
		if err := hostfs.EnsureDir(ktesting.NewLogger(t, ktesting.NewConfig()), dir, DirMode); err != nil {
			t.Fatal(err)
		}
	}
	id, err := m.procs().identify(pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.saveRecord(key, record{identity: id}); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestRecordOfAnotherProgramIsNoDaemon: a record that names a live process
// with all of its identity right, but whose program is not the driver
// root's control daemon (here a plain sleep), names no daemon: it is not
// running, nothing waits on it, and neither Stop nor Start signals it.
// Before, the identity alone decided and Stop SIGKILLed the sleep.
func TestRecordOfAnotherProgramIsNoDaemon(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := newTestManager(t)
	const key = "2f0e0a4c-0000-4000-8000-000000000030"
	victim := stranger(t)
	id := forgeRecord(t, m, key, victim.Process.Pid)
	if !m.procs().is(id) {
		t.Fatal("the forged record does not name the sleep process")
	}
	if m.Running(key) {
		t.Error("a record of sleep reads as a running daemon")
	}
	if err := m.Stop(ctx, key); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if !alive(t, victim) {
		t.Fatal("Stop killed the process a record of another program named")
	}

	// Start does not take it for the daemon either: it starts the real
	// one, whose record replaces the forged one, and stops that.
	forgeRecord(t, m, key, victim.Process.Pid)
	if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{}); err != nil {
		t.Fatalf("start: %v", err)
	}
	d := recorded(t, m, key)
	if d.PID == victim.Process.Pid || !m.Running(key) {
		t.Fatalf("the daemon after start is %+v", d)
	}
	if err := m.Stop(ctx, key); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if !alive(t, victim) {
		t.Error("the sleep process was killed")
	}
	if m.procs().is(d) {
		t.Error("the daemon still runs")
	}
}

// startUnsupervised starts key's daemon as a supervisor does, as the
// test's child, and records it, with no supervisor: one whose supervisor
// died with a plugin process that ran it. It returns the daemon and how
// it exited.
func startUnsupervised(t *testing.T, m *Manager, key string) (identity, <-chan error) {
	t.Helper()
	for _, dir := range []string{m.root, m.Dir(key), m.PipeDir(key), m.LogDir(key)} {
		if err := hostfs.EnsureDir(ktesting.NewLogger(t, ktesting.NewConfig()), dir, DirMode); err != nil {
			t.Fatal(err)
		}
	}
	bin, err := m.control()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-f")
	cmd.Env = append(envIn(m.Dir(key)), "CUDA_VISIBLE_DEVICES=GPU-a")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	id := forgeRecord(t, m, key, cmd.Process.Pid)
	waitFor(t, "daemon ready", func() bool { return m.ready(key) })
	return id, exited
}

// reinstall replaces the control program of m's driver root with a copy:
// the same program in another file (another inode), as a reinstalled
// driver has.
func reinstall(t *testing.T, m *Manager) {
	t.Helper()
	bin, err := m.control()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(bin), ".reinstall")
	if err := os.WriteFile(tmp, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
}

// TestDaemonOfAReinstalledDriver: the driver root was reinstalled (its
// control program is another file, another inode) while a daemon of the
// old installation runs. As for a previous release's daemon
// (docs/security.md), that process is no longer taken for the daemon: it
// is never signalled, but asked through its pipe directory to quit, at
// unprepare and before a new daemon is started from the current
// installation.
func TestDaemonOfAReinstalledDriver(t *testing.T) {
	t.Run("stop", func(t *testing.T) {
		_, ctx := ktesting.NewTestContext(t)
		m := newTestManager(t)
		const key = "2f0e0a4c-0000-4000-8000-000000000031"
		old, exited := startUnsupervised(t, m, key)
		if !m.Running(key) {
			t.Fatal("the daemon does not run before the driver is reinstalled")
		}
		reinstall(t, m)
		if m.Running(key) {
			t.Error("the daemon of the driver installed before reads as running")
		}
		if err := m.Stop(ctx, key); err != nil {
			t.Fatalf("stop: %v", err)
		}
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("the old daemon did not quit by itself: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the old daemon %d still runs after the unprepare", old.PID)
		}
		if _, err := os.Lstat(m.Dir(key)); !os.IsNotExist(err) {
			t.Errorf("directory left: %v", err)
		}
	})
	t.Run("start", func(t *testing.T) {
		_, ctx := ktesting.NewTestContext(t)
		m := newTestManager(t)
		const key = "2f0e0a4c-0000-4000-8000-000000000032"
		old, exited := startUnsupervised(t, m, key)
		reinstall(t, m)
		if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{}); err != nil {
			t.Fatalf("start: %v", err)
		}
		now := recorded(t, m, key)
		if now == old {
			t.Fatal("no new daemon")
		}
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Fatalf("the old daemon %d still runs beside the new one", old.PID)
		}
		if err := m.Stop(ctx, key); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if m.procs().is(now) {
			t.Error("the new daemon still runs")
		}
		log, err := os.ReadFile(simhost.MPSLogPath(m.driverRoot))
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(log), " quit "); n != 2 {
			t.Errorf("%d quit commands, want 2 (the old daemon's and the new one's):\n%s", n, log)
		}
	})
}

// TestSupervisorSignalsNoProcessOfAnotherProgram: a supervisor that starts
// (its pod restarted by the kubelet) in a directory whose record names a
// live process of another program leaves that process alone and starts
// its daemon. Before, it killed whatever the record's identity named.
func TestSupervisorSignalsNoProcessOfAnotherProgram(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := newTestManager(t)
	const key = "2f0e0a4c-0000-4000-8000-000000000035"
	victim := stranger(t)
	forgeRecord(t, m, key, victim.Process.Pid)
	s := &Supervisor{Dir: m.Dir(key), DriverRoot: m.driverRoot, GPUs: []string{"GPU-a"}, ProcRoot: "/", Timeout: time.Second}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	waitFor(t, "the supervisor's daemon recorded", func() bool {
		d := m.recorded(key)
		return d != nil && d.PID != victim.Process.Pid
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
	if !alive(t, victim) {
		t.Error("the supervisor killed the process of another program its directory's record named")
	}
}
