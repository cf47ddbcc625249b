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

// SkipRootTestsEnv, set to 1, lets tests that need root skip when not
// run as root. Unset, such a test fails: the project's tests run as root
// (make test, CI), and a test that skips silently proves nothing.
const SkipRootTestsEnv = "GPU_DRA_SKIP_ROOT_TESTS"

// RequireRoot fails the test unless it runs as root, saying why it needs
// root; with SkipRootTestsEnv=1 it skips instead.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv(SkipRootTestsEnv) == "1" {
		t.Skipf("%s (%s=1)", why, SkipRootTestsEnv)
	}
	t.Fatalf("%s: run the tests as root, or set %s=1 to skip this one", why, SkipRootTestsEnv)
}

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
