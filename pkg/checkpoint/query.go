package checkpoint

import "slices"

// Placement says where a MIG device is: its GPU, its GPU-instance profile
// and its first memory slice. It is the key of the checkpoint's MIG
// questions, and it is what is known of a device before it exists.
type Placement struct {
	GPUUUID   string
	ProfileID int
	Start     int
}

// Placement returns where the device is, and false for a device that is
// not a MIG device.
func (d Device) Placement() (Placement, bool) {
	if d.MIG == nil {
		return Placement{}, false
	}
	return Placement{GPUUUID: d.GPUUUID, ProfileID: d.MIG.ProfileID, Start: d.MIG.Start}, true
}

// createdMIG reports whether the claim created d and holds it (not an
// admin's record of it, which outlives it).
func createdMIG(d Device) bool {
	return !d.AdminAccess && d.MIG != nil && d.MIG.Created && d.MIG.UUID != ""
}

// holds reports whether the claim holds its devices: all but an Undone
// claim do.
func (c *Claim) holds() bool { return c.State != Undone }

// MIGAt returns the MIG device at the placement that a recorded claim
// created and holds.
func (c *Checkpoint) MIGAt(at Placement) (Device, bool) {
	for _, claim := range c.Claims {
		if !claim.holds() {
			continue
		}
		for _, d := range claim.Devices {
			if p, _ := d.Placement(); createdMIG(d) && p == at {
				return d, true
			}
		}
	}
	return Device{}, false
}

// MIGUUID returns the UUID of the MIG device that a recorded claim created
// on the GPU with these GPU and compute instance IDs, or "".
func (c *Checkpoint) MIGUUID(gpuUUID string, giid, ciid int) string {
	for _, claim := range c.Claims {
		if !claim.holds() {
			continue
		}
		for _, d := range claim.Devices {
			if createdMIG(d) && d.GPUUUID == gpuUUID && d.MIG.GIID == giid && d.MIG.CIID == ciid {
				return d.MIG.UUID
			}
		}
	}
	return ""
}

// Manages reports whether the live MIG device with this UUID at this
// placement is the plugin's: recorded as created by a claim, or at a
// placement that a claim still being prepared planned (created, not yet
// recorded).
func (c *Checkpoint) Manages(uuid string, at Placement) bool {
	for _, claim := range c.Claims {
		if !claim.holds() {
			continue
		}
		for _, d := range claim.Devices {
			if d.MIG == nil || d.AdminAccess {
				continue
			}
			if d.MIG.Created && d.MIG.UUID == uuid {
				return true
			}
			if p, _ := d.Placement(); claim.State == PrepareStarted && d.MIG.UUID == "" && p == at {
				return true
			}
		}
	}
	return false
}

// Owner returns the UID of a recorded claim other than uid that holds d
// or a device that cannot be prepared beside it, or "". The queries leave
// Undone claims out: they hold nothing.
func (c *Checkpoint) Owner(uid string, d Device) string {
	for _, claim := range c.Claims {
		if claim.UID == uid || !claim.holds() {
			continue
		}
		for _, o := range claim.Devices {
			if Conflict(d, o) {
				return claim.UID
			}
		}
	}
	return ""
}

// InstanceOwner returns the UID of a recorded claim other than uid that
// holds a MIG device of the profile on the GPU, when such claims hold max
// of them or more, or "". It is the instance limit a profile has beyond
// its placements (a GPU has one set of media engines, so one "+me"
// instance fits although seven placements exist): a device of the profile
// cannot be created beside them even on a free placement. Instances that
// exist without the driver (pre-created) and admin access are not counted.
// Of several holders it returns the lowest UID, so waiting is stable.
func (c *Checkpoint) InstanceOwner(uid, gpuUUID string, profileID, max int) string {
	var owners []string // one entry per device counted
	for _, claim := range c.Claims {
		if claim.UID == uid || !claim.holds() {
			continue
		}
		for _, d := range claim.Devices {
			if d.MIG == nil || d.AdminAccess || d.GPUUUID != gpuUUID || d.MIG.ProfileID != profileID ||
				(d.MIG.UUID != "" && !d.MIG.Created) {
				continue
			}
			owners = append(owners, claim.UID)
		}
	}
	if len(owners) == 0 || len(owners) < max {
		return ""
	}
	return slices.Min(owners)
}

// Conflict reports whether two prepared devices cannot coexist on the
// hardware: the same exclusive device, a share of a GPU and exclusive use
// of that GPU, the whole GPU and a MIG device on it, or two MIG devices
// that share a memory slice. Shares of one GPU coexist, as do MIG devices
// side by side, and admin access coexists with anything.
func Conflict(a, b Device) bool {
	if a.Pool != b.Pool || a.AdminAccess || b.AdminAccess {
		return false
	}
	if a.Name == b.Name && a.Share == nil && b.Share == nil {
		return true
	}
	if a.GPUUUID != b.GPUUUID {
		return false
	}
	switch {
	case a.Share != nil || b.Share != nil:
		return (a.Share == nil) != (b.Share == nil)
	case a.MIG == nil || b.MIG == nil:
		return true // the whole GPU beside itself or a MIG device on it
	}
	return a.MIG.Start < b.MIG.Start+b.MIG.Size && b.MIG.Start < a.MIG.Start+a.MIG.Size
}

// SharesThrough returns the UIDs of the recorded claims that hold a share
// of a GPU served by the MPS control daemon of directory mpsDir, sorted.
func (c *Checkpoint) SharesThrough(mpsDir string) []string {
	var out []string
	for uid, claim := range c.Claims {
		if claim.holds() && slices.ContainsFunc(claim.Devices, func(d Device) bool { return d.Share != nil && d.MPSDir == mpsDir }) {
			out = append(out, uid)
		}
	}
	slices.Sort(out)
	return out
}
