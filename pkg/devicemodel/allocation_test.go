package devicemodel

import (
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/dynamic-resource-allocation/structured"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

const node = "node-1"

func h100Cluster(t testing.TB) (*cluster, *Model) {
	m := build(t, Input{Inventory: inventory(t, "dgxh100")})
	return newCluster(t, map[string]*Model{node: m}), m
}

// onGPU0 selects devices on the GPU with minor 0, whole or MIG.
var onGPU0 = `(` + attr("type") + ` == "gpu" ? ` + attr("minor") + ` == 0 : ` + attr("parentMinor") + ` == 0)`

func migAt(profile string, start int) []string {
	return []string{onGPU0, fmt.Sprintf(`%s == %q`, attr("profile"), profile), fmt.Sprintf(`%s == %d`, attr("placementStart"), start)}
}

// migDevicesOf lists the model's placement devices on one GPU.
func migDevicesOf(m *Model, minor int) []*Device {
	var out []*Device
	for _, d := range m.Devices {
		if d.Kind == KindMIGPlacement && d.GPU.Minor == minor {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out
}

func TestWholeGPUExcludesEveryMIGPlacement(t *testing.T) {
	_, m := h100Cluster(t)
	for _, d := range migDevicesOf(m, 0) {
		t.Run(d.Name, func(t *testing.T) {
			c, _ := h100Cluster(t)
			whole := c.allocate(node, claim(exactly("gpu", "gpu.nvidia.com", 1, attr("minor")+" == 0")))
			if allocatedNames(whole) != "gpu-0" {
				t.Fatalf("whole GPU: got %s", allocatedNames(whole))
			}
			if got := c.allocate(node, claim(exactly("mig", "mig.nvidia.com", 1, migAt(d.Profile.Name, d.Placement.Start)...))); got != nil {
				t.Fatalf("%s allocated beside the whole GPU", allocatedNames(got))
			}
			c.free(whole)
			mig := c.allocate(node, claim(exactly("mig", "mig.nvidia.com", 1, migAt(d.Profile.Name, d.Placement.Start)...)))
			if allocatedNames(mig) != d.Name {
				t.Fatalf("MIG alone: got %s, want %s", allocatedNames(mig), d.Name)
			}
			if got := c.allocate(node, claim(exactly("gpu", "gpu.nvidia.com", 1, attr("minor")+" == 0"))); got != nil {
				t.Fatalf("whole GPU allocated beside %s", d.Name)
			}
		})
	}
}

// TestOverlappingPlacementsNeverBothAllocated tries every ordered pair of
// placements on one GPU: the second is allocated exactly when it shares no
// memory slice with the first and they are not both "+me".
func TestOverlappingPlacementsNeverBothAllocated(t *testing.T) {
	_, m := h100Cluster(t)
	devs := migDevicesOf(m, 0)
	pairs := 0
	for _, a := range devs {
		for _, b := range devs {
			if a == b {
				continue
			}
			c, _ := h100Cluster(t)
			if c.allocate(node, claim(exactly("a", "mig.nvidia.com", 1, migAt(a.Profile.Name, a.Placement.Start)...))) == nil {
				t.Fatalf("%s alone did not allocate", a.Name)
			}
			got := c.allocate(node, claim(exactly("b", "mig.nvidia.com", 1, migAt(b.Profile.Name, b.Placement.Start)...)))
			bothMe := strings.HasSuffix(a.Profile.Name, "+me") && strings.HasSuffix(b.Profile.Name, "+me")
			want := !a.Placement.Overlaps(b.Placement) && !bothMe
			if (got != nil) != want {
				t.Errorf("%s then %s: allocated=%t, want %t", a.Name, b.Name, got != nil, want)
			}
			pairs++
		}
	}
	t.Logf("checked %d ordered pairs", pairs)
}

// TestEveryOneGInstanceFitsAndOneMoreDoesNot: seven 1g on a GPU of eight
// memory slices, four on an A30's four.
func TestEveryOneGInstanceFitsAndOneMoreDoesNot(t *testing.T) {
	for _, tc := range []struct {
		model, profile string
		fit            int
	}{{"dgxh100", "1g.10gb", 7}, {"dgxa100", "1g.5gb", 7}, {"a30", "1g.6gb", 4}} {
		model, profile := tc.model, tc.profile
		t.Run(model, func(t *testing.T) {
			// An A100 offers MIG devices only in MIG mode.
			inv := inventory(t, model)
			migOn(inv)
			c := newCluster(t, map[string]*Model{node: build(t, Input{Inventory: inv})})
			one := func() *resourceapi.ResourceClaim {
				return claim(exactly("mig", "mig.nvidia.com", 1, attr("parentMinor")+" == 0", fmt.Sprintf("%s == %q", attr("profile"), profile)))
			}
			seen := map[string]bool{}
			for i := 0; i < tc.fit; i++ {
				got := c.allocate(node, one())
				if got == nil {
					t.Fatalf("1g number %d did not fit", i+1)
				}
				seen[allocatedNames(got)] = true
			}
			if len(seen) != tc.fit {
				t.Fatalf("got %d distinct devices", len(seen))
			}
			if got := c.allocate(node, one()); got != nil {
				t.Fatalf("1g number %d was allocated: %s", tc.fit+1, allocatedNames(got))
			}
		})
	}
}

// TestCELSelectors runs the selectors users write for NVIDIA's driver on a
// node with four A100s and four H100s; allocationMode All returns exactly
// what matches.
func TestCELSelectors(t *testing.T) {
	m := build(t, Input{Inventory: inventory(t, "mixed")})
	cases := []struct {
		name string
		expr string
		want string
	}{
		{"productName", attr("productName") + ` == "NVIDIA H100 80GB HBM3"`, "gpu-4,gpu-5,gpu-6,gpu-7"},
		{"productName prefix", attr("productName") + `.startsWith("NVIDIA A100")`, "gpu-0,gpu-1,gpu-2,gpu-3"},
		{"architecture", attr("architecture") + ` == "Ampere"`, "gpu-0,gpu-1,gpu-2,gpu-3"},
		{"compute capability at least 9.0", attr("cudaComputeCapability") + `.compareTo(semver("9.0.0")) >= 0`, "gpu-4,gpu-5,gpu-6,gpu-7"},
		{"compute capability below 9", attr("cudaComputeCapability") + `.isLessThan(semver("9.0.0"))`, "gpu-0,gpu-1,gpu-2,gpu-3"},
		{"memory at least 80Gi", `device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("80Gi")) >= 0`, "gpu-4,gpu-5,gpu-6,gpu-7"},
		{"memory under 48Gi", `device.capacity["gpu.nvidia.com"].memory.isLessThan(quantity("48Gi"))`, "gpu-0,gpu-1,gpu-2,gpu-3"},
		{"driver version", attr("driverVersion") + `.isGreaterThan(semver("535.0.0"))`, "gpu-0,gpu-1,gpu-2,gpu-3,gpu-4,gpu-5,gpu-6,gpu-7"},
		{"index", attr("index") + ` == 5`, "gpu-5"},
		{"PCI bus ID", `device.attributes["resource.kubernetes.io"].pciBusID == "0000:3a:00.0"`, "gpu-2"},
		{"PCIe bus ID as NVIDIA's driver named it until v25.8", `device.attributes["gpu.nvidia.com"].pcieBusID == "0000:3a:00.0"`, "gpu-2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, map[string]*Model{node: m})
			got := c.allocate(node, claim(resourceapi.DeviceRequest{Name: "all", Exactly: &resourceapi.ExactDeviceRequest{
				DeviceClassName: "gpu.nvidia.com", AllocationMode: resourceapi.DeviceAllocationModeAll, Selectors: selectors([]string{tc.expr}),
			}}))
			var gotNames []string
			if got != nil {
				for _, r := range got.Devices.Results {
					gotNames = append(gotNames, r.Device)
				}
			}
			sort.Strings(gotNames)
			if strings.Join(gotNames, ",") != tc.want {
				t.Errorf("got %v, want %s", gotNames, tc.want)
			}
		})
	}
	t.Run("MIG profile and parent product", func(t *testing.T) {
		c := newCluster(t, map[string]*Model{node: m})
		got := c.allocate(node, claim(exactly("mig", "mig.nvidia.com", 1, attr("profile")+` == "3g.40gb"`, attr("productName")+` == "NVIDIA H100 80GB HBM3"`)))
		if got == nil || !strings.HasPrefix(allocatedNames(got), "gpu-4-mig-3g40gb-") {
			t.Errorf("got %s, want a 3g.40gb on the first H100", allocatedNames(got))
		}
	})
}

func TestTaintBlocksUnlessTolerated(t *testing.T) {
	inv := inventory(t, "dgxh100")
	now := metav1.NewTime(time.Now())
	for _, effect := range []resourceapi.DeviceTaintEffect{resourceapi.DeviceTaintEffectNoSchedule, resourceapi.DeviceTaintEffectNoExecute} {
		t.Run(string(effect), func(t *testing.T) {
			m := build(t, Input{Inventory: inv, GPUTaints: map[string][]resourceapi.DeviceTaint{
				inv.GPUs[0].UUID: {{Key: "gpu.nvidia.com/thermal", Value: "slowdown", Effect: effect, TimeAdded: &now}},
			}})
			c := newCluster(t, map[string]*Model{node: m})
			if got := c.allocate(node, claim(exactly("gpu", "gpu.nvidia.com", 1, attr("minor")+" == 0"))); got != nil {
				t.Fatalf("tainted GPU allocated: %s", allocatedNames(got))
			}
			if got := c.allocate(node, claim(exactly("mig", "mig.nvidia.com", 1, attr("parentMinor")+" == 0"))); got != nil {
				t.Fatalf("MIG device of a tainted GPU allocated: %s", allocatedNames(got))
			}
			if got := c.allocate(node, claim(exactly("gpu", "gpu.nvidia.com", 1))); allocatedNames(got) == "gpu-0" || got == nil {
				t.Fatalf("an untainted GPU should be picked, got %s", allocatedNames(got))
			}
			tolerating := exactly("gpu", "gpu.nvidia.com", 1, attr("minor")+" == 0")
			tolerating.Exactly.Tolerations = []resourceapi.DeviceToleration{{Key: "gpu.nvidia.com/thermal", Operator: resourceapi.DeviceTolerationOpExists, Effect: effect}}
			if got := c.allocate(node, claim(tolerating)); allocatedNames(got) != "gpu-0" {
				t.Fatalf("tolerating claim: got %s, want gpu-0", allocatedNames(got))
			}
		})
	}
}

// TestFirstAvailable resolves "an H100, else an A100, else a MIG slice" in
// order on nodes that have each.
func TestFirstAvailable(t *testing.T) {
	request := resourceapi.DeviceRequest{Name: "gpu", FirstAvailable: []resourceapi.DeviceSubRequest{
		{Name: "h100", DeviceClassName: "gpu.nvidia.com", AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
			Selectors: selectors([]string{attr("productName") + `.startsWith("NVIDIA H100")`})},
		{Name: "a100", DeviceClassName: "gpu.nvidia.com", AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
			Selectors: selectors([]string{attr("productName") + `.startsWith("NVIDIA A100")`})},
		{Name: "mig", DeviceClassName: "mig.nvidia.com", AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
			Selectors: selectors([]string{attr("profile") + `.startsWith("1g.")`})},
	}}
	t.Run("mixed node fills H100s, then A100s, then MIG", func(t *testing.T) {
		c := newCluster(t, map[string]*Model{node: build(t, Input{Inventory: inventory(t, "mixed")})})
		var subs []string
		for i := 0; i < 8; i++ {
			got := c.allocate(node, claim(request))
			if got == nil {
				t.Fatalf("claim %d did not allocate", i)
			}
			subs = append(subs, got.Devices.Results[0].Request)
		}
		if got := strings.Join(subs, " "); got != "gpu/h100 gpu/h100 gpu/h100 gpu/h100 gpu/a100 gpu/a100 gpu/a100 gpu/a100" {
			t.Errorf("sub-requests = %s", got)
		}
		if got := c.allocate(node, claim(request)); got != nil {
			t.Errorf("all GPUs are taken whole, no MIG slice is free, yet got %s", allocatedNames(got))
		}
	})
	t.Run("A100 node without free whole GPUs falls through to MIG", func(t *testing.T) {
		// GPU 7 is in MIG mode, which an A100 offers only as MIG devices.
		inv := inventory(t, "dgxa100")
		inv.GPUs[7].MIGEnabled = true
		c := newCluster(t, map[string]*Model{node: build(t, Input{Inventory: inv})})
		// The seven others taken whole: no whole GPU is left.
		for i := 0; i < 7; i++ {
			if c.allocate(node, claim(exactly("gpu", "gpu.nvidia.com", 1))) == nil {
				t.Fatal("whole GPU did not allocate")
			}
		}
		got := c.allocate(node, claim(request))
		if got == nil || got.Devices.Results[0].Request != "gpu/mig" {
			t.Fatalf("got %v, want the mig sub-request", got)
		}
	})
}

// occupancy is an independent model of a GPU: the memory slices in use and
// the number of "+me" instances, derived from the published attributes
// alone (not from the counters the allocator uses).
type occupancy struct {
	slices uint32
	me     int
	// shared is the memory that shares of the GPU consume.
	shared int64
}

// TestRandomChurnNeverOvercommits runs thousands of random allocate/free
// steps of whole-GPU, MIG and shared-GPU claims and checks every allocation against the
// independent model: nothing overlaps, and a claim is refused only when the
// model has no room for it either.
func TestRandomChurnNeverOvercommits(t *testing.T) {
	steps := 2000
	if testing.Short() {
		steps = 500
	}
	for _, model := range []string{"dgxh100", "mixed"} {
		t.Run(model, func(t *testing.T) {
			t.Parallel()
			seed := time.Now().UnixNano()
			rng := rand.New(rand.NewSource(seed))
			t.Logf("seed %d", seed)
			m := build(t, Input{Inventory: inventory(t, model), SharedGPUs: true})
			c := newCluster(t, map[string]*Model{node: m})
			var profiles []string
			for _, p := range m.Slices[len(m.Slices)-1].Devices {
				if p.Attributes["type"].StringValue != nil && *p.Attributes["type"].StringValue == "mig" {
					profiles = append(profiles, *p.Attributes["profile"].StringValue)
				}
			}
			profiles = uniq(profiles)
			var live []*resourceapi.AllocationResult
			refused, granted := 0, 0
			for step := 0; step < steps; step++ {
				if len(live) > 0 && rng.Intn(3) == 0 {
					i := rng.Intn(len(live))
					c.free(live[i])
					live = append(live[:i], live[i+1:]...)
					continue
				}
				var req resourceapi.DeviceRequest
				wantProfile, wantShare := "", int64(0)
				switch rng.Intn(6) {
				case 0:
					req = exactly("gpu", "gpu.nvidia.com", 1)
				case 1:
					wantShare = int64(1+rng.Intn(40)) << 30
					req = share(fmt.Sprint(wantShare), "")
				default:
					wantProfile = profiles[rng.Intn(len(profiles))]
					req = exactly("mig", "mig.nvidia.com", 1, fmt.Sprintf("%s == %q", attr("profile"), wantProfile))
				}
				before := c.occupancy(node)
				got := c.allocate(node, claim(req))
				if got == nil {
					refused++
					if room := c.roomFor(node, before, wantProfile, wantShare); room != "" {
						t.Fatalf("step %d: %s refused although %s is free", step, req.Name+" "+wantProfile, room)
					}
					continue
				}
				granted++
				live = append(live, got)
				c.occupancy(node) // fails the test on overlap
			}
			t.Logf("%d steps: %d granted, %d refused", steps, granted, refused)
		})
	}
}

func uniq(in []string) []string {
	sort.Strings(in)
	var out []string
	for i, s := range in {
		if i == 0 || s != in[i-1] {
			out = append(out, s)
		}
	}
	return out
}

func intAttr(d *resourceapi.Device, name string) int {
	return int(*d.Attributes[resourceapi.QualifiedName(name)].IntValue)
}

func strAttr(d *resourceapi.Device, name string) string {
	return *d.Attributes[resourceapi.QualifiedName(name)].StringValue
}

// placement is the memory slices a MIG device spans: from its published
// placementStart and the size of its profile on its GPU, what prepare
// creates.
func (c *cluster) placement(node string, d *resourceapi.Device) gpu.Placement {
	c.t.Helper()
	md := c.models[node].Devices[d.Name]
	if md == nil || md.Profile == nil {
		c.t.Fatalf("device %s of node %s is no MIG device of the model", d.Name, node)
	}
	start := intAttr(d, "placementStart")
	for _, pl := range md.Profile.Placements {
		if pl.Start == start {
			return pl
		}
	}
	c.t.Fatalf("device %s: profile %s has no placement at %d", d.Name, md.Profile.Name, start)
	return gpu.Placement{}
}

// occupancy computes every GPU's occupancy from the allocated devices'
// attributes, failing the test if two allocated devices overlap.
func (c *cluster) occupancy(node string) map[int]occupancy {
	c.t.Helper()
	occ := map[int]occupancy{}
	for id := range c.allocated {
		d := c.devices[node][id.Device.String()]
		var minor int
		var mask uint32
		me := 0
		if strAttr(d, "type") == "gpu" {
			minor, mask = intAttr(d, "minor"), 0xff
		} else {
			minor = intAttr(d, "parentMinor")
			mask = c.placement(node, d).Mask()
			if strings.HasSuffix(strAttr(d, "profile"), "+me") {
				me = 1
			}
		}
		o := occ[minor]
		if o.slices&mask != 0 {
			c.t.Fatalf("over-commit: %s overlaps memory slices already in use on GPU %d (%08b)", d.Name, minor, o.slices)
		}
		if o.me+me > 1 {
			c.t.Fatalf("over-commit: a second +me instance %s on GPU %d", d.Name, minor)
		}
		if o.shared > 0 {
			c.t.Fatalf("over-commit: %s allocated on GPU %d, which is shared", d.Name, minor)
		}
		occ[minor] = occupancy{slices: o.slices | mask, me: o.me + me}
	}
	for id := range c.shares {
		d := c.devices[node][id.Device.String()]
		minor := intAttr(d, "minor")
		o := occ[minor]
		if o.slices != 0 {
			c.t.Fatalf("over-commit: %s shared while in exclusive use (%08b)", d.Name, o.slices)
		}
		o.shared = c.consumedMemory(id.GetDeviceID())
		if capacity := d.Capacity[names.CapacityMemory].Value; o.shared > capacity.Value() {
			c.t.Fatalf("over-commit: shares of %s consume %d bytes of %s", d.Name, o.shared, capacity.String())
		}
		occ[minor] = o
	}
	return occ
}

// consumedMemory is the memory all shares of a device consume.
func (c *cluster) consumedMemory(id structured.DeviceID) int64 {
	var sum int64
	for _, r := range c.shareResults {
		if structured.MakeDeviceID(r.Driver, r.Pool, r.Device) == id {
			q := r.ConsumedCapacity[names.CapacityMemory]
			sum += q.Value()
		}
	}
	return sum
}

// roomFor names a published device that the independent model says could
// have been allocated for the request ("" if none).
func (c *cluster) roomFor(node string, occ map[int]occupancy, profile string, share int64) string {
	for name, d := range c.devices[node] {
		if share > 0 {
			if strAttr(d, "type") != "shared" {
				continue
			}
			o, capacity := occ[intAttr(d, "minor")], d.Capacity[names.CapacityMemory].Value
			if o.slices == 0 && o.shared+share <= capacity.Value() {
				return name
			}
			continue
		}
		if profile == "" {
			if strAttr(d, "type") == "gpu" && occ[intAttr(d, "minor")].slices == 0 && occ[intAttr(d, "minor")].shared == 0 {
				return name
			}
			continue
		}
		if strAttr(d, "type") != "mig" || strAttr(d, "profile") != profile {
			continue
		}
		o := occ[intAttr(d, "parentMinor")]
		mask := c.placement(node, d).Mask()
		if o.slices&mask == 0 && o.shared == 0 && (!strings.HasSuffix(profile, "+me") || o.me == 0) {
			return name
		}
	}
	return ""
}
