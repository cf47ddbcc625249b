package simhost

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCreate(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating device nodes needs root")
	}
	dir := t.TempDir()
	for i := 0; i < 2; i++ { // the second run finds everything in place
		r, err := Create(dir, []int{0, 1}, "550.54.15")
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		for _, n := range []string{"dev/nvidia0", "dev/nvidia1", "dev/nvidiactl", "dev/nvidia-uvm", "dev/nvidia-caps/nvidia-cap3"} {
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(r.DevRoot, n), &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(uint64(st.Rdev)) != 1 || unix.Minor(uint64(st.Rdev)) != 3 {
				t.Errorf("%s is not a 1:3 character device", n)
			}
		}
		for _, f := range []string{"usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15", "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "usr/bin/nvidia-smi"} {
			if _, err := os.Stat(filepath.Join(r.DriverRoot, f)); err != nil {
				t.Error(err)
			}
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
