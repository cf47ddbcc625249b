package nvmlnode

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

// Options select the NVML implementation.
type Options struct {
	// Simulate names a simulated node (see SimulatedModels); empty means the
	// real NVML library.
	Simulate string
	// SimLatencies, when set, are the simulated node's hardware timings
	// (none: instant); nil leaves them to the simulator's environment
	// variable (sim.LatencyEnv).
	SimLatencies *sim.Latencies
	// SimStateDir holds the simulated node's state file; empty keeps the
	// state in this process only.
	SimStateDir string
	// LibraryPath overrides where libnvidia-ml.so.1 is loaded from, e.g.
	// under the driver root. Empty uses the dynamic loader's search path.
	LibraryPath string
	// DriverRoot is where the driver's binaries (nvidia-smi) are found;
	// empty means "/".
	DriverRoot string
}

// Open returns the node's GPUs through real or simulated NVML.
func Open(opts Options) (*Node, error) {
	var lib nvml.Interface
	if opts.Simulate != "" {
		s, err := sim.Open(opts.Simulate, opts.SimStateDir)
		if err != nil {
			return nil, fmt.Errorf("open simulated node: %w", err)
		}
		if opts.SimLatencies != nil {
			s.SetLatencies(*opts.SimLatencies)
		}
		lib = s
	} else {
		var libOpts []nvml.LibraryOption
		if opts.LibraryPath != "" {
			libOpts = append(libOpts, nvml.WithLibraryPath(opts.LibraryPath))
		}
		lib = nvml.New(libOpts...)
	}
	n, err := NewNode(lib)
	if err != nil {
		return nil, err
	}
	n.SetDriverRoot(opts.DriverRoot)
	return n, nil
}

// SimulatedModels lists the names Options.Simulate accepts.
func SimulatedModels() []string { return sim.Models() }
