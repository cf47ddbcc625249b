package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// TestWriteFailureIsAnError: a disk that refuses the write makes Save fail
// with the cause, and the checkpoint on disk stays what it was.
func TestWriteFailureIsAnError(t *testing.T) {
	fail := false
	s, err := NewStore(t.TempDir(), WithWriteFile(func(path string, data []byte) error {
		if fail {
			return syscall.ENOSPC
		}
		return hostfs.WriteFileAtomic(path, data)
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := sample()
	if err := s.Save(want); err != nil {
		t.Fatal(err)
	}
	fail = true
	if err := s.Save(New("other")); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("save on a full disk: %v, want ENOSPC", err)
	}
	if got, err := s.Load(); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("after the failed save: %v %+v, want %+v", err, got, want)
	}
}

// TestTemporaryFilesAreSweptAtOpen: a write killed between creating its
// temporary file and renaming it leaves the file behind; the next store
// opened on the directory removes it and keeps everything else.
func TestTemporaryFilesAreSweptAtOpen(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewStore(dir)
	if err := s.Save(sample()); err != nil {
		t.Fatal(err)
	}
	leftovers := []string{"." + FileName + "-1234.tmp", "." + FileName + PreviousSuffix + "-link.tmp"}
	kept := []string{FileName, "health.json", ".health.json-1.tmp"}
	for _, name := range append(leftovers[:len(leftovers):len(leftovers)], kept[1:]...) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := NewStore(dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range leftovers {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not swept: %v", name, err)
		}
	}
	for _, name := range kept {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s removed: %v", name, err)
		}
	}
}

// TestCorruptCheckpointKeepsThePreviousGeneration: when the checkpoint
// cannot be trusted, the generation saved before it is returned with the
// error; when that one is bad too, none is.
func TestCorruptCheckpointKeepsThePreviousGeneration(t *testing.T) {
	for _, tc := range []struct {
		name         string
		spoilPrev    bool
		wantPrevious bool
	}{
		{"previous readable", false, true},
		{"previous corrupt too", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := NewStore(t.TempDir())
			older := sample()
			if err := s.Save(older); err != nil {
				t.Fatal(err)
			}
			if err := s.Save(New("newer")); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(s.Path(), []byte("garbage"), 0o600); err != nil {
				t.Fatal(err)
			}
			if tc.spoilPrev {
				if err := os.WriteFile(s.Path()+PreviousSuffix, []byte("{}"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := s.Load()
			var corrupt *CorruptError
			if !errors.As(err, &corrupt) {
				t.Fatalf("want *CorruptError, got %v", err)
			}
			if got := corrupt.Previous != nil; got != tc.wantPrevious {
				t.Fatalf("previous generation returned: %v, want %v", got, tc.wantPrevious)
			}
			if tc.wantPrevious && !reflect.DeepEqual(corrupt.Previous, older) {
				t.Errorf("previous generation %+v, want %+v", corrupt.Previous, older)
			}
			// The first save after the loss keeps no previous generation:
			// the one on disk is older than what was lost.
			if err := s.Save(New("rebuilt")); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(s.Path() + PreviousSuffix); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stale previous generation kept: %v", err)
			}
		})
	}
}
