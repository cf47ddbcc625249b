package nvmlnode

import (
	"context"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

// TestInventoryServesTheGPUsItCanRead: one GPU that cannot be read never
// takes the node's inventory down. A GPU lost before its UUID could be
// read, or answering an unexpected NVML error, is listed as unreadable
// and left out; one lost after its UUID was read is kept as Lost.
func TestInventoryServesTheGPUsItCanRead(t *testing.T) {
	cases := []struct {
		name     string
		fault    func(s *sim.Node) error
		lost     bool // GPU 2 is in the inventory, lost
		uuidKnow bool // GPU 2 is unreadable with its UUID
	}{
		{"lost before its UUID was read", func(s *sim.Node) error {
			if err := s.SetLost(2, true); err != nil {
				return err
			}
			return s.SetCallError(2, "GetUUID", nvml.ERROR_GPU_IS_LOST)
		}, false, false},
		{"unexpected error reading its UUID", func(s *sim.Node) error {
			return s.SetCallError(2, "GetUUID", nvml.ERROR_UNKNOWN)
		}, false, false},
		{"unexpected error after its UUID", func(s *sim.Node) error {
			return s.SetCallError(2, "GetMemoryInfo", nvml.ERROR_UNKNOWN)
		}, false, true},
		{"lost after its UUID was read", func(s *sim.Node) error { return s.SetLost(2, true) }, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			n := openSim(t, "dgxh100", dir)
			healthy, err := n.Inventory(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			injector, err := sim.Open("dgxh100", dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.fault(injector); err != nil {
				t.Fatal(err)
			}
			inv, err := n.Inventory(context.Background())
			if err != nil {
				t.Fatalf("one bad GPU failed the inventory: %v", err)
			}
			want := 7
			if tc.lost {
				want = 8
			}
			if len(inv.GPUs) != want {
				t.Fatalf("inventory has %d GPUs, want %d", len(inv.GPUs), want)
			}
			for _, g := range inv.GPUs {
				if g.Lost != (tc.lost && g.Index == 2) {
					t.Errorf("GPU %d: lost %t", g.Index, g.Lost)
				}
			}
			if tc.lost {
				if len(inv.Unreadable) != 0 {
					t.Errorf("unreadable: %+v, want none", inv.Unreadable)
				}
				return
			}
			if len(inv.Unreadable) != 1 || inv.Unreadable[0].Index != 2 || inv.Unreadable[0].Err == "" {
				t.Fatalf("unreadable: %+v, want GPU 2 with its error", inv.Unreadable)
			}
			wantUUID := ""
			if tc.uuidKnow {
				wantUUID = healthy.GPUs[2].UUID
			}
			if inv.Unreadable[0].UUID != wantUUID {
				t.Errorf("unreadable GPU's UUID %q, want %q", inv.Unreadable[0].UUID, wantUUID)
			}
		})
	}
}

// TestWatchEventsBacksOffWhileAGPUIsLost: while a GPU of the event set is
// lost NVML answers every wait at once with ERROR_GPU_IS_LOST; the watch
// waits between tries instead of spinning, still delivers the other
// GPUs' events and ends with its context.
func TestWatchEventsBacksOffWhileAGPUIsLost(t *testing.T) {
	defer func(d time.Duration) { lostWaitBackoff = d }(lostWaitBackoff)
	lostWaitBackoff = 100 * time.Millisecond
	dir := t.TempDir()
	lib, err := sim.Open("dgxh100", dir)
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(lib)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	inv, err := n.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	events := make(chan gpu.Event, 4)
	done := make(chan error, 1)
	go func() { done <- n.WatchEvents(ctx, func(e gpu.Event) { events <- e }) }()
	for lib.EventWaits() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	injector, err := sim.Open("dgxh100", dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := injector.SetLost(3, true); err != nil {
		t.Fatal(err)
	}
	before := lib.EventWaits()
	time.Sleep(time.Second)
	if waits := lib.EventWaits() - before; waits > 15 {
		t.Errorf("%d waits in a second with a GPU lost, backing off %s: the watch spins", waits, lostWaitBackoff)
	}
	if err := injector.InjectXID(1, 79, -1, -1); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-events:
		if e.GPUUUID != inv.GPUs[1].UUID || e.XID != 79 {
			t.Errorf("event %+v, want XID 79 of GPU 1", e)
		}
	case <-ctx.Done():
		t.Fatal("the other GPUs' events are not delivered while one is lost")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the watch did not end with its context")
	}
}
