package devicemodel

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Offer is what an operator lets a node advertise: which kinds of device,
// and which MIG profiles. Fewer devices cost every scheduler less memory
// and time (docs/benchmarks.md gives the figures); a kind or profile not
// offered can still be used if a claim was allocated it before.
type Offer struct {
	// Whole, MIG, Shared and VFIO say whether whole GPUs, MIG placements,
	// shared GPUs and GPUs for VMs are offered. Shared also needs
	// Input.SharedGPUs, VFIO Input.VFIO.
	Whole, MIG, Shared, VFIO bool
	// MIGProfiles, when not empty, are the MIG profiles offered, each as its
	// size ("1g") or its names.SanitizeProfile form ("1g10gb").
	MIGProfiles []string
	// ConsumableShares, when set, replaces the plugin's
	// Input.ConsumableShares on this node.
	ConsumableShares *ConsumableShares
}

// OfferAll offers every device the plugin's options allow.
var OfferAll = Offer{Whole: true, MIG: true, Shared: true, VFIO: true}

// ParseOffer reads a node's offer from its labels (names.DeviceKindsLabel,
// names.MIGProfilesLabel, names.ConsumableSharesLabel). Absent labels offer everything; a value it
// does not understand is an error, so a typo never publishes more than the
// operator asked for.
func ParseOffer(labels map[string]string) (Offer, error) {
	o := OfferAll
	if v, ok := labels[names.DeviceKindsLabel]; ok {
		o.Whole, o.MIG, o.Shared, o.VFIO = false, false, false, false
		for _, k := range strings.Split(v, "_") {
			switch k {
			case names.KindWhole:
				o.Whole = true
			case names.KindMIG:
				o.MIG = true
			case names.KindShared:
				o.Shared = true
			case names.KindVFIO:
				o.VFIO = true
			default:
				return Offer{}, fmt.Errorf("label %s=%q: unknown device kind %q, want %s, %s, %s or %s joined by _",
					names.DeviceKindsLabel, v, k, names.KindWhole, names.KindMIG, names.KindShared, names.KindVFIO)
			}
		}
	}
	if v, ok := labels[names.MIGProfilesLabel]; ok {
		for _, p := range strings.Split(v, "_") {
			if p == "" || names.SanitizeProfile(p) != p {
				return Offer{}, fmt.Errorf("label %s=%q: %q is not a profile size (1g) or sanitized name (1g10gb)", names.MIGProfilesLabel, v, p)
			}
			o.MIGProfiles = append(o.MIGProfiles, p)
		}
	}
	if v, ok := labels[names.ConsumableSharesLabel]; ok {
		c, err := ParseConsumableShares(v)
		if err != nil {
			return Offer{}, fmt.Errorf("label %s=%q: %w", names.ConsumableSharesLabel, v, err)
		}
		o.ConsumableShares = &c
	}
	return o, nil
}

// offersProfile says whether the offer includes MIG profile p.
func (o Offer) offersProfile(p *gpu.MIGProfile) bool {
	if !o.MIG {
		return false
	}
	if len(o.MIGProfiles) == 0 {
		return true
	}
	return slices.Contains(o.MIGProfiles, names.SanitizeProfile(p.Name)) ||
		slices.Contains(o.MIGProfiles, strconv.Itoa(p.ComputeSlices)+"g")
}
