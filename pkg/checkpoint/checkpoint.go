// Package checkpoint persists what the plugin prepared, so that prepare and
// unprepare are idempotent and survive a crash or a restart of the plugin.
//
// The file is written atomically (temporary file, fsync, rename, fsync of
// the directory). It is an envelope {version, checksum, data} whose checksum
// covers the data bytes exactly as stored, never re-marshalled, so an
// upgrade that adds fields does not break it. Unknown fields are ignored.
// A file that cannot be trusted (unreadable, truncated, bad checksum, a
// future major version) is set aside beside the original and the plugin
// starts from an empty checkpoint and rebuilds from live state.
package checkpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// Version is the schema version this code writes. A file of a higher
// version is not read: its meaning may have changed.
const Version = 1

// FileName is the checkpoint's name in its directory.
const FileName = "checkpoint.json"

// State is how far a claim's preparation got.
type State string

// Claim states. A claim is recorded as PrepareStarted, with what is about to
// be created, before any side effect, so a crash at any later point leaves
// enough to roll back.
const (
	PrepareStarted   State = "PrepareStarted"
	PrepareCompleted State = "PrepareCompleted"
)

// Checkpoint is everything the plugin must remember across restarts.
type Checkpoint struct {
	// BootID is the node's boot ID when the checkpoint was written. After a
	// reboot MIG instances and the CDI directory (tmpfs) are gone.
	BootID string `json:"bootID,omitempty"`
	// Claims by claim UID.
	Claims map[string]*Claim `json:"claims"`
}

// Claim is one prepared (or being prepared) ResourceClaim. Unprepare gets
// only the UID, namespace and name: everything else it needs is here.
type Claim struct {
	UID       string   `json:"uid"`
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	State     State    `json:"state"`
	Devices   []Device `json:"devices"`
}

// Device is one allocated device of the claim and what preparing it did.
type Device struct {
	// Requests are the claim's request (or request/subrequest) names the
	// device was allocated for.
	Requests []string `json:"requests"`
	Pool     string   `json:"pool"`
	// Name is the device's name in the ResourceSlice.
	Name     string `json:"name"`
	GPUUUID  string `json:"gpuUUID"`
	GPUMinor int    `json:"gpuMinor"`
	// MIG is set for MIG devices.
	MIG *MIG `json:"mig,omitempty"`
	// Env is the extra container environment from the claim's
	// configuration, kept so the CDI spec can be rewritten.
	Env map[string]string `json:"env,omitempty"`
	// CDIDeviceIDs are returned to the kubelet.
	CDIDeviceIDs []string `json:"cdiDeviceIDs,omitempty"`
	// TimeSlice is the compute time slice (Short, Medium, Long) the claim
	// set on its whole GPU; the default is restored when it goes. Empty
	// when it did not change it.
	TimeSlice string `json:"timeSlice,omitempty"`
	// MPSDir is the host directory of the claim's MPS control daemon when
	// the device is shared through MPS; its pipe/ and log/ are mounted
	// into the containers. The same for every MPS device of the claim; for
	// a share, the directory of its GPU's daemon, which all shares of the
	// GPU use.
	MPSDir string `json:"mpsDir,omitempty"`
	// ShareID and Share are set for a share of a shared GPU.
	ShareID string `json:"shareID,omitempty"`
	Share   *Share `json:"share,omitempty"`
	// AdminAccess is set for a device allocated with admin access (for
	// monitoring): it is given as it is, changing nothing, and neither
	// waits for nor holds off the device's other claims.
	AdminAccess bool `json:"adminAccess,omitempty"`
}

// Share is what one share of a shared GPU consumes, as allocated.
type Share struct {
	// MemoryBytes is the share's MPS pinned device memory limit.
	MemoryBytes int64 `json:"memoryBytes"`
	// ComputePercent is its MPS active thread percentage; 0 sets none.
	ComputePercent int64 `json:"computePercent,omitempty"`
}

// MIG records a MIG device: where it is, and once it exists, which instance.
type MIG struct {
	ProfileID int    `json:"profileID"`
	Profile   string `json:"profile"`
	Start     int    `json:"start"`
	Size      int    `json:"size"`
	// Created is true when this claim created the instance and must destroy
	// it; false for a pre-created (static) instance, or before creation.
	Created bool   `json:"created"`
	UUID    string `json:"uuid,omitempty"`
	GIID    int    `json:"giid"`
	CIID    int    `json:"ciid"`
}

// New returns an empty checkpoint.
func New(bootID string) *Checkpoint {
	return &Checkpoint{BootID: bootID, Claims: map[string]*Claim{}}
}

// Clone returns a deep copy. It is on the path of every checkpoint write,
// so it copies field by field rather than through JSON.
func (c *Checkpoint) Clone() *Checkpoint {
	out := &Checkpoint{BootID: c.BootID, Claims: make(map[string]*Claim, len(c.Claims))}
	for uid, claim := range c.Claims {
		out.Claims[uid] = claim.Clone()
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
		d.Env = maps.Clone(d.Env)
		if d.MIG != nil {
			m := *d.MIG
			d.MIG = &m
		}
		if d.Share != nil {
			s := *d.Share
			d.Share = &s
		}
		out.Devices[i] = d
	}
	return &out
}

type envelope struct {
	Version  int             `json:"version"`
	Checksum string          `json:"checksum"`
	Data     json.RawMessage `json:"data"`
}

// CorruptError says the checkpoint could not be trusted and was set aside.
type CorruptError struct {
	Path     string // the checkpoint's path
	SetAside string // where the untrusted file now is
	Cause    error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("checkpoint %s cannot be trusted, moved to %s: %v", e.Path, e.SetAside, e.Cause)
}

func (e *CorruptError) Unwrap() error { return e.Cause }

// Modes of the checkpoint's directory and files. The checkpoint is the
// plugin's alone: whoever can write it can make the plugin destroy MIG
// devices or stop MPS daemons at its next start, and nobody else needs to
// read it.
const (
	DirMode  fs.FileMode = 0o700
	FileMode fs.FileMode = 0o600
)

// Store reads and writes the checkpoint file in a directory.
type Store struct {
	dir  string
	path string
}

// StoreOption configures NewStore.
type StoreOption func(*storeOptions)

type storeOptions struct {
	logger klog.Logger
}

// WithLogger logs where NewStore tightens the mode of an existing
// directory. Without it that is done silently.
func WithLogger(logger klog.Logger) StoreOption {
	return func(o *storeOptions) { o.logger = logger }
}

// NewStore returns a store in dir, creating dir with DirMode, or tightening
// an existing dir to at most DirMode (see hostfs.EnsureDir).
func NewStore(dir string, opts ...StoreOption) (*Store, error) {
	var o storeOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := hostfs.EnsureDir(o.logger, dir, DirMode); err != nil {
		return nil, fmt.Errorf("checkpoint directory: %w", err)
	}
	return &Store{dir: dir, path: filepath.Join(dir, FileName)}, nil
}

// Path is the checkpoint file's path.
func (s *Store) Path() string { return s.path }

// Load reads the checkpoint. A missing file is an empty checkpoint. A file
// that cannot be trusted is moved aside and Load returns an empty
// checkpoint together with a *CorruptError, so the caller can report it and
// rebuild; any other error means nothing was read or changed.
func (s *Store) Load() (*Checkpoint, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return New(""), nil
	}
	if err != nil {
		return s.setAside(fmt.Errorf("read: %w", err))
	}
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return s.setAside(fmt.Errorf("decode: %w", err))
	}
	if env.Version > Version {
		return s.setAside(fmt.Errorf("written by a newer plugin (version %d, this plugin reads up to %d)", env.Version, Version))
	}
	if env.Version < 1 {
		return s.setAside(fmt.Errorf("no version"))
	}
	if got := checksum(env.Data); got != env.Checksum {
		return s.setAside(fmt.Errorf("checksum mismatch: file says %q, data hashes to %q", env.Checksum, got))
	}
	cp := &Checkpoint{}
	if err := json.Unmarshal(env.Data, cp); err != nil {
		return s.setAside(fmt.Errorf("decode data: %w", err))
	}
	if cp.Claims == nil {
		cp.Claims = map[string]*Claim{}
	}
	for uid, c := range cp.Claims {
		if c == nil || c.UID != uid {
			return s.setAside(fmt.Errorf("claim entry %q is inconsistent", uid))
		}
	}
	return cp, nil
}

func (s *Store) setAside(cause error) (*Checkpoint, error) {
	aside := fmt.Sprintf("%s.corrupt-%s", s.path, time.Now().UTC().Format("20060102T150405.000000000"))
	if err := os.Rename(s.path, aside); err != nil {
		return nil, fmt.Errorf("set aside untrusted checkpoint %s (%v): %w", s.path, cause, err)
	}
	return New(""), &CorruptError{Path: s.path, SetAside: aside, Cause: cause}
}

// Save writes the checkpoint atomically and durably.
func (s *Store) Save(cp *Checkpoint) error {
	data, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	out, err := json.Marshal(envelope{Version: Version, Checksum: checksum(data), Data: data})
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	if err := WriteFileAtomic(s.path, out); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	return nil
}

// WriteFileAtomic replaces path with data so that a crash at any moment
// leaves either the old or the new content: a temporary file in the same
// directory, fsync, rename, fsync of the directory. The file is FileMode
// (owner only) whatever the umask and whatever the mode of the file it
// replaces.
func WriteFileAtomic(path string, data []byte) error {
	dir, name := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+name+"-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	// CreateTemp makes 0600 files already; say so rather than rely on it.
	if err := tmp.Chmod(FileMode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

func checksum(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ReadBootID returns the node's boot ID from procRoot/proc/sys/kernel/random/boot_id.
func ReadBootID(procRoot string) (string, error) {
	data, err := os.ReadFile(filepath.Join(procRoot, "proc/sys/kernel/random/boot_id"))
	if err != nil {
		return "", fmt.Errorf("read boot ID: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}
