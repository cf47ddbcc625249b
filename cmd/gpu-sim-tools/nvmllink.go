//go:build simnvmllink

package main

// Built with -tags simnvmllink (and cgo), the simulated nvidia-smi and
// nvidia-cuda-mps-control need the driver's libnvidia-ml.so.1 as NVIDIA's
// do: the loader must find it, or the tool does not start
// ("error while loading shared libraries"). Nothing of the library is
// called; the simulated tools talk to the simulated kernel directly.
// simhosttest.LinkedTools builds it so for the production-path tests.

// #cgo LDFLAGS: -Wl,--no-as-needed -l:libnvidia-ml.so.1 -Wl,--as-needed
import "C"
