// Package sim is a simulated GPU node: an nvml.Interface built on go-nvml's
// own mock servers (pkg/nvml/mock/dgx*), extended with what those servers
// lack and the driver uses: hardware-accurate MIG placements (in memory
// slices), refusal of occupied placements, MIG device handles and UUIDs,
// event sets, temperature, and fault injection.
//
// The node's mutable state (MIG mode, GPU and compute instances, injected
// faults) lives in a JSON file guarded by a file lock, so that it outlives
// the process that changed it exactly as hardware outlives a driver restart,
// and so that a second process (cmd/gpu-sim) can inspect it and inject faults.
package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// StateVersion is the version of the state file's schema.
const StateVersion = 1

// State is the simulated node's mutable state.
type State struct {
	Version int    `json:"version"`
	Model   string `json:"model"`
	// Seed makes GPU UUIDs stable for the life of the state file.
	Seed string     `json:"seed"`
	GPUs []GPUState `json:"gpus"`
	// Events are injected health events, in order; NextEventSeq numbers the
	// next one so that event sets can tell new events from old.
	Events       []EventState `json:"events,omitempty"`
	NextEventSeq uint64       `json:"nextEventSeq"`
}

// GPUState is one simulated GPU's mutable state.
type GPUState struct {
	UUID    string `json:"uuid"`
	MIGMode int    `json:"migMode"`
	// GPUInstances are the live GPU instances.
	GPUInstances []GIState `json:"gpuInstances,omitempty"`
	// Lost makes every call on the GPU fail with ERROR_GPU_IS_LOST.
	Lost bool `json:"lost,omitempty"`
	// TemperatureC is the GPU's core temperature.
	TemperatureC int `json:"temperatureC"`
	// RetiredPagesPending simulates memory repairs (retired pages on
	// older GPUs, remapped rows on Ampere and later) pending a reset.
	RetiredPagesPending bool `json:"retiredPagesPending,omitempty"`
	// RowRemapFailure simulates a row remapping that failed: the memory
	// cannot be repaired.
	RowRemapFailure bool `json:"rowRemapFailure,omitempty"`
	// VolatileDBE counts uncorrectable ECC errors since the last reset, as
	// NVML's volatile counters do; a reset sets it back to zero.
	VolatileDBE uint64 `json:"volatileDBE,omitempty"`
	// Resets counts simulated GPU resets.
	Resets int `json:"resets,omitempty"`
}

// GIState is a live GPU instance.
type GIState struct {
	ID               int       `json:"id"`
	ProfileID        int       `json:"profileId"`
	Start            int       `json:"start"`
	Size             int       `json:"size"`
	ComputeInstances []CIState `json:"computeInstances,omitempty"`
}

// CIState is a live compute instance; together with its GPU instance it is a
// MIG device with a UUID.
type CIState struct {
	ID        int    `json:"id"`
	ProfileID int    `json:"profileId"`
	UUID      string `json:"uuid"`
}

// EventState is one injected health event.
type EventState struct {
	Seq  uint64 `json:"seq"`
	GPU  int    `json:"gpu"`
	Type uint64 `json:"type"` // nvml.EventType*
	Data uint64 `json:"data"` // XID number for XID events
	GIID int    `json:"giid"`
	CIID int    `json:"ciid"`
}

// maxEvents bounds the event log kept in the state file.
const maxEvents = 256

// store holds the state, either in a file (shared between processes) or in
// memory (one process, for tests and one-shot commands).
type store struct {
	dir string

	mu sync.Mutex
	// mem is the state when dir is empty, and the parsed cache otherwise.
	mem *State
	// cacheKey identifies the file version mem was parsed from.
	cacheKey fileKey
}

type fileKey struct {
	ino   uint64
	size  int64
	mtime int64
}

func (s *store) statePath() string { return filepath.Join(s.dir, "state.json") }
func (s *store) lockPath() string  { return filepath.Join(s.dir, "state.lock") }

// read returns the current state. It is shared and must not be modified:
// update never changes a published state, it replaces it with a new one.
func (s *store) read() (*State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loadLocked()
}

// loadLocked returns the current state, re-reading the file only when it
// changed. The file is replaced by rename, so a reader never sees half of it.
func (s *store) loadLocked() (*State, error) {
	if s.dir == "" {
		return s.mem, nil
	}
	fi, err := os.Stat(s.statePath())
	if err != nil {
		return nil, fmt.Errorf("read simulated node state: %w", err)
	}
	key := fileKey{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		key.ino = sys.Ino
	}
	if s.mem != nil && key == s.cacheKey {
		return s.mem, nil
	}
	data, err := os.ReadFile(s.statePath())
	if err != nil {
		return nil, fmt.Errorf("read simulated node state: %w", err)
	}
	st := &State{}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("parse simulated node state %s: %w", s.statePath(), err)
	}
	if st.Version != StateVersion {
		return nil, fmt.Errorf("simulated node state %s has version %d, want %d", s.statePath(), st.Version, StateVersion)
	}
	s.mem, s.cacheKey = st, key
	return st, nil
}

// update applies fn to the state under the file lock and saves the result
// unless fn fails.
func (s *store) update(fn func(*State) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir == "" {
		next := s.mem.clone()
		if err := fn(next); err != nil {
			return err
		}
		s.mem = next
		return nil
	}
	unlock, err := lockFile(s.lockPath())
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := s.loadLocked()
	if err != nil {
		return err
	}
	next := cur.clone()
	if err := fn(next); err != nil {
		return err
	}
	return s.writeLocked(next)
}

func (s *store) writeLocked(st *State) error {
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode simulated node state: %w", err)
	}
	tmp, err := os.CreateTemp(s.dir, ".state-*.json")
	if err != nil {
		return fmt.Errorf("write simulated node state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write simulated node state: %w", err)
	}
	// No fsync: the state stands for hardware, which a process crash does not
	// reset; the page cache survives SIGKILL.
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write simulated node state: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.statePath()); err != nil {
		return fmt.Errorf("write simulated node state: %w", err)
	}
	s.mem = st
	fi, err := os.Stat(s.statePath())
	if err == nil {
		s.cacheKey = fileKey{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			s.cacheKey.ino = sys.Ino
		}
	} else {
		s.cacheKey = fileKey{}
	}
	return nil
}

// lockFile takes an exclusive flock on path, creating it if needed.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open simulated node lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock simulated node state: %w", err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// initFile creates the state file from initial unless it exists, and checks
// that an existing one is of the same model.
func (s *store) initFile(initial *State) error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("create simulated node state directory: %w", err)
	}
	unlock, err := lockFile(s.lockPath())
	if err != nil {
		return err
	}
	defer unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err = os.Stat(s.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return s.writeLocked(initial)
	}
	if err != nil {
		return fmt.Errorf("read simulated node state: %w", err)
	}
	cur, err := s.loadLocked()
	if err != nil {
		return err
	}
	if cur.Model != initial.Model {
		return fmt.Errorf("simulated node state in %s is of model %q, not %q: remove it or pick its model", s.dir, cur.Model, initial.Model)
	}
	return nil
}

func (st *State) clone() *State {
	out := *st
	out.GPUs = make([]GPUState, len(st.GPUs))
	for i, g := range st.GPUs {
		out.GPUs[i] = g
		out.GPUs[i].GPUInstances = make([]GIState, len(g.GPUInstances))
		for j, gi := range g.GPUInstances {
			out.GPUs[i].GPUInstances[j] = gi
			out.GPUs[i].GPUInstances[j].ComputeInstances = append([]CIState(nil), gi.ComputeInstances...)
		}
	}
	out.Events = append([]EventState(nil), st.Events...)
	return &out
}

func (st *State) gpu(index int) (*GPUState, error) {
	if index < 0 || index >= len(st.GPUs) {
		return nil, fmt.Errorf("GPU index %d out of range (node has %d GPUs)", index, len(st.GPUs))
	}
	return &st.GPUs[index], nil
}

func (g *GPUState) gi(id int) (*GIState, int) {
	for i := range g.GPUInstances {
		if g.GPUInstances[i].ID == id {
			return &g.GPUInstances[i], i
		}
	}
	return nil, -1
}

func (st *State) addEvent(e EventState) {
	e.Seq = st.NextEventSeq
	st.NextEventSeq++
	st.Events = append(st.Events, e)
	if len(st.Events) > maxEvents {
		st.Events = st.Events[len(st.Events)-maxEvents:]
	}
}
