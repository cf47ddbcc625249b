package nvmlnode

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/driverroot"
)

// Time-slice intervals of a GPU's compute scheduler, by the names users
// write in GpuConfig (sharing.timeSlicingConfig.interval), with the value
// `nvidia-smi compute-policy --set-timeslice` takes.
var timeSlices = map[string]int{"Default": 0, "Short": 1, "Medium": 2, "Long": 3}

// nvidiaSMITimeout bounds one nvidia-smi call.
const nvidiaSMITimeout = 30 * time.Second

// toolsState is the driver's own tooling, found under the driver root.
type toolsState struct {
	mu         sync.Mutex
	driverRoot string
}

// SetDriverRoot tells the node where the NVIDIA driver's binaries are
// (nvidia-smi under <root>/usr/bin or <root>/bin).
func (n *Node) SetDriverRoot(root string) {
	n.tools.mu.Lock()
	defer n.tools.mu.Unlock()
	n.tools.driverRoot = root
}

// SetTimeSlice sets the compute time slice of a whole GPU with the driver's
// nvidia-smi (NVML has no call for it). Setting DefaultTimeSlice restores
// the default.
func (n *Node) SetTimeSlice(ctx context.Context, gpuUUID, interval string) error {
	value, ok := timeSlices[interval]
	if !ok {
		return fmt.Errorf("time slice %q is not one of Default, Short, Medium, Long", interval)
	}
	smi, err := n.nvidiaSMI()
	if err != nil {
		return err
	}
	n.tools.mu.Lock()
	root := n.tools.driverRoot
	n.tools.mu.Unlock()
	env, err := driverroot.ToolEnv(root, os.Environ())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, nvidiaSMITimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, smi, "compute-policy", "-i", gpuUUID, "--set-timeslice", fmt.Sprint(value))
	cmd.Env = env // nvidia-smi needs the driver's libnvidia-ml.so.1
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("set time slice %s of %s with %s: %w: %s", interval, gpuUUID, smi, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (n *Node) nvidiaSMI() (string, error) {
	n.tools.mu.Lock()
	root := n.tools.driverRoot
	n.tools.mu.Unlock()
	return driverroot.FindBinary(root, "nvidia-smi")
}
