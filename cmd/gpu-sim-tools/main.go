// Command gpu-sim-tools is the simulated NVIDIA driver's nvidia-smi and
// nvidia-cuda-mps-control in one static program, which runs as the tool
// its name says. simhost.Create (gpu-sim host) installs copies of it in the
// simulated driver root. Build it without cgo, so that it runs in images
// without a C library:
//
//	CGO_ENABLED=0 go build ./cmd/gpu-sim-tools
package main

import (
	"os"
	"path/filepath"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simtools"
)

func main() {
	os.Exit(simtools.Main(filepath.Base(os.Args[0]), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
