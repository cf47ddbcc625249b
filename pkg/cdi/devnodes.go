package cdi

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	specs "tags.cncf.io/container-device-interface/specs-go"
)

// MIGMinorsFile is the kernel's table of MIG capability device minors,
// relative to the proc root.
const MIGMinorsFile = "proc/driver/nvidia-caps/mig-minors"

// controlNodes are the driver's device nodes every device needs, in the
// order they are listed; only the first is required to exist.
var controlNodes = []string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"}

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

// NodeLookup is one device node a spec would carry, looked up under the
// dev root as WriteClaimSpec looks it up.
type NodeLookup struct {
	// Path is the node's path in the container, e.g. "/dev/nvidiactl".
	Path string
	// HostPath is where it is looked up: Path under the dev root.
	HostPath string
	// Required is false for a node that specs leave out when it is missing
	// (nvidia-uvm may be loaded later); a required one that cannot be used
	// makes WriteClaimSpec fail.
	Required bool
	// Node is the node as the spec would carry it; nil when Err is set.
	Node *specs.DeviceNode
	// Err says why the node cannot be used.
	Err error
}

// LeftOut reports whether specs leave the node out rather than fail: it is
// optional and missing.
func (l NodeLookup) LeftOut() bool {
	return !l.Required && errors.Is(l.Err, fs.ErrNotExist)
}

// lookup looks up the node at path under DevRoot.
func (w *Writer) lookup(path string, required bool) NodeLookup {
	n, err := w.deviceNode(path)
	return NodeLookup{Path: path, HostPath: filepath.Join(w.opts.DevRoot, path), Required: required, Node: n, Err: err}
}

// lookupControlNodes looks up the control nodes; only the first is
// required. It only reads.
func (w *Writer) lookupControlNodes() []NodeLookup {
	out := make([]NodeLookup, len(controlNodes))
	for i, path := range controlNodes {
		out[i] = w.lookup(path, i == 0)
	}
	return out
}

// controlNodes returns the control nodes present under DevRoot. The device
// nodes are looked at on every write: nvidia-uvm may be loaded after start.
func (w *Writer) controlNodes() ([]*specs.DeviceNode, error) {
	var nodes []*specs.DeviceNode
	for _, l := range w.lookupControlNodes() {
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

// lookupMIGCapNodes looks up the capability device nodes that give access
// to a MIG device's GPU instance and compute instance; a key missing from
// the table is the lookup's error. It only reads.
func (w *Writer) lookupMIGCapNodes(minors map[string]int, gpuMinor int, mig MIGDevice) []NodeLookup {
	keys := []string{
		fmt.Sprintf("gpu%d/gi%d/access", gpuMinor, mig.GIID),
		fmt.Sprintf("gpu%d/gi%d/ci%d/access", gpuMinor, mig.GIID, mig.CIID),
	}
	out := make([]NodeLookup, 0, len(keys))
	for _, key := range keys {
		minor, ok := minors[key]
		if !ok {
			out = append(out, NodeLookup{Required: true, Err: fmt.Errorf("%s has no entry %q", w.migMinorsPath(), key)})
			continue
		}
		out = append(out, w.lookup(fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", minor), true))
	}
	return out
}

// migCapNodes returns the capability device nodes that give access to a MIG
// device's GPU instance and compute instance.
func (w *Writer) migCapNodes(minors map[string]int, gpuMinor int, mig MIGDevice) ([]*specs.DeviceNode, error) {
	lookups := w.lookupMIGCapNodes(minors, gpuMinor, mig)
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
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read MIG minors: %w", err)
	}
	defer f.Close()
	minors := map[string]int{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 2 {
			return nil, fmt.Errorf("%s:%d: want \"<key> <minor>\", got %q", path, line, text)
		}
		minor, err := strconv.Atoi(fields[1])
		if err != nil || minor < 0 {
			return nil, fmt.Errorf("%s:%d: invalid minor %q", path, line, fields[1])
		}
		minors[fields[0]] = minor
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read MIG minors %s: %w", path, err)
	}
	return minors, nil
}
