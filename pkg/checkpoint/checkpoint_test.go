package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func sample() *Checkpoint {
	cp := New("boot-1")
	cp.Claims["uid-1"] = &Claim{UID: "uid-1", Namespace: "ns", Name: "c", State: PrepareCompleted, Devices: []Device{{
		Requests: []string{"gpu"}, Pool: "node", Name: "gpu-0-mig-1g10gb-3", GPUUUID: "GPU-1", GPUMinor: 0,
		MIG:          &MIG{ProfileID: 0, Profile: "1g.10gb", Start: 3, Size: 1, Created: true, UUID: "MIG-1", GIID: 9, CIID: 0},
		CDIDeviceIDs: []string{"k8s.gpu.nvidia.com/claim=uid-1-gpu-0-mig-1g10gb-3"},
	}}}
	return cp
}

func TestSaveLoadRoundTrip(t *testing.T) {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	empty, err := s.Load()
	if err != nil || len(empty.Claims) != 0 {
		t.Fatalf("missing file: %v %+v", err, empty)
	}
	want := sample()
	if err := s.Save(want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	fi, err := os.Stat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("checkpoint mode %v is readable by others", fi.Mode().Perm())
	}
}

// TestUntrustedFilesAreSetAside covers every way a checkpoint can be bad:
// each is copied aside, and Load returns an empty checkpoint and a
// *CorruptError until a Save replaces the file.
func TestUntrustedFilesAreSetAside(t *testing.T) {
	good := func(t *testing.T, s *Store) []byte {
		if err := s.Save(sample()); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(s.Path())
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	cases := map[string]func(t *testing.T, s *Store) []byte{
		"empty":     func(*testing.T, *Store) []byte { return nil },
		"truncated": func(t *testing.T, s *Store) []byte { d := good(t, s); return d[:len(d)/2] },
		"garbage":   func(*testing.T, *Store) []byte { return []byte("\x00\x01not json") },
		"flipped byte": func(t *testing.T, s *Store) []byte {
			d := good(t, s)
			i := strings.Index(string(d), "gpu-0-mig")
			d[i] = 'x'
			return d
		},
		"future version": func(t *testing.T, s *Store) []byte {
			return []byte(strings.Replace(string(good(t, s)), `"version":1`, `"version":7`, 1))
		},
		"no version": func(*testing.T, *Store) []byte { return []byte(`{"data":{}}`) },
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			s, _ := NewStore(dir)
			if err := os.WriteFile(s.Path(), content(t, s), 0o600); err != nil {
				t.Fatal(err)
			}
			cp, err := s.Load()
			var corrupt *CorruptError
			if !errors.As(err, &corrupt) {
				t.Fatalf("want *CorruptError, got %v", err)
			}
			if cp == nil || len(cp.Claims) != 0 {
				t.Fatalf("want an empty checkpoint, got %+v", cp)
			}
			if _, err := os.Stat(corrupt.SetAside); err != nil {
				t.Errorf("set-aside copy missing: %v", err)
			}
			// A start that fails before saving what it rebuilt (a
			// full disk, a crash) leaves the next start the same loss
			// to rebuild from, not an empty checkpoint that would make
			// every prepared claim's CDI spec an orphan.
			restarted, _ := NewStore(dir)
			if _, err := restarted.Load(); !errors.As(err, &corrupt) {
				t.Errorf("a start after one that saved nothing: want *CorruptError, got %v", err)
			}
			// Once the rebuilt checkpoint is saved, it is what is read.
			if err := restarted.Save(New("rebuilt")); err != nil {
				t.Fatal(err)
			}
			if cp, err := s.Load(); err != nil || cp.BootID != "rebuilt" {
				t.Errorf("load after the rebuilt checkpoint was saved: %v %+v", err, cp)
			}
		})
	}
}

// TestUnknownFieldsAreIgnored: a newer plugin of the same version may add
// fields; this one reads what it knows.
func TestUnknownFieldsAreIgnored(t *testing.T) {
	s, _ := NewStore(t.TempDir())
	data := []byte(`{"bootID":"b","claims":{"u":{"uid":"u","namespace":"n","name":"c","state":"PrepareCompleted","devices":[],"futureField":{"x":1}}},"other":true}`)
	env := []byte(`{"version":1,"checksum":"` + checksum(data) + `","data":` + string(data) + `,"extra":1}`)
	if err := os.WriteFile(s.Path(), env, 0o600); err != nil {
		t.Fatal(err)
	}
	cp, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if c := cp.Claims["u"]; c == nil || c.State != PrepareCompleted || cp.BootID != "b" {
		t.Fatalf("got %+v", cp)
	}
}

// TestSaveLeavesNoTemporaryFiles: after saves the directory holds the
// checkpoint and its previous generation, nothing else.
func TestSaveLeavesNoTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewStore(dir)
	for i := 0; i < 3; i++ {
		if err := s.Save(sample()); err != nil {
			t.Fatal(err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 || entries[0].Name() != FileName || entries[1].Name() != FileName+PreviousSuffix {
		t.Fatalf("directory holds %v", entries)
	}
}

func TestReadBootID(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join(root, "proc/sys/kernel/random")
	os.MkdirAll(p, 0o755)
	os.WriteFile(filepath.Join(p, "boot_id"), []byte("abc-123\n"), 0o444)
	if id, err := ReadBootID(root); err != nil || id != "abc-123" {
		t.Fatalf("got %q %v", id, err)
	}
	if _, err := ReadBootID(t.TempDir()); err == nil {
		t.Fatal("missing boot_id must be an error")
	}
}

func BenchmarkSave(b *testing.B) {
	s, _ := NewStore(b.TempDir())
	cp := sample()
	for i := 0; i < b.N; i++ {
		if err := s.Save(cp); err != nil {
			b.Fatal(err)
		}
	}
}

func TestCloneIsDeep(t *testing.T) {
	orig := New("boot")
	orig.Claims["u"] = &Claim{UID: "u", State: PrepareCompleted, Devices: []Device{{
		Requests: []string{"r"}, Name: "gpu-0-mig-1g10gb-0", Env: map[string]string{"A": "1"},
		MIG: &MIG{ProfileID: 19, UUID: "MIG-1"}, CDIDeviceIDs: []string{"k8s.gpu.nvidia.com/claim=u-gpu-0"},
	}, {
		Requests: []string{"s"}, Name: "gpu-1-shared", ShareID: "share-1", Share: &Share{MemoryBytes: 1 << 30, ComputePercent: 25},
	}}}
	c := orig.Clone()
	if !reflect.DeepEqual(c, orig) {
		t.Fatalf("clone differs:\n%+v\n%+v", c, orig)
	}
	d := &c.Claims["u"].Devices[0]
	d.Requests[0], d.Env["A"], d.MIG.UUID, d.CDIDeviceIDs[0] = "x", "x", "x", "x"
	c.Claims["u"].Devices[1].Share.MemoryBytes = 1
	c.Claims["u"].State = PrepareStarted
	c.Claims["v"] = &Claim{}
	o := orig.Claims["u"]
	if o.Devices[0].Requests[0] != "r" || o.Devices[0].Env["A"] != "1" || o.Devices[0].MIG.UUID != "MIG-1" ||
		o.Devices[0].CDIDeviceIDs[0] == "x" || o.Devices[1].Share.MemoryBytes != 1<<30 || o.State != PrepareCompleted || len(orig.Claims) != 1 {
		t.Errorf("changing the clone changed the original: %+v", o)
	}
}
