// Package cdi writes the Container Device Interface (CDI) spec files through
// which the container runtime gives a prepared claim's devices to containers.
//
// There is one spec file per claim, named after the claim's UID, with one CDI
// device per allocated device. Each device carries its device nodes (the GPU,
// the driver's control nodes and, for MIG, the capability nodes of its GPU and
// compute instance) and its environment. The driver's user-space files
// (libraries, tools and configuration, discovered once under the driver root)
// are mounted by the spec-level edits, which the runtime applies once for any
// device of the spec, with NVIDIA_VISIBLE_DEVICES=void (see spec.go). Files are written atomically and validated with the CDI library first.
package cdi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"k8s.io/klog/v2"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpu-dra/gpu-dra-driver/pkg/driverroot"
	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// Vendor and Class of our CDI devices. Device IDs are
// "k8s.gpu.nvidia.com/claim=<claimUID>-<device>".
const (
	Vendor = "k8s.gpu.nvidia.com"
	Class  = "claim"
	// Kind is the kind of our spec files.
	Kind = Vendor + "/" + Class
)

// DefaultCDIRoot is where spec files are written when Options.CDIRoot is
// empty. It is one of the directories containerd and CRI-O read by default.
const DefaultCDIRoot = "/var/run/cdi"

// Modes of the CDI root and of the spec files. The container runtime
// (root) reads the specs; other CDI producers share the root and tools
// such as podman read it as other users, so both are world-readable, as
// is the CDI norm. Neither is writable by anyone but the owner: whoever
// can write a spec can give a container any host device or mount.
const (
	RootMode fs.FileMode = 0o755
	SpecMode fs.FileMode = 0o644
)

// Options configure a Writer. Empty roots default to "/".
type Options struct {
	// CDIRoot is the directory the spec files are written to (default
	// DefaultCDIRoot). It is created with RootMode if missing; an existing
	// one loses any permission beyond RootMode (see hostfs.EnsureDir).
	CDIRoot string
	// DriverRoot is the host path of the NVIDIA driver installation: "/" on a
	// standard node, "/run/nvidia/driver" with the GPU operator. Specs name
	// the driver's files by their paths under it.
	DriverRoot string
	// DriverRootMount is where this process reads DriverRoot: its mount in
	// the plugin's container (the host's "/" cannot be mounted at "/").
	// Empty means DriverRoot itself.
	DriverRootMount string
	// DevRoot is the host root under which /dev/nvidia* live: the GPU
	// nodes and nvidiactl are looked up there.
	DevRoot string
	// ProcRoot is the host root under which /proc/devices and
	// /proc/driver/nvidia* live: the nvidia-uvm and MIG capability nodes
	// are numbered from them (see devnodes.go), and a GPU's PCI bus ID is
	// read there for its DRM nodes (see drm.go).
	ProcRoot string
	// SysRoot is the host root under which /sys lives: a whole GPU's DRM
	// nodes are named by its PCI device's drm directory there.
	SysRoot string
	// RequireLibraries makes New fail when libcuda.so.* or libnvidia-ml.so.*
	// is not found under DriverRoot. Without it the Writer logs a warning
	// and containers get the device nodes only (a simulated node may run
	// without libraries).
	RequireLibraries bool
	// Logger logs what New changes on the host, such as a CDI root it
	// tightened, and the driver files it found (SONAME links, hook). The
	// zero Logger discards.
	Logger klog.Logger
}

// Device is one allocated device of a claim.
type Device struct {
	// Name is the allocated device's name, e.g. "gpu-0" or
	// "gpu-0-mig-1g10gb-3"; it must be a DNS label.
	Name string
	// Request is the claim request the device was allocated for. Devices of
	// the same request share EnvDeviceUUIDs.
	Request string
	// GPUMinor is the minor of /dev/nvidia<minor>: the parent GPU for MIG.
	GPUMinor int
	// UUID is "GPU-..." for a whole GPU, "MIG-..." for a MIG device.
	UUID string
	// MIG is nil for a whole GPU.
	MIG *MIGDevice
	// VFIO is set for a GPU passed through to a VM: it gets the VFIO
	// nodes of the GPU, and none of the NVIDIA driver's.
	VFIO *VFIODevice
	// Env is extra environment for containers that get this device (sharing
	// settings); it may not set the visible-devices variables.
	Env map[string]string
	// Mounts are bind mounts for containers that get this device (the MPS
	// pipe and log directories).
	Mounts []Mount
	// Annotations are stored as the CDI device's annotations, for readers
	// of the spec file (see Writer.DeviceAnnotations).
	Annotations map[string]string
}

// Mount is a bind mount of a host directory into the container, never
// with set-user-ID programs or device nodes working through it (nosuid,
// nodev): whatever one container leaves there, another may run or open.
type Mount struct {
	HostPath, ContainerPath string
	// ReadOnly mounts it read-only; otherwise it is read-write.
	ReadOnly bool
}

// options are the mount's OCI options.
func (m Mount) options() []string {
	access := "rw"
	if m.ReadOnly {
		access = "ro"
	}
	return []string{"rbind", access, "nosuid", "nodev"}
}

// MIGDevice identifies a MIG device within its parent GPU.
type MIGDevice struct {
	GIID int // GPU instance ID
	CIID int // compute instance ID within the GPU instance
	// Graphics says that its profile has graphics ("+gfx", RTX PRO
	// Blackwell): it gets its GPU's DRM nodes, as a whole GPU does and as
	// NVIDIA's CDI generator gives them to such a device.
	Graphics bool
}

// Writer writes, lists and removes the spec files of claims. It is safe for
// concurrent use by claims with different UIDs.
type Writer struct {
	opts Options
	// shared are the spec-level edits: the driver's files, found by New.
	shared specs.ContainerEdits
	// missing are required libraries not found under the driver root.
	missing  []string
	warnOnce sync.Once
}

// New checks that the roots exist, creates CDIRoot, removes temporary files
// a crash left behind, and discovers the driver's files under DriverRoot.
// The discovery is done once: a driver upgrade needs a restart.
func New(opts Options) (*Writer, error) {
	if opts.CDIRoot == "" {
		opts.CDIRoot = DefaultCDIRoot
	}
	if err := defaultRoots(&opts); err != nil {
		return nil, err
	}
	if err := hostfs.EnsureDir(opts.Logger, opts.CDIRoot, RootMode); err != nil {
		return nil, fmt.Errorf("CDI root (--cdi-root): %w", err)
	}
	stale, err := filepath.Glob(filepath.Join(opts.CDIRoot, "."+specPrefix+"*"+tempSuffix))
	if err != nil {
		return nil, fmt.Errorf("list temporary spec files: %w", err)
	}
	for _, f := range stale {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove temporary spec file: %w", err)
		}
	}
	files, err := discoverDriverFiles(opts.DriverRootMount, opts.DriverRoot)
	if err != nil {
		return nil, err
	}
	if len(files.missing) > 0 && opts.RequireLibraries {
		return nil, fmt.Errorf("%s %s: no %s found in %s",
			driverRootWhat, opts.DriverRootMount, strings.Join(files.missing, ", "), strings.Join(driverroot.LibraryDirs, ", "))
	}
	w := &Writer{opts: opts, missing: files.missing}
	w.shared.Env = []string{envNVIDIAVisible + "=" + nvidiaVisibleVoid}
	w.shared.Mounts = files.mounts
	hook := "none"
	if files.hook != nil {
		w.shared.Hooks = []*specs.Hook{files.hook}
		hook = files.hook.Path
	}
	opts.Logger.Info("Driver files for CDI specs", "driverRoot", opts.DriverRoot,
		"mounts", len(files.mounts), "sonameLinks", files.links, "ldcacheHook", hook)
	if len(files.absent) > 0 {
		opts.Logger.Info("Driver files not found under the driver root: containers do without them",
			"driverRoot", opts.DriverRoot, "byCapability", files.absent)
	}
	if len(files.unlisted) > 0 {
		opts.Logger.Info("Driver libraries of the driver's version that the plugin's table does not list; containers get them too",
			"driverRoot", opts.DriverRoot, "libraries", files.unlisted)
	}
	if len(files.refused) > 0 {
		opts.Logger.Info("Warning: driver library links not followed: each must name a library file beside it",
			"driverRoot", opts.DriverRoot, "links", files.refused)
	}
	return w, nil
}

// defaultRoots sets opts' empty roots to "/" and checks that the driver
// root (where this process reads it), the dev, proc and sys roots are
// directories.
func defaultRoots(opts *Options) error {
	if opts.DriverRoot == "" {
		opts.DriverRoot = "/"
	}
	if opts.DriverRootMount == "" {
		opts.DriverRootMount = opts.DriverRoot
	}
	for _, r := range []struct {
		path *string
		what string
	}{
		{&opts.DriverRootMount, driverRootWhat},
		{&opts.DevRoot, "dev root (--dev-root)"},
		{&opts.ProcRoot, "proc root (--proc-root)"},
		{&opts.SysRoot, "sys root (--sys-root)"},
	} {
		if *r.path == "" {
			*r.path = "/"
		}
		fi, err := os.Stat(*r.path)
		if err != nil {
			return fmt.Errorf("%s: %w", r.what, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s %s: not a directory", r.what, *r.path)
		}
	}
	return nil
}

// DeviceID returns the CDI device ID of a claim's device.
func DeviceID(claimUID, deviceName string) string {
	return parser.QualifiedName(Vendor, Class, cdiName(claimUID, deviceName))
}

// cdiName is the unqualified CDI name of a claim's device.
func cdiName(claimUID, deviceName string) string {
	return claimUID + "-" + deviceName
}

// specPrefix starts the name of every spec file of ours: the claim UID
// follows, then ".json".
var specPrefix = cdiapi.GenerateTransientSpecName(Vendor, Class, "")

const (
	specSuffix = ".json"
	// tempSuffix ends temporary files; the CDI library ignores them.
	tempSuffix = ".tmp"
)

// SpecPath returns the path of a claim's spec file.
func (w *Writer) SpecPath(claimUID string) string {
	return filepath.Join(w.opts.CDIRoot, specPrefix+claimUID+specSuffix)
}

// uidPattern matches Kubernetes UIDs as the API server makes them.
var uidPattern = regexp.MustCompile(`^[0-9a-f]+(-[0-9a-f]+)*$`)

func validateClaimUID(uid string) error {
	if !uidPattern.MatchString(uid) {
		return fmt.Errorf("invalid claim UID %q: want lowercase hex digits and dashes", uid)
	}
	return nil
}

// DeleteClaimSpec removes a claim's spec file. A missing file is not an
// error.
func (w *Writer) DeleteClaimSpec(claimUID string) error {
	if err := validateClaimUID(claimUID); err != nil {
		return err
	}
	if err := os.Remove(w.SpecPath(claimUID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove CDI spec of claim %s: %w", claimUID, err)
	}
	return nil
}

// ClaimUIDs returns the UIDs of the claims that have a spec file in CDIRoot,
// in lexical order. Start-up reconciliation uses it to find orphans.
func (w *Writer) ClaimUIDs() ([]string, error) {
	entries, err := os.ReadDir(w.opts.CDIRoot)
	if err != nil {
		return nil, fmt.Errorf("list CDI root: %w", err)
	}
	var uids []string
	for _, e := range entries {
		uid, ok := strings.CutPrefix(e.Name(), specPrefix)
		if !ok || e.IsDir() {
			continue
		}
		uid, ok = strings.CutSuffix(uid, specSuffix)
		if ok && validateClaimUID(uid) == nil {
			uids = append(uids, uid)
		}
	}
	return uids, nil
}

// DeviceAnnotations reads a claim's spec file and returns each device's
// annotations by device name (Device.Name). A missing file is an error that
// matches fs.ErrNotExist.
func (w *Writer) DeviceAnnotations(claimUID string) (map[string]map[string]string, error) {
	if err := validateClaimUID(claimUID); err != nil {
		return nil, err
	}
	data, err := hostfs.ReadBounded(w.SpecPath(claimUID), maxSpecSize, true)
	if err != nil {
		return nil, fmt.Errorf("read CDI spec of claim %s: %w", claimUID, err)
	}
	spec, err := cdiapi.ParseSpec(data)
	if err != nil {
		return nil, fmt.Errorf("read CDI spec of claim %s: %w", claimUID, err)
	}
	if spec == nil {
		return nil, fmt.Errorf("read CDI spec of claim %s: no spec data", claimUID)
	}
	out := make(map[string]map[string]string, len(spec.Devices))
	for _, d := range spec.Devices {
		name, ok := strings.CutPrefix(d.Name, cdiName(claimUID, ""))
		if !ok {
			return nil, fmt.Errorf("CDI spec of claim %s: device %q is not named after the claim", claimUID, d.Name)
		}
		out[name] = d.Annotations
	}
	return out, nil
}

// maxSpecSize bounds a spec file read back: the plugin's own hold a few
// devices' edits, a few KiB each. What else has a spec's name (a FIFO that
// would block the start-up's rebuild, /dev/zero or a huge file, a link to
// another file) is refused by hostfs.ReadBounded.
const maxSpecSize = 4 << 20

// WriteClaimSpec writes a claim's spec file, replacing any earlier one, and
// returns the CDI device IDs of each device by Device.Name. The spec is
// validated with the CDI library before it replaces the file: on any error
// nothing is written.
func (w *Writer) WriteClaimSpec(ctx context.Context, claimUID string, devices []Device) (map[string][]string, error) {
	logger := klog.FromContext(ctx)
	if len(w.missing) > 0 {
		w.warnOnce.Do(func() {
			logger.Info("Warning: NVIDIA driver libraries not found, containers get device nodes only",
				"driverRoot", w.opts.DriverRoot, "missing", w.missing)
		})
	}
	spec, err := w.buildSpec(logger, claimUID, devices)
	if err != nil {
		return nil, fmt.Errorf("CDI spec of claim %s: %w", claimUID, err)
	}
	path := w.SpecPath(claimUID)
	if err := writeSpec(path, spec); err != nil {
		return nil, fmt.Errorf("CDI spec of claim %s: %w", claimUID, err)
	}
	ids := make(map[string][]string, len(devices))
	for _, d := range devices {
		ids[d.Name] = []string{DeviceID(claimUID, d.Name)}
	}
	logger.V(4).Info("Wrote CDI spec", "claimUID", claimUID, "path", path, "devices", len(devices))
	return ids, nil
}
