package devnode

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeNodes records nodes in memory instead of making them.
type fakeNodes map[string]uint64

func (f fakeNodes) mknod(path string, mode uint32, dev int) error {
	if _, ok := f[path]; ok {
		return unix.EEXIST
	}
	f[path] = uint64(dev)
	return nil
}

func (f fakeNodes) stat(path string, st *unix.Stat_t) error {
	dev, ok := f[path]
	if !ok {
		if _, err := os.Lstat(path); err == nil {
			st.Mode = unix.S_IFREG
			return nil
		}
		return unix.ENOENT
	}
	st.Mode = unix.S_IFCHR
	st.Rdev = dev
	return nil
}

func writeProc(t *testing.T, root, content string) {
	t.Helper()
	p := filepath.Join(root, "proc/devices")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestEnsure(t *testing.T) {
	tests := []struct {
		name     string
		proc     string
		existing map[int]uint64 // channel -> dev of a node already there
		file     bool           // a regular file at channel 0's path
		wantErr  string
	}{
		{name: "makes missing nodes", proc: "Character devices:\n195 nvidia\n234 nvidia-caps-imex-channels\n"},
		{name: "keeps a right node", proc: "Character devices:\n234 nvidia-caps-imex-channels\n", existing: map[int]uint64{0: unix.Mkdev(234, 0)}},
		{name: "refuses a wrong node", proc: "Character devices:\n234 nvidia-caps-imex-channels\n", existing: map[int]uint64{0: unix.Mkdev(1, 3)}, wantErr: "exists but is not"},
		{name: "refuses a file", proc: "Character devices:\n234 nvidia-caps-imex-channels\n", file: true, wantErr: "exists but is not"},
		{name: "no major", proc: "Character devices:\n195 nvidia\n", wantErr: "nvidia-caps-imex-channels"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeProc(t, root, tt.proc)
			f := fakeNodes{}
			for ch, dev := range tt.existing {
				f[filepath.Join(root, Path(ch))] = dev
			}
			if tt.file {
				p := filepath.Join(root, Path(0))
				_ = os.MkdirAll(filepath.Dir(p), 0o755)
				_ = os.WriteFile(p, nil, 0o600)
			}
			m := &Maker{DevRoot: root, ProcRoot: root, Mknod: f.mknod, Stat: f.stat}
			nodes, err := m.Ensure([]int{0, 5})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(nodes) != 2 || nodes[1].Path != "/dev/nvidia-caps-imex-channels/channel5" || nodes[1].Major != 234 || nodes[1].Minor != 5 {
				t.Fatalf("nodes %+v", nodes)
			}
			if f[filepath.Join(root, Path(5))] != unix.Mkdev(234, 5) {
				t.Fatalf("channel5 not made: %v", f)
			}
		})
	}
}

func TestMissingAndRemove(t *testing.T) {
	root := t.TempDir()
	writeProc(t, root, "Character devices:\n234 nvidia-caps-imex-channels\n")
	f := fakeNodes{filepath.Join(root, Path(0)): unix.Mkdev(234, 0), filepath.Join(root, Path(2)): unix.Mkdev(9, 9)}
	m := &Maker{DevRoot: root, ProcRoot: root, Mknod: f.mknod, Stat: f.stat, Unlink: func(p string) error {
		delete(f, p)
		return nil
	}}
	if _, err := m.Missing([]int{0, 1, 2}); err == nil || !strings.Contains(err.Error(), "exists but is not") {
		t.Fatalf("Missing with a wrong node: %v", err)
	}
	missing, err := m.Missing([]int{0, 1})
	if err != nil || len(missing) != 1 || missing[0] != 1 {
		t.Fatalf("Missing = %v, %v", missing, err)
	}
	if err := m.Remove(2); err == nil {
		t.Fatal("removed a node with other numbers")
	}
	if err := m.Remove(0); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(1); err != nil {
		t.Fatalf("removing a missing node: %v", err)
	}
	if _, ok := f[filepath.Join(root, Path(0))]; ok {
		t.Fatal("channel0 not removed")
	}
}
