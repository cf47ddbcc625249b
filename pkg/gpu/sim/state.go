// Package sim is a simulated GPU node: an nvml.Interface built on go-nvml's
// own mock servers (pkg/nvml/mock/dgx*), extended with what those servers
// lack and the driver uses: hardware-accurate MIG placements (in memory
// slices), refusal of occupied placements, MIG device handles and UUIDs,
// event sets, temperature, fault injection, and hardware's timing
// (latency.go).
//
// The node's mutable state (MIG mode, GPU and compute instances, injected
// faults) lives in files, so that it outlives the process that changed it
// exactly as hardware outlives a driver restart, and so that a second
// process (cmd/gpu-sim) can inspect it and inject faults. Each GPU has a
// file and a lock of its own, as each GPU is a device of its own: changing
// one GPU never waits for another. The node's file holds what is
// node-wide: the model, the seed of the GPU UUIDs and the injected events.
package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// StateVersion is the version of the state directory's layout: 1 was one
// state.json for the whole node (migrated on open), 2 is node.json and a
// gpu-<index>.json per GPU.
const StateVersion = 2

// State is the simulated node's mutable state, as one value. Node.State
// assembles it from the node's and the GPUs' files; it is a snapshot of
// each file, not of the node at one instant, as a reader of hardware gets.
type State struct {
	Version int    `json:"version"`
	Model   string `json:"model"`
	// Seed makes GPU UUIDs stable for the life of the state directory.
	Seed string     `json:"seed"`
	GPUs []GPUState `json:"gpus"`
	// Events are injected health events, in order; NextEventSeq numbers the
	// next one so that event sets can tell new events from old.
	Events       []EventState `json:"events,omitempty"`
	NextEventSeq uint64       `json:"nextEventSeq"`
}

// nodeState is the node-wide part of the state, in node.json.
type nodeState struct {
	Version      int          `json:"version"`
	Model        string       `json:"model"`
	Seed         string       `json:"seed"`
	GPUCount     int          `json:"gpuCount"`
	Events       []EventState `json:"events,omitempty"`
	NextEventSeq uint64       `json:"nextEventSeq"`
}

// GPUState is one simulated GPU's mutable state, in gpu-<index>.json.
type GPUState struct {
	UUID string `json:"uuid"`
	// MIGMode is the current MIG mode (nvml.DEVICE_MIG_*).
	MIGMode int `json:"migMode"`
	// MIGModePending is set while a change of MIG mode waits for a GPU
	// reset, as on Ampere: the pending mode is the other one.
	MIGModePending bool `json:"migModePending,omitempty"`
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
	// CallErrors are NVML return codes injected into calls of the GPU,
	// by call name (see Node.SetCallError).
	CallErrors map[string]int32 `json:"callErrors,omitempty"`
	// Clients are the processes other than the driver that hold the GPU
	// open (a monitoring agent such as dcgm-exporter or
	// nvidia-persistenced, an administrator's nvidia-smi), by name: while
	// one does, a change of MIG mode is not activated (NVML returns
	// ERROR_IN_USE as the activation status and leaves the mode pending),
	// as NVML's header documents for a GPU that is not idle.
	Clients []string `json:"clients,omitempty"`
	// Fabric is the GPU's NVLink fabric registration on a fabric attached
	// node (gb200), set by Node.SetFabric; nil is the default placement
	// (see Node.Fabric). Ignored on other nodes.
	Fabric *FabricState `json:"fabric,omitempty"`
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
	// Holders name the processes that use the MIG device (an MPS control
	// daemon, by its pipe directory): while there is one, destroying the
	// compute instance fails with ERROR_IN_USE, as on hardware. The slice
	// is replaced, never changed in place.
	Holders []string `json:"holders,omitempty"`
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

// maxEvents bounds the event log kept in the node's file.
const maxEvents = 256

// record is one state file (or, without a directory, one value in memory)
// with the lock that serialises its changes.
//
// Changes hold op, and the file's flock, for their whole duration, which
// includes the simulated hardware latency: operations on one GPU queue
// behind each other, as on hardware. Reads take only mu, briefly, so that
// they never wait for a change in progress and see the state before it.
type record[T any] struct {
	path, lockPath string // empty in memory
	clone          func(*T) *T

	op sync.Mutex
	mu sync.Mutex
	// cur is the current value; for a file, the one parsed at key.
	cur *T
	key fileKey
}

type fileKey struct {
	ino   uint64
	size  int64
	mtime int64
}

func statKey(path string) (fileKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileKey{}, err
	}
	key := fileKey{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		key.ino = sys.Ino
	}
	return key, nil
}

// read returns the current value. It is shared and must not be modified:
// update never changes a published value, it replaces it with a new one.
func (r *record[T]) read() (*T, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.loadLocked()
}

// loadLocked returns the current value, re-reading the file only when it
// changed. Files are replaced by rename, so a reader never sees half of one.
func (r *record[T]) loadLocked() (*T, error) {
	if r.path == "" {
		return r.cur, nil
	}
	key, err := statKey(r.path)
	if err != nil {
		return nil, fmt.Errorf("read simulated node state: %w", err)
	}
	if r.cur != nil && key == r.key {
		return r.cur, nil
	}
	data, err := os.ReadFile(r.path)
	if err != nil {
		return nil, fmt.Errorf("read simulated node state: %w", err)
	}
	v := new(T)
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("parse simulated node state %s: %w", r.path, err)
	}
	r.cur, r.key = v, key
	return v, nil
}

// update applies fn to a copy of the value under the record's locks, waits
// delay (the operation's simulated duration, still holding them), and
// saves the result unless fn fails.
func (r *record[T]) update(delay time.Duration, fn func(*T) error) error {
	r.op.Lock()
	defer r.op.Unlock()
	if r.lockPath != "" {
		unlock, err := lockFile(r.lockPath)
		if err != nil {
			return err
		}
		defer unlock()
	}
	cur, err := r.read()
	if err != nil {
		return err
	}
	next := r.clone(cur)
	if err := fn(next); err != nil {
		return err
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	if r.path == "" {
		r.mu.Lock()
		r.cur = next
		r.mu.Unlock()
		return nil
	}
	return r.write(next)
}

// write replaces the file with v; the caller holds the file's lock.
func (r *record[T]) write(v *T) error {
	if err := writeJSON(r.path, v); err != nil {
		return err
	}
	key, err := statKey(r.path)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur, r.key = v, key
	if err != nil {
		// The next read parses the file again.
		r.key = fileKey{}
	}
	return nil
}

// writeJSON replaces path with v's JSON, atomically (by rename).
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode simulated node state: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".state-*.json")
	if err != nil {
		return fmt.Errorf("write simulated node state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write simulated node state %s: %w", path, err)
	}
	// No fsync: the state stands for hardware, which a process crash does not
	// reset; the page cache survives SIGKILL.
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write simulated node state %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write simulated node state %s: %w", path, err)
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
		// Closing the file releases the lock too; unlock first so that a
		// descriptor leaked elsewhere cannot keep holding it.
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// store is the node's state: one record for the node, one per GPU.
type store struct {
	dir  string
	node *record[nodeState]
	gpus []*record[GPUState]
}

// Paths in a state directory.
const (
	nodeFile   = "node.json"
	nodeLock   = "node.lock"
	legacyFile = "state.json" // StateVersion 1
	legacyLock = "state.lock"
)

func gpuFile(i int) string { return fmt.Sprintf("gpu-%d.json", i) }
func gpuLock(i int) string { return fmt.Sprintf("gpu-%d.lock", i) }

// openStore opens the state in dir, creating it from initial unless it
// exists, and migrating a StateVersion 1 directory. Without a directory
// the state is initial, in memory.
func openStore(dir string, initial *State) (*store, error) {
	s := &store{dir: dir}
	if dir != "" {
		if err := initDir(dir, initial); err != nil {
			return nil, err
		}
	}
	s.node = &record[nodeState]{clone: cloneNode}
	if dir == "" {
		s.node.cur = splitNode(initial)
	} else {
		s.node.path, s.node.lockPath = filepath.Join(dir, nodeFile), filepath.Join(dir, nodeLock)
	}
	n, err := s.node.read()
	if err != nil {
		return nil, err
	}
	for i := 0; i < n.GPUCount; i++ {
		g := &record[GPUState]{clone: cloneGPU}
		if dir == "" {
			g.cur = cloneGPU(&initial.GPUs[i])
		} else {
			g.path, g.lockPath = filepath.Join(dir, gpuFile(i)), filepath.Join(dir, gpuLock(i))
		}
		s.gpus = append(s.gpus, g)
	}
	return s, nil
}

// initDir makes dir hold a StateVersion 2 state: it creates one from
// initial, migrates a StateVersion 1 state.json, or checks that the one
// there is of initial's model. The node's file is written last, so a
// directory without it is not yet initialised, whatever GPU files it has.
func initDir(dir string, initial *State) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create simulated node state directory: %w", err)
	}
	unlock, err := lockFile(filepath.Join(dir, nodeLock))
	if err != nil {
		return err
	}
	defer unlock()
	data, err := os.ReadFile(filepath.Join(dir, nodeFile))
	switch {
	case err == nil:
		var cur nodeState
		if err := json.Unmarshal(data, &cur); err != nil {
			return fmt.Errorf("parse simulated node state %s: %w", filepath.Join(dir, nodeFile), err)
		}
		if cur.Version != StateVersion {
			return fmt.Errorf("simulated node state in %s has version %d, want %d", dir, cur.Version, StateVersion)
		}
		if cur.Model != initial.Model {
			return fmt.Errorf("simulated node state in %s is of model %q, not %q: remove it or pick its model", dir, cur.Model, initial.Model)
		}
		// A migration that stopped after writing the node's file.
		return removeLegacy(dir)
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("read simulated node state: %w", err)
	}
	from := initial
	legacy, err := os.ReadFile(filepath.Join(dir, legacyFile))
	switch {
	case err == nil:
		// The legacy file's writers held its lock; so does the migration.
		unlockLegacy, err := lockFile(filepath.Join(dir, legacyLock))
		if err != nil {
			return err
		}
		defer unlockLegacy()
		old := &State{}
		if err := json.Unmarshal(legacy, old); err != nil {
			return fmt.Errorf("parse simulated node state %s: %w", filepath.Join(dir, legacyFile), err)
		}
		if old.Version != 1 {
			return fmt.Errorf("simulated node state %s has version %d, want 1", filepath.Join(dir, legacyFile), old.Version)
		}
		if old.Model != initial.Model {
			return fmt.Errorf("simulated node state in %s is of model %q, not %q: remove it or pick its model", dir, old.Model, initial.Model)
		}
		from = old
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("read simulated node state: %w", err)
	}
	for i := range from.GPUs {
		if err := writeJSON(filepath.Join(dir, gpuFile(i)), &from.GPUs[i]); err != nil {
			return err
		}
	}
	if err := writeJSON(filepath.Join(dir, nodeFile), splitNode(from)); err != nil {
		return err
	}
	return removeLegacy(dir)
}

func removeLegacy(dir string) error {
	for _, name := range []string{legacyFile, legacyLock} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove migrated simulated node state: %w", err)
		}
	}
	return nil
}

// splitNode is the node-wide part of st, at StateVersion.
func splitNode(st *State) *nodeState {
	return &nodeState{
		Version: StateVersion, Model: st.Model, Seed: st.Seed, GPUCount: len(st.GPUs),
		Events: append([]EventState(nil), st.Events...), NextEventSeq: st.NextEventSeq,
	}
}

// state assembles the whole state from the node's and the GPUs' records.
func (s *store) state() (*State, error) {
	n, err := s.node.read()
	if err != nil {
		return nil, err
	}
	st := &State{
		Version: n.Version, Model: n.Model, Seed: n.Seed,
		Events: append([]EventState(nil), n.Events...), NextEventSeq: n.NextEventSeq,
	}
	for _, g := range s.gpus {
		gs, err := g.read()
		if err != nil {
			return nil, err
		}
		st.GPUs = append(st.GPUs, *cloneGPU(gs))
	}
	return st, nil
}

// gpu returns GPU index's record.
func (s *store) gpu(index int) (*record[GPUState], error) {
	if index < 0 || index >= len(s.gpus) {
		return nil, fmt.Errorf("GPU index %d out of range (node has %d GPUs)", index, len(s.gpus))
	}
	return s.gpus[index], nil
}

func cloneNode(n *nodeState) *nodeState {
	out := *n
	out.Events = append([]EventState(nil), n.Events...)
	return &out
}

func cloneGPU(g *GPUState) *GPUState {
	out := *g
	if g.CallErrors != nil {
		out.CallErrors = maps.Clone(g.CallErrors)
	}
	if g.Fabric != nil {
		f := *g.Fabric
		out.Fabric = &f
	}
	out.GPUInstances = make([]GIState, len(g.GPUInstances))
	for j, gi := range g.GPUInstances {
		out.GPUInstances[j] = gi
		out.GPUInstances[j].ComputeInstances = append([]CIState(nil), gi.ComputeInstances...)
	}
	return &out
}

func (g *GPUState) gi(id int) (*GIState, int) {
	for i := range g.GPUInstances {
		if g.GPUInstances[i].ID == id {
			return &g.GPUInstances[i], i
		}
	}
	return nil, -1
}

func (n *nodeState) addEvent(e EventState) {
	e.Seq = n.NextEventSeq
	n.NextEventSeq++
	n.Events = append(n.Events, e)
	if len(n.Events) > maxEvents {
		n.Events = n.Events[len(n.Events)-maxEvents:]
	}
}
