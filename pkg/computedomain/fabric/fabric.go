// Package fabric reads a node's place in a multi-node NVLink fabric from
// NVML: the clique its GPUs are registered in, as
// "<cluster UUID>.<clique ID>" (names.AttrCliqueID), which the
// ComputeDomain node plugin publishes and the controller labels nodes with.
package fabric

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/google/uuid"
	"k8s.io/klog/v2"
)

// Library is what CliqueID needs of NVML: the node's GPUs. go-nvml's
// nvml.Interface satisfies it; the caller initialises it (Init) and shuts
// it down.
type Library interface {
	DeviceGetCount() (int, nvml.Return)
	DeviceGetHandleByIndex(index int) (nvml.Device, nvml.Return)
}

// Device is what CliqueID calls on each GPU.
type Device interface {
	GetUUID() (string, nvml.Return)
	// GetGpuFabricInfo is nvmlDeviceGetGpuFabricInfo: the GPU's
	// registration with the NVLink fabric manager.
	GetGpuFabricInfo() (nvml.GpuFabricInfo, nvml.Return)
}

// ErrRegistrationPending is wrapped by CliqueID's error while a GPU's
// registration with the fabric has not completed (NVML state NOT_STARTED
// or IN_PROGRESS): the caller should try again later rather than publish
// the node as one without fabric.
var ErrRegistrationPending = errors.New("NVLink fabric registration not completed yet")

// IsPending reports whether err says that the fabric registration is still
// in progress, so that reading again later may succeed.
func IsPending(err error) bool { return errors.Is(err, ErrRegistrationPending) }

// gpuFabric is one GPU's answer.
type gpuFabric struct {
	uuid string
	// clique is "<cluster UUID>.<clique ID>", empty for a GPU without
	// multi-node fabric.
	clique string
	// pending is set while the registration has not completed.
	pending bool
	state   uint8
}

// CliqueID returns the node's clique, "<cluster UUID>.<clique ID>" (the
// UUID in its canonical text form, the clique ID in decimal, as NVIDIA's
// ComputeDomain driver writes it), when every GPU reports a completed,
// successful registration in the same clique of the same cluster. It
// returns "" and no error when no GPU has a multi-node fabric: NVML answers
// NOT_SUPPORTED, the state is NOT_SUPPORTED, or the cluster UUID is zero (an
// NVLink system that is not multi-node), and when the node has no GPU.
//
// It fails when a GPU cannot be read, a registration failed (completed with
// an error status), or the GPUs disagree (different cliques, or some with
// fabric and some without); while any registration is still in progress
// the error wraps ErrRegistrationPending (IsPending), unless the GPUs that
// did complete already disagree.
func CliqueID(ctx context.Context, lib Library) (string, error) {
	logger := klog.FromContext(ctx)
	count, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return "", fmt.Errorf("count GPUs: %w", ret)
	}
	var gpus []gpuFabric
	for i := 0; i < count; i++ {
		d, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return "", fmt.Errorf("GPU %d: get handle: %w", i, ret)
		}
		g, err := readGPU(i, d)
		if err != nil {
			return "", err
		}
		logger.V(4).Info("GPU fabric registration", "index", i, "uuid", g.uuid, "state", g.state, "clique", g.clique, "pending", g.pending)
		gpus = append(gpus, g)
	}
	return combine(gpus)
}

// readGPU reads GPU index's registration; a failed registration or an
// unreadable GPU is an error.
func readGPU(index int, d Device) (gpuFabric, error) {
	id, ret := d.GetUUID()
	if ret != nvml.SUCCESS {
		return gpuFabric{}, fmt.Errorf("GPU %d: read UUID: %w", index, ret)
	}
	g := gpuFabric{uuid: id}
	info, ret := d.GetGpuFabricInfo()
	switch {
	case ret == nvml.ERROR_NOT_SUPPORTED:
		return g, nil
	case ret != nvml.SUCCESS:
		return gpuFabric{}, fmt.Errorf("GPU %d (%s): read NVLink fabric info: %w", index, id, ret)
	}
	g.state = info.State
	switch info.State {
	case nvml.GPU_FABRIC_STATE_NOT_SUPPORTED:
		return g, nil
	case nvml.GPU_FABRIC_STATE_NOT_STARTED, nvml.GPU_FABRIC_STATE_IN_PROGRESS:
		g.pending = true
		return g, nil
	case nvml.GPU_FABRIC_STATE_COMPLETED:
	default:
		return gpuFabric{}, fmt.Errorf("GPU %d (%s): unknown NVLink fabric state %d", index, id, info.State)
	}
	if status := nvml.Return(info.Status); status != nvml.SUCCESS {
		return gpuFabric{}, fmt.Errorf("GPU %d (%s): NVLink fabric registration failed: %w", index, id, status)
	}
	if info.ClusterUuid == [16]uint8{} {
		// NVLink, but not multi-node NVLink.
		return g, nil
	}
	cluster, err := uuid.FromBytes(info.ClusterUuid[:])
	if err != nil {
		return gpuFabric{}, fmt.Errorf("GPU %d (%s): NVLink fabric cluster UUID: %w", index, id, err)
	}
	g.clique = fmt.Sprintf("%s.%d", cluster, info.CliqueId)
	return g, nil
}

// combine is the node's clique from its GPUs' answers.
func combine(gpus []gpuFabric) (string, error) {
	var pending []string
	cliques := map[string][]string{}
	for _, g := range gpus {
		switch {
		case g.pending:
			pending = append(pending, g.uuid)
		default:
			cliques[g.clique] = append(cliques[g.clique], g.uuid)
		}
	}
	if len(cliques) <= 1 {
		if len(pending) > 0 {
			return "", fmt.Errorf("GPUs %s: %w", strings.Join(pending, ", "), ErrRegistrationPending)
		}
		for c := range cliques {
			return c, nil
		}
		return "", nil
	}
	// Completed registrations that disagree do not agree later.
	var parts []string
	for c, ids := range cliques {
		name := c
		if name == "" {
			name = "no fabric"
		}
		parts = append(parts, fmt.Sprintf("%s: %s", name, strings.Join(ids, ", ")))
	}
	sort.Strings(parts)
	return "", fmt.Errorf("GPUs disagree on their NVLink fabric clique (%s)", strings.Join(parts, "; "))
}

// Read loads NVML from libraryPath (libnvidia-ml.so.1 under the driver
// root; empty: the dynamic loader's search path), returns the node's
// CliqueID and shuts NVML down again. A library that does not load or a
// driver that is not loaded is an error: a node without the GPU driver is
// not a node without fabric.
func Read(ctx context.Context, libraryPath string) (string, error) {
	var opts []nvml.LibraryOption
	if libraryPath != "" {
		opts = append(opts, nvml.WithLibraryPath(libraryPath))
	}
	lib := nvml.New(opts...)
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return "", fmt.Errorf("initialise NVML from %q: %w", libraryPath, ret)
	}
	defer func() {
		if ret := lib.Shutdown(); ret != nvml.SUCCESS {
			klog.FromContext(ctx).Error(ret, "Shut down NVML", "library", libraryPath)
		}
	}()
	return CliqueID(ctx, lib)
}
