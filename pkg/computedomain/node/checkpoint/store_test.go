package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/klog/v2/ktesting"
)

func TestStoreRoundTripAndCorrupt(t *testing.T) {
	tests := []struct {
		name        string
		content     *string // nil: saved by Save
		wantClaims  int
		wantCorrupt bool
	}{
		{name: "missing file is empty"},
		{name: "saved is read back", content: nil, wantClaims: 1},
		{name: "garbage is set aside", content: ptr("{not json"), wantCorrupt: true},
		{name: "bad checksum is set aside", content: ptr(`{"version":1,"checksum":"sha256:00","data":{"claims":{}}}`), wantCorrupt: true},
		{name: "newer version is set aside", content: ptr(`{"version":9,"checksum":"x","data":{}}`), wantCorrupt: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := NewStore(ktesting.NewLogger(t, ktesting.NewConfig()), dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.content != nil:
				if err := os.WriteFile(s.Path(), []byte(*tt.content), 0o600); err != nil {
					t.Fatal(err)
				}
			case tt.wantClaims > 0:
				cp := New()
				cp.Claims["u1"] = &Claim{UID: "u1", Kind: KindChannel, Channel: 3, State: PrepareCompleted}
				if err := s.Save(cp); err != nil {
					t.Fatal(err)
				}
			}
			cp, err := s.Load()
			var corrupt *CorruptError
			if got := errors.As(err, &corrupt); got != tt.wantCorrupt {
				t.Fatalf("Load error %v, want corrupt %v", err, tt.wantCorrupt)
			}
			if len(cp.Claims) != tt.wantClaims {
				t.Fatalf("claims %d, want %d", len(cp.Claims), tt.wantClaims)
			}
			if tt.wantCorrupt {
				if _, err := os.Stat(corrupt.SetAside); err != nil {
					t.Fatalf("set-aside file: %v", err)
				}
			}
			if tt.wantClaims > 0 && cp.Claims["u1"].Channel != 3 {
				t.Fatalf("channel %d, want 3", cp.Claims["u1"].Channel)
			}
		})
	}
}

func TestNewStoreRemovesTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	tmp := filepath.Join(dir, "."+FileName+"-123.tmp")
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewStore(ktesting.NewLogger(t, ktesting.NewConfig()), dir, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file still there: %v", err)
	}
}

func ptr(s string) *string { return &s }
