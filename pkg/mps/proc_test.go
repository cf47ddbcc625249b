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

// TestReadSmall: only a regular file within the limit is read; a symlink,
// a FIFO (which would block a plain open), a directory and an oversized
// file are refused at once. procfs files, of size 0, read whole.
func TestReadSmall(t *testing.T) {
	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }
	if err := os.WriteFile(path("pid"), []byte("123\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path("big"), make([]byte, maxSmallSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(path("pid"), path("link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", path("zero")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path("fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, want, err string
	}{
		{name: "regular file", path: path("pid"), want: "123\n"},
		{name: "symlink to a regular file", path: path("link"), err: "symbolic link"},
		{name: "symlink to /dev/zero", path: path("zero"), err: "symbolic link"},
		{name: "FIFO without a writer", path: path("fifo"), err: "not a regular file"},
		{name: "directory", path: dir, err: "not a regular file"},
		{name: "device", path: "/dev/zero", err: "not a regular file"},
		{name: "over the limit", path: path("big"), err: "larger than"},
		{name: "missing", path: path("none"), err: "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readSmall(tc.path, maxSmallSize)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("read %q, error %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Errorf("read %q (%v), want %q", got, err, tc.want)
			}
		})
	}
	if data, err := readSmall("/proc/self/stat", maxStatSize); err != nil || !strings.HasPrefix(string(data), strconv.Itoa(os.Getpid())+" (") {
		t.Errorf("/proc/self/stat: %q (%v)", data, err)
	}
}
