package nvmlserver_test

import (
	"os"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/driverroot"
)

// TestMain removes the links to the driver's libraries that the tests'
// runs of the driver's tools made (driverroot.ToolEnv).
func TestMain(m *testing.M) { os.Exit(driverroot.RunThenCleanup(m)) }
