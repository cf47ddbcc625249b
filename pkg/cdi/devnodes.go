package cdi

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// Where a spec's device nodes come from. Two kinds of nodes, two sources:
//
//   - The GPU nodes (/dev/nvidia<minor>) and /dev/nvidiactl exist from the
//     driver's start on every GPU node; they are looked up under the dev
//     root with stat, numbers and mode as the host has them.
//   - The nodes that appear later are numbered from the kernel's files
//     under the proc root, never from /dev: nvidia-uvm, which is loaded
//     after boot (by the first CUDA program or nvidia-modprobe), and the
//     capability nodes of MIG instances, which NVML does not create when it
//     creates the instances (nvidia-modprobe or `nvidia-ctk system
//     create-device-nodes` make them on demand). A privileged container's
//     /dev, where the plugin looks, is moreover a copy taken when it
//     started. The major is the driver's line of /proc/devices; the minor
//     is fixed (nvidia-uvm 0, nvidia-uvm-tools 1) or the capability's: the
//     kernel's mig-minors table, checked against the instance's access
//     file where the kernel shows one (as nvidia-container-toolkit reads
//     the table; nvidia-modprobe reads the access file). A CDI node with
//     type, major and minor needs no host node: the runtime makes it in
//     the container.

// Files under the proc root.
const (
	// MIGMinorsFile is the kernel's table of MIG capability device minors,
	// relative to the proc root: every capability the driver can create,
	// whether its instance exists or not.
	MIGMinorsFile = "proc/driver/nvidia-caps/mig-minors"
	// ProcDevicesFile is the kernel's table of device majors, relative to
	// the proc root.
	ProcDevicesFile = "proc/devices"
	// CapabilitiesDir holds the driver's capability files, relative to the
	// proc root: gpu<minor>/mig/gi<GI>/access and
	// gpu<minor>/mig/gi<GI>/ci<CI>/access exist while the instance does.
	CapabilitiesDir = "proc/driver/nvidia/capabilities"
)

// Names of the drivers in /proc/devices.
const (
	majorNameUVM  = "nvidia-uvm"
	majorNameCaps = "nvidia-caps"
)

// Bounds of the proc files read: a few KiB each on a real node (mig-minors
// is some 30 KiB for 8 GPUs).
const (
	maxProcDevicesSize = 64 << 10
	maxMIGMinorsSize   = 1 << 20
	maxAccessFileSize  = 4 << 10
)

// uvmNodeMode is the mode of the nvidia-uvm nodes made in containers, as
// nvidia-modprobe makes them on the host.
const uvmNodeMode fs.FileMode = 0o666

// ErrNotLoaded is wrapped by the error of an optional node whose kernel
// module is not loaded (no line in /proc/devices for nvidia-uvm, no node
// under the dev root for nvidia-modeset): specs leave it out.
var ErrNotLoaded = errors.New("kernel module not loaded")

// deviceNode describes the character device at DevRoot+path as it is now.
// Type, numbers and mode are filled in so the runtime does not have to stat
// the host path itself.
func (w *Writer) deviceNode(path string) (*specs.DeviceNode, error) {
	host := filepath.Join(w.opts.DevRoot, path)
	var st unix.Stat_t
	if err := unix.Stat(host, &st); err != nil {
		return nil, fmt.Errorf("stat device node %s: %w", host, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return nil, fmt.Errorf("device node %s is not a character device", host)
	}
	rdev := uint64(st.Rdev) //nolint:unconvert // Rdev is uint32 on some platforms.
	mode := fs.FileMode(st.Mode & 0o777)
	return &specs.DeviceNode{
		Path:     path,
		HostPath: host,
		Type:     "c",
		Major:    int64(unix.Major(rdev)),
		Minor:    int64(unix.Minor(rdev)),
		FileMode: &mode,
	}, nil
}

// numberedNode is a node the runtime makes from its numbers; HostPath is
// where the host has it if anyone made it, which nothing requires.
func (w *Writer) numberedNode(path string, major, minor int64, mode fs.FileMode) *specs.DeviceNode {
	return &specs.DeviceNode{
		Path:     path,
		HostPath: filepath.Join(w.opts.DevRoot, path),
		Type:     "c",
		Major:    major,
		Minor:    minor,
		FileMode: &mode,
	}
}

// NodeLookup is one device node a spec would carry, found as WriteClaimSpec
// finds it.
type NodeLookup struct {
	// Path is the node's path in the container, e.g. "/dev/nvidiactl".
	Path string
	// HostPath is Path under the dev root: where a node that exists from
	// boot is looked up with stat. Nodes numbered from the proc root need
	// nothing there.
	HostPath string
	// Source says where the node's numbers come from: HostPath, or the
	// proc files read.
	Source string
	// Required is false for a node that specs leave out when its module is
	// not loaded (nvidia-uvm may be loaded later); a required one that
	// cannot be used makes WriteClaimSpec fail.
	Required bool
	// Node is the node as the spec would carry it; nil when Err is set.
	Node *specs.DeviceNode
	// Err says why the node cannot be used.
	Err error
}

// LeftOut reports whether specs leave the node out rather than fail: it is
// optional and its kernel module is not loaded.
func (l NodeLookup) LeftOut() bool {
	return !l.Required && errors.Is(l.Err, ErrNotLoaded)
}

// lookup looks up the node at path under DevRoot with stat.
func (w *Writer) lookup(path string, required bool) NodeLookup {
	host := filepath.Join(w.opts.DevRoot, path)
	n, err := w.deviceNode(path)
	return NodeLookup{Path: path, HostPath: host, Source: host, Required: required, Node: n, Err: err}
}

// majors is the kernel's table of character device majors by name, as
// read from the proc root, or why it could not be read.
type majors struct {
	path   string
	byName map[string]int64
	err    error
}

func (w *Writer) procDevicesPath() string {
	return filepath.Join(w.opts.ProcRoot, ProcDevicesFile)
}

// readMajors reads /proc/devices under the proc root.
func (w *Writer) readMajors() majors {
	path := w.procDevicesPath()
	m, err := ParseProcDevices(path)
	return majors{path: path, byName: m, err: err}
}

// get returns the major of a driver.
func (m majors) get(name string) (int64, error) {
	if m.err != nil {
		return 0, m.err
	}
	major, ok := m.byName[name]
	if !ok {
		return 0, fmt.Errorf("%s has no character device %q: %w", m.path, name, ErrNotLoaded)
	}
	return major, nil
}

// lookupControlNodes looks up the control nodes every device carries:
// /dev/nvidiactl under the dev root (required); /dev/nvidia-modeset there
// too (optional: display, OpenGL and Vulkan use it; the node exists
// where nvidia-modeset is loaded, and NVIDIA's CDI generator carries it
// where it exists); the nvidia-uvm nodes from the majors (optional: left
// out while nvidia-uvm is not loaded). It only reads.
func (w *Writer) lookupControlNodes(m majors) []NodeLookup {
	modeset := w.lookup("/dev/nvidia-modeset", false)
	if errors.Is(modeset.Err, fs.ErrNotExist) {
		modeset.Err = fmt.Errorf("%w: %w (nvidia-modeset)", modeset.Err, ErrNotLoaded)
	}
	out := []NodeLookup{w.lookup("/dev/nvidiactl", true), modeset}
	for _, n := range []struct {
		path  string
		minor int64
	}{{"/dev/nvidia-uvm", 0}, {"/dev/nvidia-uvm-tools", 1}} {
		l := NodeLookup{Path: n.path, HostPath: filepath.Join(w.opts.DevRoot, n.path), Source: m.path}
		major, err := m.get(majorNameUVM)
		if err != nil {
			l.Err = fmt.Errorf("%s: %w", n.path, err)
		} else {
			l.Node = w.numberedNode(n.path, major, n.minor, uvmNodeMode)
		}
		out = append(out, l)
	}
	return out
}

// controlNodes returns the control nodes. They are looked at on every
// write: nvidia-uvm may be loaded after start.
func (w *Writer) controlNodes(m majors) ([]*specs.DeviceNode, error) {
	var nodes []*specs.DeviceNode
	for _, l := range w.lookupControlNodes(m) {
		if l.LeftOut() {
			continue
		}
		if l.Err != nil {
			return nil, l.Err
		}
		nodes = append(nodes, l.Node)
	}
	return nodes, nil
}

func (w *Writer) migMinorsPath() string {
	return filepath.Join(w.opts.ProcRoot, MIGMinorsFile)
}

// capability is one MIG capability of an instance: its key in the
// mig-minors table and its access file under the proc root.
type capability struct {
	key, access, what string
}

// migCapabilities returns the capabilities of a MIG device: its GPU
// instance's, then its compute instance's.
func (w *Writer) migCapabilities(gpuMinor int, mig MIGDevice) []capability {
	gi := fmt.Sprintf("gpu%d/gi%d", gpuMinor, mig.GIID)
	ci := fmt.Sprintf("%s/ci%d", gi, mig.CIID)
	dir := filepath.Join(w.opts.ProcRoot, CapabilitiesDir)
	return []capability{
		{key: gi + "/access", access: filepath.Join(dir, fmt.Sprintf("gpu%d/mig/gi%d/access", gpuMinor, mig.GIID)),
			what: fmt.Sprintf("GPU minor %d GPU instance %d", gpuMinor, mig.GIID)},
		{key: ci + "/access", access: filepath.Join(dir, fmt.Sprintf("gpu%d/mig/gi%d/ci%d/access", gpuMinor, mig.GIID, mig.CIID)),
			what: fmt.Sprintf("GPU minor %d GPU instance %d compute instance %d", gpuMinor, mig.GIID, mig.CIID)},
	}
}

// lookupMIGCapNodes looks up the capability device nodes that give access
// to a MIG device's GPU instance and compute instance: the minor from the
// kernel's mig-minors table, checked against the capability's access file
// where the kernel shows one (it does while the instance exists), which
// also gives the node's mode; the major from nvidia-caps in m. No node
// under the dev root is needed. It only reads.
func (w *Writer) lookupMIGCapNodes(m majors, minors map[string]int, gpuMinor int, mig MIGDevice) []NodeLookup {
	caps := w.migCapabilities(gpuMinor, mig)
	out := make([]NodeLookup, 0, len(caps))
	for _, c := range caps {
		l := NodeLookup{Required: true, Source: w.migMinorsPath() + ", " + c.access + ", " + m.path}
		node, err := w.migCapNode(m, minors, c)
		if err != nil {
			l.Err = fmt.Errorf("MIG capability of %s: %w", c.what, err)
		} else {
			l.Path, l.HostPath, l.Node = node.Path, node.HostPath, node
		}
		out = append(out, l)
	}
	return out
}

func (w *Writer) migCapNode(m majors, minors map[string]int, c capability) (*specs.DeviceNode, error) {
	minor, ok := minors[c.key]
	access, err := ParseCapabilityAccess(c.access)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !ok:
		return nil, fmt.Errorf("%s has no entry %q and there is no %s (no such instance, or --proc-root is not the host's)", w.migMinorsPath(), c.key, c.access)
	case errors.Is(err, fs.ErrNotExist):
		// The table is the kernel's own numbering: the minor is known
		// without the access file. Nodes of instances are readable by all.
		access = CapabilityAccess{Minor: minor, Mode: 0o444}
	case err != nil:
		return nil, err
	case !ok:
		return nil, fmt.Errorf("%s has no entry %q, which %s names", w.migMinorsPath(), c.key, c.access)
	case minor != access.Minor:
		return nil, fmt.Errorf("%s says minor %d, %s says %d for %q", c.access, access.Minor, w.migMinorsPath(), minor, c.key)
	}
	major, err := m.get(majorNameCaps)
	if err != nil {
		return nil, err
	}
	path := fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", access.Minor)
	return w.numberedNode(path, major, int64(access.Minor), access.Mode), nil
}

// migCapNodes returns the capability device nodes that give access to a MIG
// device's GPU instance and compute instance.
func (w *Writer) migCapNodes(m majors, minors map[string]int, gpuMinor int, mig MIGDevice) ([]*specs.DeviceNode, error) {
	lookups := w.lookupMIGCapNodes(m, minors, gpuMinor, mig)
	nodes := make([]*specs.DeviceNode, 0, len(lookups))
	for _, l := range lookups {
		if l.Err != nil {
			return nil, l.Err
		}
		nodes = append(nodes, l.Node)
	}
	return nodes, nil
}

// ParseMIGMinors reads the kernel's table of MIG capability minors (see
// MIGMinorsFile), whose lines look like "gpu0/gi1/access 21" and
// "gpu0/gi1/ci0/access 22", and returns the minors by key.
func ParseMIGMinors(path string) (map[string]int, error) {
	data, err := hostfs.ReadBounded(path, maxMIGMinorsSize, true)
	if err != nil {
		return nil, fmt.Errorf("read MIG minors: %w", err)
	}
	minors := map[string]int{}
	for i, text := range strings.Split(string(data), "\n") {
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 2 {
			return nil, fmt.Errorf("%s:%d: want \"<key> <minor>\", got %q", path, i+1, text)
		}
		minor, err := strconv.Atoi(fields[1])
		if err != nil || minor < 0 {
			return nil, fmt.Errorf("%s:%d: invalid minor %q", path, i+1, fields[1])
		}
		minors[fields[0]] = minor
	}
	return minors, nil
}

// ParseProcDevices reads the kernel's table of device majors (see
// ProcDevicesFile) and returns the character devices' majors by name:
// the lines between "Character devices:" and "Block devices:", such as
// "195 nvidia-frontend" and "511 nvidia-caps". The first of a name counts.
func ParseProcDevices(path string) (map[string]int64, error) {
	data, err := hostfs.ReadBounded(path, maxProcDevicesSize, true)
	if err != nil {
		return nil, fmt.Errorf("read device majors: %w", err)
	}
	out := map[string]int64{}
	char := false
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "":
			continue
		case strings.HasSuffix(line, ":"):
			char = line == "Character devices:"
			continue
		case !char:
			continue
		}
		num, name, ok := strings.Cut(line, " ")
		name = strings.TrimSpace(name)
		major, err := strconv.ParseInt(num, 10, 64)
		if !ok || name == "" || err != nil || major <= 0 {
			return nil, fmt.Errorf("%s:%d: want \"<major> <name>\", got %q", path, i+1, line)
		}
		if _, seen := out[name]; !seen {
			out[name] = major
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no character devices", path)
	}
	return out, nil
}

// CapabilityAccess is what the driver's access file of a capability says
// of its device node.
type CapabilityAccess struct {
	// Minor is the node's minor ("DeviceFileMinor").
	Minor int
	// Mode is the node's permission bits ("DeviceFileMode", in decimal as
	// the driver writes it; 0444 when absent).
	Mode fs.FileMode
}

// ParseCapabilityAccess reads a capability's access file, such as
// proc/driver/nvidia/capabilities/gpu0/mig/gi1/access, whose lines are
// "DeviceFileMinor: 21", "DeviceFileMode: 292" and "DeviceFileModify: 1".
// A missing file's error wraps fs.ErrNotExist.
func ParseCapabilityAccess(path string) (CapabilityAccess, error) {
	data, err := hostfs.ReadBounded(path, maxAccessFileSize, true)
	if err != nil {
		return CapabilityAccess{}, fmt.Errorf("read capability: %w", err)
	}
	out := CapabilityAccess{Minor: -1, Mode: 0o444}
	for i, line := range strings.Split(string(data), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch strings.TrimSpace(key) {
		case "DeviceFileMinor":
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 || out.Minor >= 0 {
				return CapabilityAccess{}, fmt.Errorf("%s:%d: invalid or repeated DeviceFileMinor %q", path, i+1, value)
			}
			out.Minor = n
		case "DeviceFileMode":
			n, err := strconv.ParseUint(value, 10, 32)
			if err != nil || n > 0o777 {
				return CapabilityAccess{}, fmt.Errorf("%s:%d: invalid DeviceFileMode %q", path, i+1, value)
			}
			out.Mode = fs.FileMode(n)
		}
	}
	if out.Minor < 0 {
		return CapabilityAccess{}, fmt.Errorf("%s: no DeviceFileMinor", path)
	}
	return out, nil
}
