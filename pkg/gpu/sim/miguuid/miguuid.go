// Package miguuid makes the simulated driver's MIG device UUIDs, which
// carry where the device is: its GPU's index and its GPU and compute
// instance profiles. A real MIG UUID is random; the simulated nvidia-smi
// in a container, which cannot ask the simulated kernel, reads the parent
// GPU and the profile from it to print them as NVIDIA's "nvidia-smi -L"
// does. Nothing but the simulator may rely on it.
package miguuid

import (
	"crypto/rand"
	"fmt"

	"github.com/google/uuid"
)

// marker is in byte 10 of every simulated MIG UUID (the first byte of the
// UUID's node field), so that a UUID made elsewhere is mostly told apart.
const marker = 0x5a

// Where reports where a MIG device is.
type Where struct {
	// GPU is the parent GPU's NVML index.
	GPU int
	// GIProfile and CIProfile are the NVML profile IDs of its GPU and
	// compute instance.
	GIProfile, CIProfile int
}

// New returns a new random MIG UUID ("MIG-" and a version 4 UUID) that
// carries w; each field must be 0 to 255.
func New(w Where) (string, error) {
	for _, v := range []int{w.GPU, w.GIProfile, w.CIProfile} {
		if v < 0 || v > 255 {
			return "", fmt.Errorf("simulated MIG UUID: %+v: each field must be 0 to 255", w)
		}
	}
	var u uuid.UUID
	if _, err := rand.Read(u[:]); err != nil {
		return "", fmt.Errorf("simulated MIG UUID: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	u[10], u[11], u[12], u[13] = marker, byte(w.GPU), byte(w.GIProfile), byte(w.CIProfile)
	return "MIG-" + u.String(), nil
}

// Parse returns what a UUID made by New carries; ok is false for any
// other string.
func Parse(s string) (w Where, ok bool) {
	if len(s) < 4 || s[:4] != "MIG-" {
		return Where{}, false
	}
	u, err := uuid.Parse(s[4:])
	if err != nil || u[10] != marker {
		return Where{}, false
	}
	return Where{GPU: int(u[11]), GIProfile: int(u[12]), CIProfile: int(u[13])}, true
}
