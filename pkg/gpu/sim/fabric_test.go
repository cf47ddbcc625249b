package sim

import (
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/google/uuid"
)

func TestFabricInfo(t *testing.T) {
	const placed = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0.7"
	failed := FabricState{State: nvml.GPU_FABRIC_STATE_COMPLETED, Status: int32(nvml.ERROR_UNKNOWN)}
	tests := []struct {
		name  string
		model string
		// set places every GPU before GPU 1 is read; nil keeps the default.
		set       func(t *testing.T, n *Node)
		wantRet   nvml.Return
		wantState uint8
		wantUUID  string
		wantID    uint32
		// wantStatus is the registration's status.
		wantStatus nvml.Return
	}{
		{name: "gpu without fabric", model: "dgxh100", wantRet: nvml.ERROR_NOT_SUPPORTED},
		{name: "default placement", model: "gb200", wantState: nvml.GPU_FABRIC_STATE_COMPLETED,
			wantUUID: DefaultFabricClusterUUID, wantID: DefaultFabricCliqueID},
		{name: "rack placement", model: "gb200:2", set: func(t *testing.T, n *Node) {
			f, err := ParseClique(placed)
			if err != nil {
				t.Fatal(err)
			}
			if err := n.SetFabric(-1, f); err != nil {
				t.Fatal(err)
			}
		}, wantState: nvml.GPU_FABRIC_STATE_COMPLETED, wantUUID: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", wantID: 7},
		{name: "registration in progress", model: "gb200", set: func(t *testing.T, n *Node) {
			if err := n.SetFabric(1, FabricState{State: nvml.GPU_FABRIC_STATE_IN_PROGRESS}); err != nil {
				t.Fatal(err)
			}
		}, wantState: nvml.GPU_FABRIC_STATE_IN_PROGRESS, wantUUID: "00000000-0000-0000-0000-000000000000"},
		{name: "registration failed", model: "gb200", set: func(t *testing.T, n *Node) {
			if err := n.SetFabric(1, failed); err != nil {
				t.Fatal(err)
			}
		}, wantState: nvml.GPU_FABRIC_STATE_COMPLETED, wantStatus: nvml.ERROR_UNKNOWN, wantUUID: "00000000-0000-0000-0000-000000000000"},
		{name: "lost GPU", model: "gb200", set: func(t *testing.T, n *Node) {
			if err := n.SetLost(1, true); err != nil {
				t.Fatal(err)
			}
		}, wantRet: nvml.ERROR_GPU_IS_LOST},
		{name: "injected error", model: "gb200", set: func(t *testing.T, n *Node) {
			if err := n.SetCallError(1, "GetGpuFabricInfo", nvml.ERROR_UNKNOWN); err != nil {
				t.Fatal(err)
			}
		}, wantRet: nvml.ERROR_UNKNOWN},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := Open(tc.model, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if tc.set != nil {
				tc.set(t, n)
			}
			// A second process on the same state sees the placement.
			other, err := Open(tc.model, n.store.dir)
			if err != nil {
				t.Fatal(err)
			}
			info, ret := other.Devices[1].GetGpuFabricInfo()
			if ret != tc.wantRet {
				t.Fatalf("GetGpuFabricInfo: %s, want %s", nvml.ErrorString(ret), nvml.ErrorString(tc.wantRet))
			}
			if ret != nvml.SUCCESS {
				return
			}
			u, _ := uuid.FromBytes(info.ClusterUuid[:])
			if info.State != tc.wantState || u.String() != tc.wantUUID || info.CliqueId != tc.wantID || nvml.Return(info.Status) != tc.wantStatus {
				t.Errorf("fabric info state=%d uuid=%s clique=%d status=%d, want state=%d uuid=%s clique=%d status=%d",
					info.State, u, info.CliqueId, info.Status, tc.wantState, tc.wantUUID, tc.wantID, tc.wantStatus)
			}
		})
	}
}

func TestSetFabricRefused(t *testing.T) {
	h, err := Open("dgxh100", "")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ParseClique(DefaultFabricClusterUUID + ".2")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.SetFabric(-1, f); err == nil {
		t.Error("placed a node without fabric in a clique")
	}
	g, err := Open("gb200", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetFabric(-1, FabricState{State: nvml.GPU_FABRIC_STATE_NOT_SUPPORTED}); err == nil {
		t.Error("accepted state not-supported on a fabric attached GPU")
	}
	if err := g.SetFabric(4, f); err == nil {
		t.Error("placed GPU 4 of a node of 4 GPUs")
	}
	for _, bad := range []string{"", "1", "not-a-uuid.1", DefaultFabricClusterUUID, DefaultFabricClusterUUID + ".-1", DefaultFabricClusterUUID + ".4294967296"} {
		if _, err := ParseClique(bad); err == nil {
			t.Errorf("ParseClique(%q) accepted", bad)
		}
	}
}
