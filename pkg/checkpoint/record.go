package checkpoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// DeviceRecord is one prepared device as a CDI spec carries it, so that
// prepared claims can be rebuilt from their specs when the checkpoint is
// lost.
type DeviceRecord struct {
	Namespace string
	Claim     string
	Device    Device
}

// sealedRecord is a DeviceRecord as stored: versioned like the checkpoint,
// with a checksum over its fields' bytes exactly as stored (never
// re-marshalled). The fields keep the names of the unversioned record that
// plugins before it wrote and read, so an older plugin still reads it.
type sealedRecord struct {
	Version   int             `json:"version"`
	Checksum  string          `json:"checksum"`
	Namespace json.RawMessage `json:"namespace"`
	Claim     json.RawMessage `json:"claim"`
	Device    json.RawMessage `json:"device"`
}

func (r sealedRecord) sum() string {
	return checksum(bytes.Join([][]byte{r.Namespace, r.Claim, r.Device}, []byte{'\n'}))
}

// EncodeDevice returns the sealed record of one device of the claim. Its
// CDI device IDs are left out: they are derived from the spec.
func EncodeDevice(c *Claim, d Device) (string, error) {
	d.CDIDeviceIDs = nil
	r := sealedRecord{Version: Version}
	var err error
	if r.Namespace, err = json.Marshal(c.Namespace); err != nil {
		return "", fmt.Errorf("encode device record: %w", err)
	}
	if r.Claim, err = json.Marshal(c.Name); err != nil {
		return "", fmt.Errorf("encode device record: %w", err)
	}
	if r.Device, err = json.Marshal(d); err != nil {
		return "", fmt.Errorf("encode device record: %w", err)
	}
	r.Checksum = r.sum()
	out, err := json.Marshal(r)
	if err != nil {
		return "", fmt.Errorf("encode device record: %w", err)
	}
	return string(out), nil
}

// DecodeDevice opens a record made by EncodeDevice; an error means it
// cannot be trusted: not a record, a newer version, no version (written
// before records were versioned), or a checksum that does not match.
func DecodeDevice(raw string) (DeviceRecord, error) {
	var r sealedRecord
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return DeviceRecord{}, fmt.Errorf("device record: decode: %w", err)
	}
	switch {
	case r.Version > Version:
		return DeviceRecord{}, fmt.Errorf("device record written by a newer plugin (version %d, this plugin reads up to %d)", r.Version, Version)
	case r.Version < 1:
		return DeviceRecord{}, errors.New("device record has no version")
	case r.sum() != r.Checksum:
		return DeviceRecord{}, fmt.Errorf("device record checksum mismatch: record says %q, fields hash to %q", r.Checksum, r.sum())
	}
	var out DeviceRecord
	if err := json.Unmarshal(r.Namespace, &out.Namespace); err != nil {
		return DeviceRecord{}, fmt.Errorf("device record: namespace: %w", err)
	}
	if err := json.Unmarshal(r.Claim, &out.Claim); err != nil {
		return DeviceRecord{}, fmt.Errorf("device record: claim: %w", err)
	}
	if err := json.Unmarshal(r.Device, &out.Device); err != nil {
		return DeviceRecord{}, fmt.Errorf("device record: device: %w", err)
	}
	if len(out.Device.Requests) == 0 || out.Device.Name == "" {
		return DeviceRecord{}, errors.New("device record names no device or request")
	}
	return out, nil
}
