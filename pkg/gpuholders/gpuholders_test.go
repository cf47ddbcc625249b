package gpuholders

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeProc makes a /proc under root with processes whose open files link
// to the given paths, and comm files with the given names.
func fakeProc(t *testing.T, root string, procs map[int]struct {
	name  string
	files []string
}) {
	t.Helper()
	for pid, p := range procs {
		dir := filepath.Join(root, "proc", fmt.Sprint(pid))
		if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
			t.Fatal(err)
		}
		if p.name != "" {
			if err := os.WriteFile(filepath.Join(dir, "comm"), []byte(p.name+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for i, f := range p.files {
			if err := os.Symlink(f, filepath.Join(dir, "fd", fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestHoldersOf(t *testing.T) {
	type proc = struct {
		name  string
		files []string
	}
	devRoot := "/host"
	tests := []struct {
		name  string
		procs map[int]proc
		self  int
		want  string
	}{
		{"none", map[int]proc{1: {"init", []string{"/dev/null"}}}, 0, ""},
		{"a monitoring agent, in its own mount namespace", map[int]proc{
			1: {"init", []string{"/dev/null"}}, 4242: {"dcgm-exporter", []string{"/dev/nvidiactl", "/dev/nvidia3"}},
		}, 0, "dcgm-exporter (pid 4242)"},
		{"the node under the dev root", map[int]proc{77: {"nvidia-persiste", []string{"/host/dev/nvidia3"}}}, 0, "nvidia-persiste (pid 77)"},
		{"another GPU's node does not count", map[int]proc{77: {"x", []string{"/dev/nvidia31", "/dev/nvidia2"}}}, 0, ""},
		{"the caller itself is left out", map[int]proc{5: {"gpu-kubelet-plu", []string{"/dev/nvidia3"}}, 9: {"nvidia-smi", []string{"/dev/nvidia3"}}}, 5, "nvidia-smi (pid 9)"},
		{"a hostile name is printed safely", map[int]proc{6: {"evil\x1b[2J\x00name", []string{"/dev/nvidia3"}}}, 0, "evil[2Jname (pid 6)"},
		{"no readable name", map[int]proc{8: {"", []string{"/dev/nvidia3"}}}, 0, "? (pid 8)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			fakeProc(t, root, tt.procs)
			got, err := Finder{ProcRoot: root, DevRoot: devRoot, Self: tt.self}.HoldersOf(3)
			if err != nil {
				t.Fatal(err)
			}
			var s []string
			for _, p := range got {
				s = append(s, p.String())
			}
			if strings.Join(s, ", ") != tt.want {
				t.Errorf("holders %q, want %q", strings.Join(s, ", "), tt.want)
			}
		})
	}
}

// TestHoldersOfIsBounded: at most MaxHolders are reported.
func TestHoldersOfIsBounded(t *testing.T) {
	root := t.TempDir()
	procs := map[int]struct {
		name  string
		files []string
	}{}
	for pid := 100; pid < 100+3*MaxHolders; pid++ {
		procs[pid] = struct {
			name  string
			files []string
		}{"p", []string{"/dev/nvidia0"}}
	}
	fakeProc(t, root, procs)
	got, err := Finder{ProcRoot: root, DevRoot: "/"}.HoldersOf(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != MaxHolders || got[0].PID != 100 {
		t.Errorf("%d holders from pid %d, want %d from the lowest", len(got), got[0].PID, MaxHolders)
	}
}

// TestHoldersOfRealProcesses reads this host's /proc: a child process
// holding a device node open is found by its name, this process (which
// holds it too) is not.
func TestHoldersOfRealProcesses(t *testing.T) {
	devRoot := t.TempDir()
	node := filepath.Join(devRoot, "dev", "nvidia7")
	if err := os.MkdirAll(filepath.Dir(node), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(node, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Open(node)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	child := exec.Command("sleep", "30")
	child.ExtraFiles = []*os.File{fh}
	if err := child.Start(); err != nil {
		t.Skipf("no sleep to run: %v", err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	got, err := Finder{ProcRoot: "/", DevRoot: devRoot, Self: os.Getpid()}.HoldersOf(7)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].PID != child.Process.Pid || got[0].Name != "sleep" {
		t.Errorf("holders %v, want only sleep (pid %d)", got, child.Process.Pid)
	}
}
