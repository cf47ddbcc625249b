// Package checkpoint persists what the ComputeDomain kubelet plugin
// prepared: for each claim, the domain it serves and the IMEX channel it
// was given. The channel assignment of the node is derived from it (see
// package channels), so the assignment survives restarts exactly as the
// claims do.
//
// The file is an envelope {version, checksum, data}, the checksum over the
// data bytes as stored, written atomically and durably
// (hostfs.WriteFileAtomic: temporary file, fsync, rename, fsync of the
// directory). A file that cannot be trusted is set aside and Load reports
// it with *CorruptError, so that the caller rebuilds from the CDI specs.
package checkpoint

import (
	"slices"
)

// Version is the schema version this code writes.
const Version = 1

// FileName is the checkpoint's name in its directory.
const FileName = "checkpoint.json"

// State is how far a claim's preparation got.
type State string

// Claim states. A claim is recorded PrepareStarted, with its channel,
// before any side effect on the node (device nodes, CDI spec, daemon
// directory), so that a crash at any later point leaves a record of what
// may exist: the kubelet's retry finishes it, an unprepare undoes it, and
// a start rolls it back.
const (
	PrepareStarted   State = "PrepareStarted"
	PrepareCompleted State = "PrepareCompleted"
)

// Kind is what a claim prepares.
type Kind string

// Claim kinds.
const (
	// KindChannel is a workload's channel claim.
	KindChannel Kind = "channel"
	// KindDaemon is a domain daemon's claim.
	KindDaemon Kind = "daemon"
)

// Checkpoint is everything the plugin must remember across restarts.
type Checkpoint struct {
	// Claims by claim UID.
	Claims map[string]*Claim `json:"claims"`
	// Nodes are the channels whose host device nodes this plugin made
	// (recorded before making them): each is removed once no recorded
	// claim holds its channel. Nodes it found are never removed.
	Nodes []int `json:"nodes,omitempty"`
}

// Claim is one prepared (or being prepared) ResourceClaim. Unprepare gets
// only the claim's UID, namespace and name: everything it must undo is
// here.
type Claim struct {
	UID       string `json:"uid"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	State     State  `json:"state"`
	Kind      Kind   `json:"kind"`
	// Devices are the allocated devices of the driver this claim got
	// (one per request result), returned to the kubelet.
	Devices []Device `json:"devices"`
	// Domain is the ComputeDomain the claim serves.
	Domain Domain `json:"domain"`
	// CliqueID is the node's clique when the claim was prepared.
	CliqueID string `json:"cliqueID,omitempty"`
	// Channel is the IMEX channel of a channel claim: its domain's
	// channel on the node. Meaningless when All is set.
	Channel int `json:"channel"`
	// All is set for a channel claim of allocationMode All: the claim
	// holds every channel of the node.
	All bool `json:"all,omitempty"`
}

// Device is one allocation result the claim was prepared for.
type Device struct {
	Requests []string `json:"requests"`
	Pool     string   `json:"pool"`
	Name     string   `json:"name"`
	// ShareID is the allocation's share of the device (the devices
	// allow multiple allocations), returned to the kubelet as it is.
	ShareID      string   `json:"shareID,omitempty"`
	CDIDeviceIDs []string `json:"cdiDeviceIDs,omitempty"`
}

// Domain identifies a ComputeDomain.
type Domain struct {
	UID       string `json:"uid"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// New returns an empty checkpoint.
func New() *Checkpoint { return &Checkpoint{Claims: map[string]*Claim{}} }

// Clone returns a deep copy.
func (c *Checkpoint) Clone() *Checkpoint {
	out := &Checkpoint{Claims: make(map[string]*Claim, len(c.Claims)), Nodes: slices.Clone(c.Nodes)}
	for uid, cl := range c.Claims {
		out.Claims[uid] = cl.Clone()
	}
	return out
}

// Clone returns a deep copy of the claim.
func (c *Claim) Clone() *Claim {
	out := *c
	out.Devices = make([]Device, len(c.Devices))
	for i, d := range c.Devices {
		d.Requests = slices.Clone(d.Requests)
		d.CDIDeviceIDs = slices.Clone(d.CDIDeviceIDs)
		out.Devices[i] = d
	}
	return &out
}

// Sorted returns the claims ordered by UID, for deterministic walks.
func (c *Checkpoint) Sorted() []*Claim {
	out := make([]*Claim, 0, len(c.Claims))
	for _, cl := range c.Claims {
		out = append(out, cl)
	}
	slices.SortFunc(out, func(a, b *Claim) int {
		switch {
		case a.UID < b.UID:
			return -1
		case a.UID > b.UID:
			return 1
		}
		return 0
	})
	return out
}
