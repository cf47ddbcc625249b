package mps

import (
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
)

// startLegacy starts key's daemon as a previous release did: directories,
// then "nvidia-cuda-mps-control -d", known only by its PID file in pipe/.
func startLegacy(t *testing.T, m *Manager, key string) identity {
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
	cmd := exec.Command(bin, "-d")
	cmd.Env = append(envIn(m.Dir(key)), "CUDA_VISIBLE_DEVICES=GPU-a")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("start a previous release's daemon: %v: %s", err, out)
	}
	var id identity
	for deadline := time.Now().Add(10 * time.Second); ; {
		data, err := os.ReadFile(filepath.Join(m.PipeDir(key), legacyPIDFile))
		if err == nil {
			pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
			if id, err = m.procs().identify(pid); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no daemon in the PID file: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() { _ = m.procs().kill(id) })
	return id
}

// TestUpgradeAdoptsAPreviousReleasesDaemon: the daemons of a previous
// release, which knew them only by their PID files, are found on upgrade,
// recorded, and stopped at unprepare; the PID file of one claim naming
// another claim's daemon adopts nothing.
func TestUpgradeAdoptsAPreviousReleasesDaemon(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	old := newTestManager(t)
	const a, b = "2f0e0a4c-0000-4000-8000-0000000000a1", "2f0e0a4c-0000-4000-8000-0000000000b1"
	startLegacy(t, old, a)
	db := startLegacy(t, old, b)
	// A tenant of claim a names b's daemon in a's PID file. The
	// simulated daemon a lives on without it.
	writeFile(t, filepath.Join(old.PipeDir(a), legacyPIDFile), strconv.Itoa(db.PID)+"\n")

	m := NewManager(old.root, old.driverRoot)
	m.Timeout = time.Second
	if !m.Running(b) {
		t.Fatal("the previous release's daemon is not found")
	}
	if rec, err := m.loadRecord(b); err != nil || !rec.Adopted || rec.identity != db {
		t.Errorf("record %+v (%v), want %+v adopted", rec, err, db)
	}
	if m.Running(a) {
		t.Error("claim a adopted claim b's daemon")
	}
	if err := m.Stop(ctx, a); err != nil {
		t.Fatalf("stop a: %v", err)
	}
	if !m.procs().is(db) || !m.Running(b) {
		t.Fatal("stopping claim a stopped claim b's daemon")
	}
	if err := m.Stop(ctx, b); err != nil {
		t.Fatalf("stop b: %v", err)
	}
	if m.procs().is(db) {
		t.Error("b's daemon still runs")
	}
}

// TestLegacyAdoptionChecks: on a fake /proc, the process named by a
// previous release's PID file is adopted only if it runs the driver
// root's control program, serves this pipe directory and started between
// the directory's creation and this plugin's start.
func TestLegacyAdoptionChecks(t *testing.T) {
	const key, pid = "2f0e0a4c-0000-4000-8000-000000000020", 4242
	now := time.Now().Truncate(time.Second)
	boot, made := now.Add(-1000*time.Second), now.Add(-100*time.Second)
	ticks := func(at time.Time) uint64 { return uint64(at.Sub(boot) / (time.Second / clockTicks)) }
	for _, tc := range []struct {
		name    string
		pidFile string // "" for the PID
		exe     string // "control" or "other"
		pipe    string // "" for the key's own
		started time.Time
		failIO  bool
		want    bool
		err     bool
	}{
		{name: "the previous release's daemon", exe: "control", started: made.Add(time.Second), want: true},
		{name: "the daemon, but its record cannot be written", exe: "control", started: made.Add(time.Second), failIO: true, err: true},
		{name: "another program", exe: "other", started: made.Add(time.Second)},
		{name: "another claim's daemon", exe: "control", pipe: "/var/lib/other/pipe", started: made.Add(time.Second)},
		{name: "started before its directory", exe: "control", started: made.Add(-time.Minute)},
		{name: "started after this plugin", exe: "control", started: now.Add(time.Minute)},
		{name: "no PID", pidFile: "control\n", exe: "control", started: made.Add(time.Second)},
		{name: "PID 0", pidFile: "0\n", exe: "control", started: made.Add(time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			driverRoot := t.TempDir()
			control := filepath.Join(driverRoot, "usr/bin", ControlBinary)
			other := filepath.Join(driverRoot, "usr/bin/sleep")
			for _, p := range []string{control, other} {
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				writeFile(t, p, "#!")
			}
			m := NewManager(filepath.Join(t.TempDir(), "mps"), driverRoot)
			m.created = now
			f := newFakeProc(t, "boot-1", boot)
			m.ProcRoot = f.root
			if tc.failIO {
				m.writeFile = func(string, []byte) error { return syscall.EIO }
			}
			for _, dir := range []string{m.root, m.Dir(key), m.PipeDir(key), m.LogDir(key)} {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			pidFile := tc.pidFile
			if pidFile == "" {
				pidFile = strconv.Itoa(pid) + "\n"
			}
			writeFile(t, filepath.Join(m.PipeDir(key), legacyPIDFile), pidFile)
			if err := os.Chtimes(m.Dir(key), made, made); err != nil {
				t.Fatal(err)
			}
			exe := map[string]string{"control": control, "other": other}[tc.exe]
			pipe := tc.pipe
			if pipe == "" {
				pipe = m.PipeDir(key)
			}
			f.process(t, pid, ControlBinary, 'S', ticks(tc.started), exe, []string{"PATH=/bin", "CUDA_MPS_PIPE_DIRECTORY=" + pipe})

			d, err := m.lookup(ktesting.NewLogger(t, ktesting.NewConfig()), key)
			if (err != nil) != tc.err {
				t.Errorf("error %v, want one: %v", err, tc.err)
			}
			if got := d != nil && err == nil; got != tc.want {
				t.Fatalf("adopted %v, want %v", got, tc.want)
			}
			rec, err := m.loadRecord(key)
			if tc.want {
				if err != nil || !rec.Adopted || rec.PID != pid || rec.BootID != "boot-1" {
					t.Errorf("record %+v (%v)", rec, err)
				}
			} else if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a record of a process not adopted: %+v (%v)", rec, err)
			}
		})
	}
}
