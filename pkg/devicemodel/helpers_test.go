package devicemodel

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
)

// features are the allocator features a v1.37 scheduler runs with by
// default; they select the same allocator implementation.
var features = structured.Features{
	AdminAccess:            true,
	PrioritizedList:        true,
	PartitionableDevices:   true,
	DeviceTaints:           true,
	DeviceBindingAndStatus: true,
	ConsumableCapacity:     true,
}

func inventory(t testing.TB, model string) *gpu.Inventory {
	t.Helper()
	n, err := nvmlnode.Open(nvmlnode.Options{Simulate: model})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	inv, err := n.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

func build(t testing.TB, in Input) *Model {
	t.Helper()
	m, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// deviceClasses loads the DeviceClasses the project ships.
func deviceClasses(t testing.TB) classLister {
	t.Helper()
	f, err := os.Open("../../deployments/deviceclasses/deviceclasses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	classes := classLister{}
	for {
		var c resourceapi.DeviceClass
		if err := dec.Decode(&c); err != nil {
			if err.Error() == "EOF" {
				break
			}
			t.Fatal(err)
		}
		if c.Name != "" {
			classes[c.Name] = &c
		}
	}
	if len(classes) < 2 {
		t.Fatalf("loaded %d DeviceClasses", len(classes))
	}
	return classes
}

type classLister map[string]*resourceapi.DeviceClass

func (l classLister) List() ([]*resourceapi.DeviceClass, error) {
	var out []*resourceapi.DeviceClass
	for _, c := range l {
		out = append(out, c)
	}
	return out, nil
}

func (l classLister) Get(name string) (*resourceapi.DeviceClass, error) {
	c, ok := l[name]
	if !ok {
		return nil, fmt.Errorf("DeviceClass %q not found", name)
	}
	return c, nil
}

// cluster is the scheduler's view: slices, classes and what is allocated.
type cluster struct {
	t         testing.TB
	slices    []*resourceapi.ResourceSlice
	classes   classLister
	allocated sets.Set[structured.DeviceID]
	// shares and consumed are the allocated shares of devices that allow
	// multiple allocations, as the scheduler tracks them.
	shares   sets.Set[structured.SharedDeviceID]
	consumed structured.ConsumedCapacityCollection
	// shareResults are the allocation results of the shares, by share ID.
	shareResults map[string]resourceapi.DeviceRequestAllocationResult
	celCache     *cel.Cache
	devices      map[string]map[string]*resourceapi.Device // node -> name -> device
	models       map[string]*Model                         // node -> the driver's model
}

func newCluster(t testing.TB, models map[string]*Model) *cluster {
	c := &cluster{
		t: t, classes: deviceClasses(t), allocated: sets.New[structured.DeviceID](),
		shares: sets.New[structured.SharedDeviceID](), consumed: structured.NewConsumedCapacityCollection(),
		shareResults: map[string]resourceapi.DeviceRequestAllocationResult{},
		celCache:     cel.NewCache(100, cel.Features{}), devices: map[string]map[string]*resourceapi.Device{},
		models: models,
	}
	for node, m := range models {
		c.devices[node] = map[string]*resourceapi.Device{}
		for i, s := range m.ResourceSlices(node) {
			s := s
			s.Name = fmt.Sprintf("%s%d", s.GenerateName, i)
			c.slices = append(c.slices, &s)
			for j := range s.Spec.Devices {
				c.devices[node][s.Spec.Devices[j].Name] = &s.Spec.Devices[j]
			}
		}
	}
	return c
}

// allocate runs the scheduler's allocator for one claim on one node and,
// on success, records the devices as allocated.
func (c *cluster) allocate(node string, claim *resourceapi.ResourceClaim) *resourceapi.AllocationResult {
	c.t.Helper()
	alloc, err := structured.NewAllocator(context.Background(), features,
		structured.AllocatedState{AllocatedDevices: c.allocated, AllocatedSharedDeviceIDs: c.shares, AggregatedCapacity: c.consumed},
		c.classes, c.slices, c.celCache)
	if err != nil {
		c.t.Fatalf("create allocator: %v", err)
	}
	results, err := alloc.Allocate(context.Background(), &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, []*resourceapi.ResourceClaim{claim})
	if err != nil {
		c.t.Fatalf("allocate %s: %v", claim.Name, err)
	}
	if results == nil {
		return nil
	}
	c.record(&results[0])
	return &results[0]
}

// record marks an allocation's devices and shares as allocated.
func (c *cluster) record(res *resourceapi.AllocationResult) {
	for _, r := range res.Devices.Results {
		id := structured.MakeDeviceID(r.Driver, r.Pool, r.Device)
		if r.ShareID == nil {
			c.allocated.Insert(id)
			continue
		}
		c.shares.Insert(structured.MakeSharedDeviceID(id, r.ShareID))
		c.consumed.Insert(structured.NewDeviceConsumedCapacity(id, r.ConsumedCapacity))
		c.shareResults[string(*r.ShareID)] = r
	}
}

func (c *cluster) free(res *resourceapi.AllocationResult) {
	for _, r := range res.Devices.Results {
		id := structured.MakeDeviceID(r.Driver, r.Pool, r.Device)
		if r.ShareID == nil {
			c.allocated.Delete(id)
			continue
		}
		c.shares.Delete(structured.MakeSharedDeviceID(id, r.ShareID))
		c.consumed.Remove(structured.NewDeviceConsumedCapacity(id, r.ConsumedCapacity))
		delete(c.shareResults, string(*r.ShareID))
	}
}

var claimSeq atomic.Int64

// claim builds a claim with one request per spec.
func claim(requests ...resourceapi.DeviceRequest) *resourceapi.ResourceClaim {
	n := claimSeq.Add(1)
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("claim-%d", n), Namespace: "default", UID: types.UID(fmt.Sprintf("uid-%d", n))},
		Spec:       resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: requests}},
	}
}

// exactly is a request for count devices of a class matching every CEL
// expression.
func exactly(name, class string, count int64, exprs ...string) resourceapi.DeviceRequest {
	return resourceapi.DeviceRequest{Name: name, Exactly: &resourceapi.ExactDeviceRequest{
		DeviceClassName: class, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: count, Selectors: selectors(exprs),
	}}
}

func selectors(exprs []string) []resourceapi.DeviceSelector {
	var out []resourceapi.DeviceSelector
	for _, e := range exprs {
		out = append(out, resourceapi.DeviceSelector{CEL: &resourceapi.CELDeviceSelector{Expression: e}})
	}
	return out
}

// attr is a CEL reference to one of our attributes.
func attr(name string) string { return fmt.Sprintf(`device.attributes["gpu.nvidia.com"].%s`, name) }

func allocatedNames(res *resourceapi.AllocationResult) string {
	if res == nil {
		return "<none>"
	}
	var out []string
	for _, r := range res.Devices.Results {
		out = append(out, r.Device)
	}
	return strings.Join(out, ",")
}
