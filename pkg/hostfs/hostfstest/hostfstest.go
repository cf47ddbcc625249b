// Package hostfstest helps tests check the permissions of what the driver
// creates on the host.
package hostfstest

import (
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2/ktesting"
)

// Umask sets the process umask for the rest of the test. The umask is
// process-wide: tests that use it must not run in parallel.
func Umask(t testing.TB, mask int) {
	t.Helper()
	old := syscall.Umask(mask)
	t.Cleanup(func() { syscall.Umask(old) })
}

// CheckModes fails the test for every path whose permission bits are not
// the wanted ones, or that group or others may write.
func CheckModes(t testing.TB, want map[string]fs.FileMode) {
	t.Helper()
	for path, mode := range want {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != mode || got&0o022 != 0 {
			t.Errorf("%s: mode %s, want %s", path, got, mode)
		}
	}
}

// Tightenings counts the directories hostfs.EnsureDir tightened, from the
// log of a ktesting logger made with ktesting.BufferLogs(true).
func Tightenings(logger logr.Logger) int {
	return strings.Count(logger.GetSink().(ktesting.Underlier).GetBuffer().String(), "Tightened")
}
