// Package cdispec writes the CDI spec files of the ComputeDomain driver's
// claims: one file per claim, named after its UID, with vendor and class
// of their own (Kind), so that neither the GPU driver's specs nor its
// start-up sweep of orphans ever meet these.
//
// A spec is validated with the CDI library before it replaces the file,
// and written atomically (temporary file, fsync, rename, fsync of the
// directory). Each device carries the claim's checkpoint record as an
// annotation (RecordAnnotation), so a plugin whose checkpoint was lost
// rebuilds its prepared claims from their specs.
package cdispec

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"k8s.io/klog/v2"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/devnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// Vendor and Class of the driver's CDI devices: IDs are
// "k8s.compute-domain.nvidia.com/claim=<claimUID>-<device>".
const (
	Vendor = "k8s.compute-domain.nvidia.com"
	Class  = "claim"
	Kind   = Vendor + "/" + Class
)

// RecordAnnotation is the device annotation holding the claim's
// checkpoint record (JSON).
const RecordAnnotation = "compute-domain.nvidia.com/claim"

// Modes of the CDI root and the spec files (world-readable, as is the CDI
// norm; writable by the plugin only: a spec gives containers host devices
// and mounts).
const (
	RootMode fs.FileMode = 0o755
	SpecMode fs.FileMode = 0o644
)

// maxSpecSize bounds a spec read back: an All-mode claim carries 2048
// device nodes, some 200 KiB.
const maxSpecSize = 4 << 20

// Mount is a bind mount into the containers, never with set-user-ID
// programs or device nodes working through it.
type Mount struct {
	HostPath, ContainerPath string
	ReadOnly                bool
}

// Device is one CDI device of a claim.
type Device struct {
	// Name is the allocated device's name ("channel-0", "daemon-0").
	Name   string
	Nodes  []devnode.Node
	Env    map[string]string
	Mounts []Mount
	// Record is stored as RecordAnnotation.
	Record any
}

// Writer writes and removes the spec files in a CDI root. Safe for
// concurrent use by claims with different UIDs.
type Writer struct {
	root string
	// write replaces hostfs-style atomic writing in fault tests.
	write func(path string, data []byte) error
}

// New creates (or tightens) root and removes temporary files a crash
// left there.
func New(logger klog.Logger, root string) (*Writer, error) {
	if err := hostfs.EnsureDir(logger, root, RootMode); err != nil {
		return nil, fmt.Errorf("CDI root (--cdi-root): %w", err)
	}
	stale, err := filepath.Glob(filepath.Join(root, "."+specPrefix+"*"+tempSuffix))
	if err != nil {
		return nil, fmt.Errorf("list temporary spec files: %w", err)
	}
	for _, f := range stale {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove temporary spec file: %w", err)
		}
	}
	return &Writer{root: root, write: writeSpec}, nil
}

// SetWriteFunc replaces the function that writes a spec file (tests
// inject a failing disk).
func (w *Writer) SetWriteFunc(f func(path string, data []byte) error) { w.write = f }

var specPrefix = cdiapi.GenerateTransientSpecName(Vendor, Class, "")

const (
	specSuffix = ".json"
	tempSuffix = ".tmp"
)

var uidPattern = regexp.MustCompile(`^[0-9a-f]+(-[0-9a-f]+)*$`)

func validateUID(uid string) error {
	if !uidPattern.MatchString(uid) {
		return fmt.Errorf("invalid claim UID %q: want lowercase hex digits and dashes", uid)
	}
	return nil
}

// DeviceID returns the CDI device ID of a claim's device.
func DeviceID(claimUID, device string) string {
	return parser.QualifiedName(Vendor, Class, claimUID+"-"+device)
}

// Path returns the spec file of a claim.
func (w *Writer) Path(claimUID string) string {
	return filepath.Join(w.root, specPrefix+claimUID+specSuffix)
}

// Write writes a claim's spec, replacing any earlier one, and returns the
// CDI device IDs by device name. On error nothing was replaced.
func (w *Writer) Write(claimUID string, devices []Device) (map[string][]string, error) {
	if err := validateUID(claimUID); err != nil {
		return nil, err
	}
	if len(devices) == 0 {
		return nil, fmt.Errorf("CDI spec of claim %s: no devices", claimUID)
	}
	spec := &specs.Spec{Kind: Kind}
	ids := make(map[string][]string, len(devices))
	for _, d := range devices {
		edits := specs.ContainerEdits{}
		for _, n := range d.Nodes {
			mode := devnode.ContainerMode
			edits.DeviceNodes = append(edits.DeviceNodes, &specs.DeviceNode{
				Path: n.Path, HostPath: n.HostPath, Type: "c", Major: n.Major, Minor: n.Minor, FileMode: &mode,
			})
		}
		for _, k := range slices.Sorted(maps.Keys(d.Env)) {
			edits.Env = append(edits.Env, k+"="+d.Env[k])
		}
		for _, m := range d.Mounts {
			access := "rw"
			if m.ReadOnly {
				access = "ro"
			}
			edits.Mounts = append(edits.Mounts, &specs.Mount{HostPath: m.HostPath, ContainerPath: m.ContainerPath,
				Options: []string{"rbind", access, "nosuid", "nodev"}})
		}
		dev := specs.Device{Name: claimUID + "-" + d.Name, ContainerEdits: edits}
		if d.Record != nil {
			rec, err := json.Marshal(d.Record)
			if err != nil {
				return nil, fmt.Errorf("CDI spec of claim %s: encode record: %w", claimUID, err)
			}
			dev.Annotations = map[string]string{RecordAnnotation: string(rec)}
		}
		spec.Devices = append(spec.Devices, dev)
		ids[d.Name] = []string{DeviceID(claimUID, d.Name)}
	}
	var err error
	if spec.Version, err = specs.MinimumRequiredVersion(spec); err != nil {
		return nil, fmt.Errorf("CDI spec of claim %s: version: %w", claimUID, err)
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("CDI spec of claim %s: encode: %w", claimUID, err)
	}
	if err := w.write(w.Path(claimUID), data); err != nil {
		return nil, fmt.Errorf("CDI spec of claim %s: %w", claimUID, err)
	}
	return ids, nil
}

// Delete removes a claim's spec; a missing one is no error.
func (w *Writer) Delete(claimUID string) error {
	if err := validateUID(claimUID); err != nil {
		return err
	}
	if err := os.Remove(w.Path(claimUID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove CDI spec of claim %s: %w", claimUID, err)
	}
	return nil
}

// ClaimUIDs lists the claims that have a spec file of this driver.
func (w *Writer) ClaimUIDs() ([]string, error) {
	entries, err := os.ReadDir(w.root)
	if err != nil {
		return nil, fmt.Errorf("list CDI root: %w", err)
	}
	var out []string
	for _, e := range entries {
		uid, ok := strings.CutPrefix(e.Name(), specPrefix)
		if !ok || e.IsDir() {
			continue
		}
		if uid, ok = strings.CutSuffix(uid, specSuffix); ok && validateUID(uid) == nil {
			out = append(out, uid)
		}
	}
	return out, nil
}

// Record decodes the record of a claim's spec (of its first device that
// has one) into v. A missing file's error wraps fs.ErrNotExist.
func (w *Writer) Record(claimUID string, v any) error {
	if err := validateUID(claimUID); err != nil {
		return err
	}
	data, err := hostfs.ReadBounded(w.Path(claimUID), maxSpecSize, true)
	if err != nil {
		return fmt.Errorf("read CDI spec of claim %s: %w", claimUID, err)
	}
	spec, err := cdiapi.ParseSpec(data)
	if err != nil || spec == nil {
		return fmt.Errorf("read CDI spec of claim %s: not a spec: %w", claimUID, err)
	}
	for _, d := range spec.Devices {
		if rec, ok := d.Annotations[RecordAnnotation]; ok {
			if err := json.Unmarshal([]byte(rec), v); err != nil {
				return fmt.Errorf("CDI spec of claim %s: record: %w", claimUID, err)
			}
			return nil
		}
	}
	return fmt.Errorf("CDI spec of claim %s has no record", claimUID)
}

// writeSpec writes a spec file atomically and durably with SpecMode,
// after the CDI library accepted it.
func writeSpec(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*"+tempSuffix)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(SpecMode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := cdiapi.ReadSpec(tmp.Name(), 0); err != nil {
		return fmt.Errorf("CDI library rejects the spec: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
