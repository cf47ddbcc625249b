package prepare

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// sharedDaemonPrefix starts the keys of the daemons that a previous
// release ran per shared GPU, for all the GPU's shares; claim UIDs never
// do. Such daemons are kept for the shares that release prepared and
// stopped with the last of them.
const sharedDaemonPrefix = "shared-"

// sharedDaemon is the key of a previous release's daemon of a shared
// GPU's shares.
func sharedDaemon(gpuUUID string) string { return sharedDaemonPrefix + gpuUUID }

// legacyShare reports whether the device is a share that a previous
// release prepared, served by its GPU's daemon that the GPU's other such
// shares use too.
func legacyShare(d checkpoint.Device) bool {
	return d.Share != nil && strings.HasPrefix(filepath.Base(d.MPSDir), sharedDaemonPrefix)
}

// legacySharedGPUs returns the GPUs of the claim's legacy shares.
func legacySharedGPUs(c *checkpoint.Claim) []string {
	var out []string
	for _, d := range c.Devices {
		if legacyShare(d) && !slices.Contains(out, d.GPUUUID) {
			out = append(out, d.GPUUUID)
		}
	}
	return out
}

// claimDaemon reports whether the device uses its claim's own MPS daemon:
// a device the claim's configuration shares through MPS, or a share of a
// shared GPU. No tenant reaches another claim's daemon, pipe directory or
// log, and the daemon imposes the claim's share limits on every client.
func claimDaemon(d checkpoint.Device) bool { return d.MPSDir != "" && !legacyShare(d) }

// mpsUUIDs returns the UUIDs of the GPUs of the claim's own daemon in the
// order it is given them (by device name, each once), or nil. Prepare and
// start-up reconciliation both start the daemon with it, and the
// containers' environment numbers the devices' memory limits by it.
func mpsUUIDs(c *checkpoint.Claim) []string {
	devs := slices.Clone(c.Devices)
	slices.SortFunc(devs, func(a, b checkpoint.Device) int { return strings.Compare(a.Name, b.Name) })
	var out []string
	for _, d := range devs {
		if claimDaemon(d) && !slices.Contains(out, deviceUUID(d)) {
			out = append(out, deviceUUID(d))
		}
	}
	return out
}

// daemonLimits are the limits the claim's own daemon imposes on every
// client, from the claim's shares: on each GPU the memory of the claim's
// shares of it, and the compute they were allocated as the active thread
// percentage. A daemon has one percentage for all its GPUs: shares of
// GPUs with different compute in one claim are refused, and the devices
// the claim's configuration shares through MPS beside its shares get at
// most the shares' percentage (their own limits are the claim's choice,
// in the containers' environment, which can lower the daemon's but not
// raise them). A claim without shares has no daemon-side limits. The
// daemon runs in multi-user mode when a device's configuration asks for it.
func daemonLimits(rec *checkpoint.Claim) (mps.Limits, error) {
	memory := map[string]int64{}
	compute := map[string]int64{}
	device := map[string]string{} // a share's device name, by GPU
	multiUser := false
	for _, d := range rec.Devices {
		if claimDaemon(d) && d.MPSMultiUser {
			multiUser = true
		}
		if !claimDaemon(d) || d.Share == nil {
			continue
		}
		device[d.GPUUUID] = d.Name
		memory[d.GPUUUID] += max(d.Share.MemoryBytes>>20, 1)
		c := d.Share.ComputePercent
		if c <= 0 {
			c = 100 // none asked: the whole GPU's threads
		}
		compute[d.GPUUUID] = min(compute[d.GPUUUID]+c, 100)
	}
	if len(compute) == 0 {
		return mps.Limits{MultiUser: multiUser}, nil
	}
	gpus := slices.Sorted(maps.Keys(compute))
	pct := compute[gpus[0]]
	for _, g := range gpus[1:] {
		if compute[g] != pct {
			return mps.Limits{}, fmt.Errorf("the claim's shares of %s were allocated %d%% of its compute and those of %s %d%%, but the claim's MPS control daemon sets one active thread percentage for all its GPUs; ask for shares with different compute in separate claims",
				device[gpus[0]], pct, device[g], compute[g])
		}
	}
	l := mps.Limits{PinnedMemoryMiB: memory, MultiUser: multiUser, SharesOnly: !slices.ContainsFunc(rec.Devices, func(d checkpoint.Device) bool {
		p, ok := names.ParseDevice(d.Name)
		return claimDaemon(d) && (!ok || p.Type != names.TypeShared)
	})}
	if pct < 100 {
		l.ActiveThreadPercentage = int(pct)
	}
	return l, nil
}

// stopMPS stops the claim's MPS control daemon, if it has one. It is
// idempotent.
func stopMPS(ctx context.Context, m daemonStopper, rec *checkpoint.Claim) error {
	if !slices.ContainsFunc(rec.Devices, claimDaemon) {
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
