package main

import (
	"context"
	"strconv"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim/miguuid"
)

// TestSMIGPUsNameTheMIGDevicesTheSimulatorMakes: the simulated nvidia-smi's
// table names every MIG device the simulated node creates with the profile
// the driver reads, through what the device's UUID carries.
func TestSMIGPUsNameTheMIGDevicesTheSimulatorMakes(t *testing.T) {
	for _, model := range []string{"dgxh100", "dgxa100", "a30"} {
		t.Run(model, func(t *testing.T) {
			dir := t.TempDir()
			admin, err := sim.Open(model, dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := admin.SetMIGMode(1, true); err != nil {
				t.Fatal(err)
			}
			if err := admin.Reset(1); err != nil {
				t.Fatal(err)
			}
			n, err := sim.Open(model, dir)
			if err != nil {
				t.Fatal(err)
			}
			node, err := nvmlnode.NewNode(n)
			if err != nil {
				t.Fatal(err)
			}
			defer node.Close()
			ctx := context.Background()
			inv, err := node.Inventory(ctx)
			if err != nil {
				t.Fatal(err)
			}
			g := inv.GPUs[1]
			made := 0
			for _, p := range g.MIGProfiles {
				if len(p.Placements) == 0 || p.MemorySlices > g.MemorySlices/2 {
					continue
				}
				if _, err := node.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: p.ID, Placement: p.Placements[len(p.Placements)-1]}); err == nil {
					made++
				}
			}
			if inv, err = node.Inventory(ctx); err != nil {
				t.Fatal(err)
			}
			table := smiGPUs(inv)
			if len(table) != len(inv.GPUs) || made == 0 || len(inv.GPUs[1].MIGInstances) != made {
				t.Fatalf("%d GPUs in the table for %d, %d MIG devices made, %d read", len(table), len(inv.GPUs), made, len(inv.GPUs[1].MIGInstances))
			}
			for _, m := range inv.GPUs[1].MIGInstances {
				w, ok := miguuid.Parse(m.UUID)
				if !ok || w.GPU != 1 || table[w.GPU].UUID != m.ParentUUID || table[w.GPU].MIGProfiles[strconv.Itoa(w.GIProfile)] != m.Profile {
					t.Errorf("MIG device %s (%s on %s): carries %+v (%v), the table names %q", m.UUID, m.Profile, m.ParentUUID, w, ok, table[1].MIGProfiles[strconv.Itoa(w.GIProfile)])
				}
			}
		})
	}
}
