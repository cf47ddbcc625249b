package main

import (
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
)

// TestMPSFilesystemFlags: --mps-fs-size and --mps-fs-inodes become each
// daemon's tmpfs under the data directory; 0 turns it off; a size or
// inode count that leaves a daemon no room is refused, naming the flag.
func TestMPSFilesystemFlags(t *testing.T) {
	for _, tc := range []struct {
		size    string
		inodes  int64
		want    mps.Filesystem
		wantErr string
	}{
		{size: "64Mi", inodes: 4096, want: mps.Filesystem{Root: "/data/mps-fs", SizeBytes: 64 << 20, Inodes: 4096}},
		{size: "1Gi", inodes: 64, want: mps.Filesystem{Root: "/data/mps-fs", SizeBytes: 1 << 30, Inodes: 64}},
		{size: "0", inodes: 4096, want: mps.Filesystem{}},
		{size: "512Ki", inodes: 4096, wantErr: "--mps-fs-size 512Ki"},
		{size: "lots", inodes: 4096, wantErr: `--mps-fs-size "lots"`},
		{size: "64Mi", inodes: 10, wantErr: "--mps-fs-inodes 10"},
	} {
		o := runOptions{pluginDataDir: "/data", mpsFSSize: tc.size, mpsFSInodes: tc.inodes}
		got, err := o.mpsFilesystem()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s/%d: %v, want an error with %q", tc.size, tc.inodes, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s/%d: %+v (%v), want %+v", tc.size, tc.inodes, got, err, tc.want)
		}
	}
}
