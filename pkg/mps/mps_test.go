package mps

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

// TestDaemonLifecycle runs the simulated control program: start is
// idempotent, a second manager (a restarted plugin) finds the daemon, stop
// ends it and removes its directories.
func TestDaemonLifecycle(t *testing.T) {
	ctx := context.Background()
	roots, err := simhost.Create(t.TempDir(), []int{0}, "580.00", simhosttest.Tools(t))
	if err != nil {
		t.Fatal(err)
	}
	m := NewManager(filepath.Join(t.TempDir(), "mps"), roots.DriverRoot)
	const uid = "2f0e0a4c-0000-4000-8000-000000000001"
	if m.Running(uid) {
		t.Fatal("running before start")
	}
	if err := m.Start(ctx, uid, []string{"GPU-a", "GPU-b"}, Limits{}); err != nil {
		t.Fatal(err)
	}
	d := recorded(t, m, uid)
	if !m.Running(uid) {
		t.Fatal("not running after start")
	}
	if err := m.Start(ctx, uid, []string{"GPU-a", "GPU-b"}, Limits{}); err != nil || recorded(t, m, uid) != d {
		t.Fatalf("second start: %v, daemon %+v -> %+v", err, d, recorded(t, m, uid))
	}
	restarted := NewManager(m.root, roots.DriverRoot)
	if claims, err := restarted.Claims(ctx); err != nil || len(claims) != 1 || claims[0] != uid || !restarted.Running(uid) {
		t.Fatalf("a restarted plugin sees %v (%v), running %v", claims, err, restarted.Running(uid))
	}
	if err := restarted.Stop(ctx, uid); err != nil {
		t.Fatal(err)
	}
	if m.procs().is(d) {
		t.Error("daemon still alive after stop")
	}
	if _, err := os.Stat(m.Dir(uid)); !os.IsNotExist(err) {
		t.Errorf("directory left: %v", err)
	}
	if err := restarted.Stop(ctx, uid); err != nil {
		t.Errorf("second stop: %v", err)
	}
	log, err := os.ReadFile(simhost.MPSLogPath(roots.DriverRoot))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(log), " start ") != 1 || strings.Count(string(log), " quit ") != 1 || !strings.Contains(string(log), "devices=GPU-a,GPU-b") {
		t.Errorf("daemon log:\n%s", log)
	}
}

func TestMissingControlProgram(t *testing.T) {
	m := NewManager(t.TempDir(), t.TempDir())
	err := m.Start(context.Background(), "uid", []string{"GPU-a"}, Limits{})
	if err == nil || !strings.Contains(err.Error(), "nvidia-cuda-mps-control not found under the driver root") {
		t.Errorf("error %v", err)
	}
}

// recorded returns the daemon in the key's record and kills it when the
// test ends, whatever the test did.
func recorded(t *testing.T, m *Manager, key string) identity {
	t.Helper()
	rec, err := m.loadRecord(key)
	if err != nil {
		t.Fatalf("record of %s: %v", key, err)
	}
	t.Cleanup(func() { _ = m.procs().kill(rec.identity) })
	return rec.identity
}
