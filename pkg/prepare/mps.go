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
