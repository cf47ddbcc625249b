// Package imexcfg keeps the per-domain IMEX configuration directories of
// the domain daemons on this node: <root>/<domain UID>/ holds imexd.cfg,
// the IMEX daemon's configuration (written when the daemon claim is
// prepared), and nodes.cfg, the addresses of the domain's daemons in this
// node's clique (kept current by package nodescfg). The daemon's container
// gets the directory at /imexd through its claim's CDI spec.
//
// Files are replaced atomically (temporary file, fsync, rename, fsync of
// the directory): the daemon, which restarts nvidia-imex when nodes.cfg
// changes, never reads half a file.
package imexcfg

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// File names in a domain's directory.
const (
	ConfigFile = "imexd.cfg"
	NodesFile  = "nodes.cfg"
)

// Modes: the daemon's container reads the files.
const (
	DirMode  fs.FileMode = 0o755
	FileMode fs.FileMode = 0o644
)

// maxNodesSize bounds nodes.cfg read back for comparison.
const maxNodesSize = 1 << 20

// Config is the content of imexd.cfg: nodes.cfg at the daemon's mount,
// the peer and command ports, log to stderr, stay in the foreground.
func Config() []byte {
	var b strings.Builder
	for _, kv := range [][2]string{
		{"IMEX_NODE_CONFIG_FILE", names.IMEXDaemonDir + "/" + NodesFile},
		{"SERVER_PORT", strconv.Itoa(names.IMEXServerPort)},
		{"IMEX_CMD_ENABLED", "1"},
		{"IMEX_CMD_PORT", strconv.Itoa(names.IMEXCommandPort)},
		{"LOG_FILE_NAME", ""},
		{"DAEMONIZE", "0"},
	} {
		b.WriteString(kv[0] + "=" + kv[1] + "\n")
	}
	return []byte(b.String())
}

// Dirs are the domains' directories under Root (<plugin dir>/domains).
type Dirs struct {
	Root string
	// Logger logs a pre-existing Root whose mode was tightened; the zero
	// Logger discards.
	Logger klog.Logger
	// Write nil writes atomically with FileMode; tests make it fail.
	Write func(path string, data []byte) error

	// mu orders WriteNodes against Remove: a nodes.cfg written while
	// the directory is removed would keep it from going.
	mu sync.Mutex
}

var uidPattern = regexp.MustCompile(`^[0-9a-f]+(-[0-9a-f]+)*$`)

// Path returns a domain's directory. The UID must look like one.
func (d *Dirs) Path(domainUID string) (string, error) {
	if !uidPattern.MatchString(domainUID) {
		return "", fmt.Errorf("invalid ComputeDomain UID %q: want lowercase hex digits and dashes", domainUID)
	}
	return filepath.Join(d.Root, domainUID), nil
}

// Ensure creates a domain's directory with imexd.cfg, idempotently.
func (d *Dirs) Ensure(domainUID string) (string, error) {
	dir, err := d.Path(domainUID)
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := hostfs.EnsureDir(d.Logger, d.Root, DirMode); err != nil {
		return "", fmt.Errorf("IMEX domains directory: %w", err)
	}
	if err := os.Mkdir(dir, DirMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("create IMEX directory of ComputeDomain %s: %w", domainUID, err)
	}
	if err := d.replace(filepath.Join(dir, ConfigFile), Config()); err != nil {
		return "", fmt.Errorf("IMEX configuration of ComputeDomain %s: %w", domainUID, err)
	}
	return dir, nil
}

// WriteNodes makes nodes.cfg list addrs, one per line, and reports
// whether it changed. A domain without directory is an error (its claim
// is not prepared).
func (d *Dirs) WriteNodes(domainUID string, addrs []string) (bool, error) {
	dir, err := d.Path(domainUID)
	if err != nil {
		return false, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := os.Stat(filepath.Join(dir, ConfigFile)); err != nil {
		return false, fmt.Errorf("IMEX directory of ComputeDomain %s: %w", domainUID, err)
	}
	var b bytes.Buffer
	for _, a := range addrs {
		b.WriteString(a + "\n")
	}
	path := filepath.Join(dir, NodesFile)
	if old, err := hostfs.ReadBounded(path, maxNodesSize, true); err == nil && bytes.Equal(old, b.Bytes()) {
		return false, nil
	}
	if err := d.replace(path, b.Bytes()); err != nil {
		return false, fmt.Errorf("nodes of ComputeDomain %s: %w", domainUID, err)
	}
	return true, nil
}

// Remove removes a domain's directory and everything in it, following no
// link; a missing one is no error.
func (d *Dirs) Remove(domainUID string) error {
	dir, err := d.Path(domainUID)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := hostfs.RemoveTree(dir); err != nil {
		return fmt.Errorf("remove IMEX directory of ComputeDomain %s: %w", domainUID, err)
	}
	return nil
}

// List returns the domain UIDs that have a directory.
func (d *Dirs) List() ([]string, error) {
	entries, err := os.ReadDir(d.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list IMEX domains directory: %w", err)
	}
	var out []string
	for _, e := range entries {
		if uidPattern.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func (d *Dirs) replace(path string, data []byte) error {
	if d.Write != nil {
		return d.Write(path, data)
	}
	return writeAtomic(path, data)
}

// writeAtomic is hostfs.WriteFileAtomic with FileMode: the daemon's
// container reads the files.
func writeAtomic(path string, data []byte) error {
	if err := hostfs.WriteFileAtomic(path, data); err != nil {
		return err
	}
	return os.Chmod(path, FileMode)
}
