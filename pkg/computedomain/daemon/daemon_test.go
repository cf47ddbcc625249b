package daemon

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simtools"
)

// The test binary is also the fake nvidia-imex and nvidia-imex-ctl, as the
// environment says:
//
//   - FAKE_IMEX_LOG=path: log "start <pid> <nodes.cfg, ',' for newlines>"
//     and, on SIGTERM, "term <pid>" to path; FAKE_IMEX_EXIT=n exits n at
//     once, FAKE_IMEX_IGNORE_TERM=1 ignores SIGTERM;
//   - FAKE_CTL_OUT=text: print text, then exit FAKE_CTL_EXIT; with
//     FAKE_CTL_SLEEP=1 hang first.
func TestMain(m *testing.M) {
	if path := os.Getenv("FAKE_IMEX_LOG"); path != "" {
		os.Exit(fakeIMEX(path))
	}
	if out, ok := os.LookupEnv("FAKE_CTL_OUT"); ok {
		if os.Getenv("FAKE_CTL_SLEEP") == "1" {
			time.Sleep(time.Hour)
		}
		fmt.Print(out)
		code, _ := strconv.Atoi(os.Getenv("FAKE_CTL_EXIT"))
		os.Exit(code)
	}
	// A race-enabled fake would sleep a second at exit.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	os.Exit(m.Run())
}

func fakeIMEX(logPath string) int {
	if len(os.Args) != 3 || os.Args[1] != "-c" {
		return 2
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	nodes, _ := os.ReadFile(filepath.Join(filepath.Dir(os.Args[2]), NodesFile))
	appendLog(logPath, fmt.Sprintf("start %d %s", os.Getpid(), strings.ReplaceAll(strings.TrimSpace(string(nodes)), "\n", ",")))
	if code := os.Getenv("FAKE_IMEX_EXIT"); code != "" {
		n, _ := strconv.Atoi(code)
		return n
	}
	for range term {
		appendLog(logPath, fmt.Sprintf("term %d", os.Getpid()))
		if os.Getenv("FAKE_IMEX_IGNORE_TERM") != "1" {
			return 0
		}
	}
	return 0
}

func appendLog(path, line string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}

const waitBound = 20 * time.Second

// waitFor polls cond until it holds or waitBound passes.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	simhosttest.WaitFor(t, what, waitBound, cond)
}

// fakeLog reads the fake IMEX's log lines.
func fakeLog(path string) []string {
	data, _ := os.ReadFile(path)
	return strings.Fields(strings.ReplaceAll(string(data), " ", "_"))
}

// starts are the nodes contents the fake IMEX was started with.
func starts(path string) []string {
	var out []string
	for _, l := range fakeLog(path) {
		if f := strings.SplitN(l, "_", 3); f[0] == "start" {
			out = append(out, f[2])
		}
	}
	return out
}

func count(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// startRun runs Run with the fake IMEX in dir; stop cancels it and
// returns Run's error.
func startRun(t *testing.T, dir string, o Options) (stop func() error) {
	t.Helper()
	o.Dir = dir
	if o.IMEX == "" {
		o.IMEX = os.Args[0]
	}
	o.Poll = 20 * time.Millisecond
	if o.Settle == 0 {
		o.Settle = 100 * time.Millisecond
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = 20 * time.Millisecond
	}
	var out bytes.Buffer
	o.Stdout, o.Stderr = &out, &out
	_, tctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(tctx)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(waitBound):
				err = fmt.Errorf("Run did not return")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func writeNodes(t *testing.T, dir, content string) {
	t.Helper()
	tmp := filepath.Join(dir, ".nodes.tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, NodesFile)); err != nil {
		t.Fatal(err)
	}
}

// TestRunLifecycle: IMEX starts once nodes.cfg exists, restarts once for
// a burst of changes, and gets SIGTERM when Run ends.
func TestRunLifecycle(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(t.TempDir(), "imex.log")
	t.Setenv("FAKE_IMEX_LOG", logPath)
	stop := startRun(t, dir, Options{Settle: time.Second})

	time.Sleep(100 * time.Millisecond) // some polls without a nodes file
	if got := fakeLog(logPath); len(got) != 0 {
		t.Fatalf("IMEX started without a nodes file: %v", got)
	}
	writeNodes(t, dir, "10.0.0.1\n")
	waitFor(t, "first start", func() (bool, string) {
		s := starts(logPath)
		return len(s) == 1 && s[0] == "10.0.0.1", fmt.Sprint(fakeLog(logPath))
	})
	// A burst: only its last content is started.
	writeNodes(t, dir, "10.0.0.1\n10.0.0.2\n")
	writeNodes(t, dir, "10.0.0.1\n10.0.0.2\n10.0.0.3\n")
	waitFor(t, "restart with the new nodes", func() (bool, string) {
		s := starts(logPath)
		return len(s) == 2 && s[1] == "10.0.0.1,10.0.0.2,10.0.0.3", fmt.Sprint(fakeLog(logPath))
	})
	if got := count(fakeLog(logPath), "term_"); got != 1 {
		t.Errorf("%d SIGTERMs before the restart, want 1: %v", got, fakeLog(logPath))
	}
	// The same content again restarts nothing.
	writeNodes(t, dir, "10.0.0.1\n10.0.0.2\n10.0.0.3\n")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	got := fakeLog(logPath)
	if len(starts(logPath)) != 2 || count(got, "term_") != 2 || !strings.HasPrefix(got[len(got)-1], "term_") {
		t.Errorf("log after stop: %v; want two starts, each ended by SIGTERM", got)
	}
}

// TestRunRestartsAfterExit: an IMEX that exits is started again, and one
// that cannot start at all keeps being retried; Run still stops cleanly.
func TestRunRestartsAfterExit(t *testing.T) {
	for _, tc := range []struct {
		name string
		imex string
		exit string
	}{
		{name: "exits 1", exit: "1"},
		{name: "exits 0", exit: "0"},
		{name: "missing program", imex: "/nonexistent/nvidia-imex"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			logPath := filepath.Join(t.TempDir(), "imex.log")
			t.Setenv("FAKE_IMEX_LOG", logPath)
			t.Setenv("FAKE_IMEX_EXIT", tc.exit)
			writeNodes(t, dir, "10.0.0.1\n")
			stop := startRun(t, dir, Options{IMEX: tc.imex, MaxBackoff: 40 * time.Millisecond})
			if tc.imex == "" {
				waitFor(t, "three starts", func() (bool, string) {
					return len(starts(logPath)) >= 3, fmt.Sprint(fakeLog(logPath))
				})
			} else {
				time.Sleep(200 * time.Millisecond)
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRunKillsStubbornIMEX: an IMEX that ignores SIGTERM is killed after
// StopTimeout. The timeout leaves the fake time to log the ignored SIGTERM
// on a loaded machine.
func TestRunKillsStubbornIMEX(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(t.TempDir(), "imex.log")
	t.Setenv("FAKE_IMEX_LOG", logPath)
	t.Setenv("FAKE_IMEX_IGNORE_TERM", "1")
	writeNodes(t, dir, "10.0.0.1\n")
	stop := startRun(t, dir, Options{StopTimeout: 2 * time.Second})
	waitFor(t, "start", func() (bool, string) { return len(starts(logPath)) == 1, fmt.Sprint(fakeLog(logPath)) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := fakeLog(logPath); count(got, "term_") != 1 {
		t.Errorf("log %v: want one ignored SIGTERM", got)
	}
}

func TestBackoff(t *testing.T) {
	o := Options{MinBackoff: time.Second, MaxBackoff: 5 * time.Second, ResetAfter: time.Minute}.withDefaults()
	logger, _ := ktesting.NewTestContext(t)
	s := &supervisor{o: o, logger: logger, backoff: o.MinBackoff}
	var got []time.Duration
	for _, ran := range []time.Duration{0, 0, 0, 0, 0, 2 * time.Minute, 0} {
		s.started = time.Now().Add(-ran)
		s.scheduleRestart()
		got = append(got, time.Until(s.restartAt).Round(time.Second))
	}
	want := []time.Duration{1, 2, 4, 5, 5, 1, 2}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("backoffs %v, want %v s", got, want)
		}
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name, out, exit, sleep string
		ctl                    string
		wantErr                string
	}{
		{name: "ready", out: "READY\n", exit: "0"},
		{name: "no newline", out: "READY", exit: "0", wantErr: `IMEX daemon not ready: "READY"`},
		{name: "more than READY", out: "READY\nREADY\n", exit: "0", wantErr: `not ready: "READY\nREADY\n"`},
		{name: "not ready", out: "UNAVAILABLE\n", exit: "0", wantErr: `IMEX daemon not ready: "UNAVAILABLE\n"`},
		{name: "ctl fails", out: "connection refused\n", exit: "1", wantErr: `exit status 1 (output "connection refused\n")`},
		{name: "ctl hangs", out: "", sleep: "1", wantErr: "did not answer within"},
		{name: "no ctl", ctl: "/nonexistent/nvidia-imex-ctl", wantErr: "run /nonexistent/nvidia-imex-ctl"},
		{name: "endless output", out: strings.Repeat("x", 100000), exit: "0", wantErr: strings.Repeat("x", 4096) + `"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("FAKE_CTL_OUT", tc.out)
			t.Setenv("FAKE_CTL_EXIT", tc.exit)
			t.Setenv("FAKE_CTL_SLEEP", tc.sleep)
			ctl := tc.ctl
			if ctl == "" {
				ctl = os.Args[0]
			}
			timeout := waitBound
			if tc.sleep != "" {
				timeout = 500 * time.Millisecond
			}
			err := Check(context.Background(), Options{Dir: t.TempDir(), Ctl: ctl, CheckTimeout: timeout})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// TestWithSimulatedIMEX runs the simulated driver's nvidia-imex under Run
// and probes it with Check through nvidia-imex-ctl: a domain of this node
// alone is ready; a second node in nodes.cfg that never comes makes it
// not ready after the restart.
func TestWithSimulatedIMEX(t *testing.T) {
	bin := t.TempDir()
	if err := simtools.Install(simhosttest.Tools(t), bin, "550.54.15"); err != nil {
		t.Fatal(err)
	}
	ports := simhosttest.FreePorts(t, 2)
	dir := t.TempDir()
	cfg := fmt.Sprintf("IMEX_NODE_CONFIG_FILE=%s\nSERVER_PORT=%d\nIMEX_CMD_ENABLED=1\nIMEX_CMD_PORT=%d\nLOG_FILE_NAME=\nDAEMONIZE=0\n", filepath.Join(dir, NodesFile), ports[0], ports[1])
	if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	o := Options{Dir: dir, Ctl: filepath.Join(bin, simtools.IMEXCtl), CheckTimeout: 5 * time.Second}
	if err := Check(context.Background(), o); err == nil || !strings.Contains(err.Error(), "exit status 1") {
		t.Errorf("check before IMEX runs: %v", err)
	}
	stop := startRun(t, dir, Options{IMEX: filepath.Join(bin, simtools.IMEX)})
	writeNodes(t, dir, "127.0.0.1\n")
	waitFor(t, "ready", func() (bool, string) {
		err := Check(context.Background(), o)
		return err == nil, fmt.Sprint(err)
	})
	writeNodes(t, dir, "127.0.0.1\n127.0.0.2\n")
	waitFor(t, "not ready with a node missing", func() (bool, string) {
		err := Check(context.Background(), o)
		return err != nil && strings.Contains(err.Error(), `not ready: "UNAVAILABLE\n"`), fmt.Sprint(err)
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
