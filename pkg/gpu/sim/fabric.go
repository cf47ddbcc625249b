package sim

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/google/uuid"
)

// DefaultFabricClusterUUID is the NVLink fabric cluster UUID of a fabric
// attached node (gb200) whose placement was never set: every such node is
// in clique DefaultFabricCliqueID of this one cluster, as the local
// cluster's nodes are unless GPU_DRA_CLIQUES places them (docs/cluster.md).
const DefaultFabricClusterUUID = "8c3b5b52-1f4e-4c1a-9a6e-6d9f3e0f2b10"

// DefaultFabricCliqueID is the clique of a fabric attached node whose
// placement was never set.
const DefaultFabricCliqueID = 1

// FabricState is a GPU's registration with the NVLink fabric, as NVML's
// nvmlGpuFabricInfo_t reports it. The fabric manager registers the GPU in
// the clique of its rack (its NVLink domain) of the cluster.
type FabricState struct {
	// ClusterUUID is the fabric's cluster UUID, in its canonical text form.
	ClusterUUID string `json:"clusterUUID"`
	// CliqueID is the GPU's clique within the cluster.
	CliqueID uint32 `json:"cliqueID"`
	// State is the registration's state, nvml.GPU_FABRIC_STATE_*.
	State uint8 `json:"state"`
	// Status is the registration's result (an nvml.Return), meaningful
	// once State is GPU_FABRIC_STATE_COMPLETED.
	Status int32 `json:"status"`
}

// Clique is the placement as "<cluster UUID>.<clique ID>", the form NVIDIA's
// ComputeDomain driver gives a node's clique.
func (f FabricState) Clique() string {
	return fmt.Sprintf("%s.%d", f.ClusterUUID, f.CliqueID)
}

// String describes the registration for gpu-sim show.
func (f FabricState) String() string {
	switch f.State {
	case nvml.GPU_FABRIC_STATE_COMPLETED:
		if nvml.Return(f.Status) != nvml.SUCCESS {
			return fmt.Sprintf("failed(%s)", nvml.ErrorString(nvml.Return(f.Status)))
		}
		return f.Clique()
	case nvml.GPU_FABRIC_STATE_IN_PROGRESS:
		return "in-progress"
	case nvml.GPU_FABRIC_STATE_NOT_STARTED:
		return "not-started"
	}
	return "not-supported"
}

// ParseClique parses "<cluster UUID>.<clique ID>" into a completed,
// successful registration.
func ParseClique(s string) (FabricState, error) {
	id, clique, ok := strings.Cut(s, ".")
	if !ok {
		return FabricState{}, fmt.Errorf("fabric placement %q: want <cluster UUID>.<clique ID>", s)
	}
	u, err := uuid.Parse(id)
	if err != nil {
		return FabricState{}, fmt.Errorf("fabric placement %q: cluster UUID: %w", s, err)
	}
	c, err := strconv.ParseUint(clique, 10, 32)
	if err != nil {
		return FabricState{}, fmt.Errorf("fabric placement %q: clique ID: want a number up to %d", s, uint32(1<<32-1))
	}
	return FabricState{ClusterUUID: u.String(), CliqueID: uint32(c), State: nvml.GPU_FABRIC_STATE_COMPLETED, Status: int32(nvml.SUCCESS)}, nil
}

// FabricStates are the registration states SetFabricState accepts, by the
// name gpu-sim uses.
var FabricStates = map[string]uint8{
	"not-started": nvml.GPU_FABRIC_STATE_NOT_STARTED,
	"in-progress": nvml.GPU_FABRIC_STATE_IN_PROGRESS,
	"completed":   nvml.GPU_FABRIC_STATE_COMPLETED,
}

// HasFabric reports whether the node's GPUs are attached to an NVLink
// fabric (gb200); on the others NVML's fabric info is NOT_SUPPORTED.
func (n *Node) HasFabric() bool { return n.fabric }

// Fabric returns GPU index's fabric registration: the one set by
// SetFabric, or the default placement (DefaultFabricClusterUUID, clique
// DefaultFabricCliqueID, completed). ok is false on a node without fabric.
func (n *Node) Fabric(index int) (f FabricState, ok bool, err error) {
	r, err := n.store.gpu(index)
	if err != nil {
		return FabricState{}, false, err
	}
	if !n.fabric {
		return FabricState{}, false, nil
	}
	g, err := r.read()
	if err != nil {
		return FabricState{}, false, err
	}
	return effectiveFabric(g), true, nil
}

func effectiveFabric(g *GPUState) FabricState {
	if g.Fabric != nil {
		return *g.Fabric
	}
	return FabricState{ClusterUUID: DefaultFabricClusterUUID, CliqueID: DefaultFabricCliqueID,
		State: nvml.GPU_FABRIC_STATE_COMPLETED, Status: int32(nvml.SUCCESS)}
}

// SetFabric places GPU index (every GPU for index -1) in the fabric as f,
// as the fabric manager would register it: a rack placement
// (ParseClique), a registration still in progress, or one that failed
// (State completed, Status an NVML error). The node must be fabric
// attached.
func (n *Node) SetFabric(index int, f FabricState) error {
	if !n.fabric {
		return fmt.Errorf("simulated node %s has no NVLink fabric (fabric attached: gb200)", n.model)
	}
	if f.State > nvml.GPU_FABRIC_STATE_COMPLETED || f.State == nvml.GPU_FABRIC_STATE_NOT_SUPPORTED {
		return fmt.Errorf("fabric state %d: want not-started (1), in-progress (2) or completed (3)", f.State)
	}
	if f.ClusterUUID != "" {
		u, err := uuid.Parse(f.ClusterUUID)
		if err != nil {
			return fmt.Errorf("fabric cluster UUID %q: %w", f.ClusterUUID, err)
		}
		f.ClusterUUID = u.String()
	}
	indexes := []int{index}
	if index == -1 {
		indexes = indexes[:0]
		for i := range n.store.gpus {
			indexes = append(indexes, i)
		}
	}
	for _, i := range indexes {
		if err := n.setGPU(i, func(g *GPUState) { v := f; g.Fabric = &v }); err != nil {
			return err
		}
	}
	return nil
}

// extendDeviceFabric answers NVML's fabric info of GPU index: the GPU's
// registration on a fabric attached node, ERROR_NOT_SUPPORTED on the
// others (nvml.h: "If device doesn't support gpu fabric"), the GPU's
// failure while it is lost.
func (n *Node) extendDeviceFabric(d *server.Device, index int) {
	d.GetGpuFabricInfoFunc = func() (nvml.GpuFabricInfo, nvml.Return) {
		if ret := n.callError(index, "GetGpuFabricInfo"); ret != nvml.SUCCESS {
			return nvml.GpuFabricInfo{}, ret
		}
		g, ret := n.gpuState(index)
		if ret != nvml.SUCCESS {
			return nvml.GpuFabricInfo{}, ret
		}
		if !n.fabric {
			return nvml.GpuFabricInfo{}, nvml.ERROR_NOT_SUPPORTED
		}
		f := effectiveFabric(g)
		info := nvml.GpuFabricInfo{CliqueId: f.CliqueID, State: f.State, Status: uint32(f.Status)}
		if f.ClusterUUID != "" {
			if u, err := uuid.Parse(f.ClusterUUID); err == nil {
				copy(info.ClusterUuid[:], u[:])
			}
		}
		return info, nvml.SUCCESS
	}
}
