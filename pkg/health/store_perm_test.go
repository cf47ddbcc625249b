package health

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"
)

// TestStoreFileIsOwnerOnly shows health.json is written 0600 under umask 0
// and replaces a wider file an older version left. The umask is
// process-wide, so this test is not parallel.
func TestStoreFileIsOwnerOnly(t *testing.T) {
	for _, tc := range []struct {
		name     string
		existing os.FileMode // of a file left behind; 0: none
	}{
		{name: "new file"},
		{name: "replaces a 0666 file", existing: 0o666},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hostfstest.Umask(t, 0)
			path := filepath.Join(t.TempDir(), StoreFileName)
			if tc.existing != 0 {
				if err := os.WriteFile(path, []byte("{}"), tc.existing); err != nil {
					t.Fatal(err)
				}
			}
			if err := NewStore(path).Save(&Saved{VolatileECC: map[string]uint64{"GPU-a": 1}}); err != nil {
				t.Fatal(err)
			}
			hostfstest.CheckModes(t, map[string]os.FileMode{path: checkpoint.FileMode})
		})
	}
}
