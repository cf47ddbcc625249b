package health

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// maxFileSize bounds the policy file and the health state: both are
// small (a policy is a few hundred bytes; the state holds a few
// conditions per GPU), and a read must not grow without bound.
const maxFileSize = 1 << 20

// StoreFileName is the health state file in the plugin's data directory.
const StoreFileName = "health.json"

// Saved is what survives a plugin restart: the sticky conditions, and the
// volatile ECC counters last seen (only logged when they went back: that
// is no proof of a reset, see Monitor.resetLocked). A reboot (another boot
// ID) voids it.
type Saved struct {
	BootID      string            `json:"bootID"`
	Conditions  []Condition       `json:"conditions,omitempty"`
	VolatileECC map[string]uint64 `json:"volatileECC,omitempty"`
}

// ErrCorrupt wraps the error Load returns, with an empty state, for a
// file it could not parse and set aside.
var ErrCorrupt = errors.New("corrupt health state")

// Store keeps Saved in a file, written atomically and owner-only
// (0600, owner only) beside the checkpoint, in the plugin's data
// directory: a writer could clear a sticky taint.
type Store struct {
	path   string
	bootID string
}

// NewStore returns a store at path.
func NewStore(path string) *Store { return &Store{path: path} }

// Load reads the file; a missing file is an empty state. A file that
// cannot be parsed, or is no regular file of at most 1 MiB (readFile; a
// symlink too), is set aside and reported, never fatal: the worst outcome
// is a sticky taint forgotten, as after a reset.
func (s *Store) Load() (*Saved, error) {
	var saved Saved
	data, err := hostfs.ReadBounded(s.path, maxFileSize, true)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return &Saved{}, nil
	case err == nil:
		err = json.Unmarshal(data, &saved)
	case !errors.Is(err, hostfs.ErrUnfit):
		// An I/O error: forgetting sticky taints is worse than failing.
		return nil, fmt.Errorf("read health state %s: %w", s.path, err)
	}
	if err != nil {
		aside := s.path + ".corrupt"
		if rerr := os.Rename(s.path, aside); rerr != nil {
			return nil, fmt.Errorf("health state %s cannot be set aside: %w (it is corrupt: %w)", s.path, rerr, err)
		}
		return &Saved{}, fmt.Errorf("%w: %s set aside as %s: %w", ErrCorrupt, s.path, aside, err)
	}
	return &saved, nil
}

// Save writes the state with the current boot ID.
func (s *Store) Save(saved *Saved) error {
	saved.BootID = s.bootID
	data, err := json.Marshal(saved)
	if err != nil {
		return fmt.Errorf("encode health state: %w", err)
	}
	if err := hostfs.WriteFileAtomic(s.path, data); err != nil {
		return fmt.Errorf("write health state %s: %w", s.path, err)
	}
	return nil
}
