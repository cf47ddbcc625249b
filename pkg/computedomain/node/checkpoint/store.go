package checkpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// DirMode is the most the checkpoint's directory allows: whoever writes
// the checkpoint decides which claims the plugin undoes at its next start.
const DirMode fs.FileMode = 0o700

// maxSize bounds a checkpoint read back: a node holds a few hundred claims
// at most, a few hundred bytes each.
const maxSize = 16 << 20

// envelope is the file's form on disk.
type envelope struct {
	Version  int             `json:"version"`
	Checksum string          `json:"checksum"`
	Data     json.RawMessage `json:"data"`
}

func checksum(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// CorruptError says the checkpoint could not be trusted and was set aside.
type CorruptError struct {
	Path, SetAside string
	Cause          error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("checkpoint %s cannot be trusted, set aside as %s: %v", e.Path, e.SetAside, e.Cause)
}

func (e *CorruptError) Unwrap() error { return e.Cause }

// WriteFunc writes a file atomically and durably; tests make it fail as a
// full disk would.
type WriteFunc func(path string, data []byte) error

// Store reads and writes the checkpoint file in a directory.
type Store struct {
	path  string
	write WriteFunc
}

// NewStore returns a store in dir, which is created with DirMode or
// tightened to it (hostfs.EnsureDir). Temporary files of writes that a
// crash interrupted are removed. write nil is hostfs.WriteFileAtomic.
func NewStore(logger klog.Logger, dir string, write WriteFunc) (*Store, error) {
	if write == nil {
		write = hostfs.WriteFileAtomic
	}
	if err := hostfs.EnsureDir(logger, dir, DirMode); err != nil {
		return nil, fmt.Errorf("checkpoint directory: %w", err)
	}
	s := &Store{path: filepath.Join(dir, FileName), write: write}
	leftovers, err := filepath.Glob(filepath.Join(dir, "."+FileName+"-*.tmp"))
	if err != nil {
		return nil, fmt.Errorf("find temporary checkpoint files: %w", err)
	}
	for _, f := range leftovers {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove temporary checkpoint file: %w", err)
		}
	}
	return s, nil
}

// Path is the checkpoint file's path.
func (s *Store) Path() string { return s.path }

// Load reads the checkpoint. A missing file is an empty checkpoint. A file
// that cannot be trusted is renamed aside and Load returns an empty
// checkpoint with a *CorruptError; any other error means nothing was read.
func (s *Store) Load() (*Checkpoint, error) {
	data, err := hostfs.ReadBounded(s.path, maxSize, true)
	if errors.Is(err, fs.ErrNotExist) {
		return New(), nil
	}
	var cause error
	cp := New()
	if err != nil {
		if !errors.Is(err, hostfs.ErrUnfit) {
			return nil, fmt.Errorf("read checkpoint: %w", err)
		}
		cause = err
	} else {
		cause = unseal(data, cp)
	}
	if cause == nil {
		return cp, nil
	}
	aside := fmt.Sprintf("%s.corrupt-%s", s.path, time.Now().UTC().Format("20060102T150405.000000000"))
	if err := os.Rename(s.path, aside); err != nil {
		return nil, fmt.Errorf("set aside untrusted checkpoint %s: %w (untrusted because: %w)", s.path, err, cause)
	}
	return New(), &CorruptError{Path: s.path, SetAside: aside, Cause: cause}
}

// unseal checks the envelope and decodes it into cp.
func unseal(raw []byte, cp *Checkpoint) error {
	var env envelope
	if err := json.Unmarshal(raw, &env); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	switch {
	case env.Version > Version:
		return fmt.Errorf("written by a newer plugin (version %d, this one reads up to %d)", env.Version, Version)
	case env.Version < 1:
		return errors.New("no version")
	case checksum(env.Data) != env.Checksum:
		return fmt.Errorf("checksum mismatch: file says %q, data hashes to %q", env.Checksum, checksum(env.Data))
	}
	if err := json.Unmarshal(env.Data, cp); err != nil {
		return fmt.Errorf("decode data: %w", err)
	}
	if cp.Claims == nil {
		cp.Claims = map[string]*Claim{}
	}
	for uid, c := range cp.Claims {
		if c == nil || c.UID != uid {
			return fmt.Errorf("claim entry %q is inconsistent", uid)
		}
	}
	return nil
}

// Save writes the checkpoint atomically and durably: when it returns nil
// the content survives a crash of the plugin or of the node.
func (s *Store) Save(cp *Checkpoint) error {
	data, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	out, err := json.Marshal(envelope{Version: Version, Checksum: checksum(data), Data: data})
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	if err := s.write(s.path, out); err != nil {
		return fmt.Errorf("write checkpoint %s: %w", s.path, err)
	}
	return nil
}
