package simhost

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"

	"golang.org/x/sys/unix"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

func TestCreate(t *testing.T) {
	hostfstest.RequireRoot(t, "creating device nodes needs root")
	dir := t.TempDir()
	for i := 0; i < 2; i++ { // the second run finds everything in place
		r, err := Create(dir, []int{0, 1}, "550.54.15", simhosttest.Tools(t))
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		for _, n := range []string{"dev/nvidia0", "dev/nvidia1", "dev/nvidiactl", "dev/nvidia-uvm", "dev/nvidia-caps/nvidia-cap1", "dev/nvidia-caps/nvidia-cap2"} {
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(r.DevRoot, n), &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(uint64(st.Rdev)) != 1 || unix.Minor(uint64(st.Rdev)) != 3 {
				t.Errorf("%s is not a 1:3 character device", n)
			}
		}
		// No instance's capability node: NVML makes none.
		if _, err := os.Lstat(filepath.Join(r.DevRoot, "dev/nvidia-caps/nvidia-cap3")); !os.IsNotExist(err) {
			t.Errorf("dev/nvidia-caps/nvidia-cap3 of gpu0/gi0/access: %v, want none", err)
		}
		devices, err := os.ReadFile(filepath.Join(r.ProcRoot, "proc/devices"))
		if err != nil || !strings.Contains(string(devices), "511 nvidia-caps\n") || !strings.Contains(string(devices), "510 nvidia-uvm\n") ||
			!strings.Contains(string(devices), "509 nvidia-caps-imex-channels\n") {
			t.Errorf("proc/devices: %v\n%s", err, devices)
		}
		// IMEX channels: counted in the module's parameters, none made.
		if params, err := os.ReadFile(filepath.Join(r.ProcRoot, "proc/driver/nvidia/params")); err != nil ||
			!strings.Contains(string(params), "ImexChannelCount: 2048\n") || !strings.Contains(string(params), "CreateImexChannel0: 0\n") {
			t.Errorf("proc/driver/nvidia/params: %v\n%s", err, params)
		}
		if _, err := os.Lstat(filepath.Join(r.DevRoot, "dev/nvidia-caps-imex-channels")); !os.IsNotExist(err) {
			t.Errorf("dev/nvidia-caps-imex-channels: %v, want none", err)
		}
		if config, err := os.ReadFile(filepath.Join(r.ProcRoot, "proc/driver/nvidia/capabilities/mig/config")); err != nil || string(config) != "DeviceFileMinor: 1\nDeviceFileMode: 256\nDeviceFileModify: 1\n" {
			t.Errorf("capability mig/config: %q, %v", config, err)
		}
		for _, f := range []string{"usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15", "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "usr/bin/nvidia-smi"} {
			if _, err := os.Stat(filepath.Join(r.DriverRoot, f)); err != nil {
				t.Error(err)
			}
		}
	}
}

// An older host's capability nodes of every minor are removed: the
// simulated host has none of an instance.
func TestCreateRemovesInstanceCapNodes(t *testing.T) {
	hostfstest.RequireRoot(t, "creating device nodes needs root")
	dir := t.TempDir()
	node := filepath.Join(dir, "dev/dev/nvidia-caps/nvidia-cap12")
	if err := os.MkdirAll(filepath.Dir(node), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := mknodNull(node); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(dir, []int{0}, "550.54.15", simhosttest.Tools(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(node); !os.IsNotExist(err) {
		t.Errorf("%s: %v, want removed", node, err)
	}
}

// Capabilities show an instance's access files while it exists, with its
// minor of the mig-minors table, and remove them when it is gone.
func TestCapabilitiesSync(t *testing.T) {
	proc := t.TempDir()
	if err := makeProcRoot(proc, "550.54.15", MIGMinors([]int{0, 1})); err != nil {
		t.Fatal(err)
	}
	caps, err := OpenCapabilities(proc)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(proc, "proc/driver/nvidia/capabilities/gpu1/mig")
	read := func(rel string) string {
		data, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			return err.Error()
		}
		return string(data)
	}
	// gpu1/gi3/access: 2 + 135 + 3*9 + 1 = 165; its ci2: 168.
	if err := caps.Sync(1, []GPUInstanceCaps{{ID: 3, ComputeInstances: []int{0, 2}}, {ID: 5}}); err != nil {
		t.Fatal(err)
	}
	if got := read("gi3/access"); got != "DeviceFileMinor: 165\nDeviceFileMode: 292\nDeviceFileModify: 1\n" {
		t.Errorf("gi3/access: %q", got)
	}
	if got := read("gi3/ci2/access"); !strings.HasPrefix(got, "DeviceFileMinor: 168\n") {
		t.Errorf("gi3/ci2/access: %q", got)
	}
	if err := caps.Sync(1, []GPUInstanceCaps{{ID: 3, ComputeInstances: []int{2}}}); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"gi3/ci0", "gi5"} {
		if _, err := os.Stat(filepath.Join(dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s after its instance is gone: %v", gone, err)
		}
	}
	if got := read("gi3/ci2/access"); !strings.HasPrefix(got, "DeviceFileMinor: 168\n") {
		t.Errorf("gi3/ci2/access kept: %q", got)
	}
	if err := caps.Sync(1, []GPUInstanceCaps{{ID: 15}}); err == nil || !strings.Contains(err.Error(), "gpu1/gi15/access") {
		t.Errorf("an instance beyond the table: %v", err)
	}
}

func TestCreateWithoutTools(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "gpu-sim-tools")
	for tools, want := range map[string]string{"": "no gpu-sim-tools program given", missing: missing + ": no such file"} {
		dir := t.TempDir()
		_, err := Create(dir, []int{0}, "550.54.15", tools)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "go build ./cmd/gpu-sim-tools") {
			t.Errorf("tools %q: %v, want %q and how to build it", tools, err, want)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("tools %q: created %v", tools, entries)
		}
	}
}

// TestTools runs the driver root's nvidia-smi and nvidia-cuda-mps-control
// as the plugin does, and a Create that replaces them while an MPS daemon
// runs the old copy.
func TestTools(t *testing.T) {
	hostfstest.RequireRoot(t, "creating device nodes needs root")
	dir := t.TempDir()
	r, err := Create(dir, []int{0}, "550.54.15", simhosttest.Tools(t))
	if err != nil {
		t.Fatal(err)
	}
	smi := filepath.Join(r.DriverRoot, "usr/bin/nvidia-smi")
	mpsControl := filepath.Join(r.DriverRoot, "usr/bin/nvidia-cuda-mps-control")
	output := func(wantCode int, stdin, name string, env []string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env, cmd.Stdin = env, strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != wantCode {
			t.Fatalf("%s %v: exit %d (%v), want %d: %s", filepath.Base(name), args, code, err, wantCode, out)
		}
		return string(out)
	}

	if out := output(0, "", smi, []string{"GPU_DRA_DEVICE_UUIDS=GPU-a"}); out != "nvidia-smi (simulated NVIDIA driver 550.54.15)\nGPU_DRA_DEVICE_UUIDS=GPU-a\n" {
		t.Errorf("nvidia-smi: %q", out)
	}
	if out := output(0, "", smi, nil, "compute-policy", "-i", "GPU-a", "--set-timeslice", "3"); out != "Set time slice of GPU GPU-a to 3\n" {
		t.Errorf("compute-policy: %q", out)
	}
	if out := output(2, "", smi, nil, "compute-policy", "-i", "GPU-a", "--set-timeslice", "7"); out != "nvidia-smi compute-policy: bad time slice '7'\n" {
		t.Errorf("bad time slice: %q", out)
	}
	if got, err := os.ReadFile(TimeSlicePath(r.DriverRoot, "GPU-a")); err != nil || string(got) != "3\n" {
		t.Errorf("time slice %q (%v)", got, err)
	}
	timeRE := `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`
	if log, err := os.ReadFile(filepath.Join(r.DriverRoot, "var/lib/gpu-sim/nvidia-smi.log")); err != nil || !regexp.MustCompile(`^`+timeRE+` compute-policy -i GPU-a --set-timeslice 3\n$`).Match(log) {
		t.Errorf("nvidia-smi.log %q (%v)", log, err)
	}

	pipe, logDir := filepath.Join(dir, "mps/pipe"), filepath.Join(dir, "mps/log")
	env := []string{"CUDA_MPS_PIPE_DIRECTORY=" + pipe, "CUDA_MPS_LOG_DIRECTORY=" + logDir, "CUDA_VISIBLE_DEVICES=GPU-a,GPU-b"}
	output(0, "", mpsControl, env, "-d")
	data, err := os.ReadFile(filepath.Join(pipe, "nvidia-cuda-mps-control.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || syscall.Kill(pid, 0) != nil {
		t.Fatalf("PID file %q: no daemon (%v)", data, err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })

	// The daemon runs the old copy while Create replaces it.
	if _, err := Create(dir, []int{0}, "580.00", simhosttest.Tools(t)); err != nil {
		t.Fatalf("Create while a daemon runs: %v", err)
	}
	if out := output(0, "", smi, nil); !strings.HasPrefix(out, "nvidia-smi (simulated NVIDIA driver 580.00)\n") {
		t.Errorf("nvidia-smi after a new Create: %q", out)
	}
	if out := output(1, "status\n", mpsControl, env); out != "nvidia-cuda-mps-control: unsupported command 'status'\n" {
		t.Errorf("unsupported command: %q", out)
	}
	output(0, "quit\n", mpsControl, env)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(pipe, "nvidia-cuda-mps-control.pid")); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the daemon did not quit")
		}
	}
	if out := output(1, "quit\n", mpsControl, env); out != "no MPS control daemon at "+pipe+"\n" {
		t.Errorf("second quit: %q", out)
	}
	want := regexp.MustCompile(`^` + timeRE + ` start pid=` + strconv.Itoa(pid) + ` devices=GPU-a,GPU-b pipe=` + regexp.QuoteMeta(pipe) + "\n" +
		timeRE + ` quit pipe=` + regexp.QuoteMeta(pipe) + "\n$")
	for _, log := range []string{MPSLogPath(r.DriverRoot), filepath.Join(logDir, "control.log")} {
		if got, err := os.ReadFile(log); err != nil || !want.Match(got) {
			t.Errorf("%s: %q (%v)", log, got, err)
		}
	}
}

func TestMIGMinors(t *testing.T) {
	table := MIGMinors([]int{0, 3})
	if len(table) != 2+2*giPerGPU*(1+ciPerGI) {
		t.Fatalf("%d entries", len(table))
	}
	want := map[string]int{"config": 1, "monitor": 2, "gpu0/gi0/access": 3, "gpu0/gi0/ci0/access": 4, "gpu0/gi1/access": 12, "gpu3/gi0/access": 3 + giPerGPU*(1+ciPerGI)}
	got := map[string]int{}
	for _, e := range table {
		if _, dup := got[e.Key]; dup {
			t.Fatalf("duplicate key %s", e.Key)
		}
		got[e.Key] = e.Minor
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d", k, got[k], v)
		}
	}
}
