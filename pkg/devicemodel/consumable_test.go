package devicemodel

import (
	"math/rand"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

func TestParseConsumableShares(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    ConsumableShares
		wantErr bool
	}{
		{in: "", want: ConsumableShares{}},
		{in: "disabled", want: ConsumableShares{}},
		{in: "memory", want: ConsumableShares{Mode: SharesMemory}},
		{in: "unlimited", want: ConsumableShares{Mode: SharesUnlimited}},
		{in: "4", want: ConsumableShares{Mode: SharesCount, Shares: 4}},
		{in: " 8 ", want: ConsumableShares{Mode: SharesCount, Shares: 8}},
		{in: "0", wantErr: true},
		{in: "-2", wantErr: true},
		{in: "4.5", wantErr: true},
		{in: "Memory", wantErr: true},
		{in: "all", wantErr: true},
	} {
		got, err := ParseConsumableShares(tc.in)
		switch {
		case tc.wantErr && err == nil:
			t.Errorf("%q: %+v, want an error", tc.in, got)
		case tc.wantErr:
			if !strings.Contains(err.Error(), strings.TrimSpace(tc.in)) {
				t.Errorf("%q: error %q does not name the value", tc.in, err)
			}
		case err != nil || got != tc.want:
			t.Errorf("%q: %+v (%v), want %+v", tc.in, got, err, tc.want)
		case got.String() != map[string]string{"": "disabled", " 8 ": "8"}[tc.in] && got.String() != tc.in:
			t.Errorf("%q: String() is %q", tc.in, got.String())
		}
	}
}

// policy is a capacity's request policy as "default min..max/step".
func policy(c resourceapi.DeviceCapacity) string {
	p := c.RequestPolicy
	if p == nil || p.ValidRange == nil {
		return "none"
	}
	r := p.ValidRange
	return p.Default.String() + " " + r.Min.String() + ".." + r.Max.String() + "/" + r.Step.String()
}

// TestConsumableSharesDevices builds a DGX H100 in each mode, as the
// plugin's flag and as the node's label: the whole GPU is the device that
// allows multiple allocations, with NVIDIA's request policies, its
// counters and type unchanged; the shared and MIG devices stay; the API
// server's validation accepts every slice.
func TestConsumableSharesDevices(t *testing.T) {
	inv := inventory(t, "dgxh100")
	g := inv.GPUs[0]
	all := resource.NewQuantity(int64(g.MemoryBytes)/ShareMemoryStep*ShareMemoryStep, resource.BinarySI).String()
	for _, tc := range []struct {
		name   string
		flag   ConsumableShares
		label  string
		multi  bool
		memory string // policy of memory
		shares string // policy of shares, "" for none
	}{
		{name: "disabled", memory: "none"},
		{name: "memory", flag: ConsumableShares{Mode: SharesMemory}, multi: true, memory: all + " 1Mi.." + all + "/1Mi"},
		{name: "unlimited", flag: ConsumableShares{Mode: SharesUnlimited}, multi: true, memory: "0 0.." + all + "/1Mi"},
		{name: "four shares", flag: ConsumableShares{Mode: SharesCount, Shares: 4}, multi: true, memory: "0 0.." + all + "/1Mi", shares: "1 1..4/1"},
		{name: "label replaces the flag", flag: ConsumableShares{Mode: SharesMemory}, label: "3", multi: true, memory: "0 0.." + all + "/1Mi", shares: "1 1..3/1"},
		{name: "label disables", flag: ConsumableShares{Mode: SharesUnlimited}, label: "disabled", memory: "none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := Input{Inventory: inv, SharedGPUs: true, ConsumableShares: tc.flag}
			if tc.label != "" {
				o, err := ParseOffer(map[string]string{names.ConsumableSharesLabel: tc.label})
				if err != nil {
					t.Fatal(err)
				}
				in.Offer = &o
			}
			m := build(t, in)
			validateSlices(t, m.ResourceSlices(node))
			devs := map[string]*resourceapi.Device{}
			for _, s := range m.Slices {
				for i := range s.Devices {
					devs[s.Devices[i].Name] = &s.Devices[i]
				}
			}
			if len(devs) != 216 {
				t.Errorf("%d devices, want 216 (every kind stays)", len(devs))
			}
			d := devs["gpu-0"]
			if got := d.AllowMultipleAllocations != nil && *d.AllowMultipleAllocations; got != tc.multi {
				t.Errorf("gpu-0 allowMultipleAllocations %v, want %v", got, tc.multi)
			}
			if got := *d.Attributes[names.AttrType].StringValue; got != names.TypeGPU {
				t.Errorf("gpu-0 type %s", got)
			}
			if got := policy(d.Capacity[names.CapacityMemory]); got != tc.memory {
				t.Errorf("memory policy %q, want %q", got, tc.memory)
			}
			shares, ok := d.Capacity[names.CapacityShares]
			switch {
			case tc.shares == "" && ok:
				t.Errorf("capacity shares published: %s", policy(shares))
			case tc.shares != "" && policy(shares) != tc.shares:
				t.Errorf("shares policy %q, want %q", policy(shares), tc.shares)
			}
			// A capacity without a policy would be consumed whole by the
			// first claim: a shareable device has none.
			_, mps := d.Capacity[names.CapacityMultiprocessors]
			if mps == tc.multi {
				t.Errorf("multiprocessors published: %v, want %v", mps, !tc.multi)
			}
			if len(d.ConsumesCounters) != 1 || len(d.ConsumesCounters[0].Counters) != len(devs["gpu-0-shared"].ConsumesCounters[0].Counters) {
				t.Errorf("gpu-0 consumes %v, want the counters of the whole GPU", d.ConsumesCounters)
			}
		})
	}
}

// TestConsumableSharesOnlyOnGPUsOfferedWhole: an A100 in MIG mode offers
// no whole GPU, so no consumable device either; one out of MIG mode does;
// without whole GPUs on offer there is none.
func TestConsumableSharesOnlyOnGPUsOfferedWhole(t *testing.T) {
	in, _ := busyInventory(t, "dgxa100")
	in.ConsumableShares = ConsumableShares{Mode: SharesUnlimited}
	m := build(t, in)
	validateSlices(t, m.ResourceSlices(node))
	if _, ok := m.Devices["gpu-0"]; ok {
		t.Error("gpu-0, in MIG mode, published whole")
	}
	for _, s := range m.Slices {
		for _, d := range s.Devices {
			multi := d.AllowMultipleAllocations != nil && *d.AllowMultipleAllocations
			if d.Name == "gpu-1" && !multi {
				t.Error("gpu-1, out of MIG mode, is not shareable")
			}
			if multi && m.Devices[d.Name].GPU.Minor == 0 {
				t.Errorf("%s on the MIG-mode GPU allows multiple allocations", d.Name)
			}
		}
	}
	in.Offer = &Offer{MIG: true, Shared: true}
	for _, s := range build(t, in).Slices {
		for _, d := range s.Devices {
			if d.AllowMultipleAllocations != nil && *d.AllowMultipleAllocations && *d.Attributes[names.AttrType].StringValue == names.TypeGPU {
				t.Errorf("%s published without whole GPUs on offer", d.Name)
			}
		}
	}
}

// consumableRequest is a gpu.nvidia.com request with capacity requests
// as NVIDIA's specs write them ("" leaves one to its default).
func consumableRequest(memory, shares string, exprs ...string) resourceapi.DeviceRequest {
	r := exactly("gpu", "gpu.nvidia.com", 1, exprs...)
	if memory != "" || shares != "" {
		r.Exactly.Capacity = &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{}}
		if memory != "" {
			r.Exactly.Capacity.Requests[names.CapacityMemory] = resource.MustParse(memory)
		}
		if shares != "" {
			r.Exactly.Capacity.Requests[names.CapacityShares] = resource.MustParse(shares)
		}
	}
	return r
}

// TestConsumableSharesPacking runs NVIDIA's consumable shares claims on
// the scheduler's allocator in each mode: which devices a stream of the
// same claim gets.
func TestConsumableSharesPacking(t *testing.T) {
	for _, tc := range []struct {
		name           string
		mode           ConsumableShares
		memory, shares string
		want           []string // devices of successive claims, "<none>" refused
	}{
		// NVIDIA's gpu-consumable-shares-integer.yaml: four shares a GPU.
		{"shares: 1 in 4 shares", ConsumableShares{Mode: SharesCount, Shares: 4}, "", "1",
			[]string{"gpu-0", "gpu-0", "gpu-0", "gpu-0", "gpu-1"}},
		{"shares: 2 in 4 shares", ConsumableShares{Mode: SharesCount, Shares: 4}, "", "2",
			[]string{"gpu-0", "gpu-0", "gpu-1"}},
		{"shares: 1 when disabled", ConsumableShares{}, "", "1", []string{"<none>"}},
		{"shares: 1 in memory mode", ConsumableShares{Mode: SharesMemory}, "", "1", []string{"<none>"}},
		{"shares: 5 in 4 shares", ConsumableShares{Mode: SharesCount, Shares: 4}, "", "5", []string{"<none>"}},
		// NVIDIA's gpu-consumable-shares-memory.yaml.
		{"memory: 2Gi in 4 shares", ConsumableShares{Mode: SharesCount, Shares: 4}, "2Gi", "",
			[]string{"gpu-0", "gpu-0", "gpu-0", "gpu-0", "gpu-1"}},
		{"memory: 2Gi in memory mode", ConsumableShares{Mode: SharesMemory}, "2Gi", "", []string{"gpu-0", "gpu-0", "gpu-0"}},
		{"memory: 30Gi in memory mode", ConsumableShares{Mode: SharesMemory}, "30Gi", "", []string{"gpu-0", "gpu-0", "gpu-1"}},
		{"memory: 2Gi when disabled", ConsumableShares{}, "2Gi", "", []string{"gpu-0", "gpu-1", "gpu-2"}},
		// A claim that names nothing.
		{"plain claim in memory mode", ConsumableShares{Mode: SharesMemory}, "", "", []string{"gpu-0", "gpu-1"}},
		{"plain claim unlimited", ConsumableShares{Mode: SharesUnlimited}, "", "", []string{"gpu-0", "gpu-0", "gpu-0", "gpu-0", "gpu-0", "gpu-0"}},
		{"more memory than a GPU has", ConsumableShares{Mode: SharesUnlimited}, "81Gi", "", []string{"<none>"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, map[string]*Model{node: build(t, Input{Inventory: inventory(t, "dgxh100"), SharedGPUs: true, ConsumableShares: tc.mode})})
			for i, want := range tc.want {
				res := c.allocate(node, claim(consumableRequest(tc.memory, tc.shares)))
				if got := allocatedNames(res); got != want {
					t.Fatalf("claim %d: got %s, want %s", i, got, want)
				}
				if res != nil && (res.Devices.Results[0].ShareID != nil) != tc.mode.Enabled() {
					t.Errorf("claim %d: share ID %v in mode %s", i, res.Devices.Results[0].ShareID, tc.mode)
				}
			}
		})
	}
}

// TestConsumableSharesNeverOverlapOtherUses proves on the scheduler's
// allocator that a GPU with a consumable share can be allocated neither
// as a MIG device nor as a shared.gpu.nvidia.com share, that a GPU with
// either cannot be given a consumable share, and that the last share
// freed lets them in again.
func TestConsumableSharesNeverOverlapOtherUses(t *testing.T) {
	onMinor0 := attr("minor") + " == 0"
	consumable := func() *resourceapi.ResourceClaim { return claim(consumableRequest("", "1", onMinor0)) }
	mig := func() *resourceapi.ResourceClaim {
		return claim(exactly("mig", "mig.nvidia.com", 1, attr("parentMinor")+" == 0", attr("profile")+` == "1g.10gb"`))
	}
	shared := func() *resourceapi.ResourceClaim { return claim(share("10Gi", "", onMinor0)) }

	c := newCluster(t, map[string]*Model{node: build(t, Input{Inventory: inventory(t, "dgxh100"), SharedGPUs: true,
		ConsumableShares: ConsumableShares{Mode: SharesCount, Shares: 4}})})
	s1, s2 := c.allocate(node, consumable()), c.allocate(node, consumable())
	if allocatedNames(s1) != "gpu-0" || allocatedNames(s2) != "gpu-0" {
		t.Fatalf("two consumable shares of GPU 0: got %s and %s", allocatedNames(s1), allocatedNames(s2))
	}
	for what, other := range map[string]func() *resourceapi.ResourceClaim{"MIG device": mig, "shared.gpu.nvidia.com share": shared} {
		if got := c.allocate(node, other()); got != nil {
			t.Fatalf("%s %s allocated beside consumable shares of its GPU", what, allocatedNames(got))
		}
	}
	c.free(s1)
	c.free(s2)
	m := c.allocate(node, mig())
	if m == nil {
		t.Fatal("no MIG device on a free GPU 0")
	}
	if got := c.allocate(node, consumable()); got != nil {
		t.Fatalf("consumable share %s allocated on a GPU with MIG device %s", allocatedNames(got), allocatedNames(m))
	}
	c.free(m)
	s := c.allocate(node, shared())
	if allocatedNames(s) != "gpu-0-shared" {
		t.Fatalf("GPU 0 free again: got %s, want a shared.gpu.nvidia.com share", allocatedNames(s))
	}
	if got := c.allocate(node, consumable()); got != nil {
		t.Fatalf("consumable share %s allocated on a GPU shared through shared.gpu.nvidia.com", allocatedNames(got))
	}
	c.free(s)
	if got := c.allocate(node, consumable()); allocatedNames(got) != "gpu-0" {
		t.Fatalf("GPU 0 free again: got %s, want a consumable share", allocatedNames(got))
	}
}

// TestConsumableSharesChurnNeverOvercommits runs random allocate/free
// steps of consumable shares (memory and shares), shared.gpu.nvidia.com
// shares and MIG devices on a node in four-shares mode, and checks every
// state against an independent model: a GPU is used in one way at a time
// (MIG devices, consumable shares, or shared-GPU shares), its shares stay
// within its memory and its count of shares, and a claim is refused only
// when the model has no room for it either.
func TestConsumableSharesChurnNeverOvercommits(t *testing.T) {
	const shareCount = 4
	steps := 1500
	if testing.Short() {
		steps = 300
	}
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewSource(seed))
	t.Logf("seed %d", seed)
	m := build(t, Input{Inventory: inventory(t, "dgxh100"), SharedGPUs: true, ConsumableShares: ConsumableShares{Mode: SharesCount, Shares: shareCount}})
	c := newCluster(t, map[string]*Model{node: m})
	memoryOf := int64(m.Devices["gpu-0"].GPU.MemoryBytes)
	// use is what a GPU holds now, from the allocator's records.
	type use struct {
		mig            bool
		consumable     int   // consumable shares
		consumableMem  int64 // their memory
		sharedMem      int64 // shared.gpu.nvidia.com shares' memory
		sharedOfShared int
	}
	uses := func() map[int]*use {
		out := map[int]*use{}
		get := func(minor int) *use {
			if out[minor] == nil {
				out[minor] = &use{}
			}
			return out[minor]
		}
		for id := range c.allocated {
			d := m.Devices[id.Device.String()]
			if d.Kind != KindMIGPlacement {
				t.Fatalf("%s allocated exclusively in consumable shares mode", d.Name)
			}
			get(d.GPU.Minor).mig = true
		}
		for _, r := range c.shareResults {
			d := m.Devices[r.Device]
			u, mem := get(d.GPU.Minor), r.ConsumedCapacity[names.CapacityMemory]
			switch d.Kind {
			case KindGPU:
				u.consumable++
				u.consumableMem += mem.Value()
			case KindGPUShare:
				u.sharedOfShared++
				u.sharedMem += mem.Value()
			}
		}
		for minor, u := range out {
			kinds := 0
			for _, in := range []bool{u.mig, u.consumable > 0, u.sharedOfShared > 0} {
				if in {
					kinds++
				}
			}
			if kinds > 1 || u.consumable > shareCount || u.consumableMem > memoryOf || u.sharedMem > memoryOf {
				t.Fatalf("over-commit on GPU %d: %+v", minor, *u)
			}
		}
		return out
	}
	var live []*resourceapi.AllocationResult
	granted, refused := 0, 0
	for step := 0; step < steps; step++ {
		if len(live) > 0 && rng.Intn(3) == 0 {
			i := rng.Intn(len(live))
			c.free(live[i])
			live = append(live[:i], live[i+1:]...)
			continue
		}
		before := uses()
		free := func(minor int) *use {
			if u := before[minor]; u != nil {
				return u
			}
			return &use{}
		}
		var req resourceapi.DeviceRequest
		var room func(u *use) bool
		switch rng.Intn(3) {
		case 0:
			mem := int64(rng.Intn(30)) << 30
			req = consumableRequest(resource.NewQuantity(mem, resource.BinarySI).String(), "1")
			room = func(u *use) bool {
				return !u.mig && u.sharedOfShared == 0 && u.consumable < shareCount && u.consumableMem+mem <= memoryOf
			}
		case 1:
			mem := int64(1+rng.Intn(40)) << 30
			req = share(resource.NewQuantity(mem, resource.BinarySI).String(), "")
			room = func(u *use) bool { return !u.mig && u.consumable == 0 && u.sharedMem+mem <= memoryOf }
		default:
			// A 7g takes the whole GPU: a MIG device fits only where
			// nothing is.
			req = exactly("mig", "mig.nvidia.com", 1, attr("profile")+` == "7g.80gb"`)
			room = func(u *use) bool { return !u.mig && u.consumable == 0 && u.sharedOfShared == 0 }
		}
		got := c.allocate(node, claim(req))
		if got == nil {
			refused++
			for minor := range 8 {
				if room(free(minor)) {
					t.Fatalf("step %d: %s refused although GPU %d has room (%+v)", step, req.Name, minor, *free(minor))
				}
			}
			continue
		}
		granted++
		live = append(live, got)
		uses() // fails the test on an over-commit
	}
	if granted == 0 || refused == 0 {
		t.Errorf("%d granted, %d refused: the stream never filled the node", granted, refused)
	}
	t.Logf("%d steps: %d granted, %d refused", steps, granted, refused)
}
