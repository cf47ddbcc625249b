package mps

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// specFile is the plugin's description of a daemon in its directory: the
// GPUs it is given and the limits it enforces. The plugin writes it before
// it launches the daemon; the supervisor reads it. Like the record, it is
// out of every container's reach, and a daemon pod's arguments (which the
// identity that creates daemon pods chooses) cannot change it.
const specFile = "spec.json"

// specVersion is the version of the spec's format.
const specVersion = 1

// maxSpecSize bounds what is read of a spec: a few GPUs' UUIDs and limits.
const maxSpecSize = 16 << 10

// Limits are what a daemon imposes on every client of its servers: the
// defaults the control daemon gives the MPS servers it starts, set in its
// own environment, so that a client that unsets or raises its own
// variables still gets them (NVIDIA: a client's own setting can only lower
// them). Each client process is limited, not the daemon as a whole.
type Limits struct {
	// ActiveThreadPercentage is the share of each GPU's threads a client
	// may use (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE); 0 sets none.
	ActiveThreadPercentage int `json:"activeThreadPercentage,omitempty"`
	// PinnedMemoryMiB is the device memory a client may pin on each GPU,
	// by the GPU's UUID (CUDA_MPS_PINNED_DEVICE_MEM_LIMIT); a GPU not
	// named has none.
	PinnedMemoryMiB map[string]int64 `json:"pinnedMemoryMiB,omitempty"`
	// SharesOnly says that the daemon serves only shares of shared GPUs
	// (Daemon.SharesOnly). It sets no limit and is not saved: the claim's
	// devices say it again at every start.
	SharesOnly bool `json:"-"`
	// MultiUser runs the daemon in multi-user mode (-M): its MPS server
	// serves clients of every user ID at once, not one user's at a time.
	// It limits nothing; it is here as the daemon's other setting.
	MultiUser bool `json:"multiUser,omitempty"`
}

// Args are the control daemon's arguments after "-f" (foreground): "-M"
// in multi-user mode.
func (l Limits) Args() []string {
	if l.MultiUser {
		return []string{"-M"}
	}
	return nil
}

// validate checks the limits against the daemon's GPUs.
func (l Limits) validate(gpus []string) error {
	if l.ActiveThreadPercentage < 0 || l.ActiveThreadPercentage > 100 {
		return fmt.Errorf("activeThreadPercentage %d: not a percentage", l.ActiveThreadPercentage)
	}
	for uuid, mib := range l.PinnedMemoryMiB {
		if !slices.Contains(gpus, uuid) {
			return fmt.Errorf("pinnedMemoryMiB: %s is not one of the daemon's GPUs %v", uuid, gpus)
		}
		if mib <= 0 {
			return fmt.Errorf("pinnedMemoryMiB[%s]: %d is not a positive number of MiB", uuid, mib)
		}
	}
	return nil
}

// Env is the environment that carries the limits, the GPUs numbered in
// the order given (the daemon's CUDA_VISIBLE_DEVICES): the control
// daemon's own, and what its clients are told.
func (l Limits) Env(gpus []string) []string {
	var out []string
	if l.ActiveThreadPercentage > 0 {
		out = append(out, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="+strconv.Itoa(l.ActiveThreadPercentage))
	}
	var pinned []string
	for i, uuid := range gpus {
		if mib, ok := l.PinnedMemoryMiB[uuid]; ok {
			pinned = append(pinned, fmt.Sprintf("%d=%dM", i, mib))
		}
	}
	if len(pinned) > 0 {
		out = append(out, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT="+strings.Join(pinned, ","))
	}
	return out
}

// spec is the content of specFile.
type spec struct {
	Version int      `json:"version"`
	GPUs    []string `json:"gpus"`
	Limits  Limits   `json:"limits"`
	// Filesystem is the daemon's tmpfs (fs.go), when it has one: the
	// supervisor checks that it sees it before it starts the daemon.
	Filesystem string `json:"filesystem,omitempty"`
}

// saveSpecIn writes the spec of the daemon of directory dir with write.
func saveSpecIn(dir string, gpus []string, limits Limits, filesystem string, write func(string, []byte) error) error {
	if len(gpus) == 0 {
		return errors.New("an MPS control daemon without GPUs")
	}
	if err := limits.validate(gpus); err != nil {
		return fmt.Errorf("MPS limits: %w", err)
	}
	data, err := json.Marshal(spec{Version: specVersion, GPUs: gpus, Limits: limits, Filesystem: filesystem})
	if err != nil {
		return fmt.Errorf("encode the MPS control daemon's spec: %w", err)
	}
	if err := write(filepath.Join(dir, specFile), data); err != nil {
		return fmt.Errorf("write the MPS control daemon's spec: %w", err)
	}
	return nil
}

// loadSpecIn reads the spec of the daemon of directory dir. A directory
// without one (made by a previous release) returns fs.ErrNotExist.
func loadSpecIn(dir string) (spec, error) {
	data, err := hostfs.ReadBounded(filepath.Join(dir, specFile), maxSpecSize, true)
	if err != nil {
		return spec{}, err
	}
	var s spec
	if err := json.Unmarshal(data, &s); err != nil {
		return spec{}, fmt.Errorf("decode %s: %w", specFile, err)
	}
	if s.Version != specVersion {
		return spec{}, fmt.Errorf("%s: version %d, want %d", specFile, s.Version, specVersion)
	}
	if len(s.GPUs) == 0 {
		return spec{}, fmt.Errorf("%s: no GPU", specFile)
	}
	if err := s.Limits.validate(s.GPUs); err != nil {
		return spec{}, fmt.Errorf("%s: %w", specFile, err)
	}
	return s, nil
}

// resolveSpec is what a supervisor runs: the plugin's spec in dir, which
// the GPUs it was told (by its pod's arguments, if any) must match, or,
// in a directory a previous release made, those GPUs without limits.
func resolveSpec(dir string, told []string) (spec, error) {
	s, err := loadSpecIn(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if len(told) == 0 {
			return spec{}, errors.New("no GPUs: the daemon's directory has no spec and none were given")
		}
		return spec{Version: specVersion, GPUs: told}, nil
	case err != nil:
		return spec{}, err
	case len(told) > 0 && !slices.Equal(told, s.GPUs):
		return spec{}, fmt.Errorf("refusing GPUs %v: the plugin gave this daemon %v (%s)", told, s.GPUs, specFile)
	}
	return s, nil
}
