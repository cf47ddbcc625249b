package mps

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// waitFor polls cond until it holds, failing the test after a minute: a
// bound on a hang, not a measure of speed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still not %s after a minute", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCrashedDaemonIsRestarted: the supervisor of a daemon that died
// fails, and is run again, which starts a new daemon on a cleared pipe
// directory (the kubelet does so for a daemon pod; the plugin for its
// own supervisors).
func TestCrashedDaemonIsRestarted(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := newTestManager(t)
	const key = "2f0e0a4c-0000-4000-8000-000000000021"
	if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{}); err != nil {
		t.Fatal(err)
	}
	first := recorded(t, m, key)
	if err := m.procs().kill(first); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restarted", func() bool {
		d := m.recorded(key)
		return d != nil && *d != first && m.ready(key)
	})
	second := recorded(t, m, key)
	if err := m.launcher().Failure(ctx, key); err != nil {
		t.Errorf("failure %v of a restarted daemon", err)
	}
	if err := m.Stop(ctx, key); err != nil {
		t.Fatal(err)
	}
	if m.procs().is(second) {
		t.Error("the restarted daemon still runs after stop")
	}
	if keys, err := m.Claims(ctx); err != nil || len(keys) != 0 {
		t.Errorf("left after stop: %v (%v)", keys, err)
	}
}

// TestSupervisorRun: a supervisor told to stop quits its daemon and ends
// without an error; one whose directory is gone (the claim unprepared by
// a plugin that knows no supervisor) ends with ErrDirectoryGone, so that
// it is not run again.
func TestSupervisorRun(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := newTestManager(t)
	const key = "2f0e0a4c-0000-4000-8000-000000000022"
	for _, dir := range []string{m.root, m.Dir(key), m.PipeDir(key), m.LogDir(key)} {
		if err := os.MkdirAll(dir, DirMode); err != nil {
			t.Fatal(err)
		}
	}
	s := &Supervisor{Dir: m.Dir(key), DriverRoot: m.driverRoot, GPUs: []string{"GPU-a"}, Timeout: time.Second}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	waitFor(t, "running", func() bool { return m.recorded(key) != nil && m.ready(key) })
	d := recorded(t, m, key)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("stopped supervisor: %v", err)
	}
	if m.procs().is(d) {
		t.Error("the daemon outlived its stopped supervisor")
	}
	log, err := os.ReadFile(simhost.MPSLogPath(m.driverRoot))
	if err != nil || strings.Count(string(log), " quit ") != 1 {
		t.Errorf("the daemon was not asked to quit (%v):\n%s", err, log)
	}

	go func() { done <- s.Run(ctx) }()
	waitFor(t, "running again", func() bool { return m.recorded(key) != nil && m.ready(key) })
	d = recorded(t, m, key)
	if err := os.RemoveAll(m.Dir(key)); err != nil {
		t.Fatal(err)
	}
	if err := m.procs().kill(d); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrDirectoryGone) {
		t.Errorf("supervisor of a removed directory: %v, want ErrDirectoryGone", err)
	}
	if err := s.Run(ctx); !errors.Is(err, ErrDirectoryGone) {
		t.Errorf("supervisor started without its directory: %v, want ErrDirectoryGone", err)
	}
}

// unreachable is a Launcher whose supervisors run but cannot be listed or
// removed: pods, with the API server away.
type unreachable struct{ Launcher }

func (unreachable) Remove(context.Context, string) (bool, error) {
	return false, errors.New("the API server is away")
}

func (unreachable) Keys(context.Context) ([]string, error) {
	return nil, errors.New("the API server is away")
}

// TestStopWithoutTheLauncher: a claim unprepared while its supervisor
// cannot be reached still has its daemon stopped and its directory
// removed, and the supervisor then ends by itself instead of starting
// the daemon again; listing daemons works from their directories.
func TestStopWithoutTheLauncher(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := newTestManager(t)
	const key = "2f0e0a4c-0000-4000-8000-000000000023"
	if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{}); err != nil {
		t.Fatal(err)
	}
	d := recorded(t, m, key)
	run := m.inProcess.runs[key]
	m.Launcher = unreachable{m.inProcess}
	if keys, err := m.Claims(ctx); err != nil || len(keys) != 1 || keys[0] != key {
		t.Fatalf("daemons %v (%v), want %s from its directory", keys, err, key)
	}
	if err := m.Stop(ctx, key); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if m.procs().is(d) {
		t.Error("the daemon still runs")
	}
	select {
	case <-run.done:
	case <-time.After(time.Minute):
		t.Fatal("the supervisor still runs a minute after its directory went")
	}
	if _, err := os.Stat(m.Dir(key)); !os.IsNotExist(err) {
		t.Errorf("directory: %v", err)
	}
}

// TestSecondSupervisorLeavesARunningSupervisorsDaemonAlone: two supervisors
// of one directory can run at once (the pod of an abandoned Start, deleted
// but started by a slow kubelet, and its successor's pod; or a terminating
// pod whose container the kubelet starts before it sees the deletion). The
// second must not kill the daemon the first one still supervises and
// serves clients with: A supervisor whose context is already done must not start anything
// either.
func TestSecondSupervisorLeavesARunningSupervisorsDaemonAlone(t *testing.T) {
	for _, tc := range []struct {
		name string
		// secondCtx is the second supervisor's context: live, or done
		// before it runs (a pod deleted before its container started).
		cancelled bool
	}{
		{name: "live second supervisor"},
		{name: "second supervisor already told to stop", cancelled: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			m := newTestManager(t)
			const key = "2f0e0a4c-0000-4000-8000-0000000000a1"
			for _, dir := range []string{m.root, m.Dir(key), m.PipeDir(key), m.LogDir(key)} {
				if err := os.MkdirAll(dir, DirMode); err != nil {
					t.Fatal(err)
				}
			}
			first := &Supervisor{Dir: m.Dir(key), DriverRoot: m.driverRoot, GPUs: []string{"GPU-a"}, Timeout: time.Second}
			ctx1, cancel1 := context.WithCancel(ctx)
			done1 := make(chan error, 1)
			go func() { done1 <- first.Run(ctx1) }()
			t.Cleanup(func() { cancel1(); <-done1 })
			waitFor(t, "first daemon running", func() bool { return m.recorded(key) != nil && m.ready(key) })
			d1 := recorded(t, m, key)

			second := &Supervisor{Dir: m.Dir(key), DriverRoot: m.driverRoot, GPUs: []string{"GPU-b"}, Timeout: time.Second}
			ctx2, cancel2 := context.WithCancel(ctx)
			if tc.cancelled {
				cancel2()
			}
			done2 := make(chan error, 1)
			go func() { done2 <- second.Run(ctx2) }()
			if !tc.cancelled {
				// Give the second supervisor the time to do its worst;
				// it either refuses (returns) or starts its daemon.
				select {
				case <-done2:
				case <-time.After(2 * time.Second):
				}
			}
			cancel2()
			<-done2
			if !m.procs().is(d1) {
				t.Errorf("the second supervisor of %s killed the first supervisor's live daemon %d", m.Dir(key), d1.PID)
			}
			if rec, err := m.loadRecord(key); err != nil || rec.identity != d1 {
				t.Errorf("record after the second supervisor: %+v (%v), want the first's daemon %d", rec.identity, err, d1.PID)
			}
		})
	}
}

// launched records the daemons its launcher is asked to launch.
type launched struct {
	Launcher
	daemons *[]Daemon
}

func (l launched) Launch(ctx context.Context, d Daemon) error {
	*l.daemons = append(*l.daemons, d)
	return l.Launcher.Launch(ctx, d)
}

// TestStartTellsTheLauncherSharesOnly: whether a daemon serves only
// shares reaches its launcher (which lowers its pod's requests by it),
// and is not saved in its spec, which the claim's devices rebuild.
func TestStartTellsTheLauncherSharesOnly(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	for _, sharesOnly := range []bool{false, true} {
		m := newTestManager(t)
		var got []Daemon
		m.Launcher = launched{m.inProcess, &got}
		key := "2f0e0a4c-0000-4000-8000-00000000003" + map[bool]string{false: "0", true: "1"}[sharesOnly]
		if err := m.Start(ctx, key, []string{"GPU-a"}, Limits{PinnedMemoryMiB: map[string]int64{"GPU-a": 1024}, SharesOnly: sharesOnly}); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].SharesOnly != sharesOnly {
			t.Errorf("SharesOnly %v: launched %+v", sharesOnly, got)
		}
		spec, err := loadSpecIn(m.Dir(key))
		if err != nil || spec.Limits.SharesOnly || spec.Limits.PinnedMemoryMiB["GPU-a"] != 1024 {
			t.Errorf("saved spec %+v (%v): want the limits without SharesOnly", spec, err)
		}
		if err := m.Stop(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
}
