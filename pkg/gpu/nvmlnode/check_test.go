package nvmlnode

import (
	"context"
	"reflect"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

// TestReadGPUDetails reads GPUs in the states the hardware check must tell
// apart, and checks that reading changed nothing.
func TestReadGPUDetails(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		// setup changes GPU 0 through the node and the simulator.
		setup       func(t *testing.T, n *Node, s *sim.Node)
		wantErr     bool
		wantLost    bool
		wantMIG     bool // current mode
		wantPending bool
		wantGIs     int
	}{
		{name: "MIG disabled"},
		{
			name: "MIG enabled with an instance",
			setup: func(t *testing.T, n *Node, _ *sim.Node) {
				g := gpu0(t, n)
				if err := n.SetMIGMode(ctx, g.UUID, true); err != nil {
					t.Fatal(err)
				}
				p := profileByName(t, gpu0(t, n), "3g.40gb")
				if _, err := n.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: p.ID, Placement: gpu.Placement{Start: 4, Size: 4}}); err != nil {
					t.Fatal(err)
				}
			},
			wantMIG: true, wantPending: true, wantGIs: 1,
		},
		{
			name: "MIG enable pending a reset",
			setup: func(_ *testing.T, _ *Node, s *sim.Node) {
				s.Devices[0].(*server.Device).GetMigModeFunc = func() (int, int, nvml.Return) {
					return nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS
				}
			},
			wantPending: true,
		},
		{
			name: "lost",
			setup: func(t *testing.T, _ *Node, s *sim.Node) {
				if err := s.SetLost(0, true); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: true, wantLost: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := sim.Open("dgxh100", t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			n, err := NewNode(s)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { n.Close() })
			if tc.setup != nil {
				tc.setup(t, n, s)
			}
			before, err := s.State()
			if err != nil {
				t.Fatal(err)
			}
			d, err := n.ReadGPUDetails(ctx, 0)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error %t", err, tc.wantErr)
			}
			if d.GPU.UUID == "" {
				t.Error("no UUID read")
			}
			if d.GPU.Lost != tc.wantLost {
				t.Errorf("lost %t, want %t", d.GPU.Lost, tc.wantLost)
			}
			if !tc.wantErr {
				if !d.GPU.MIGCapable || d.GPU.MIGEnabled != tc.wantMIG || d.MIGPendingEnabled != tc.wantPending {
					t.Errorf("MIG capable %t, current %t, pending %t; want true, %t, %t", d.GPU.MIGCapable, d.GPU.MIGEnabled, d.MIGPendingEnabled, tc.wantMIG, tc.wantPending)
				}
				if len(d.GPU.MIGProfiles) == 0 {
					t.Error("no MIG profiles read")
				}
			}
			if len(d.GPUInstances) != tc.wantGIs {
				t.Fatalf("%d GPU instances, want %d", len(d.GPUInstances), tc.wantGIs)
			}
			for _, gi := range d.GPUInstances {
				slices, sms := profileSize(t, d.GPU, gi.ProfileID)
				i, ok := ChooseFullComputeProfile(gi.ComputeProfiles, slices, sms)
				if !ok || gi.ComputeProfiles[i].Multiprocessors != sms {
					t.Errorf("GPU instance %d reports compute profiles %+v, none with its %d slices and %d SMs that CreateMIG asks for", gi.ID, gi.ComputeProfiles, slices, sms)
				}
			}
			after, err := s.State()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(before, after) {
				t.Errorf("reading changed the node:\nbefore %+v\nafter  %+v", before, after)
			}
		})
	}
}

func TestSystem(t *testing.T) {
	n := openSim(t, "dgxb200", "")
	info, err := n.System()
	if err != nil {
		t.Fatal(err)
	}
	if want := (SystemInfo{DriverVersion: "560.28.03", CUDADriverVersion: "12.6", GPUCount: 8}); info != want {
		t.Errorf("got %+v, want %+v", info, want)
	}
}

func gpu0(t *testing.T, n *Node) gpu.GPU {
	t.Helper()
	d, err := n.ReadGPUDetails(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return d.GPU
}

func profileSize(t *testing.T, g gpu.GPU, id int) (slices, multiprocessors int) {
	t.Helper()
	for _, p := range g.MIGProfiles {
		if p.ID == id {
			return p.ComputeSlices, p.Multiprocessors
		}
	}
	t.Fatalf("no profile %d", id)
	return 0, 0
}
