// Package channels decides which kernel IMEX channel a domain's claim gets
// on this node. The assignment is not stored apart: it is derived from the
// checkpoint's channel claims, so it is exactly as durable as they are.
//
// Rules (docs of the node plugin, cd-contract):
//   - each domain on the node has one channel, shared by all of its claims;
//   - a domain's first claim gets the lowest channel no other domain holds,
//     starting at 0;
//   - a claim of allocationMode All holds every channel: it is refused while
//     another domain has a claim on the node, and while it is prepared no
//     other domain's claim is accepted.
package channels

import (
	"fmt"
	"slices"
	"strings"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Count is the number of channels the kernel driver offers.
const Count = names.IMEXChannelCount

// Request is what a new channel claim asks for.
type Request struct {
	DomainUID string
	All       bool
}

// Assign returns the channel of a new claim of req's domain, given the
// channel claims already recorded (prepared or being prepared; claims of
// other kinds are ignored). It has no side effects.
func Assign(claims []*checkpoint.Claim, req Request) (int, error) {
	used := make(map[int]bool)
	var others []string // other domains on the node
	own := -1
	for _, c := range claims {
		if c.Kind != checkpoint.KindChannel {
			continue
		}
		if c.Domain.UID == req.DomainUID {
			if !c.All && own < 0 {
				own = c.Channel
			}
			continue
		}
		if c.All {
			return 0, fmt.Errorf("node holds every IMEX channel for ComputeDomain %s (allocationMode All, claim %s/%s): no other domain can use the node until it is released",
				describe(c), c.Namespace, c.Name)
		}
		used[c.Channel] = true
		if d := describe(c); !slices.Contains(others, d) {
			others = append(others, d)
		}
	}
	if req.All {
		if len(others) > 0 {
			slices.Sort(others)
			return 0, fmt.Errorf("allocationMode All needs every IMEX channel of the node, but ComputeDomain(s) %s use channels here", strings.Join(others, ", "))
		}
		return 0, nil
	}
	if own >= 0 {
		return own, nil
	}
	for ch := 0; ch < Count; ch++ {
		if !used[ch] {
			return ch, nil
		}
	}
	return 0, fmt.Errorf("all %d IMEX channels of the node are in use by other ComputeDomains", Count)
}

// Of returns the channels a recorded channel claim holds.
func Of(c *checkpoint.Claim) []int {
	if !c.All {
		return []int{c.Channel}
	}
	out := make([]int, Count)
	for i := range out {
		out[i] = i
	}
	return out
}

func describe(c *checkpoint.Claim) string {
	if c.Domain.Name != "" {
		return c.Domain.Namespace + "/" + c.Domain.Name + " (" + c.Domain.UID + ")"
	}
	return c.Domain.UID
}
