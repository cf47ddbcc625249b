package checkpoint

import (
	"errors"
	"fmt"
)

// DeviceRecord is one prepared device as a CDI spec carries it, so that
// prepared claims can be rebuilt from their specs when the checkpoint is
// lost. It is sealed in the checkpoint's own envelope (version and
// checksum), so a rebuild trusts it exactly as far as it would trust the
// checkpoint.
type DeviceRecord struct {
	Namespace string `json:"namespace"`
	Claim     string `json:"claim"`
	Device    Device `json:"device"`
}

// EncodeDevice returns the sealed record of one device of the claim. Its
// CDI device IDs are left out: they are derived from the spec.
func EncodeDevice(c *Claim, d Device) (string, error) {
	d.CDIDeviceIDs = nil
	out, err := seal(DeviceRecord{Namespace: c.Namespace, Claim: c.Name, Device: d})
	if err != nil {
		return "", fmt.Errorf("encode device record: %w", err)
	}
	return string(out), nil
}

// DecodeDevice opens a record made by EncodeDevice; an error means it
// cannot be trusted.
func DecodeDevice(raw string) (DeviceRecord, error) {
	var r DeviceRecord
	if err := unseal([]byte(raw), &r); err != nil {
		return DeviceRecord{}, fmt.Errorf("device record: %w", err)
	}
	if len(r.Device.Requests) == 0 || r.Device.Name == "" {
		return DeviceRecord{}, errors.New("device record names no device or request")
	}
	return r, nil
}
