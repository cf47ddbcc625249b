package health

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

// fakeSource serves readings set by the test.
type fakeSource struct {
	mu       sync.Mutex
	readings []gpu.Reading
}

func (f *fakeSource) WatchEvents(ctx context.Context, _ func(gpu.Event)) error {
	<-ctx.Done()
	return nil
}

func (f *fakeSource) Probe(context.Context) ([]gpu.Reading, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]gpu.Reading(nil), f.readings...), nil
}

// fakeClock is a settable clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

const (
	gpuA = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
	gpuB = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
	migA = "MIG-aaaaaaaa-1111-0000-0000-000000000000"
)

type fixture struct {
	m       *Monitor
	src     *fakeSource
	clock   *fakeClock
	changes int
}

func newFixture(t *testing.T, store *Store, bootID string) *fixture {
	t.Helper()
	f := &fixture{src: &fakeSource{}, clock: &fakeClock{t: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)}}
	f.src.readings = []gpu.Reading{healthy(0, gpuA), healthy(1, gpuB)}
	m, err := NewMonitor(context.Background(), Options{
		Policy: DefaultPolicy(), Source: f.src, Store: store, BootID: bootID,
		Now: f.clock.now, OnChange: func() { f.changes++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	m.SetInventory(&gpu.Inventory{GPUs: []gpu.GPU{
		{UUID: gpuA, Index: 0, MIGInstances: []gpu.MIGInstance{{UUID: migA, ParentUUID: gpuA, GIID: 1, CIID: 0}}},
		{UUID: gpuB, Index: 1},
	}})
	f.m = m
	return f
}

func healthy(index int, uuid string) gpu.Reading {
	return gpu.Reading{Index: index, UUID: uuid, TemperatureC: 40, SlowdownC: 87, ShutdownC: 92}
}

// set changes GPU A's reading and probes.
func (f *fixture) probeA(change func(r *gpu.Reading)) {
	f.src.mu.Lock()
	r := healthy(0, gpuA)
	change(&r)
	f.src.readings[0] = r
	f.src.mu.Unlock()
	f.m.probe(context.Background())
}

// taintsOf renders the taints of a GPU (and, with mig, of that MIG
// device) as "key=value:effect" strings.
func (f *fixture) taintsOf(gpuUUID, mig string) string {
	g, m := f.m.Taints()
	ts := g[gpuUUID]
	if mig != "" {
		ts = m[mig]
	}
	var out []string
	for _, t := range ts {
		out = append(out, strings.TrimPrefix(t.Key, names.HealthTaintKeyPrefix)+"="+t.Value+":"+string(t.Effect))
	}
	return strings.Join(out, ",")
}

func TestClassifyXID(t *testing.T) {
	p := DefaultPolicy()
	for xid, want := range map[uint64]Class{
		13: ClassIgnore, 31: ClassIgnore, 43: ClassIgnore, 45: ClassIgnore, 68: ClassIgnore, 109: ClassIgnore,
		48: ClassFatal, 79: ClassFatal, 95: ClassFatal, 119: ClassFatal,
		63: ClassDegraded, 94: ClassDegraded,
		9999: ClassDegraded, // unknown
	} {
		if got := p.ClassifyXID(xid); got != want {
			t.Errorf("XID %d: %s, want %s", xid, got, want)
		}
	}
}

func TestLoadPolicy(t *testing.T) {
	for name, tc := range map[string]struct {
		file    string
		wantErr string
		check   func(t *testing.T, p Policy)
	}{
		"empty file keeps the defaults": {file: "", check: func(t *testing.T, p Policy) {
			if p.ClassifyXID(79) != ClassFatal || p.ClearAfter.Duration != 30*time.Second {
				t.Errorf("defaults changed: %+v", p)
			}
		}},
		"an XID moves to another class": {file: "xids: {Info: [79, 1234]}\nunknownXID: Ignore\n", check: func(t *testing.T, p Policy) {
			if p.ClassifyXID(79) != ClassInfo || p.ClassifyXID(1234) != ClassInfo || p.ClassifyXID(5555) != ClassIgnore || p.ClassifyXID(48) != ClassFatal {
				t.Errorf("79→%s 1234→%s 5555→%s 48→%s", p.ClassifyXID(79), p.ClassifyXID(1234), p.ClassifyXID(5555), p.ClassifyXID(48))
			}
		}},
		"effects and timing": {file: "effects: {Degraded: NoExecute}\nclearAfter: 2m\nthermalMarginC: 3\n", check: func(t *testing.T, p Policy) {
			if e, _ := p.Effect(ClassDegraded); e != resourceapi.DeviceTaintEffectNoExecute || p.ClearAfter.Duration != 2*time.Minute || p.ThermalMarginC != 3 {
				t.Errorf("got %+v", p)
			}
		}},
		"unknown field":   {file: "clearAfterSeconds: 60\n", wantErr: "clearAfterSeconds"},
		"unknown class":   {file: "gpuLost: Deadly\n", wantErr: "gpuLost"},
		"unknown effect":  {file: "effects: {Fatal: Evict}\n", wantErr: "effects[Fatal]"},
		"probe too often": {file: "probeInterval: 1ms\n", wantErr: "probeInterval"},
		"not YAML":        {file: "xids: [", wantErr: "health policy"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "policy.yaml")
			if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			p, err := LoadPolicy(path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, p)
		})
	}
}

func TestEventsBecomeTaints(t *testing.T) {
	for name, tc := range map[string]struct {
		events         []gpu.Event
		wantA, wantMIG string
		wantB          string
		wantStatusA    Status
		wantStatusMIG  Status
		wantNoChange   bool
	}{
		"application XID changes nothing": {
			events: []gpu.Event{{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 13, GIID: -1, CIID: -1}}, wantNoChange: true,
			wantStatusA: Healthy, wantStatusMIG: Healthy,
		},
		"fatal XID on the GPU": {
			events: []gpu.Event{{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 79, GIID: -1, CIID: -1}},
			wantA:  "xid=79:NoExecute", wantStatusA: Unhealthy, wantStatusMIG: Unhealthy,
		},
		"fatal XID on one MIG instance": {
			events:  []gpu.Event{{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 48, GIID: 1, CIID: 0}},
			wantMIG: "xid=48:NoExecute", wantStatusA: Healthy, wantStatusMIG: Unhealthy,
		},
		"XID on an unknown MIG instance taints the GPU": {
			events: []gpu.Event{{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 48, GIID: 9, CIID: 0}},
			wantA:  "xid=48:NoExecute", wantStatusA: Unhealthy, wantStatusMIG: Unhealthy,
		},
		"worse XID replaces a milder one": {
			events: []gpu.Event{
				{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 94, GIID: -1, CIID: -1},
				{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 95, GIID: -1, CIID: -1},
				{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 63, GIID: -1, CIID: -1},
			},
			wantA: "xid=95:NoExecute", wantStatusA: Unhealthy, wantStatusMIG: Unhealthy,
		},
		"degraded XID keeps pods": {
			events: []gpu.Event{{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 94, GIID: -1, CIID: -1}},
			wantA:  "xid=94:NoSchedule", wantStatusA: Healthy, wantStatusMIG: Healthy,
		},
		"double-bit ECC": {
			events: []gpu.Event{{Kind: gpu.EventDoubleBitECC, GPUUUID: gpuA, GIID: -1, CIID: -1}},
			wantA:  "ecc=double-bit:NoExecute", wantStatusA: Unhealthy, wantStatusMIG: Unhealthy,
		},
		"MIG key already on the GPU is not repeated": {
			events: []gpu.Event{
				{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 79, GIID: -1, CIID: -1},
				{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 48, GIID: 1, CIID: 0},
			},
			wantA: "xid=79:NoExecute", wantStatusA: Unhealthy, wantStatusMIG: Unhealthy,
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, nil, "boot")
			for _, e := range tc.events {
				f.m.Observe(context.Background(), e)
			}
			if got := f.taintsOf(gpuA, ""); got != tc.wantA {
				t.Errorf("GPU A taints %q, want %q", got, tc.wantA)
			}
			if got := f.taintsOf(gpuA, migA); got != tc.wantMIG {
				t.Errorf("MIG taints %q, want %q", got, tc.wantMIG)
			}
			if got := f.taintsOf(gpuB, ""); got != "" {
				t.Errorf("GPU B taints %q, want none", got)
			}
			if s, _ := f.m.DeviceHealth(gpuA, ""); s != tc.wantStatusA {
				t.Errorf("GPU A health %s, want %s", s, tc.wantStatusA)
			}
			if s, _ := f.m.DeviceHealth(gpuA, migA); s != tc.wantStatusMIG {
				t.Errorf("MIG health %s, want %s", s, tc.wantStatusMIG)
			}
			if s, _ := f.m.DeviceHealth(gpuB, ""); s != Healthy {
				t.Errorf("GPU B health %s", s)
			}
			if tc.wantNoChange != (f.changes == 0) {
				t.Errorf("%d change notifications", f.changes)
			}
		})
	}
}

// TestProbeConditions walks GPU A through readings over time and checks
// the taint after each: thermal hysteresis, the hold time before a
// transient taint goes, sticky conditions and resets.
func TestProbeConditions(t *testing.T) {
	hot := func(c int) func(*gpu.Reading) { return func(r *gpu.Reading) { r.TemperatureC = c } }
	ok := func(*gpu.Reading) {}
	type step struct {
		after   time.Duration
		reading func(*gpu.Reading)
		event   *gpu.Event
		want    string
	}
	for name, steps := range map[string][]step{
		"thermal slowdown, hysteresis, hold": {
			{0, hot(86), nil, ""},
			{time.Second, hot(87), nil, "thermal=slowdown:NoSchedule"},
			{time.Second, hot(83), nil, "thermal=slowdown:NoSchedule"}, // within hysteresis
			{time.Second, hot(81), nil, "thermal=slowdown:NoSchedule"}, // cool, hold starts
			{20 * time.Second, hot(81), nil, "thermal=slowdown:NoSchedule"},
			{10 * time.Second, hot(81), nil, ""}, // 30 s cool: cleared
		},
		"flapping does not clear": {
			{0, hot(90), nil, "thermal=slowdown:NoSchedule"},
			{time.Second, hot(70), nil, "thermal=slowdown:NoSchedule"},
			{25 * time.Second, hot(90), nil, "thermal=slowdown:NoSchedule"},
			{time.Second, hot(70), nil, "thermal=slowdown:NoSchedule"},
			{25 * time.Second, hot(70), nil, "thermal=slowdown:NoSchedule"},
			{10 * time.Second, hot(70), nil, ""},
		},
		"thermal shutdown is fatal": {
			{0, hot(95), nil, "thermal=shutdown:NoExecute"},
			{time.Second, hot(88), nil, "thermal=shutdown:NoExecute"}, // milder cause does not downgrade
		},
		"GPU lost and back is a reset": {
			{0, ok, &gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 79, GIID: -1, CIID: -1}, "xid=79:NoExecute"},
			{time.Second, func(r *gpu.Reading) { *r = gpu.Reading{Index: 0, Lost: true} }, nil, "gpu-lost=fell-off-bus:NoExecute,xid=79:NoExecute"},
			{time.Second, ok, nil, "gpu-lost=fell-off-bus:NoExecute"}, // back: reset clears the XID
			{31 * time.Second, ok, nil, ""},
		},
		"double-bit ECC clears when the volatile counter is reset": {
			{0, func(r *gpu.Reading) { r.VolatileUncorrectedECC = 1 }, &gpu.Event{Kind: gpu.EventDoubleBitECC, GPUUUID: gpuA, GIID: -1, CIID: -1}, "ecc=double-bit:NoExecute"},
			{time.Minute, func(r *gpu.Reading) { r.VolatileUncorrectedECC = 1 }, nil, "ecc=double-bit:NoExecute"},
			{time.Minute, ok, nil, ""},
		},
		"pending repair is transient, a failed remap sticky": {
			{0, func(r *gpu.Reading) { r.RepairPending = true }, nil, "ecc=repair-pending:NoSchedule"},
			{time.Second, func(r *gpu.Reading) { r.RemapFailure = true }, nil, "ecc=remap-failure:NoExecute"},
			{time.Hour, ok, nil, "ecc=remap-failure:NoExecute"},
		},
		"unreadable GPU is unmonitored": {
			{0, func(r *gpu.Reading) { r.Err = errors.New("NVML: Unknown Error") }, nil, "unmonitored=not-readable:None"},
			{time.Second, ok, nil, "unmonitored=not-readable:None"},
			{30 * time.Second, ok, nil, ""},
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, nil, "boot")
			for i, s := range steps {
				f.clock.advance(s.after)
				if s.event != nil {
					f.m.Observe(context.Background(), *s.event)
				}
				f.probeA(s.reading)
				if got := f.taintsOf(gpuA, ""); got != s.want {
					t.Fatalf("step %d: taints %q, want %q", i, got, s.want)
				}
			}
		})
	}
}

func TestUnmonitoredWhileEventsCannotBeWatched(t *testing.T) {
	f := newFixture(t, nil, "boot")
	f.m.setEventsDown(true)
	f.probeA(func(*gpu.Reading) {})
	if got := f.taintsOf(gpuB, ""); got != "unmonitored=events-not-watched:None" {
		t.Errorf("GPU B taints %q", got)
	}
	if s, msg := f.m.DeviceHealth(gpuB, ""); s != Unknown {
		t.Errorf("GPU B health %s (%s), want Unknown", s, msg)
	}
}

func TestAdminClear(t *testing.T) {
	f := newFixture(t, nil, "boot")
	xid := gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 79, GIID: -1, CIID: -1}
	f.m.Observe(context.Background(), xid)
	f.m.Observe(context.Background(), gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuB, XID: 79, GIID: -1, CIID: -1})
	raised := f.clock.t
	f.m.Clear(context.Background(), gpuA, raised.Add(-time.Second))
	if f.taintsOf(gpuA, "") == "" {
		t.Error("a clearance older than the condition cleared it")
	}
	f.m.Clear(context.Background(), gpuA, raised)
	if got := f.taintsOf(gpuA, ""); got != "" {
		t.Errorf("GPU A still %q after its clearance", got)
	}
	if f.taintsOf(gpuB, "") == "" {
		t.Error("clearing GPU A cleared GPU B")
	}
	f.m.Clear(context.Background(), "", raised)
	if got := f.taintsOf(gpuB, ""); got != "" {
		t.Errorf("GPU B still %q after a node-wide clearance", got)
	}
}

func TestStickyConditionsSurviveARestartButNotAReboot(t *testing.T) {
	path := filepath.Join(t.TempDir(), StoreFileName)
	f := newFixture(t, NewStore(path), "boot-1")
	f.m.Observe(context.Background(), gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 48, GIID: 1, CIID: 0})
	f.probeA(func(r *gpu.Reading) { r.TemperatureC = 90; r.VolatileUncorrectedECC = 2 })

	restarted := newFixture(t, NewStore(path), "boot-1")
	if got := restarted.taintsOf(gpuA, migA); got != "xid=48:NoExecute" {
		t.Errorf("after a restart the MIG device has %q", got)
	}
	if got := restarted.taintsOf(gpuA, ""); got != "" {
		t.Errorf("a transient condition was persisted: %q", got)
	}
	// A reset while the plugin was down shows as a lower volatile counter.
	restarted.m.Observe(context.Background(), gpu.Event{Kind: gpu.EventDoubleBitECC, GPUUUID: gpuA, GIID: -1, CIID: -1})
	restarted.probeA(func(r *gpu.Reading) { r.VolatileUncorrectedECC = 0 })
	if got := restarted.taintsOf(gpuA, ""); got != "" {
		t.Errorf("the reset did not clear %q", got)
	}

	f = newFixture(t, NewStore(path), "boot-1")
	f.m.Observe(context.Background(), gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuB, XID: 79, GIID: -1, CIID: -1})
	rebooted := newFixture(t, NewStore(path), "boot-2")
	if got := rebooted.taintsOf(gpuB, ""); got != "" {
		t.Errorf("after a reboot GPU B has %q", got)
	}
}

func TestCorruptStoreIsSetAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), StoreFileName)
	if err := os.WriteFile(path, []byte(`{"bootID":`), 0o600); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, NewStore(path), "boot")
	if len(f.m.Conditions()) != 0 {
		t.Error("conditions from a corrupt file")
	}
	if _, err := os.Stat(path + ".corrupt"); err != nil {
		t.Errorf("not set aside: %v", err)
	}
}

// TestTaintsReachEveryDevice feeds the monitor's taints to the device
// model of a simulated DGX H100 with one live MIG device: a GPU-level
// fault taints the GPU and each of its MIG devices and nothing else; a
// fault on the MIG instance taints only the device that stands for it.
func TestTaintsReachEveryDevice(t *testing.T) {
	ctx := context.Background()
	lib, err := sim.Open("dgxh100", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := lib.SetMIGMode(2, true); err != nil {
		t.Fatal(err)
	}
	node, err := nvmlnode.NewNode(lib)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := node.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g2 := inv.GPUs[2]
	p := g2.MIGProfiles[0]
	inst, err := node.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g2.UUID, ProfileID: p.ID, Placement: p.Placements[0]})
	if err != nil {
		t.Fatal(err)
	}
	if inv, err = node.Inventory(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := NewMonitor(ctx, Options{Policy: DefaultPolicy(), Source: node})
	if err != nil {
		t.Fatal(err)
	}
	m.SetInventory(inv)
	g5 := inv.GPUs[5]
	m.Observe(ctx, gpu.Event{Kind: gpu.EventXID, GPUUUID: g5.UUID, XID: 79, GIID: -1, CIID: -1})
	m.Observe(ctx, gpu.Event{Kind: gpu.EventXID, GPUUUID: g2.UUID, XID: 48, GIID: inst.GIID, CIID: inst.CIID})
	gpuTaints, migTaints := m.Taints()
	model, err := devicemodel.Build(devicemodel.Input{
		Inventory: inv, GPUTaints: gpuTaints, MIGTaints: migTaints,
		Managed: func(i gpu.MIGInstance) bool { return i.UUID == inst.UUID },
	})
	if err != nil {
		t.Fatal(err)
	}
	migDevice := names.MIGDevice(g2.Minor, p.Name, p.Placements[0].Start)
	gpu5 := names.GPUDevice(g5.Minor)
	tainted := 0
	for _, s := range model.Slices {
		for _, d := range s.Devices {
			want := ""
			switch {
			case d.Name == gpu5 || strings.HasPrefix(d.Name, gpu5+"-mig-"):
				want = "gpu.nvidia.com/xid=79:NoExecute"
			case d.Name == migDevice:
				want = "gpu.nvidia.com/xid=48:NoExecute"
			}
			var got []string
			for _, t := range d.Taints {
				got = append(got, t.Key+"="+t.Value+":"+string(t.Effect))
			}
			if strings.Join(got, ",") != want {
				t.Errorf("device %s: taints %v, want %q", d.Name, got, want)
			}
			if len(got) > 0 {
				tainted++
			}
		}
	}
	// GPU 5 and its 25 placements, and the one MIG device of GPU 2.
	if tainted != 27 {
		t.Errorf("%d tainted devices, want 27", tainted)
	}
}

// TestMIGCreatedSinceTheInventory: an XID naming an instance the last
// inventory did not have is attributed through ResolveMIG.
func TestMIGCreatedSinceTheInventory(t *testing.T) {
	const newMIG = "MIG-cccccccc-0000-0000-0000-000000000000"
	m, err := NewMonitor(context.Background(), Options{
		Policy: DefaultPolicy(), Source: &fakeSource{},
		ResolveMIG: func(gpuUUID string, gi, ci int) string {
			if gpuUUID == gpuB && gi == 3 && ci == 0 {
				return newMIG
			}
			return ""
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	m.SetInventory(&gpu.Inventory{GPUs: []gpu.GPU{{UUID: gpuB, Index: 1}}})
	m.Observe(context.Background(), gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuB, XID: 48, GIID: 3, CIID: 0})
	gpuTaints, migTaints := m.Taints()
	if len(gpuTaints[gpuB]) != 0 || len(migTaints[newMIG]) != 1 {
		t.Errorf("GPU taints %v, MIG taints %v", gpuTaints, migTaints)
	}
}
