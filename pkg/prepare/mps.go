package prepare

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
)

// sharedDaemonPrefix starts the keys of shared GPUs' daemons; claim UIDs
// never do.
const sharedDaemonPrefix = "shared-"

// sharedDaemon is the key of the MPS daemon of a shared GPU's shares.
func sharedDaemon(gpuUUID string) string { return sharedDaemonPrefix + gpuUUID }

// claimMPS reports whether the device uses the claim's own MPS daemon (not
// a shared GPU's).
func claimMPS(d checkpoint.Device) bool { return d.MPSDir != "" && d.Share == nil }

// mpsUUIDs returns the UUIDs of a claim's MPS devices in the order its
// daemon is given them (by device name), or nil. Prepare and start-up
// reconciliation both start the daemon with it, and mpsEnv numbers the
// devices' memory limits by it.
func mpsUUIDs(c *checkpoint.Claim) []string {
	devs := slices.Clone(c.Devices)
	slices.SortFunc(devs, func(a, b checkpoint.Device) int { return strings.Compare(a.Name, b.Name) })
	var out []string
	for _, d := range devs {
		if claimMPS(d) {
			out = append(out, deviceUUID(d))
		}
	}
	return out
}

// oneDaemonPerRequest refuses a request whose devices use different MPS
// control daemons: shares of several GPUs (count above 1 or allocation
// mode All of the shared class; the scheduler never gives one request a
// device twice). A container gets every device of a request it names, and
// reaches one daemon, at CUDA_MPS_PIPE_DIRECTORY: of the devices' mounts
// there only one takes effect, so the other GPUs would be out of its
// reach while their shares are held.
func oneDaemonPerRequest(rec *checkpoint.Claim) error {
	first := map[string]checkpoint.Device{} // by request, its first MPS device
	for _, d := range rec.Devices {
		if d.MPSDir == "" {
			continue
		}
		request := d.Requests[0]
		f, seen := first[request]
		if !seen {
			first[request] = d
			continue
		}
		if f.MPSDir != d.MPSDir {
			return fmt.Errorf("request %s: its devices %s and %s are shares of two GPUs, each with an MPS control daemon of its own, and a container reaches only one daemon; ask for one share per request (count 1)", request, f.Name, d.Name)
		}
	}
	return nil
}

// stopMPS stops the claim's MPS control daemon, if it has one. It is
// idempotent.
func stopMPS(ctx context.Context, m daemonStopper, rec *checkpoint.Claim) error {
	if !slices.ContainsFunc(rec.Devices, claimMPS) {
		return nil
	}
	if m == nil {
		return errors.New("the claim has an MPS control daemon, but MPS is not available on this node")
	}
	if err := m.Stop(ctx, rec.UID); err != nil {
		return fmt.Errorf("stop MPS control daemon: %w", err)
	}
	return nil
}
