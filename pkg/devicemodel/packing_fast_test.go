package devicemodel

import (
	"fmt"
	"math/rand"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// fastDevice is one device of a node in the first-fit model: its GPU's
// position in the inventory and what it stands for.
type fastDevice struct {
	gpu int
	dev *Device
}

// fastOrder is the model's devices in the order the allocator tries them:
// slices in order, devices in slice order.
func fastOrder(inv *gpu.Inventory, m *Model) []fastDevice {
	pos := map[string]int{}
	for i := range inv.GPUs {
		pos[inv.GPUs[i].UUID] = i
	}
	var out []fastDevice
	for _, s := range m.Slices {
		for _, d := range s.Devices {
			info := m.Devices[d.Name]
			out = append(out, fastDevice{gpu: pos[info.GPU.UUID], dev: info})
		}
	}
	return out
}

// fastGPU is one GPU's state in the first-fit model.
type fastGPU struct {
	mask      uint32
	instances map[int]int
	whole     bool
	shared    int64
}

// fits mirrors the model's counters: a MIG placement needs its memory
// slices free and its profile below its instance limit, a whole GPU and
// the first share all of them; shares add up to the shared device's memory.
func (g *fastGPU) fits(d *Device, r packingRequest) bool {
	switch d.Kind {
	case KindGPU:
		return r.kind == "gpu" && !g.whole && g.shared == 0 && g.mask == 0
	case KindGPUShare:
		return r.kind == "share" && !g.whole && g.mask == 0 &&
			g.shared+r.shareBytes <= int64(d.GPU.MemoryBytes)/ShareMemoryStep*ShareMemoryStep
	case KindMIGPlacement:
		return r.kind == d.Profile.Name && !g.whole && g.shared == 0 &&
			g.mask&d.Placement.Mask() == 0 && g.instances[d.Profile.ID] < d.Profile.MaxInstances
	}
	return false
}

// runFast replays the stream on a first-fit model of the allocator over
// order, each node picked at random among those that fit as runAllocator
// does. It is thousands of times faster than the allocator, for searching
// orders; TestFastModelMatchesAllocator keeps it honest.
func runFast(inv *gpu.Inventory, order []fastDevice, nodes int, stream []packingRequest) packingResult {
	f := newFleetLoad(inv, nodes, stream[len(stream)-1].arrival+1)
	state := make([][]fastGPU, nodes)
	for n := range state {
		state[n] = make([]fastGPU, len(inv.GPUs))
		for i := range state[n] {
			state[n][i].instances = map[int]int{}
		}
	}
	rng := rand.New(rand.NewSource(2))
	return replay(f, stream, func(r packingRequest) (placed, bool) {
		var fit []placed
		for n := range state {
			for _, d := range order {
				if state[n][d.gpu].fits(d.dev, r) {
					fit = append(fit, placed{req: r, node: n, gpu: d.gpu, profile: d.dev.Profile, at: d.dev.Placement})
					break
				}
			}
		}
		if len(fit) == 0 {
			return placed{}, false
		}
		p := fit[rng.Intn(len(fit))]
		state[p.node][p.gpu].apply(p, 1)
		return p, true
	}, func(p placed) { state[p.node][p.gpu].apply(p, -1) })
}

// apply adds (sign 1) or removes (-1) a granted request.
func (g *fastGPU) apply(p placed, sign int) {
	switch p.req.kind {
	case "gpu":
		g.whole = sign > 0
	case "share":
		g.shared += int64(sign) * p.req.shareBytes
	default:
		if sign > 0 {
			g.mask |= p.at.Mask()
		} else {
			g.mask &^= p.at.Mask()
		}
		g.instances[p.profile.ID] += sign
	}
}

// TestFastModelMatchesAllocator replays short streams on the scheduler's
// allocator and on the first-fit model, for every order BenchmarkPacking
// compares: the model must grant and refuse the same requests, so that what
// BenchmarkPackingSearch finds holds on the allocator.
func TestFastModelMatchesAllocator(t *testing.T) {
	inv := inventory(t, "dgxh100")
	for _, sc := range []struct{ nodes, ticks int }{{1, 400}, {2, 150}} {
		stream := packingStream(5, sc.nodes, sc.ticks)
		for _, o := range packingOrders {
			t.Run(fmt.Sprintf("%d-nodes/%s", sc.nodes, o.name), func(t *testing.T) {
				m := build(t, Input{Inventory: inv, SharedGPUs: true, PlacementOrder: o.order, Layout: o.layout})
				fast := runFast(inv, fastOrder(inv, m), sc.nodes, stream)
				real := runAllocator(t, inv, o.order, o.layout, sc.nodes, stream)
				real.allocTime = 0
				if fast != real {
					t.Errorf("first-fit model %+v, allocator %+v", fast, real)
				}
				if fast.refused == 0 {
					t.Errorf("the stream saturates no GPU: nothing to compare")
				}
			})
		}
	}
}

// BenchmarkPackingSearch runs pick-first and the hybrid family of node-wide
// orders (block-1 is the driver's order; BenchmarkPacking's other orders
// are members) on the first-fit model over longer streams of
// three seeds: the search behind docs/device-model.md's choice. Metrics:
// refusals with room relative to pick-first's (room-vs-pick-first) and
// memory in use relative to the oracle's (util-vs-oracle).
//
//	go test -run XXX -bench BenchmarkPackingSearch -benchtime 1x ./pkg/devicemodel/
func BenchmarkPackingSearch(b *testing.B) {
	inv := inventory(b, "dgxh100")
	type candidate struct {
		name   string
		order  PlacementOrder
		layout Layout
	}
	// Block 1 with mid-spread is block 1, the driver's GPU-major order.
	cands := []candidate{{"pick-first", lowestStartFirst, nil}}
	for _, block := range []int{1, 2, 4, 6, 8} {
		for bits := range 8 {
			h := hybrid{block: block, midSpread: bits&1 != 0, midLast: bits&2 != 0, bigLast: bits&4 != 0}
			if block == 1 && h.midSpread {
				continue
			}
			cands = append(cands, candidate{h.String(), nil, nodeWide(h.rank)})
		}
	}
	orders := make([][]fastDevice, len(cands))
	for i, c := range cands {
		orders[i] = fastOrder(inv, build(b, Input{Inventory: inv, SharedGPUs: true, PlacementOrder: c.order, Layout: c.layout}))
	}
	for _, sc := range []struct {
		name         string
		nodes, ticks int
	}{{"one-node", 1, 20000}, {"fleet-4-nodes", 4, 5000}} {
		for _, seed := range []int64{1, 3, 4} {
			stream := packingStream(seed, sc.nodes, sc.ticks)
			oracle := runOracle(inv, sc.nodes, stream)
			pickFirst := runFast(inv, orders[0], sc.nodes, stream)
			for i, c := range cands {
				b.Run(fmt.Sprintf("%s/seed-%d/%s", sc.name, seed, c.name), func(b *testing.B) {
					var res packingResult
					for b.Loop() {
						res = runFast(inv, orders[i], sc.nodes, stream)
					}
					b.ReportMetric(float64(res.refusedWithRoom)/float64(pickFirst.refusedWithRoom), "room-vs-pick-first")
					b.ReportMetric(res.usedBytes/oracle.usedBytes, "util-vs-oracle")
					b.ReportMetric(0, "ns/op")
				})
			}
		}
	}
}
