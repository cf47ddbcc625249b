package simtools

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpu-dra/gpu-dra-driver/pkg/cdi"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

var fixedNow = func() time.Time { return time.Date(2026, 11, 30, 23, 4, 5, 0, time.FixedZone("CET", 3600)) }

// run runs a tool in-process against root with env and stdin.
func run(root, name, stdin string, env map[string]string, args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	t := &Tools{
		Root: root, Executable: filepath.Join(root, "usr/bin", name), DevDir: filepath.Join(root, "dev"),
		Getenv: func(k string) string { return env[k] }, Now: fixedNow,
		Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errOut,
	}
	code = t.Run(name, args)
	return code, out.String(), errOut.String()
}

// TestArgumentErrors checks the tools' messages and exit codes for bad
// arguments, and that they then write nothing.
func TestArgumentErrors(t *testing.T) {
	for _, tc := range []struct {
		name, tool, stdin string
		args              []string
		env               map[string]string
		wantCode          int
		wantErr           string
	}{
		{name: "unknown program", tool: "gpu-sim-tools", wantCode: 2, wantErr: `gpu-sim-tools: run as nvidia-smi, nvidia-cuda-mps-control, nvidia-imex or nvidia-imex-ctl (a copy of this program of that name), not as "gpu-sim-tools"` + "\n"},
		{name: "unknown argument", tool: SMI, args: []string{"compute-policy", "-i", "GPU-a", "--set-timeslice", "1", "--force"}, wantCode: 2, wantErr: "nvidia-smi compute-policy: unknown argument --force\n"},
		{name: "no time slice", tool: SMI, args: []string{"compute-policy", "-i", "GPU-a"}, wantCode: 2, wantErr: "nvidia-smi compute-policy: bad time slice ''\n"},
		{name: "time slice out of range", tool: SMI, args: []string{"compute-policy", "-i", "GPU-a", "--set-timeslice", "4"}, wantCode: 2, wantErr: "nvidia-smi compute-policy: bad time slice '4'\n"},
		{name: "time slice not a number", tool: SMI, args: []string{"compute-policy", "-i", "GPU-a", "--set-timeslice=long"}, wantCode: 2, wantErr: "nvidia-smi compute-policy: bad time slice 'long'\n"},
		{name: "time slice checked before -i", tool: SMI, args: []string{"compute-policy", "--set-timeslice=9"}, wantCode: 2, wantErr: "nvidia-smi compute-policy: bad time slice '9'\n"},
		{name: "no -i", tool: SMI, args: []string{"compute-policy", "--set-timeslice=1"}, wantCode: 2, wantErr: "nvidia-smi compute-policy: -i is required\n"},
		{name: "empty -i", tool: SMI, args: []string{"compute-policy", "-i", "", "--set-timeslice", "1"}, wantCode: 2, wantErr: "nvidia-smi compute-policy: -i is required\n"},
		{name: "-i without value", tool: SMI, args: []string{"compute-policy", "--set-timeslice", "1", "-i"}, wantCode: 2, wantErr: "nvidia-smi compute-policy: -i needs a value\n"},
		{name: "--set-timeslice without value", tool: SMI, args: []string{"compute-policy", "-i", "GPU-a", "--set-timeslice"}, wantCode: 2, wantErr: "nvidia-smi compute-policy: --set-timeslice needs a value\n"},
		{name: "UUID with a slash", tool: SMI, args: []string{"compute-policy", "-i", "../GPU-a", "--set-timeslice", "1"}, wantCode: 2, wantErr: "nvidia-smi compute-policy: bad GPU UUID '../GPU-a'\n"},
		{name: "unsupported MPS command", tool: MPSControl, stdin: "  get_server_list \n", wantCode: 1, wantErr: "nvidia-cuda-mps-control: unsupported command 'get_server_list'\n"},
		{name: "unknown daemon argument", tool: MPSControl, args: []string{"-f", "-M", "-x"}, wantCode: 2, wantErr: "nvidia-cuda-mps-control: unknown argument -x\n"},
		{name: "no MPS command", tool: MPSControl, wantCode: 1, wantErr: "nvidia-cuda-mps-control: unsupported command ''\n"},
		{name: "quit without daemon", tool: MPSControl, stdin: "quit\n", env: map[string]string{"CUDA_MPS_PIPE_DIRECTORY": "/nonexistent/pipe"}, wantCode: 1, wantErr: "no MPS control daemon at /nonexistent/pipe\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			code, stdout, stderr := run(root, tc.tool, tc.stdin, tc.env, tc.args...)
			if code != tc.wantCode || stderr != tc.wantErr || stdout != "" {
				t.Errorf("exit %d, stderr %q, stdout %q; want exit %d, stderr %q", code, stderr, stdout, tc.wantCode, tc.wantErr)
			}
			if _, err := os.Stat(filepath.Join(root, "var/lib/gpu-sim/timeslice")); !os.IsNotExist(err) {
				t.Errorf("a time slice was recorded: %v", err)
			}
		})
	}
}

func TestSetTimeSlice(t *testing.T) {
	root := t.TempDir()
	for _, tc := range []struct {
		args        []string
		uuid, slice string
	}{
		{args: []string{"compute-policy", "-i", "GPU-a", "--set-timeslice", "3"}, uuid: "GPU-a", slice: "3"},
		{args: []string{"compute-policy", "--set-timeslice=0", "-i", "GPU-b"}, uuid: "GPU-b", slice: "0"},
		{args: []string{"compute-policy", "-i", "GPU-x", "--set-timeslice", "2", "-i", "GPU-a", "--set-timeslice=1"}, uuid: "GPU-a", slice: "1"}, // the last wins
	} {
		code, stdout, stderr := run(root, SMI, "", nil, tc.args...)
		if code != 0 || stderr != "" {
			t.Fatalf("%v: exit %d: %s", tc.args, code, stderr)
		}
		if want := fmt.Sprintf("Set time slice of GPU %s to %s\n", tc.uuid, tc.slice); stdout != want {
			t.Errorf("%v: stdout %q, want %q", tc.args, stdout, want)
		}
	}
	for uuid, want := range map[string]string{"GPU-a": "1\n", "GPU-b": "0\n"} {
		if got, err := os.ReadFile(filepath.Join(root, "var/lib/gpu-sim/timeslice", uuid)); err != nil || string(got) != want {
			t.Errorf("%s: %q (%v), want %q", uuid, got, err, want)
		}
	}
	log, err := os.ReadFile(filepath.Join(root, "var/lib/gpu-sim/nvidia-smi.log"))
	want := "2026-11-30T22:04:05Z compute-policy -i GPU-a --set-timeslice 3\n" +
		"2026-11-30T22:04:05Z compute-policy -i GPU-b --set-timeslice 0\n" +
		"2026-11-30T22:04:05Z compute-policy -i GPU-a --set-timeslice 1\n"
	if err != nil || string(log) != want {
		t.Errorf("log %q (%v), want %q", log, err, want)
	}
}

func TestInstall(t *testing.T) {
	tools := simhosttest.Tools(t)
	bin := filepath.Join(t.TempDir(), "usr/bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	program, err := os.ReadFile(tools)
	if err != nil {
		t.Fatal(err)
	}
	smi := filepath.Join(bin, SMI)
	for _, v := range []string{"550.54.15", "550.54.15", "580.00"} {
		if err := Install(tools, bin, v); err != nil {
			t.Fatal(err)
		}
		if got, err := readVersion(smi); err != nil || got != v {
			t.Errorf("version %q (%v), want %s", got, err, v)
		}
	}
	// An installed copy given as the program is installed with its own
	// version replaced, not appended to.
	if err := Install(smi, bin, "590.1"); err != nil {
		t.Fatal(err)
	}
	for _, name := range Names {
		got, err := os.ReadFile(filepath.Join(bin, name))
		if err != nil {
			t.Fatal(err)
		}
		if want := string(program) + versionMarker + "590.1\n"; string(got) != want {
			t.Errorf("%s: %d bytes, want the program and one version (%d bytes)", name, len(got), len(want))
		}
		if fi, err := os.Stat(filepath.Join(bin, name)); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: mode %v (%v)", name, fi.Mode(), err)
		}
	}
	if entries, _ := os.ReadDir(bin); len(entries) != len(Names) {
		t.Errorf("temporary files left: %v", entries)
	}
	notTools := filepath.Join(t.TempDir(), "not-tools")
	if err := os.WriteFile(notTools, []byte("some file\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ tools, version, wantErr string }{
		{tools: "", version: "1", wantErr: "no gpu-sim-tools program given"},
		{tools: filepath.Join(bin, "missing"), version: "1", wantErr: filepath.Join(bin, "missing") + ": no such file"},
		{tools: notTools, version: "1", wantErr: notTools + " is not a gpu-sim-tools program"},
		{tools: tools, version: "", wantErr: `driver version ""`},
		{tools: tools, version: "1\n2", wantErr: "control character"},
	} {
		if err := Install(tc.tools, bin, tc.version); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("Install(%q, %q): %v, want %q", tc.tools, tc.version, err, tc.wantErr)
		}
	}
}

// installed installs the built program's tools into usr/bin of a new
// driver root, and returns the root and that directory.
func installed(t *testing.T) (root, bin string) {
	t.Helper()
	root = t.TempDir()
	bin = filepath.Join(root, "usr/bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Install(simhosttest.Tools(t), bin, "550.54.15"); err != nil {
		t.Fatal(err)
	}
	return root, bin
}

// TestProgram runs installed copies of the built program: nvidia-smi
// without arguments, and an MPS control daemon started detached and quit.
func TestProgram(t *testing.T) {
	root, bin := installed(t)

	// The driver root is found from a symlink's target.
	link := filepath.Join(t.TempDir(), SMI)
	if err := os.Symlink(filepath.Join(bin, SMI), link); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(link)
	cmd.Env = []string{"GPU_DRA_DEVICE_UUIDS=GPU-a,GPU-b"}
	out, err := cmd.CombinedOutput()
	if want := "nvidia-smi (simulated NVIDIA driver 550.54.15)\nGPU_DRA_DEVICE_UUIDS=GPU-a,GPU-b\n"; err != nil || string(out) != want {
		t.Errorf("nvidia-smi: %q (%v), want %q", out, err, want)
	}
	if out, err := exec.Command(link, "compute-policy", "-i", "GPU-a", "--set-timeslice", "2").CombinedOutput(); err != nil {
		t.Errorf("compute-policy: %v: %s", err, out)
	} else if got, err := os.ReadFile(filepath.Join(root, "var/lib/gpu-sim/timeslice/GPU-a")); err != nil || string(got) != "2\n" {
		t.Errorf("time slice %q (%v)", got, err)
	}

	dir := t.TempDir()
	pipe, logDir := filepath.Join(dir, "pipe"), filepath.Join(dir, "log")
	env := []string{"CUDA_MPS_PIPE_DIRECTORY=" + pipe, "CUDA_MPS_LOG_DIRECTORY=" + logDir, "CUDA_VISIBLE_DEVICES=GPU-a"}
	// The starter's output is read to its end and it is given one more
	// pipe: both reach their end when the starter exits, as the daemon
	// holds neither.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	start := exec.Command(filepath.Join(bin, MPSControl), "-d")
	start.Env = env
	start.ExtraFiles = []*os.File{w}
	done := make(chan error, 1)
	go func() {
		out, err := start.CombinedOutput()
		if err == nil && len(out) > 0 {
			err = fmt.Errorf("output %q", out)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("start: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("start did not return: the daemon holds its output")
	}
	w.Close()
	if err := r.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(make([]byte, 1)); n != 0 || err == nil || err.Error() != "EOF" {
		t.Errorf("the daemon holds an inherited descriptor: read %d, %v", n, err)
	}

	data, err := os.ReadFile(filepath.Join(pipe, pidFile))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || !alive(pid) {
		t.Fatalf("PID file %q: not a running daemon (%v)", data, err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if sid, err := unix.Getsid(pid); err != nil || sid != pid {
		t.Errorf("daemon's session %d (%v), want its own", sid, err)
	}
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !strings.HasPrefix(string(cmdline), MPSControl+"\x00") {
		t.Errorf("daemon's command line %q", cmdline)
	}

	quit := exec.Command(filepath.Join(bin, MPSControl))
	quit.Env = env
	quit.Stdin = strings.NewReader("quit\n")
	if out, err := quit.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("quit: %v: %s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatal("daemon still running after quit")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(pipe, pidFile)); !os.IsNotExist(err) {
		t.Errorf("PID file left: %v", err)
	}
	quit = exec.Command(filepath.Join(bin, MPSControl))
	quit.Env = env
	quit.Stdin = strings.NewReader("quit\n")
	if out, err := quit.CombinedOutput(); exitCode(err) != 1 || string(out) != "no MPS control daemon at "+pipe+"\n" {
		t.Errorf("second quit: %v: %q", err, out)
	}

	line := regexp.QuoteMeta
	want := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ start pid=` + strconv.Itoa(pid) + ` devices=GPU-a pipe=` + line(pipe) + "\n" +
		`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ quit pipe=` + line(pipe) + "\n$")
	for _, log := range []string{filepath.Join(logDir, "control.log"), filepath.Join(root, "var/lib/gpu-sim/mps.log")} {
		if got, err := os.ReadFile(log); err != nil || !want.Match(got) {
			t.Errorf("%s: %q (%v)", log, got, err)
		}
	}
}

func exitCode(err error) int {
	if e := (*exec.ExitError)(nil); errors.As(err, &e) {
		return e.ExitCode()
	}
	return -1
}

// alive reports whether pid runs and is no zombie (the daemon is reaped
// by init, which may take its time).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// TestForegroundDaemon runs "nvidia-cuda-mps-control -f" in-process: it
// makes its PID file, logs its start, makes its control file (ready) and
// returns once quit removed it. A control.log that a container replaced
// by a symlink or a FIFO is neither followed nor waited on: only that
// log line is lost.
func TestForegroundDaemon(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, path string)
	}{
		{name: "plain log directory"},
		{name: "control.log a symlink to a host file", plant: func(t *testing.T, path string) {
			if err := os.Symlink(filepath.Join(t.TempDir(), "host-file"), path); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "control.log a FIFO", plant: func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, dir := t.TempDir(), t.TempDir()
			pipe, logDir := filepath.Join(dir, "pipe"), filepath.Join(dir, "log")
			if err := os.MkdirAll(logDir, 0o755); err != nil {
				t.Fatal(err)
			}
			logFile := filepath.Join(logDir, "control.log")
			if tc.plant != nil {
				tc.plant(t, logFile)
			}
			env := map[string]string{"CUDA_MPS_PIPE_DIRECTORY": pipe, "CUDA_MPS_LOG_DIRECTORY": logDir, "CUDA_VISIBLE_DEVICES": "GPU-a"}
			type result struct {
				code           int
				stdout, stderr string
			}
			done := make(chan result, 1)
			go func() {
				code, stdout, stderr := run(root, MPSControl, "", env, "-f")
				done <- result{code, stdout, stderr}
			}()
			// Ready once the control file exists; then the PID file names
			// this process.
			for {
				if _, err := os.Stat(filepath.Join(pipe, controlFile)); err == nil {
					break
				}
				select {
				case r := <-done:
					t.Fatalf("daemon exited before it was ready: %+v", r)
				case <-time.After(10 * time.Millisecond):
				}
			}
			if data, err := os.ReadFile(filepath.Join(pipe, pidFile)); err != nil || strings.TrimSpace(string(data)) != strconv.Itoa(os.Getpid()) {
				t.Errorf("PID file %q (%v), want %d", data, err, os.Getpid())
			}
			if code, _, stderr := run(root, MPSControl, "quit\n", env); code != 0 {
				t.Fatalf("quit: %d: %s", code, stderr)
			}
			r := <-done
			if r.code != 0 {
				t.Errorf("daemon exited %d: %s", r.code, r.stderr)
			}
			fi, err := os.Lstat(logFile)
			if err != nil {
				t.Fatal(err)
			}
			if tc.plant == nil {
				data, _ := os.ReadFile(logFile)
				if !strings.Contains(string(data), "start pid=") || !strings.Contains(string(data), "quit pipe=") {
					t.Errorf("control.log:\n%s", data)
				}
				return
			}
			if fi.Mode().IsRegular() {
				t.Errorf("control.log was replaced by a regular file")
			}
			if fi.Mode()&os.ModeSymlink != 0 {
				target, _ := os.Readlink(logFile)
				if _, err := os.Stat(target); !os.IsNotExist(err) {
					t.Errorf("the symlink's target was written: %v", err)
				}
			}
			if !strings.Contains(r.stderr, "not a regular file") && !strings.Contains(r.stderr, "too many levels of symbolic links") && !strings.Contains(r.stderr, "no such device or address") {
				t.Errorf("the refused log is not reported: %q", r.stderr)
			}
		})
	}
}

// TestControlFileNotWrittenThroughASymlink: a control entry that a
// container made a symlink to a host file is replaced, and the host file
// is left as it was, where a plain create would have truncated it.
func TestControlFileNotWrittenThroughASymlink(t *testing.T) {
	pipe := t.TempDir()
	host := filepath.Join(t.TempDir(), "host-file")
	if err := os.WriteFile(host, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	control := filepath.Join(pipe, controlFile)
	if err := os.Symlink(host, control); err != nil {
		t.Fatal(err)
	}
	if err := makeControl(control); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(host); err != nil || string(data) != "precious\n" {
		t.Errorf("host file %q (%v)", data, err)
	}
	if fi, err := os.Lstat(control); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("control entry %v (%v), want a regular file", fi, err)
	}
}

// TestDeviceUUIDsEnvIsTheSpecs: the simulated nvidia-smi prints the
// variable the driver's CDI specs set.
func TestDeviceUUIDsEnvIsTheSpecs(t *testing.T) {
	if deviceUUIDsEnv != cdi.EnvDeviceUUIDs {
		t.Errorf("nvidia-smi prints %s, the specs set %s", deviceUUIDsEnv, cdi.EnvDeviceUUIDs)
	}
}

// TestIMEXProgram runs installed copies of nvidia-imex and
// nvidia-imex-ctl: a domain of one node is READY at once, and the daemon
// exits 0 on SIGTERM.
func TestIMEXProgram(t *testing.T) {
	_, bin := installed(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nodes.cfg"), []byte("127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ports := simhosttest.FreePorts(t, 2)
	cfg := filepath.Join(dir, "imexd.cfg")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "IMEX_NODE_CONFIG_FILE=%s/nodes.cfg\nSERVER_PORT=%d\nIMEX_CMD_ENABLED=1\nIMEX_CMD_PORT=%d\nLOG_FILE_NAME=\nDAEMONIZE=0\n", dir, ports[0], ports[1]), 0o644); err != nil {
		t.Fatal(err)
	}
	var errOut bytes.Buffer
	daemon := exec.Command(filepath.Join(bin, IMEX), "-c", cfg)
	daemon.Stderr = &errOut
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := exec.Command(filepath.Join(bin, IMEXCtl), "-c", cfg, "-q").CombinedOutput()
		if err == nil && string(out) == "READY\n" {
			break
		}
		if time.Now().After(deadline) {
			_ = daemon.Process.Kill()
			_ = daemon.Wait()
			t.Fatalf("nvidia-imex-ctl -q: %q (%v); daemon: %s", out, err, errOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := daemon.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := daemon.Wait(); err != nil || !strings.Contains(errOut.String(), "nvidia-imex: stopped") {
		t.Errorf("after SIGTERM: %v; log:\n%s", err, errOut.String())
	}
}
