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

// envelope is the checkpoint file's form on disk.
type envelope struct {
	Version  int             `json:"version"`
	Checksum string          `json:"checksum"`
	Data     json.RawMessage `json:"data"`
}

// seal wraps v in a versioned, checksummed envelope.
func seal(v any) ([]byte, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return json.Marshal(envelope{Version: Version, Checksum: checksum(data), Data: data})
}

// unseal checks an envelope and decodes its data into v. Every error
// means the content cannot be trusted.
func unseal(raw []byte, v any) error {
	var env envelope
	if err := json.Unmarshal(raw, &env); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	if env.Version > Version {
		return fmt.Errorf("written by a newer plugin (version %d, this plugin reads up to %d)", env.Version, Version)
	}
	if env.Version < 1 {
		return errors.New("no version")
	}
	if got := checksum(env.Data); got != env.Checksum {
		return fmt.Errorf("checksum mismatch: file says %q, data hashes to %q", env.Checksum, got)
	}
	if err := json.Unmarshal(env.Data, v); err != nil {
		return fmt.Errorf("decode data: %w", err)
	}
	return nil
}

func checksum(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// CorruptError says the checkpoint could not be trusted and was set aside.
type CorruptError struct {
	Path     string // the checkpoint's path
	SetAside string // where a copy of the untrusted file is
	Cause    error
	// Previous is the generation written before the untrusted one, when
	// it could be read; nil otherwise. It is one write behind: it names
	// claims whose preparation may have gone on (or been undone) since,
	// so it is a list of what the plugin may have created, not of what is
	// prepared.
	Previous *Checkpoint
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("checkpoint %s cannot be trusted, set aside as %s: %v", e.Path, e.SetAside, e.Cause)
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

// PreviousSuffix names the previous generation of the checkpoint: before
// each save the current file is kept under FileName+PreviousSuffix, so a
// checkpoint that turns out corrupt still leaves the one before it (see
// CorruptError.Previous).
const PreviousSuffix = ".previous"

// Store reads and writes the checkpoint file in a directory.
type Store struct {
	dir      string
	path     string
	previous string
	write    func(path string, data []byte) error
	// untrusted is set from a Load that found the checkpoint untrusted
	// until a Save replaces it: the file is still in place, so that a
	// start that dies before saving what it rebuilt finds it again.
	untrusted bool
}

// StoreOption configures NewStore.
type StoreOption func(*storeOptions)

type storeOptions struct {
	logger klog.Logger
	write  func(path string, data []byte) error
}

// WithLogger logs where NewStore tightens the mode of an existing
// directory or sweeps temporary files. Without it that is done silently.
func WithLogger(logger klog.Logger) StoreOption {
	return func(o *storeOptions) { o.logger = logger }
}

// WithWriteFile replaces hostfs.WriteFileAtomic as the store's way of writing the
// checkpoint: fault-injection tests make it fail as a full or failing disk
// would.
func WithWriteFile(write func(path string, data []byte) error) StoreOption {
	return func(o *storeOptions) { o.write = write }
}

// NewStore returns a store in dir, creating dir with DirMode, or tightening
// an existing dir to at most DirMode (see hostfs.EnsureDir). Temporary
// files that a write killed midway left in dir are removed.
func NewStore(dir string, opts ...StoreOption) (*Store, error) {
	o := storeOptions{write: hostfs.WriteFileAtomic}
	for _, opt := range opts {
		opt(&o)
	}
	if err := hostfs.EnsureDir(o.logger, dir, DirMode); err != nil {
		return nil, fmt.Errorf("checkpoint directory: %w", err)
	}
	s := &Store{dir: dir, path: filepath.Join(dir, FileName), previous: filepath.Join(dir, FileName+PreviousSuffix), write: o.write}
	if err := s.sweep(o.logger); err != nil {
		return nil, err
	}
	return s, nil
}

// sweep removes the temporary files of writes that never finished (the
// plugin was killed between creating and renaming them).
func (s *Store) sweep(logger klog.Logger) error {
	for _, pattern := range []string{tempPattern(s.path), tempPattern(s.previous)} {
		leftovers, err := filepath.Glob(pattern)
		if err != nil {
			return fmt.Errorf("find temporary checkpoint files: %w", err)
		}
		for _, f := range leftovers {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove temporary checkpoint file: %w", err)
			}
			logger.Info("Removed a temporary checkpoint file left by an interrupted write", "path", f)
		}
	}
	return nil
}

// Path is the checkpoint file's path.
func (s *Store) Path() string { return s.path }

// Load reads the checkpoint. A missing file is an empty checkpoint. A file
// that cannot be trusted is copied aside (a hard link) and Load returns an
// empty checkpoint together with a *CorruptError, so the caller can report
// it and rebuild; any other error means nothing was read or changed. The
// untrusted file stays in place until the next Save replaces it: were it
// moved away, a start that failed before saving what it rebuilt (a full
// disk, a crash) would leave no checkpoint at all, and the next start
// would take the prepared claims' CDI specs for orphans and delete them.
// Only where a hard link cannot be made is it moved.
func (s *Store) Load() (*Checkpoint, error) {
	cp, cause := read(s.path)
	if errors.Is(cause, os.ErrNotExist) {
		return New(""), nil
	}
	if cause == nil {
		return cp, nil
	}
	aside := fmt.Sprintf("%s.corrupt-%s", s.path, time.Now().UTC().Format("20060102T150405.000000000"))
	if err := os.Link(s.path, aside); err != nil {
		if err := os.Rename(s.path, aside); err != nil {
			return nil, fmt.Errorf("set aside untrusted checkpoint %s: %w (it was untrusted because: %w)", s.path, err, cause)
		}
	}
	s.untrusted = true
	corrupt := &CorruptError{Path: s.path, SetAside: aside, Cause: cause}
	if prev, err := read(s.previous); err == nil {
		corrupt.Previous = prev
	}
	return New(""), corrupt
}

// read reads and checks one checkpoint file; an error other than
// os.ErrNotExist means it cannot be trusted.
func read(path string) (*Checkpoint, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	cp := &Checkpoint{}
	if err := unseal(data, cp); err != nil {
		return nil, err
	}
	if cp.Claims == nil {
		cp.Claims = map[string]*Claim{}
	}
	for uid, c := range cp.Claims {
		if c == nil || c.UID != uid {
			return nil, fmt.Errorf("claim entry %q is inconsistent", uid)
		}
	}
	return cp, nil
}

// Save writes the checkpoint atomically and durably, keeping the file it
// replaces as the previous generation where it can.
func (s *Store) Save(cp *Checkpoint) error {
	out, err := seal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	if s.untrusted {
		// The file replaced is the untrusted one: it is no previous
		// generation, and the one on disk is older than what was lost,
		// but it stays until the rebuilt checkpoint is written, for a
		// start that fails before.
		if err := s.write(s.path, out); err != nil {
			return fmt.Errorf("write checkpoint: %w", err)
		}
		s.untrusted = false
		if err := os.Remove(s.previous); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale previous checkpoint generation: %w", err)
		}
		return nil
	}
	if err := s.keepPrevious(); err != nil {
		// The previous generation only helps a rebuild; a filesystem
		// without hard links must not stop the plugin. A stale one would
		// mislead, so none is better.
		_ = os.Remove(s.previous)
	}
	if err := s.write(s.path, out); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	return nil
}

// keepPrevious makes the previous generation a hard link to the current
// file (linked under a temporary name, then renamed over the old one, so
// a crash leaves one or the other). Without a current file there is no
// previous generation either: the one left would be older than what was
// lost. The directory's fsync is the write's that follows.
func (s *Store) keepPrevious() error {
	tmp := filepath.Join(s.dir, "."+FileName+PreviousSuffix+"-link.tmp")
	_ = os.Remove(tmp)
	if err := os.Link(s.path, tmp); errors.Is(err, os.ErrNotExist) {
		if err := os.Remove(s.previous); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	} else if err != nil {
		return err
	}
	return os.Rename(tmp, s.previous)
}

// tempPattern matches the temporary files hostfs.WriteFileAtomic (and
// keepPrevious) create for path.
func tempPattern(path string) string {
	dir, name := filepath.Split(path)
	return filepath.Join(dir, "."+name+"-*.tmp")
}
