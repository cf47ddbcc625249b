package devicemodel

import (
	"fmt"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// SharesMode is how a node offers its whole GPUs in consumable shares,
// the modes of NVIDIA's ConsumableShares (its --consumable-shares).
type SharesMode int

// Consumable shares modes.
const (
	// SharesDisabled: a whole GPU is one claim's.
	SharesDisabled SharesMode = iota
	// SharesMemory: each claim consumes memory, from 1 MiB in MiB steps,
	// by default all of it: a claim that names no memory holds the GPU
	// alone.
	SharesMemory
	// SharesUnlimited: each claim consumes memory from 0, by default 0:
	// any number of claims that name no memory share the GPU.
	SharesUnlimited
	// SharesCount: as SharesUnlimited, and each claim also consumes
	// shares of the GPU's ConsumableShares.Shares, one by default.
	SharesCount
)

// ConsumableShares is the consumable shares setting of a node (the
// plugin's --consumable-shares, or the node's
// names.ConsumableSharesLabel). When enabled, each GPU offered whole is
// published as a device that allows multiple allocations: the device the
// class gpu.nvidia.com selects (type=gpu, "gpu-<minor>") becomes the
// shareable one, so that a claim of that class can be packed onto a GPU
// that is already shared, as with NVIDIA's driver; were an exclusive
// device of the GPU published beside it, the allocator's first fit would
// hand that out first. It consumes the same counters as before, which the
// allocator charges once for all its allocations, so a GPU in consumable
// shares is never also a MIG device's or a shared.gpu.nvidia.com share's.
type ConsumableShares struct {
	Mode SharesMode
	// Shares is the number of shares of each GPU in SharesCount mode.
	Shares int
}

// Enabled reports whether whole GPUs are offered in consumable shares.
func (c ConsumableShares) Enabled() bool { return c.Mode != SharesDisabled }

// String gives the setting as the flag and label spell it.
func (c ConsumableShares) String() string {
	switch c.Mode {
	case SharesMemory:
		return names.ConsumableSharesMemory
	case SharesUnlimited:
		return names.ConsumableSharesUnlimited
	case SharesCount:
		return strconv.Itoa(c.Shares)
	}
	return names.ConsumableSharesDisabled
}

// ParseConsumableShares reads a consumable shares setting as NVIDIA's
// driver takes it: "disabled" (or empty, its chart's default), "memory",
// "unlimited", or a positive number of shares per GPU. The caller names
// the flag or label in its error.
func ParseConsumableShares(v string) (ConsumableShares, error) {
	switch v = strings.TrimSpace(v); v {
	case "", names.ConsumableSharesDisabled:
		return ConsumableShares{}, nil
	case names.ConsumableSharesMemory:
		return ConsumableShares{Mode: SharesMemory}, nil
	case names.ConsumableSharesUnlimited:
		return ConsumableShares{Mode: SharesUnlimited}, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return ConsumableShares{}, fmt.Errorf("%q is not %s, %s, %s or a positive number of shares per GPU",
			v, names.ConsumableSharesDisabled, names.ConsumableSharesMemory, names.ConsumableSharesUnlimited)
	}
	return ConsumableShares{Mode: SharesCount, Shares: n}, nil
}

// makeConsumable turns a whole GPU's device into one that claims share
// (c enabled), with NVIDIA's request policies: memory in MiB steps up to
// all of it (rounded down to a MiB), at least 1 MiB and by default all in
// SharesMemory mode, else at least and by default 0; in SharesCount mode
// also the capacity "shares", from 1 to c.Shares, 1 by default.
//
// Every capacity of a device that allows multiple allocations is
// consumed: one without a request policy is consumed whole by its first
// allocation, which would leave no room for a second. So the
// multiprocessors capacity (a number, not shareable) is not published on
// it; memory and shares are all it has.
func makeConsumable(d *resourceapi.Device, memoryBytes uint64, c ConsumableShares) {
	memory := int64(memoryBytes) / ShareMemoryStep * ShareMemoryStep
	least, byDefault := int64(0), int64(0)
	if c.Mode == SharesMemory {
		least, byDefault = ShareMemoryStep, memory
	}
	d.AllowMultipleAllocations = ptr.To(true)
	d.Capacity = map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
		names.CapacityMemory: {
			Value: *resource.NewQuantity(memory, resource.BinarySI),
			RequestPolicy: &resourceapi.CapacityRequestPolicy{
				Default: resource.NewQuantity(byDefault, resource.BinarySI),
				ValidRange: &resourceapi.CapacityRequestPolicyRange{
					Min:  resource.NewQuantity(least, resource.BinarySI),
					Max:  resource.NewQuantity(memory, resource.BinarySI),
					Step: resource.NewQuantity(ShareMemoryStep, resource.BinarySI),
				},
			},
		},
	}
	if c.Mode == SharesCount {
		d.Capacity[names.CapacityShares] = resourceapi.DeviceCapacity{
			Value: *resource.NewQuantity(int64(c.Shares), resource.DecimalSI),
			RequestPolicy: &resourceapi.CapacityRequestPolicy{
				Default: resource.NewQuantity(1, resource.DecimalSI),
				ValidRange: &resourceapi.CapacityRequestPolicyRange{
					Min:  resource.NewQuantity(1, resource.DecimalSI),
					Max:  resource.NewQuantity(int64(c.Shares), resource.DecimalSI),
					Step: resource.NewQuantity(1, resource.DecimalSI),
				},
			},
		}
	}
}
