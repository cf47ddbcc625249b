package nvmlnode

import (
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/dl"

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
		if opts.Simulate == "" {
			err = withLoadError(err, opts.LibraryPath)
		}
		return nil, err
	}
	n.SetDriverRoot(opts.DriverRoot)
	return n, nil
}

// withLoadError adds to an NVML initialisation error the dynamic loader's
// reason when the library does not load: go-nvml reports every failed
// dlopen as "library not found", also when the library is there but a
// library it needs is not (an image without libpthread.so.0, say).
func withLoadError(err error, path string) error {
	var re ReturnError
	if !errors.As(err, &re) || re.Code != nvml.ERROR_LIBRARY_NOT_FOUND {
		return err
	}
	if path == "" {
		path = "libnvidia-ml.so.1"
	}
	lib := dl.New(path, dl.RTLD_LAZY|dl.RTLD_GLOBAL)
	if openErr := lib.Open(); openErr != nil {
		return fmt.Errorf("%w: the dynamic loader says: %w", err, openErr)
	}
	_ = lib.Close()
	return err
}

// SimulatedModels lists the names Options.Simulate accepts.
func SimulatedModels() []string { return sim.Models() }
