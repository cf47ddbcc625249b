package mps

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeProc is a /proc tree for tests: a boot, and processes with the stat,
// exe and environ files that the Manager reads.
type fakeProc struct{ root string }

func newFakeProc(t *testing.T, bootID string, boot time.Time) fakeProc {
	t.Helper()
	f := fakeProc{root: t.TempDir()}
	f.write(t, "proc/sys/kernel/random/boot_id", bootID+"\n")
	f.write(t, "proc/stat", fmt.Sprintf("cpu  1 2 3\nbtime %d\nprocesses 9\n", boot.Unix()))
	return f
}

func (f fakeProc) write(t *testing.T, rel, content string) {
	t.Helper()
	p := filepath.Join(f.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// process adds pid, whose command name is comm, in state, started start
// ticks after boot, running exe ("" for none, as a zombie), with env.
func (f fakeProc) process(t *testing.T, pid int, comm string, state byte, start uint64, exe string, env []string) {
	t.Helper()
	fields := []string{string(state)}
	for i := 4; i < 22; i++ {
		fields = append(fields, strconv.Itoa(i))
	}
	fields = append(fields, strconv.FormatUint(start, 10), "23", "24")
	f.write(t, fmt.Sprintf("proc/%d/stat", pid), fmt.Sprintf("%d (%s) %s\n", pid, comm, strings.Join(fields, " ")))
	f.write(t, fmt.Sprintf("proc/%d/environ", pid), strings.Join(env, "\x00")+"\x00")
	if exe != "" {
		if err := os.Symlink(exe, filepath.Join(f.root, fmt.Sprintf("proc/%d/exe", pid))); err != nil {
			t.Fatal(err)
		}
	}
}

func fileID(t *testing.T, path string) (dev, ino uint64) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Dev, st.Ino
}

// TestProcessIdentity: a process is the one recorded only if boot, start
// time and executable all match and it has not exited; a reused PID (a
// stranger started later, or in another boot) is not it.
func TestProcessIdentity(t *testing.T) {
	dir := t.TempDir()
	daemon, other := filepath.Join(dir, "nvidia-cuda-mps-control"), filepath.Join(dir, "sleep")
	for _, p := range []string{daemon, other} {
		if err := os.WriteFile(p, []byte("#!"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dev, ino := fileID(t, daemon)
	rec := identity{PID: 4242, StartTime: 5000, BootID: "boot-1", ExeDevice: dev, ExeInode: ino}
	for _, tc := range []struct {
		name  string
		boot  string
		comm  string
		state byte
		start uint64
		exe   string
		want  bool
	}{
		{name: "the recorded daemon", boot: "boot-1", comm: ControlBinary, state: 'S', start: 5000, exe: daemon, want: true},
		{name: "a command name with blanks and parentheses", boot: "boot-1", comm: "a) (b c", state: 'S', start: 5000, exe: daemon, want: true},
		{name: "PID reused by a later process", boot: "boot-1", comm: "sleep", state: 'S', start: 7000, exe: other},
		{name: "PID reused by a later daemon", boot: "boot-1", comm: ControlBinary, state: 'S', start: 7000, exe: daemon},
		{name: "same start time, another executable", boot: "boot-1", comm: "sleep", state: 'S', start: 5000, exe: other},
		{name: "another boot", boot: "boot-2", comm: ControlBinary, state: 'S', start: 5000, exe: daemon},
		{name: "a zombie", boot: "boot-1", comm: ControlBinary, state: 'Z', start: 5000},
		{name: "no such process", boot: "boot-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeProc(t, tc.boot, time.Now())
			if tc.state != 0 {
				f.process(t, rec.PID, tc.comm, tc.state, tc.start, tc.exe, nil)
			}
			if got := procs(f).is(rec); got != tc.want {
				t.Errorf("is the recorded daemon: %v, want %v", got, tc.want)
			}
		})
	}
}
