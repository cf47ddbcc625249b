// Package version says which release of the driver a binary is.
package version

import "runtime/debug"

// Version is the release, stamped at build time:
//
//	go build -ldflags "-X github.com/gpu-dra/gpu-dra-driver/pkg/version.Version=0.1.0"
//
// test/cluster/image.sh stamps the image's tag. Unstamped builds report
// what the Go toolchain recorded (a module version, or "devel").
var Version = ""

// Get returns the stamped version, or the module version the binary was
// built from, or "devel".
func Get() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
