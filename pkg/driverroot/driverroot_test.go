package driverroot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindLibrary(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string // relative to the root; a "->" makes a symlink
		want  string   // relative to the root; empty: not found
	}{
		{"multiarch link to the versioned file", []string{"usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15", "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1->libnvidia-ml.so.550.54.15"}, "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"},
		{"RPM layout: lib64 before the 32-bit usr/lib", []string{"usr/lib/libnvidia-ml.so.1", "usr/lib64/libnvidia-ml.so.1"}, "usr/lib64/libnvidia-ml.so.1"},
		{"a dangling link is not the library", []string{"usr/lib64/libnvidia-ml.so.1->gone", "usr/lib/libnvidia-ml.so.1"}, "usr/lib/libnvidia-ml.so.1"},
		{"a directory is not the library", []string{"usr/lib64/libnvidia-ml.so.1/x"}, ""},
		{"none", []string{"usr/lib64/libcuda.so.1"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for _, f := range tc.files {
				name, target, link := strings.Cut(f, "->")
				p := filepath.Join(root, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				var err error
				if link {
					err = os.Symlink(target, p)
				} else {
					err = os.WriteFile(p, nil, 0o644)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			got, err := FindLibrary(root, "libnvidia-ml.so.1")
			switch {
			case tc.want == "" && (err == nil || !strings.Contains(err.Error(), "libnvidia-ml.so.1 not found under the driver root")):
				t.Errorf("found %q (%v), want a not-found error", got, err)
			case tc.want != "" && (err != nil || got != filepath.Join(root, tc.want)):
				t.Errorf("found %q (%v), want %s", got, err, tc.want)
			}
		})
	}
}
