package sim

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// Latencies are how long simulated hardware operations take. A change of
// MIG mode, or the creation or destruction of a GPU or compute instance,
// holds its GPU for its duration: changes of one GPU queue behind each
// other, as they do on hardware, and changes of different GPUs overlap.
// Reads never wait for a change; every NVML call that reads a GPU's state
// takes NVMLCall. The zero value is instant hardware.
type Latencies struct {
	MIGModeChange          time.Duration
	GPUInstanceCreate      time.Duration
	GPUInstanceDestroy     time.Duration
	ComputeInstanceCreate  time.Duration
	ComputeInstanceDestroy time.Duration
	NVMLCall               time.Duration
}

// HardwareLatencies are what LatencyEnv "hardware" sets. They are
// estimates (docs/benchmarks.md says where each comes from): no public
// measurement of NVML's MIG calls on H100 was found, and they vary with the
// driver version and the profile.
var HardwareLatencies = Latencies{
	MIGModeChange:          2 * time.Second,
	GPUInstanceCreate:      200 * time.Millisecond,
	GPUInstanceDestroy:     100 * time.Millisecond,
	ComputeInstanceCreate:  50 * time.Millisecond,
	ComputeInstanceDestroy: 30 * time.Millisecond,
	NVMLCall:               50 * time.Microsecond,
}

// LatencyEnv names the environment variable that sets the latencies of
// every simulated node a process opens (the twin of the plugin's
// --sim-latency): empty or "off" is instant hardware,
// "hardware" is HardwareLatencies, and a comma-separated list of
// name=duration ("hardware,gi-create=500ms", "ci-create=20ms") starts from
// the first item when it is "hardware" and from zero otherwise. Names:
// mig-mode, gi-create, gi-destroy, ci-create, ci-destroy, nvml-call.
const LatencyEnv = "GPU_DRA_SIM_LATENCY"

// ParseLatencies parses a LatencyEnv value.
func ParseLatencies(s string) (Latencies, error) {
	var l Latencies
	s = strings.TrimSpace(s)
	if s == "" || s == "off" {
		return l, nil
	}
	fields := map[string]*time.Duration{
		"mig-mode": &l.MIGModeChange, "gi-create": &l.GPUInstanceCreate, "gi-destroy": &l.GPUInstanceDestroy,
		"ci-create": &l.ComputeInstanceCreate, "ci-destroy": &l.ComputeInstanceDestroy, "nvml-call": &l.NVMLCall,
	}
	for i, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if i == 0 && item == "hardware" {
			l = HardwareLatencies
			continue
		}
		name, value, ok := strings.Cut(item, "=")
		if !ok {
			return Latencies{}, fmt.Errorf("simulated latency %q: want name=duration, \"hardware\" or \"off\"", item)
		}
		f, ok := fields[name]
		if !ok {
			return Latencies{}, fmt.Errorf("simulated latency %q: unknown name %q", item, name)
		}
		d, err := time.ParseDuration(value)
		if err != nil || d < 0 {
			return Latencies{}, fmt.Errorf("simulated latency %q: want a duration of zero or more", item)
		}
		*f = d
	}
	return l, nil
}

// latenciesFromEnv returns the latencies LatencyEnv sets.
func latenciesFromEnv() (Latencies, error) {
	l, err := ParseLatencies(os.Getenv(LatencyEnv))
	if err != nil {
		return Latencies{}, fmt.Errorf("%s: %w", LatencyEnv, err)
	}
	return l, nil
}

// SetLatencies changes the node's latencies; calls already waiting keep
// theirs.
func (n *Node) SetLatencies(l Latencies) { n.latency.Store(&l) }

// Latencies returns the node's latencies.
func (n *Node) Latencies() Latencies { return *n.latency.Load() }

// readDelay is the time of one NVML call that reads a GPU's state.
func (n *Node) readDelay() {
	if d := n.latency.Load().NVMLCall; d > 0 {
		time.Sleep(d)
	}
}
